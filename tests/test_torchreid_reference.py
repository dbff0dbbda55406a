"""Our metrics and re-ranking against torchreid's own code (rank.py, rerank.py of the torchreid 0.2.5 sdist),
loaded from its files by benchmarks.torchreid_ref. Skipped unless the sdist is already at hand ($TORCHREID_SDIST or
the download cache of `python -m benchmarks.torchreid_ref`); tests never download."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.torchreid_ref import load_reference, reason
from reidtrain.metrics import evaluate_market, pairwise_distance
from reidtrain.rerank import k_reciprocal_rerank, k_reciprocal_rerank_features

REF = load_reference(download=False)
pytestmark = pytest.mark.skipif(REF is None, reason=f"torchreid sdist not available: {reason()}")


def case(seed: int, nq: int = 40, ng: int = 300, dim: int = 16):
    rng = np.random.default_rng(seed)
    ids = np.arange(1, 21)
    centres = rng.standard_normal((len(ids), dim)).astype(np.float32)
    q_pids, g_pids = rng.choice(ids, nq), np.r_[rng.choice(ids, ng - 20), np.zeros(20, int)]
    qf = centres[q_pids - 1] + 0.7 * rng.standard_normal((nq, dim)).astype(np.float32)
    gf = np.where(g_pids[:, None] > 0, centres[np.maximum(g_pids, 1) - 1], 0) + \
        0.7 * rng.standard_normal((ng, dim)).astype(np.float32)
    return qf.astype(np.float32), gf.astype(np.float32), q_pids, g_pids, rng.integers(0, 3, nq), rng.integers(0, 3, ng)


def test_loaded_from_files_with_the_python_ranker():
    assert REF.cython is False
    assert "Python fallback" in REF.describe()


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_market_equals_torchreid_eval_market1501(seed):
    qf, gf, qp, gp, qc, gc = case(seed)
    d = pairwise_distance(qf, gf)
    cmc, m_ap = REF.rank.eval_market1501(d, qp, gp, qc, gc, 50)
    ours = evaluate_market(None, None, qp, gp, qc, gc, distmat=d, max_rank=50)
    np.testing.assert_allclose(ours.cmc, cmc, atol=1e-6)
    assert ours.mAP == pytest.approx(m_ap, abs=1e-9)


def test_torchreid_convention_reproduces_re_ranking():
    qf, gf, *_ = case(2, nq=30, ng=150)
    sq = lambda a, b: pairwise_distance(a, b, "sqeuclidean")  # noqa: E731
    blocks = (sq(qf, gf), sq(qf, qf), sq(gf, gf))
    want = REF.rerank.re_ranking(*blocks, k1=20, k2=6, lambda_value=0.3)
    np.testing.assert_allclose(k_reciprocal_rerank(*blocks, convention="torchreid"), want, atol=1e-5)
    np.testing.assert_allclose(k_reciprocal_rerank_features(qf, gf, convention="torchreid"), want, atol=1e-5)
    # the default (Zhong et al.'s convention) is torchreid's code fed true Euclidean distances
    eu = lambda a, b: pairwise_distance(a, b, "euclidean")  # noqa: E731
    np.testing.assert_allclose(k_reciprocal_rerank(*blocks),
                               REF.rerank.re_ranking(eu(qf, gf), eu(qf, qf), eu(gf, gf)), atol=1e-5)
