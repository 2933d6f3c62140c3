"""Rows on the model's device: gathers, densification and epoch batches against scipy, and X^T X."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import models
import models.rows
from models.base import TrainData
from models.multvae import MultVAE, MultVAEConfig
from models.recvae import PhaseBatch
from models.rows import DeviceRows, RowBatch, gram


def ratings(n_rows: int = 37, n_cols: int = 23, seed: int = 0) -> sp.csr_matrix:
    """Ratings 1..5 with some stored zeros and a negative, rows of 0 to ~12 entries (one empty)."""
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((n_rows, n_cols)) < 0.3, rng.integers(1, 6, (n_rows, n_cols)), 0).astype(np.float32)
    dense[5] = 0
    X = sp.csr_matrix(dense)
    X.data[::7] = 0.0  # stored zeros: no rating
    X.data[3] = -2.0
    return X


@pytest.mark.parametrize("binary", [True, False])
def test_batches_are_the_rows_scipy_would_slice(binary):
    X = ratings()
    expected = sp.csr_matrix(X > 0, dtype=np.float32) if binary else X
    order = np.random.default_rng(3).permutation(X.shape[0])
    on_device = DeviceRows(X, "cpu", binary=binary)
    batches = list(on_device.batches(order, batch_size=8))
    assert [len(b) for b in batches] == [8, 8, 8, 8, 5]
    for number, batch in enumerate(batches):
        chunk = order[number * 8 : (number + 1) * 8]
        assert batch.rows.tolist() == chunk.tolist()
        np.testing.assert_array_equal(batch.dense().numpy(), expected[chunk].toarray())
        assert batch.col.shape[0] == (expected[chunk] != 0).sum()  # stored zeros are left out
        np.testing.assert_array_equal(batch.sparse().to_dense().numpy(), expected[chunk].toarray())


def test_take_between_and_all_agree():
    X = ratings()
    on_device = DeviceRows(X, "cpu")
    rows = torch.tensor([4, 5, 0, 36, 4])
    taken = on_device.take(rows)
    np.testing.assert_array_equal(taken.dense().numpy(), X[rows.numpy()].toarray())
    assert taken.row_of.tolist() == np.repeat(np.arange(5), (X[rows.numpy()] != 0).getnnz(axis=1)).tolist()
    np.testing.assert_array_equal(on_device.between(10, 20).dense().numpy(), X[10:20].toarray())
    np.testing.assert_array_equal(on_device.between(0, 37).dense().numpy(), X.toarray())


def test_model_training_batches_follow_the_seeded_order():
    X = sp.csr_matrix(ratings() > 0, dtype=np.float32)
    model = MultVAE(MultVAEConfig(dims=(8, 4), batch_size=10), n_items=X.shape[1], n_users=X.shape[0])
    data = TrainData(X)
    batches = list(model.training_batches(data, np.random.default_rng(11)))
    order = np.random.default_rng(11).permutation(X.shape[0])  # what the scipy path sliced
    assert torch.cat([b.rows for b in batches]).tolist() == order.tolist()
    np.testing.assert_array_equal(torch.cat([b.dense() for b in batches]).numpy(), X[order].toarray())
    assert data.on_device(torch.device("cpu"), X.shape[1], binary=True) is data.on_device(torch.device("cpu"), X.shape[1], binary=True)  # moved once


@pytest.mark.parametrize("dense_path", [False, True])
def test_gram_equals_scipy(monkeypatch, dense_path):
    X = sp.csr_matrix(ratings(200, 31) > 0, dtype=np.float32)
    # the blocked dense product (a GPU's path, in float32 here) in several blocks, or scipy's sparse one
    monkeypatch.setattr(models.rows, "CPU_DENSE_OVER_SPARSE_RATE", float("inf") if dense_path else 0.0)
    monkeypatch.setattr(models.rows, "GRAM_BLOCK_ELEMENTS", 31 * 64)
    G = gram(DeviceRows(X, "cpu", binary=True))
    assert G.dtype == torch.float32
    np.testing.assert_array_equal(G.numpy(), (X.T @ X).toarray())


def batch_rows(batch) -> np.ndarray:
    """The dense rows a model's training batch holds, whatever its form."""
    if isinstance(batch, PhaseBatch):  # RecVAE's: a RowBatch and which half it updates
        batch = batch.rows
    return (batch.dense() if isinstance(batch, RowBatch) else batch[0]).numpy()  # AutoRec, DeepRec: (ratings, observed)


@pytest.mark.parametrize("name", ["autorec-i", "autorec-u", "deeprec", "cdae", "multvae", "multdae", "recvae"])
def test_every_model_trains_on_the_rows_scipy_would_slice_for_a_seed(name):
    """A whole epoch of each gradient model's batches, built on the device, against scipy's slices
    of the matrix in the seeded order (SVAE's sequences: tests/models/test_svae.py)."""
    X = ratings(41, 23)
    cls = models.REGISTRY[name]
    model = cls(cls.Config(batch_size=8), n_items=X.shape[1], n_users=X.shape[0])
    source = sp.csr_matrix(X.T) if name == "autorec-i" else X  # I-AutoRec trains on one row per item
    expected = source if cls.task == "rating" else sp.csr_matrix(X > 0, dtype=np.float32)
    rng, seeded = np.random.default_rng(5), np.random.default_rng(5)
    passes = model.config.encoder_passes + 1 if name == "recvae" else 1  # RecVAE: encoder passes, then the decoder's
    got = np.concatenate([batch_rows(b) for b in model.training_batches(TrainData(X), rng)])
    order = np.concatenate([seeded.permutation(source.shape[0]) for _ in range(passes)])
    np.testing.assert_array_equal(got, expected[order].toarray())
