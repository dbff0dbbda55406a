"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017). The paper we reproduce reports results WITHOUT re-ranking (Sec. 4.1); this is an
optional extra for `evaluate --rerank`.

Algorithm (all N = Q + G images, queries first; d = squared Euclidean distance as in Zhong et al.):
  1. d is divided by each row's maximum (the reference code does this per column on the symmetric matrix).
  2. R(i, k): the k-reciprocal neighbours of i, i.e. those j among i's k+1 nearest whose own k+1 nearest
     contain i. R*(i) = R(i, k1) plus R(c, round(k1/2)) of each c in R(i, k1) that shares more than 2/3 of
     its elements with R(i, k1).
  3. V[i, j] = exp(-d[i, j]) over j in R*(i), normalised to sum 1 (a sparse row); local query expansion
     replaces V[i] by the mean of V over i's k2 nearest neighbours.
  4. Jaccard distance d_J(q, g) = 1 - sum_k min(V[q,k], V[g,k]) / (2 - sum_k min(V[q,k], V[g,k])).
  5. final = (1 - lambda) * d_J + lambda * d (query rows, gallery columns).
Nearest-neighbour order is the stable order by (distance, index), as in `reidtrain.metrics`.

Distance convention (`convention=`)
  "zhong" (default): d is used as given; pass squared Euclidean distances (`metric="sqeuclidean"`), as Zhong et
      al. do, and that is what the algorithm above ranks on.
  "torchreid": reproduces torchreid's `re_ranking` (torchreid/reid/utils/rerank.py, copied by most ReID
      toolkits) from the distance matrices torchreid itself feeds it. That code squares whatever it is given
      (`np.power(original_dist, 2)`), and torchreid's engine gives it squared Euclidean distances, so inside
      torchreid the ranking runs on ||q - g||^4 (the Jaccard part hardly changes, the lambda part does). With
      convention="torchreid" the given distances are squared first, and the query-query and gallery-gallery
      blocks are read column-wise as torchreid does (it transposes after normalising; the same for symmetric
      blocks). So `k_reciprocal_rerank(D_qg, D_qq, D_gg, convention="torchreid")` equals
      `re_ranking(D_qg, D_qq, D_gg)` for any D (benchmarks/bench_rerank.py checks <= 1e-5 at Market size),
      and `k_reciprocal_rerank_features(qf, gf, metric="sqeuclidean", convention="torchreid")` gives the numbers
      of torchreid's `rerank=True` with dist_metric "euclidean". Zhong et al.'s own convention is "zhong" with
      squared distances, or equivalently "torchreid" fed true (not squared) Euclidean distances.

Memory: the textbook implementation holds several dense N x N matrices (O((Q+G)^2); MSMT17 would need
~35 GB each). Here V is sparse (about N * k1 * k2 entries) and only the k1+1 nearest neighbours of every
image are kept, so besides the inputs the cost is O(N * k1 * k2) plus one chunk of rows at a time.
`k_reciprocal_rerank` takes the three distance blocks (its inputs are O((Q+G)^2) already);
`k_reciprocal_rerank_features` computes distance rows from features chunk by chunk, and
`iter_k_reciprocal_rerank_features` also yields the (Q, G) result in row blocks, which
`evaluate_market(distmat=...)` accepts, so nothing of size Q x G is ever held at once.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .metrics import METRICS, _auto_chunk, _DistanceRows

_ROW_CHUNK = 1024              # rows per step of the neighbourhood computations
_PAIR_BUDGET = 500_000         # sparse products per Jaccard step (about 100 bytes of scratch each: ~50 MB)
_CHUNK_BYTES = 64 * 2**20      # scratch memory of one chunk of distance rows (about 30 bytes per entry)
CONVENTIONS: tuple[str, ...] = ("zhong", "torchreid")


class _MatrixSource:
    """All-vs-all distances assembled from the query-gallery, query-query and gallery-gallery blocks."""

    def __init__(self, q_g, q_q, g_g, transpose_square_blocks: bool = False) -> None:
        self.q_g, self.q_q, self.g_g = (np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x,
                                                   dtype=np.float32) for x in (q_g, q_q, g_g))
        if transpose_square_blocks:       # torchreid reads the full matrix column-wise
            self.q_q, self.g_g = self.q_q.T, self.g_g.T
        nq, ng = self.q_g.shape if self.q_g.ndim == 2 else (-1, -1)
        for name, a, shape in (("q_g_dist", self.q_g, (nq, ng)), ("q_q_dist", self.q_q, (nq, nq)),
                               ("g_g_dist", self.g_g, (ng, ng))):
            if a.ndim != 2 or a.shape != shape:
                raise ValueError(f"{name}: expected shape {shape} (queries {nq}, gallery {ng}), got {a.shape}")
            if np.isnan(a).any():
                raise ValueError(f"{name}: contains NaN")
        self.nq, self.ng = nq, ng

    def rows(self, start: int, stop: int) -> np.ndarray:
        nq = self.nq
        parts = []
        if start < nq:
            e = min(stop, nq)
            parts.append(np.hstack([self.q_q[start:e], self.q_g[start:e]]))
        if stop > nq:
            s = max(start, nq) - nq
            parts.append(np.hstack([self.q_g[:, s:stop - nq].T, self.g_g[s:stop - nq]]))
        return np.vstack(parts)

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        nq = self.nq
        out = np.empty(len(i), dtype=np.float32)
        qi, qj = i < nq, j < nq
        for mi, mj, block, oi, oj in ((qi, qj, self.q_q, 0, 0), (qi, ~qj, self.q_g, 0, nq),
                                      (~qi, qj, self.q_g.T, nq, 0), (~qi, ~qj, self.g_g, nq, nq)):
            m = mi & mj
            out[m] = block[i[m] - oi, j[m] - oj]
        return out

    def query_gallery(self, start: int, stop: int) -> np.ndarray:
        return self.q_g[start:stop]


class _FeatureSource:
    """All-vs-all distances computed from features, a chunk of rows at a time."""

    def __init__(self, qf, gf, metric: str) -> None:
        q = torch.as_tensor(qf).detach().float().cpu()
        g = torch.as_tensor(gf).detach().float().cpu()
        if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
            raise ValueError(f"features must be (Q, D) and (G, D) with the same D, got {tuple(q.shape)}, "
                             f"{tuple(g.shape)}")
        self.nq, self.ng = q.shape[0], g.shape[0]
        every = torch.cat([q, g])                  # one copy of the features serves as rows and columns
        self.dist = _DistanceRows(every, every, metric)
        self.metric = metric

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.dist.rows(start, stop)

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        out = np.empty(len(i), dtype=np.float32)
        f = self.dist.q  # normalised already for cosine
        norms = None if self.metric == "cosine" else self.dist.q2[:, 0]   # the squared norms _DistanceRows keeps
        step = 4096                   # pairs per step: two (step, D) gathers and their product, ~36 MB at 768-d
        with torch.no_grad():
            for s in range(0, len(i), step):
                ii, jj = torch.from_numpy(i[s:s + step]), torch.from_numpy(j[s:s + step])
                a, b = f[ii], f[jj]
                dot = a.mul_(b).sum(1)
                del a, b
                if norms is None:
                    d = 1.0 - dot
                else:
                    d = (norms[ii] + norms[jj] - 2.0 * dot).clamp_min(0.0)
                    if self.metric == "euclidean":
                        d = d.sqrt()
                out[s:s + step] = d.numpy()
        return out

    def query_gallery(self, start: int, stop: int) -> np.ndarray:
        return self.rows(start, stop)[:, self.nq:]


class _Squared:
    """A distance source whose distances are the squares of another's (torchreid's `np.power(d, 2)`)."""

    def __init__(self, source) -> None:
        self.source, self.nq, self.ng = source, source.nq, source.ng

    def rows(self, start: int, stop: int) -> np.ndarray:
        d = self.source.rows(start, stop)
        return np.multiply(d, d, out=d)

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        d = self.source.pairs(i, j)
        return d * d

    def query_gallery(self, start: int, stop: int) -> np.ndarray:
        d = self.source.query_gallery(start, stop)
        return d * d


def _convention_source(source, convention: str):
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    return _Squared(source) if convention == "torchreid" else source


def _top_k_stable(d: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries per row, ordered by (value, index), like a stable argsort[:, :k]."""
    n, m = d.shape
    if k >= m:
        return np.argsort(d, axis=1, kind="stable")
    # the k-th smallest value per row (torch.topk keeps only k entries per row, unlike an (n, m) argpartition)
    kth = torch.topk(torch.from_numpy(d), k, dim=1, largest=False, sorted=False).values.max(dim=1).values
    kth = kth.numpy()[:, None]
    less = d < kth
    equal = d == kth
    room = k - np.count_nonzero(less, axis=1)
    take = less | equal
    crowded = np.flatnonzero(np.count_nonzero(equal, axis=1) > room)   # more ties at the k-th value than room
    if len(crowded):
        take[crowded] = less[crowded] | (equal[crowded] & (np.cumsum(equal[crowded], axis=1) <= room[crowded, None]))
    cols = np.nonzero(take)[1].reshape(n, k)          # ascending index within each row
    vals = np.take_along_axis(d, cols, axis=1)
    return np.take_along_axis(cols, np.argsort(vals, axis=1, kind="stable"), axis=1)


def _reciprocal(rank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(forward (N, k+1), mask): forward[i, a] is k-reciprocal to i where mask[i, a]."""
    fwd = rank[:, :k + 1]
    mask = np.empty(fwd.shape, dtype=bool)
    for s in range(0, len(fwd), _ROW_CHUNK):
        e = min(len(fwd), s + _ROW_CHUNK)
        back = rank[fwd[s:e], :k + 1]
        mask[s:e] = (back == np.arange(s, e)[:, None, None]).any(axis=2)
    return fwd, mask


def _encode(source, n_all: int, k1: int, k2: int, chunk_rows: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse k-reciprocal feature matrix V (after local query expansion) and each row's maximum distance."""
    keep = max(k1 + 1, k2)
    rank = np.empty((n_all, min(keep, n_all)), dtype=np.int64)
    row_max = np.empty(n_all, dtype=np.float32)
    for s in range(0, n_all, chunk_rows):
        e = min(n_all, s + chunk_rows)
        d = source.rows(s, e)
        row_max[s:e] = d.max(axis=1)
        rank[s:e] = _top_k_stable(d, min(keep, n_all))
    row_max[row_max <= 0] = 1.0   # all-zero rows stay zero instead of NaN
    half = int(np.around(k1 / 2.0))
    kr, kr_ok = _reciprocal(rank, k1)
    hr, hr_ok = _reciprocal(rank, half)
    rows_out, cols_out = [], []
    for s in range(0, n_all, _ROW_CHUNK):
        e = min(n_all, s + _ROW_CHUNK)
        fwd, ok = kr[s:e], kr_ok[s:e]
        cand_sets, cand_ok = hr[fwd], hr_ok[fwd] & ok[:, :, None]          # (n, A, B)
        member = ((cand_sets[..., None] == fwd[:, None, None, :]) & ok[:, None, None, :]).any(axis=-1)
        shared = np.count_nonzero(member & cand_ok, axis=-1)               # |R(c, k1/2) & R(i, k1)|
        size = np.count_nonzero(cand_ok, axis=-1)
        accept = ok & (shared > 2.0 / 3.0 * size)
        idx = np.concatenate([np.where(ok, fwd, -1),
                              np.where(cand_ok & accept[:, :, None], cand_sets, -1).reshape(e - s, -1)], axis=1)
        idx.sort(axis=1)
        first = np.ones(idx.shape, dtype=bool)
        first[:, 1:] = idx[:, 1:] != idx[:, :-1]
        r, c = np.nonzero(first & (idx >= 0))
        rows_out.append(r + s)
        cols_out.append(idx[r, c])
    i = np.concatenate(rows_out)
    j = np.concatenate(cols_out)
    w = np.exp(-(source.pairs(i, j) / row_max[i]).astype(np.float64))
    w /= np.bincount(i, weights=w, minlength=n_all)[i]
    v = sp.csr_matrix((w, (i, j)), shape=(n_all, n_all))
    if k2 != 1:
        qe = sp.csr_matrix((np.full(n_all * k2, 1.0 / k2), (np.repeat(np.arange(n_all), k2), rank[:, :k2].ravel())),
                           shape=(n_all, n_all))
        v = (qe @ v).tocsr()
    return v, row_max


def _jaccard_blocks(vq: sp.csr_matrix, vg: sp.csc_matrix) -> Iterator[tuple[int, int, np.ndarray]]:
    """Jaccard distances of the query rows vq of V to its gallery rows vg, in row blocks of bounded work."""
    nq, ng = vq.shape[0], vg.shape[0]
    col_nnz = np.diff(vg.indptr)
    work = np.bincount(np.repeat(np.arange(nq), np.diff(vq.indptr)), weights=col_nnz[vq.indices], minlength=nq)
    start = 0
    while start < nq:
        stop, total = start + 1, work[start]
        while stop < nq and total + work[stop] <= _PAIR_BUDGET and (stop - start + 1) * ng <= _PAIR_BUDGET:
            total += work[stop]
            stop += 1
        lo_e, hi_e = vq.indptr[start], vq.indptr[stop]
        e_row = np.repeat(np.arange(stop - start), np.diff(vq.indptr[start:stop + 1]))
        e_col, e_val = vq.indices[lo_e:hi_e], vq.data[lo_e:hi_e]
        lens = col_nnz[e_col]
        rep = np.repeat(np.arange(len(e_col)), lens)
        at = vg.indptr[e_col][rep] + np.arange(len(rep)) - np.repeat(np.cumsum(lens) - lens, lens)
        shared = np.minimum(e_val[rep], vg.data[at])
        tmin = np.bincount(e_row[rep] * ng + vg.indices[at], weights=shared, minlength=(stop - start) * ng)
        tmin = tmin.reshape(stop - start, ng)
        yield start, stop, 1.0 - tmin / (2.0 - tmin)
        start = stop


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _rerank_blocks(source, k1: int, k2: int, lambda_value: float,
                   chunk_size: int | None) -> Iterator[tuple[int, np.ndarray]]:
    _check_params(k1, k2, lambda_value)
    nq, ng = source.nq, source.ng
    n_all = nq + ng
    rows = chunk_size if chunk_size is not None else max(1, _CHUNK_BYTES // (30 * max(1, n_all)))
    v, row_max = _encode(source, n_all, k1, k2, _auto_chunk(n_all, rows))
    vq, vg = v[:nq].tocsr(), v[nq:].tocsc()
    del v                      # the two halves are all the Jaccard steps need: V is not held beside them
    for start, stop, jac in _jaccard_blocks(vq, vg):
        orig = source.query_gallery(start, stop) / row_max[start:stop, None]
        yield start, (jac * (1.0 - lambda_value) + orig * lambda_value).astype(np.float32)


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, convention: str = "zhong") -> np.ndarray:
    """Re-ranked (Q, G) float32 distances from the query-gallery, query-query and gallery-gallery distances.

    convention "zhong": pass squared Euclidean distances (`pairwise_distance(..., metric="sqeuclidean")`) to
    follow Zhong et al.; "torchreid": the result of torchreid's `re_ranking` on the same three matrices (it
    squares them; module docstring). The blocks must come from one symmetric all-vs-all distance.
    k1, k2, lambda_value: the paper's defaults.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    source = _MatrixSource(q_g_dist, q_q_dist, g_g_dist, transpose_square_blocks=convention == "torchreid")
    out = np.empty((source.nq, source.ng), dtype=np.float32)
    for start, block in _rerank_blocks(_convention_source(source, convention), k1, k2, lambda_value, None):
        out[start:start + len(block)] = block
    return out


def iter_k_reciprocal_rerank_features(qf, gf, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                                      metric: str = "sqeuclidean", chunk_size: int | None = None,
                                      convention: str = "zhong") -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first_query_row, re-ranked float32 block) from features, never holding a Q x G matrix.

    convention "torchreid" with metric "sqeuclidean": torchreid's numbers (module docstring)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    source = _convention_source(_FeatureSource(qf, gf, metric), convention)
    yield from _rerank_blocks(source, k1, k2, lambda_value, chunk_size)


def k_reciprocal_rerank_features(qf, gf, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                                 metric: str = "sqeuclidean", chunk_size: int | None = None,
                                 convention: str = "zhong") -> np.ndarray:
    """Re-ranked (Q, G) float32 distances computed from features (distance rows made chunk by chunk)."""
    out = np.empty((len(qf), len(gf)), dtype=np.float32)
    for start, block in iter_k_reciprocal_rerank_features(qf, gf, k1, k2, lambda_value, metric, chunk_size,
                                                          convention):
        out[start:start + len(block)] = block
    return out
