"""What an evaluation protocol returns. All matrices are scipy CSR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class RatingSplit:
    """``rating-random``: three disjoint rating matrices of the same shape (all users x all items)."""

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    rating_range: tuple[float, float]
    protocol: str = "rating-random"
    seed: int = 0


@dataclass
class HeldOut:
    """Users evaluated by fold-in: the model sees ``inputs`` and must rank ``targets``.

    ``users`` are these rows' indices in the dataset's user space (``Interactions``),
    and ``train_rows`` their row in ``RankingSplit.train`` where they were trained on
    (weak generalization, ``seed-ranking``) or -1 for users never trained on (``strong``).
    """

    inputs: sp.csr_matrix  # [n, n_items] fold-in interactions (binary)
    targets: sp.csr_matrix  # [n, n_items] items to find (binary), disjoint from inputs
    users: np.ndarray
    train_rows: np.ndarray
    input_timestamps: sp.csr_matrix | None = None  # same pattern as inputs, for sequential models


@dataclass
class RankingSplit:
    """``strong`` / ``temporal`` / ``seed-ranking``: binary train matrix plus held-out users.

    ``item_ids`` maps a column back to the dataset's item index (columns of items that
    never occur in train are dropped where the protocol says so).
    """

    train: sp.csr_matrix  # [n_train_users, n_items] binary
    train_users: np.ndarray  # dataset user index of each train row
    item_ids: np.ndarray  # dataset item index of each column
    valid: HeldOut
    test: HeldOut
    train_timestamps: sp.csr_matrix | None = None
    protocol: str = "strong"
    seed: int = 0
