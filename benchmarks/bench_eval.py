"""Benchmark of reidtrain.metrics: vectorised CMC/mAP against the per-query reference loop, and memory at MSMT17 size.

Entries returned by `run(quick)` ("ours" names):
  1. "evaluate_market ranking (market)": Market-1501 size (3,368 x 15,913, 768-d = the model's [E_g, E_l] size):
     ranking + CMC + mAP from one precomputed float32 distance matrix, `evaluate_market` vs the per-query loop
     `cmc_map_reference`, in queries/s (higher is better). Checked inside: identical first-match ranks (hence
     identical CMC), per-query AP equal within 1e-12 (float summation order), else AssertionError.
  2. "evaluate_market from features (chunked distances)" (full mode only): the same end to end, distances
     included, against pairwise_distance + the reference loop.
  3. "evaluate_market ranking (random features)": the worst case for our candidate sort, unstructured random
     features (a useless model: nearly every gallery image is ranked before some true match).
  4. "evaluate_market peak RSS (msmt17-size)": MSMT17 size (11,659 x 82,161, 768-d) from features in a fresh
     subprocess; peak resident memory (VmHWM, MB, lower is better) against the 4 GB budget; time in "notes".
Quick mode times the reference loop on 600 queries (its cost is linear in the queries; ratios use per-query
throughput), evaluates the random case on 1,200 queries, and scales MSMT17 down by 4 in queries and gallery;
the notes say so.

Features are random but structured like a trained ReID model: an identity centre plus a camera bias plus
noise, with Market-like (750 ids, 6 cameras, 2,798 distractors of pid 0) and MSMT17-like (3,060 ids,
15 cameras) label distributions.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FEATURE_DIM = 768                   # 256 (E_g) + 4 * 128 (E_l)
MEMORY_BUDGET_MB = 4096


@dataclass
class EvalSet:
    qf: np.ndarray
    gf: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray


def _features(rng, centres, cams, cam_bias, noise, noise_spread, chunk=8192) -> np.ndarray:
    """centre + camera bias + per-image noise (noise level log-normally spread over images)."""
    n, dim = centres.shape
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        level = noise * np.exp(noise_spread * rng.standard_normal(e - s)).astype(np.float32)
        f = rng.standard_normal((e - s, dim), dtype=np.float32)
        f *= (level / np.sqrt(dim))[:, None]
        f += centres[s:e]
        f += cam_bias[cams[s:e]]
        out[s:e] = f
    return out


def make_eval_set(num_ids: int, num_query: int, num_gallery: int, num_cams: int, num_distractors: int = 0,
                  dim: int = FEATURE_DIM, seed: int = 0, cluster_size: int = 10, identity_scale: float = 0.5,
                  noise: float = 0.6, noise_spread: float = 0.2, cam_scale: float = 0.4,
                  first_pid: int = 1) -> EvalSet:
    """Random-but-structured query/gallery features with realistic identity/camera distributions.

    Appearance = centre of a look-alike cluster (`cluster_size` identities, e.g. similar clothes) + identity
    offset (`identity_scale`) + camera bias + image noise; all norms relative to unit-norm cluster centres.
    The defaults give about R1 98 / mAP 75 on the Market-like set. Queries: about num_query / num_ids per
    identity, each from a different camera (Market has one query per identity and camera). Gallery: the rest
    spread over identities (Pareto-like sizes) and cameras, plus `num_distractors` images of pid 0 that each
    look like an identity of their own.
    """
    rng = np.random.default_rng(seed)
    pids = np.arange(first_pid, first_pid + num_ids)
    per_id, extra = divmod(num_query, num_ids)
    q_counts = np.minimum(np.full(num_ids, per_id) + (rng.permutation(num_ids) < extra), num_cams)
    q_pids = np.repeat(pids, q_counts)
    q_camids = np.concatenate([rng.permutation(num_cams)[:k] for k in q_counts]).astype(np.int64)
    weights = rng.pareto(3.0, num_ids) + 1.0
    g_real = rng.choice(pids, size=num_gallery - num_distractors, p=weights / weights.sum())
    if num_distractors and first_pid <= 0:
        raise ValueError("distractors have pid 0: real identities must start at first_pid >= 1")
    g_pids = np.concatenate([g_real, np.full(num_distractors, 0)])
    is_distractor = np.arange(num_gallery) >= num_gallery - num_distractors
    g_camids = rng.integers(0, num_cams, size=num_gallery)
    order = rng.permutation(num_gallery)
    g_pids, g_camids, is_distractor = g_pids[order], g_camids[order], is_distractor[order]
    # appearance index: identities 0..num_ids-1, then each distractor a look of its own
    g_look = g_pids - first_pid
    g_look[is_distractor] = num_ids + np.arange(num_distractors)
    n_looks = num_ids + num_distractors
    clusters = rng.standard_normal((n_looks // cluster_size + 1, dim), dtype=np.float32) / np.sqrt(dim)
    looks = clusters[np.arange(n_looks) // cluster_size] + (
        identity_scale / np.sqrt(dim)) * rng.standard_normal((n_looks, dim), dtype=np.float32)
    cam_bias = (cam_scale / np.sqrt(dim)) * rng.standard_normal((num_cams, dim), dtype=np.float32)
    qf = _features(rng, looks[q_pids - first_pid], q_camids, cam_bias, noise, noise_spread)
    gf = np.empty((num_gallery, dim), dtype=np.float32)
    for s in range(0, num_gallery, 16384):  # bounded temporaries at MSMT17 size
        e = min(num_gallery, s + 16384)
        gf[s:e] = _features(rng, looks[g_look[s:e]], g_camids[s:e], cam_bias, noise, noise_spread)
    return EvalSet(qf, gf, q_pids, g_pids, q_camids, g_camids)


def market_like(seed: int = 0, **kw) -> EvalSet:
    return make_eval_set(num_ids=750, num_query=3368, num_gallery=15913, num_cams=6, num_distractors=2798,
                         seed=seed, **kw)


def msmt_like(scale: int = 1, seed: int = 0, **kw) -> EvalSet:
    return make_eval_set(num_ids=3060 // scale, num_query=11659 // scale, num_gallery=82161 // scale, num_cams=15,
                         seed=seed, first_pid=0, **kw)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would include the parent's before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _compare(ours, ref, n_ref: int) -> float:
    """Check that the vectorised result equals the reference on the first n_ref queries; return |mAP diff|."""
    if not np.array_equal(ours.first_rank[:n_ref], ref.first_rank):
        raise AssertionError("first-match ranks differ between evaluate_market and cmc_map_reference")
    ap_diff = float(np.nanmax(np.abs(ours.ap[:n_ref] - ref.ap))) if ref.num_valid_queries else 0.0
    if not np.array_equal(np.isnan(ours.ap[:n_ref]), np.isnan(ref.ap)) or ap_diff > 1e-12:
        raise AssertionError(f"per-query AP differs from the reference (max diff {ap_diff})")
    return ap_diff


def _market_entries(quick: bool, data: EvalSet, tag: str, label: str, end_to_end: bool) -> list[dict]:
    import torch

    from reidtrain.metrics import cmc_map_reference, evaluate_market, pairwise_distance
    n_ref = min(600, len(data.q_pids)) if quick else len(data.q_pids)
    nq, ng = len(data.q_pids), len(data.g_pids)
    t0 = time.perf_counter()
    dist = pairwise_distance(data.qf, data.gf)
    t_dist = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = evaluate_market(None, None, data.q_pids, data.g_pids, data.q_camids, data.g_camids, distmat=dist)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = cmc_map_reference(dist[:n_ref], data.q_pids[:n_ref], data.g_pids, data.q_camids[:n_ref], data.g_camids)
    t_ref = time.perf_counter() - t0
    ap_diff = _compare(ours, ref, n_ref)
    if n_ref == nq:
        if not (np.array_equal(ours.cmc, ref.cmc) and abs(ours.mAP - ref.mAP) <= 1e-12):
            raise AssertionError("CMC/mAP differ between evaluate_market and cmc_map_reference")
    ours_qps, ref_qps = nq / t_ours, n_ref / t_ref
    s = ours.summary()
    numbers = f"R1 {s['R1']:.2f} R5 {s['R5']:.2f} mAP {s['mAP']:.2f}, {ours.num_valid_queries}/{nq} valid queries"
    scope = (f"reference loop timed on the first {n_ref} queries (quick mode), results checked on those"
             if n_ref < nq else "reference loop on all queries; CMC and mAP checked equal")
    out = [{
        "stage": "eval", "ours": f"evaluate_market ranking ({tag})", "ours_value": round(ours_qps, 1),
        "reference": "cmc_map_reference per-query loop", "reference_value": round(ref_qps, 1),
        "unit": "queries/s", "ratio": round(ours_qps / ref_qps, 2), "target": ">= 10" if tag == "market" else None,
        "peak_mem_mb": round(_peak_rss_mb(), 1),
        "notes": (f"{label} {nq}x{ng}x{FEATURE_DIM}, same float32 distmat, higher is better; {numbers}; "
                  f"identical first-match ranks, max |AP diff| {ap_diff:.1e}; {scope}; torch threads "
                  f"{torch.get_num_threads()}"),
    }]
    if end_to_end:
        t0 = time.perf_counter()
        e2e = evaluate_market(data.qf, data.gf, data.q_pids, data.g_pids, data.q_camids, data.g_camids)
        t_e2e = time.perf_counter() - t0
        if not np.array_equal(e2e.first_rank, ours.first_rank):
            raise AssertionError("chunked evaluation from features differs from the full distmat evaluation")
        ref_e2e_qps = 1.0 / (t_dist / nq + t_ref / n_ref)
        out.append({
            "stage": "eval", "ours": "evaluate_market from features (chunked distances)",
            "ours_value": round(nq / t_e2e, 1), "reference": "pairwise_distance + per-query loop",
            "reference_value": round(ref_e2e_qps, 1), "unit": "queries/s",
            "ratio": round(nq / t_e2e / ref_e2e_qps, 2), "target": None, "peak_mem_mb": round(_peak_rss_mb(), 1),
            "notes": (f"{label} {nq}x{ng}x{FEATURE_DIM}; distances alone {t_dist:.2f} s; end-to-end "
                      f"{t_e2e:.2f} s; same ranks as from the full distmat; higher is better"),
        })
    return out


def _msmt_child(scale: int) -> dict:
    """Run inside a fresh interpreter: build MSMT17-size features, evaluate, report time and peak RSS."""
    import torch

    from reidtrain.metrics import evaluate_market
    base = _peak_rss_mb()
    data = msmt_like(scale=scale)
    after_data = _peak_rss_mb()
    t0 = time.perf_counter()
    res = evaluate_market(data.qf, data.gf, data.q_pids, data.g_pids, data.q_camids, data.g_camids)
    elapsed = time.perf_counter() - t0
    s = res.summary()
    return {"queries": len(data.q_pids), "gallery": len(data.g_pids), "seconds": elapsed,
            "peak_mb": _peak_rss_mb(), "baseline_mb": base, "after_data_mb": after_data,
            "R1": s["R1"], "mAP": s["mAP"], "valid": res.num_valid_queries, "threads": torch.get_num_threads()}


def _msmt_entry(quick: bool) -> dict:
    scale = 4 if quick else 1
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from benchmarks.bench_eval import _msmt_child; "
            "print(json.dumps(_msmt_child(int(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(scale)], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"MSMT17-size evaluation failed:\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    size = "full MSMT17 size" if scale == 1 else f"MSMT17 scaled down {scale}x in queries and gallery (quick mode)"
    return {
        "stage": "eval", "ours": "evaluate_market peak RSS (msmt17-size)", "ours_value": round(r["peak_mb"], 1),
        "reference": "memory budget", "reference_value": MEMORY_BUDGET_MB, "unit": "MB",
        "ratio": round(r["peak_mb"] / MEMORY_BUDGET_MB, 3), "target": "<= 1.0", "peak_mem_mb": round(r["peak_mb"], 1),
        "notes": (f"{size}: {r['queries']}x{r['gallery']}x{FEATURE_DIM} from features in a fresh process, "
                  f"{r['seconds']:.1f} s (distances included, {r['threads']} torch threads); lower is better; "
                  f"process peak RSS incl. interpreter+torch {r['baseline_mb']:.0f} MB and features "
                  f"(peak {r['after_data_mb']:.0f} MB before evaluating); R1 {r['R1']:.2f} mAP {r['mAP']:.2f}, "
                  f"{r['valid']}/{r['queries']} valid queries"),
    }


def run(quick: bool = True) -> list[dict]:
    market = market_like()
    rows = _market_entries(quick, market, "market", "Market-1501 size", end_to_end=not quick)
    n = 1200 if quick else len(market.q_pids)
    rnd = EvalSet(np.random.default_rng(1).standard_normal((n, FEATURE_DIM), dtype=np.float32),
                  np.random.default_rng(2).standard_normal(market.gf.shape, dtype=np.float32),
                  market.q_pids[:n], market.g_pids, market.q_camids[:n], market.g_camids)
    del market
    label = "worst case (unstructured random features: a useless model)" + (
        f", first {n} queries (quick mode)," if quick else ",")
    rows += _market_entries(quick, rnd, "random features", label, end_to_end=False)
    rows.append(_msmt_entry(quick))
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full sizes (slow: minutes)")
    args = parser.parse_args()
    for row in run(quick=not args.full):
        print(json.dumps(row))
