"""One contract, every model: the interface behaves the same whatever is behind it.

The data is a small planted structure: two groups of users, each loving its own
block of items (rating 5 / positive) and, for rating models, rating a random
half of the other block 1. Every user of group A has one block-A item withheld:
a model that learnt anything must put it first among the items it may rank.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from errors import UserError
import models
from models.base import ModelInputError
import trainer

N_USERS, N_ITEMS, BLOCK = 60, 24, 12

# Few epochs, small layers: the contract is about behaviour, not quality.
FAST = {
    "autorec-i": dict(epochs=200, hidden=32, lr=1e-2, weight_decay=0.01),
    "autorec-u": dict(epochs=200, hidden=32, lr=1e-2, weight_decay=0.01),
    "deeprec": dict(epochs=200, layers=(32, 16), dropout=0.0, optimizer="adam", lr=1e-2),
    "cdae": dict(epochs=200, hidden=16, lr=1e-2),
    "multvae": dict(epochs=60, dims=(32, 8), batch_size=16),
    "multdae": dict(epochs=60, dims=(32,), batch_size=16),
    "svae": dict(epochs=40, item_embed_size=16, rnn_size=16, hidden_size=16, latent_size=8, lr=1e-2, batch_size=8),
    "ease": dict(),
    "edlae": dict(),
    "recvae": dict(epochs=40, hidden=32, latent=8, batch_size=16, lr=1e-2),
}
NAMES = list(models.REGISTRY)


def planted(task: str) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """(train matrix, timestamps, withheld item per user or -1)."""
    rng = np.random.default_rng(7)
    dense = np.zeros((N_USERS, N_ITEMS), dtype=np.float32)
    group = np.arange(N_USERS) % 2  # 0 -> block A (items 0..11), 1 -> block B (12..23)
    for g in (0, 1):
        own = slice(g * BLOCK, (g + 1) * BLOCK)
        dense[group == g, own] = 5.0
        if task == "rating":
            other = np.arange((1 - g) * BLOCK, (2 - g) * BLOCK)
            for u in np.flatnonzero(group == g):
                dense[u, rng.choice(other, BLOCK // 2, replace=False)] = 1.0
    withheld = np.full(N_USERS, -1)
    a_users = np.flatnonzero(group == 0)
    withheld[a_users] = rng.integers(0, BLOCK, size=len(a_users))
    dense[a_users, withheld[a_users]] = 0.0
    if task == "ranking":
        dense = (dense > 0).astype(np.float32)
    X = sp.csr_matrix(dense)
    ts = X.copy()
    ts.data = rng.permutation(X.nnz).astype(np.float64) + 1.0
    return X, ts, withheld


@pytest.fixture(scope="module", params=NAMES)
def fitted(request):
    name = request.param
    cls = models.REGISTRY[name]
    X, ts, withheld = planted(cls.task)
    model, log = trainer.fit(name, X, timestamps=ts, seed=0, progress=False, holdout=0, **FAST[name])
    return name, model, X, ts, withheld, log


def test_registry_names():
    assert set(models.REGISTRY) == {"autorec-i", "autorec-u", "deeprec", "cdae", "multvae", "recvae", "multdae", "svae",
                                     "ease", "edlae"}
    for name, cls in models.REGISTRY.items():
        assert cls.name == name
        assert cls.task in ("rating", "ranking")
        assert cls.Config.__dataclass_params__.frozen


def test_recommend_shapes_and_order(fitted):
    name, model, X, ts, _, _ = fitted
    ids, scores = model.recommend(X[:5], k=7, users=np.arange(5), timestamps=ts[:5])
    assert ids.shape == (5, 7) and scores.shape == (5, 7)
    assert ids.dtype.kind == "i" and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 0), "best first"


def test_seen_items_excluded(fitted):
    name, model, X, ts, _, _ = fitted
    ids, _ = model.recommend(X, k=N_ITEMS, users=np.arange(N_USERS), timestamps=ts)
    for u in range(N_USERS):
        seen = set(X[u].indices)
        returned = set(ids[u][ids[u] >= 0])
        assert not (seen & returned)
        assert returned == set(range(N_ITEMS)) - seen, "every unseen item is returned when k covers them"


def test_exclude_and_candidates(fitted):
    name, model, X, ts, withheld, _ = fitted
    u = int(np.flatnonzero(withheld >= 0)[0])
    rows, users = X[u : u + 1], np.array([u])
    ids, _ = model.recommend(rows, k=3, users=users, exclude=np.array([withheld[u]]), timestamps=ts[u : u + 1])
    assert withheld[u] not in ids[0]
    cand = np.array([withheld[u], (withheld[u] + 1) % N_ITEMS])
    ids, scores = model.recommend(rows, k=3, users=users, exclude_seen=False, candidates=cand, timestamps=ts[u : u + 1])
    assert set(ids[0][:2]) == set(cand) and ids[0][2] == -1 and scores[0][2] == -np.inf


def test_planted_item_ranks_first(fitted):
    name, model, X, ts, withheld, _ = fitted
    a_users = np.flatnonzero(withheld >= 0)
    ids, _ = model.recommend(X[a_users], k=1, users=a_users, timestamps=ts[a_users])
    hit_rate = np.mean(ids[:, 0] == withheld[a_users])
    assert hit_rate >= 0.9, f"{name}: withheld item first for only {hit_rate:.0%} of users"


def test_deterministic_with_seed(fitted):
    name, model, X, ts, _, _ = fitted
    again = trainer.fit(name, X, timestamps=ts, seed=0, progress=False, holdout=0, **FAST[name]).model
    users = np.arange(N_USERS)
    torch.testing.assert_close(model.scores(X, users=users, timestamps=ts), again.scores(X, users=users, timestamps=ts))


def test_save_load_identical(fitted, tmp_path):
    name, model, X, ts, _, _ = fitted
    model.save(tmp_path / name)
    loaded = models.load(tmp_path / name)
    assert type(loaded) is type(model) and loaded.config == model.config
    users = np.arange(N_USERS)
    ids_a, s_a = model.recommend(X, k=5, users=users, timestamps=ts)
    ids_b, s_b = loaded.recommend(X, k=5, users=users, timestamps=ts)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(s_a, s_b)


@pytest.mark.parametrize("name", ["autorec-i", "autorec-u", "deeprec"])
def test_a_rating_model_saved_before_bias_centring_loads_and_predicts_as_before(name, tmp_path):
    """A model.json written before ``center`` existed (I-AutoRec) or held a bool (U-AutoRec, DeepRec)
    rebuilds the network it trained, with no bias model (whose buffers such a save lacks)."""
    X, _, _ = planted("rating")
    for saved, center in ((None, "none"), (True, "user"), (False, "none")):
        if saved is not None and name == "autorec-i":
            continue  # I-AutoRec never had a bool ``center``
        model = trainer.fit(name, X, seed=0, progress=False, holdout=0, **{**FAST[name], "epochs": 3},
                            center=center).model
        model.save(tmp_path / name)
        meta_file = tmp_path / name / "model.json"
        meta = json.loads(meta_file.read_text())
        if saved is None:
            del meta["config"]["center"]
        else:
            meta["config"]["center"] = saved
        meta_file.write_text(json.dumps(meta))
        loaded = models.load(tmp_path / name)
        assert loaded.config.center == center and loaded.offset is None
        users = np.arange(N_USERS)
        items = np.arange(N_USERS) % N_ITEMS  # one pair a row
        np.testing.assert_array_equal(loaded.predict(X, items, users=users), model.predict(X, items, users=users))
        torch.testing.assert_close(loaded.scores(X, users=users), model.scores(X, users=users))


def test_training_is_finite(fitted):
    name, model, X, ts, _, log = fitted
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), key
    assert log["fit_seconds"] > 0


def test_fold_in_or_clear_refusal(fitted):
    name, model, X, ts, withheld, _ = fitted
    new_user = X[0].copy()  # a user with the same taste, unknown to the model
    if model.can_fold_in:
        ids, scores = model.recommend(new_user, k=3, timestamps=ts[0])
        assert np.isfinite(scores).all()
        np.testing.assert_array_equal(model.recommend(new_user, k=3, users=np.array([-1]), timestamps=ts[0])[0], ids)
    else:
        with pytest.raises(ModelInputError, match="cannot fold in"):
            model.recommend(new_user, k=3)
        for unknown in (-1, N_USERS + 5):
            with pytest.raises(ModelInputError, match=f"cannot fold in new users: it was not trained on user index {unknown}"):
                model.recommend(new_user, k=3, users=np.array([unknown]))


def test_what_a_model_does_not_read_is_ignored(fitted):
    """Callers pass every model the users and timestamps they have: a model that does not read the order gives
    the same answers with the timestamps, without them or with others; a sequential one refuses rows without
    them; a user the model did not train on (-1) is the same as none."""
    name, model, X, ts, withheld, _ = fitted
    users, shuffled = np.arange(N_USERS), ts.copy()
    shuffled.data = shuffled.data[::-1].copy()
    ids, scores = model.recommend(X, k=5, users=users, timestamps=ts)
    if model.sequential:
        for call in (lambda: model.recommend(X, k=5, users=users), lambda: model.scores(X, users=users),
                     lambda: model.recommend(X, k=5, users=users, timestamps=ts[:3])):
            with pytest.raises(ModelInputError, match="pass the rows' timestamps"):
                call()
    else:
        for other in (None, shuffled):
            again = model.recommend(X, k=5, users=users, timestamps=other)
            np.testing.assert_array_equal(again[0], ids)
            np.testing.assert_array_equal(again[1], scores)
            torch.testing.assert_close(model.scores(X, users=users, timestamps=other), model.scores(X, users=users, timestamps=ts))
    if model.explainable and not model.sequential:
        explained = model.contributions(X[:1], np.arange(N_ITEMS), users=users[:1], timestamps=ts[:1])
        np.testing.assert_array_equal(model.contributions(X[:1], np.arange(N_ITEMS), users=users[:1]), explained)
    if model.task == "rating":
        items = users % N_ITEMS
        np.testing.assert_array_equal(model.predict(X, items, users=users, timestamps=ts), model.predict(X, items, users=users))
    if model.can_fold_in:
        unknown = np.full(N_USERS, -1)
        for a, b in zip(model.recommend(X, k=5, users=unknown, timestamps=ts), model.recommend(X, k=5, timestamps=ts)):
            np.testing.assert_array_equal(a, b)


def test_rating_predictions_clipped(fitted):
    name, model, X, ts, withheld, _ = fitted
    if model.task != "rating":
        with pytest.raises(ModelInputError):
            model.predict(X[:1], np.array([0]))
        return
    users = np.arange(N_USERS)
    items = np.arange(N_USERS) % N_ITEMS
    pred = model.predict(X, items, users=users)
    assert pred.shape == (N_USERS,)
    assert pred.min() >= 1.0 and pred.max() <= 5.0
    a_users = np.flatnonzero(withheld >= 0)
    liked = model.predict(X[a_users], withheld[a_users], users=a_users)
    assert liked.mean() > 4.0, f"{name}: withheld block item predicted {liked.mean():.2f}"


def test_rating_pairs_score_each_row_once(fitted, monkeypatch):
    name, model, X, ts, withheld, _ = fitted
    if model.task != "rating":
        return
    # pairs in a scrambled order, several items per row, two rows asked about and one not
    pair_rows = np.array([3, 1, 3, 3, 1, 3])
    items = np.array([0, 4, 2, 7, 1, 5]) % N_ITEMS
    users = np.arange(N_USERS)
    one_per_pair = model.predict(X[pair_rows], items, users=pair_rows)
    scored_rows = []
    pair_scores = type(model).pair_scores
    monkeypatch.setattr(type(model), "pair_scores",
                        lambda self, rows, *a, **kw: scored_rows.append(rows.shape[0]) or pair_scores(self, rows, *a, **kw))
    grouped = model.predict(X, items, users=users, pair_rows=pair_rows, batch_rows=1)
    np.testing.assert_allclose(grouped, one_per_pair, rtol=1e-6)
    assert scored_rows == [1, 1], "each distinct row is scored once, in blocks of batch_rows"
    with pytest.raises(ModelInputError, match="outside the"):
        model.predict(X, items, users=users, pair_rows=pair_rows + N_USERS)
    with pytest.raises(ModelInputError, match="pair_rows"):
        model.predict(X, items, users=users, pair_rows=pair_rows[:2])


def test_pair_scores_are_the_score_matrix_read_at_the_pairs(fitted):
    name, model, X, ts, withheld, _ = fitted
    if model.task != "rating":
        return
    users = np.array([7, 2, 9, 0, 4])
    pair_rows, items = torch.tensor([0, 0, 3, 4, 2, 1]), torch.tensor([1, 5, 0, N_ITEMS - 1, 7, 1])
    expected = model.scores(X[users], users=users)[pair_rows, items]
    torch.testing.assert_close(model.pair_scores(X[users], pair_rows, items, users=users), expected)


def _without(row: sp.csr_matrix, item: int) -> sp.csr_matrix:
    keep = row.indices != item
    return sp.csr_matrix((row.data[keep], row.indices[keep], [0, int(keep.sum())]), shape=row.shape)


def test_contributions_are_the_score_drops_of_removing_each_history_item(fitted):
    """``contributions`` (one batched pass; EASE/EDLAE: their exact weights) equals, item by item, the
    drop in each item's score when one history item is removed, computed here one removal at a time;
    so the top-explained history item of each item is the one whose removal lowers its score most."""
    name, model, X, ts, withheld, _ = fitted
    u = int(np.flatnonzero(withheld >= 0)[0])
    row, row_ts, users = X[u : u + 1], ts[u : u + 1], np.array([u])
    items = np.arange(N_ITEMS)
    if not model.explainable:  # AutoRec-I scores by user index: the history given moves nothing
        with pytest.raises(ModelInputError, match="nothing to explain"):
            model.contributions(row, items, users=users)
        return
    history = row.indices
    got = model.contributions(row, items, history=history, users=users, timestamps=row_ts)
    assert got.shape == (N_ITEMS, len(history)) and got.dtype == np.float32
    full = model.scores(row, users=users, timestamps=row_ts)[0].float().cpu().numpy()
    brute = np.empty_like(got)
    for h, j in enumerate(history):
        less = model.scores(_without(row, j), users=users, timestamps=_without(row_ts, j))[0].float().cpu().numpy()
        brute[:, h] = full - less
    np.testing.assert_allclose(got, brute, rtol=1e-4, atol=1e-4)
    assert np.abs(brute).max() > 1e-6, f"{name}: removing history items moved no score"
    top = got.argmax(axis=1)
    np.testing.assert_allclose(brute[items, top], brute.max(axis=1), atol=1e-4)
    # a subset of the history, in any order: the same columns
    some = history[[2, 0]]
    np.testing.assert_allclose(model.contributions(row, items[:3], history=some, users=users, timestamps=row_ts),
                               got[:3][:, [2, 0]], rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelInputError, match="not in the row"):
        model.contributions(row, items, history=np.array([withheld[u]]), users=users, timestamps=row_ts)


def test_wrong_width_rows_rejected(fitted):
    name, model, X, ts, _, _ = fitted
    bad = sp.csr_matrix((2, N_ITEMS + 3), dtype=np.float32)
    with pytest.raises(ModelInputError, match="columns"):
        model.recommend(bad, k=3, users=np.array([0, 1]))
    with pytest.raises(ModelInputError, match="k must be"):
        model.recommend(X[:1], k=0, users=np.array([0]))


@pytest.mark.parametrize("name", NAMES)
def test_empty_matrix_rejected(name):
    empty = sp.csr_matrix((5, 8), dtype=np.float32)
    with pytest.raises(UserError, match="empty"):
        trainer.fit(name, empty, timestamps=empty, progress=False)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hyper_parameter_rejected(name):
    X, ts, _ = planted(models.REGISTRY[name].task)
    with pytest.raises(UserError, match="unknown hyper-parameter.*no_such_knob"):
        trainer.fit(name, X, timestamps=ts, progress=False, no_such_knob=1)
