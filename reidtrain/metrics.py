"""Retrieval metrics of the paper (Sec. 4.1): CMC rank-k accuracy and mAP, single query.

Distances
    `pairwise_distance` gives query x gallery distances in float32:
    "euclidean"   = true Euclidean distance ||q - g||  (sqrt of the expanded squared form, clamped at 0),
    "sqeuclidean" = squared Euclidean ||q - g||^2     (what k-reciprocal re-ranking expects),
    "cosine"      = 1 - cos(q, g).
    On L2-normalised features all three rank the gallery identically (up to float32 rounding).

Protocols
    `evaluate_market`  Market-1501 / DukeMTMC-reID / MSMT17 / CUHK03-new (767/700): per query, gallery images
        of the same identity AND the same camera are ignored, junk images (pid -1) are dropped, distractors
        (Market pid 0) are ordinary negatives (no query carries their pid), queries without any valid match
        are skipped and counted. CMC(k) = share of valid queries whose first match is within the top k;
        AP = mean over the true matches of the precision at each match's rank (the usual Python definition;
        the original Market MATLAB kit uses a trapezoid interpolation that differs slightly);
        mAP = mean AP over the valid queries. mINP (Ye et al., "Deep Learning for Person Re-identification: A
        Survey and Outlook", the metric of fast-reid): per query INP = (number of true matches) / (1-based rank
        of the hardest, i.e. last-ranked, true match), the share of the list up to the last match that is
        correct; mINP = mean INP over the valid queries.
    `evaluate_cuhk03_classic`  CUHK03 1,367/100 split: single-gallery-shot CMC. For every repeat and every
        query, one image per gallery identity is drawn at random (seeded) among that query's valid gallery
        images (other camera, as above), the query is ranked against those, and the CMC is averaged over the
        repeats. mAP and mINP are None (the paper prints '-'; one image per identity makes them meaningless).
    `evaluate_single_shot`  CUHK01 single-shot: per seeded repeat one query image per identity and one gallery
        image per identity (one gallery for all queries); CMC over the repeats, mAP = mINP = mean reciprocal rank
        (one true match per query).
        CUHK01 multi-shot is `evaluate_market` on all camera-A against all camera-B images (cross-view by
        construction); multi-query first averages each identity's query features (`average_per_identity`).

Ranking and ties
    Distances are ranked as float32 (a float64 distmat is rounded to float32 first). The gallery order is
    the stable order by (distance, gallery index): equal distances are broken by the smaller gallery index,
    exactly like `np.argsort(row, kind="stable")`. NaN distances raise ValueError.

Speed and memory
    Queries are processed in chunks (rows of the distance matrix); a chunk never needs more than about
    `CHUNK_BYTES` of scratch memory, so an MSMT17-size evaluation (11,659 x 82,161) stays within a few
    hundred MB besides the features. Within a chunk nothing loops over queries: the rank of every true match
    is the number of valid gallery images strictly closer than it, counted by one sort of the (usually few)
    gallery images that are closer than the query's farthest true match, plus an exact tie count for the
    rare exact ties. `cmc_map_reference` is the plain per-query loop used to prove the numbers identical.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import numpy as np
import torch

Metric = Literal["euclidean", "sqeuclidean", "cosine"]
METRICS: tuple[str, ...] = ("euclidean", "sqeuclidean", "cosine")
CHUNK_BYTES = 256 * 2**20          # scratch memory per query chunk (about 40 bytes per distance entry)
_BYTES_PER_ENTRY = 40
DENSE_CANDIDATES = 0.125           # candidate share above which a chunk is ranked by a row-wise sort
JUNK_PID = -1                      # gallery images with this pid are dropped (Market "junk")
DISTRACTOR_PID = 0                 # Market distractors: ordinary negatives, never a query identity


@dataclass(frozen=True)
class EvalResult:
    """Outcome of one evaluation; fractions in [0, 1] (use `summary()` for the paper's percentages).

    cmc: (max_rank,) CMC curve, cmc[k-1] = rank-k accuracy over the valid queries.
    mAP: mean average precision over the valid queries (None where the protocol has none).
    ap: (num_queries,) average precision per query, NaN for skipped queries (None for CUHK03 classic).
    first_rank: (num_queries,) 0-based rank of the first true match among the valid gallery images,
        -1 for skipped queries (None for CUHK03 classic, whose ranks differ per repeat).
    mINP: mean inverse negative penalty over the valid queries (module docstring; None where mAP is None).
    inp: (num_queries,) INP per query, NaN for skipped queries (None where ap is None).
    """

    cmc: np.ndarray
    mAP: float | None
    num_valid_queries: int
    num_queries: int
    ap: np.ndarray | None = None
    first_rank: np.ndarray | None = None
    mINP: float | None = None
    inp: np.ndarray | None = None
    protocol: str = "market"
    metric: str = "euclidean"
    notes: dict = field(default_factory=dict)

    @property
    def num_skipped_queries(self) -> int:
        return self.num_queries - self.num_valid_queries

    def rank(self, k: int) -> float:
        """Rank-k accuracy (fraction); k is 1-based."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank {k} outside 1..{len(self.cmc)} (max_rank of this evaluation)")
        return float(self.cmc[k - 1])

    def summary(self, ranks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float | int | None]:
        """{"R1": %, "R5": %, ..., "mAP": %, "mINP": % (or None), "num_valid_queries", "num_queries"} in percent."""
        out: dict[str, float | int | None] = {}
        for k in ranks:
            if k <= len(self.cmc):
                out[f"R{k}"] = 100.0 * float(self.cmc[k - 1])
        out["mAP"] = None if self.mAP is None else 100.0 * float(self.mAP)
        out["mINP"] = None if self.mINP is None else 100.0 * float(self.mINP)
        out["num_valid_queries"] = self.num_valid_queries
        out["num_queries"] = self.num_queries
        return out


# --------------------------------------------------------------------------------------------- distances

def _as_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach()
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D feature matrix (N, D), got shape {tuple(t.shape)}")
    t = t.to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: features contain NaN or infinite values")
    return t


class _DistanceRows:
    """Query x gallery distances, computed one block of query rows at a time (gallery held once)."""

    def __init__(self, qf, gf, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.q = _as_tensor(qf, "query features")
        self.g = _as_tensor(gf, "gallery features")
        if self.q.shape[1] != self.g.shape[1]:
            raise ValueError(f"query features are {self.q.shape[1]}-d but gallery features are {self.g.shape[1]}-d")
        self.metric = metric
        if metric == "cosine":
            self.q = torch.nn.functional.normalize(self.q, dim=1)
            self.g = torch.nn.functional.normalize(self.g, dim=1)
        else:
            self.q2 = (self.q * self.q).sum(1, keepdim=True)
            self.g2 = (self.g * self.g).sum(1).unsqueeze(0)
        self.gt = self.g.t()             # a view: BLAS reads it transposed, no (D, G) copy

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[0], self.g.shape[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        with torch.no_grad():
            dot = self.q[start:stop] @ self.gt
            if self.metric == "cosine":
                d = dot.neg_().add_(1.0)
            else:
                d = dot.mul_(-2.0).add_(self.q2[start:stop]).add_(self.g2).clamp_min_(0.0)
                if self.metric == "euclidean":
                    d = d.sqrt_()
        return d.numpy()


def _auto_chunk(num_gallery: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    return max(1, CHUNK_BYTES // (_BYTES_PER_ENTRY * max(1, num_gallery)))


def iter_distance_chunks(qf, gf, metric: Metric = "euclidean",
                         chunk_size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first_query_row, float32 distance block) over the query rows, in order."""
    rows = _DistanceRows(qf, gf, metric)
    nq, ng = rows.shape
    step = _auto_chunk(ng, chunk_size)
    for start in range(0, nq, step):
        yield start, rows.rows(start, min(nq, start + step))


def pairwise_distance(qf, gf, metric: Metric = "euclidean", chunk_size: int | None = None) -> np.ndarray:
    """(Q, G) float32 distances between query and gallery features (numpy or torch, (N, D)).

    metric: "euclidean" (true distance), "sqeuclidean" (squared) or "cosine" (1 - cosine similarity).
    The full matrix is returned; `chunk_size` only bounds the temporary memory while computing it.
    """
    rows = _DistanceRows(qf, gf, metric)
    out = np.empty(rows.shape, dtype=np.float32)
    step = _auto_chunk(rows.shape[1], chunk_size)
    for start in range(0, rows.shape[0], step):
        stop = min(rows.shape[0], start + step)
        out[start:stop] = rows.rows(start, stop)
    return out


# --------------------------------------------------------------------------------------------- ranking core

def _labels(x, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if a.size and not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name}: expected integer labels")
    a = a.astype(np.int64)
    if n is not None and len(a) != n:
        raise ValueError(f"{name}: has {len(a)} entries, expected {n}")
    return a


def _as_float32_rows(block) -> np.ndarray:
    if isinstance(block, torch.Tensor):
        block = block.detach().cpu().numpy()
    d = np.asarray(block, dtype=np.float32)
    if np.isnan(d).any():
        raise ValueError("distance matrix contains NaN values")
    return d


def _order_bits(d: np.ndarray) -> np.ndarray:
    """int64 in [0, 2^32) with the order of the float32 values (-0.0 counted as +0.0)."""
    b = (d + np.float32(0.0)).view(np.int32)
    b = np.where(b < 0, b ^ np.int32(0x7FFFFFFF), b)
    return b.astype(np.int64) + 2**31


def _match_ranks(d: np.ndarray, pos: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the true matches of each query row among that row's valid gallery images.

    d (n, G) float32, pos (n, G) true matches (already valid), valid (n, G) gallery images that count.
    Returns (n_pos (n,), rows (M,), ranks (M,)) with the M true matches listed row by row, ascending rank;
    rank = number of valid images ordered before the match by (distance, gallery index), 0-based.
    """
    n, g = d.shape
    n_pos = np.count_nonzero(pos, axis=1)
    p_rows, p_cols = np.nonzero(pos)
    if len(p_rows) == 0:
        return n_pos, p_rows.astype(np.int64), p_rows.astype(np.int64)
    p_vals = d[p_rows, p_cols]
    # only images up to the farthest true match can be ordered before any true match ("candidates")
    far = np.full(n, -np.inf, dtype=np.float32)
    first_of_row = np.flatnonzero(np.r_[True, p_rows[1:] != p_rows[:-1]])
    far[p_rows[first_of_row]] = np.maximum.reduceat(p_vals, first_of_row)
    cand = valid & (d <= far[:, None])
    counts = np.count_nonzero(cand, axis=1)
    if counts.sum() > DENSE_CANDIDATES * d.size:
        # many candidates (a weak model): one row-wise sort of the candidate distances
        srt = torch.from_numpy(np.sort(np.where(cand, d, np.float32(np.inf)), axis=1))
        p_start = np.concatenate(([0], np.cumsum(n_pos)[:-1]))
        slot = np.arange(len(p_rows)) - p_start[p_rows]
        pm = np.full((n, int(n_pos.max())), np.inf, dtype=np.float32)
        pm[p_rows, slot] = p_vals
        pm_t = torch.from_numpy(pm)
        left = torch.searchsorted(srt, pm_t, side="left").numpy()[p_rows, slot]
        right = torch.searchsorted(srt, pm_t, side="right").numpy()[p_rows, slot]
        ranks = left.astype(np.int64)
    else:
        # few candidates (the usual case): sort them all at once, keyed by (row, distance)
        c_rows = np.repeat(np.arange(n, dtype=np.int64), counts)
        composite = np.sort((c_rows << 32) | _order_bits(d[cand]))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        p_key = (p_rows.astype(np.int64) << 32) | _order_bits(p_vals)
        left = np.searchsorted(composite, p_key, side="left")
        right = np.searchsorted(composite, p_key, side="right")
        ranks = left - starts[p_rows]
    # exact ties (another valid image at the same distance): the smaller gallery index comes first
    for j in np.flatnonzero(right - left > 1):
        r, c = p_rows[j], p_cols[j]
        ranks[j] += np.count_nonzero(valid[r, :c] & (d[r, :c] == p_vals[j]))
    order = np.sort((p_rows.astype(np.int64) << 32) | ranks)
    return n_pos, order >> 32, order & 0xFFFFFFFF


def _accumulate(n_pos: np.ndarray, rows: np.ndarray, ranks: np.ndarray,
                with_inp: bool = False) -> tuple[np.ndarray, ...]:
    """(ap (n,) NaN where no match, first_rank (n,) -1 where no match[, inp (n,) NaN where no match]) from
    `_match_ranks` output; inp = n_pos / (1-based rank of the last true match)."""
    n = len(n_pos)
    ap = np.full(n, np.nan)
    inp = np.full(n, np.nan)
    first = np.full(n, -1, dtype=np.int64)
    if len(rows):
        starts = np.concatenate(([0], np.cumsum(n_pos)[:-1]))
        k = np.arange(len(rows)) - starts[rows]
        prec = (k + 1.0) / (ranks + 1.0)
        sums = np.bincount(rows, weights=prec, minlength=n)
        has = n_pos > 0
        ap[has] = sums[has] / n_pos[has]
        first[has] = ranks[starts[has]]
        inp[has] = n_pos[has] / (ranks[starts[has] + n_pos[has] - 1] + 1.0)
    return (ap, first, inp) if with_inp else (ap, first)


def _cmc(first_rank: np.ndarray, max_rank: int) -> np.ndarray:
    valid = first_rank >= 0
    if not valid.any():
        return np.zeros(max_rank)
    hits = np.bincount(np.minimum(first_rank[valid], max_rank), minlength=max_rank + 1)[:max_rank]
    return np.cumsum(hits) / valid.sum()


def _row_blocks(qf, gf, metric: str, chunk_size: int | None, distmat, nq: int, ng: int
                ) -> Iterator[tuple[int, np.ndarray]]:
    if distmat is None:
        if qf is None or gf is None:
            raise ValueError("give either features (qf, gf) or a precomputed distmat")
        yield from iter_distance_chunks(qf, gf, metric, chunk_size)
        return
    if isinstance(distmat, (np.ndarray, torch.Tensor)):
        if tuple(distmat.shape) != (nq, ng):
            raise ValueError(f"distmat has shape {tuple(distmat.shape)}, expected ({nq}, {ng}) = (queries, gallery)")
        step = _auto_chunk(ng, chunk_size)
        for start in range(0, nq, step):
            yield start, _as_float32_rows(distmat[start:start + step])
        return
    start = 0  # an iterable of row blocks in query order (e.g. re-ranked distances made chunk by chunk)
    for block in distmat:
        if isinstance(block, tuple):
            block = block[1]
        block = _as_float32_rows(block)
        if block.ndim != 2 or block.shape[1] != ng:
            raise ValueError(f"distmat block at query row {start} has shape {block.shape}, expected (*, {ng})")
        yield start, block
        start += block.shape[0]
    if start != nq:
        raise ValueError(f"distmat blocks cover {start} query rows, expected {nq}")


def _check_inputs(qf, gf, q_pids, g_pids, q_camids, g_camids, distmat, max_rank):
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    q_pids = _labels(q_pids, "q_pids")
    g_pids = _labels(g_pids, "g_pids")
    q_camids = _labels(q_camids, "q_camids", len(q_pids))
    g_camids = _labels(g_camids, "g_camids", len(g_pids))
    nq, ng = len(q_pids), len(g_pids)
    if distmat is None and qf is not None:
        if len(qf) != nq:
            raise ValueError(f"{len(qf)} query features but {nq} query pids")
        if gf is not None and len(gf) != ng:
            raise ValueError(f"{len(gf)} gallery features but {ng} gallery pids")
    return q_pids, g_pids, q_camids, g_camids, nq, ng


def _market_masks(qp, qc, g_pids, g_camids) -> tuple[np.ndarray, np.ndarray]:
    same_pid = qp[:, None] == g_pids[None, :]
    junk = (same_pid & (qc[:, None] == g_camids[None, :])) | (g_pids == JUNK_PID)[None, :]
    valid = ~junk
    return same_pid & valid, valid


def _identity_groups(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(perm, starts, group): the pid-sorting permutation of the columns, the first sorted column of each
    identity, and the identity group of each sorted column - what `_one_per_identity` needs."""
    perm = np.argsort(pids, kind="stable")
    sorted_pids = pids[perm]
    new_group = np.r_[True, sorted_pids[1:] != sorted_pids[:-1]]
    return perm, np.flatnonzero(new_group), np.cumsum(new_group) - 1


def _one_per_identity(u: np.ndarray, groups: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Per row of the uniform draws `u` (n, N), the column of each identity with the largest draw (columns with
    u < 0 never chosen; an identity whose columns are all < 0 gets none). Returns the (n, N) chosen mask."""
    perm, starts, group = groups
    us = u[:, perm]
    best = np.maximum.reduceat(us, starts, axis=1)[:, group]
    chosen = np.empty(u.shape, dtype=bool)
    chosen[:, perm] = (us == best) & (us >= 0.0)
    return chosen


# --------------------------------------------------------------------------------------------- protocols

def evaluate_market(qf, gf, q_pids, g_pids, q_camids, g_camids, metric: Metric = "euclidean",
                    max_rank: int = 20, chunk_size: int | None = None, distmat=None) -> EvalResult:
    """CMC and mAP under the Market-1501 protocol (module docstring); also Duke, MSMT17, CUHK03-new.

    qf, gf: (Q, D), (G, D) features (numpy or torch), or None when `distmat` is given.
    distmat: optional precomputed (Q, G) distances (array/tensor/memmap), or an iterable of row blocks
        ((n_i, G) arrays or (start, block) pairs) in query order, e.g. re-ranked distances.
    chunk_size: query rows per chunk (default: sized to CHUNK_BYTES of scratch memory).
    """
    q_pids, g_pids, q_camids, g_camids, nq, ng = _check_inputs(
        qf, gf, q_pids, g_pids, q_camids, g_camids, distmat, max_rank)
    ap = np.full(nq, np.nan)
    inp = np.full(nq, np.nan)
    first = np.full(nq, -1, dtype=np.int64)
    for start, d in _row_blocks(qf, gf, metric, chunk_size, distmat, nq, ng):
        stop = start + d.shape[0]
        pos, valid = _market_masks(q_pids[start:stop], q_camids[start:stop], g_pids, g_camids)
        ap[start:stop], first[start:stop], inp[start:stop] = _accumulate(*_match_ranks(d, pos, valid), with_inp=True)
    has = first >= 0
    return EvalResult(cmc=_cmc(first, max_rank), mAP=float(ap[has].mean()) if has.any() else 0.0,
                      num_valid_queries=int(has.sum()), num_queries=nq, ap=ap, first_rank=first,
                      mINP=float(inp[has].mean()) if has.any() else 0.0, inp=inp,
                      protocol="market", metric="precomputed" if distmat is not None else metric)


def evaluate_cuhk03_classic(qf, gf, q_pids, g_pids, q_camids, g_camids, repeats: int = 10, seed: int = 0,
                            max_rank: int = 20, metric: Metric = "euclidean", chunk_size: int | None = None,
                            distmat=None) -> EvalResult:
    """Single-gallery-shot CMC of the CUHK03 classic (1,367/100) protocol, averaged over `repeats` draws.

    Per repeat r the draws come from np.random.default_rng([seed, r]) in query order, so the result depends
    only on (seed, repeats), not on chunk_size. Same-camera images of the query's identity and junk are
    excluded before drawing. mAP is None. The new 767/700 protocol uses `evaluate_market`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    q_pids, g_pids, q_camids, g_camids, nq, ng = _check_inputs(
        qf, gf, q_pids, g_pids, q_camids, g_camids, distmat, max_rank)
    if ng == 0:
        return EvalResult(cmc=np.zeros(max_rank), mAP=None, num_valid_queries=0, num_queries=nq,
                          protocol="cuhk03-classic", metric=metric, notes={"repeats": repeats, "seed": seed})
    groups = _identity_groups(g_pids)
    rngs = [np.random.default_rng([seed, r]) for r in range(repeats)]
    cmc_sum = np.zeros((nq, max_rank))
    has = np.zeros(nq, dtype=bool)
    for start, d in _row_blocks(qf, gf, metric, chunk_size, distmat, nq, ng):
        stop = start + d.shape[0]
        pos, valid = _market_masks(q_pids[start:stop], q_camids[start:stop], g_pids, g_camids)
        has[start:stop] = pos.any(axis=1)
        for rng in rngs:
            u = rng.random(d.shape)
            u[~valid] = -1.0
            chosen = _one_per_identity(u, groups)
            _, first = _accumulate(*_match_ranks(d, pos & chosen, chosen))
            ok = first >= 0
            cmc_sum[start:stop][ok] += first[ok][:, None] <= np.arange(max_rank)[None, :]
    cmc = cmc_sum[has].mean(axis=0) / repeats if has.any() else np.zeros(max_rank)
    return EvalResult(cmc=cmc, mAP=None, num_valid_queries=int(has.sum()), num_queries=nq,
                      protocol="cuhk03-classic", metric="precomputed" if distmat is not None else metric,
                      notes={"repeats": repeats, "seed": seed})


def evaluate_single_shot(qf, gf, q_pids, g_pids, q_camids, g_camids, repeats: int = 10, seed: int = 0,
                         max_rank: int = 20, metric: Metric = "euclidean", chunk_size: int | None = None,
                         distmat=None) -> EvalResult:
    """Single-shot CMC and mAP (the CUHK01 protocol): one query image per identity against one gallery image
    per identity, averaged over `repeats` seeded draws.

    Repeat r draws from np.random.default_rng([seed, r]): first one uniform per query image, then one per
    gallery image. Each query identity is represented by its image with the largest draw among those that
    have a true match in the gallery (other camera, as in `evaluate_market`); each gallery identity by its
    non-junk image with the largest draw, the same gallery for every query of the repeat (unlike
    `evaluate_cuhk03_classic`, which draws a gallery per query image). A drawn query whose own identity's drawn
    gallery image is from its camera has no match in that repeat and is skipped. CMC = hits over the evaluated
    (repeat, query) pairs. With one true match, AP = 1 / (1-based rank of the match), so mAP is the mean
    reciprocal rank. first_rank and ap are None (they differ per repeat). num_queries / num_valid_queries:
    query identities / those with a true match. The result depends on (seed, repeats) only, not on chunk_size.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    q_pids, g_pids, q_camids, g_camids, nq, ng = _check_inputs(
        qf, gf, q_pids, g_pids, q_camids, g_camids, distmat, max_rank)
    # a query can be drawn when its identity has a non-junk gallery image from another camera
    g_keys = {(int(p), int(c)) for p, c in zip(g_pids, g_camids) if p != JUNK_PID}
    g_cams: dict[int, set[int]] = {}
    for p, c in g_keys:
        g_cams.setdefault(p, set()).add(c)
    drawable = np.array([bool(g_cams.get(int(p), set()) - {int(c)}) for p, c in zip(q_pids, q_camids)], dtype=bool)
    num_ids = len(np.unique(q_pids))
    notes = {"repeats": repeats, "seed": seed, "mAP": "mean reciprocal rank (one true match per query)",
             "mINP": "equals mAP (one true match per query)"}
    if not drawable.any():
        return EvalResult(cmc=np.zeros(max_rank), mAP=0.0, num_valid_queries=0, num_queries=num_ids, mINP=0.0,
                          protocol="single-shot", metric=metric, notes=notes)
    q_groups, g_groups = _identity_groups(q_pids), _identity_groups(g_pids)
    q_chosen = np.zeros((repeats, nq), dtype=bool)
    g_chosen = np.zeros((repeats, ng), dtype=bool)
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        uq, ug = rng.random((1, nq)), rng.random((1, ng))
        uq[0, ~drawable] = -1.0
        ug[0, g_pids == JUNK_PID] = -1.0
        q_chosen[r] = _one_per_identity(uq, q_groups)[0]
        g_chosen[r] = _one_per_identity(ug, g_groups)[0]
    hits = np.zeros(max_rank)
    ap_sum = np.zeros(nq)        # per query image, summed over the repeats: the same sums whatever the chunks
    evaluated = 0
    for start, d in _row_blocks(qf, gf, metric, chunk_size, distmat, nq, ng):
        stop = start + d.shape[0]
        pos, valid = _market_masks(q_pids[start:stop], q_camids[start:stop], g_pids, g_camids)
        for r in range(repeats):
            rows = np.flatnonzero(q_chosen[r, start:stop])
            if len(rows) == 0:
                continue
            g = g_chosen[r][None, :]
            ap, first = _accumulate(*_match_ranks(d[rows], pos[rows] & g, valid[rows] & g))
            ok = first >= 0
            hits += np.count_nonzero(first[ok][:, None] <= np.arange(max_rank)[None, :], axis=0)
            ap_sum[start + rows[ok]] += ap[ok]
            evaluated += int(ok.sum())
    cmc = hits / evaluated if evaluated else np.zeros(max_rank)
    mrr = float(ap_sum.sum()) / evaluated if evaluated else 0.0
    return EvalResult(cmc=cmc, mAP=mrr, mINP=mrr,
                      num_valid_queries=len(np.unique(q_pids[drawable])), num_queries=num_ids,
                      protocol="single-shot", metric="precomputed" if distmat is not None else metric,
                      notes={**notes, "evaluated_pairs": evaluated})


def average_per_identity(features, pids, camids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multi-query pooling: the mean feature of each identity's images, (features (P, D), pids (P,), camids (P,)),
    identities in ascending pid order, each with the camera of its first image (CUHK01 queries: all camera A)."""
    f = np.asarray(features.cpu().numpy() if isinstance(features, torch.Tensor) else features, dtype=np.float32)
    pids = _labels(pids, "pids", len(f))
    camids = _labels(camids, "camids", len(f))
    uniq, first, inverse = np.unique(pids, return_index=True, return_inverse=True)
    sums = np.zeros((len(uniq), f.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, f)
    counts = np.bincount(inverse, minlength=len(uniq))
    return (sums / counts[:, None]).astype(np.float32), uniq, camids[first]


# --------------------------------------------------------------------------------------------- reference

def cmc_map_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 20) -> EvalResult:
    """Plain per-query loop (the classic reference code), same protocol and tie rule; for tests/benchmarks."""
    d_all = _as_float32_rows(distmat)
    q_pids, g_pids = _labels(q_pids, "q_pids"), _labels(g_pids, "g_pids")
    q_camids, g_camids = _labels(q_camids, "q_camids"), _labels(g_camids, "g_camids")
    nq = d_all.shape[0]
    ap = np.full(nq, np.nan)
    inp = np.full(nq, np.nan)
    first = np.full(nq, -1, dtype=np.int64)
    for i in range(nq):
        order = np.argsort(d_all[i], kind="stable")
        pids, cams = g_pids[order], g_camids[order]
        remove = ((pids == q_pids[i]) & (cams == q_camids[i])) | (pids == JUNK_PID)
        matches = (pids[~remove] == q_pids[i]).astype(np.float64)
        if not matches.any():
            continue
        first[i] = int(np.argmax(matches))
        hits = np.cumsum(matches)
        precision = hits / np.arange(1, len(hits) + 1)
        ap[i] = (precision * matches).sum() / matches.sum()
        last = int(np.flatnonzero(matches)[-1])
        inp[i] = hits[last] / (last + 1)
    has = first >= 0
    cmc = np.array([(first[has] <= k).mean() if has.any() else 0.0 for k in range(max_rank)])
    return EvalResult(cmc=cmc, mAP=float(ap[has].mean()) if has.any() else 0.0, num_valid_queries=int(has.sum()),
                      num_queries=nq, ap=ap, first_rank=first, mINP=float(inp[has].mean()) if has.any() else 0.0,
                      inp=inp, protocol="market-reference", metric="precomputed")


# --------------------------------------------------------------------------------------------- ranked lists

def top_k_gallery(distmat, q_pids, g_pids, q_camids, g_camids, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery indices per query row under the Market protocol (junk and same-camera matches skipped).

    Returns (indices (n, k) int64, -1 where fewer than k valid images; correct (n, k) bool: same identity).
    Same tie rule as the metrics. Meant for the few queries of a ranked-list picture (Fig. 6).
    """
    d = _as_float32_rows(distmat)
    q_pids, g_pids = _labels(q_pids, "q_pids"), _labels(g_pids, "g_pids")
    q_camids, g_camids = _labels(q_camids, "q_camids"), _labels(g_camids, "g_camids")
    pos, valid = _market_masks(q_pids, q_camids, g_pids, g_camids)
    idx = np.full((d.shape[0], k), -1, dtype=np.int64)
    correct = np.zeros((d.shape[0], k), dtype=bool)
    for i in range(d.shape[0]):
        order = np.argsort(d[i], kind="stable")
        order = order[valid[i, order]][:k]
        idx[i, :len(order)] = order
        correct[i, :len(order)] = pos[i, order]
    return idx, correct

