"""Benchmark of `evaluate --flip-average` (features averaged with those of the mirrored crops; not in the paper):
what it costs in feature extraction and what it changes in accuracy, against plain features, same model, same run.

The model and cache are a trained CUHK01 run of the accuracy benchmark (`python -m benchmarks.bench_accuracy`,
real data: ../shared/realdata/cuhk01): by default the intra-inter run with the most epochs under its work folder
(/tmp/posecrop-bench-accuracy), or `$FLIP_BENCH_MODEL` (a model.pt / run folder) with `$FLIP_BENCH_CACHE` (its crop
cache). Without one the row is skipped and says why (training one takes about ten minutes on 2 cores, too long for
the suite).

Entry returned by `run(quick)`: "extract_features --flip-average (cuhk01)": images/s of query + gallery feature
extraction with flip averaging (ours) and without (reference), in CPU time (one torch thread, batch 128, no
loader workers, so CPU time is what load from other processes on a shared machine disturbs least);
ratio = flip / plain (about 0.5 is the expected cost: two forward passes); the notes give the CUHK01 multi-shot
R1 / mAP / mINP and single-shot R1 with and without. Quick and full mode are the same (about a minute).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORK = Path("/tmp/posecrop-bench-accuracy")


def _find_run() -> tuple[Path, Path] | str:
    """(model.pt, cache) or the reason why none was found."""
    model, cache = os.environ.get("FLIP_BENCH_MODEL"), os.environ.get("FLIP_BENCH_CACHE")
    if model:
        if not cache:
            return "FLIP_BENCH_MODEL is set but FLIP_BENCH_CACHE (its crop cache) is not"
        return Path(model), Path(cache)
    best: tuple[int, Path, Path] | None = None
    for pt in sorted(WORK.glob("runs/*/intra-inter-s0/model.pt")):
        config = pt.parent / "config.json"
        try:
            cfg = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        train = cfg.get("train", cfg)
        epochs, cache = int(train.get("epochs", 0)), Path(str(train.get("cache", "")))
        if cache.is_dir() and (best is None or epochs > best[0]):
            best = (epochs, pt, cache)
    if best is None:
        return f"no trained intra-inter CUHK01 run under {WORK}/runs (run python -m benchmarks.bench_accuracy first)"
    return best[1], best[2]


def run(quick: bool = True) -> list[dict]:
    found = _find_run()
    base = {"stage": "flip", "ours": "extract_features --flip-average (cuhk01)", "reference": "plain features",
            "unit": "images/s", "target": None}
    if isinstance(found, str):
        return [{**base, "ours_value": None, "reference_value": None, "ratio": None, "peak_mem_mb": None,
                 "notes": f"skipped: {found}"}]
    import torch

    torch.set_num_threads(1)
    from reidtrain.config import EvalConfig
    from reidtrain.evaluate import compute_result, eval_dataset, extract_features, load_trained

    checkpoint, cache = found
    net, meta, epoch = load_trained(checkpoint)
    data = {s: eval_dataset(cache, s, meta) for s in ("query", "gallery")}
    n = sum(len(d) for d in data.values())
    seconds, scores = {}, {}
    for flip in (False, True):
        t0 = time.process_time()   # one thread, no workers: CPU time, what other processes' load disturbs least
        feats = {s: extract_features(net, d, meta["normalize"], "cpu", 128, 0, flip_average=flip, progress=False)
                 for s, d in data.items()}
        seconds[flip] = time.process_time() - t0
        out = {}
        for protocol in ("cuhk01-multi-shot", "cuhk01-single-shot"):
            out[protocol] = compute_result(EvalConfig(protocol=protocol), protocol, feats["query"],
                                           feats["gallery"]).summary((1, 5))
        scores[flip] = out

    def fmt(flip: bool) -> str:
        m, s = scores[flip]["cuhk01-multi-shot"], scores[flip]["cuhk01-single-shot"]
        return f"R1 {m['R1']:.2f} mAP {m['mAP']:.2f} mINP {m['mINP']:.2f} single-shot R1 {s['R1']:.2f}"

    from benchmarks.bench_eval import _peak_rss_mb
    return [{**base, "ours_value": round(n / seconds[True], 1), "reference_value": round(n / seconds[False], 1),
             "ratio": round(seconds[False] / seconds[True], 3), "peak_mem_mb": round(_peak_rss_mb(), 1),
             "notes": (f"{meta['model']} trained {epoch} epochs on CUHK01 ({checkpoint}), {n} query + gallery images "
                       f"at {tuple(meta['body_size'])}, one torch thread, images per CPU second; higher is better, "
                       f"ratio = flip / plain speed; CUHK01 multi-shot plain: {fmt(False)}; "
                       f"with --flip-average: {fmt(True)}")}]


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
