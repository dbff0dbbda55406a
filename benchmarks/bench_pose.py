"""Benchmark of the pose stage: the mmpose pose source's batched path against mmpose's own per-image API.

The BlazePose source's counterpart (ours vs mediapipe's plain per-image `mp.solutions.pose.Pose`, in the same run)
is benchmarks/bench_blazepose.py (rows blazepose-1core, blazepose-prune, blazepose-crop).

pose-batched   `MMPoseSource.predict_coco17`: every image through the config's test pipeline, batches of
               `batch_size` through the model's data preprocessor and one `test_step` per batch (img/s, higher
               is better)
  vs           `mmpose.apis.inference_topdown(model, image)` called once per image (whole image as the box) on
               the model as mmpose's `init_model` builds it, loaded with the same weights; same images and
               thread count. Our side also runs the network on NHWC (channels_last) tensors on CPU.

Inputs are Market-size 128x64 (HxW): the real Market-1501 crops in ../shared/realdata resized to 64x128 (random
images of that size when the samples are absent), repeated to 32 images (quick; the reference side runs on the
first 16) or 256 (full). Random weights (`checkpoint="random"`): the cost does not depend on the weights, and none
can be downloaded here. Each side runs once (quick) or twice interleaved (full, the faster run counts) after a
warm-up call. The keypoints of both sides are compared: the notes give the share that agree within 0.5 px (random
weights leave near-ties in the SimCC logits, so float-level differences between NHWC/NCHW kernels can move a few
argmaxes).

Threads: both sides run with one torch thread unless POSECROP_BENCH_POSE_THREADS says otherwise. On this 2-core
machine shared with other jobs, torch's default of 2 intra-op threads made both sides 5-20x slower under load
(OpenMP threads waiting on each other while the other jobs hold the cores: 1.4 vs 0.2 img/s at load average 8,
against 7.9 vs 4.7 img/s with one thread a few minutes later) and the ratio meaningless (7.5x). The notes also
give the CPU seconds per image of each side (all threads), which the machine's load moves less than wall time.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKET_CROPS = ROOT.parent / "shared" / "realdata" / "market1501_samples" / "crops"
MARKET_SIZE = (128, 64)  # H, W
TARGET = 1.5
THREADS_ENV = "POSECROP_BENCH_POSE_THREADS"


def market_images(n: int, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """n RGB uint8 images of 128x64: the real Market crops (resized, cycled) or random ones."""
    from PIL import Image

    height, width = MARKET_SIZE
    paths = sorted(MARKET_CROPS.glob("*.jpg")) if MARKET_CROPS.is_dir() else []
    if paths:
        base = []
        for p in paths:
            with Image.open(p) as im:
                base.append(np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR)))
        return [base[i % len(base)] for i in range(n)], f"{len(base)} real Market crops"
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)], "random images"


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all its threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def stock_mmpose_model(source):
    """The same network as mmpose's own API builds it (``init_model``: NCHW tensors), with the source's weights."""
    from mmpose.apis import init_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Can not load dataset_meta ..." - set below
        model = init_model(str(source.config_path), checkpoint=None, device=source.device)
    model.load_state_dict(source.model.state_dict())
    model.dataset_meta = source.dataset_meta
    return model.eval()


def bench_config(config: str | None, images: list[np.ndarray], batch_size: int, source_note: str,
                 rounds: int = 2, reference_images: int | None = None) -> dict:
    """One row: our batched img/s on all images vs mmpose's per-image img/s on the first `reference_images`."""
    import torch

    from posecrop.mmpose_compat import ensure_mmpose_importable

    ensure_mmpose_importable()
    from mmpose.apis import inference_topdown

    from posecrop.records import ImageRecord
    from posecrop.sources.base import PoseBatchItem
    from posecrop.sources.mmpose_source import MMPoseSource, RandomWeightsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        source = MMPoseSource(config=config, checkpoint="random", batch_size=batch_size)
    stock = stock_mmpose_model(source)
    items = [PoseBatchItem(ImageRecord(f"bench/{i:05d}.jpg", 0, 0, "train", "market"), im)
             for i, im in enumerate(images)]
    # what the source feeds mmpose (BGR); the slow side may run on fewer images (img/s is per image)
    bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images[:reference_images or len(images)]]
    results: dict[str, np.ndarray] = {}

    def ours() -> None:
        results["ours"], _ = source.predict_coco17(items)

    def reference() -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.cuda.amp.autocast.*", category=FutureWarning)
            samples = [inference_topdown(stock, im)[0] for im in bgr]
        results["reference"] = np.stack([s.pred_instances.keypoints[0] for s in samples]).astype(np.float32)

    source.predict_coco17(items[:batch_size])  # warm-up
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.cuda.amp.autocast.*", category=FutureWarning)
        inference_topdown(stock, bgr[0])
    t_ours, t_ref = [], []
    for _ in range(rounds):
        t_ours.append(_time(ours))
        t_ref.append(_time(reference))
    ours_ips, ref_ips = len(images) / min(t_ours)[0], len(bgr) / min(t_ref)[0]
    cpu_ours, cpu_ref = 1000 * min(t_ours)[1] / len(images), 1000 * min(t_ref)[1] / len(bgr)
    # Random weights leave near-ties in the SimCC logits, so float noise can move a few argmaxes: report agreement.
    agree = float((np.abs(results["ours"][:len(bgr)] - results["reference"]).max(-1) <= 0.5).mean())
    info = source.describe()
    return {
        "stage": "pose-mmpose",
        "ours": f"MMPoseSource batched (batch {batch_size}, {info['memory_format']}), {Path(info['config']).stem}, "
                "random-initialised weights",
        "ours_value": round(ours_ips, 2),
        "reference": "mmpose init_model + inference_topdown per image (same random weights)",
        "reference_value": round(ref_ips, 2),
        "unit": "img/s",
        "ratio": round(ours_ips / ref_ips, 3),
        "target": f">= {TARGET}",
        "notes": (f"img/s, higher is better; ratio = ours / mmpose per image = {ours_ips / ref_ips:.2f}x; no mmpose "
                  "checkpoint can be downloaded here, so both sides run the same random-initialised weights "
                  f"(speed only: the cost does not depend on the weights); {len(images)} images of 128x64 "
                  f"({source_note}; reference side: the first {len(bgr)}), flip test "
                  f"{'on' if info['flip_test'] else 'off'}, {info['device']}, {torch.get_num_threads()} torch "
                  f"thread(s), best of {rounds}; CPU ms per image: ours {cpu_ours:.0f}, reference {cpu_ref:.0f} "
                  f"({cpu_ref / cpu_ours:.2f}x); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} shared "
                  f"CPUs; {100 * agree:.1f}% of keypoints agree within 0.5 px"),
    }


def run(quick: bool = True) -> list[dict]:
    """Rows for the benchmark suite: the default config (quick), RTMPose-t and -s at two batch sizes (full)."""
    import torch

    from posecrop.sources.mmpose_source import DEFAULT_CONFIG

    torch.set_num_threads(int(os.environ.get(THREADS_ENV, "1")))
    images, note = market_images(32 if quick else 256)
    plans = [(DEFAULT_CONFIG.stem, 16)] if quick else [
        ("rtmpose-t_coco17-256x192", 16), ("rtmpose-t_coco17-256x192", 64),
        ("rtmpose-s_coco17-256x192", 16), ("rtmpose-s_coco17-256x192", 64)]
    return [bench_config(config, images, batch_size, note, rounds=1 if quick else 2,
                         reference_images=16 if quick else None) for config, batch_size in plans]


if __name__ == "__main__":
    import json

    for row in run(quick="--full" not in sys.argv[1:]):
        print(json.dumps(row))
