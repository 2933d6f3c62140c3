"""SVAE: time-ordered sequences, next-k targets, padding, KL annealing, and a planted order learned."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.base import ModelInputError, Recommender, TrainData
import models.svae as svae
from models.rows import DeviceRows, pad_recent
from models.svae import SVAE, SVAEConfig, next_k_targets

TINY = dict(item_embed_size=16, rnn_size=16, hidden_size=16, latent_size=8)


def make(n_items: int = 8, **overrides) -> SVAE:
    torch.manual_seed(0)
    return SVAE(SVAEConfig(**{**TINY, **overrides}), n_items=n_items, n_users=4).eval()


def rows_from(sequences: list[list[int]], n_items: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Binary rows and timestamps 1, 2, 3, ... in the order each sequence lists its items."""
    r = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
    c = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
    t = np.concatenate([np.arange(1, len(s) + 1, dtype=np.float64) for s in sequences])
    shape = (len(sequences), n_items)
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=shape), sp.csr_matrix((t, (r, c)), shape=shape)


def in_order(rows: sp.csr_matrix, ts: sp.csr_matrix | None = None) -> tuple[list[int], list[int]]:
    """(items, indptr) of the rows as a sequential model reads them."""
    on_device = DeviceRows(rows, "cpu", binary=True, timestamps=ts)
    return on_device.indices.tolist(), on_device.indptr.tolist()


def test_rows_in_time_order_sort_by_timestamp_then_item():
    rows = sp.csr_matrix(np.array([[1, 1, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=np.float32))
    ts = sp.csr_matrix(np.array([[30, 10, 20, 10, 0], [0, 0, 0, 0, 0], [0, 5, 0, 4, 0]], dtype=np.float64))
    items, indptr = in_order(rows, ts)
    assert indptr == [0, 4, 4, 6]
    assert items == [1, 3, 2, 0, 3, 1]  # item 1 and 3 tie at t=10: lower index first
    assert in_order(rows)[0] == [0, 1, 2, 3, 1, 3]  # no timestamps: the stored column order
    # a non-positive entry is no interaction, and the timestamps' stored order does not matter
    rows[0, 2] = 0.0
    items, indptr = in_order(rows, sp.csr_matrix(ts.toarray()[:, ::-1])[:, ::-1])
    assert (items, indptr) == ([1, 3, 0, 3, 1], [0, 3, 3, 5])


def test_timestamps_must_match_the_rows_pattern():
    rows, ts = rows_from([[0, 1, 2]], 5)
    wrong = ts.tolil()
    wrong[0, 4] = 9.0
    with pytest.raises(ModelInputError, match="same shape and sparsity pattern"):
        in_order(rows, wrong.tocsr())


def test_pad_recent_keeps_the_latest_items_and_shifts_ids():
    rows = sp.csr_matrix((np.ones(6, np.float32), np.array([4, 0, 2, 7, 5, 1]), np.array([0, 5, 5, 6])), shape=(3, 8))
    batch = DeviceRows(rows, "cpu").between(0, 3)
    assert pad_recent(batch, max_len=3).tolist() == [[3, 8, 6], [0, 0, 0], [2, 0, 0]]  # ids + 1, 0 = padding
    assert pad_recent(batch, max_len=3, width=4).tolist() == [[3, 8, 6, 0], [0, 0, 0, 0], [2, 0, 0, 0]]


def test_next_k_targets_by_hand():
    seq = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]])  # A B C D E and a 2-item user, padded
    targets = next_k_targets(seq, k=2)
    assert targets.tolist() == [
        [[2, 3], [3, 4], [4, 5], [5, 0], [0, 0]],
        [[7, 0], [0, 0], [0, 0], [0, 0], [0, 0]],
    ]


def test_kl_annealing():
    model = make(anneal_cap=0.2, total_anneal_steps=1000)
    assert model.annealing(0, 0) == {"anneal": 0.0}
    assert model.annealing(100, 3)["anneal"] == pytest.approx(0.1)  # linear: step / total_anneal_steps
    assert model.annealing(200, 0) == model.annealing(200, 50)  # the step alone decides
    assert model.annealing(10**6, 0)["anneal"] == pytest.approx(0.2)  # capped
    assert make(anneal_cap=0.3, total_anneal_steps=0).annealing(0, 0)["anneal"] == pytest.approx(0.3)


def test_padding_does_not_leak_into_scores():
    model = make(n_items=12)
    rows, ts = rows_from([[3, 1, 4], [1, 5, 9, 2, 6, 11, 7, 0, 8], [], [10]], 12)
    together = model.scores(rows, timestamps=ts)
    for u in range(rows.shape[0]):
        alone = model.scores(rows[u], timestamps=ts[u])
        torch.testing.assert_close(alone[0], together[u], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(together).all()


def test_scores_are_deterministic_and_read_only_the_last_max_len_items():
    model = make(n_items=12, max_len=3)
    rows, ts = rows_from([[1, 5, 9, 2, 6], [9, 2, 6]], 12)
    torch.testing.assert_close(model.scores(rows, timestamps=ts), model.scores(rows, timestamps=ts))
    s = model.scores(rows, timestamps=ts)
    torch.testing.assert_close(s[0], s[1])  # [.., 9, 2, 6] truncated to its 3 latest


@pytest.mark.parametrize("selects", [True, False], ids=["steps selected (CPU)", "steps weighed (GPU)"])
def test_loss_counts_only_steps_with_a_next_item(monkeypatch, selects):
    monkeypatch.setattr(svae, "SELECTS_STEPS", ("cpu",) if selects else ())
    model = make(n_items=6, dropout=0.0).train()  # dropout masks would depend on the batch's shape
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)  # and so would the draws of z: z = mu
    batch = torch.tensor([[1, 2, 3], [4, 0, 0]])  # user 2 has one item: no step to predict from
    loss_pair = model.loss(batch, anneal=1.0)
    loss_single = model.loss(batch[:1], anneal=1.0)
    torch.testing.assert_close(loss_pair, loss_single)
    padded = model.loss(torch.tensor([[1, 2, 3, 0, 0]]), anneal=1.0)  # padding carries no loss either
    torch.testing.assert_close(padded, loss_single)
    monkeypatch.setattr(svae, "SELECTS_STEPS", () if selects else ("cpu",))
    torch.testing.assert_close(model.loss(batch, anneal=1.0), loss_pair)  # both ways give the same loss


def test_dropout_acts_in_training_only():
    model = make(n_items=12, dropout=0.5)
    rows, ts = rows_from([[3, 1, 4, 0, 5], [9, 2, 6]], 12)
    seqs = torch.tensor([[4, 2, 5, 6], [10, 3, 7, 0]])
    torch.testing.assert_close(model._gru_states(seqs), model._gru_states(seqs))
    assert not torch.allclose(model._gru_states(seqs, train=True), model._gru_states(seqs))
    evaluated = model.scores(rows, timestamps=ts)
    torch.testing.assert_close(model.train().scores(rows, timestamps=ts), evaluated)  # scoring never drops


def test_training_batches_skip_single_item_users_and_follow_time():
    model = make(n_items=6, batch_size=10)
    X, ts = rows_from([[5, 0, 3], [2], [4, 1]], 6)
    batches = list(model.training_batches(TrainData(X, ts), np.random.default_rng(0)))
    assert len(batches) == 1
    assert sorted(map(tuple, batches[0].tolist())) == [(5, 2, 0), (6, 1, 4)]  # ids + 1, time order, padded



def test_an_epoch_of_sequences_is_what_scipy_and_numpy_give():
    """Every user with 2+ items once per epoch: the last max_len of their items in time order
    (ties by item), ids + 1, right-padded to the batch's longest; each batch's users of similar length."""
    rng = np.random.default_rng(7)
    X = sp.random(40, 30, density=0.25, format="csr", random_state=7, dtype=np.float32)
    X.data[:] = 1.0
    ts = X.copy()
    ts.data = rng.integers(0, 20, X.nnz).astype(np.float64)  # repeated times: ties broken by item
    model = make(n_items=30, batch_size=6, max_len=5)
    expected = []
    for u in range(X.shape[0]):
        items, times = X[u].indices, ts[u].toarray()[0, X[u].indices]
        if len(items) >= 2:
            expected.append(tuple((items[np.lexsort((items, times))][-5:] + 1).tolist()))
    got, widths = [], []
    for batch in model.training_batches(TrainData(X, ts), np.random.default_rng(0)):
        lengths = (batch > 0).sum(1)
        assert batch.shape[1] == int(lengths.max())  # padded to the batch's longest, no wider
        widths.append((int(lengths.min()), int(lengths.max())))
        got += [tuple(row[row > 0].tolist()) for row in batch]
        assert all((row[: int(n)] > 0).all() for row, n in zip(batch, lengths))  # padding only on the right
    assert sorted(got) == sorted(expected)
    widths.sort()
    assert all(shorter[1] <= longer[0] for shorter, longer in zip(widths, widths[1:]))  # bucketed by length

def test_a_planted_order_is_learned():
    """Half the users watch A, B, C; the other half B, A, D. After [A, B] comes C; after [B, A], D."""
    A, B, C, D, n_items = 0, 1, 2, 3, 10
    rng = np.random.default_rng(0)
    filler = [[int(i)] for i in rng.integers(4, n_items, 40)]  # unrelated short histories
    X, ts = rows_from([[A, B, C]] * 60 + [[B, A, D]] * 60 + [[f[0], (f[0] + 1) % 6 + 4] for f in filler], n_items)
    torch.manual_seed(0)
    config = SVAEConfig(**TINY, lr=1e-2, batch_size=16, total_anneal_steps=200)
    model = SVAE(config, n_items=n_items, n_users=X.shape[0])
    optimizer = model.configure_optimizer()
    rng, step = np.random.default_rng(0), 0
    for epoch in range(25):
        model.train()
        for batch in model.training_batches(TrainData(X, ts), rng):
            model.train_step(batch, optimizer, **model.annealing(step, epoch))
            step += 1
    model.eval()

    rows = sp.csr_matrix(np.array([[1, 1] + [0] * (n_items - 2)], dtype=np.float32))
    a_then_b = sp.csr_matrix(np.array([[1.0, 2.0] + [0] * (n_items - 2)]))
    b_then_a = sp.csr_matrix(np.array([[2.0, 1.0] + [0] * (n_items - 2)]))
    ids, _ = model.recommend(rows, k=1, timestamps=a_then_b)
    assert ids[0, 0] == C
    ids, _ = model.recommend(rows, k=1, timestamps=b_then_a)
    assert ids[0, 0] == D
    assert not torch.allclose(model.scores(rows, timestamps=a_then_b), model.scores(rows, timestamps=b_then_a))


def random_row(rng: np.random.Generator, n_items: int, length: int, ties: bool) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """One row of ``length`` items: ratings with some non-positive (not read), timestamps with repeats (ties
    broken by item) or distinct, stored in a random column order."""
    items = rng.choice(n_items, length, replace=False)
    values = rng.choice(np.array([-1.0, 1.0, 4.0, 5.0], dtype=np.float32), length, p=[0.15, 0.25, 0.3, 0.3])
    times = rng.integers(0, max(2, length // 3), length) if ties else rng.permutation(length)
    zeros = np.zeros(length, dtype=np.int64)
    shape = (1, n_items)
    return sp.csr_matrix((values, (zeros, items)), shape=shape), sp.csr_matrix((times.astype(np.float64) + 1, (zeros, items)), shape=shape)


@pytest.mark.parametrize("length", [1, 2, 5, 6, 7, 13, 30])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct times", "tied times"])
def test_contributions_are_the_generic_removals(length, ties):
    """SVAE's contributions (each removal restarts from the state before it) equal the base class's,
    which scores every shortened row from its start: rows shorter than, as long as, one longer than and
    far longer than max_len (removing a window item lets an older one in), with non-positive entries
    (not read: they move nothing) and a history given in any order, repeats included."""
    rng = np.random.default_rng(length * 2 + ties)
    model = make(n_items=40, max_len=6)
    row, ts = random_row(rng, 40, length, ties)
    items = rng.permutation(40)[:11]
    for history in (None, rng.permutation(row.indices)[: max(1, length // 2)], row.indices[[0, 0]]):
        got = model.contributions(row, items, history=history, timestamps=ts)
        generic = Recommender.contributions(model, row, items, history=history, timestamps=ts)
        assert got.shape == generic.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, generic, rtol=1e-5, atol=1e-6)


def test_contributions_of_items_older_than_the_window_are_exactly_zero():
    """Removing an item older than the last max_len leaves the window as it was (drop 0, not a rounding
    error); removing the oldest item of the window lets the one before it in (a real drop)."""
    model = make(n_items=20, max_len=3)
    row, ts = rows_from([[4, 9, 1, 7, 2, 5]], 20)  # window: 7, 2, 5
    got = model.contributions(row, np.arange(20), history=np.array([4, 9, 1, 7]), timestamps=ts)
    assert (got[:, :3] == 0).all() and np.abs(got[:, 3]).max() > 1e-6
    shifted, shifted_ts = rows_from([[1, 2, 5]], 20)
    full = model.scores(row, timestamps=ts)[0].numpy()
    np.testing.assert_allclose(got[:, 3], full - model.scores(shifted, timestamps=shifted_ts)[0].numpy(), atol=1e-6)


def test_contributions_of_an_empty_history_or_list():
    model = make(n_items=10)
    row, ts = rows_from([[3, 1, 4]], 10)
    assert model.contributions(row, np.arange(10), history=np.array([], dtype=np.int64), timestamps=ts).shape == (10, 0)
    assert model.contributions(row, np.array([], dtype=np.int64), timestamps=ts).shape == (0, 3)
    empty = sp.csr_matrix((1, 10), dtype=np.float32)
    assert model.contributions(empty, np.arange(10), timestamps=sp.csr_matrix((1, 10))).shape == (10, 0)
    negative = sp.csr_matrix(np.array([[0, -1.0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32))  # stored, not a positive
    assert (model.contributions(negative, np.arange(10), timestamps=sp.csr_matrix(np.eye(1, 10, 1))) == 0).all()


def test_contributions_need_the_rows_timestamps():
    model = make(n_items=10)
    row, ts = rows_from([[3, 1, 4]], 10)
    for wrong in (None, rows_from([[3, 1]], 10)[1]):
        for contributions in (model.contributions, lambda *a, **k: Recommender.contributions(model, *a, **k)):
            with pytest.raises(ModelInputError, match="pass the rows' timestamps"):
                contributions(row, np.arange(10), timestamps=wrong)
