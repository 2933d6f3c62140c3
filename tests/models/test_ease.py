"""EASE: the closed form of Steck (2019) against a direct numpy solve, its zero diagonal and its options."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from interactions.movielens import read_dataset
from models.base import ModelInputError, Recommender, TrainData, build_config
from models.baselines import fit_baseline
from models.ease import EASE, EASEConfig
import trainer
from trainer.evaluation import evaluate_ranking
from trainer.protocols import make_split


def random_clicks(n_users: int = 40, n_items: int = 15, density: float = 0.3, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32))


def numpy_ease(X: np.ndarray, lam: float) -> np.ndarray:
    """Steck's equation written out: B = I - P diagMat(1 / diag(P)), P = (X^T X + lam I)^-1."""
    P = np.linalg.inv(X.T @ X + lam * np.eye(X.shape[1]))
    return np.eye(X.shape[1]) - P @ np.diag(1.0 / np.diag(P))


def solved(X: sp.csr_matrix, **overrides) -> EASE:
    model = EASE(build_config(EASEConfig, overrides), n_items=X.shape[1], n_users=X.shape[0])
    model.solve(TrainData(X))
    return model.eval()


def test_closed_form_matches_direct_solve_in_float64():
    X = random_clicks()
    model = solved(X, lam=5.0, dtype="float64")
    assert model.B.dtype == torch.float64
    expected = numpy_ease(X.toarray().astype(np.float64), 5.0)
    np.testing.assert_allclose(model.B.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert np.all(np.diag(model.B.numpy()) == 0.0)


def test_float32_solve_is_close_and_keeps_zero_diagonal():
    X = random_clicks(seed=1)
    model = solved(X, lam=5.0, dtype="float32")
    assert model.B.dtype == torch.float32
    np.testing.assert_allclose(model.B.numpy(), numpy_ease(X.toarray().astype(np.float64), 5.0), atol=1e-5)
    assert torch.all(model.B.diagonal() == 0)


def test_auto_dtype_follows_the_condition_bound(tmp_path):
    """"auto" solves in float32 only when the Gershgorin bound on cond(G) is small, and the bound holds."""
    import models
    from models.ease import FLOAT32_MAX_CONDITION

    X = random_clicks(n_users=200, density=0.5, seed=6)
    dense = X.toarray().astype(np.float64)
    row_sums = (dense.T @ dense).sum(axis=1).max()
    for lam, dtype in ((row_sums, torch.float32), (row_sums / (2 * FLOAT32_MAX_CONDITION), torch.float64)):
        model = solved(X, lam=lam)
        assert model.B.dtype == dtype
        eigenvalues = np.linalg.eigvalsh(dense.T @ dense + lam * np.eye(X.shape[1]))
        assert eigenvalues.max() / eigenvalues.min() <= 1 + row_sums / lam + 1e-9
        np.testing.assert_allclose(model.B.double().numpy(), numpy_ease(dense, lam), atol=1e-5 if dtype == torch.float32 else 1e-10)
        model.save(tmp_path / str(lam))
        loaded = models.load(tmp_path / str(lam))
        assert loaded.B.dtype == dtype  # the precision it was solved in, though the config says "auto"
        torch.testing.assert_close(loaded.B, model.B, rtol=0, atol=0)


def test_scores_are_rows_times_B_with_values_as_positives():
    X = random_clicks(seed=2)
    model = solved(X, lam=2.0)
    rows = random_clicks(n_users=6, seed=3)
    expected = rows.toarray().astype(np.float64) @ model.B.numpy()
    np.testing.assert_allclose(model.scores(rows).numpy(), expected, rtol=1e-5, atol=1e-6)
    ratings = rows.copy()
    ratings.data = np.full_like(ratings.data, 4.0)  # a rating row ranks like the click row
    torch.testing.assert_close(model.scores(ratings), model.scores(rows))


def test_larger_lambda_shrinks_B():
    X = random_clicks(seed=4)
    small, large = solved(X, lam=1.0), solved(X, lam=100.0)
    assert large.B.abs().sum() < small.B.abs().sum()


def test_item_embeddings_are_columns_of_B():
    X = random_clicks(seed=5)
    model = solved(X, lam=3.0)
    emb = model.item_embeddings()
    assert emb.shape == (X.shape[1], X.shape[1]) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[4], model.B[:, 4].float())


def test_bad_options_are_rejected():
    with pytest.raises(ModelInputError, match="dtype"):
        build_config(EASEConfig, {"dtype": "float16"})
    with pytest.raises(ModelInputError, match="lam"):
        build_config(EASEConfig, {"lam": 0.0})
    model = EASE(EASEConfig(), n_items=15, n_users=4)
    with pytest.raises(ModelInputError, match="columns"):
        model.solve(TrainData(random_clicks(n_items=9)))


def test_beats_popularity_by_a_wide_margin_on_ml100k(ml100k_dir):
    """Real data, the ``strong`` protocol, seed 0: EASE's closed form against the popularity floor."""
    split = make_split("strong", read_dataset("ml-100k", ml100k_dir), seed=0)
    ease = trainer.fit("ease", split.train, valid=split.valid, seed=0, progress=False, device="cpu").model
    popularity = fit_baseline("popularity", TrainData(split.train))
    ours, floor = evaluate_ranking(ease, split.test)["ndcg@100"], evaluate_ranking(popularity, split.test)["ndcg@100"]
    assert ours >= floor + 0.1, f"EASE NDCG@100 {ours:.3f} against popularity {floor:.3f}"


def test_contributions_are_the_weights_of_B_and_the_removal_drops():
    """EASE explains exactly: history item j adds B[j, i] to item i, which is also what removing j
    takes off (the generic batched removal of ``Recommender.contributions`` agrees); so each
    recommended item's top explanation is the history item with the largest weight towards it."""
    X = random_clicks()
    model = solved(X)
    B = model.B.numpy()
    row = X[3:4]
    history, items = row.indices, np.arange(X.shape[1])
    exact = model.contributions(row, items)
    np.testing.assert_array_equal(exact, B[history][:, items].T)
    np.testing.assert_allclose(exact, Recommender.contributions(model, row, items), atol=1e-5)
    recommended, _ = model.recommend(row, k=5)
    for i in recommended[0]:
        assert B[history[exact[i].argmax()], i] == B[history, i].max()
