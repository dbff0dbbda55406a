"""Training loop for any registered model (reidtrain.model): the model's loss terms summed, the optimiser and
schedule of the resolved config (reidtrain.resolve / reidtrain.optim), AMP on CUDA, DDP via torchrun, exact resume.

The loop knows no model: it builds `cfg.model` from the registry with the resolved options and loss settings,
reads the cache columns of the model's `inputs` at their sizes, sums the dict `model.loss(output, labels)`
returns (in its order) and logs every term as `loss_<term>` (console, metrics.jsonl, TensorBoard), and the
accuracy of `model.accuracy_logits(output)`. For the five-branch variants the terms are Eq. 11's
"intra" (lambda x the five branch losses) and "inter" (the fused classifier).

Run directory (TrainConfig.out):
    config.json                 the resolved TrainConfig and model meta
    metrics.jsonl               one line per finished epoch (loss, intra/inter parts, accuracy, lr, img/s)
    tb/                         TensorBoard scalars per epoch
    checkpoints/last.pt         written atomically after every epoch (model, optimiser, scheduler, RNG states)
    checkpoints/epoch-NNN.pt    every `keep_every` epochs when asked
    model.pt                    final weights + meta (what evaluate / extract / export read)
    init_report.json            what an --init-from checkpoint matched
    .lock                       held by the training process (reidtrain.runlock); readers hold it shared

A folder already holding a run is refused unless `resume` (continue) or `force` (its outputs removed first).
A split smaller than one batch trains as one partial batch per epoch; fewer than 2 images per process is refused.

Reproducibility: the data order and augmentation are pure functions of (seed, epoch) (see data.EpochSampler),
the global RNG states go into every checkpoint, so a run killed anywhere in epoch e and resumed restarts
epoch e from the end-of-(e-1) checkpoint and reaches the same weights (bit-identical on CPU).
Distributed: `torchrun --nproc_per_node N cli.py train ...` (RANK / WORLD_SIZE / LOCAL_RANK from the
environment; gloo on CPU, nccl on CUDA); each rank trains on its share of every epoch, rank 0 alone writes.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from reidkit.atomic import atomic_write_text, is_temporary
from reidkit.errors import ReidError
from reidkit.pause import pause_point
from reidkit.typedconfig import to_dict

from .allocator import keep_freed_memory
from .checkpoint import (FORMAT, CheckpointError, InitReport, init_from_checkpoint, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .config import TrainConfig, config_hash, result_config
from .data import (EpochSampler, ReidDataset, SampleTransform, input_columns, input_sizes, load_split, make_loader,
                   normalize_inputs, relabel)
from .devices import torch_device
from .optim import build_optimizer, build_scheduler
from .runlock import run_lock
from .runlog import append_metrics, epoch_progress, flat_config, rewrite_metrics, seed_all
from .threads import set_threads

class TrainingDiverged(ReidError, RuntimeError):
    """The loss became NaN / infinite."""


class TooFewImagesError(ReidError, ValueError):
    """The training split cannot fill one batch-norm batch (fewer than 2 images per process)."""


MIN_BATCH = 2   # batch norm needs two samples per step
# What a training run writes (model.pt first: removed first by --force, so a half-cleared folder is never taken for
# a finished run); config.json goes last and is rewritten only after the others are gone.
RUN_OUTPUTS = ("model.pt", "checkpoints", "metrics.jsonl", "tb", "eval", "init_report.json", "config.json")


class RunExistsError(ReidError, FileExistsError):
    """`train` into a folder holding another run, without --resume or --force."""


def _existing_run(out: Path) -> list[str]:
    """The outputs of an earlier run in `out` that a fresh run would replace."""
    found = [name for name in ("model.pt", "metrics.jsonl", "eval") if (out / name).exists()]
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(p.suffix == ".pt" for p in ckpts.iterdir()):
        found.append("checkpoints/")
    return found


def clear_run(out: Path) -> None:
    """Remove the outputs of an earlier run (train --force), model.pt first and config.json last."""
    import shutil

    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def claim_run_folder(out: Path, rt: "Runtime", resume: bool, force: bool, what: str = "a training run",
                     force_note: str = " (removes its outputs, eval/ included)"):
    """Lock run folder `out` (rank 0 only; None on the other ranks) and check what it holds: a folder holding
    another run is refused unless `resume`, and `force` clears it first. On any error the lock is released and a
    process group this run created is destroyed. Shared by `train` and `pretrain`."""
    lock = run_lock(out) if rt.is_main else None
    try:
        if lock is not None:
            lock.acquire()
            existing = _existing_run(out)
            if existing and not (resume or force):
                raise RunExistsError(f"{out}: holds {what} ({', '.join(existing)}); continue it with "
                                     f"--resume, replace it with --force{force_note}, or choose another --out")
            if force and not resume:
                clear_run(out)
    except BaseException:
        if lock is not None:
            lock.release()
        if rt.created_group and dist.is_initialized():
            dist.destroy_process_group()
        raise
    return lock


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module                 # the trained (unwrapped) model
    epochs_done: int
    history: list[dict] = field(default_factory=list)   # metrics of the epochs run in this call
    rank: int = 0
    world_size: int = 1

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def final(self) -> Path:
        return self.run_dir / "model.pt"


# ------------------------------------------------------------------------------------------------- the loss
def sum_terms(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: the model's loss terms added in their order (first + second + ...)."""
    if not terms:
        raise ValueError("the model's loss returned no terms")
    values = iter(terms.values())
    total = next(values)
    for t in values:
        total = total + t
    return total


def model_meta(model, cfg: TrainConfig, columns: dict[str, str]) -> dict:
    """What evaluate / extract / export need to rebuild `model` and feed it (stored in every checkpoint)."""
    return {"model": cfg.model, "num_classes": model.num_classes,
            "input_sizes": {k: list(s.size) for k, s in model.inputs.items()},
            "input_columns": columns, "model_options": dict(cfg.model_options),
            "losses": {"label_smoothing": cfg.label_smoothing, "triplet_weight": cfg.triplet_weight,
                       "triplet_margin": cfg.triplet_margin},
            "feature_dim": model.feature_dim, "feature_layout": [list(p) for p in model.feature_layout],
            "body_size": list(cfg.body_size) if cfg.body_size else None,
            "part_size": list(cfg.part_size) if cfg.part_size else None,
            "attention_norm": cfg.model_options.get("attention_norm"), "normalize": cfg.normalize}


# ------------------------------------------------------------------------------------------- device, DDP, AMP
@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    created_group: bool
    amp_dtype: torch.dtype | None     # None: full precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Device from cfg.device ("auto": CUDA if present), process group from torchrun's environment, AMP dtype."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch_device(cfg.device, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    amp = cfg.amp
    if amp == "auto":
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "off"
    if amp == "fp16" and device.type != "cuda":
        from reidkit.typedconfig import ConfigError
        raise ConfigError(f"--amp fp16 needs a CUDA device, the device is {device} (use bf16 or off on the CPU)")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return Runtime(device, rank, world, local, created, dtype)


def sync_buffers(model: nn.Module) -> None:
    """Average the batch-norm running statistics over the ranks (each rank saw other images), so that every
    rank - and the checkpoint - holds the same model. Integer buffers are taken from rank 0."""
    world = dist.get_world_size()
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)
        else:
            dist.broadcast(buf, src=0)


def _same_value(key: str, a, b) -> bool:
    if key in ("cache", "init_from") and a is not None and b is not None:  # ./cache and /abs/cache are one folder
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def _check_resume_config(ckpt: dict, cfg: TrainConfig, path: Path) -> None:
    stored = ckpt.get("meta", {}).get("config")
    if stored is None:
        raise CheckpointError(f"{path}: no training config stored - not a reidtrain training checkpoint")
    from reidkit.typedconfig import from_mapping
    old = flat_config(result_config(from_mapping(TrainConfig, stored)))
    new = flat_config(result_config(cfg))
    diff = sorted(k for k in set(old) | set(new) if not _same_value(k, old.get(k), new.get(k)))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise CheckpointError(f"{path}: cannot resume with a different configuration ({detail}); "
                              f"use another --out or the checkpoint's settings")


def _print_init_report(console, report: InitReport) -> None:
    console.print(f"[bold]{report.summary()}[/bold]")
    for key, a, b in report.shape_mismatched[:10]:
        console.print(f"  shape differs: {key} checkpoint {a} vs model {b}")
    for title, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        if keys:
            more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
            console.print(f"  {title}: {', '.join(keys[:8])}{more}")


HOST_READ_EVERY = 20   # steps between host reads of the running loss on an accelerator (see _run_epoch)
StepHook = Callable[[int, int, float], None]   # (epoch 1-based, step 0-based, loss) after each optimiser step


# ------------------------------------------------------------------------------------------------------ train
def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, console=None,
          on_step: StepHook | None = None, force: bool = False) -> TrainResult:
    """Train cfg.model on cfg.cache into cfg.out; with `resume`, continue from checkpoints/last.pt if present.

    The run folder is locked for the whole run (reidtrain.runlock: a second train into it, or a train while an
    evaluate / extract / export reads it, stops with RunLockedError naming the holder). A folder holding another
    run (model.pt, checkpoints, metrics.jsonl or eval/) is refused unless `resume` (continue it) or `force`
    (remove its outputs first, eval/ included, before anything of the new run is written)."""
    from rich.console import Console

    from .resolve import resolve

    if cfg.cache is None:
        raise ValueError("TrainConfig.cache is not set (the crop cache to train on)")
    resolved = resolve(cfg)
    cfg = resolved.cfg
    rt = setup_runtime(cfg)
    console = console or Console(stderr=True)
    say = (lambda *a, **k: console.print(*a, soft_wrap=True, **k)) if rt.is_main else (lambda *a, **k: None)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    lock = claim_run_folder(out, rt, resume, force)
    set_threads(cfg.threads, cfg.workers)
    keep_freed_memory()
    try:
        seed_all(cfg.seed)
        if rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        # data: train split, only the needed columns; class labels 0..q-1 from the train pids
        columns = input_columns(resolved.inputs)
        split = load_split(Path(cfg.cache), "train", columns, cfg.crops, cfg.beta)
        labels, train_pids = relabel(split.pids)
        sizes = input_sizes(resolved.inputs)
        dataset = ReidDataset(split, SampleTransform(sizes, cfg.augment), labels)
        if len(split) < MIN_BATCH * rt.world_size:
            raise TooFewImagesError(
                f"{cfg.cache}: the train split has {len(split)} image(s); training needs at least {MIN_BATCH} per "
                f"process ({rt.world_size} process(es)) - crop more images (see crop_report.jsonl for failed ones)")
        sampler = EpochSampler(labels, cfg.batch_size, cfg.sampler, cfg.instances_per_id, cfg.seed,
                               rt.rank, rt.world_size)
        if len(sampler) < MIN_BATCH:  # the identity sampler draws whole P x K batches: its share can be smaller
            raise TooFewImagesError(f"{cfg.cache}: the {cfg.sampler} sampler gives {len(sampler)} image(s) per "
                                    f"epoch and process; at least {MIN_BATCH} are needed")
        loader = make_loader(dataset, cfg.batch_size, cfg.workers, sampler, train=True,
                             pin_memory=rt.device.type == "cuda")

        model = resolved.entry.build(len(train_pids), resolved.inputs, resolved.losses, resolved.options)
        meta = model_meta(model, cfg, columns) | {
                "crops": cfg.crops,
                "train_pids": train_pids, "dataset": split.dataset, "cache": str(cfg.cache),
                "config": to_dict(cfg), "result_hash": config_hash(result_config(cfg)),
                "world_size": rt.world_size}
        optimizer = build_optimizer(model.parameters(), cfg)
        scheduler = build_scheduler(optimizer, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=rt.amp_dtype == torch.float16)

        start_epoch = 0
        ckpt = load_checkpoint(last_path) if resume and last_path.exists() else None
        if ckpt is not None:
            _check_resume_config(ckpt, cfg, last_path)
            saved_world = ckpt.get("meta", {}).get("world_size", 1)
            if saved_world != rt.world_size:
                raise CheckpointError(f"{last_path}: saved by {saved_world} process(es), resumed with {rt.world_size}: "
                                      f"the sample order would differ - resume with the same number of processes")
            model.load_state_dict(ckpt["model"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start_epoch = int(ckpt["epoch"])
            set_rng_state(ckpt["rng"])
            say(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}")
        else:
            if resume:
                say(f"no checkpoint in {ckpt_dir}: starting from scratch")
            if cfg.backbone_weights is not None:
                loaded = model.load_backbone_weights(Path(cfg.backbone_weights))
                if rt.is_main:
                    say(f"backbone weights from {cfg.backbone_weights}: {len(loaded.get('loaded', []))} tensors "
                        f"loaded, {len(loaded.get('missing', []))} missing, "
                        f"{len(loaded.get('unexpected', []))} unexpected")
                    atomic_write_text(out / "backbone_report.json", json.dumps(loaded, indent=1))
            if cfg.init_from is not None:
                report = init_from_checkpoint(model, Path(cfg.init_from))
                if rt.is_main:
                    _print_init_report(console, report)
                    atomic_write_text(out / "init_report.json", json.dumps(report.as_dict(), indent=1))
        model.to(rt.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if ckpt is not None:  # after .to(): the momentum buffers follow the parameters' device
            optimizer.load_state_dict(ckpt["optimizer"])
        net: nn.Module = model
        if rt.world_size > 1:
            # broadcast_buffers=False: no per-step broadcast of rank 0's batch-norm statistics; each rank keeps its
            # own and sync_buffers averages them at the end of every epoch.
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, broadcast_buffers=False)

        history: list[dict] = []
        writer = None
        if rt.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for folder in (out, ckpt_dir):  # leftovers of writes a kill interrupted (as large as a checkpoint)
                for leftover in (folder.glob(".*.tmp") if folder.is_dir() else ()):
                    if is_temporary(leftover):
                        leftover.unlink(missing_ok=True)
            atomic_write_text(out / "config.json", json.dumps({"train": to_dict(cfg), "meta": {
                k: v for k, v in meta.items() if k not in ("config", "train_pids")}}, indent=1))
            metrics_path = out / "metrics.jsonl"
            if ckpt is not None:
                rewrite_metrics(metrics_path, start_epoch)
            elif metrics_path.exists():
                metrics_path.unlink()
            if cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(log_dir=str(out / "tb"), purge_step=start_epoch + 1)  # drops redone epochs
        if start_epoch >= cfg.epochs:
            say(f"{out}: already trained for {start_epoch} epochs (asked {cfg.epochs})")
        say(f"training {cfg.model} on {cfg.cache}: {len(split)} images, {len(train_pids)} identities, "
            f"{cfg.epochs} epochs, batch {cfg.batch_size} x {rt.world_size} process(es), device {rt.device}"
            + (f", {torch.get_num_threads()} thread(s)" if rt.device.type == "cpu" else "")
            + (f", amp {rt.amp_dtype}" if rt.amp_dtype else ""))

        with epoch_progress(console, progress and rt.is_main) as bar:
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                row = _run_epoch(cfg, rt, net, loader, sampler, optimizer, scaler, epoch, bar, on_step)
                if row["images"] == 0:  # cannot happen after the checks above; never report an untrained model
                    raise TooFewImagesError(f"{cfg.cache}: epoch {epoch} trained on no image")
                scheduler.step()
                if rt.world_size > 1:
                    sync_buffers(model)
                if rt.is_main:
                    history.append(row)
                    append_metrics(out / "metrics.jsonl", row)
                    if writer is not None:
                        for k in ("loss", *(k for k in row if k.startswith("loss_")), "accuracy", "lr",
                                  "images_per_s"):
                            writer.add_scalar(f"train/{k}", row[k], epoch)
                        writer.flush()
                    state = {"format": FORMAT, "epoch": epoch, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                             "rng": rng_state(), "meta": meta}
                    save_checkpoint(last_path, state)
                    if cfg.keep_every and epoch % cfg.keep_every == 0:
                        save_checkpoint(ckpt_dir / f"epoch-{epoch:03d}.pt", state)
                    terms = ", ".join(f"{k[5:]} {v:.3f}" for k, v in row.items() if k.startswith("loss_"))
                    say(f"{cfg.model} epoch {epoch}/{cfg.epochs}  loss {row['loss']:.4f} ({terms})  "
                        f"acc {row['accuracy']:.3f}  lr {row['lr']:.2g}  {row['images_per_s']:.1f} img/s")
        if rt.is_main:
            save_checkpoint(out / "model.pt", {"format": FORMAT, "epoch": max(start_epoch, cfg.epochs),
                                               "model": model.state_dict(), "meta": meta})
            if writer is not None:
                writer.close()
        if rt.world_size > 1:
            dist.barrier()
        return TrainResult(out, model, max(start_epoch, cfg.epochs), history, rt.rank, rt.world_size)
    finally:
        if lock is not None:
            lock.release()
        if rt.created_group and dist.is_initialized():
            dist.destroy_process_group()


def _run_epoch(cfg: TrainConfig, rt: Runtime, net: nn.Module, loader, sampler: EpochSampler,
               optimizer: torch.optim.Optimizer, scaler, epoch: int, bar, on_step: StepHook | None) -> dict:
    """One pass over this rank's share of the epoch; returns the epoch's metrics (reduced over ranks).

    The running sums stay on the device; the host reads them every step on the CPU but only every
    `HOST_READ_EVERY` steps (and at the end) on an accelerator, so the GPU is not stalled by a sync per step. A
    non-finite loss is therefore caught at the next read (within that many steps) rather than at once."""
    net.train()
    model = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    sampler.set_epoch(epoch)
    lr = optimizer.param_groups[0]["lr"]
    names: list[str] | None = None                   # the loss terms, in the model's order (first step)
    acc: torch.Tensor | None = None                  # sums of loss, each term (x n), correct
    count = 0
    read_every = 1 if (rt.device.type == "cpu" or on_step is not None) else HOST_READ_EVERY
    task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=len(loader), loss=float("nan"), ips=0.0)
    t0 = time.perf_counter()
    steps = len(loader)
    for step, batch in enumerate(loader):
        inputs = normalize_inputs({k: x.to(rt.device, non_blocking=True) for k, x in batch["inputs"].items()},
                                  cfg.normalize)
        if cfg.channels_last:
            inputs = {k: x.contiguous(memory_format=torch.channels_last) for k, x in inputs.items()}
        labels = batch["label"].to(rt.device, non_blocking=True)
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32, enabled=rt.amp_dtype is not None):
            out = net(inputs)
        terms = model.loss(out, labels)
        if names is None:
            names = list(terms)
            acc = torch.zeros(len(names) + 2, dtype=torch.float64, device=rt.device)
        elif list(terms) != names:
            raise TrainingDiverged(f"{cfg.model}: the loss terms changed from {names} to {list(terms)} at step {step}")
        loss = sum_terms(terms)
        n = labels.shape[0]
        logits = model.accuracy_logits(out)
        correct = ((logits.detach().argmax(1) == labels).sum() if logits is not None
                   else torch.zeros((), device=rt.device))
        step_sums = torch.stack([loss.detach().double() * n, *(t.detach().double() * n for t in terms.values()),
                                 correct.double()])
        if not (step + 1) % read_every or step + 1 == steps:
            value = float(step_sums[0]) / n
            if not math.isfinite(value) or not math.isfinite(float(acc[0])):
                raise TrainingDiverged(f"loss is {value} at epoch {epoch} step {step} (lr {lr}); lower the "
                                       f"learning rate or check the inputs")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        pause_point("train-step")
        acc += step_sums
        count += n
        if read_every == 1 or not (step + 1) % read_every:
            elapsed = time.perf_counter() - t0
            bar.update(task, advance=1, loss=float(acc[0]) / count, ips=count * rt.world_size / max(elapsed, 1e-9))
        else:
            bar.update(task, advance=1)
        if on_step is not None:
            on_step(epoch, step, value)
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    elapsed = time.perf_counter() - t0
    bar.remove_task(task)
    names = names or []
    if acc is None:
        acc = torch.zeros(2, dtype=torch.float64, device=rt.device)
    sums = torch.cat([acc, torch.tensor([float(count)], dtype=torch.float64, device=rt.device)])
    if rt.world_size > 1:
        dist.all_reduce(sums)
    values = sums.tolist()
    total = max(values[-1], 1.0)
    row = {"epoch": epoch, "loss": values[0] / total}
    row.update({f"loss_{name}": values[1 + i] / total for i, name in enumerate(names)})
    row.update({"accuracy": values[-2] / total, "lr": lr, "images": int(values[-1]), "time_s": elapsed,
                "images_per_s": values[-1] / max(elapsed, 1e-9)})
    return row
