"""Benchmark of the crop stage without the pose model.

crop-stage       `run_crop` with worker processes and the keypoints already in memory (no pose model, no keypoint
                 files): scan, canonical repair, Eq. 1-2 regions, five crops with the outside filled, JPEG
                 encoding, Parquet writing (img/s, higher is better)
  vs             the bare cost of the same run's unavoidable work: the same number of spawned worker processes
                 reading and decoding every source image and JPEG-encoding five crops of the cache's sizes per image
                 (real crops from the cache, so the encoder sees the same content). Target: within 1.5x, i.e.
                 ratio >= 0.67.
crop-stage-json  the same run reading the keypoints from the OpenPose JSON files (the `openpose-json` source, run
                 in the main process), against the same reference: what a user sees; no target.

Both sides include starting their worker pool. The dataset is the synthetic `tiny` preset (64x128 Market-like
JPEGs with OpenPose JSON, ~10 % without a person, many repaired joints) replicated under new file names to
1,000 images (quick) or 4,000 (full). The sides run interleaved, three times each (the JSON variant once); the
fastest run counts. The notes also give CPU time per image of all processes (less sensitive to a busy machine).
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKET_FOLDERS = ("bounding_box_train", "bounding_box_test", "query")
_NAME = re.compile(r"^(?P<pre>-?\d+_c\d+s)(?P<seq>\d+)(?P<post>_\d{6}_\d+)$")


def make_dataset(root: Path, n: int) -> int:
    """A Market-layout dataset of about `n` images with OpenPose JSON under root/keypoints: the synthetic tiny
    preset, its images and keypoint files copied under new sequence numbers. Returns the number of images."""
    from posecrop.synth import generate, preset

    base = root.parent / (root.name + "-base")
    if not base.exists():
        generate(preset("tiny"), base, progress=False, preview=False)
    images = [p for f in MARKET_FOLDERS for p in sorted((base / f).glob("*.jpg"))]
    copies = max(1, -(-n // len(images)))
    count = 0
    for k in range(copies):
        for img in images:
            m = _NAME.match(img.stem)
            if m is None:
                continue
            stem = f"{m['pre']}{k + 1}{m['seq']}{m['post']}"  # copy k: its own video sequence number
            rel = img.relative_to(base).parent
            (root / rel).mkdir(parents=True, exist_ok=True)
            (root / "keypoints" / rel).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(img, root / rel / f"{stem}.jpg")
            kp = base / "keypoints" / rel / f"{img.stem}_keypoints.json"
            shutil.copyfile(kp, root / "keypoints" / rel / f"{stem}_keypoints.json")
            count += 1
    return count


class MemoryPoseSource:
    """Keypoints preloaded from another source (here: the OpenPose JSON files), handed out by image path."""

    name = "openpose-json"  # the same settings as the JSON source (needs only image sizes)

    def __init__(self, source, records, root: Path) -> None:
        from posecrop.crops import probe_size
        from posecrop.sources import PoseBatchItem
        self._describe = source.describe()
        items = []
        for r in records:
            w, h = probe_size(root / r.path)
            items.append(PoseBatchItem(r, np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (h, w, 3))))
        kps, scores = source.estimate(items)
        self._poses = {r.path: (kps[i], scores[i]) for i, r in enumerate(records)}

    def describe(self) -> dict:
        return self._describe

    def estimate(self, batch):
        kps = np.stack([self._poses[it.record.path][0] for it in batch])
        return kps, np.stack([self._poses[it.record.path][1] for it in batch])


# ------------------------------------------------------------------------------------------ the reference side

_REF: dict = {}


def _ref_init(crop_sets: list[list[np.ndarray]], quality: int) -> None:
    import cv2
    cv2.setNumThreads(1)
    _REF["crops"] = crop_sets
    _REF["quality"] = quality


def _ref_task(paths: list[tuple[str, int]]) -> int:
    """Read + decode each source image, encode five crops of the cache's sizes (bare cost, no geometry)."""
    from posecrop.crops import decode_image, encode_image
    n = 0
    for path, idx in paths:
        data = Path(path).read_bytes()
        decode_image(data, path)
        for crop in _REF["crops"][idx % len(_REF["crops"])]:
            encode_image(crop, "jpeg", _REF["quality"])
        n += 1
    return n


def run_reference(paths: list[str], crop_sets: list[list[np.ndarray]], workers: int, batch: int, quality: int) -> float:
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_ref_init, initargs=(crop_sets, quality)) as ex:
        tasks = [[(p, i) for i, p in enumerate(paths[s:s + batch], s)] for s in range(0, len(paths), batch)]
        done = sum(ex.map(_ref_task, tasks))
    assert done == len(paths)
    return time.perf_counter() - t0


def _crop_sets(cache: Path, k: int) -> list[list[np.ndarray]]:
    from PIL import Image

    from posecrop.cache_reader import read_split
    from posecrop.regions import REGION_NAMES
    rows = read_split(cache, "train", list(REGION_NAMES)).slice(0, k).to_pylist()
    return [[np.asarray(Image.open(io.BytesIO(r[name]["bytes"])).convert("RGB")) for name in REGION_NAMES]
            for r in rows]


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished (joined) children."""
    import resource
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def run(quick: bool = True) -> list[dict]:
    from posecrop.crop_stage import CropConfig, run_crop
    from posecrop.datasets import read_dataset
    from posecrop.sources import make_pose_source

    n = 1000 if quick else 4000
    rounds = 3
    workers = CropConfig().num_workers()
    batch = CropConfig().batch_size
    with tempfile.TemporaryDirectory(prefix="bench-crop-") as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, n)
        records = read_dataset("market", data)
        paths = [str(data / r.path) for r in records]
        for p in paths:  # warm the page cache for all sides
            Path(p).read_bytes()
        memory = MemoryPoseSource(make_pose_source("openpose-json", keypoints_dir=data / "keypoints"), records, data)
        times: dict[str, list[float]] = {"memory": [], "json": [], "ref": []}
        cpu: dict[str, list[float]] = {"memory": [], "json": [], "ref": []}
        summary, crop_sets = None, None
        for rnd in range(rounds):
            for side in ("memory", "ref", "json") if rnd == 0 else ("memory", "ref"):
                c0 = _cpu_seconds()
                if side == "ref":
                    times["ref"].append(run_reference(paths, crop_sets, workers, batch, 95))  # type: ignore[arg-type]
                    cpu["ref"].append(_cpu_seconds() - c0)
                    continue
                out = Path(tmp) / f"cache-{side}{rnd}"
                cfg = CropConfig(dataset="market", root=data, out=out, workers=workers, progress=False)
                t0 = time.perf_counter()
                summary = run_crop(cfg, pose_source=memory if side == "memory" else None)
                times[side].append(time.perf_counter() - t0)
                cpu[side].append(_cpu_seconds() - c0)
                if crop_sets is None:
                    crop_sets = _crop_sets(out, 16)
                shutil.rmtree(out)
        assert summary is not None and summary.written + summary.failed == len(records)
        rate = {k: len(records) / min(v) for k, v in times.items()}
        cpu_ratio = min(cpu["memory"]) / min(cpu["ref"])
        runs = "; ".join(f"{k} {', '.join(f'{t:.2f}' for t in v)} s" for k, v in times.items())
        cpus = "; ".join(f"{k} {min(v) * 1e3 / len(records):.2f}" for k, v in cpu.items())
        common = (f"{len(records)} synthetic 64x128 images (Market layout); crops 384x192 + 4x 96x192 JPEG q95; "
                  f"{summary.repaired_joints:.0%} repaired / {summary.fallback_joints:.0%} fallback joints; best of "
                  f"{rounds} interleaved runs ({runs}); CPU ms per image, all processes: {cpus} (ours/reference CPU "
                  f"= {cpu_ratio:.2f}x); ratio = ours/reference throughput, higher is better")
        reference = f"decode sources + encode 5 crops, {workers} workers"
        return [
            {"stage": "crop-stage", "ours": f"run_crop, {workers} workers, poses in memory",
             "ours_value": round(rate["memory"], 1), "reference": reference, "reference_value": round(rate["ref"], 1),
             "unit": "img/s", "ratio": round(rate["memory"] / rate["ref"], 3), "target": ">= 0.67 (within 1.5x)",
             "peak_mem_mb": None, "notes": common},
            {"stage": "crop-stage-json", "ours": f"run_crop, {workers} workers, OpenPose JSON files",
             "ours_value": round(rate["json"], 1), "reference": reference, "reference_value": round(rate["ref"], 1),
             "unit": "img/s", "ratio": round(rate["json"] / rate["ref"], 3), "target": "-",
             "peak_mem_mb": None, "notes": "as crop-stage, plus reading + parsing one OpenPose JSON file per image "
                                           "in the main process (posecrop.sources.openpose_json)"},
        ]


if __name__ == "__main__":
    import json
    print(json.dumps(run(quick="--full" not in sys.argv), indent=2))
