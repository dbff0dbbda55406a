"""Evaluation: features of the query / gallery splits, the protocol of the dataset, metrics and reports.

    evaluate(EvalConfig) -> EvalOutcome      writes into the output folder (default RUN_DIR/eval):
        metrics.json       R1/R5/R10/R20, mAP and mINP in percent, the CMC curve, protocol, distance, counts
        cmc.png            CMC curve (reports.plot_cmc)
        ranked_list.png    the first queries and their top-k gallery images, right / wrong framed (Fig. 6);
        ranked.json        the same lists as image ids (recipes draw several models side by side from it)
        attention-N.png    intra-attention maps of blocks 2-4 of the global and part branches (Fig. 7),
                           for variants with intra-attention
        summary.md/.html   one page with the table, the figures and the configuration
        branches.md        with `branches` (`evaluate --branches`, Table 7): every per-branch feature the model
                           exposes scored alone with the same protocol; also under "branches" in metrics.json
    extract_features(...) -> Features        also behind `cli.py extract` (see reidtrain.export)

Features are [E_g, E_l] (Eq. 9) of the model in eval mode, optionally averaged with those of the mirrored
inputs. `branches`: a model that returns alternative test-time features in ModelOutput.extras under keys
"branch:LABEL" (the five-branch variants: global, head, upper_body, upper_leg, lower_leg, part_fusion = E_l,
global_part = [E_g, E_l]) has each of them scored as its own feature; other models are refused with a clear
error. The ranked lists use the plain distance (not the re-ranked one). Protocol "auto": CUHK03 caches
made with the classic (1,367/100) split use the single-gallery-shot CMC averaged over seeded repeats;
everything else (Market-1501, DukeMTMC-reID, MSMT17, CUHK03 767/700, folder datasets) the Market-1501
protocol. A CUHK03 cache whose recorded reader option is "auto" is taken
as classic when its query set has at most 200 identities (classic: 100, new: 700).
CUHK01 caches (query = camera A, gallery = camera B) use "cuhk01-single-shot": per seeded repeat one query
image and one gallery image per identity, CMC and mAP (= mean reciprocal rank) averaged over `repeats`;
"cuhk01-multi-shot" ranks every camera-A image against every camera-B image (the Market-1501 ranking, two
true matches per query); "cuhk01-multi-query" does the same with one query per identity, the mean of the
features of its camera-A images.
"""
from __future__ import annotations

import dataclasses
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from reidkit.atomic import atomic_write_text
from reidkit.errors import ReidError
from reidkit.typedconfig import to_dict

from .allocator import keep_freed_memory
from .checkpoint import CheckpointError, load_checkpoint
from .config import EvalConfig, check_size
from .data import (ReidDataset, SampleTransform, SplitData, decode, input_sizes, load_split, make_loader,
                   normalize_inputs)
from .runlock import LOCK_NAME, RunLock, reading_run
from .threads import set_threads

SUMMARY_RANKS = (1, 5, 10, 20)
BRANCH_PREFIX = "branch:"
"""ModelOutput.extras keys that `branches` scores (reidtrain.model.network.BRANCH_PREFIX)."""
BRANCHES_FILE = "branches.md"


class NoBranchFeaturesError(ReidError, ValueError):
    """`--branches` on a model that exposes no per-branch features."""


# ------------------------------------------------------------------------------------------------ the model
def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run directory (its model.pt, else checkpoints/last.pt)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "model.pt", path / "checkpoints" / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: no model.pt or checkpoints/last.pt in this run directory")
    return path


def run_folder(path: Path) -> Path:
    """The run folder of a `checkpoint` argument (a run folder itself, or a checkpoint file in one)."""
    return Path(path) if Path(path).is_dir() else run_dir_of(Path(path))


def run_dir_of(checkpoint: Path) -> Path:
    """The training run directory a checkpoint belongs to (checkpoints/last.pt -> RUN_DIR)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def meta_inputs(meta: dict) -> dict:
    """The model inputs (key -> InputSpec) a checkpoint's meta describes (older checkpoints: body / part sizes)."""
    from .model.registry import get_model, resolve_inputs

    defaults = get_model(meta["model"]).defaults.inputs
    if meta.get("input_sizes"):
        return resolve_inputs(defaults, sizes={k: tuple(v) for k, v in meta["input_sizes"].items()})
    return resolve_inputs(defaults, meta.get("body_size"), meta.get("part_size"))


def model_from_meta(meta: dict) -> nn.Module:
    """Build (untrained) the registered model a checkpoint's meta describes."""
    from .model.contract import LossSettings
    from .model.registry import get_model

    entry = get_model(meta["model"])
    if "model_options" in meta:
        options = meta["model_options"]
    else:  # checkpoints of the five-branch net before the registry; before `attention_norm` existed: without it
        options = {"attention_norm": bool(meta.get("attention_norm", False))}
    losses = LossSettings(**meta["losses"]) if meta.get("losses") else None
    return entry.build(int(meta["num_classes"]), meta_inputs(meta), losses or entry.defaults.losses,
                       entry.parse_options(options))


def load_trained(checkpoint: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict, int]:
    """Rebuild the model a training checkpoint describes; returns (model in eval mode, meta, epoch)."""
    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta")
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path}: no model description ('meta') - not written by `cli.py train`")
    sizes = ("input_sizes",) if "input_sizes" in meta else ("body_size", "part_size")
    missing = [k for k in ("num_classes", *sizes, "normalize", "input_columns") if k not in meta]
    if missing or not isinstance(ckpt.get("model"), dict):
        what = f"meta lacks {missing}" if missing else "no 'model' weights"
        raise CheckpointError(f"{path}: incomplete training checkpoint ({what})")
    try:
        if "input_sizes" in meta:
            if not isinstance(meta["input_sizes"], dict):
                raise ValueError(f"input_sizes must map input keys to sizes, got {meta['input_sizes']!r}")
            for key, size in meta["input_sizes"].items():
                check_size(f"input_sizes[{key!r}]", size)
        else:
            for key in ("body_size", "part_size"):
                check_size(key, meta[key])
    except ValueError as e:
        raise CheckpointError(f"{path}: meta {e}") from e
    try:
        model = model_from_meta(meta)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its model description cannot be built ({type(e).__name__}: {e})") from e
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit model {meta['model']!r}: {e}") from e
    return model.to(device).eval(), meta, int(ckpt.get("epoch", 0))


def eval_device(name: str) -> torch.device:
    from .devices import torch_device
    return torch_device(name)


def eval_dataset(cache: Path, split: str, meta: dict) -> ReidDataset:
    """One split with the model's input columns, resized to its input sizes, no augmentation; the crops come
    from where the model was trained on them (checkpoint `crops`; checkpoints without it: the stored crops), at the
    beta it was trained at (TrainConfig.beta; None: the cache's boxes)."""
    beta = (meta.get("config") or {}).get("beta")
    data = load_split(Path(cache), split, dict(meta["input_columns"]), meta.get("crops", "stored"), beta)
    return ReidDataset(data, SampleTransform(input_sizes(meta_inputs(meta))))


# ------------------------------------------------------------------------------------------------- features
@dataclass
class Features:
    split: str
    image_ids: list[str]
    pids: np.ndarray
    camids: np.ndarray
    features: np.ndarray      # (N, D) float32: [E_g, E_l]
    extra: dict[str, np.ndarray] = field(default_factory=dict)   # label -> (N, d): the "branch:LABEL" extras

    def with_features(self, features: np.ndarray) -> "Features":
        """The same images with other features (e.g. one branch's)."""
        return Features(self.split, self.image_ids, self.pids, self.camids, features)


def _branch_extras(model: nn.Module, out, prefix: str) -> dict[str, torch.Tensor]:
    found = {k[len(prefix):]: v for k, v in out.extras.items() if k.startswith(prefix)}
    if not found:
        name = getattr(model, "model_name", type(model).__name__)
        raise NoBranchFeaturesError(f"model {name!r} exposes no per-branch features (ModelOutput.extras "
                                    f"'{prefix}LABEL'), so --branches has nothing to score; the five-branch "
                                    f"variants do")
    return found


@torch.no_grad()
def extract_features(model: nn.Module, dataset: ReidDataset, normalize: str = "channel-mean",
                     device: torch.device | str = "cpu", batch_size: int = 64, workers: int = 2,
                     flip_average: bool = False, progress: bool = True, console=None,
                     extras_prefix: str | None = None) -> Features:
    """[E_g, E_l] of every image of `dataset` in order (model in eval mode); with `extras_prefix` also the
    model's extras under that key prefix (Features.extra, prefix stripped; NoBranchFeaturesError on the first
    batch when it has none)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    model.eval()
    device = torch.device(device)
    keep_freed_memory()
    loader = make_loader(dataset, batch_size, workers)
    chunks, extra_chunks = [], {}
    with Progress(TextColumn(f"[bold]features {dataset.data.split}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("", total=len(dataset))
        for batch in loader:
            inputs = normalize_inputs({k: v.to(device) for k, v in batch["inputs"].items()}, normalize)
            out = model(inputs)
            feats = out.features.float()
            extra = _branch_extras(model, out, extras_prefix) if extras_prefix is not None else {}
            if flip_average:
                mirrored = model({k: v.flip(-1) for k, v in inputs.items()})
                feats = (feats + mirrored.features.float()) / 2
                if extras_prefix is not None:
                    flipped = _branch_extras(model, mirrored, extras_prefix)
                    extra = {k: (v.float() + flipped[k].float()) / 2 for k, v in extra.items()}
            chunks.append(feats.cpu().numpy())
            for k, v in extra.items():
                extra_chunks.setdefault(k, []).append(v.float().cpu().numpy())
            bar.update(task, advance=len(feats))
    data = dataset.data
    feats = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    extra = {k: np.concatenate(v).astype(np.float32) for k, v in extra_chunks.items()}
    return Features(data.split, list(data.image_ids), data.pids.copy(), data.camids.copy(), feats.astype(np.float32),
                    extra)


# ------------------------------------------------------------------------------------------------- protocol
def choose_protocol(requested: str, cache: Path, dataset: str, num_query_ids: int) -> str:
    """'market', 'cuhk03-classic' or 'cuhk01-single-shot' (see the module docstring); `requested` other than
    'auto' wins."""
    if requested != "auto":
        return requested
    if dataset == "cuhk01":
        return "cuhk01-single-shot"
    if not dataset.startswith("cuhk03"):
        return "market"
    from posecrop.cache_reader import cache_settings
    option = str(cache_settings(cache).get("dataset_options", {}).get("protocol", "auto"))
    if option == "new":
        return "market"
    if option in ("classic", "folder"):
        return "cuhk03-classic"
    return "cuhk03-classic" if num_query_ids <= 200 else "market"  # classic: 100 test ids; new: 700


def compute_result(cfg: EvalConfig, protocol: str, q: Features, g: Features):
    """EvalResult of the protocol, with the configured distance and optional k-reciprocal re-ranking."""
    from .metrics import average_per_identity, evaluate_cuhk03_classic, evaluate_market, evaluate_single_shot

    if protocol == "cuhk01-multi-query":   # one query per identity: the mean of its (camera-A) query features
        qf, qp, qc = average_per_identity(q.features, q.pids, q.camids)
        q = Features(q.split, [f"pid {p}" for p in qp.tolist()], qp, qc, qf)
    kwargs = dict(qf=q.features, gf=g.features, q_pids=q.pids, g_pids=g.pids, q_camids=q.camids,
                  g_camids=g.camids, metric=cfg.distance)
    if cfg.rerank:
        from .rerank import k_reciprocal_rerank_features
        qf, gf = q.features, g.features
        if cfg.distance == "cosine":   # re-rank the cosine geometry: squared distances of unit vectors
            qf = qf / np.maximum(np.linalg.norm(qf, axis=1, keepdims=True), 1e-12)
            gf = gf / np.maximum(np.linalg.norm(gf, axis=1, keepdims=True), 1e-12)
        distmat = k_reciprocal_rerank_features(qf, gf, cfg.rerank_k1, cfg.rerank_k2, cfg.rerank_lambda,
                                               convention=cfg.rerank_convention)
        kwargs.update(qf=None, gf=None, distmat=distmat)
    if protocol == "cuhk03-classic":
        return evaluate_cuhk03_classic(repeats=cfg.repeats, seed=cfg.seed, **kwargs)
    if protocol == "cuhk01-single-shot":
        return dataclasses.replace(evaluate_single_shot(repeats=cfg.repeats, seed=cfg.seed, **kwargs),
                                   protocol=protocol)
    result = evaluate_market(**kwargs)
    return dataclasses.replace(result, protocol=protocol) if protocol.startswith("cuhk01") else result


# -------------------------------------------------------------------------------------------------- reports
@dataclass
class EvalOutcome:
    out: Path
    metrics: dict
    result: object                     # metrics.EvalResult
    files: list[Path] = field(default_factory=list)


RANKED_FILE = "ranked.json"


def decode_display(data: SplitData, index: int) -> np.ndarray:
    """The decoded picture of row `index` of a split read with one image column."""
    key = next(iter(data.images))
    return decode(data.encoded(key, index), f"{data.cache}/{data.split} {data.image_ids[index]!r}")


def ranked_list_images(cache: Path, lists: Mapping[str, dict]) -> tuple[list[np.ndarray], dict[str, list], list[str]]:
    """The pictures of ranked lists (RANKED_FILE contents by model, all with the first one's queries) from a crop
    cache: the query images, each model's gallery rows (None where a list has no image) and the query titles."""
    q = load_split(Path(cache), "query", {"image": "whole"})
    g = load_split(Path(cache), "gallery", {"image": "whole"})
    q_index = {iid: i for i, iid in enumerate(q.image_ids)}
    g_index = {iid: i for i, iid in enumerate(g.image_ids)}
    first = next(iter(lists.values()))
    gallery = {m: [[decode_display(g, g_index[iid]) if iid else None for iid in row] for row in r["gallery"]]
               for m, r in lists.items()}
    return ([decode_display(q, q_index[iid]) for iid in first["queries"]], gallery,
            [f"pid {p}" for p in first["query_pids"]])


def ranked_lists(q: Features, g: Features, metric: str, count: int, k: int) -> dict:
    """Top-k gallery images of the first `count` queries (one per identity) that have a true match (other
    camera) in the gallery: {"queries", "query_pids", "gallery" (image ids, None where missing), "correct", "k"}."""
    from .metrics import pairwise_distance, top_k_gallery

    other_cam = (q.pids[:, None] == g.pids[None, :]) & (q.camids[:, None] != g.camids[None, :])
    valid = np.flatnonzero(other_cam.any(axis=1))
    _, first = np.unique(q.pids[valid], return_index=True)      # one query per identity, in query order
    chosen = valid[np.sort(first)][:count]
    if len(chosen) == 0:
        return {"queries": [], "query_pids": [], "gallery": [], "correct": [], "k": k}
    d = pairwise_distance(q.features[chosen], g.features, metric)
    idx, correct = top_k_gallery(d, q.pids[chosen], g.pids, q.camids[chosen], g.camids, k=k)
    return {"queries": [q.image_ids[i] for i in chosen], "query_pids": [int(q.pids[i]) for i in chosen],
            "gallery": [[g.image_ids[j] if j >= 0 else None for j in row] for row in idx.tolist()],
            "correct": correct.tolist(), "k": k}


def ranked_list_figure(path: Path, q_ds: ReidDataset, g_ds: ReidDataset, ranked: dict, title: str) -> Path | None:
    """Fig. 6 from `ranked_lists`: each query, its top-k gallery images framed right / wrong."""
    from .reports import plot_ranked_list

    if not ranked["queries"]:
        return None
    q_index = {iid: i for i, iid in enumerate(q_ds.data.image_ids)}
    g_index = {iid: i for i, iid in enumerate(g_ds.data.image_ids)}
    gallery = [[_display(g_ds, g_index[iid]) if iid is not None else None for iid in row] for row in ranked["gallery"]]
    return plot_ranked_list([_display(q_ds, q_index[iid]) for iid in ranked["queries"]], {title: gallery},
                            {title: ranked["correct"]}, path, titles=[f"pid {p}" for p in ranked["query_pids"]])


def _display(dataset: ReidDataset, index: int) -> np.ndarray:
    """The picture shown for an image: the model's first input (the body crop, or the whole image)."""
    images = dataset.load(index)
    return next(iter(images.values()))


@torch.no_grad()
def attention_figures(out: Path, model: nn.Module, q_ds: ReidDataset, meta: dict, device: torch.device,
                      count: int) -> list[Path]:
    """Fig. 7 for the first `count` queries (models with attention maps only): maps named after an input are laid
    over that input, the others over the model's first input."""
    from .reports import plot_attention_maps

    if count == 0 or len(q_ds) == 0:
        return []
    items = [q_ds[i] for i in range(min(count, len(q_ds)))]
    inputs = {k: torch.stack([it["inputs"][k] for it in items]) for k in items[0]["inputs"]}
    model.eval()
    model(normalize_inputs({k: v.to(device) for k, v in inputs.items()}, meta["normalize"]))
    maps = {b: m for b, m in model.attention_maps().items() if m}
    if not maps:
        return []
    files = []
    first = next(iter(inputs))
    five_branch = all(name in inputs for name in maps)
    for i in range(len(items)):
        crops = {k: inputs[k][i].permute(1, 2, 0).numpy() for k in inputs}
        crops = crops | {name: crops[first] for name in maps if name not in crops}
        files.append(plot_attention_maps(crops, maps, out / f"attention-{i}.png", index=i,
                                         size_hw=tuple(inputs[first].shape[-2:]), first_block=2 if five_branch else 1))
    return files


# ------------------------------------------------------------------------------------------------- evaluate
EVAL_OUTPUT_PATTERNS = ("metrics.json", "cmc.png", "ranked.json", "ranked_list.png", "attention-*.png",
                        "summary.md", "summary.html", BRANCHES_FILE)


@contextlib.contextmanager
def staging_folder(out: Path):
    """A fresh hidden folder OUT/.eval-<token>.tmp, removed when the block ends (after publish_staged: empty)."""
    import secrets
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".eval-*.tmp"):  # of an evaluation a kill interrupted (we hold OUT/.lock)
        shutil.rmtree(leftover, ignore_errors=True)
    stage = out / f".eval-{secrets.token_hex(6)}.tmp"
    stage.mkdir()
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish_staged(stage: Path, out: Path, names: list[str]) -> list[Path]:
    """Move the staged files into `out` (metrics.json last: it marks a complete evaluation) after removing the
    outputs of an earlier evaluation that this one does not rewrite (e.g. more attention figures)."""
    keep = set(names)
    for pattern in EVAL_OUTPUT_PATTERNS:
        for old in out.glob(pattern):
            if old.name not in keep and old.is_file():
                old.unlink()
    order = sorted(names, key=lambda n: n == "metrics.json")
    for name in order:
        os.replace(stage / name, out / name)
    return [out / n for n in names]


def evaluate(cfg: EvalConfig, progress: bool = True, console=None) -> EvalOutcome:
    """Evaluate cfg.checkpoint on cfg.cache (query vs gallery); write metrics and reports to cfg.out.

    Locks (reidtrain.runlock): the run folder shared (no train replaces it meanwhile), the output folder
    exclusive. The reports are written into a staging folder and moved into place at the end, so a failure
    (a full disk) leaves the previous reports whole and no partial set."""
    from rich.console import Console

    if cfg.checkpoint is None or cfg.cache is None:
        raise ValueError("EvalConfig needs a checkpoint and a cache")
    console = console or Console(stderr=True)
    set_threads(cfg.threads, cfg.workers)
    device = eval_device(cfg.device)
    with reading_run(run_folder(Path(cfg.checkpoint))):
        checkpoint = resolve_checkpoint(Path(cfg.checkpoint))
        out = Path(cfg.out) if cfg.out is not None else run_dir_of(checkpoint) / "eval"
        with RunLock(out / LOCK_NAME, f"evaluation folder {out}"):
            return _evaluate(cfg, checkpoint, out, device, progress, console)


def _evaluate(cfg: EvalConfig, checkpoint: Path, out: Path, device: torch.device, progress: bool,
              console) -> EvalOutcome:
    model, meta, epoch = load_trained(checkpoint, device)
    q_ds, g_ds = eval_dataset(cfg.cache, "query", meta), eval_dataset(cfg.cache, "gallery", meta)
    feats = {}
    for name, ds in (("query", q_ds), ("gallery", g_ds)):
        feats[name] = extract_features(model, ds, meta["normalize"], device, cfg.batch_size, cfg.workers,
                                       cfg.flip_average, progress, console,
                                       BRANCH_PREFIX if cfg.branches else None)
    q, g = feats["query"], feats["gallery"]
    dataset = q_ds.data.dataset
    protocol = choose_protocol(cfg.protocol, Path(cfg.cache), dataset, len(np.unique(q.pids)))
    result = compute_result(cfg, protocol, q, g)
    summary = result.summary(SUMMARY_RANKS)
    metrics = {"model": meta["model"], "checkpoint": str(checkpoint), "epoch": epoch, "cache": str(cfg.cache),
               "dataset": dataset, "protocol": protocol, "distance": cfg.distance, "rerank": cfg.rerank,
               "rerank_convention": cfg.rerank_convention if cfg.rerank else None, "flip_average": cfg.flip_average,
               **summary, "cmc": [float(v) for v in result.cmc],
               "num_gallery": int(len(g.pids)), "notes": result.notes, "eval_config": to_dict(cfg)}
    if cfg.branches:
        metrics["branches"] = branch_results(cfg, protocol, q, g)
    # Everything is written into a staging folder inside `out` and moved into place at the end (metrics.json
    # last): a full disk or a kill never leaves a half-written report set, and the previous one stays whole.
    try:
        files = _write_reports(cfg, out, meta, epoch, metrics, result, q, g, q_ds, g_ds, model, device, dataset,
                               protocol)
    except OSError as e:
        if e.filename or isinstance(e, ReidError):
            raise
        raise EvalWriteError(e.errno, f"cannot write the evaluation reports ({e.strerror or e})", str(out)) from e
    return EvalOutcome(out, metrics, result, files)


def branch_results(cfg: EvalConfig, protocol: str, q: Features, g: Features) -> dict[str, dict]:
    """Table 7: label -> {R1, R5, R10, R20, mAP (percent), dim} of every per-branch feature scored alone, with
    the protocol, distance and re-ranking of the evaluation."""
    out = {}
    for label, qf in q.extra.items():
        result = compute_result(cfg, protocol, q.with_features(qf), g.with_features(g.extra[label]))
        out[label] = {**result.summary(SUMMARY_RANKS), "dim": int(qf.shape[1])}
    return out


def branches_markdown(title: str, branches: dict[str, dict]) -> str:
    """The per-branch table (Table 7's layout: one row per feature)."""
    cols = [f"R{r}" for r in SUMMARY_RANKS] + ["mAP"]
    lines = [f"# {title}", "", "| feature | dim | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for label, m in branches.items():
        cells = ["-" if m.get(c) is None else f"{m[c]:.2f}" for c in cols]
        lines.append(f"| {label} | {m.get('dim', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class EvalWriteError(ReidError, OSError):
    """The reports of an evaluation could not be written (full or read-only disk); names the folder."""


def _write_reports(cfg: EvalConfig, out: Path, meta: dict, epoch: int, metrics: dict, result, q, g, q_ds, g_ds,
                   model, device, dataset: str, protocol: str) -> list[Path]:
    from .reports import plot_cmc, write_summary

    with staging_folder(out) as stage:
        files = [stage / "metrics.json"]
        atomic_write_text(files[0], json.dumps(metrics, indent=1, default=str))
        if "branches" in metrics:
            files.append(stage / BRANCHES_FILE)
            atomic_write_text(files[-1], branches_markdown(
                f"{meta['model']} on {dataset}: each feature alone ({protocol} protocol, {cfg.distance})",
                metrics["branches"]))
        if cfg.reports:
            label = meta["model"]
            figures = [plot_cmc({label: result}, stage / "cmc.png",
                                title=f"CMC - {dataset} ({protocol} protocol)")]
            ranked = ranked_lists(q, g, cfg.distance, cfg.ranked_queries, cfg.topk)
            atomic_write_text(stage / RANKED_FILE, json.dumps(ranked))
            files.append(stage / RANKED_FILE)
            figure = ranked_list_figure(stage / "ranked_list.png", q_ds, g_ds, ranked, label)
            figures += [figure] if figure is not None else []
            figures += attention_figures(stage, model, q_ds, meta, device, cfg.attention_samples)
            summary_path = write_summary(stage, {label: result}, figures,
                                         {"eval": to_dict(cfg), "train": meta.get("config", {}), "epoch": epoch},
                                         title=f"{label} on {dataset}: {protocol} protocol")
            files += [Path(f) for f in figures] + [summary_path, summary_path.with_suffix(".html")]
        return publish_staged(stage, out, [Path(f).name for f in files])
