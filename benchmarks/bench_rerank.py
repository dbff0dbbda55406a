"""Benchmark of reidtrain.rerank (k-reciprocal re-ranking, k1 20, k2 6, lambda 0.3) against torchreid's
`re_ranking` (torchreid/reid/utils/rerank.py of the registry's torchreid 0.2.5 sdist, loaded from its file by
`benchmarks.torchreid_ref`; never a dependency of the project).

Matched inputs: torchreid's engine computes squared Euclidean distance matrices (query-gallery, query-query,
gallery-gallery; its `euclidean_squared_distance`, reproduced here in torch) and `re_ranking` squares them again.
Ours runs with `convention="torchreid"`, which reproduces exactly that (reidtrain/rerank.py docstring).

Every measurement runs in a fresh subprocess (torch 1 thread), which reports its time and peak resident memory
(VmHWM), so the reference's dense (Q+G)^2 matrices and ours are measured alike:
  reference  features -> torchreid-style distance matrices -> re_ranking; the (Q, G) result is saved.
  ours       features -> k_reciprocal_rerank_features(metric="sqeuclidean", convention="torchreid") (distance
             rows made chunk by chunk; the path `evaluate --rerank --rerank-convention torchreid` takes).
  check      the same three distance matrices as the reference -> k_reciprocal_rerank(convention="torchreid");
             max |difference| to the reference's result (and that of "ours" from features), target <= 1e-5.

Entries returned by `run(quick)` ("ours" names):
  1. "k_reciprocal_rerank (market-size)": CPU seconds per run (single-threaded processes: CPU time is what load
     from other processes on a shared machine disturbs least; wall times in the notes), features to re-ranked
     (Q, G) distances, both sides including their distance computation (the reference's distances-only time in
     the notes); ratio = reference / ours (higher is better, target >= 5). Full mode: Market-1501 size (3,368 +
     15,913 images, 768-d; the reference needs about 2 CPU minutes and 8.6 GB); quick mode: Market size scaled
     down 2x in queries and gallery (1,684 + 7,956), said in the notes.
  2. "k_reciprocal_rerank peak RSS (market-size)": peak memory of the same two processes; ratio = ours / reference
     (lower is better, target <= 0.1 at Market size; the reference's dense matrices grow as (Q+G)^2, ours
     about linearly, so the ratio is higher at the quick size). Process peaks include the interpreter, torch and
     the features (the baseline is in the notes).
  3. "k_reciprocal_rerank + evaluate_market (msmt17-size)": ours only, MSMT17 size (11,659 + 82,161 images) from
     features, re-ranked distances streamed into `evaluate_market` in row blocks (nothing Q x G is held);
     peak RSS in MB against the 24 GB of this machine. The reference cannot run there: each of its dense
     (Q+G)^2 float32 matrices is 35 GB. Quick mode: scaled down 4x.

    python -m benchmarks.bench_rerank [--full]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_eval import FEATURE_DIM, EvalSet, _peak_rss_mb, make_eval_set, msmt_like  # noqa: E402

K1, K2, LAMBDA = 20, 6, 0.3
MACHINE_MB = 24 * 1024
TOLERANCE = 1e-5


def market_scaled(scale: int):
    return make_eval_set(num_ids=750 // scale, num_query=3368 // scale, num_gallery=15913 // scale, num_cams=6,
                         num_distractors=2798 // scale)


def torchreid_sqeuclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """torchreid's `euclidean_squared_distance` (metrics/distance.py): ||a||^2 + ||b||^2 - 2 a.b via addmm."""
    import torch
    x, y = torch.from_numpy(a), torch.from_numpy(b)
    m, n = x.size(0), y.size(0)
    d = x.pow(2).sum(dim=1, keepdim=True).expand(m, n) + y.pow(2).sum(dim=1, keepdim=True).expand(n, m).t()
    d.addmm_(x, y.t(), beta=1, alpha=-2)
    return d.numpy()


def _child(kind: str, scale: int, folder: str) -> dict:
    """Runs in a fresh interpreter; returns figures as a dict (printed as JSON). Times are wall and CPU seconds
    (one thread: CPU seconds are what load from other processes on a shared machine disturbs least)."""
    import torch
    torch.set_num_threads(1)
    out = Path(folder)
    if kind == "msmt":
        data = msmt_like(scale=scale)
    else:                                   # the parent's features, the same for every side
        with np.load(out / "features.npz") as z:
            data = EvalSet(*(z[k] for k in ("qf", "gf", "q_pids", "g_pids", "q_camids", "g_camids")))
    base = _peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    fig: dict = {"queries": len(data.q_pids), "gallery": len(data.g_pids), "baseline_mb": base}
    if kind == "reference":
        from benchmarks.torchreid_ref import load_reference
        ref = load_reference()
        mats = (torchreid_sqeuclidean(data.qf, data.gf), torchreid_sqeuclidean(data.qf, data.qf),
                torchreid_sqeuclidean(data.gf, data.gf))
        fig["distance_seconds"] = time.process_time() - c0
        final = ref.rerank.re_ranking(*mats, k1=K1, k2=K2, lambda_value=LAMBDA)
        fig["source"] = ref.describe()
        np.save(out / "reference.npy", final)
    elif kind == "ours":
        from reidtrain.rerank import k_reciprocal_rerank_features
        final = k_reciprocal_rerank_features(data.qf, data.gf, K1, K2, LAMBDA, metric="sqeuclidean",
                                             convention="torchreid")
        np.save(out / "ours.npy", final)
    elif kind == "check":
        from reidtrain.rerank import k_reciprocal_rerank
        mats = (torchreid_sqeuclidean(data.qf, data.gf), torchreid_sqeuclidean(data.qf, data.qf),
                torchreid_sqeuclidean(data.gf, data.gf))
        c1 = time.process_time()
        final = k_reciprocal_rerank(*mats, k1=K1, k2=K2, lambda_value=LAMBDA, convention="torchreid")
        fig["rerank_seconds"] = time.process_time() - c1
        ref_final = np.load(out / "reference.npy")
        fig["max_diff"] = float(np.abs(final - ref_final).max())
        ours = np.load(out / "ours.npy")
        diff = np.abs(ours - ref_final)
        fig["features_max_diff"] = float(diff.max())
        fig["features_over_tol"] = int(np.count_nonzero(diff > TOLERANCE))
    elif kind == "msmt":
        from reidtrain.metrics import evaluate_market
        from reidtrain.rerank import iter_k_reciprocal_rerank_features
        blocks = iter_k_reciprocal_rerank_features(data.qf, data.gf, K1, K2, LAMBDA, metric="sqeuclidean")
        res = evaluate_market(None, None, data.q_pids, data.g_pids, data.q_camids, data.g_camids, distmat=blocks)
        plain = evaluate_market(data.qf, data.gf, data.q_pids, data.g_pids, data.q_camids, data.g_camids)
        fig.update(summary=res.summary(), plain=plain.summary())
    else:
        raise ValueError(kind)
    fig["seconds"] = time.perf_counter() - t0
    fig["cpu_seconds"] = time.process_time() - c0
    fig["peak_mb"] = _peak_rss_mb()
    return fig


def _spawn(kind: str, scale: int, folder: str) -> dict:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from benchmarks.bench_rerank import _child; "
            "print('RERANK-JSON:' + json.dumps(_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), kind, str(scale), folder], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RERANK-JSON:")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"re-ranking benchmark child '{kind}' failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RERANK-JSON:"):])


def _market_rows(quick: bool) -> list[dict]:
    from benchmarks.torchreid_ref import load_reference, reason
    scale = 2 if quick else 1
    size = "Market-1501 size" if scale == 1 else f"Market-1501 size scaled down {scale}x (quick mode)"
    ref_src = load_reference()
    if ref_src is None:
        return [{"stage": "rerank", "ours": "k_reciprocal_rerank (market-size)", "ours_value": None,
                 "reference": "torchreid re_ranking (unavailable)", "reference_value": None, "unit": "s",
                 "ratio": None, "target": ">= 5", "peak_mem_mb": None,
                 "notes": f"skipped: torchreid reference unavailable: {reason()}"}]
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as folder:
        data = market_scaled(scale)
        np.savez(Path(folder) / "features.npz", **vars(data))
        del data
        ref = _spawn("reference", scale, folder)
        ours = _spawn("ours", scale, folder)
        check = _spawn("check", scale, folder)
    if check["max_diff"] > TOLERANCE:
        raise AssertionError(f"k_reciprocal_rerank(convention='torchreid') differs from torchreid's re_ranking on "
                             f"the same matrices by {check['max_diff']:.2e} > {TOLERANCE}")
    n = f"{ref['queries']} + {ref['gallery']} images, {FEATURE_DIM}-d"
    common = (f"{size}, {n}, k1 {K1} k2 {K2} lambda {LAMBDA}, torchreid's convention (squared Euclidean matrices, "
              f"squared again inside re_ranking), one torch thread, each side in a fresh process")
    speed = {
        "stage": "rerank", "ours": "k_reciprocal_rerank (market-size)", "ours_value": round(ours["cpu_seconds"], 2),
        "reference": "torchreid re_ranking", "reference_value": round(ref["cpu_seconds"], 2), "unit": "CPU s",
        "ratio": round(ref["cpu_seconds"] / ours["cpu_seconds"], 2), "target": ">= 5",
        "peak_mem_mb": round(ours["peak_mb"], 1),
        "notes": (f"{common}; features to re-ranked (Q, G) distances, lower is better, ratio = reference / ours in "
                  f"CPU seconds of the single-threaded processes (wall {ours['seconds']:.1f} s ours, "
                  f"{ref['seconds']:.1f} s reference on a shared machine); "
                  f"reference's distance matrices alone {ref['distance_seconds']:.2f} s; same three matrices into "
                  f"k_reciprocal_rerank(convention='torchreid'): {check['rerank_seconds']:.2f} s, max |diff| to "
                  f"torchreid {check['max_diff']:.1e}; ours from features (its own distance arithmetic): max |diff| "
                  f"{check['features_max_diff']:.1e}, {check['features_over_tol']} entries over {TOLERANCE:g}; "
                  f"{ref['source']}"),
    }
    memory = {
        "stage": "rerank", "ours": "k_reciprocal_rerank peak RSS (market-size)",
        "ours_value": round(ours["peak_mb"], 1), "reference": "torchreid re_ranking peak RSS",
        "reference_value": round(ref["peak_mb"], 1), "unit": "MB", "ratio": round(ours["peak_mb"] / ref["peak_mb"], 3),
        # the memory target is for Market size: at a quarter of its (Q+G)^2 the interpreter baseline dominates
        "target": "<= 0.1" if scale == 1 else "none (judged at Market size)", "peak_mem_mb": round(ref["peak_mb"], 1),
        "notes": (f"{common}; process peaks (VmHWM) incl. interpreter, torch and features: baseline "
                  f"{ours['baseline_mb']:.0f} MB (ours) / {ref['baseline_mb']:.0f} MB (reference); above baseline "
                  f"{ours['peak_mb'] - ours['baseline_mb']:.0f} MB vs {ref['peak_mb'] - ref['baseline_mb']:.0f} MB; "
                  f"both hold the (Q, G) result; lower is better"),
    }
    return [speed, memory]


def _msmt_row(quick: bool) -> dict:
    scale = 4 if quick else 1
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as folder:
        r = _spawn("msmt", scale, folder)
    n_all = r["queries"] + r["gallery"]
    size = "full MSMT17 size" if scale == 1 else f"MSMT17 size scaled down {scale}x (quick mode)"
    s, p = r["summary"], r["plain"]
    return {
        "stage": "rerank", "ours": "k_reciprocal_rerank + evaluate_market (msmt17-size)",
        "ours_value": round(r["peak_mb"], 1), "reference": "machine memory", "reference_value": MACHINE_MB,
        "unit": "MB", "ratio": round(r["peak_mb"] / MACHINE_MB, 3), "target": "completes",
        "peak_mem_mb": round(r["peak_mb"], 1),
        "notes": (f"{size}: {r['queries']} + {r['gallery']} images, {FEATURE_DIM}-d, from features in a fresh "
                  f"process, re-ranked rows streamed into evaluate_market, {r['cpu_seconds']:.0f} CPU s "
                  f"({r['seconds']:.0f} s wall) on one torch thread, "
                  f"baseline {r['baseline_mb']:.0f} MB; R1 {p['R1']:.2f} -> {s['R1']:.2f}, mAP {p['mAP']:.2f} -> "
                  f"{s['mAP']:.2f} with re-ranking (default convention); torchreid's re_ranking not run: each of its "
                  f"dense (Q+G)^2 float32 matrices would be {n_all ** 2 * 4 / 1e9:.1f} GB at this size"
                  + ("" if scale == 1 else f" ({93820 ** 2 * 4 / 1e9:.1f} GB at full MSMT17 size)")),
    }


def run(quick: bool = True) -> list[dict]:
    return [*_market_rows(quick), _msmt_row(quick)]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="Market and MSMT17 full sizes (slow: many minutes)")
    args = parser.parse_args()
    for row in run(quick=not args.full):
        print(json.dumps(row))
