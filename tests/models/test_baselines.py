"""Baselines: the math against plain references, fold-in, cold start, and the shared Recommender contract."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import models
from models.base import ModelInputError, TrainData
from models.baselines import BASELINES, GlobalMean, Popularity, UserItemBias, fit_baseline


def random_ratings(n_users: int = 30, n_items: int = 20, density: float = 0.3, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    values = rng.integers(1, 6, size=(n_users, n_items)).astype(np.float32)
    return sp.csr_matrix(np.where(mask, values, 0.0).astype(np.float32))


def reference_als(X: sp.csr_matrix, reg_i: float, reg_u: float, n_iters: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Surprise BaselineOnly's ALS, one rating at a time."""
    dense = X.toarray()
    rated = dense != 0
    mu = dense[rated].mean()
    b_u, b_i = np.zeros(X.shape[0]), np.zeros(X.shape[1])
    for _ in range(n_iters):
        for i in range(X.shape[1]):
            users = np.flatnonzero(rated[:, i])
            b_i[i] = sum(dense[u, i] - mu - b_u[u] for u in users) / (reg_i + len(users))
        for u in range(X.shape[0]):
            items = np.flatnonzero(rated[u])
            b_u[u] = sum(dense[u, i] - mu - b_i[i] for i in items) / (reg_u + len(items))
    return mu, b_u, b_i


def test_baselines_are_listed_apart_from_the_autoencoders():
    assert set(BASELINES) == {"global-mean", "bias", "popularity"}
    for name, cls in BASELINES.items():
        assert cls.name == name and cls.closed_form and cls.can_fold_in
        assert cls.Config.__dataclass_params__.frozen
    assert GlobalMean.task == UserItemBias.task == "rating" and Popularity.task == "ranking"


def test_global_mean_predicts_the_mean_rating():
    X = random_ratings()
    model = fit_baseline("global-mean", TrainData(X))
    users = np.array([0, 5, 9])
    predicted = model.predict(X[users], np.array([1, 2, 3]))
    np.testing.assert_allclose(predicted, np.full(3, X.data.mean()), rtol=1e-6)


def test_bias_matches_the_reference_als_and_folds_in_the_trained_user_bias():
    X = random_ratings()
    model = fit_baseline("bias", TrainData(X), reg_items=3.0, reg_users=5.0, n_iters=4)
    mu, b_u, b_i = reference_als(X, 3.0, 5.0, 4)
    assert float(model.mean) == pytest.approx(mu, rel=1e-6)
    np.testing.assert_allclose(model.item_bias.numpy(), b_i, rtol=1e-5, atol=1e-6)
    # a training row given back yields exactly its trained user bias (the last ALS step)
    np.testing.assert_allclose(model.user_bias(X), b_u, rtol=1e-5, atol=1e-6)
    scores = model.scores(X).numpy()
    np.testing.assert_allclose(scores, mu + b_u[:, None] + b_i[None, :], rtol=1e-5, atol=1e-5)


def test_bias_new_user_and_unseen_item():
    dense = random_ratings().toarray()
    dense[:, 7] = 0.0  # nobody rated item 7
    X = sp.csr_matrix(dense)
    model = fit_baseline("bias", TrainData(X))
    assert float(model.item_bias[7]) == 0.0
    empty = sp.csr_matrix((1, X.shape[1]), dtype=np.float32)
    np.testing.assert_allclose(model.scores(empty).numpy()[0], float(model.mean) + model.item_bias.numpy(), rtol=1e-6)
    new_user = sp.csr_matrix(([5.0, 5.0], ([0, 0], [1, 2])), shape=(1, X.shape[1]), dtype=np.float32)
    expected_bu = (10.0 - 2 * float(model.mean) - float(model.item_bias[1] + model.item_bias[2])) / (15.0 + 2)
    assert model.user_bias(new_user)[0] == pytest.approx(expected_bu, rel=1e-5)


def test_bias_predictions_are_clipped_to_the_rating_range():
    X = sp.csr_matrix(np.array([[5, 5, 5, 0], [5, 5, 5, 1], [1, 1, 0, 1]], dtype=np.float32))
    model = fit_baseline("bias", TrainData(X), reg_items=1e-3, reg_users=1e-3)
    raw = model.scores(X).numpy()
    assert raw.max() > 5.0 or raw.min() < 1.0  # the unclipped sum leaves the range here
    predicted = model.predict(X, np.array([0, 0, 3]))
    assert (predicted <= 5.0).all() and (predicted >= 1.0).all()


def test_popularity_ranks_by_count_then_item_index_and_serves_cold_start():
    X = sp.csr_matrix(np.array([[1, 1, 0, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=np.float32))
    model = fit_baseline("popularity", TrainData(X, rating_range=(0.0, 1.0)))
    np.testing.assert_array_equal(model.item_counts.numpy(), [2, 3, 1, 2, 0])
    cold = sp.csr_matrix((2, 5), dtype=np.float32)
    ids, _ = model.recommend(cold, k=5)
    np.testing.assert_array_equal(ids, [[1, 0, 3, 2, 4]] * 2)  # items 0 and 3 tie: the lower index first
    ids, _ = model.recommend(X[[1]], k=5)  # seen items 1 and 3 excluded, the tail padded
    np.testing.assert_array_equal(ids, [[0, 2, 4, -1, -1]])
    with pytest.raises(ModelInputError, match="does not predict ratings"):
        model.predict(X, np.zeros(4, dtype=np.int64))


def test_solve_leaves_the_callers_matrix_alone_and_refuses_bad_data():
    X = random_ratings()
    X.data[:3] = 0.0  # stored zeros: no interaction, and they must stay stored in the caller's matrix
    before = X.copy()
    for name in BASELINES:
        fit_baseline(name, TrainData(X))
    assert X.nnz == before.nnz and (X != before).nnz == 0
    with pytest.raises(ModelInputError, match="no interactions"):
        fit_baseline("bias", TrainData(sp.csr_matrix((3, 4), dtype=np.float32)))
    model = fit_baseline("global-mean", TrainData(X))
    with pytest.raises(ModelInputError, match="columns"):
        model.recommend(sp.csr_matrix((1, 3), dtype=np.float32), k=2)
    with pytest.raises(ModelInputError, match="reg_items"):
        fit_baseline("bias", TrainData(X), reg_items=0.0)
    with pytest.raises(ModelInputError, match="unknown hyper-parameter"):
        fit_baseline("bias", TrainData(X), lr=0.1)
    with pytest.raises(ModelInputError, match="unknown baseline"):
        fit_baseline("ease", TrainData(X))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_save_and_load_give_the_same_model(name, tmp_path):
    X = random_ratings(seed=1)
    model = fit_baseline(name, TrainData(X, rating_range=(1.0, 5.0)))
    model.save(tmp_path / name)
    loaded = models.load(tmp_path / name)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.rating_range == model.rating_range
    torch.testing.assert_close(loaded.scores(X[:5]), model.scores(X[:5]))
    ids_a, _ = model.recommend(X[:5], k=4)
    ids_b, _ = loaded.recommend(X[:5], k=4)
    np.testing.assert_array_equal(ids_a, ids_b)


def test_recommend_on_tied_scores_is_repeatable():
    # Global mean scores every item alike: torch.topk settles the tie, in its own order,
    # and must settle it the same way every time for the same input.
    X = random_ratings(n_items=60)
    model = fit_baseline("global-mean", TrainData(X))
    first, _ = model.recommend(X, k=20)
    again, _ = model.recommend(X.copy(), k=20)
    np.testing.assert_array_equal(first, again)
    assert all(not set(first[u]) & set(X[u].indices) for u in range(X.shape[0]))  # seen items still excluded
