"""Metrics against hand-worked cases (protocols.md) and a plain per-user reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from trainer import metrics
from trainer.metrics import (
    coverage_at_k,
    hitrate_at_k,
    mae,
    mrr,
    ndcg_at_k,
    precision_at_k,
    ranking_report,
    recall_at_k,
    rmse,
)

N_ITEMS = 10


def targets_of(*rows: list[int], n_items: int = N_ITEMS) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items), dtype=np.float32)
    for u, items in enumerate(rows):
        dense[u, items] = 1.0
    return sp.csr_matrix(dense)


def test_worked_example_from_protocols_md():
    a, b, c, d, e, x = range(6)
    ranked = np.array([[a, b, c, d, e]])
    targets = targets_of([b, e, x])
    assert precision_at_k(ranked, targets, 5)[0] == pytest.approx(0.4)
    assert recall_at_k(ranked, targets, 5)[0] == pytest.approx(2 / 3)
    dcg, idcg = 1 / math.log2(3) + 1 / math.log2(6), 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert dcg == pytest.approx(1.01778, abs=1e-5) and idcg == pytest.approx(2.13093, abs=1e-5)
    assert ndcg_at_k(ranked, targets, 5)[0] == pytest.approx(0.47762, abs=1e-5)
    assert hitrate_at_k(ranked, targets, 5)[0] == 1.0
    assert mrr(ranked, targets)[0] == pytest.approx(0.5)


def test_fewer_targets_than_k_normalises_by_the_target_count():
    ranked = np.array([[1, 0, 2, 3, 4]])
    targets = targets_of([0])
    assert recall_at_k(ranked, targets, 5)[0] == 1.0  # 1 / min(5, 1)
    assert precision_at_k(ranked, targets, 5)[0] == pytest.approx(0.2)
    assert ndcg_at_k(ranked, targets, 5)[0] == pytest.approx(1 / math.log2(3))
    assert recall_at_k(ranked, targets, 1)[0] == 0.0


def test_no_hits_scores_zero():
    ranked = np.array([[5, 6, 7]])
    targets = targets_of([0, 1])
    for metric in (precision_at_k, recall_at_k, ndcg_at_k, hitrate_at_k):
        assert metric(ranked, targets, 3)[0] == 0.0
    assert mrr(ranked, targets)[0] == 0.0


def test_perfect_lists_score_one():
    targets = targets_of([3, 1, 4], [0, 1, 2, 3, 4, 5, 6])
    ranked = np.array([[4, 1, 3, 0, 2], [6, 5, 4, 3, 2]])  # user 1 has more targets than k
    np.testing.assert_allclose(ndcg_at_k(ranked, targets, 5), [1.0, 1.0])
    np.testing.assert_allclose(recall_at_k(ranked, targets, 5), [1.0, 1.0])
    np.testing.assert_allclose(recall_at_k(ranked, targets, 2), [1.0, 1.0])
    np.testing.assert_allclose(mrr(ranked, targets), [1.0, 1.0])
    np.testing.assert_allclose(precision_at_k(ranked, targets, 5), [0.6, 1.0])


def test_padding_is_never_a_hit_and_still_counts_in_k():
    ranked = np.array([[2, -1, -1], [-1, -1, -1]])
    targets = targets_of([2, 9], [9])
    np.testing.assert_allclose(precision_at_k(ranked, targets, 3), [1 / 3, 0.0])
    np.testing.assert_allclose(recall_at_k(ranked, targets, 3), [0.5, 0.0])
    assert coverage_at_k(ranked, 3, N_ITEMS) == pytest.approx(0.1)


def test_mrr_uses_the_first_hit_and_an_optional_cut():
    ranked = np.array([[7, 8, 1, 2], [0, 9, 8, 3], [5, 6, 4, 3]])
    targets = targets_of([1, 2], [0], [3])
    np.testing.assert_allclose(mrr(ranked, targets), [1 / 3, 1.0, 1 / 4])
    np.testing.assert_allclose(mrr(ranked, targets, k=3), [1 / 3, 1.0, 0.0])


def test_coverage_counts_distinct_items_in_the_first_k():
    ranked = np.array([[0, 1, 5], [1, 2, 6]])
    assert coverage_at_k(ranked, 2, N_ITEMS) == pytest.approx(0.3)
    assert coverage_at_k(ranked, 1, N_ITEMS) == pytest.approx(0.2)
    assert coverage_at_k(ranked, 3, N_ITEMS) == pytest.approx(0.5)


def test_users_without_targets_are_nan_and_left_out_of_the_report():
    ranked = np.array([[0, 1], [0, 1]])
    targets = targets_of([1], [])
    assert np.isnan(recall_at_k(ranked, targets, 2)[1]) and np.isnan(precision_at_k(ranked, targets, 2)[1])
    report = ranking_report(ranked, targets, ks=(1, 2))
    assert report["recall@2"] == 1.0 and report["precision@2"] == 0.5 and report["recall@1"] == 0.0
    assert report["mrr"] == 0.5
    assert report["coverage@2"] == pytest.approx(0.2)
    assert set(report) == {f"{m}@{k}" for m in ("precision", "recall", "ndcg", "hitrate", "coverage") for k in (1, 2)} | {
        "mrr"
    }


def test_stored_zeros_and_duplicates_in_targets_are_handled():
    targets = sp.csr_matrix((np.array([0.0, 1.0, 1.0]), (np.array([0, 0, 0]), np.array([3, 4, 4]))), shape=(1, N_ITEMS))
    ranked = np.array([[3, 4]])
    assert recall_at_k(ranked, targets, 2)[0] == 1.0  # |T| = 1: item 3 is a stored zero, item 4 counted once
    assert precision_at_k(ranked, targets, 2)[0] == 0.5


def test_ties_are_settled_by_the_list_so_results_are_deterministic():
    # Items 1 and 2 tie in score; the two tie orders are two different lists with different,
    # repeatable results: metrics judge the list exactly as given.
    targets = targets_of([2])
    first, second = np.array([[0, 1, 2]]), np.array([[0, 2, 1]])
    assert ndcg_at_k(first, targets, 3)[0] == pytest.approx(0.5)
    assert ndcg_at_k(second, targets, 3)[0] == pytest.approx(1 / math.log2(3))
    assert ranking_report(first, targets, ks=(2, 3)) == ranking_report(first.copy(), targets.copy(), ks=(2, 3))


def test_bad_lists_are_refused():
    targets = targets_of([1])
    with pytest.raises(ValueError, match="twice"):
        recall_at_k(np.array([[1, 1, 2]]), targets, 3)
    with pytest.raises(ValueError, match="outside"):
        recall_at_k(np.array([[1, N_ITEMS]]), targets, 2)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(np.array([[1, 2]]), targets, 3)
    with pytest.raises(ValueError, match="rows"):
        recall_at_k(np.array([[1, 2], [3, 4]]), targets, 2)
    with pytest.raises(ValueError, match="no user has any target"):
        ranking_report(np.array([[1, 2]]), targets_of([]), ks=(2,))


def reference(ranked: np.ndarray, targets: sp.csr_matrix, k: int) -> dict[str, list[float]]:
    """protocols.md read literally, one user at a time."""
    out: dict[str, list[float]] = {m: [] for m in ("precision", "recall", "ndcg", "hitrate", "mrr")}
    for u in range(ranked.shape[0]):
        relevant = set(targets[u].indices[targets[u].data != 0].tolist())
        if not relevant:
            continue
        top = [int(i) for i in ranked[u, :k]]
        hits = [i in relevant for i in top]
        dcg = sum(1 / math.log2(r + 2) for r, hit in enumerate(hits) if hit)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant))))
        full = [int(i) in relevant for i in ranked[u]]
        out["precision"].append(sum(hits) / k)
        out["recall"].append(sum(hits) / min(k, len(relevant)))
        out["ndcg"].append(dcg / idcg)
        out["hitrate"].append(float(any(hits)))
        out["mrr"].append(1 / (full.index(True) + 1) if any(full) else 0.0)
    return out


# the hit lookup's mask taken a row at a time, 7 rows (blocks ending mid-way) and all 80 at once
@pytest.mark.parametrize("mask_cells", [40, 7 * 40, 1 << 24])
def test_randomised_against_the_per_user_reference(monkeypatch, mask_cells):
    monkeypatch.setattr(metrics, "HIT_LOOKUP_CELLS", mask_cells)
    rng = np.random.default_rng(3)
    n_users, n_items, length = 80, 40, 15
    ranked = np.stack([rng.permutation(n_items)[:length] for _ in range(n_users)])
    ranked[rng.random(ranked.shape) < 0.05] = -1  # scattered padding: never a hit
    dense = (rng.random((n_users, n_items)) < rng.uniform(0, 0.3, size=(n_users, 1))).astype(np.float32)
    dense[:5] = 0  # some users without targets
    targets = sp.csr_matrix(dense)
    report = ranking_report(ranked, targets, ks=(1, 5, 15), n_items=n_items)
    for k in (1, 5, 15):
        expected = reference(ranked, targets, k)
        for metric in ("precision", "recall", "ndcg", "hitrate"):
            assert report[f"{metric}@{k}"] == pytest.approx(np.mean(expected[metric]), rel=1e-12)
        shown = {int(i) for u in range(n_users) if dense[u].any() for i in ranked[u, :k] if i >= 0}
        assert report[f"coverage@{k}"] == pytest.approx(len(shown) / n_items)
    assert report["mrr"] == pytest.approx(np.mean(reference(ranked, targets, length)["mrr"]), rel=1e-12)
    per_user = ndcg_at_k(ranked, targets, 5)
    np.testing.assert_allclose(per_user[~np.isnan(per_user)], reference(ranked, targets, 5)["ndcg"], rtol=1e-12)


def test_rmse_and_mae_on_small_arrays():
    predicted, actual = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0])
    assert rmse(predicted, actual) == pytest.approx(math.sqrt(5 / 3))
    assert mae(predicted, actual) == pytest.approx(1.0)
    # clipped to the rating range before the error is taken
    assert rmse(np.array([0.0, 6.5]), np.array([1.0, 5.0]), rating_range=(1.0, 5.0)) == 0.0
    assert mae(np.array([0.0, 6.5]), np.array([1.0, 5.0])) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="predictions"):
        rmse(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="no ratings"):
        mae(np.ones(0), np.ones(0))
