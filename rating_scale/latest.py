"""The one rule for repeated (user, item) interactions: the latest counts, ties to the last given.

Serving's fold-in (``service.inference``), the service's writes (``service.crud``) and the
trainer's loaders (``trainer.loader``, ``--from-db``) all keep one interaction per pair by
this function, so a user is scored on the rating the model would have been trained on.
"""

from __future__ import annotations

import numpy as np


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
