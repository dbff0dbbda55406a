"""Benchmark of reidtrain.metrics against torchreid's own evaluator (Market-1501, CUHK03 classic), and memory at
MSMT17 size.

The reference is torchreid's `eval_market1501` / `eval_cuhk03` (torchreid/reid/metrics/rank.py of the registry's
torchreid 0.2.5 sdist), loaded from its file by `benchmarks.torchreid_ref` (never imported as a package, never a
dependency of the project). rank.py's Cython ranker is not in the sdist; loaded from its file its import fails
and the Python code runs (`IS_CYTHON_AVAI` False); the functions called are the Python `eval_market1501` and
`eval_cuhk03` themselves. Where the sdist cannot be found or downloaded (see `benchmarks.torchreid_ref`), the
rows fall back to our own per-query loop `cmc_map_reference` (same protocol) and say so in their notes.

Entries returned by `run(quick)` ("ours" names):
  1. "evaluate_market ranking (market)": Market-1501 size (3,368 x 15,913, 768-d = the model's [E_g, E_l] size):
     ranking + CMC + mAP from one precomputed float32 distance matrix, `evaluate_market` vs torchreid's
     `eval_market1501`, in queries/s (higher is better). Checked inside (AssertionError otherwise): CMC up to
     rank 50 and mAP within 1e-6 of the reference's on the same queries, apart from the queries with exact ties
     (below), which must account for the whole difference and equal torchreid's code run with a stable argsort.
  2. "evaluate_market from features (chunked distances)" (full mode only): the same end to end, distances
     included, against pairwise_distance + the reference.
  3. "evaluate_market ranking (random features)": the worst case for our candidate sort, unstructured random
     features (a useless model: nearly every gallery image is ranked before some true match).
  4. "evaluate_cuhk03_classic (cuhk03-size)": the CUHK03 classic test split (100 identities, 2 cameras, about
     10 images each, query = gallery as in torchreid's classic split) against `eval_cuhk03`, 10 repeats each.
     Both draw one gallery image per identity at random, from different random streams (torchreid: the global
     np.random), so their CMCs differ by sampling noise. The identity check therefore runs torchreid's own
     `eval_cuhk03` a second time, query by query, with `np.random.choice` inside its module replaced by "the image
     our seeded draws choose": with the same draws, CMC within 1e-6. Its mAP (full-list AP, no sampling) is
     checked against our `evaluate_market` mAP on the same matrix (ours reports no mAP for this protocol).
  5. "evaluate_market peak RSS (msmt17-size)": MSMT17 size (11,659 x 82,161, 768-d) from features in a fresh
     subprocess; peak resident memory (VmHWM, MB, lower is better) against the 4 GB budget; time in "notes". The
     reference is not run there: its full float32 distance matrix alone is 3.8 GB, and eval_market1501 also
     holds an int64 argsort (7.7 GB) and an int32 match matrix (3.8 GB) of the same shape: 15.3 GB.
Quick mode times the reference on the first 800 Market queries (400 for the random case; its cost is linear in
the queries; ratios use per-query throughput, checks on those queries) and scales MSMT17 down by 4 in queries and
gallery; the notes say so.

Tie rule: we order equal distances by gallery index (a stable sort); torchreid uses np.argsort's default
(introsort, not stable), so where a true match has exactly the same float32 distance as another valid gallery
image the two may be ordered differently, which moves that query's AP a little (its CMC only if the tie is at the
first match). At Market size about 3 of 3,368 queries have such a tie, enough for an mAP difference of about 1e-6.
The notes count them and give the differences with and without them. torchreid drops Market junk (pid -1) when it
loads the dataset, not in
eval_market1501; the synthetic sets here have no junk, so both see the same gallery.

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


def cuhk03_like(seed: int = 0, num_ids: int = 100, per_cam: int = 5, num_cams: int = 2) -> EvalSet:
    """CUHK03 classic test split: num_ids identities seen by 2 cameras, up to `per_cam` images per camera (a few
    fewer, as in CUHK03), query = gallery (torchreid's classic split uses the test images as both)."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(1, per_cam - (rng.random((num_ids, num_cams)) < 0.1) * rng.integers(1, 3, (num_ids, num_cams)))
    pids = np.repeat(np.repeat(np.arange(1, num_ids + 1), num_cams), counts.ravel())
    cams = np.repeat(np.tile(np.arange(num_cams), num_ids), counts.ravel()).astype(np.int64)
    dim = FEATURE_DIM
    looks = rng.standard_normal((num_ids // 10 + 1, dim), dtype=np.float32)[np.arange(num_ids) // 10] / np.sqrt(dim)
    looks += 0.5 / np.sqrt(dim) * rng.standard_normal((num_ids, dim), dtype=np.float32)
    cam_bias = 0.4 / np.sqrt(dim) * rng.standard_normal((num_cams, dim), dtype=np.float32)
    f = _features(rng, looks[pids - 1], cams, cam_bias, 0.6, 0.2)
    return EvalSet(f, f, pids, pids, cams, cams)


def _reference():
    from benchmarks.torchreid_ref import load_reference, reason
    ref = load_reference()
    return ref, ("" if ref else reason())


def _tied_match_queries(dist: np.ndarray, q_pids, g_pids, q_camids, g_camids) -> np.ndarray:
    """Mask of the queries where a true match has exactly the distance of another valid gallery image (where the
    tie rule can matter)."""
    from reidtrain.metrics import _market_masks
    out = np.zeros(len(dist), dtype=bool)
    for s in range(0, len(dist), 512):
        d = dist[s:s + 512]
        pos, valid = _market_masks(q_pids[s:s + 512], q_camids[s:s + 512], g_pids, g_camids)
        srt = np.sort(np.where(valid, d, np.inf), axis=1)
        dup = np.zeros(d.shape, dtype=bool)
        eq = srt[:, 1:] == srt[:, :-1]
        for r, c in zip(*np.nonzero(eq & np.isfinite(srt[:, 1:]))):
            dup[r] |= valid[r] & (d[r] == srt[r, c + 1])
        out[s:s + 512] = (dup & pos).any(axis=1)
    return out


def _market_entries(quick: bool, data: EvalSet, tag: str, label: str, end_to_end: bool, ref, why: str,
                    n_quick: int) -> list[dict]:
    import torch

    from reidtrain.metrics import cmc_map_reference, evaluate_market, pairwise_distance
    max_rank = 50
    n_ref = min(n_quick, len(data.q_pids)) if quick else len(data.q_pids)
    nq, ng = len(data.q_pids), len(data.g_pids)
    t0 = time.perf_counter()
    dist = pairwise_distance(data.qf, data.gf)
    t_dist = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = evaluate_market(None, None, data.q_pids, data.g_pids, data.q_camids, data.g_camids, distmat=dist,
                           max_rank=max_rank)
    t_ours = time.perf_counter() - t0
    sub = (dist[:n_ref], data.q_pids[:n_ref], data.g_pids, data.q_camids[:n_ref], data.g_camids)
    t0 = time.perf_counter()
    if ref is not None:
        ref_cmc, ref_map = ref.rank.eval_market1501(*sub, max_rank)
        ref_name = "torchreid eval_market1501 (Python)"
    else:
        r = cmc_map_reference(*sub, max_rank=max_rank)
        ref_cmc, ref_map = r.cmc, r.mAP
        ref_name = "cmc_map_reference per-query loop (torchreid unavailable)"
    t_ref = time.perf_counter() - t0
    mine = ours if n_ref == nq else evaluate_market(None, None, *sub[1:], distmat=sub[0], max_rank=max_rank)
    ref_cmc = np.asarray(ref_cmc, dtype=np.float64)
    cmc_diff = float(np.abs(ref_cmc - mine.cmc).max())
    map_diff = abs(float(ref_map) - mine.mAP)
    tied = _tied_match_queries(*sub)
    ties = int(tied.sum())
    # Where a true match ties with another valid image, torchreid's unstable argsort may order them differently.
    # Split the reference's figures into the tied queries (run again on those alone) and the rest (by difference):
    # the rest must agree to 1e-6, and the tied queries must account for the whole difference.
    untied_cmc_diff, untied_map_diff, explained = cmc_diff, map_diff, True
    valid = mine.first_rank >= 0
    nv, nt = int(valid.sum()), int((valid & tied).sum())
    if nt:
        idx = np.flatnonzero(tied)
        t_args = (sub[0][idx], sub[1][idx], sub[2], sub[3][idx], sub[4])
        if ref is not None:
            t_cmc, t_map = ref.rank.eval_market1501(*t_args, max_rank)
        else:
            r = cmc_map_reference(*t_args, max_rank=max_rank)
            t_cmc, t_map = r.cmc, r.mAP
        t_cmc = np.asarray(t_cmc, dtype=np.float64)
        rest = valid & ~tied
        ours_rest_map = float(np.nanmean(mine.ap[rest])) if rest.any() else 0.0
        ours_rest_cmc = np.array([(mine.first_rank[rest] <= k).mean() if rest.any() else 0.0
                                  for k in range(max_rank)])
        ref_rest_map = (float(ref_map) * nv - float(t_map) * nt) / max(nv - nt, 1)
        ref_rest_cmc = (ref_cmc * nv - t_cmc * nt) / max(nv - nt, 1)
        untied_map_diff = abs(ref_rest_map - ours_rest_map) if rest.any() else 0.0
        untied_cmc_diff = float(np.abs(ref_rest_cmc - ours_rest_cmc).max()) if rest.any() else 0.0
        ours_t_map = float(np.nanmean(mine.ap[valid & tied]))
        explained = abs((float(t_map) - ours_t_map) * nt / nv - (float(ref_map) - mine.mAP)) <= 1e-9
        if ref is not None:   # torchreid's own code with a stable argsort gives our numbers on the tied queries
            s_cmc, s_map = _rank_module_copy(ref, _NumpyStableArgsort()).eval_market1501(*t_args, max_rank)
            ours_t_cmc = np.array([(mine.first_rank[valid & tied] <= k).mean() for k in range(max_rank)])
            stable_diff = max(abs(float(s_map) - ours_t_map), float(np.abs(np.asarray(s_cmc) - ours_t_cmc).max()))
            explained = explained and stable_diff <= 1e-6
    if untied_cmc_diff > 1e-6 or untied_map_diff > 1e-6 or not explained:
        raise AssertionError(f"evaluate_market differs from {ref_name}: max CMC diff {cmc_diff:.2e}, mAP diff "
                             f"{map_diff:.2e}; without the {ties} queries with a tied true match {untied_cmc_diff:.2e}"
                             f" / {untied_map_diff:.2e}; explained by the ties: {explained}")
    ours_qps, ref_qps = nq / t_ours, n_ref / t_ref
    s = ours.summary()
    numbers = (f"R1 {s['R1']:.2f} R5 {s['R5']:.2f} mAP {s['mAP']:.2f} mINP {s['mINP']:.2f}, "
               f"{ours.num_valid_queries}/{nq} valid queries")
    scope = (f"reference timed on the first {n_ref} queries (quick mode), results checked on those"
             if n_ref < nq else "reference on all queries")
    source = ref.describe() if ref is not None else f"torchreid reference unavailable: {why}"
    out = [{
        "stage": "eval", "ours": f"evaluate_market ranking ({tag})", "ours_value": round(ours_qps, 1),
        "reference": ref_name, "reference_value": round(ref_qps, 1),
        "unit": "queries/s", "ratio": round(ours_qps / ref_qps, 2), "target": ">= 10" if tag == "market" else None,
        "peak_mem_mb": round(_peak_rss_mb(), 1),
        "notes": (f"{label} {nq}x{ng}x{FEATURE_DIM}, same float32 distmat, higher is better; {numbers}; "
                  f"all {n_ref} queries: max |CMC diff| (ranks 1-{max_rank}) {cmc_diff:.1e} (torchreid's CMC is "
                  f"float32), |mAP diff| {map_diff:.1e}; {ties} queries have a true match at exactly the float32 "
                  f"distance of another valid image, where torchreid's np.argsort (introsort, not stable) may put "
                  f"the other first and we put the smaller gallery index first; without them max |CMC diff| "
                  f"{untied_cmc_diff:.1e}, |mAP diff| {untied_map_diff:.1e}; the tied queries account for the whole "
                  f"difference, and torchreid's eval_market1501 with a stable np.argsort equals ours on them within "
                  f"1e-6 (checked); {scope}; {source}; torch threads "
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
            "ours_value": round(nq / t_e2e, 1), "reference": f"pairwise_distance + {ref_name}",
            "reference_value": round(ref_e2e_qps, 1), "unit": "queries/s",
            "ratio": round(nq / t_e2e / ref_e2e_qps, 2), "target": None, "peak_mem_mb": round(_peak_rss_mb(), 1),
            "notes": (f"{label} {nq}x{ng}x{FEATURE_DIM}; distances alone {t_dist:.2f} s; end-to-end "
                      f"{t_e2e:.2f} s; same ranks as from the full distmat; higher is better"),
        })
    return out


class _NumpyWithDraws:
    """Stands in for numpy inside torchreid's rank module: everything is numpy except `random.choice`, which picks
    the gallery image that our seeded uniform draws pick (largest draw of the identity among the query's valid
    images), so that torchreid's eval_cuhk03 and our evaluate_cuhk03_classic sample the same galleries."""

    def __init__(self) -> None:
        import types
        self.random = types.SimpleNamespace(choice=self._choice)
        self.kept = self.draws = None
        self.calls = self.per_repeat = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def start_query(self, kept: np.ndarray, draws: np.ndarray, num_ids: int) -> None:
        self.kept, self.draws, self.per_repeat, self.calls = kept, draws, num_ids, 0

    def _choice(self, idxs):
        r = self.calls // self.per_repeat
        self.calls += 1
        idxs = np.asarray(idxs)
        return int(idxs[np.argmax(self.draws[r, self.kept[idxs]])])


class _NumpyStableArgsort:
    """Stands in for numpy inside torchreid's rank module: np.argsort is the stable sort (our tie rule)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, axis=-1):
        return np.argsort(a, axis=axis, kind="stable")


def _rank_module_copy(ref, numpy_standin):
    """A second copy of torchreid's rank.py, loaded from its file, whose `np` is `numpy_standin`."""
    import importlib.util
    import warnings
    spec = importlib.util.spec_from_file_location(f"_torchreid_ref_rank_{type(numpy_standin).__name__}",
                                                  ref.rank.__file__)
    mod = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.loader.exec_module(mod)
    mod.np = numpy_standin
    return mod


def _cuhk03_matched(ref, dist: np.ndarray, data: EvalSet, repeats: int, seed: int, max_rank: int) -> np.ndarray:
    """torchreid's eval_cuhk03 run query by query with our draws (see _NumpyWithDraws); returns its mean CMC."""
    fake = _NumpyWithDraws()
    mod = _rank_module_copy(ref, fake)
    nq, ng = dist.shape
    draws = np.stack([np.random.default_rng([seed, r]).random((nq, ng)) for r in range(repeats)], axis=1)
    total, valid = np.zeros(max_rank), 0
    for i in range(nq):
        order = np.argsort(dist[i:i + 1], axis=1)[0]          # the order eval_cuhk03 computes for this row
        keep = ~((data.g_pids[order] == data.q_pids[i]) & (data.g_camids[order] == data.q_camids[i]))
        kept = order[keep]
        if not (data.g_pids[kept] == data.q_pids[i]).any():
            continue
        fake.start_query(kept, draws[i], len(np.unique(data.g_pids[kept])))
        cmc, _ = mod.eval_cuhk03(dist[i:i + 1], data.q_pids[i:i + 1], data.g_pids, data.q_camids[i:i + 1],
                                 data.g_camids, max_rank)
        total += cmc
        valid += 1
    return total / max(valid, 1)


def _cuhk03_entry(ref, why: str) -> dict:
    from reidtrain.metrics import evaluate_cuhk03_classic, evaluate_market, pairwise_distance
    data = cuhk03_like()
    n = len(data.q_pids)
    repeats, seed, max_rank = 10, 0, 20
    dist = pairwise_distance(data.qf, data.gf)
    args = (data.q_pids, data.g_pids, data.q_camids, data.g_camids)
    t0 = time.perf_counter()
    ours = evaluate_cuhk03_classic(None, None, *args, repeats=repeats, seed=seed, max_rank=max_rank, distmat=dist)
    t_ours = time.perf_counter() - t0
    base = {"stage": "eval", "ours": "evaluate_cuhk03_classic (cuhk03-size)", "ours_value": round(n / t_ours, 1),
            "unit": "queries/s", "target": ">= 10", "peak_mem_mb": round(_peak_rss_mb(), 1)}
    if ref is None:
        return {**base, "reference": "torchreid eval_cuhk03 (unavailable)", "reference_value": None, "ratio": None,
                "notes": f"skipped the reference: {why}"}
    np.random.seed(0)
    t0 = time.perf_counter()
    ref_cmc, ref_map = ref.rank.eval_cuhk03(dist, *args, max_rank)
    t_ref = time.perf_counter() - t0
    matched = _cuhk03_matched(ref, dist, data, repeats, seed, max_rank)
    cmc_diff = float(np.abs(matched - ours.cmc).max())
    market_map = evaluate_market(None, None, *args, distmat=dist).mAP
    map_diff = abs(float(ref_map) - market_map)
    if cmc_diff > 1e-6 or map_diff > 1e-6:
        raise AssertionError(f"evaluate_cuhk03_classic differs from eval_cuhk03 with the same draws: CMC diff "
                             f"{cmc_diff:.2e}; full-list mAP diff {map_diff:.2e}")
    noise = float(np.abs(np.asarray(ref_cmc, dtype=np.float64) - ours.cmc).max())
    return {**base, "reference": "torchreid eval_cuhk03 (Python)", "reference_value": round(n / t_ref, 1),
            "ratio": round(t_ref / t_ours, 2),
            "notes": (f"CUHK03 classic test split, {n} images of 100 identities, 2 cameras, query = gallery, "
                      f"{FEATURE_DIM}-d, {repeats} repeats, same float32 distmat; R1 {100 * ours.cmc[0]:.2f} R5 "
                      f"{100 * ours.cmc[4]:.2f}; with the same draws (torchreid's eval_cuhk03 with np.random.choice "
                      f"replaced by our seeded choice, query by query) max |CMC diff| {cmc_diff:.1e}; with its own "
                      f"global-RNG draws (the timed run) max |CMC diff| {noise:.3f} = sampling noise; its mAP "
                      f"(full-list AP, no sampling) {100 * ref_map:.2f} vs our evaluate_market mAP, diff "
                      f"{map_diff:.1e} (ours reports no mAP for this protocol); {ref.describe()}"),
            }


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
                  f"{r['valid']}/{r['queries']} valid queries; the reference is not run: at full MSMT17 size "
                  f"torchreid's "
                  f"eval_market1501 needs the float32 distmat ({_MSMT_ENTRIES * 4 / 1e9:.1f} GB), an int64 argsort "
                  f"({_MSMT_ENTRIES * 8 / 1e9:.1f} GB) and an int32 match matrix ({_MSMT_ENTRIES * 4 / 1e9:.1f} GB), "
                  f"{_MSMT_ENTRIES * 16 / 1e9:.1f} GB in all"),
    }


_MSMT_ENTRIES = 11659 * 82161


def run(quick: bool = True) -> list[dict]:
    ref, why = _reference()
    market = market_like()
    rows = _market_entries(quick, market, "market", "Market-1501 size", not quick, ref, why, 800)
    n = 1200 if quick else len(market.q_pids)
    rnd = EvalSet(np.random.default_rng(1).standard_normal((n, FEATURE_DIM), dtype=np.float32),
                  np.random.default_rng(2).standard_normal(market.gf.shape, dtype=np.float32),
                  market.q_pids[:n], market.g_pids, market.q_camids[:n], market.g_camids)
    del market
    label = "worst case (unstructured random features: a useless model)" + (
        f", first {n} queries (quick mode)," if quick else ",")
    rows += _market_entries(quick, rnd, "random features", label, False, ref, why, 400)
    del rnd
    rows.append(_cuhk03_entry(ref, why))
    rows.append(_msmt_entry(quick))
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full sizes (slow: minutes)")
    args = parser.parse_args()
    for row in run(quick=not args.full):
        print(json.dumps(row))
