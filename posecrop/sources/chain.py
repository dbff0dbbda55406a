"""A chain of pose sources tried per image in order (`--pose-source posegan-csv,blazepose`), and `auto`.

Per image the sources are tried in order; an image goes on to the next source when the current one has nothing for
it (PoseNotCoveredError: no keypoint file, not listed in the pose-gan CSV) or finds no person (every joint missing).
The first source with at least one joint gives the image its keypoints, and its name is recorded per row (cache
column `pose_source`). An image that some source looked at without finding a person keeps the all-missing pose and
is recorded as "none": the canonical repair's frame fallback places it. An image no source covers fails with the
reasons of every source; a corrupt keypoint file (any other PoseReadError) fails the image at once, it is not
silently replaced by the next source.

Where the sources run: the crop stage runs the chain's head in its main process (precomputed keypoints read per
image, mmpose batched) and, from the first source that says `in_worker = True` (BlazePose: CPU-bound, per image),
the rest of the chain in its worker processes, each with its own model. Precomputed sources may follow it (they also
run in a worker); mmpose may not.

`auto` (also the default) picks one source, the first of: openpose-json when ROOT/keypoints exists; mmpose when its
weights can be had without a download (`checkpoint` given, or the config's weights already in the torch hub
cache); blazepose when mediapipe with its bundled model is installed.

Options (`pose_options`, `--pose-option KEY=VALUE`): a plain key goes to every source of the chain that takes it
(an error when none does); `KIND.KEY` (or a `[crop.pose_options.KIND]` table) to that source only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reidkit.typedconfig import ConfigError

from ..keypoints import NUM_KEYPOINTS
from . import make_pose_source, pose_source_kinds, source_parameters
from .base import PoseBatchItem, PoseNotCoveredError, PoseReadError

AUTO = "auto"
NO_POSE = "none"  # pose_source of a row whose keypoints no source found (frame fallback)
PRECOMPUTED = ("openpose-json", "posegan-csv")


def parse_chain(spec: str | Sequence[str] | None) -> list[str]:
    """'posegan-csv,blazepose' -> ['posegan-csv', 'blazepose']; None / 'auto' -> ['auto']. Unknown kinds and
    repeated sources raise ConfigError (a ValueError)."""
    if spec is None:
        return [AUTO]
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    if not items or any(not s for s in items):
        raise ConfigError(f"pose source chain {spec!r}: empty entry (write e.g. posegan-csv,blazepose)")
    unknown = [s for s in items if s not in (*pose_source_kinds(), AUTO)]
    if unknown:
        raise ConfigError(f"unknown pose source {unknown[0]!r}; known kinds: {', '.join(pose_source_kinds())}, "
                          f"or {AUTO} (a chain: comma-separated kinds tried per image in order)")
    if AUTO in items and len(items) > 1:
        raise ConfigError(f"pose source chain {spec!r}: '{AUTO}' picks one source and cannot be part of a chain")
    if len(set(items)) != len(items):
        raise ConfigError(f"pose source chain {spec!r} names a source twice")
    return items


def route_options(kinds: Sequence[str], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The options of each source of a chain (see the module docstring)."""
    routed: dict[str, dict[str, Any]] = {k: {} for k in kinds}
    flat: dict[str, Any] = {}
    for key, value in options.items():
        kind, dot, sub = key.partition(".")
        if key in pose_source_kinds() and isinstance(value, dict):
            if key in routed:
                routed[key].update(value)
            continue  # options for a source the chain does not use (e.g. from a recipe)
        if dot and kind in pose_source_kinds():
            if kind in routed:
                routed[kind][sub] = value
            continue
        flat[key] = value
    for key, value in flat.items():
        takers = [k for k in kinds if key in source_parameters(k)[0]]
        if not takers:
            accepted = {k: source_parameters(k)[0] for k in kinds}
            raise ConfigError(f"pose option {key!r} is not taken by pose source(s) {', '.join(kinds)} (accepted: "
                             + "; ".join(f"{k}: {', '.join(v)}" for k, v in accepted.items()) + ")")
        for k in takers:
            routed[k].setdefault(key, value)
    return routed


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache) / "torch" / "hub"


def mmpose_weights(options: dict[str, Any]) -> tuple[bool, str]:
    """Whether the mmpose source can get its weights without a download, and why (not)."""
    if options.get("checkpoint") is not None:
        return True, f"checkpoint {options['checkpoint']} given"
    try:
        import mmpose  # noqa: F401
        from mmengine.config import Config

        from .mmpose_source import metafile_weights, resolve_config
    except ImportError as e:
        return False, f"mmpose is not importable ({e})"
    try:
        path = resolve_config(options.get("config"))
        url = Config.fromfile(str(path)).get("load_from") or metafile_weights(path)
    except Exception as e:  # noqa: BLE001 - a bad config: let the mmpose source itself not be chosen
        return False, f"its config cannot be read ({e})"
    if not url:
        return False, f"{path.name} names no weights"
    local = torch_hub_dir() / "checkpoints" / Path(str(url)).name
    if local.is_file():
        return True, f"weights in the torch hub cache ({local})"
    return False, f"not in the torch hub cache ({local}; pass --pose-checkpoint PATH)"


def auto_kind(root: Path, options: dict[str, Any]) -> str:
    """The source `auto` picks for dataset root `root` (see the module docstring)."""
    if (Path(root) / "keypoints").is_dir():
        return "openpose-json"
    ok, why = mmpose_weights(route_options(["mmpose"], _only_for(options, "mmpose"))["mmpose"])
    if ok:
        return "mmpose"
    from .blazepose import BlazePoseUnavailable, mediapipe_package

    try:
        mediapipe_package()
        return "blazepose"
    except BlazePoseUnavailable as e:
        raise ConfigError(f"--pose-source auto: no pose source can run here: no precomputed keypoints "
                         f"({Path(root) / 'keypoints'} does not exist), mmpose weights {why}, and {e}") from None


def _only_for(options: dict[str, Any], kind: str) -> dict[str, Any]:
    """The options a source `kind` takes (for probing; unrelated plain keys are dropped)."""
    accepted = source_parameters(kind)[0]
    return {k: v for k, v in options.items()
            if k in accepted or k == kind or k.startswith(kind + ".")}


def resolve_kinds(spec: str | Sequence[str] | None, root: Path, options: dict[str, Any]) -> list[str]:
    kinds = parse_chain(spec)
    return [auto_kind(root, options)] if kinds == [AUTO] else kinds


def build_chain(spec: str | Sequence[str] | None, root: Path, options: dict[str, Any]) -> "PoseChain":
    """The chain for `--pose-source spec` on dataset root `root` with `pose_options` `options`."""
    kinds = resolve_kinds(spec, root, options)
    from . import _source_class

    _check_order(kinds, [bool(getattr(_source_class(k), "in_worker", False)) for k in kinds])  # before any model loads
    routed = route_options(kinds, options)
    if "openpose-json" in kinds:
        routed["openpose-json"].setdefault("keypoints_dir", Path(root) / "keypoints")
    return PoseChain([make_pose_source(k, **routed[k]) for k in kinds], auto=parse_chain(spec) == [AUTO])


def _check_order(names: Sequence[str], in_worker: Sequence[bool]) -> int:
    """The index of the first source that runs in the workers; after it only precomputed sources may follow."""
    split = next((i for i, w in enumerate(in_worker) if w), len(names))
    late = [n for n, w in zip(names[split:], in_worker[split:]) if not w and n not in PRECOMPUTED]
    if late:
        raise ConfigError(f"pose source chain {','.join(names)}: {late[0]} runs batched in the main process and must "
                         f"come before {names[split]} (which runs in the worker processes)")
    return split


def runs_in_worker(source: Any) -> bool:
    return bool(getattr(source, "in_worker", False))


class PoseChain:
    """Pose sources tried per image in order; `head` runs in the crop stage's main process, `tail` (from the first
    source that runs in workers) in its worker processes."""

    def __init__(self, sources: Sequence[Any], auto: bool = False) -> None:
        if not sources:
            raise ConfigError("a pose source chain needs at least one source")
        self.sources = list(sources)
        self.names = [str(getattr(s, "name", type(s).__name__)) for s in self.sources]
        self.auto = auto
        split = _check_order(self.names, [runs_in_worker(s) for s in self.sources])
        self.head, self.tail = self.sources[:split], self.sources[split:]

    def describe(self) -> dict:
        if len(self.sources) == 1:
            d = dict(self.sources[0].describe())
            if self.auto:
                d["chosen_by"] = AUTO
            return d
        parts = [s.describe() for s in self.sources]
        return {
            "backend": ",".join(self.names),
            "chain": parts,
            "model": " | ".join(str(p.get("model") or p.get("backend")) for p in parts),
            "checkpoint_sha256": " | ".join(str(p.get("checkpoint_sha256")) for p in parts),
            "config": " | ".join(str(p.get("config")) for p in parts),
            "fall_through": "no keypoints for the image, or no joint found -> next source; none found -> frame "
                            "fallback (pose_source 'none')",
        }

    @property
    def multi(self) -> bool:
        return len(self.sources) > 1


@dataclass
class ChainState:
    """Where the chain stands for a batch of images."""

    keypoints: np.ndarray                 # (B, 18, 2)
    scores: np.ndarray                    # (B, 18)
    names: list[str | None]               # the source that produced each image's keypoints (None: not yet)
    notes: list[list[str]] = field(default_factory=list)  # why earlier sources had nothing
    looked: np.ndarray | None = None      # a source ran on the image but found no joint
    failed: dict[int, str] = field(default_factory=dict)  # images that must fail (corrupt input), with the reason

    @classmethod
    def empty(cls, n: int) -> "ChainState":
        return cls(np.full((n, NUM_KEYPOINTS, 2), np.nan, np.float32), np.zeros((n, NUM_KEYPOINTS), np.float32),
                   [None] * n, [[] for _ in range(n)], np.zeros(n, bool), {})

    def pending(self) -> list[int]:
        return [i for i, name in enumerate(self.names) if name is None and i not in self.failed]

    def take(self, index: Sequence[int]) -> "ChainState":
        idx = list(index)
        pos = {old: new for new, old in enumerate(idx)}
        return ChainState(self.keypoints[idx], self.scores[idx], [self.names[i] for i in idx],
                          [list(self.notes[i]) for i in idx], self.looked[idx] if self.looked is not None else None,
                          {pos[i]: r for i, r in self.failed.items() if i in pos})


def _estimate_one_by_one(source: Any, items: Sequence[PoseBatchItem]) -> list:
    """(keypoints, scores) or the PoseReadError of each image."""
    out: list[tuple[np.ndarray, np.ndarray] | Exception] = []
    for it in items:
        try:
            k, s = source.estimate([it])
            out.append((np.asarray(k, np.float32)[0], np.asarray(s, np.float32)[0]))
        except PoseReadError as e:
            out.append(e)
    return out


def advance(sources: Sequence[Any], names: Sequence[str], items: Sequence[PoseBatchItem], state: ChainState) -> None:
    """Try `sources` in order on the images of `state` still pending (items[i] is image i)."""
    for source, name in zip(sources, names):
        todo = state.pending()
        if not todo:
            return
        batch = [items[i] for i in todo]
        try:
            kps, scs = source.estimate(batch)
            results: list = list(zip(np.asarray(kps, np.float32), np.asarray(scs, np.float32)))
        except PoseReadError:
            results = _estimate_one_by_one(source, batch)  # find the culprit(s)
        for i, res in zip(todo, results):
            if isinstance(res, PoseNotCoveredError):
                state.notes[i].append(str(res))
            elif isinstance(res, Exception):
                state.failed[i] = f"pose: {res}"
            elif (res[1] > 0).any():
                state.keypoints[i], state.scores[i], state.names[i] = res[0], res[1], name
            else:
                state.looked[i] = True  # type: ignore[index]


def finish(state: ChainState) -> None:
    """After the last source: images some source looked at get the all-missing pose ('none', frame fallback); those
    no source covered fail with every source's reason."""
    for i in state.pending():
        if state.looked is not None and state.looked[i]:
            state.names[i] = NO_POSE
        else:
            state.failed[i] = "pose: " + "; ".join(state.notes[i] or ["no pose source covers this image"])
