"""ImageNet classification pre-training of the five-branch network (Sec. 4.1): `cli.py pretrain`.

Sec. 4.1: "The model is first pre-trained on the ImageNet (ILSVRC2012) for 9 epochs, where the learning rate is
initially set as 0.01 and further divided by 10 after every 3 epochs ... batch size 32". The defaults are that
schedule (SGD; momentum 0.9 and weight decay 1e-4 are ours - the paper names SGD only).

How five branches meet ImageNet (the paper does not say; our reading):
- branch_inputs = "strips" (default): the whole image goes to the global branch and its four horizontal strips
  (top to bottom, as the `baseline` variant cuts them, reidtrain.model.horizontal_strips) to the four part
  branches - head, upper body, upper leg, lower leg. At the default input size 384x192 (the paper's body size)
  every strip is 96x192, exactly the part size, so each branch is pre-trained at the size it is fine-tuned at.
- branch_inputs = "whole": the same whole image to every branch.
- Each of the five branches has its own 1,000-way classifier and the fused feature [E_g, E_l] (after
  inter-attention when the variant has it) one more; the loss is Eq. 11, L = lambda * sum_j CE_j + CE_fused.
- The variant pre-trained is `model` (default intra-inter: intra-attention in blocks 2-4 of every branch and
  inter-attention fusion), so `train --model intra-inter --init-from RUN/model.pt` finds every backbone tensor.
  The input wiring does not change any parameter: every variant's weights fit its fine-tuning model.
Inputs are normalised as in fine-tuning (default: minus the image's channel means, Sec. 4.1).

Run folder (PretrainConfig.out), as `train` writes it (reidtrain.train):
    config.json, metrics.jsonl (per epoch: loss, its intra / inter parts, train top-1, val top-1 / top-5 of the
    fused classifier and top-1 of the global branch, lr, img/s), tb/, checkpoints/last.pt (atomic, after every
    epoch: model with classifiers, optimiser, scheduler, scaler, RNG states), model.pt (the final weights WITHOUT
    the classifiers - what `train --init-from` takes; its init report lists the classifiers as missing, kept at
    their fresh init), .lock (reidtrain.runlock).
Resume (`resume`): restarts the epoch after the last checkpoint; the data order and augmentation are functions of
(seed, epoch), so the weights equal an uninterrupted run's (bit-identical on the CPU). The checkpoint records the
configuration and a fingerprint of the file lists; a resume with other values is refused, naming them.
GPU: AMP (bf16 where supported, else fp16 with a gradient scaler) and channels-last by default; DDP with
`torchrun --nproc_per_node N cli.py pretrain ...` (batch_size is per process; rank 0 writes).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from reidkit.atomic import atomic_write_text, is_temporary
from posecrop.regions import REGION_NAMES
from reidkit.typedconfig import to_dict

from .allocator import keep_freed_memory
from .checkpoint import FORMAT, CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .pretrain_config import RESUME_FREE, PretrainConfig, result_config
from .model import FUSED
from .threads import set_threads
from .runlog import append_metrics, epoch_progress, flat_config, rewrite_metrics, seed_all
from .train import (HOST_READ_EVERY, MIN_BATCH, TooFewImagesError, TrainingDiverged, claim_run_folder, setup_runtime,
                    sum_terms, sync_buffers)

CLASSIFIER_PREFIX = "classifier."


@dataclass
class PretrainResult:
    run_dir: Path
    model: nn.Module
    epochs_done: int
    history: list[dict]
    rank: int = 0
    world_size: int = 1

    @property
    def final(self) -> Path:
        return self.run_dir / "model.pt"


StepHook = Callable[[int, int, float], None]


def build_pretrain_model(name: str, num_classes: int, size: tuple[int, int], attention_norm: bool = True,
                         lambda_intra: float = 0.5):
    """The variant `name` with `num_classes`-way classifiers, fed by `branch_batch` (five inputs): the same
    parameters as the fine-tuning model of that name (the strips are cut here, not by the model); its loss is
    Eq. 11 with `lambda_intra`."""
    from .model.network import VARIANTS, FiveBranchNet, FiveBranchOptions, five_branch_inputs
    from .model.registry import resolve_inputs
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose one of {tuple(VARIANTS)}")
    h, w = size
    variant = replace(VARIANTS[name], strips=False)
    inputs = resolve_inputs(five_branch_inputs(variant), (h, w), (h // 4, w))
    return FiveBranchNet(variant, num_classes, inputs,
                         FiveBranchOptions(lambda_intra=lambda_intra, attention_norm=attention_norm))


def branch_batch(images: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) normalised images -> the five branch inputs: the whole image to the global branch ("body"),
    its four horizontal strips (mode "strips") or the whole image again ("whole") to the part branches."""
    from .model import horizontal_strips
    parts = horizontal_strips(images, len(REGION_NAMES) - 1) if mode == "strips" else [images] * 4
    return {REGION_NAMES[0]: images, **dict(zip(REGION_NAMES[1:], parts))}


def backbone_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model's state without the classifiers (what fine-tuning takes), and the dropped keys."""
    state = model.state_dict()
    dropped = [k for k in state if k.startswith(CLASSIFIER_PREFIX)]
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX)}, dropped


def _check_resume(ckpt: dict, cfg: PretrainConfig, fingerprint: dict, path: Path, world: int) -> None:
    meta = ckpt.get("meta", {})
    stored = meta.get("pretrain_config")
    if stored is None:
        raise CheckpointError(f"{path}: no pre-training config stored - not a `pretrain` checkpoint")
    old, new = flat_config({k: v for k, v in stored.items() if k not in RESUME_FREE}), flat_config(result_config(cfg))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise CheckpointError(f"{path}: cannot resume with a different configuration ({detail}); use another "
                              f"--out or the checkpoint's settings")
    if meta.get("dataset") != fingerprint:
        raise CheckpointError(f"{path}: the ImageNet folder changed since the checkpoint (was {meta.get('dataset')}, "
                              f"now {fingerprint}); resume on the same file lists or start a new --out")
    if meta.get("world_size", 1) != world:
        raise CheckpointError(f"{path}: saved by {meta.get('world_size', 1)} process(es), resumed with {world}: the "
                              f"sample order would differ - resume with the same number of processes")


def pretrain(cfg: PretrainConfig, resume: bool = False, force: bool = False, progress: bool = True, console=None,
             on_step: StepHook | None = None) -> PretrainResult:
    """Pre-train cfg.model on the ImageNet folder cfg.root into cfg.out (see the module docstring)."""
    from rich.console import Console

    from .data import EpochSampler
    from .imagenet import ImageNetDataset, ShardSampler, make_image_loader, scan_imagenet

    if cfg.root is None:
        raise ValueError("PretrainConfig.root is not set (the ImageNet folder)")
    rt = setup_runtime(cfg)
    console = console or Console(stderr=True)
    say = (lambda *a, **k: console.print(*a, soft_wrap=True, **k)) if rt.is_main else (lambda *a, **k: None)
    out = Path(cfg.out)
    ckpt_dir, last_path = out / "checkpoints", out / "checkpoints" / "last.pt"
    lock = claim_run_folder(out, rt, resume, force, what="a run", force_note="")
    set_threads(cfg.threads, cfg.workers)
    keep_freed_memory()
    try:
        seed_all(cfg.seed)
        channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and rt.device.type == "cuda")
        if rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if progress and rt.is_main:
            with console.status(f"reading the file lists of {cfg.root} ..."):
                folder = scan_imagenet(Path(cfg.root), cfg.val_labels, cfg.validate)
        else:
            folder = scan_imagenet(Path(cfg.root), cfg.val_labels, cfg.validate)
        fingerprint = folder.fingerprint()
        if len(folder.train) < MIN_BATCH * rt.world_size:
            raise TooFewImagesError(f"{folder.root}/train: {len(folder.train)} image(s); pre-training needs at least "
                                    f"{MIN_BATCH} per process ({rt.world_size} process(es))")
        size = tuple(cfg.input_size)
        train_set = ImageNetDataset(folder.train, size, cfg.augment, cfg.scale_min, cfg.flip, cfg.reduced_decoding)
        sampler = EpochSampler(folder.train.labels, cfg.batch_size, "random", seed=cfg.seed, rank=rt.rank,
                               world_size=rt.world_size)
        pin = rt.device.type == "cuda"
        loader = make_image_loader(train_set, cfg.batch_size, cfg.workers, sampler, train=True, pin_memory=pin)
        val_loader = None
        if folder.val is not None:
            val_set = ImageNetDataset(folder.val, size, reduced=cfg.reduced_decoding)
            val_loader = make_image_loader(val_set, cfg.batch_size, cfg.workers,
                                           ShardSampler(len(folder.val), rt.rank, rt.world_size), train=False,
                                           pin_memory=pin)

        classes = len(folder.classes)
        model = build_pretrain_model(cfg.model, classes, size, cfg.attention_norm, cfg.lambda_intra)
        meta = {"model": cfg.model, "pretrain": True, "num_classes": classes, "classes": folder.classes,
                "body_size": list(size), "part_size": [size[0] // 4, size[1]], "branch_inputs": cfg.branch_inputs,
                "normalize": cfg.normalize, "attention_norm": cfg.attention_norm, "dataset": fingerprint,
                "root": str(cfg.root), "pretrain_config": to_dict(cfg), "world_size": rt.world_size}
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        scaler = torch.amp.GradScaler("cuda", enabled=rt.amp_dtype == torch.float16)
        start_epoch = 0
        ckpt = load_checkpoint(last_path) if resume and last_path.exists() else None
        if ckpt is not None:
            _check_resume(ckpt, cfg, fingerprint, last_path, rt.world_size)
            model.load_state_dict(ckpt["model"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start_epoch = int(ckpt["epoch"])
            set_rng_state(ckpt["rng"])
            say(f"resuming {out} after epoch {start_epoch}/{cfg.epochs}")
        elif resume:
            say(f"no checkpoint in {ckpt_dir}: starting from scratch")
        model.to(rt.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        net: nn.Module = model
        if rt.world_size > 1:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, broadcast_buffers=False)

        writer = None
        metrics_path = out / "metrics.jsonl"
        if rt.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for where in (out, ckpt_dir):
                for leftover in (where.glob(".*.tmp") if where.is_dir() else ()):
                    if is_temporary(leftover):
                        leftover.unlink(missing_ok=True)
            atomic_write_text(out / "config.json", json.dumps({"pretrain": to_dict(cfg), "meta": {
                k: v for k, v in meta.items() if k not in ("pretrain_config", "classes")}}, indent=1))
            if ckpt is not None:
                rewrite_metrics(metrics_path, start_epoch)
            elif metrics_path.exists():
                metrics_path.unlink()
            if cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(log_dir=str(out / "tb"), purge_step=start_epoch + 1)
        if folder.skipped:
            more = f" (+{len(folder.skipped) - 3} more)" if len(folder.skipped) > 3 else ""
            say(f"[yellow]skipped {len(folder.skipped)} non-image file(s):[/] {', '.join(folder.skipped[:3])}{more}")
        say(f"pre-training {cfg.model} on {folder.root}: {len(folder.train)} train images, {classes} classes, val "
            f"{len(folder.val) if folder.val is not None else 0} images ({folder.val_source}); {cfg.branch_inputs} "
            f"to the branches at {size[0]}x{size[1]}; {cfg.epochs} epochs, batch {cfg.batch_size} x {rt.world_size} "
            f"process(es), device {rt.device}" + (f", amp {rt.amp_dtype}" if rt.amp_dtype else "")
            + (", channels-last" if channels_last else ""))
        history: list[dict] = []
        with epoch_progress(console, progress and rt.is_main) as bar:
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                row = _train_epoch(cfg, rt, net, loader, sampler, optimizer, scaler, epoch, bar, on_step,
                                   channels_last)
                scheduler.step()
                if rt.world_size > 1:
                    sync_buffers(model)
                if val_loader is not None:
                    row |= validate(model, val_loader, rt, cfg, bar, channels_last)
                if rt.is_main:
                    history.append(row)
                    append_metrics(metrics_path, row)
                    if writer is not None:
                        for k, v in row.items():
                            if k != "epoch":
                                writer.add_scalar(("val/" if k.startswith("val_") else "train/") + k, v, epoch)
                        writer.flush()
                    save_checkpoint(last_path, {"format": FORMAT, "epoch": epoch, "model": model.state_dict(),
                                                "optimizer": optimizer.state_dict(),
                                                "scheduler": scheduler.state_dict(),
                                                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                                                "rng": rng_state(), "meta": meta})
                    val = (f"  val top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f}"
                           if "val_top1" in row else "")
                    say(f"pretrain epoch {epoch}/{cfg.epochs}  loss {row['loss']:.4f} (intra {row['loss_intra']:.3f}, "
                        f"inter {row['loss_inter']:.3f})  train top-1 {row['top1']:.3f}{val}  lr {row['lr']:.2g}  "
                        f"{row['images_per_s']:.1f} img/s")
        if rt.is_main:
            weights, dropped = backbone_state(model)
            save_checkpoint(out / "model.pt", {"format": FORMAT, "epoch": max(start_epoch, cfg.epochs),
                                               "model": weights, "meta": {**meta, "dropped": dropped}})
            if writer is not None:
                writer.close()
        if rt.world_size > 1:
            dist.barrier()
        return PretrainResult(out, model, max(start_epoch, cfg.epochs), history, rt.rank, rt.world_size)
    finally:
        if lock is not None:
            lock.release()
        if rt.created_group and dist.is_initialized():
            dist.destroy_process_group()


def _prepare(batch_images: torch.Tensor, rt, cfg: PretrainConfig, channels_last: bool) -> dict[str, torch.Tensor]:
    from .data import normalize_batch
    x = normalize_batch(batch_images.to(rt.device, non_blocking=True), cfg.normalize)
    inputs = branch_batch(x, cfg.branch_inputs)
    if channels_last:
        inputs = {k: v.contiguous(memory_format=torch.channels_last) for k, v in inputs.items()}
    return inputs


def _train_epoch(cfg: PretrainConfig, rt, net: nn.Module, loader, sampler, optimizer, scaler, epoch: int, bar,
                 on_step: StepHook | None, channels_last: bool) -> dict:
    """One pass over this rank's share; running sums stay on the device (host reads every HOST_READ_EVERY steps
    on an accelerator, every step on the CPU)."""
    net.train()
    sampler.set_epoch(epoch)
    lr = optimizer.param_groups[0]["lr"]
    acc = torch.zeros(4, dtype=torch.float64, device=rt.device)   # loss, intra, inter (x n), correct
    count = 0
    read_every = 1 if (rt.device.type == "cpu" or on_step is not None) else HOST_READ_EVERY
    steps = len(loader)
    task = bar.add_task(f"pretrain {epoch}/{cfg.epochs}", total=steps, loss=float("nan"), ips=0.0)
    t0 = time.perf_counter()
    value = float("nan")
    for step, batch in enumerate(loader):
        inputs = _prepare(batch["image"], rt, cfg, channels_last)
        labels = batch["label"].to(rt.device, non_blocking=True)
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32, enabled=rt.amp_dtype is not None):
            out = net(inputs)
        parts = (net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net).loss(out, labels)
        loss = sum_terms(parts)
        parts = {k: v.detach() for k, v in parts.items()}
        n = labels.shape[0]
        correct = (out.logits[FUSED].detach().argmax(1) == labels).sum()
        step_sums = torch.stack([loss.detach().double() * n, parts["intra"].double() * n,
                                 parts["inter"].double() * n, correct.double()])
        if not (step + 1) % read_every or step + 1 == steps:
            value = float(step_sums[0]) / n
            if not math.isfinite(value) or not math.isfinite(float(acc[0])):
                raise TrainingDiverged(f"loss is {value} at pre-training epoch {epoch} step {step} (lr {lr}); lower "
                                       f"the learning rate or check the inputs")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
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
    sums = torch.cat([acc, torch.tensor([float(count)], dtype=torch.float64, device=rt.device)])
    if rt.world_size > 1:
        dist.all_reduce(sums)
    loss_sum, intra_sum, inter_sum, correct_sum, images = sums.tolist()
    if images == 0:
        raise TooFewImagesError(f"pre-training epoch {epoch} trained on no image")
    return {"epoch": epoch, "loss": loss_sum / images, "loss_intra": intra_sum / images,
            "loss_inter": inter_sum / images, "top1": correct_sum / images, "lr": lr, "images": int(images),
            "time_s": elapsed, "images_per_s": images / max(elapsed, 1e-9)}


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many rows have their label among the k highest logits, per k (k capped at the class count): a
    float64 tensor on the logits' device (no host sync)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return torch.stack([hit[:, :k].any(dim=1).sum() for k in ks]).double()


@torch.no_grad()
def validate(model: nn.Module, loader, rt, cfg: PretrainConfig, bar, channels_last: bool) -> dict:
    """Top-1 / top-5 of the fused classifier and top-1 of the global branch on this rank's share of val,
    summed over the ranks; val_loss is the fused classifier's cross-entropy."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=rt.device)   # top1, top5, global top1, ce sum, n
    task = bar.add_task("val", total=len(loader), loss=float("nan"), ips=0.0)
    t0 = time.perf_counter()
    for batch in loader:
        inputs = _prepare(batch["image"], rt, cfg, channels_last)
        labels = batch["label"].to(rt.device, non_blocking=True)
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32, enabled=rt.amp_dtype is not None):
            out = model(inputs)
        fused = out.logits[FUSED].float()
        ce = torch.nn.functional.cross_entropy(fused, labels, reduction="sum").double()
        sums += torch.cat([topk_correct(fused, labels), topk_correct(out.logits[REGION_NAMES[0]].float(), labels, (1,)),
                           ce[None], ce.new_tensor([labels.shape[0]])])
        bar.update(task, advance=1)
    bar.remove_task(task)
    if rt.world_size > 1:
        dist.all_reduce(sums)
    top1, top5, g1, ce, n = sums.tolist()
    n = max(n, 1.0)
    return {"val_top1": top1 / n, "val_top5": top5 / n, "val_global_top1": g1 / n, "val_loss": ce / n,
            "val_images": int(n), "val_time_s": time.perf_counter() - t0}

