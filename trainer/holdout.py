"""What ``trainer.fit`` validates on when it is given no ``valid``: a seeded part of its own input.

The protocols' rules (``trainer.protocols``), applied to the matrix ``fit`` was given:
  * a rating model: ``fraction`` of the stored ratings, drawn at random (``rating-random``),
    predicted from the rest of each user's row;
  * a ranker: ``fraction`` of the users with at least ``MIN_HELDOUT_POSITIVES`` positives
    leave the training matrix and are folded in from their other positives, ``strong``'s
    random 20% of their positives as the targets (``temporal``'s last 20% in time for a
    sequential model).
``fit`` trains on the rest with early stopping, then trains a new model on the whole input
for the best number of epochs: what it returns has seen every interaction, and the number
of epochs was chosen on data it had not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from trainer.protocols import MIN_HELDOUT_POSITIVES, HeldOut, held_out_targets

HOLDOUT_FRACTION = 0.1
MIN_HELDOUT_RATINGS = 20  # fewer held-out ratings than this cannot tell two epochs apart


@dataclass
class Holdout:
    """The part ``fit`` trains on, and what it validates on."""

    train: sp.csr_matrix
    timestamps: sp.csr_matrix | None
    valid: HeldOut | sp.csr_matrix
    description: str


def hold_out(
    X: sp.csr_matrix, timestamps: sp.csr_matrix | None, *, rating: bool, sequential: bool, fraction: float, seed: int
) -> Holdout | None:
    """The split of ``X`` (canonical CSR) for ``fit``'s choice of epochs; None when ``X`` is too small to hold
    any out (then ``fit`` trains its ``epochs`` on everything and says so)."""
    rng = np.random.default_rng(seed)
    if rating:
        return _hold_out_ratings(X, fraction, rng)
    return _hold_out_users(X, timestamps, sequential, fraction, rng)


def _hold_out_ratings(X: sp.csr_matrix, fraction: float, rng: np.random.Generator) -> Holdout | None:
    rated = np.flatnonzero(X.data != 0)  # a stored 0 is no rating
    n_valid = int(round(fraction * rated.size))
    if n_valid < MIN_HELDOUT_RATINGS:
        return None
    chosen = np.zeros(X.nnz, dtype=bool)
    chosen[rng.choice(rated, n_valid, replace=False)] = True
    return Holdout(_entries(X, ~chosen), None, _entries(X, chosen),
                   f"{n_valid:,} of {rated.size:,} ratings ({fraction:.0%}) held out at random")


def _hold_out_users(
    X: sp.csr_matrix, timestamps: sp.csr_matrix | None, sequential: bool, fraction: float, rng: np.random.Generator
) -> Holdout | None:
    positives = sp.csr_matrix(X > 0, dtype=np.float32)
    eligible = np.flatnonzero(positives.getnnz(axis=1) >= MIN_HELDOUT_POSITIVES)
    n_valid = int(round(fraction * eligible.size))
    if n_valid < 1 or eligible.size - n_valid < 1:
        return None
    held = np.sort(rng.choice(eligible, n_valid, replace=False))
    kept = np.setdiff1d(np.arange(X.shape[0]), held)
    rows = positives[held]
    ts = None if timestamps is None else sp.csr_matrix(timestamps)
    held_ts = None if ts is None else _pattern_of(ts[held], rows)
    row_of = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    order = None if not sequential or held_ts is None else held_ts.data
    is_target = held_out_targets(row_of, rows.indices, rng, times=order)
    inputs, targets = _entries(rows, ~is_target), _entries(rows, is_target)
    valid = HeldOut(inputs, targets, held, np.full(n_valid, -1, dtype=np.int64),
                    input_timestamps=None if held_ts is None else _entries(held_ts, ~is_target))
    how = "their last 20% in time" if order is not None else "20% of their positives at random"
    return Holdout(X[kept], None if ts is None else ts[kept], valid,
                   f"{n_valid:,} of {X.shape[0]:,} users ({fraction:.0%} of those with >= {MIN_HELDOUT_POSITIVES} "
                   f"positives) held out, folded in to rank {how}")


def _entries(X: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """X with only the stored entries ``keep`` (a mask over X.data), same shape."""
    row_of = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    out = sp.csr_matrix((X.data[keep], (row_of[keep], X.indices[keep])), shape=X.shape)
    out.sort_indices()
    return out


def _pattern_of(ts: sp.csr_matrix, rows: sp.csr_matrix) -> sp.csr_matrix:
    """The timestamps of ``rows``' entries, in ``rows``' stored order (rows: the positives of ts's matrix)."""
    ts = ts.tocsr().sorted_indices()
    looked_up = ts[np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr)), rows.indices]
    return sp.csr_matrix((np.asarray(looked_up).ravel(), rows.indices, rows.indptr), shape=rows.shape)
