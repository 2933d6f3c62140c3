"""EDLAE (full rank): Steck's (2020) closed form against a direct numpy solve; p = 0 is EASE."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.base import ModelInputError, TrainData, build_config
from models.ease import EASE, EASEConfig
from models.edlae import EDLAE, EDLAEConfig


def random_clicks(n_users: int = 50, n_items: int = 18, density: float = 0.3, seed: int = 1) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32))


def numpy_edlae(X: np.ndarray, lam: float, p: float) -> np.ndarray:
    """The paper's solution written out: Lambda = lam I + p/(1-p) diagMat(diag(X^T X)), B = I - P diagMat(1/diag(P))."""
    G = X.T @ X
    P = np.linalg.inv(G + np.diag(lam + p / (1 - p) * np.diag(G)))
    return np.eye(X.shape[1]) - P @ np.diag(1.0 / np.diag(P))


def solved(cls, config_cls, X: sp.csr_matrix, **overrides):
    model = cls(build_config(config_cls, overrides), n_items=X.shape[1], n_users=X.shape[0])
    model.solve(TrainData(X))
    return model.eval()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_closed_form_matches_direct_solve(p):
    X = random_clicks()
    model = solved(EDLAE, EDLAEConfig, X, lam=3.0, dropout=p, dtype="float64")
    np.testing.assert_allclose(model.B.numpy(), numpy_edlae(X.toarray().astype(np.float64), 3.0, p), atol=1e-10)
    assert np.all(np.diag(model.B.numpy()) == 0)


def test_no_dropout_is_ease_and_dropout_changes_the_weights():
    X = random_clicks()
    ease = solved(EASE, EASEConfig, X, lam=4.0, dtype="float64")
    plain = solved(EDLAE, EDLAEConfig, X, lam=4.0, dropout=0.0, dtype="float64")
    emphasised = solved(EDLAE, EDLAEConfig, X, lam=4.0, dropout=0.5, dtype="float64")
    np.testing.assert_allclose(plain.B.numpy(), ease.B.numpy(), atol=1e-12)
    assert np.abs(emphasised.B.numpy() - ease.B.numpy()).max() > 1e-3
    rows = X[:5]
    np.testing.assert_allclose(emphasised.scores(rows).numpy(), (rows.toarray() @ emphasised.B.numpy()), rtol=1e-5, atol=1e-6)


def test_a_popular_item_predicts_others_less():
    """The count-weighted ridge shrinks the rows of frequent items more than EASE's uniform one."""
    X = random_clicks(n_users=200, n_items=12, density=0.15, seed=3).tolil()
    X[:, 0] = 1.0  # item 0 in every history
    X = X.tocsr()
    ease = solved(EASE, EASEConfig, X, lam=2.0, dtype="float64").B.numpy()
    emphasised = solved(EDLAE, EDLAEConfig, X, lam=2.0, dropout=0.5, dtype="float64").B.numpy()
    popular_share = lambda B: np.abs(B[0]).sum() / np.abs(B).sum()  # noqa: E731
    assert popular_share(emphasised) < popular_share(ease)


@pytest.mark.parametrize("bad", [dict(dropout=1.0), dict(dropout=-0.1), dict(lam=0.0), dict(dtype="float16")])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ModelInputError):
        EDLAEConfig(**bad)


def test_saved_and_loaded(tmp_path):
    import models

    X = random_clicks()
    model = solved(EDLAE, EDLAEConfig, X)
    model.save(tmp_path / "m")
    loaded = models.load(tmp_path / "m")
    assert isinstance(loaded, EDLAE) and loaded.config == model.config
    assert torch.equal(loaded.B, model.B)
