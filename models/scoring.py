"""Batched scoring on a model's device: rows in blocks, the masks and the top-k cut there.

``Recommender.recommend``, ``predict`` and ``contributions`` check their arguments (``models.base``) and
hand the work to these kernels: the rows cross to the device once, each block of them is scored, masked and
cut there, and only ids and scores come back (bench/gpu.py, "scoring"). A kernel receives the model's
``scores`` (or ``pair_scores``) as a function, so it knows nothing of any model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from models.rows import DeviceRows

SCORE_BATCH_ROWS = 2048  # rows scored per forward pass: bounds memory at n * n_items floats
Scores = Callable[..., torch.Tensor]  # a model's ``scores(rows, users=..., timestamps=...)``


def use_tensor_cores(device: torch.device | str) -> None:
    """On a GPU, float32 matrix products in TF32 on the tensor cores (a 10-bit mantissa with float32's
    range and accumulation), several times the plain float32 rate (bench/gpu.py). Process-wide."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def score_block_rows(n_items: int, device: torch.device) -> int:
    """Rows scored per pass: SCORE_BATCH_ROWS on a CPU; on a GPU as many as keep a block of
    float32 scores near 1 GiB, since each pass pays launch and sync overheads (bench/gpu.py)."""
    if device.type == "cpu":
        return SCORE_BATCH_ROWS
    return max(SCORE_BATCH_ROWS, (1 << 28) // max(1, n_items))


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block, and back in training mode after it if it was."""
    was_training = model.training
    if was_training:  # a served model is in eval mode already: walking its modules costs time each call
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def top_k(
    scores: Scores, inputs: DeviceRows, k: int, users: np.ndarray | None, *, exclude_seen: bool,
    exclude: sp.csr_matrix | np.ndarray | None, candidates: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` items of each row of ``inputs`` by ``scores``, as ``Recommender.recommend`` returns
    them: seen items (``exclude_seen``), ``exclude`` (an index array for every row, or a CSR of each row's)
    and items outside ``candidates`` get -inf before the cut; fewer than k allowed pads ids -1, scores -inf."""
    device, (n_rows, n_items) = inputs.device, inputs.shape
    k_eff = min(int(k), n_items)
    allowed = global_exclude = per_row_exclude = None
    if candidates is not None:
        allowed = torch.zeros(n_items, dtype=torch.bool, device=device)
        allowed[torch.from_numpy(candidates).to(device)] = True
    if exclude is not None and sp.issparse(exclude):
        per_row_exclude = DeviceRows(exclude, device)
    elif exclude is not None:
        global_exclude = torch.from_numpy(np.asarray(exclude, dtype=np.int64).reshape(-1)).to(device)

    top_ids = torch.empty(n_rows, k_eff, dtype=torch.int64, device=device)
    top_scores = torch.empty(n_rows, k_eff, dtype=torch.float32, device=device)
    block = score_block_rows(n_items, device)
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        batch = inputs.between(start, stop)
        s = scores(batch, users=None if users is None else users[start:stop]).float()
        if exclude_seen:
            s[batch.row_of, batch.col] = -torch.inf
        if global_exclude is not None:
            s[:, global_exclude] = -torch.inf
        if per_row_exclude is not None:
            excluded = per_row_exclude.between(start, stop)
            s[excluded.row_of, excluded.col] = -torch.inf
        if allowed is not None:
            s[:, ~allowed] = -torch.inf
        top_scores[start:stop], top_ids[start:stop] = torch.topk(s, k_eff, dim=1)
    ids_out = np.full((n_rows, k), -1, dtype=np.int64)
    scores_out = np.full((n_rows, k), -np.inf, dtype=np.float32)
    ids_out[:, :k_eff], scores_out[:, :k_eff] = top_ids.cpu().numpy(), top_scores.cpu().numpy()
    ids_out[~np.isfinite(scores_out)] = -1
    return ids_out, scores_out


def pair_predictions(
    pair_scores: Scores, rows: sp.csr_matrix, pair_rows: np.ndarray, items: np.ndarray, users: np.ndarray | None,
    timestamps: sp.csr_matrix | None, batch_rows: int, device: torch.device,
) -> np.ndarray:
    """The model's score of pair j, row ``pair_rows[j]`` of ``rows`` and item ``items[j]``, [n_pairs]: the
    rows in blocks of ``batch_rows``, each block scored once for all the pairs it holds."""
    order = np.argsort(pair_rows, kind="stable")
    sorted_rows = pair_rows[order]
    out = np.empty(items.shape[0], dtype=np.float32)
    for start in range(0, rows.shape[0], batch_rows):
        stop = min(start + batch_rows, rows.shape[0])
        lo, hi = np.searchsorted(sorted_rows, [start, stop])
        pairs = order[lo:hi]
        block, block_ts = rows, timestamps
        if stop - start < rows.shape[0]:  # one request is one block: no slice copy
            block, block_ts = rows[start:stop], None if timestamps is None else timestamps[start:stop]
        r = torch.from_numpy(pair_rows[pairs] - start).to(device)
        c = torch.from_numpy(items[pairs]).to(device)
        predicted = pair_scores(block, r, c, users=None if users is None else users[start:stop], timestamps=block_ts)
        out[pairs] = predicted.float().cpu().numpy()
    return out


def without_each(row: sp.csr_matrix, at: np.ndarray, timestamps: sp.csr_matrix | None) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """``row`` (one row), then len(at) copies of it, copy h without its stored entry ``at[h]``; the same of
    its ``timestamps`` (None: None)."""
    n_h, nnz = len(at), row.nnz
    keep = np.ones((n_h + 1, nnz), dtype=bool)
    keep[1 + np.arange(n_h), at] = False
    indptr = np.zeros(n_h + 2, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    indices = np.broadcast_to(row.indices, keep.shape)[keep]

    def rows_of(values: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((np.broadcast_to(values, keep.shape)[keep], indices, indptr), shape=(n_h + 1, row.shape[1]))

    return rows_of(row.data), None if timestamps is None else rows_of(timestamps.data)


def item_scores(scores: Scores, inputs: DeviceRows, items: np.ndarray, users: np.ndarray | None) -> torch.Tensor:
    """[n_rows, len(items)] on the device: each row's scores of ``items`` only, the rows in blocks."""
    device, n_rows = inputs.device, inputs.n_rows
    targets = torch.from_numpy(items).to(device)
    out = torch.empty(n_rows, len(items), dtype=torch.float32, device=device)
    block = score_block_rows(inputs.shape[1], device)
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        s = scores(inputs.between(start, stop), users=None if users is None else users[start:stop])
        out[start:stop] = s.float()[:, targets]
    return out
