"""Every known user's top-N list of a ranker, computed at publish so that a user's first request needs no scoring.

The service answers a recommendation request from the stored list when the list can give
exactly what scoring would (``service.inference.stored_recommendation``), so the lists are
scored as the service scores: the model cast to float32 (as ``service.model_store`` serves
it), the user's positives as input, every item they interacted with excluded. Rows are
scored in blocks when a block gives bit for bit the scores of one row at a time (EASE,
EDLAE: a sparse row times B); otherwise (dense layers, whose BLAS kernels round a batch
differently from a single row) one row at a time, as a request is.

Files (in the model's folder, checksummed in the manifest like every other file):
``top_items.npy`` int32 [n_users, N] (-1: padding, or a first -1: no list for the user, who
the service answers as it does today) and ``top_scores.npy`` float32 [n_users, N].
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

ITEMS_FILE = "top_items.npy"
SCORES_FILE = "top_scores.npy"
DEFAULT_LIST_SIZE = 200
PROBE_ROWS = 16  # rows scored both ways to tell whether blocks give a single row's exact scores


@dataclass
class TopLists:
    items: np.ndarray  # int32 [n_users, N]
    scores: np.ndarray  # float32 [n_users, N]
    seconds: float
    row_by_row: bool  # scored one row at a time (blocks would not give a request's exact scores)

    def files(self) -> dict[str, bytes]:
        return {ITEMS_FILE: _npy(self.items), SCORES_FILE: _npy(self.scores)}

    def info(self, data_read_at: float, from_database: bool) -> dict:
        """The manifest's ``top_lists`` entry of the model: what the service needs to trust the lists."""
        return {"n": int(self.items.shape[1]), "items": ITEMS_FILE, "scores": SCORES_FILE,
                "users_with_lists": int((self.items[:, 0] >= 0).sum()) if self.items.size else 0,
                "seconds": round(self.seconds, 3), "row_by_row": self.row_by_row,
                # a user written through the API after this (database sources) or ever (others) is scored
                "data_read_at": data_read_at, "from_database": from_database}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


@contextlib.contextmanager
def _one_thread():
    """One torch thread while single rows are scored, as the service scores a request (``TORCH_THREADS``' default):
    SVAE's GRU rounds otherwise with more threads, and a row's kernels are too small to share out anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compute_top_lists(model, X: sp.csr_matrix, seen: sp.csr_matrix, n: int = DEFAULT_LIST_SIZE,
                      device: str | None = None, timestamps: sp.csr_matrix | None = None) -> TopLists:
    """Top ``n`` of each row of ``X`` (the users' positives, in the model's rows and columns), items of
    ``seen`` excluded; ``timestamps``: when each positive was (X's pattern), for a model that reads the
    order. Users the service would not answer with the model (an empty input row for a model that folds
    in) get no list."""
    started = time.perf_counter()
    served = copy.deepcopy(model).float()  # served in float32 (service.model_store): the same scores
    if device is not None:
        served = served.to(device)
    served.eval()
    X, seen = sp.csr_matrix(X, dtype=np.float32), sp.csr_matrix(seen, dtype=np.float32)
    T = None if timestamps is None else sp.csr_matrix(timestamps, dtype=np.float64)
    n_users, n = X.shape[0], max(1, min(int(n), served.n_items))
    items = np.full((n_users, n), -1, dtype=np.int32)
    scores = np.full((n_users, n), -np.inf, dtype=np.float32)
    has_input = np.diff(X.indptr) > 0
    listed = np.flatnonzero(has_input) if served.can_fold_in else np.arange(n_users)

    def score(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return served.recommend(X[rows], n, users=rows.astype(np.int64), exclude_seen=True, exclude=seen[rows],
                                timestamps=None if T is None else T[rows])

    probe = listed[:PROBE_ROWS]
    row_by_row = False
    if len(probe):
        block_ids, block_scores = score(probe)
        with _one_thread():
            single = [score(probe[i : i + 1]) for i in range(len(probe))]
        row_by_row = not all(np.array_equal(block_ids[i], ids[0]) and np.array_equal(block_scores[i], s[0])
                             for i, (ids, s) in enumerate(single))
    step = 1 if row_by_row else 4096  # recommend() scores a block in passes sized for the device
    with _one_thread() if row_by_row else contextlib.nullcontext():
        for start in range(0, len(listed), step):
            rows = listed[start : start + step]
            ids, s = score(rows)
            items[rows], scores[rows] = ids.astype(np.int32), s
    if not np.isfinite(scores[items >= 0]).all():
        from errors import TrainingError

        raise TrainingError("a top-N list holds a non-finite score: nothing is published")
    return TopLists(items, scores, time.perf_counter() - started, row_by_row)
