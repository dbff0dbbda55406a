"""Exports: features to Parquet (`cli.py extract`) and the model to ONNX (`cli.py export`).

Features file: one row per image - image_id, pid, camid, split, feature (fixed-size list<float32> of
[E_g, E_l]); schema metadata key `reidtrain` (JSON) records the model, checkpoint, epoch, feature layout and
normalisation. Readable with plain pyarrow / pandas / `datasets`; written atomically.

ONNX: the graph takes one float32 input per model input key (in `model.input_keys` order: "body" for
baseline and the whole-image models, the five region crops otherwise), RGB in [0, 1], NCHW at the trained
sizes, with a dynamic batch axis, and returns "features" (B, model.feature_dim). The per-image normalisation of
training is part of the graph.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from reidkit.atomic import atomic_path

from .data import IMAGENET_MEAN, IMAGENET_STD
from .evaluate import (eval_dataset, eval_device, extract_features, load_trained, meta_inputs, resolve_checkpoint,
                       run_folder)
from .runlock import file_lock, reading_run
from reidkit.errors import ReidError

FEATURES_METADATA_KEY = b"reidtrain"


class ExportError(ReidError, RuntimeError):
    """An export could not be written or does not check out; the message names the file."""


def extract_to_parquet(checkpoint: Path, cache: Path, out: Path, splits: Sequence[str] = ("query", "gallery"),
                       flip_average: bool = False, batch_size: int = 64, workers: int = 2, device: str = "auto",
                       progress: bool = True, console=None) -> Path:
    """Features of `splits` of `cache` under the model of `checkpoint`, as one Parquet file at `out`."""
    dev = eval_device(device)
    with reading_run(run_folder(Path(checkpoint))), file_lock(Path(out)):
        return _extract_to_parquet(resolve_checkpoint(Path(checkpoint)), dev, cache, out, splits, flip_average,
                                   batch_size, workers, progress, console)


def _extract_to_parquet(checkpoint: Path, dev, cache: Path, out: Path, splits: Sequence[str], flip_average: bool,
                        batch_size: int, workers: int, progress: bool, console) -> Path:
    model, meta, epoch = load_trained(checkpoint, dev)
    tables = []
    dim = None
    for split in splits:
        f = extract_features(model, eval_dataset(Path(cache), split, meta), meta["normalize"], dev, batch_size,
                             workers, flip_average, progress, console)
        dim = f.features.shape[1]
        tables.append(pa.table({
            "image_id": pa.array(f.image_ids, pa.string()),
            "pid": pa.array(f.pids.astype(np.int32)),
            "camid": pa.array(f.camids.astype(np.int16)),
            "split": pa.array([split] * len(f.image_ids), pa.string()),
            "feature": pa.FixedSizeListArray.from_arrays(pa.array(f.features.reshape(-1), pa.float32()), dim),
        }))
    table = pa.concat_tables(tables)
    info = {"model": meta["model"], "checkpoint": str(checkpoint), "epoch": epoch, "cache": str(cache),
            "splits": list(splits), "feature_dim": dim, "flip_average": flip_average,
            "layout": feature_layout(model),
            "normalize": meta["normalize"], "input_sizes": {k: list(s.size) for k, s in meta_inputs(meta).items()},
            "body_size": meta.get("body_size"), "part_size": meta.get("part_size"),
            "crops": meta.get("crops", "stored")}
    table = table.replace_schema_metadata({FEATURES_METADATA_KEY: json.dumps(info).encode()})
    try:
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
    except OSError as e:  # pyarrow's write errors name no file
        if isinstance(e, ReidError):
            raise
        raise ExportError(f"{out}: cannot write the features file ({' '.join(str(e).split())})") from e
    return Path(out)


def feature_layout(model: nn.Module) -> str:
    """The feature's layout in words, e.g. "[E_g (256), E_l (512)]", from the model's `feature_layout`."""
    parts = getattr(model, "feature_layout", ())
    return "[" + ", ".join(f"{name} ({dim})" for name, dim in parts) + "]" if parts else f"({model.feature_dim})"


def read_features(path: Path) -> tuple[pa.Table, np.ndarray, dict]:
    """(table without the feature column, features (N, D) float32, metadata) of a features file."""
    table = pq.read_table(path)
    if "feature" not in table.column_names:
        raise ExportError(f"{path}: no 'feature' column - not a features file")
    col = table.column("feature").combine_chunks()
    feats = col.flatten().to_numpy().reshape(len(col), -1).astype(np.float32)
    meta = json.loads((table.schema.metadata or {}).get(FEATURES_METADATA_KEY, b"{}"))
    return table.drop_columns(["feature"]), feats, meta


class InferenceModel(nn.Module):
    """What the ONNX graph computes: RGB [0, 1] inputs -> normalisation of training -> features [E_g, E_l]."""

    def __init__(self, model: nn.Module, normalize: str) -> None:
        super().__init__()
        self.model = model
        self.keys = tuple(model.input_keys)
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.keys, images))
        if self.normalize == "channel-mean":   # the body image's channel means, for every input (data.normalize_inputs)
            mean = inputs.get("body", images[0]).mean(dim=(2, 3), keepdim=True)
            inputs = {k: x - mean for k, x in inputs.items()}
        else:
            inputs = {k: (x - self.mean) / self.std for k, x in inputs.items()}
        return self.model(inputs).features


def export_onnx(checkpoint: Path, out: Path, opset: int = 17, exporter: str = "auto",
                verify: bool = True, batch: int = 2) -> dict:
    """Write the model of `checkpoint` as ONNX to `out` (atomic) and check it with onnx.checker.

    exporter: "torchscript" (torch.onnx's tracing exporter: seconds), "dynamo" (torch.export based: about ten
    times slower) or "auto" (torchscript, and dynamo when tracing fails - e.g. `baseline`, whose strip bounds
    are computed with Python's round() on the traced image height). verify: run the graph on one random
    sample (onnxruntime when installed, else onnx's reference evaluator) and compare with PyTorch; the largest
    deviation relative to the largest feature value must stay below 1e-3.
    Returns {"path", "inputs", "output", "feature_dim", "max_rel_deviation" (or None), "exporter"}.
    """
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    lo, hi = opset_range(exporter)
    if not lo <= opset <= hi:
        raise ExportError(f"--opset {opset}: the {exporter} exporter writes opsets {lo} to {hi}")
    if exporter == "auto" and opset > opset_range("torchscript")[1]:
        exporter = "dynamo"  # only the dynamo exporter writes the newest opsets
    with reading_run(run_folder(Path(checkpoint))), file_lock(Path(out)):
        return _export_onnx(resolve_checkpoint(Path(checkpoint)), Path(out), opset, exporter, verify, batch)


def opset_range(exporter: str) -> tuple[int, int]:
    """The ONNX opsets an exporter of this torch writes ('auto': either's)."""
    try:
        from torch.onnx import _constants as c
        low, script_max, high = c.ONNX_MIN_OPSET, c.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, c.ONNX_MAX_OPSET
    except (ImportError, AttributeError):
        low, script_max, high = 7, 20, 23
    return {"torchscript": (low, script_max)}.get(exporter, (low, high))


DYNAMO_MIN_OPSET = 18   # the dynamo exporter writes at least opset 18 (a lower --opset gives 18, and says so)


class _OnceFilter:
    """Let the first "torchvision is not installed" warning of torch.onnx's registry through, drop the repeats
    (it logs one per torchvision operator it skips: dozens of identical lines per export)."""

    def __init__(self) -> None:
        self.seen = False

    def filter(self, record) -> bool:
        if "torchvision is not installed" not in str(record.msg):
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = "torchvision is not installed: its operators are not registered (harmless here)", ()
        return True


def _quiet_registry_warnings() -> None:
    import logging

    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    if not any(isinstance(f, _OnceFilter) for f in logger.filters):
        logger.addFilter(_OnceFilter())


def _export_onnx(checkpoint: Path, out: Path, opset: int, exporter: str, verify: bool, batch: int) -> dict:
    import warnings

    import onnx

    from reidkit.errors import os_error_in_chain

    model, meta, _ = load_trained(checkpoint, "cpu")
    opset = max(opset, int(getattr(model, "min_onnx_opset", 0)))   # e.g. hacnn's GridSample
    wrapper = InferenceModel(model, meta["normalize"]).eval()
    sizes = {k: tuple(spec.size) for k, spec in meta_inputs(meta).items()}
    example = tuple(torch.rand(batch, 3, *sizes[k]) for k in wrapper.keys)
    names = list(wrapper.keys)

    def run(kind: str, tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # tracer warnings about the input checks (constant here)
            if kind == "dynamo":
                _quiet_registry_warnings()
                batch_dim = torch.export.Dim("batch", min=1, max=4096)
                torch.onnx.export(wrapper, example, str(tmp), input_names=names, output_names=["features"],
                                  opset_version=max(opset, DYNAMO_MIN_OPSET), dynamo=True, external_data=False,
                                  verbose=False,
                                  dynamic_shapes={"images": tuple({0: batch_dim} for _ in names)})
            else:
                torch.onnx.export(wrapper, example, str(tmp), input_names=names, output_names=["features"],
                                  opset_version=opset, dynamo=False,
                                  dynamic_axes={k: {0: "batch"} for k in [*names, "features"]})

    with atomic_path(out) as tmp:
        used = "torchscript" if exporter == "auto" else exporter
        try:
            try:
                run(used, tmp)
            except Exception as e:
                if exporter != "auto" or os_error_in_chain(e) is not None:  # a full disk is no tracing problem
                    raise
                used = "dynamo"
                run(used, tmp)
        except Exception as e:  # the exporters raise many types; say which model and file
            disk = os_error_in_chain(e)
            if disk is not None:
                raise ExportError(f"{out}: cannot write the ONNX file ({disk.strerror or disk})") from e
            raise ExportError(f"{out}: ONNX export of {meta['model']!r} ({used} exporter) failed: "
                              f"{type(e).__name__}: {e}") from e
        graph = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(graph, full_check=True)
        except Exception as e:
            raise ExportError(f"{out}: exported graph does not pass onnx.checker: {e}") from e
        deviation = _verify(graph, wrapper, sizes) if verify else None
        if deviation is not None and not deviation < 1e-3:
            raise ExportError(f"{out}: ONNX output deviates from PyTorch by {deviation:.2e} (relative)")
    written = max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=opset)
    return {"path": str(out), "inputs": {k: [None, 3, *sizes[k]] for k in names}, "output": "features",
            "feature_dim": int(model.feature_dim), "max_rel_deviation": deviation, "exporter": used,
            "opset": int(written)}


def _verify(graph, wrapper: InferenceModel, sizes: dict) -> float:
    """Largest |onnx - torch| / max |torch| on one random sample."""
    x = tuple(torch.rand(1, 3, *sizes[k], generator=torch.Generator().manual_seed(1)) for k in wrapper.keys)
    with torch.no_grad():
        ref = wrapper(*x).numpy()
    feeds = {k: v.numpy() for k, v in zip(wrapper.keys, x)}
    try:
        import onnxruntime as ort
        got = ort.InferenceSession(graph.SerializeToString()).run(None, feeds)[0]
    except ImportError:
        import warnings

        from onnx.reference import ReferenceEvaluator
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            got = ReferenceEvaluator(graph).run(None, feeds)[0]
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
