"""Protocols on ml-100k: sizes as specified, seeded, and no held-out interaction leaks into training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from errors import DataError, UserError
from interactions import Interactions
from rating_scale import RatingScale
from trainer.protocols import PROTOCOLS, make_split, protocol_ks, rating_random, seed_ranking, strong, temporal
from trainer.protocols import HeldOut, RankingSplit, RatingSplit

from tests.trainer._ml100k import ml100k


def keys(matrix: sp.csr_matrix, row_users: np.ndarray, item_ids: np.ndarray, n_items: int) -> np.ndarray:
    """The (dataset user, dataset item) pairs stored in ``matrix``, as sorted user * n_items + item keys."""
    coo = sp.coo_matrix(matrix)
    coo = sp.coo_matrix((coo.data[coo.data != 0], (coo.row[coo.data != 0], coo.col[coo.data != 0])), shape=coo.shape)
    return np.sort(row_users[coo.row].astype(np.int64) * n_items + item_ids[coo.col])


def heldout_keys(held: HeldOut, split: RankingSplit, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    return keys(held.inputs, held.users, split.item_ids, n_items), keys(held.targets, held.users, split.item_ids, n_items)


def positives(data: Interactions, min_rating: float) -> dict[int, np.ndarray]:
    keep = data.ratings >= min_rating
    users, items = data.users[keep], data.items[keep]
    return {u: np.sort(items[users == u]) for u in np.unique(users)}


@pytest.fixture(scope="module")
def data(ml100k_dir) -> Interactions:
    return ml100k(ml100k_dir)


# ---- rating-random ----------------------------------------------------------------------
def test_rating_random_sizes_disjoint_and_complete(data):
    split = rating_random(data, seed=0)
    assert isinstance(split, RatingSplit) and split.rating_range == (1.0, 5.0)
    assert (split.test.nnz, split.valid.nnz, split.train.nnz) == (10_000, 4_500, 85_500)
    shape = (data.n_users, data.n_items)
    assert split.train.shape == split.valid.shape == split.test.shape == shape
    rows = np.arange(data.n_users)
    parts = [keys(m, rows, np.arange(data.n_items), data.n_items) for m in (split.train, split.valid, split.test)]
    everything = np.concatenate(parts)
    assert np.unique(everything).size == everything.size == len(data)  # disjoint, and nothing lost
    total = split.train + split.valid + split.test
    np.testing.assert_array_equal(total.toarray(), data.matrix("rating").toarray())  # ratings kept


def test_rating_random_is_seeded(data):
    a, b, c = rating_random(data, seed=1), rating_random(data, seed=1), rating_random(data, seed=2)
    assert (a.test != b.test).nnz == 0 and (a.valid != b.valid).nnz == 0
    assert (a.test != c.test).nnz > 0


# ---- seed-ranking -------------------------------------------------------------------------
def test_seed_ranking_fractions_and_no_leak(data):
    split = seed_ranking(data, seed=0)
    n_items = data.n_items
    n = np.bincount(data.users, minlength=data.n_users)
    n_test = np.diff(split.test.targets.indptr)
    np.testing.assert_array_equal(n_test, n - (8 * n) // 10)  # n - int(0.8 n), in exact integers
    train_part = n - n_test
    np.testing.assert_array_equal(np.diff(split.valid.targets.indptr), train_part - (8 * train_part) // 10)
    np.testing.assert_array_equal(split.train_users, np.arange(data.n_users))
    np.testing.assert_array_equal(split.test.train_rows, np.arange(data.n_users))

    all_rows = np.arange(data.n_users)
    item_ids = split.item_ids
    train = keys(split.train, split.train_users, item_ids, n_items)
    valid_in, valid_t = heldout_keys(split.valid, split, n_items)
    test_in, test_t = heldout_keys(split.test, split, n_items)
    for held in (valid_t, test_t):
        assert not np.isin(held, train).any()
    assert not np.isin(test_t, valid_in).any() and not np.isin(test_t, test_in).any()
    assert not np.isin(valid_t, valid_in).any() and not np.isin(valid_t, test_t).any()
    np.testing.assert_array_equal(valid_in, train)  # model selection folds in exactly the train rows
    np.testing.assert_array_equal(test_in, np.union1d(train, valid_t))  # test folds in the whole train part
    everything = np.concatenate([train, valid_t, test_t])
    np.testing.assert_array_equal(np.sort(everything), keys(data.matrix("binary"), all_rows, np.arange(n_items), n_items))
    assert set(np.unique(split.train.data)) == {1.0}
    assert split.test.input_timestamps is not None
    np.testing.assert_array_equal(split.test.input_timestamps.indices, split.test.inputs.indices)


def test_seed_ranking_is_seeded(data):
    a, b, c = seed_ranking(data, seed=4), seed_ranking(data, seed=4), seed_ranking(data, seed=5)
    assert (a.test.targets != b.test.targets).nnz == 0 and (a.valid.targets != b.valid.targets).nnz == 0
    assert (a.test.targets != c.test.targets).nnz > 0


# ---- strong -------------------------------------------------------------------------------
def test_strong_users_items_and_fractions(data):
    split = strong(data, seed=0)
    n_items = data.n_items
    pos = positives(data, 4.0)
    eligible = {u for u, items in pos.items() if len(items) >= 5}
    valid_users, test_users, train_users = set(split.valid.users), set(split.test.users), set(split.train_users)
    assert len(valid_users) == len(test_users) == 100
    assert not (valid_users & test_users) and not (train_users & (valid_users | test_users))
    assert train_users | valid_users | test_users == eligible
    assert (split.valid.train_rows == -1).all() and (split.test.train_rows == -1).all()

    # the columns are exactly the items of the train users' positives
    train_items = np.unique(np.concatenate([pos[u] for u in split.train_users]))
    np.testing.assert_array_equal(split.item_ids, train_items)
    assert (split.train.getnnz(axis=0) > 0).all()
    np.testing.assert_array_equal(keys(split.train, split.train_users, split.item_ids, n_items),
                                  np.sort(np.concatenate([u * n_items + pos[u] for u in split.train_users])))

    for held in (split.valid, split.test):
        assert held.inputs.shape == held.targets.shape == (100, len(split.item_ids))
        assert held.inputs.multiply(held.targets).nnz == 0
        for row, user in enumerate(held.users):
            kept = np.intersect1d(pos[user], train_items)  # dropped items are gone, the rest all here
            got = np.union1d(split.item_ids[held.inputs[row].indices], split.item_ids[held.targets[row].indices])
            np.testing.assert_array_equal(got, kept)
            n = len(kept)
            assert held.targets[row].nnz == (int(0.2 * n) if n >= 5 else 0)


def test_strong_no_leak_into_training(data):
    split = strong(data, seed=3)
    n_items = data.n_items
    train = keys(split.train, split.train_users, split.item_ids, n_items)
    for held in (split.valid, split.test):
        inputs, targets = heldout_keys(held, split, n_items)
        assert not np.isin(targets, train).any() and not np.isin(inputs, train).any()
        assert not np.isin(targets, inputs).any()
    held_users = np.concatenate([split.valid.users, split.test.users])
    assert not np.isin(held_users, split.train_users).any()


def test_strong_is_seeded_and_seeds_differ(data):
    a, b, c = strong(data, seed=7), strong(data, seed=7), strong(data, seed=8)
    np.testing.assert_array_equal(a.test.users, b.test.users)
    assert (a.test.targets != b.test.targets).nnz == 0 and (a.train != b.train).nnz == 0
    assert not np.array_equal(np.sort(a.test.users), np.sort(c.test.users))


def test_strong_min_rating_is_configurable(data):
    split = strong(data, seed=0, min_rating=1.0, n_heldout=50)
    assert len(split.test.users) == 50
    assert split.train.nnz == np.isin(data.users, split.train_users).sum()  # every rating is a positive
    assert split.train.nnz > strong(data, seed=0, n_heldout=50).train.nnz


def test_strong_takes_its_positives_from_the_datas_declared_scale_by_default(data):
    assert (strong(data, seed=0).train != strong(data, seed=0, min_rating=4.0).train).nnz == 0  # 1:5:1 says 4
    lenient = dataclasses.replace(data, rating_scale=RatingScale.parse("1:5:1", 3.0))
    assert (strong(lenient, seed=0).train != strong(data, seed=0, min_rating=3.0).train).nnz == 0


# ---- temporal ---------------------------------------------------------------------------
def test_temporal_targets_are_each_users_latest_fifth(data):
    split = temporal(data, seed=0)
    when = data.matrix("timestamp")
    cols = split.item_ids
    assert split.test.input_timestamps is not None and split.train_timestamps is not None
    for held in (split.valid, split.test):
        for row, user in enumerate(held.users):
            inputs, targets = held.inputs[row].indices, held.targets[row].indices
            n = inputs.size + targets.size
            assert targets.size == (n - int(0.8 * n) if n >= 5 else 0)
            stamps_in = np.asarray(when[user, cols[inputs]].todense()).ravel()
            stamps_t = np.asarray(when[user, cols[targets]].todense()).ravel()
            if targets.size:
                assert stamps_t.min() >= stamps_in.max()
                # at the boundary second, ties go by item index: an input never follows a target
                boundary = stamps_t.min()
                if (stamps_in == boundary).any():
                    assert cols[inputs][stamps_in == boundary].max() < cols[targets][stamps_t == boundary].min()
            ts_row = held.input_timestamps[row]
            np.testing.assert_array_equal(ts_row.indices, inputs)
            np.testing.assert_array_equal(ts_row.data, stamps_in)
    train = keys(split.train, split.train_users, cols, data.n_items)
    inputs, targets = heldout_keys(split.test, split, data.n_items)
    assert not np.isin(targets, train).any() and not np.isin(targets, inputs).any()


def test_temporal_needs_timestamps(data):
    no_time = Interactions(data.users, data.items, data.ratings, None, data.user_ids, data.item_ids, name="ml-100k")
    with pytest.raises(DataError, match="timestamps"):
        temporal(no_time, seed=0)
    assert strong(no_time, seed=0).test.input_timestamps is None


# ---- dispatcher and errors --------------------------------------------------------------
def tiny(n_users: int = 40, name: str = "tiny") -> Interactions:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_users), 8).astype(np.int32)
    items = np.concatenate([rng.choice(30, 8, replace=False) for _ in range(n_users)]).astype(np.int32)
    return Interactions(
        users, items, np.full(users.size, 5.0, np.float32), np.arange(users.size, dtype=np.int64),
        np.arange(n_users), np.arange(30), name=name,
    )


def test_make_split_dispatches_and_checks_options(data):
    assert PROTOCOLS == ("rating-random", "seed-ranking", "strong", "temporal")
    for protocol in PROTOCOLS:
        split = make_split(protocol, tiny(), seed=0)
        assert split.protocol == protocol and split.seed == 0
    assert len(make_split("strong", tiny(), seed=0).test.users) == 4  # 10% of 40 eligible users
    assert len(make_split("strong", tiny(), seed=0, n_heldout=7).test.users) == 7
    assert len(make_split("strong", tiny(3), seed=0).test.users) == 1  # at least one
    with pytest.raises(UserError, match="unknown protocol 'bogus'"):
        make_split("bogus", data, seed=0)
    with pytest.raises(UserError, match="unknown option.*n_heldout"):
        make_split("rating-random", data, seed=0, n_heldout=3)
    with pytest.raises(UserError, match="test_fraction"):
        make_split("rating-random", data, seed=0, test_fraction=1.5)
    with pytest.raises(DataError, match="eligible users"):
        make_split("strong", tiny(), seed=0, n_heldout=20)
    with pytest.raises(DataError, match="rating >= 6"):
        make_split("strong", tiny(), seed=0, min_rating=6)
    assert protocol_ks("strong") == (20, 50, 100) and protocol_ks("temporal") == (10, 20, 50, 100)
