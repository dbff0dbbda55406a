"""CMC / mAP protocols (reidtrain.metrics) and k-reciprocal re-ranking (reidtrain.rerank)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reidtrain import metrics
from reidtrain.metrics import (EvalResult, average_per_identity, cmc_map_reference, evaluate_cuhk03_classic,
                               evaluate_market, evaluate_single_shot, iter_distance_chunks, pairwise_distance,
                               top_k_gallery)
from reidtrain.rerank import (_top_k_stable, iter_k_reciprocal_rerank_features, k_reciprocal_rerank,
                              k_reciprocal_rerank_features)


def market(d, q_pids, g_pids, q_cams, g_cams, **kw) -> EvalResult:
    return evaluate_market(None, None, q_pids, g_pids, q_cams, g_cams, distmat=np.asarray(d, np.float32), **kw)


def one_query(d_row, g_pids, g_cams, q_pid=1, q_cam=0, **kw) -> EvalResult:
    return market([d_row], [q_pid], g_pids, [q_cam], g_cams, **kw)


def random_case(rng, nq, ng, n_ids=12, n_cams=3, ties=False):
    q_pids = rng.integers(-1, n_ids, nq)
    g_pids = rng.integers(-1, n_ids, ng)
    q_cams, g_cams = rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng)
    d = rng.integers(0, 15, (nq, ng)).astype(np.float32) if ties else rng.random((nq, ng), dtype=np.float32)
    return d, q_pids, g_pids, q_cams, g_cams


def assert_same(a: EvalResult, b: EvalResult) -> None:
    assert np.array_equal(a.cmc, b.cmc)
    assert np.array_equal(a.first_rank, b.first_rank)
    assert a.num_valid_queries == b.num_valid_queries
    np.testing.assert_allclose(a.ap, b.ap, rtol=0, atol=1e-12)
    assert a.mAP == pytest.approx(b.mAP, abs=1e-12)
    np.testing.assert_allclose(a.inp, b.inp, rtol=0, atol=1e-12)
    assert a.mINP == pytest.approx(b.mINP, abs=1e-12)


# ------------------------------------------------------------------------------------- Market protocol

def test_hand_computed_ap_matches_at_ranks_1_and_3_of_5():
    r = one_query([0.1, 0.2, 0.3, 0.4, 0.5], g_pids=[1, 2, 1, 3, 4], g_cams=[1, 1, 1, 1, 1], max_rank=5)
    assert r.mAP == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert r.cmc.tolist() == [1, 1, 1, 1, 1]
    r = one_query([0.1, 0.2, 0.3, 0.4, 0.5], g_pids=[2, 1, 3, 4, 1], g_cams=[1] * 5, max_rank=5)
    assert r.mAP == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert r.cmc.tolist() == [0, 1, 1, 1, 1]
    assert r.first_rank.tolist() == [1]


def test_hand_computed_minp_is_matches_over_rank_of_the_last_match():
    # true matches at ranks 1 and 3 of 5: INP = 2 / 3; at ranks 2 and 5: INP = 2 / 5
    r = one_query([0.1, 0.2, 0.3, 0.4, 0.5], g_pids=[1, 2, 1, 3, 4], g_cams=[1] * 5, max_rank=5)
    assert r.mINP == pytest.approx(2 / 3) and r.inp.tolist() == pytest.approx([2 / 3])
    r = one_query([0.1, 0.2, 0.3, 0.4, 0.5], g_pids=[2, 1, 3, 4, 1], g_cams=[1] * 5, max_rank=5)
    assert r.mINP == pytest.approx(2 / 5)
    # one match at rank 4: INP = 1 / 4 (= AP); all matches first: INP = 1
    r = one_query([0.1, 0.2, 0.3, 0.4], g_pids=[2, 3, 4, 1], g_cams=[1] * 4, max_rank=4)
    assert r.mINP == pytest.approx(0.25) == pytest.approx(r.mAP)
    r = one_query([0.1, 0.2, 0.3, 0.4], g_pids=[1, 1, 1, 2], g_cams=[1] * 4, max_rank=4)
    assert r.mINP == 1.0


def test_minp_ignores_same_camera_matches_and_junk_and_skips_unmatched_queries():
    # gallery 0 (same identity, same camera) and 2 (junk) are not in the list: valid = g1 (match), g3, g4 (match)
    d = [[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1]]
    g_pids, g_cams = [1, 1, -1, 2, 1], [0, 1, 1, 1, 1]
    r = market(d, [1, 9, 2], g_pids, [0, 0, 0], g_cams, max_rank=3)
    assert r.inp[0] == pytest.approx(2 / 3)
    assert np.isnan(r.inp[1])                       # identity 9 has no gallery image: skipped
    assert r.inp[2] == pytest.approx(1 / 2)         # list g4 (pid 1), g3 (pid 2): the one match at rank 2
    assert r.mINP == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert r.summary()["mINP"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)


def test_minp_of_other_protocols():
    rng = np.random.default_rng(4)
    f = rng.standard_normal((40, 8)).astype(np.float32)
    pids, cams = np.repeat(np.arange(10), 4), np.tile([0, 0, 1, 1], 10)
    classic = evaluate_cuhk03_classic(f, f, pids, pids, cams, cams, repeats=2)
    assert classic.mINP is None and classic.summary()["mINP"] is None
    single = evaluate_single_shot(f, f, pids, pids, cams, cams, repeats=3)
    assert single.mINP == single.mAP            # one true match per query: INP = AP = reciprocal rank


def test_perfect_ranking_gives_r1_and_map_of_one():
    rng = np.random.default_rng(0)
    g_pids = np.repeat(np.arange(1, 6), 4)
    g_cams = np.tile([1, 2, 3, 4], 5)
    q_pids, q_cams = np.arange(1, 6), np.zeros(5, int)
    d = np.where(q_pids[:, None] == g_pids[None, :], 0.0, 1.0) + 0.01 * rng.random((5, 20))
    r = market(d, q_pids, g_pids, q_cams, g_cams)
    assert r.rank(1) == 1.0 and r.mAP == 1.0 and r.num_valid_queries == 5


def test_same_identity_same_camera_gallery_images_are_ignored():
    # the closest image is the query's identity seen by the query's own camera: not a match, not a negative
    r = one_query([0.1, 0.2, 0.3], g_pids=[1, 2, 1], g_cams=[0, 1, 1], max_rank=3)
    assert r.first_rank.tolist() == [1]
    assert r.cmc.tolist() == [0, 1, 1]
    assert r.mAP == pytest.approx(0.5)
    # the same identity in another camera is a true match at rank 1
    r = one_query([0.1, 0.2, 0.3], g_pids=[1, 2, 1], g_cams=[2, 1, 1], max_rank=3)
    assert r.first_rank.tolist() == [0] and r.mAP == pytest.approx((1 + 2 / 3) / 2)
    # another identity in the query's camera is an ordinary negative
    r = one_query([0.1, 0.2], g_pids=[5, 1], g_cams=[0, 1])
    assert r.first_rank.tolist() == [1]


def test_distractors_count_as_negatives_and_junk_is_dropped():
    r = one_query([0.1, 0.2], g_pids=[0, 1], g_cams=[1, 1])       # pid 0: distractor
    assert r.first_rank.tolist() == [1] and r.mAP == pytest.approx(0.5)
    r = one_query([0.1, 0.2], g_pids=[-1, 1], g_cams=[1, 1])      # pid -1: junk
    assert r.first_rank.tolist() == [0] and r.mAP == pytest.approx(1.0)
    # junk sharing the query's camera and position changes nothing either
    r = one_query([0.1, 0.2, 0.3, 0.4], g_pids=[-1, 2, -1, 1], g_cams=[0, 1, 1, 1])
    assert r.first_rank.tolist() == [1] and r.mAP == pytest.approx(0.5)


def test_pid_zero_is_an_ordinary_identity_for_queries():
    # MSMT17 numbers identities from 0: a pid-0 query matches pid-0 gallery images in other cameras
    r = one_query([0.1, 0.2], g_pids=[3, 0], g_cams=[1, 1], q_pid=0)
    assert r.first_rank.tolist() == [1]


def test_queries_without_valid_match_are_skipped_and_counted():
    d = [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.5, 0.1, 0.2]]
    # query 1 (pid 2) only has a same-camera image; query 2 (pid 7) has none at all
    r = market(d, [1, 2, 7], [1, 2, 3], [0, 1, 0], [1, 1, 1])
    assert r.num_queries == 3 and r.num_valid_queries == 1 and r.num_skipped_queries == 2
    assert r.first_rank.tolist() == [0, -1, -1]
    assert np.isnan(r.ap[1:]).all() and r.mAP == 1.0 and r.rank(1) == 1.0


def test_ties_are_broken_by_gallery_index():
    # equal distances: the image with the smaller gallery index is ranked first
    r = one_query([0.5, 0.5], g_pids=[2, 1], g_cams=[1, 1])
    assert r.first_rank.tolist() == [1]
    r = one_query([0.5, 0.5], g_pids=[1, 2], g_cams=[1, 1])
    assert r.first_rank.tolist() == [0]
    # -0.0 and +0.0 are equal distances, so again the index decides
    r = one_query([0.0, -0.0], g_pids=[2, 1], g_cams=[1, 1])
    assert r.first_rank.tolist() == [1]
    # a tie among three with the match last, then an earlier closer negative
    r = one_query([0.3, 0.3, 0.1, 0.3], g_pids=[4, 5, 6, 1], g_cams=[1, 1, 1, 1])
    assert r.first_rank.tolist() == [3]
    assert r.first_rank.tolist() == cmc_map_reference([[0.3, 0.3, 0.1, 0.3]], [1], [4, 5, 6, 1], [0],
                                                      [1, 1, 1, 1]).first_rank.tolist()


@pytest.mark.parametrize("dense", [0.0, 2.0], ids=["row-sort path", "candidate-sort path"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "many ties"])
def test_vectorised_equals_reference_loop(monkeypatch, dense, ties):
    monkeypatch.setattr(metrics, "DENSE_CANDIDATES", dense)
    rng = np.random.default_rng(7)
    for _ in range(6):
        case = random_case(rng, int(rng.integers(1, 40)), int(rng.integers(1, 120)), ties=ties)
        got = market(*case, chunk_size=int(rng.integers(1, 9)))
        assert_same(got, cmc_map_reference(*case))


def test_reference_matches_a_textbook_loop_without_tie_rules():
    rng = np.random.default_rng(3)
    d, qp, gp, qc, gc = random_case(rng, 25, 90)
    aps, firsts = [], []
    for i in range(len(qp)):
        order = np.argsort(d[i])
        keep = [j for j in order if gp[j] != -1 and not (gp[j] == qp[i] and gc[j] == qc[i])]
        hits = [k for k, j in enumerate(keep) if gp[j] == qp[i]]
        if hits:
            firsts.append(hits[0])
            aps.append(np.mean([(n + 1) / (k + 1) for n, k in enumerate(hits)]))
    r = market(d, qp, gp, qc, gc)
    assert r.num_valid_queries == len(aps)
    assert r.mAP == pytest.approx(np.mean(aps), abs=1e-12)
    assert r.cmc[0] == pytest.approx(np.mean(np.array(firsts) == 0))


def test_chunked_equals_unchunked_from_features_and_from_blocks():
    rng = np.random.default_rng(1)
    qf, gf = rng.standard_normal((23, 16)), rng.standard_normal((70, 16))
    qp, gp = rng.integers(0, 6, 23), rng.integers(-1, 6, 70)
    qc, gc = rng.integers(0, 3, 23), rng.integers(0, 3, 70)
    full = evaluate_market(qf, gf, qp, gp, qc, gc)
    for chunk in (1, 4, 23, 1000):
        assert_same(evaluate_market(qf, gf, qp, gp, qc, gc, chunk_size=chunk), full)
    d = pairwise_distance(qf, gf)
    assert_same(evaluate_market(None, None, qp, gp, qc, gc, distmat=d), full)
    blocks = [b for _, b in iter_distance_chunks(qf, gf, chunk_size=5)]
    assert_same(evaluate_market(None, None, qp, gp, qc, gc, distmat=iter(blocks)), full)
    assert_same(evaluate_market(None, None, qp, gp, qc, gc, distmat=torch.from_numpy(d)), full)
    assert_same(evaluate_market(torch.from_numpy(qf), torch.from_numpy(gf), torch.from_numpy(qp),
                                torch.from_numpy(gp), torch.from_numpy(qc), torch.from_numpy(gc)), full)


def test_pairwise_distance_definitions():
    rng = np.random.default_rng(2)
    q, g = rng.standard_normal((5, 8)), rng.standard_normal((7, 8))
    diff = q[:, None, :] - g[None, :, :]
    sq = (diff ** 2).sum(-1)
    np.testing.assert_allclose(pairwise_distance(q, g, "sqeuclidean"), sq, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pairwise_distance(q, g, "euclidean"), np.sqrt(sq), rtol=1e-5, atol=1e-5)
    cos = (q @ g.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(g, axis=1)[None, :]
    np.testing.assert_allclose(pairwise_distance(q, g, "cosine"), 1 - cos, rtol=1e-5, atol=1e-5)
    assert pairwise_distance(q, g, chunk_size=2).dtype == np.float32
    np.testing.assert_array_equal(pairwise_distance(q, g, chunk_size=2), pairwise_distance(q, g))


def test_cosine_and_euclidean_rank_normalised_features_alike():
    rng = np.random.default_rng(4)
    qf, gf = rng.standard_normal((30, 32)), rng.standard_normal((80, 32))
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    qp, gp = rng.integers(0, 8, 30), rng.integers(0, 8, 80)
    qc, gc = rng.integers(0, 3, 30), rng.integers(0, 3, 80)
    eu = evaluate_market(qf, gf, qp, gp, qc, gc, metric="euclidean")
    co = evaluate_market(qf, gf, qp, gp, qc, gc, metric="cosine")
    assert np.array_equal(eu.first_rank, co.first_rank)
    np.testing.assert_allclose(eu.ap, co.ap, atol=1e-12)
    assert np.array_equal(np.argsort(pairwise_distance(qf, gf, "cosine"), axis=1, kind="stable"),
                          np.argsort(pairwise_distance(qf, gf, "sqeuclidean"), axis=1, kind="stable"))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="NaN"):
        one_query([np.nan, 0.1], g_pids=[1, 2], g_cams=[1, 1])
    with pytest.raises(ValueError, match="shape"):
        market(np.zeros((2, 3)), [1, 2], [1, 2], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 3)), "manhattan")
    with pytest.raises(ValueError, match="-d"):
        evaluate_market(np.zeros((1, 3)), np.zeros((2, 4)), [1], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="g_camids"):
        market(np.zeros((1, 2)), [1], [1, 2], [0], [1])
    with pytest.raises(ValueError, match="either features"):
        evaluate_market(None, None, [1], [1], [0], [1])


def test_summary_is_in_percent():
    r = one_query([0.1, 0.2, 0.3], g_pids=[2, 1, 1], g_cams=[1, 1, 1], max_rank=3)
    s = r.summary(ranks=(1, 2))
    assert s["R1"] == 0.0 and s["R2"] == 100.0
    assert s["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert r.rank(2) == 1.0
    with pytest.raises(ValueError):
        r.rank(4)


def test_top_k_gallery_skips_junk_and_same_camera_matches():
    d = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]], np.float32)
    idx, ok = top_k_gallery(d, [1], [1, -1, 2, 1, 3], [0], [0, 1, 1, 1, 1], k=4)
    assert idx.tolist() == [[2, 3, 4, -1]]
    assert ok.tolist() == [[False, True, False, False]]


# ------------------------------------------------------------------------------------- CUHK03 classic

def test_cuhk03_classic_single_shot_gallery_equals_market_cmc():
    # with one gallery image per identity there is nothing to sample: classic CMC == Market CMC
    rng = np.random.default_rng(5)
    qf, gf = rng.standard_normal((20, 8)), rng.standard_normal((20, 8))
    ids = np.arange(20)
    classic = evaluate_cuhk03_classic(qf, gf, ids, ids, np.zeros(20, int), np.ones(20, int), repeats=3)
    plain = evaluate_market(qf, gf, ids, ids, np.zeros(20, int), np.ones(20, int))
    np.testing.assert_allclose(classic.cmc, plain.cmc)
    assert classic.mAP is None and classic.summary()["mAP"] is None


def test_cuhk03_classic_samples_one_image_per_identity():
    # identity 1 has a near (0.1) and a far (0.9) image, identity 2 one image at 0.5: the query is first
    # exactly when the near image is drawn, i.e. in about half of the repeats; always within rank 2
    r = evaluate_cuhk03_classic(None, None, [1], [1, 1, 2], [0], [1, 1, 1], repeats=400, seed=3, max_rank=3,
                                distmat=np.array([[0.1, 0.9, 0.5]]))
    assert 0.4 < r.rank(1) < 0.6
    assert r.rank(2) == 1.0
    # same-camera images of the query identity are never drawn
    r = evaluate_cuhk03_classic(None, None, [1], [1, 1, 2], [0], [0, 1, 1], repeats=50, max_rank=3,
                                distmat=np.array([[0.1, 0.9, 0.5]]))
    assert r.rank(1) == 0.0 and r.rank(2) == 1.0


def test_cuhk03_classic_is_deterministic_given_the_seed():
    rng = np.random.default_rng(6)
    qf, gf = rng.standard_normal((30, 8)), rng.standard_normal((90, 8))
    qp, gp = np.repeat(np.arange(10), 3), np.repeat(np.arange(10), 9)
    qc, gc = np.zeros(30, int), np.ones(90, int)
    a = evaluate_cuhk03_classic(qf, gf, qp, gp, qc, gc, seed=11)
    b = evaluate_cuhk03_classic(qf, gf, qp, gp, qc, gc, seed=11, chunk_size=4)
    c = evaluate_cuhk03_classic(qf, gf, qp, gp, qc, gc, seed=12)
    assert np.array_equal(a.cmc, b.cmc)
    assert not np.array_equal(a.cmc, c.cmc)
    assert a.num_valid_queries == 30 and np.all(np.diff(a.cmc) >= 0)
    # one image per identity is drawn: 10 identities -> every query's match is within rank 10, not always rank 9
    assert a.rank(10) == 1.0 and a.rank(9) < 1.0


# ------------------------------------------------------------------------------------- CUHK01

def two_views(num_ids: int, per_view: int = 2):
    """CUHK01-like labels: per identity `per_view` camera-A queries and `per_view` camera-B gallery images."""
    pids = np.repeat(np.arange(1, num_ids + 1), per_view)
    return pids, pids.copy(), np.zeros(len(pids), int), np.ones(len(pids), int)


def single_shot(d, q_pids, g_pids, q_cams, g_cams, **kw) -> EvalResult:
    return evaluate_single_shot(None, None, q_pids, g_pids, q_cams, g_cams, distmat=np.asarray(d, np.float32), **kw)


def test_single_shot_ranks_against_one_gallery_image_per_identity():
    # distances depend on the two identities only, so every draw gives the same ranks: id 1's match is
    # second (behind id 2 only: one id-2 image is in the gallery, not two), id 2's first, id 3's third
    base = np.array([[0.5, 0.1, 0.9], [0.5, 0.1, 0.5], [0.2, 0.3, 0.9]])
    qp, gp, qc, gc = two_views(3)
    d = base[qp[:, None] - 1, gp[None, :] - 1]
    r = single_shot(d, qp, gp, qc, gc, repeats=5, seed=1, max_rank=4)
    np.testing.assert_allclose(r.cmc, [1 / 3, 2 / 3, 1, 1])
    assert r.mAP == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)          # AP = 1 / rank: mean reciprocal rank
    assert (r.num_queries, r.num_valid_queries, r.notes["evaluated_pairs"]) == (3, 3, 15)
    assert r.first_rank is None and r.ap is None
    # multi-shot (every view-A image against every view-B image) sees both id-2 images before id 1's match
    m = market(d, qp, gp, qc, gc, max_rank=4)
    assert list(m.first_rank) == [2, 2, 0, 0, 4, 4]


def exact_single_shot(d, qp, gp, max_rank):
    """Expected single-shot CMC and mAP by enumerating every query draw and every gallery draw (2 per id)."""
    ids = np.unique(qp)
    q_of = [np.flatnonzero(qp == i) for i in ids]
    g_of = [np.flatnonzero(gp == i) for i in ids]
    cmc, rr, n = np.zeros(max_rank), 0.0, 0
    for q_pick in np.ndindex(*(len(x) for x in q_of)):
        for g_pick in np.ndindex(*(len(x) for x in g_of)):
            cols = np.array([g_of[k][j] for k, j in enumerate(g_pick)])
            for k, j in enumerate(q_pick):
                row = d[q_of[k][j], cols]
                rank = int(np.count_nonzero(row < row[k]))  # no ties in a random matrix
                cmc += rank <= np.arange(max_rank)
                rr += 1.0 / (rank + 1)
                n += 1
    return cmc / n, rr / n


def test_single_shot_averages_over_draws_to_the_exact_expectation():
    rng = np.random.default_rng(8)
    qp, gp, qc, gc = two_views(4)
    d = rng.random((8, 8)).astype(np.float32)
    cmc, mrr = exact_single_shot(d, qp, gp, 4)
    r = single_shot(d, qp, gp, qc, gc, repeats=3000, seed=2, max_rank=4)
    np.testing.assert_allclose(r.cmc, cmc, atol=0.02)
    assert r.mAP == pytest.approx(mrr, abs=0.02)
    assert not np.allclose(cmc, market(d, qp, gp, qc, gc, max_rank=4).cmc)   # the draws do change the answer
    # seeded: the same seed gives the same numbers, whatever the chunking or the input form; another seed differs
    qf, gf = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))
    a = evaluate_single_shot(qf, gf, qp, gp, qc, gc, repeats=7, seed=4)
    b = evaluate_single_shot(qf, gf, qp, gp, qc, gc, repeats=7, seed=4, chunk_size=3)
    c = single_shot(pairwise_distance(qf, gf), qp, gp, qc, gc, repeats=7, seed=4)
    e = evaluate_single_shot(qf, gf, qp, gp, qc, gc, repeats=7, seed=5)
    assert np.array_equal(a.cmc, b.cmc) and np.array_equal(a.cmc, c.cmc) and a.mAP == b.mAP == c.mAP
    assert not (np.array_equal(a.cmc, e.cmc) and a.mAP == e.mAP)
    assert np.allclose(a.cmc * 4 * 7, np.round(a.cmc * 4 * 7))     # hits over 4 identities x 7 repeats


def test_single_shot_skips_identities_without_a_cross_camera_match():
    # id 3 has queries but no gallery image; id 2's only gallery image is from the query camera
    d = np.array([[0.1, 0.4], [0.2, 0.3], [0.5, 0.6], [0.7, 0.8]])
    r = single_shot(d, [1, 1, 2, 3], [1, 2], [0, 0, 0, 0], [1, 0], repeats=4, max_rank=2)
    assert (r.num_queries, r.num_valid_queries, r.notes["evaluated_pairs"]) == (3, 1, 4)
    np.testing.assert_allclose(r.cmc, [1.0, 1.0])       # id 1 vs {its image, id 2's image}: first
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        single_shot(d, [1, 1, 2, 3], [1, 2], [0, 0, 0, 0], [1, 0], repeats=0)


def test_multi_query_averages_the_features_of_each_identity():
    # 1-D features: id 1's queries (0 and 4) are each nearer an id-2 image, their mean (2) is on id 1's image
    qf = np.array([[0.0], [4.0], [-0.4], [-0.6]])
    gf = np.array([[2.0], [-0.5], [4.6]])
    qp, gp, qc, gc = np.array([1, 1, 2, 2]), np.array([1, 2, 2]), np.zeros(4, int), np.ones(3, int)
    shot = evaluate_market(qf, gf, qp, gp, qc, gc, max_rank=3)
    assert shot.rank(1) == 0.5 and list(shot.first_rank) == [1, 1, 0, 0]
    mf, mp, mc = average_per_identity(qf, qp, qc)
    np.testing.assert_allclose(mf, [[2.0], [-0.5]])
    assert list(mp) == [1, 2] and list(mc) == [0, 0]
    multi = evaluate_market(mf, gf, mp, gp, mc, gc, max_rank=3)
    assert multi.rank(1) == 1.0
    assert multi.mAP == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)     # id 2's second image is third


def test_evaluate_chooses_the_cuhk01_protocols(tmp_path):
    from reidtrain.config import EvalConfig
    from reidtrain.evaluate import Features, choose_protocol, compute_result

    assert choose_protocol("auto", tmp_path, "cuhk01", 486) == "cuhk01-single-shot"
    assert choose_protocol("cuhk01-multi-shot", tmp_path, "cuhk01", 486) == "cuhk01-multi-shot"
    assert choose_protocol("auto", tmp_path, "market", 486) == "market"
    qf = np.array([[0.0], [4.0], [-0.4], [-0.6]], np.float32)
    gf = np.array([[2.0], [-0.5], [4.6]], np.float32)
    q = Features("query", ["a", "b", "c", "d"], np.array([1, 1, 2, 2]), np.zeros(4, np.int64), qf)
    g = Features("gallery", ["e", "f", "h"], np.array([1, 2, 2]), np.ones(3, np.int64), gf)
    results = {p: compute_result(EvalConfig(protocol=p, repeats=2000), p, q, g)
               for p in ("cuhk01-single-shot", "cuhk01-multi-shot", "cuhk01-multi-query")}
    assert {p: r.protocol for p, r in results.items()} == {p: p for p in results}
    assert results["cuhk01-multi-shot"].rank(1) == 0.5 and results["cuhk01-multi-shot"].num_queries == 4
    assert results["cuhk01-multi-query"].rank(1) == 1.0 and results["cuhk01-multi-query"].num_queries == 2
    single = results["cuhk01-single-shot"]
    assert single.num_queries == 2 and single.notes["repeats"] == 2000
    # each identity is first in exactly half of the 4 (query, id-2 gallery image) draws, second otherwise
    cmc, mrr = exact_single_shot(pairwise_distance(qf, gf), q.pids, g.pids, 2)
    np.testing.assert_allclose(cmc, [0.5, 1.0])
    assert single.rank(1) == pytest.approx(0.5, abs=0.03) and single.rank(2) == 1.0
    assert single.mAP == pytest.approx(mrr, abs=0.03) and mrr == 0.75


# ------------------------------------------------------------------------------------- re-ranking

def textbook_rerank(q_g, q_q, g_g, k1, k2, lam):
    """Dense, loop-by-loop k-reciprocal re-ranking written straight from Zhong et al. (2017)."""
    nq = q_g.shape[0]
    d = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    n = len(d)
    d = d / d.max(axis=1, keepdims=True)
    rank = np.argsort(d, axis=1, kind="stable")

    def recip(i, k):
        return np.array([j for j in rank[i, :k + 1] if i in rank[j, :k + 1]], dtype=int)

    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        expansion = list(r)
        for c in r:
            rc = recip(c, int(np.around(k1 / 2)))
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expansion.extend(rc)
        e = np.unique(expansion)
        w = np.exp(-d[i, e])
        v[i, e] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    shared = np.stack([np.minimum(v[i][None, :], v).sum(axis=1) for i in range(nq)])
    jac = 1 - shared / (2 - shared)
    return (jac * (1 - lam) + d[:nq] * lam)[:, nq:]


def clustered(rng, n_ids, per_id, dim=16, noise=0.8):
    centres = rng.standard_normal((n_ids, dim))
    pids = np.repeat(np.arange(n_ids), per_id)
    return (centres[pids] + noise * rng.standard_normal((len(pids), dim))).astype(np.float32), pids


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 3, 0.5), (6, 1, 0.0)])
def test_rerank_equals_textbook_version(k1, k2, lam):
    rng = np.random.default_rng(k1)
    qf, gf = rng.standard_normal((9, 12)).astype(np.float32), rng.standard_normal((35, 12)).astype(np.float32)
    sq = lambda a, b: pairwise_distance(a, b, "sqeuclidean")  # noqa: E731
    got = k_reciprocal_rerank(sq(qf, gf), sq(qf, qf), sq(gf, gf), k1, k2, lam)
    assert got.shape == (9, 35) and got.dtype == np.float32
    np.testing.assert_allclose(got, textbook_rerank(sq(qf, gf), sq(qf, qf), sq(gf, gf), k1, k2, lam), atol=1e-6)
    from_features = k_reciprocal_rerank_features(qf, gf, k1, k2, lam, chunk_size=4)
    np.testing.assert_allclose(from_features, got, atol=1e-5)


def test_rerank_improves_retrieval_on_clustered_identities():
    rng = np.random.default_rng(0)
    qf, qp = clustered(rng, 15, 2)
    gf, gp = clustered(rng, 15, 8)
    qc, gc = np.zeros(len(qp), int), np.ones(len(gp), int)
    q_g = pairwise_distance(qf, gf, "sqeuclidean")
    plain = evaluate_market(None, None, qp, gp, qc, gc, distmat=q_g)
    rr = k_reciprocal_rerank(q_g, pairwise_distance(qf, qf, "sqeuclidean"), pairwise_distance(gf, gf, "sqeuclidean"),
                             k1=6, k2=3)
    reranked = evaluate_market(None, None, qp, gp, qc, gc, distmat=rr)
    assert not np.array_equal(np.argsort(rr, axis=1), np.argsort(q_g, axis=1))
    assert reranked.mAP > plain.mAP + 0.02
    # blocks straight into the evaluator give the same numbers without a Q x G matrix
    blocks = iter_k_reciprocal_rerank_features(qf, gf, k1=6, k2=3)
    assert evaluate_market(None, None, qp, gp, qc, gc, distmat=blocks).mAP == pytest.approx(reranked.mAP, abs=1e-6)


def test_torchreid_convention_squares_the_given_distances():
    rng = np.random.default_rng(5)
    qf, gf = rng.standard_normal((8, 10)).astype(np.float32), rng.standard_normal((30, 10)).astype(np.float32)
    eu = lambda a, b: pairwise_distance(a, b, "euclidean")  # noqa: E731
    sq = lambda a, b: pairwise_distance(a, b, "sqeuclidean")  # noqa: E731
    blocks = (sq(qf, gf), sq(qf, qf), sq(gf, gf))
    got = k_reciprocal_rerank(*blocks, k1=6, k2=3, convention="torchreid")
    # torchreid's re_ranking squares what it is given: its result on squared distances ranks on d^4
    want = textbook_rerank(*(b.astype(np.float64) ** 2 for b in blocks), 6, 3, 0.3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - k_reciprocal_rerank(*blocks, k1=6, k2=3)).max() > 1e-3   # not the Zhong convention
    # fed true Euclidean distances it is Zhong's convention on squared ones
    zhong = k_reciprocal_rerank(*blocks, k1=6, k2=3)
    np.testing.assert_allclose(k_reciprocal_rerank(eu(qf, gf), eu(qf, qf), eu(gf, gf), k1=6, k2=3,
                                                   convention="torchreid"), zhong, atol=1e-5)
    # the features route gives the same numbers
    np.testing.assert_allclose(k_reciprocal_rerank_features(qf, gf, 6, 3, metric="sqeuclidean", chunk_size=5,
                                                            convention="torchreid"), got, atol=1e-5)


def test_torchreid_convention_reads_square_blocks_column_wise():
    # torchreid normalises per column and transposes: with non-symmetric blocks, row i uses column i
    rng = np.random.default_rng(6)
    q_g = rng.random((5, 12)).astype(np.float32)
    q_q = rng.random((5, 5)).astype(np.float32)
    g_g = rng.random((12, 12)).astype(np.float32)
    got = k_reciprocal_rerank(q_g, q_q, g_g, k1=4, k2=2, convention="torchreid")
    np.testing.assert_allclose(got, k_reciprocal_rerank(q_g ** 2, (q_q ** 2).T, (g_g ** 2).T, k1=4, k2=2), atol=1e-6)
    with pytest.raises(ValueError, match="convention"):
        k_reciprocal_rerank(q_g, q_q, g_g, convention="fastreid")


def test_evaluate_passes_the_rerank_convention_through():
    from reidtrain.config import EvalConfig
    from reidtrain.evaluate import Features, compute_result

    rng = np.random.default_rng(8)
    qf, qp = clustered(rng, 6, 2)
    gf, gp = clustered(rng, 6, 5)
    q = Features("query", [str(i) for i in range(len(qp))], qp, np.zeros(len(qp), np.int64), qf)
    g = Features("gallery", [str(i) for i in range(len(gp))], gp, np.ones(len(gp), np.int64), gf)
    for convention in ("zhong", "torchreid"):
        cfg = EvalConfig(rerank=True, rerank_k1=5, rerank_k2=2, rerank_convention=convention, protocol="market")
        want = evaluate_market(None, None, qp, gp, q.camids, g.camids, distmat=k_reciprocal_rerank_features(
            qf, gf, 5, 2, convention=convention))
        got = compute_result(cfg, "market", q, g)
        assert got.mAP == want.mAP and got.mINP == want.mINP


def test_rerank_rejects_bad_parameters_and_shapes():
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal_rerank(z, np.zeros((2, 2)), np.zeros((3, 3)), k1=0)
    with pytest.raises(ValueError, match="lambda"):
        k_reciprocal_rerank(z, np.zeros((2, 2)), np.zeros((3, 3)), lambda_value=2.0)
    with pytest.raises(ValueError, match="g_g_dist"):
        k_reciprocal_rerank(z, np.zeros((2, 2)), np.zeros((2, 2)))


def test_top_k_stable_matches_stable_argsort_with_ties():
    rng = np.random.default_rng(9)
    d = rng.integers(0, 5, (40, 30)).astype(np.float32)
    for k in (1, 3, 7, 30, 40):
        np.testing.assert_array_equal(_top_k_stable(d, k), np.argsort(d, axis=1, kind="stable")[:, :k])
