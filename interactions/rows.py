"""The one rule by which stored interactions become a model's input rows.

1. One interaction per (user, item): the latest counts, ties to the last given (``keep_latest_pairs``).
2. What it says: a ranker's positive is a rating at or above the scale's positive threshold, or
   no rating at all (implicit feedback) (``is_positive``); on an implicit scale every interaction
   is one. For training, implicit feedback reads as the top of the scale (``implicit_as_rating``),
   so the positives ``is_positive`` finds in the training data are the same ones.

The trainer's readers (``interactions.files``, ``storage.export`` for ``--from-db``), its protocols
and positives (``trainer.protocols``, ``trainer.sources``), the service's writes (``storage.crud``)
and serving's fold-in (``service.inference.history_rows``) all apply it from here, so a user is
scored on the rows the model would have been trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rating_scale import RatingScale


def keep_latest_pairs(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Rows to keep (in their order) so each (user, item) index pair appears once, and how many were dropped.

    Rows are stably sorted by (pair, timestamp): the last row of each pair's run is its
    latest, and on equal timestamps (or none) the last given.
    """
    if len(users) == 0:
        return np.arange(0), 0
    pair = np.asarray(users).astype(np.int64) * (int(np.max(items)) + 1) + np.asarray(items)
    order = np.lexsort((timestamps, pair)) if timestamps is not None else np.argsort(pair, kind="stable")
    sorted_pair = pair[order]
    last_of_run = np.ones(len(pair), dtype=bool)
    last_of_run[:-1] = sorted_pair[1:] != sorted_pair[:-1]
    dropped = int(len(pair) - last_of_run.sum())
    if not dropped:
        return np.arange(len(pair)), 0
    return np.sort(order[last_of_run]), dropped


def is_positive(ratings: np.ndarray, threshold: float) -> np.ndarray:
    """Which interactions are a ranker's positives: a rating >= ``threshold``, or none (NaN: implicit feedback)."""
    ratings = np.asarray(ratings)
    with np.errstate(invalid="ignore"):
        return np.isnan(ratings) | (ratings >= threshold)


def implicit_as_rating(ratings: np.ndarray, scale: RatingScale) -> np.ndarray:
    """The rating each stored interaction trains on: its own, and for implicit feedback (NaN) the top of the
    scale, a positive; 1.0 for every interaction on an implicit scale."""
    ratings = np.asarray(ratings, dtype=np.float64)
    return np.ones_like(ratings) if scale.implicit else implicit_at_top(ratings, scale.high)


def implicit_at_top(ratings: np.ndarray, top: float) -> np.ndarray:
    """``ratings`` with implicit feedback (NaN) read as ``top``: a rating model's row, trained or folded in."""
    return np.where(np.isnan(ratings), top, ratings)
