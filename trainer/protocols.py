"""Evaluation protocols (protocols.md, "Protocols"): seeded, vectorised splits of an ``Interactions``,
and what they return (``RatingSplit``; ``RankingSplit`` with its ``HeldOut`` users; every matrix scipy CSR).

Same name, same procedure, every time:
  * ``rating-random``: shuffle ratings; 10% test, 5% of the rest validation, the rest train.
  * ``seed-ranking``: all ratings are positives; per user n - int(0.8 n) random test items.
    Validation (for model selection) holds out the same fraction of each user's train
    part: n_tr - int(0.8 n_tr). The train matrix excludes both; validation fold-in inputs
    are the train rows; test fold-in inputs are train + validation (the user's whole
    train part, so exactly the items the protocol excludes from the ranking).
  * ``strong``: ratings >= 4 (the positive threshold of the data's rating scale) are
    positives; users with >= 5 positives; N users to validation, N to test, the rest
    train (Liang et al. 2018). Items absent from train are
    dropped everywhere. A held-out user with n >= 5 remaining positives gets int(0.2 n)
    random targets (Liang's reference code); the rest is the fold-in input.
  * ``temporal``: as ``strong``, but the targets are the LAST n - int(0.8 n) positives in
    time order (order: timestamp, then item index), for users with n >= 5 (SVAE's code).
A held-out user with no targets stays in ``HeldOut`` but is not evaluated (metrics
average over users with targets).

Every random draw comes from one ``np.random.default_rng(seed)``, in a fixed order.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from errors import DataError, UserError
from interactions import Interactions
from interactions.rows import is_positive


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


PROTOCOLS = ("rating-random", "seed-ranking", "strong", "temporal")
PROTOCOL_TASK = {"rating-random": "rating", "seed-ranking": "ranking", "strong": "ranking", "temporal": "ranking"}
PROTOCOL_METRICS = {
    "rating-random": ("rmse", "mae"),
    "seed-ranking": ("precision@100", "recall@100", "ndcg@100"),
    "strong": ("recall@20", "recall@50", "ndcg@100"),
    "temporal": ("recall@20", "recall@50", "ndcg@100", "ndcg@10", "recall@10"),
}
# Held-out users per side (validation and test each) for strong/temporal, as published.
HELDOUT_USERS = {"ml-100k": 100, "ml-1m": 600, "ml-20m": 10_000, "netflix": 40_000}
MIN_HELDOUT_POSITIVES = 5  # fewer than this after dropping items: all fold-in, no targets
_EPS = 1e-9  # fractions of counts in floats: 0.29 * 100 is 28.999999999999996, not 29


def protocol_ks(protocol: str) -> tuple[int, ...]:
    """The cut-offs a protocol reports (e.g. strong: (20, 50, 100))."""
    return tuple(sorted({int(m.split("@")[1]) for m in PROTOCOL_METRICS[protocol] if "@" in m}))


def _floor(x: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + _EPS).astype(np.int64)


def _check_fraction(name: str, value: float) -> float:
    if not 0.0 < float(value) < 1.0:
        raise UserError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return float(value)


def _csr(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((values, (rows, cols)), shape=shape)
    m.sort_indices()
    return m


def _first_in_row(rows: np.ndarray, n_first: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Mask of the first ``n_first[row]`` entries of each row, rows ordered by ``keys`` (primary first)."""
    order = np.lexsort(tuple(reversed(keys)) + (rows,))
    sorted_rows = rows[order]
    rank_in_row = np.arange(len(rows)) - np.searchsorted(sorted_rows, sorted_rows, side="left")
    mask = np.zeros(len(rows), dtype=bool)
    mask[order] = rank_in_row < n_first[sorted_rows]
    return mask


# ---- rating-random ----------------------------------------------------------------------
def rating_random(
    interactions: Interactions, seed: int = 0, *, test_fraction: float = 0.1, valid_fraction: float = 0.05
) -> RatingSplit:
    """Shuffle all ratings; ``test_fraction`` test, ``valid_fraction`` of the rest validation."""
    test_fraction = _check_fraction("test_fraction", test_fraction)
    valid_fraction = _check_fraction("valid_fraction", valid_fraction)
    n = len(interactions)
    if n < 3:
        raise DataError(f"{interactions.name}: {n} ratings are too few to split into train/valid/test")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    n_valid = max(1, int(round(valid_fraction * (n - n_test))))
    parts = order[:n_test], order[n_test : n_test + n_valid], order[n_test + n_valid :]
    shape = (interactions.n_users, interactions.n_items)
    test, valid, train = (
        _csr(interactions.ratings[p].astype(np.float32), interactions.users[p], interactions.items[p], shape)
        for p in parts
    )
    return RatingSplit(train, valid, test, rating_range=interactions.rating_range, protocol="rating-random", seed=seed)


# ---- seed-ranking -----------------------------------------------------------------------
def seed_ranking(interactions: Interactions, seed: int = 0, *, test_fraction: float = 0.2) -> RankingSplit:
    """Weak generalization: every user trains; per user n - int((1 - f) n) random items are test."""
    keep = 1.0 - _check_fraction("test_fraction", test_fraction)
    if len(interactions) == 0:
        raise DataError(f"{interactions.name} has no interactions")
    rng = np.random.default_rng(seed)
    users, items = interactions.users.astype(np.int64), interactions.items.astype(np.int64)
    ts = interactions.timestamps
    shape = (interactions.n_users, interactions.n_items)

    n_per_user = np.bincount(users, minlength=shape[0])
    is_test = _first_in_row(users, n_per_user - _floor(keep * n_per_user), rng.random(len(users)))
    n_train_part = _floor(keep * n_per_user)
    rest = ~is_test
    is_valid = np.zeros(len(users), dtype=bool)
    is_valid[rest] = _first_in_row(users[rest], n_train_part - _floor(keep * n_train_part), rng.random(rest.sum()))
    is_train = rest & ~is_valid

    def binary(mask: np.ndarray) -> sp.csr_matrix:
        return _csr(np.ones(mask.sum(), dtype=np.float32), users[mask], items[mask], shape)

    def stamps(mask: np.ndarray) -> sp.csr_matrix | None:
        return None if ts is None else _csr(ts[mask].astype(np.float64), users[mask], items[mask], shape)

    all_users = np.arange(shape[0])
    train, train_ts = binary(is_train), stamps(is_train)
    valid = HeldOut(train, binary(is_valid), all_users, all_users, input_timestamps=train_ts)
    test = HeldOut(binary(rest), binary(is_test), all_users, all_users, input_timestamps=stamps(rest))
    return RankingSplit(
        train=train,
        train_users=all_users,
        item_ids=np.arange(shape[1]),
        valid=valid,
        test=test,
        train_timestamps=train_ts,
        protocol="seed-ranking",
        seed=seed,
    )


# ---- strong / temporal --------------------------------------------------------------------
def _heldout_count(interactions: Interactions, n_eligible: int, n_heldout: int | None) -> int:
    if n_heldout is None:
        n_heldout = HELDOUT_USERS.get(interactions.name, max(1, int(0.1 * n_eligible)))
    if not isinstance(n_heldout, (int, np.integer)) or n_heldout < 1:
        raise UserError(f"n_heldout must be a positive integer, got {n_heldout!r}")
    if n_eligible < 2 * n_heldout + 1:
        raise DataError(
            f"{interactions.name}: {n_eligible} eligible users cannot give {n_heldout} validation and "
            f"{n_heldout} test users and still leave users to train on (lower n_heldout)"
        )
    return int(n_heldout)


def held_out_targets(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator, times: np.ndarray | None = None) -> np.ndarray:
    """Which of a held-out user's positives are targets (a mask over the entries; ``rows`` says whose):
    a user with n >= MIN_HELDOUT_POSITIVES gives int(0.2 n) at random, or with ``times`` (temporal) their
    last n - int(0.8 n) in time; fewer, none (all fold-in input)."""
    n = np.bincount(rows)
    if times is not None:
        # latest first (timestamp, then item index, both descending): the first m are the last m in time
        n_targets = np.where(n >= MIN_HELDOUT_POSITIVES, n - _floor(0.8 * n), 0)
        return _first_in_row(rows, n_targets, -times, -cols)
    n_targets = np.where(n >= MIN_HELDOUT_POSITIVES, _floor(0.2 * n), 0)
    return _first_in_row(rows, n_targets, rng.random(rows.size))


def _user_heldout(
    interactions: Interactions, seed: int, protocol: str, n_heldout: int | None, min_rating: float | None,
    min_positives: int
) -> RankingSplit:
    temporal = protocol == "temporal"
    if not isinstance(min_positives, (int, np.integer)) or min_positives < 1:
        raise UserError(f"min_positives must be a positive integer, got {min_positives!r}")
    if temporal and interactions.timestamps is None:
        raise DataError(f"{interactions.name} has no timestamps: the temporal protocol needs them")
    rng = np.random.default_rng(seed)
    min_rating = interactions.rating_scale.positive if min_rating is None else min_rating
    positive = is_positive(interactions.ratings, min_rating)
    users, items = interactions.users[positive].astype(np.int64), interactions.items[positive].astype(np.int64)
    ts = None if interactions.timestamps is None else interactions.timestamps[positive]
    if users.size == 0:
        raise DataError(f"{interactions.name}: no rating >= {min_rating} (lower min_rating)")

    positives_per_user = np.bincount(users, minlength=interactions.n_users)
    eligible = np.flatnonzero(positives_per_user >= min_positives)
    n_heldout = _heldout_count(interactions, len(eligible), n_heldout)
    # As Liang et al.: shuffle users; the first go to train, then N validation, then N test.
    shuffled = rng.permutation(eligible)
    n_train = len(shuffled) - 2 * n_heldout
    groups = shuffled[:n_train], shuffled[n_train : n_train + n_heldout], shuffled[n_train + n_heldout :]
    row_of = np.full(interactions.n_users, -1, dtype=np.int64)
    side_of = np.full(interactions.n_users, -1, dtype=np.int64)  # 0 train, 1 valid, 2 test
    for side, group in enumerate(groups):
        row_of[group] = np.arange(len(group))
        side_of[group] = side

    side = side_of[users]
    item_ids = np.unique(items[side == 0])  # the columns: items that occur in train
    col_of = np.full(interactions.n_items, -1, dtype=np.int64)
    col_of[item_ids] = np.arange(len(item_ids))
    cols, rows = col_of[items], row_of[users]

    def binary(mask: np.ndarray, n_rows: int) -> sp.csr_matrix:
        return _csr(np.ones(mask.sum(), dtype=np.float32), rows[mask], cols[mask], (n_rows, item_ids.size))

    def stamps(mask: np.ndarray, n_rows: int) -> sp.csr_matrix | None:
        if ts is None:
            return None
        return _csr(ts[mask].astype(np.float64), rows[mask], cols[mask], (n_rows, item_ids.size))

    def held_out(side_id: int) -> HeldOut:
        mine = (side == side_id) & (cols >= 0)  # items absent from train are dropped
        group = groups[side_id]
        is_target = held_out_targets(rows[mine], cols[mine], rng, times=ts[mine] if temporal else None)
        target_mask, input_mask = mine.copy(), mine.copy()
        target_mask[mine] = is_target
        input_mask[mine] = ~is_target
        return HeldOut(
            binary(input_mask, len(group)),
            binary(target_mask, len(group)),
            group,
            np.full(len(group), -1, dtype=np.int64),
            input_timestamps=stamps(input_mask, len(group)),
        )

    valid, test = held_out(1), held_out(2)
    return RankingSplit(
        train=binary(side == 0, n_train),
        train_users=groups[0],
        item_ids=item_ids,
        valid=valid,
        test=test,
        train_timestamps=stamps(side == 0, n_train),
        protocol=protocol,
        seed=seed,
    )


def strong(
    interactions: Interactions,
    seed: int = 0,
    *,
    n_heldout: int | None = None,
    min_rating: float | None = None,
    min_positives: int = 5,
) -> RankingSplit:
    """Strong generalization (Liang et al. 2018): held-out users are scored from 80% of their positives
    (ratings >= ``min_rating``, by default the positive threshold of the data's rating scale)."""
    return _user_heldout(interactions, seed, "strong", n_heldout, min_rating, min_positives)


def temporal(
    interactions: Interactions,
    seed: int = 0,
    *,
    n_heldout: int | None = None,
    min_rating: float | None = None,
    min_positives: int = 5,
) -> RankingSplit:
    """Like ``strong``, but each held-out user's latest 20% (by timestamp) are the targets."""
    return _user_heldout(interactions, seed, "temporal", n_heldout, min_rating, min_positives)


_BUILDERS: dict[str, Callable[..., RatingSplit | RankingSplit]] = {
    "rating-random": rating_random,
    "seed-ranking": seed_ranking,
    "strong": strong,
    "temporal": temporal,
}


def make_split(protocol: str, interactions: Interactions, seed: int = 0, **options) -> RatingSplit | RankingSplit:
    """Split ``interactions`` by the named protocol; ``options`` are that protocol's keyword arguments."""
    if protocol not in _BUILDERS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    builder = _BUILDERS[protocol]
    known = [p.name for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"unknown option(s) for {protocol}: {', '.join(unknown)}; known: {', '.join(known) or 'none'}")
    return builder(interactions, seed, **options)
