"""Top-N and rating metrics, each defined once (protocols.md, "Metrics"), vectorised over users.

Ranking metrics judge a list, not scores. Inputs:
  * ``ranked``: int array [n_users, k], item indices best first; -1 pads a short list
    and is never a hit;
  * ``targets``: CSR [n_users, n_items]; the stored nonzero entries of row u are T_u.

For one user with list L and targets T (ranks r = 1..k):
    hits@k      = |L[:k] ∩ T|
    Precision@k = hits@k / k
    Recall@k    = hits@k / min(k, |T|)                       (Liang et al.'s normalisation)
    DCG@k       = Σ_r [L[r] ∈ T] / log2(r + 1)
    IDCG@k      = Σ_{r <= min(k, |T|)} 1 / log2(r + 1),       NDCG@k = DCG@k / IDCG@k
    HitRate@k   = [hits@k > 0]
    MRR         = 1 / rank of the first hit in the whole list (0 if none)
    Coverage@k  = |∪_u L_u[:k]| / n_items                      (one number for the batch)
Per-user functions return float64 [n_users] with NaN where |T| = 0: such users are
not evaluated, and ``ranking_report`` averages over users with |T| > 0 only.

Ties. Metrics never see scores: a list is judged exactly as given, so equal inputs
give equal numbers. Ties were settled by whoever built the list.
``Recommender.recommend`` ranks with ``torch.topk``, which returns tied items in an
implementation-defined order (repeatable for the same input on the same build and
device, but not by item index). A model whose scores tie on purpose breaks the tie
in its scores (``Popularity``: more interactions first, then the lower item index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

PADDING = -1


def _target_pattern(targets: sp.spmatrix, n_rows: int) -> sp.csr_matrix:
    """Canonical CSR of T: binary, sorted indices, no duplicates, no stored zeros."""
    if not sp.issparse(targets):
        raise ValueError(f"targets must be a scipy.sparse matrix, got {type(targets).__name__}")
    t = sp.csr_matrix(targets, dtype=np.float64, copy=True)
    if t.shape[0] != n_rows:
        raise ValueError(f"targets have {t.shape[0]} rows but ranked has {n_rows}")
    t.sum_duplicates()
    t.eliminate_zeros()
    t.data[:] = 1.0
    return t


def _check_ranked(ranked: np.ndarray, n_items: int) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must be a 2-D integer array [n_users, k], got {ranked.dtype} {ranked.shape}")
    ranked = ranked.astype(np.int64, copy=False)
    if ranked.size and (ranked.min() < PADDING or ranked.max() >= n_items):
        raise ValueError(f"ranked holds item indices outside [-1, {n_items})")
    # A repeated item would be counted twice as a hit: refuse it (padding may repeat).
    ordered = np.sort(ranked, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PADDING)).any():
        raise ValueError("ranked lists an item twice in one row")
    return ranked


HIT_LOOKUP_CELLS = 1 << 24  # rows x items of the boolean target mask built at a time (16 MB)


def hit_matrix(ranked: np.ndarray, targets: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """(hits bool [n, k]: is ranked[u, r] in T_u, n_targets int [n]: |T_u|).

    Membership by lookup in a dense boolean mask of T, built for a block of rows at a time
    (``HIT_LOOKUP_CELLS``): one scatter and one gather per block, faster than a binary
    search of the (row, item) keys (bench/RESULTS.md, "Figures moved out").
    """
    t = _target_pattern(targets, np.shape(ranked)[0])
    n_rows, n_items = t.shape
    ranked = _check_ranked(ranked, n_items)
    n_targets = np.diff(t.indptr)
    hits = np.zeros(ranked.shape, dtype=bool)
    block = max(1, HIT_LOOKUP_CELLS // max(n_items, 1))
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        lo, hi = t.indptr[start], t.indptr[stop]
        mask = np.zeros((stop - start, n_items + 1), dtype=bool)  # the extra last column is PADDING's: never set
        mask[np.repeat(np.arange(stop - start), n_targets[start:stop]), t.indices[lo:hi]] = True
        hits[start:stop] = mask[np.arange(stop - start)[:, None], ranked[start:stop]]
    return hits, n_targets


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


# ---- the formulas, on a hit matrix (defined once; public wrappers and the report use them) ----
def _precision(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(axis=1) / k


def _recall(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(axis=1) / np.maximum(np.minimum(k, n_targets), 1)


def _ndcg(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    discounts = _discounts(k)
    dcg = hits[:, :k] @ discounts
    ideal = np.cumsum(discounts)[np.clip(np.minimum(k, n_targets) - 1, 0, None)]
    return dcg / ideal


def _hitrate(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].any(axis=1).astype(np.float64)


def _mrr(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    first = hits[:, :k].argmax(axis=1)  # index of the first True; 0 when there is none
    return np.where(hits[:, :k].any(axis=1), 1.0 / (first + 1), 0.0)


PerUser = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def _per_user(formula: PerUser, hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    if not isinstance(k, (int, np.integer)) or not 0 < k <= hits.shape[1]:
        raise ValueError(f"k must be an integer in [1, {hits.shape[1]}] (the list length), got {k!r}")
    values = formula(hits, n_targets, int(k)).astype(np.float64)
    values[n_targets == 0] = np.nan  # not evaluated: no targets to find
    return values


def precision_at_k(ranked: np.ndarray, targets: sp.spmatrix, k: int) -> np.ndarray:
    """Per-user Precision@k = hits@k / k (NaN where |T| = 0)."""
    return _per_user(_precision, *hit_matrix(ranked, targets), k)


def recall_at_k(ranked: np.ndarray, targets: sp.spmatrix, k: int) -> np.ndarray:
    """Per-user Recall@k = hits@k / min(k, |T|) (NaN where |T| = 0)."""
    return _per_user(_recall, *hit_matrix(ranked, targets), k)


def ndcg_at_k(ranked: np.ndarray, targets: sp.spmatrix, k: int) -> np.ndarray:
    """Per-user NDCG@k with binary gains (NaN where |T| = 0)."""
    return _per_user(_ndcg, *hit_matrix(ranked, targets), k)


def hitrate_at_k(ranked: np.ndarray, targets: sp.spmatrix, k: int) -> np.ndarray:
    """Per-user HitRate@k = 1 if any of the first k is a target (NaN where |T| = 0)."""
    return _per_user(_hitrate, *hit_matrix(ranked, targets), k)


def mrr(ranked: np.ndarray, targets: sp.spmatrix, k: int | None = None) -> np.ndarray:
    """Per-user reciprocal rank of the first hit in the first k (default: the whole list); 0 if none."""
    hits, n_targets = hit_matrix(ranked, targets)
    return _per_user(_mrr, hits, n_targets, hits.shape[1] if k is None else k)


def _coverage(ranked: np.ndarray, k: int, n_items: int) -> float:
    shown = np.unique(ranked[:, :k])
    return float((shown != PADDING).sum() / n_items)


def coverage_at_k(ranked: np.ndarray, k: int, n_items: int) -> float:
    """|∪_u L_u[:k]| / n_items over the rows given (padding is not an item)."""
    ranked = _check_ranked(ranked, n_items)
    if not isinstance(k, (int, np.integer)) or not 0 < k <= ranked.shape[1]:
        raise ValueError(f"k must be an integer in [1, {ranked.shape[1]}] (the list length), got {k!r}")
    return _coverage(ranked, int(k), n_items)


_RANKING_FORMULAS: dict[str, PerUser] = {
    "precision": _precision,
    "recall": _recall,
    "ndcg": _ndcg,
    "hitrate": _hitrate,
}


def ranking_report(
    ranked: np.ndarray, targets: sp.spmatrix, ks: Sequence[int] = (20, 50, 100), n_items: int | None = None
) -> dict[str, float]:
    """Every ranking metric at every k, averaged over users with |T| > 0.

    Keys: ``precision@k``, ``recall@k``, ``ndcg@k``, ``hitrate@k``, ``coverage@k`` for each
    k, and ``mrr`` over the whole list. Coverage counts the lists of evaluated users only.
    """
    hits, n_targets = hit_matrix(ranked, targets)  # also checks ranked
    n_items = targets.shape[1] if n_items is None else int(n_items)
    evaluated = n_targets > 0
    evaluated_lists = np.asarray(ranked, dtype=np.int64)[evaluated]
    if not evaluated.any():
        raise ValueError("no user has any target: nothing to evaluate")
    report: dict[str, float] = {}
    for k in sorted(set(int(k) for k in ks)):
        for metric, formula in _RANKING_FORMULAS.items():
            report[f"{metric}@{k}"] = float(_per_user(formula, hits, n_targets, k)[evaluated].mean())
        report[f"coverage@{k}"] = _coverage(evaluated_lists, k, n_items)
    report["mrr"] = float(_per_user(_mrr, hits, n_targets, hits.shape[1])[evaluated].mean())
    return report


# ---- ratings ------------------------------------------------------------------------
def _rating_errors(
    predicted: np.ndarray, actual: np.ndarray, rating_range: tuple[float, float] | None
) -> np.ndarray:
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    actual = np.asarray(actual, dtype=np.float64).reshape(-1)
    if predicted.shape != actual.shape:
        raise ValueError(f"{predicted.size} predictions for {actual.size} ratings")
    if predicted.size == 0:
        raise ValueError("no ratings to evaluate")
    if rating_range is not None:
        predicted = np.clip(predicted, *rating_range)
    return predicted - actual


def rmse(predicted: np.ndarray, actual: np.ndarray, rating_range: tuple[float, float] | None = None) -> float:
    """sqrt(mean((clip(ŷ) - y)²)); clipped to ``rating_range`` when given."""
    return float(np.sqrt(np.mean(_rating_errors(predicted, actual, rating_range) ** 2)))


def mae(predicted: np.ndarray, actual: np.ndarray, rating_range: tuple[float, float] | None = None) -> float:
    """mean(|clip(ŷ) - y|); clipped to ``rating_range`` when given."""
    return float(np.mean(np.abs(_rating_errors(predicted, actual, rating_range))))
