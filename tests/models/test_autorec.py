"""AutoRec's math: the masked objective, item-based columns, no fold-in for I-AutoRec, fold-in for U-AutoRec."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from interactions.movielens import read_dataset
from models.autorec import AutoRecConfig, AutoRecI, AutoRecU, AutoRecUConfig, masked_squared_error
from models.base import ModelInputError, TrainData
from models.baselines import fit_baseline
from models.sizes import DataShape, for_data
import trainer
from trainer.evaluation import evaluate_rating
from trainer.protocols import make_split

N_USERS, N_ITEMS = 30, 20


def ratings(seed: int = 0, density: float = 0.3) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    X = sp.random(N_USERS, N_ITEMS, density=density, format="csr", random_state=seed, dtype=np.float32)
    X.data = rng.integers(1, 6, size=X.nnz).astype(np.float32)
    return X


def small(cls, **overrides):
    torch.manual_seed(0)
    config = cls.Config(**{"hidden": 8, **overrides})
    return cls(config, n_items=N_ITEMS, n_users=N_USERS)


def test_masked_error_ignores_unobserved_targets():
    predicted = torch.randn(4, 6, requires_grad=True)
    observed = (torch.rand(4, 6) < 0.5).float()
    target = torch.randint(1, 6, (4, 6)).float()
    changed = torch.where(observed.bool(), target, target + 10 * torch.randn(4, 6))  # only unobserved entries move

    def value_and_grad(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (grad,) = torch.autograd.grad(masked_squared_error(predicted, t, observed).sum(), predicted)
        return masked_squared_error(predicted, t, observed).detach(), grad

    v1, g1 = value_and_grad(target)
    v2, g2 = value_and_grad(changed)
    assert torch.equal(v1, v2) and torch.equal(g1, g2)
    assert torch.all(g1[observed == 0] == 0)
    v3, _ = value_and_grad(target + observed)  # moving an observed target does change it
    assert not torch.equal(v1, v3)


@pytest.mark.parametrize("cls", [AutoRecI, AutoRecU])
def test_loss_is_the_papers_objective(cls):
    model = small(cls, weight_decay=3.0, center="none")
    X = ratings()
    r, target, observed = next(model.training_batches(TrainData(X), np.random.default_rng(0)))
    assert target is r  # uncentred: the network rebuilds what it reads
    V, mu, W, b = model.encoder.weight, model.encoder.bias, model.decoder.weight, model.decoder.bias
    h = (W @ torch.sigmoid(V @ r.T + mu[:, None]) + b[:, None]).T
    per_vector = ((h - r) ** 2 * (r != 0)).sum(dim=1)
    n_vectors = N_ITEMS if cls is AutoRecI else N_USERS
    expected = per_vector.mean() + 3.0 / (2 * n_vectors) * (W.pow(2).sum() + V.pow(2).sum())
    torch.testing.assert_close(model.loss((r, target, observed)), expected)


@torch.no_grad()
def test_centred_user_autorec_reconstructs_deviations_from_each_users_mean():
    model, plain = small(AutoRecU, center="user"), small(AutoRecU, center=False)  # same weights (same seed)
    r = torch.tensor([[5.0, 0.0, 3.0] + [0.0] * (N_ITEMS - 3), [0.0] * N_ITEMS])
    mean = torch.tensor([[4.0], [0.0]])  # the second user rated nothing: no offset
    centred = torch.where(r != 0, r - mean, torch.zeros_like(r))
    torch.testing.assert_close(model.reconstruct(r), plain.reconstruct(centred) + mean)
    rows = sp.csr_matrix(r.numpy())
    torch.testing.assert_close(model.scores(rows), model.reconstruct(r))
    items = torch.tensor([1, 7, 0])
    pairs = torch.tensor([0, 0, 1])
    torch.testing.assert_close(model.pair_scores(rows, pairs, items), model.reconstruct(r)[pairs, items])


@torch.no_grad()
def test_bias_centred_autorec_learns_the_residual_on_the_bias_model():
    """o_ui = μ + b_u + b_i of the bias baseline; U-AutoRec: o + h(r - o); I-AutoRec: o_ui + h(x_i)[u],
    x_i item i's column of residuals; b_u from the row given, so a stranger's row gets its own."""
    X = ratings()
    bias = fit_baseline("bias", TrainData(X))
    offset = bias.scores(X).float()  # [n_users, n_items]
    residual = torch.from_numpy(X.toarray())
    residual = torch.where(residual != 0, residual - offset, torch.zeros_like(residual))
    for cls in (AutoRecU, AutoRecI):
        model, plain = small(cls).eval(), small(cls, center="none").eval()  # same weights
        assert model.config.center == "bias"
        model.prepare_scoring(TrainData(X))
        torch.testing.assert_close(model.offset.item_bias, bias.item_bias.float())
        users = np.arange(N_USERS)
        if cls is AutoRecU:
            expected = plain.reconstruct(residual) + offset
            torch.testing.assert_close(model.scores(sp.csr_matrix(X.toarray())), expected)  # folded in
        else:  # reads item i's ratings, rebuilds its residuals
            expected = plain.reconstruct(torch.from_numpy(X.T.toarray())).T + offset
            columns, targets, _ = next(model.training_batches(TrainData(X), np.random.default_rng(0)))
            items_in = [np.flatnonzero((X.T.toarray() == c.numpy()).all(1))[0] for c in columns]
            torch.testing.assert_close(targets, residual.T[items_in])
        torch.testing.assert_close(model.scores(X, users=users), expected, rtol=1e-4, atol=1e-4)
        items, pairs = torch.tensor([1, 7, 0]), torch.tensor([0, 4, 29])
        torch.testing.assert_close(model.pair_scores(X, pairs, items, users=users), expected[pairs, items],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["autorec-i", "autorec-u"])
def test_a_strongly_regularised_autorec_falls_back_to_the_bias_baseline(name):
    """With lambda so large that W and V vanish, the bias-centred model predicts the bias baseline's
    ratings (up to its output bias b, which is not penalised); uncentred, it predicts far off them."""
    X = ratings(density=0.5)
    bias = fit_baseline("bias", TrainData(X))
    users, items = np.repeat(np.arange(N_USERS), N_ITEMS), np.tile(np.arange(N_ITEMS), N_USERS)
    expected = bias.scores(X).numpy()[users, items]
    gaps = {}
    for center in ("bias", "none"):
        model = trainer.fit(name, X, seed=0, progress=False, holdout=0, epochs=150, lr=1e-2,
                            weight_decay=1e6, center=center).model
        predicted = model.scores(X, users=np.arange(N_USERS)).numpy()[users, items]
        gaps[center] = np.abs(predicted - expected).mean()
    assert gaps["bias"] < 0.25 and gaps["none"] > 4 * gaps["bias"], gaps


def test_item_autorec_trains_on_item_columns():
    model = small(AutoRecI, batch_size=7, center="none")
    X = ratings()
    assert model.encoder.in_features == N_USERS and model.decoder.out_features == N_USERS
    batches = list(model.training_batches(TrainData(X), np.random.default_rng(0)))
    vectors = torch.cat([r for r, _, _ in batches])
    assert vectors.shape == (N_ITEMS, N_USERS)  # one vector per item, each over all users
    columns = {tuple(col) for col in X.T.toarray()}
    assert {tuple(v) for v in vectors.numpy()} == columns


def test_item_autorec_scores_are_item_reconstructions():
    """prediction(u, i) = h(r_i)[u]: the reconstruction of item i's column, read at user u."""
    model = small(AutoRecI, center="none").eval()
    X = ratings()
    model.prepare_scoring(TrainData(X))
    users = np.array([3, 0, 17])
    s = model.scores(X[users], users=users)
    with torch.no_grad():
        reconstructed = model.reconstruct(torch.from_numpy(X.T.toarray()))  # [n_items, n_users]
    torch.testing.assert_close(s, reconstructed[:, users].T)
    assert "item_codes" in model.state_dict()


def test_item_autorec_refuses_unknown_users():
    model = small(AutoRecI).eval()
    X = ratings()
    model.prepare_scoring(TrainData(X))
    assert not AutoRecI.can_fold_in
    with pytest.raises(ModelInputError, match="cannot fold in new users"):
        model.scores(X[:2])
    with pytest.raises(ModelInputError, match=f"not trained on user index {N_USERS}"):
        model.scores(X[:2], users=np.array([0, N_USERS]))
    with pytest.raises(ModelInputError, match="cannot fold in"):
        model.predict(X[:2], np.array([0, 1]))
    with pytest.raises(ModelInputError, match="not trained on user index -1"):
        model.recommend(X[:1], k=3, users=np.array([-1]))


def test_user_autorec_folds_in_a_new_user_like_a_trained_one():
    X = ratings()
    model = trainer.fit("autorec-u", X, seed=0, progress=False, epochs=5, hidden=8, holdout=0).model
    new_user_row = sp.csr_matrix(X[[5]].toarray())  # the same ratings, arriving as a stranger
    torch.testing.assert_close(model.scores(new_user_row), model.scores(X[[5]], users=np.array([5])))
    items = np.array([2])
    assert model.predict(new_user_row, items) == model.predict(X[[5]], items, users=np.array([5]))


def test_user_autorec_lambda_grows_as_the_rows_thin():
    """ml-100k's rating-random split (85,500 ratings, 943 users) keeps its validated 100; 40% of it ~990."""
    dense, sparse = DataShape(943, 1_650, 85_500), DataShape(943, 1_500, 34_200)
    assert for_data(AutoRecUConfig(), dense).weight_decay == pytest.approx(100.0)
    assert for_data(AutoRecUConfig(), sparse).weight_decay == pytest.approx(100 * 2.5**2.5)
    assert for_data(AutoRecUConfig(weight_decay=7.0), sparse).weight_decay == 7.0  # given: kept
    assert for_data(AutoRecConfig(), sparse).weight_decay == 100.0  # I-AutoRec: a constant
    with pytest.raises(ModelInputError, match="for_data"):  # an unresolved config refuses to train
        AutoRecU(AutoRecUConfig(), n_items=N_ITEMS, n_users=N_USERS).configure_optimizer()


def test_defaults_follow_the_paper():
    assert AutoRecConfig().hidden == 500 and AutoRecUConfig().hidden == 500
    model = small(AutoRecU, center=False)  # the paper's h(r); centring is tested above
    x = torch.randn(2, N_ITEMS)
    hidden = torch.sigmoid(model.encoder(x))
    torch.testing.assert_close(model.reconstruct(x), model.decoder(hidden))  # sigmoid hidden, identity output


@pytest.mark.slow
@pytest.mark.parametrize("name, epochs, margin", [("autorec-i", 40, 0.03), ("autorec-u", 60, 0.02)])
def test_beats_bias_baseline_on_ml100k(ml100k_dir, name, epochs, margin):
    """Validation RMSE on ml-100k (rating-random, seed 0) with the default hyper-parameters, epochs capped."""
    split = make_split("rating-random", read_dataset("ml-100k", ml100k_dir), seed=0)
    bias = fit_baseline("bias", TrainData(split.train, rating_range=split.rating_range))
    model = trainer.fit(name, split.train, valid=split.valid, seed=0, progress=False, epochs=epochs).model
    model_rmse = evaluate_rating(model, split.train, split.valid, fallback=bias)["rmse"]
    bias_rmse = evaluate_rating(bias, split.train, split.valid, fallback=bias)["rmse"]
    assert model_rmse < bias_rmse - margin
