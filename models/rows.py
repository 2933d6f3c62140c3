"""Interaction rows on the model's device: the matrix a model trains on, and every batch it scores.

``DeviceRows`` holds a users x items CSR's three arrays as tensors on one device, moved there
once (per fit, or per ``recommend`` call). A batch of its rows is gathered there by a few
vectorised kernels into a ``RowBatch`` (the batch's own CSR arrays), which densifies itself
there when a model needs it: no scipy slicing, ``toarray`` or host-to-device copy per batch.

The epoch's order is drawn on the host by numpy, so a seed gives the same batches on every
device, and crosses once per epoch together with each batch's number of non-zeros, so no
kernel waits for the host to learn a size (tests/models/test_rows.py).

With timestamps, each row's entries are stored in time order (ties by item index): a
sequential model reads a row's items in the order they happened.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from models.errors import ModelInputError

@dataclass
class RowBatch:
    """Some rows of a matrix as CSR tensors on one device; ``rows`` are their indices in it."""

    rows: torch.Tensor  # [n] int64: which rows of the source matrix (training-row indices while training)
    crow: torch.Tensor  # [n + 1] int64
    col: torch.Tensor  # [nnz] int64, in each row's stored order (time order when built with timestamps)
    values: torch.Tensor  # [nnz] float32
    n_cols: int

    def __len__(self) -> int:
        return self.crow.shape[0] - 1

    @property
    def device(self) -> torch.device:
        return self.values.device

    @cached_property
    def row_of(self) -> torch.Tensor:
        """[nnz] the batch row of each entry (made once: the seen-item mask and ``dense`` both read it)."""
        return torch.repeat_interleave(self.crow.diff(), output_size=self.col.shape[0])

    def sparse(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A torch sparse CSR tensor [n, n_cols] on these arrays."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                self.crow, self.col, self.values.to(dtype), (len(self), self.n_cols), check_invariants=False
            )  # valid by construction

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[n, n_cols], zeros where nothing is stored; built on the batch's device."""
        out = torch.zeros(len(self), self.n_cols, dtype=dtype, device=self.device)
        return out.index_put_((self.row_of, self.col), self.values.to(dtype))


class DeviceRows:
    """A CSR matrix's arrays on ``device``; ``take`` gathers rows, ``batches`` walks an epoch."""

    def __init__(
        self,
        X: sp.csr_matrix,
        device: torch.device | str,
        *,
        binary: bool = False,
        timestamps: sp.csr_matrix | None = None,
    ):
        if not (isinstance(X, sp.csr_matrix) and X.dtype == np.float32):
            X = sp.csr_matrix(X, dtype=np.float32)  # a request's rows already are: no copy, no checks again
        indptr, indices, values = X.indptr.astype(np.int64), X.indices.astype(np.int64), X.data
        if timestamps is not None:
            indices, values = _in_time_order(X, timestamps)
        # binary: the positives (values > 0), each a 1; otherwise every stored value but a 0 (no rating)
        keep = values > 0 if binary else values != 0
        if not keep.all():
            row_of = np.repeat(np.arange(X.shape[0]), np.diff(indptr))
            indptr = np.concatenate([[0], np.cumsum(np.bincount(row_of[keep], minlength=X.shape[0]))])
            indices, values = indices[keep], values[keep]
        if binary:
            values = np.ones(indices.shape[0], dtype=np.float32)
        self.shape = X.shape
        self.device = torch.device(device)
        self.host_indptr = indptr  # each batch's size is known without asking the device
        on_host = self.device.type == "cpu"  # the numpy arrays themselves: no copy, no .to() per array
        self.indptr, self.indices, self.values = (
            tensor if on_host else tensor.to(self.device)
            for tensor in map(torch.from_numpy, (indptr, indices, np.ascontiguousarray(values, dtype=np.float32)))
        )

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def row_lengths(self) -> np.ndarray:
        """Stored entries per row, on the host."""
        return np.diff(self.host_indptr)

    def between(self, start: int, stop: int) -> RowBatch:
        """Rows ``start..stop-1``: slices of the arrays, no gather."""
        lo, hi = int(self.host_indptr[start]), int(self.host_indptr[stop])
        rows = torch.arange(start, stop, device=self.device)
        crow = self.indptr[start : stop + 1] - lo if lo else self.indptr[start : stop + 1]
        return RowBatch(rows, crow, self.indices[lo:hi], self.values[lo:hi], self.shape[1])

    def take(self, rows: torch.Tensor, nnz: int | None = None) -> RowBatch:
        """Rows ``rows`` (an int64 tensor on this device) as a batch; ``nnz``, their number of
        non-zeros, spares the device a sync when the caller knows it."""
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        crow = torch.zeros(rows.shape[0] + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(lengths, 0, out=crow[1:])
        if nnz is None:
            nnz = int(crow[-1])
        # each entry's place in the full arrays: its row's start there, plus its rank in the row
        shift = torch.repeat_interleave(starts - crow[:-1], lengths, output_size=nnz)
        source = torch.arange(nnz, device=self.device) + shift
        return RowBatch(rows, crow, self.indices[source], self.values[source], self.shape[1])

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[RowBatch]:
        """The rows of ``order`` (host indices) in batches of ``batch_size``: one copy to the device per call."""
        order = np.asarray(order, dtype=np.int64)
        starts = np.arange(0, order.shape[0], batch_size)
        if starts.size == 0:
            return
        nnz = np.add.reduceat(np.diff(self.host_indptr)[order], starts)
        on_device = torch.from_numpy(order).to(self.device)
        for start, count in zip(starts.tolist(), nnz.tolist()):
            yield self.take(on_device[start : start + batch_size], count)


def as_csr(rows: Any, n_items: int) -> sp.csr_matrix:
    """Check a batch of rows at the door: CSR (or convertible), float32, the model's width."""
    if not sp.issparse(rows):
        raise ModelInputError(f"rows must be a scipy.sparse matrix, got {type(rows).__name__}")
    if not (isinstance(rows, sp.csr_matrix) and rows.dtype == np.float32):
        rows = sp.csr_matrix(rows, dtype=np.float32)  # a copy only when the type or dtype differ
    if rows.ndim != 2 or rows.shape[1] != n_items:
        raise ModelInputError(f"rows have {rows.shape[1]} columns but the model was trained on {n_items} items")
    if rows.nnz and not np.isfinite(rows.data).all():
        raise ModelInputError("rows contain NaN or infinite values")
    return rows


def as_row_batch(
    rows: Any, n_items: int, device: torch.device, *, binary: bool, timestamps: sp.csr_matrix | None = None
) -> RowBatch:
    """What ``scores`` reads: a ``RowBatch`` on ``device`` as it is (already checked and on the device:
    ``recommend``, training), or a scipy CSR checked by ``as_csr`` and moved there (``binary``: its
    positives as 1s; ``timestamps``: each row in time order)."""
    if isinstance(rows, RowBatch):
        if rows.n_cols != n_items:
            raise ModelInputError(f"rows have {rows.n_cols} columns but the model was trained on {n_items} items")
        return rows
    rows = as_csr(rows, n_items)
    return DeviceRows(rows, device, binary=binary, timestamps=timestamps).between(0, rows.shape[0])


def count_rows(rows: Any, n_items: int) -> int:
    """How many rows ``rows`` holds (a ``RowBatch`` or a scipy CSR, checked like ``as_csr``), for
    models that score by user index and never read the rows themselves."""
    if isinstance(rows, RowBatch):
        return len(as_row_batch(rows, n_items, rows.device, binary=False))
    return as_csr(rows, n_items).shape[0]


def _in_time_order(X: sp.csr_matrix, timestamps: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """X's (indices, values) with each row's entries sorted by (timestamp, item); the
    timestamps must have X's pattern (in any stored order)."""
    row_of = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    by_item = np.lexsort((X.indices, row_of))  # X's entries in canonical (row, item) order
    ts = sp.csr_matrix(timestamps, dtype=np.float64)
    ts = ts if ts.has_sorted_indices else ts.sorted_indices()
    if ts.shape != X.shape or not (np.array_equal(ts.indptr, X.indptr) and np.array_equal(ts.indices, X.indices[by_item])):
        raise ModelInputError("timestamps must have the same shape and sparsity pattern as rows")
    indices, values = X.indices[by_item], X.data[by_item]
    order = np.lexsort((indices, ts.data, row_of))  # the last key is the primary one
    return indices[order].astype(np.int64), values[order]


def pad_recent(batch: RowBatch, max_len: int, width: int | None = None) -> torch.Tensor:
    """[n, width] int64 of each row's last ``max_len`` items (ids + 1, in stored order),
    right-padded with 0; ``width`` defaults to the longest kept row (one sync)."""
    lengths = batch.crow.diff()
    kept = lengths.clamp(max=max_len)
    if width is None:
        width = max(1, int(kept.max())) if len(batch) else 1
    row_of = batch.row_of
    position = torch.arange(batch.col.shape[0], device=batch.device) - batch.crow[row_of] - (lengths - kept)[row_of]
    # too old (position < 0) goes to a spare last column that is cut off: no boolean mask, no sync
    position = torch.where(position >= 0, position, width)
    padded = torch.zeros(len(batch), width + 1, dtype=torch.int64, device=batch.device)
    padded.index_put_((row_of, position), batch.col + 1)
    return padded[:, :width]


# A dense row block of at most this many elements (1 GiB in bfloat16) is multiplied at a time on a GPU.
GRAM_BLOCK_ELEMENTS = 1 << 29
# On a CPU the sparse X^T X (sum_u n_u^2 updates) is chosen while its count is under 1/130 of the dense one's
# n_users * n_items^2, their measured rate ratio (bench/RESULTS.md, "Figures moved out").
CPU_DENSE_OVER_SPARSE_RATE = 130.0


def gram(rows: DeviceRows) -> torch.Tensor:
    """X^T X [n_cols, n_cols] in float32 of a binary resident matrix, on its device.

    On a GPU: dense row blocks in bfloat16 multiplied with float32 accumulation and output,
    exact for 0/1 entries while every count stays under 2^24 (float32's integers). On a CPU:
    scipy's sparse product on the same arrays (no copy), unless counting the work says float32
    blocks through BLAS are faster.
    """
    n_rows, n_cols = rows.shape
    on_gpu = rows.device.type == "cuda"
    sparse_updates = float(np.square(rows.row_lengths, dtype=np.float64).sum())
    if not on_gpu and sparse_updates * CPU_DENSE_OVER_SPARSE_RATE < float(n_rows) * n_cols * n_cols:
        X = sp.csr_matrix((rows.values.numpy(), rows.indices.numpy(), rows.indptr.numpy()), shape=rows.shape)
        return torch.from_numpy((X.T @ X).toarray().astype(np.float32, copy=False))
    out = torch.zeros(n_cols, n_cols, dtype=torch.float32, device=rows.device)
    block = max(1, GRAM_BLOCK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, block):
        dense = rows.between(start, min(start + block, n_rows)).dense(torch.bfloat16 if on_gpu else torch.float32)
        out += torch.mm(dense.T, dense, out_dtype=torch.float32) if on_gpu else dense.T @ dense
    return out
