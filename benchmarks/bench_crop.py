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

crop-market-scale  `run_crop` with the `posegan-csv` source (keypoints from one pose-gan-style CSV, read in the main
                 process; no pose model) over a synthetic stand-in of Market-1501's size: 32,668 images (full;
                 12,936 train / 16,364 gallery / 3,368 query, the paper's 32,668 boxes) or a 3,000-image subset in
                 the same proportions (quick), the synthetic `tiny` images hard-linked under new Market names, their
                 OpenPose keypoints written as the CSV. Run in a child process (its own peak memory): total time,
                 img/s, peak RSS of the main process, of the largest worker and of all of them together (sampled from
                 /proc every 0.2 s), the cache's size on disk. vs the same reference as crop-stage (decode + encode
                 five crops, same workers) on the first 3,000 images of the set, in the same run.

Both sides include starting their worker pool. The dataset is the synthetic `tiny` preset (64x128 Market-like
JPEGs with OpenPose JSON, ~10 % without a person, many repaired joints) replicated under new file names to
1,000 images (quick) or 4,000 (full). The sides run interleaved, three times each (the JSON variant once); the
fastest run counts. The notes also give CPU time per image of all processes (less sensitive to a busy machine).
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import os
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


MARKET_SPLITS = {"bounding_box_train": 12936, "bounding_box_test": 16364, "query": 3368}  # 32,668 in all


def make_market_scale(root: Path, n: int) -> dict[str, int]:
    """A Market-layout stand-in of `n` images (split as MARKET_SPLITS, scaled down when n is smaller) with their
    keypoints in pose-gan CSVs under root/keypoints_posegan: the synthetic tiny preset's images hard-linked (copied
    where links fail) under new names, 20 images per identity and 6 cameras. Returns images per folder."""
    from posecrop.sources.openpose_json import OpenPoseJsonSource
    from posecrop.synth import generate, preset

    base = root.parent / (root.name + "-base")
    if not base.exists():
        generate(preset("tiny"), base, progress=False, preview=False)
    images = [p for f in MARKET_FOLDERS for p in sorted((base / f).glob("*.jpg"))]
    json_source = OpenPoseJsonSource(base / "keypoints")
    poses = []
    for img in images:
        from PIL import Image
        with Image.open(img) as im:
            width, height = im.size
        kp, sc = json_source.read(str(img.relative_to(base)), width, height)
        ok = (sc > 0) & np.isfinite(kp).all(-1)
        poses.append((np.where(ok, np.rint(kp[:, 1]), -1).astype(int), np.where(ok, np.rint(kp[:, 0]), -1).astype(int)))
    total = sum(MARKET_SPLITS.values())
    counts = {f: (c * n) // total for f, c in MARKET_SPLITS.items()}
    counts["bounding_box_train"] += n - sum(counts.values())
    (root / "keypoints_posegan").mkdir(parents=True, exist_ok=True)
    rows = {"train": ["name:keypoints_y:keypoints_x"], "test": ["name:keypoints_y:keypoints_x"]}
    k = 0
    for folder, count in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        first_pid = 1 if folder == "bounding_box_train" else 752
        for i in range(count):
            pid, cam = first_pid + (i // 20) % 750, 1 + i % 6
            name = f"{pid:04d}_c{cam}s1_{k:06d}_{0 if folder == 'query' else 1 + i % 5:02d}.jpg"
            src = images[k % len(images)]
            try:
                os.link(src, root / folder / name)
            except OSError:
                shutil.copyfile(src, root / folder / name)
            ys, xs = poses[k % len(images)]
            rows["train" if folder == "bounding_box_train" else "test"].append(
                f"{name}: [{', '.join(map(str, ys))}]: [{', '.join(map(str, xs))}]")
            k += 1
    for split, lines in rows.items():
        (root / "keypoints_posegan" / f"market-annotation-{split}.csv").write_text("\n".join(lines) + "\n")
    return counts


def _rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, (0, 0) when it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _market_child(root: str, out: str, workers: int) -> None:
    """The Market-scale run itself (in a fresh process, so that its peak memory is its own)."""
    import json

    from posecrop.crop_stage import CropConfig, run_crop

    csvs = sorted(str(p) for p in (Path(root) / "keypoints_posegan").glob("*.csv"))
    t0 = time.perf_counter()
    summary = run_crop(CropConfig(dataset="market", root=Path(root), out=Path(out), pose_source="posegan-csv",
                                  pose_options={"csv_paths": csvs}, workers=workers, progress=False))
    seconds = time.perf_counter() - t0
    print("MARKET-JSON:" + json.dumps({
        "seconds": seconds, "written": summary.written, "failed": summary.failed, "records": summary.records,
        "per_split": summary.per_split, "repaired_joints": summary.repaired_joints,
        "fallback_joints": summary.fallback_joints, "pose_sources": summary.pose_sources,
        "parent_hwm_kb": _rss_kb(os.getpid())[1]}), flush=True)


def run_market_scale(root: Path, out: Path, workers: int) -> dict:
    """Run _market_child in a child process, sampling the RSS of it and its workers; returns its figures plus the
    peak of their sum."""
    import json
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_crop import _market_child; "
            f"_market_child({str(root)!r}, {str(out)!r}, {workers})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    peak_total = 0
    worker_hwm: dict[int, int] = {}
    while proc.poll() is None:
        kids = _children(proc.pid)
        peak_total = max(peak_total, _rss_kb(proc.pid)[0] + sum(_rss_kb(k)[0] for k in kids))
        for k in kids:  # each worker's own high-water mark (VmHWM restarts at its exec)
            worker_hwm[k] = max(worker_hwm.get(k, 0), _rss_kb(k)[1])
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("MARKET-JSON:")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the Market-scale crop run failed (exit {proc.returncode}): {stderr[-2000:]}")
    result = json.loads(lines[-1][len("MARKET-JSON:"):])
    result["peak_total_rss_kb"] = peak_total
    # not the child's RUSAGE_CHILDREN ru_maxrss: a spawned worker is forked before it execs, so that counts the
    # main process's memory at the moment the pool started
    result["worker_max_rss_kb"] = max(worker_hwm.values(), default=0)
    result["cache_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return result


def market_scale(quick: bool, workers: int, batch: int) -> dict:
    n = 3000 if quick else sum(MARKET_SPLITS.values())
    with tempfile.TemporaryDirectory(prefix="bench-crop-market-") as tmp:
        data = Path(tmp) / "Market-1501"
        t0 = time.perf_counter()
        counts = make_market_scale(data, n)
        setup = time.perf_counter() - t0
        paths = [str(p) for f in counts for p in sorted((data / f).glob("*.jpg"))]
        cache = Path(tmp) / "cache"
        r = run_market_scale(data, cache, workers)
        crop_sets = _crop_sets(cache, 16)
        sub = paths[:3000]
        t_ref = run_reference(sub, crop_sets, workers, batch, 95)
    ips = r["written"] / r["seconds"]
    ref_ips = len(sub) / t_ref
    mb = 1024.0
    return {"stage": "crop-market-scale", "ours": f"run_crop, {workers} workers, posegan-csv keypoints, "
            f"{n:,} images", "ours_value": round(ips, 1), "reference": f"decode sources + encode 5 crops, {workers} "
            f"workers ({len(sub):,} images)", "reference_value": round(ref_ips, 1), "unit": "img/s",
            "ratio": round(ips / ref_ips, 3), "target": "-", "peak_mem_mb": round(r["peak_total_rss_kb"] / mb, 1),
            "total_seconds": round(r["seconds"], 1), "cache_mb": round(r["cache_bytes"] / 2**20, 1),
            "parent_peak_mb": round(r["parent_hwm_kb"] / mb, 1),
            "worker_peak_mb": round(r["worker_max_rss_kb"] / mb, 1),
            "notes": f"{'quick subset' if quick else 'full Market-1501 size'}: {r['records']:,} synthetic 64x128 "
                     f"images ({', '.join(f'{k} {v:,}' for k, v in counts.items())}; written {r['written']:,}, "
                     f"failed {r['failed']}); total {r['seconds']:.1f} s (worker start-up, scan and CSV included; "
                     f"building the stand-in took {setup:.1f} s more), {ips:.0f} img/s; peak RSS: main process "
                     f"{r['parent_hwm_kb'] / mb:.0f} MB, largest worker {r['worker_max_rss_kb'] / mb:.0f} MB (its "
                     "VmHWM), all "
                     f"together {r['peak_total_rss_kb'] / mb:.0f} MB (sampled every 0.2 s; the peak MB column); "
                     f"cache {r['cache_bytes'] / 2**20:.0f} MB on disk "
                     f"({r['cache_bytes'] / max(r['written'], 1) / 1024:.1f} "
                     f"KB per image: source + 384x192 + 4x 96x192 JPEG q95); {r['repaired_joints']:.0%} repaired / "
                     f"{r['fallback_joints']:.0%} fallback joints"}


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
        rows = [
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
    return [*rows, market_scale(quick, workers, batch)]


if __name__ == "__main__":
    import json
    if "--market-only" in sys.argv:  # the Market-scale row alone, also written to benchmarks/results/crop_market.*
        from posecrop.crop_stage import CropConfig

        full = "--full" in sys.argv
        row = market_scale(not full, CropConfig().num_workers(), CropConfig().batch_size)
        print(json.dumps(row, indent=2))
        results = ROOT / "benchmarks" / "results"
        meta = {"quick": not full, "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                "load_average": os.getloadavg()[0], "row": row}

        def write(path: Path, text: str) -> None:  # write then rename: never half a results file
            path.with_suffix(".tmp").write_text(text)
            os.replace(path.with_suffix(".tmp"), path)

        write(results / "crop_market.json", json.dumps(meta, indent=2) + "\n")
        write(results / "crop_market.md",
              f"# Crop stage at Market-1501 size ({'full' if full else 'quick'}), {time.strftime('%Y-%m-%d %H:%M')}\n\n"
              f"Machine: {os.cpu_count()} CPUs shared with other jobs (load average {os.getloadavg()[0]:.1f} at the "
              "end); `python -m benchmarks.bench_crop --market-only --full`\n\n"
              "| images | total s | img/s | reference img/s | ratio | peak RSS all MB | main MB | largest worker MB "
              "| cache MB |\n|---|---|---|---|---|---|---|---|---|\n"
              f"| {sum(MARKET_SPLITS.values()) if full else 3000:,} | {row['total_seconds']} | {row['ours_value']} | "
              f"{row['reference_value']} | {row['ratio']} | {row['peak_mem_mb']} | {row['parent_peak_mb']} | "
              f"{row['worker_peak_mb']} | {row['cache_mb']} |\n\n{row['notes']}\n")
    else:
        print(json.dumps(run(quick="--full" not in sys.argv), indent=2))
