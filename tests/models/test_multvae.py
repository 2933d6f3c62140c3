"""Mult-VAE: KL annealing, where randomness acts (training only), the input path and the neg-ELBO by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.base import ModelInputError, TrainData, build_config
from models.sizes import DataShape, for_data
from models.multvae import ANNEAL_EPOCHS, MultVAE, MultVAEConfig

N_ITEMS = 6


def make(**overrides) -> MultVAE:
    torch.manual_seed(0)
    config = MultVAEConfig(**{"dims": (8, 2), **overrides})
    return MultVAE(config, n_items=N_ITEMS, n_users=10)


@torch.no_grad()
def neg_elbo(model: MultVAE, x: np.ndarray, anneal: float) -> float:
    return float(model.loss(sp.csr_matrix(x), anneal=anneal))


def clicks() -> torch.Tensor:
    return torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float32)


def test_kl_annealing():
    model = make(anneal_cap=0.2, total_anneal_steps=1000)
    assert model.annealing(0, 0) == {"anneal": 0.0}
    assert model.annealing(100, 7)["anneal"] == pytest.approx(0.1)
    assert model.annealing(200, 0)["anneal"] == pytest.approx(0.2)
    assert model.annealing(10_000, 0)["anneal"] == pytest.approx(0.2)  # capped
    assert model.annealing(150, 0) == model.annealing(150, 99)  # a function of the step only


def test_anneal_steps_are_a_number_of_epochs_of_the_data():
    # 740 users at batch 500: 2 updates an epoch (ml-100k's strong split); 116,000 (ML-20M's): 232
    small, large = DataShape(740, 1_600, 45_000), DataShape(116_000, 20_000, 9_000_000)
    assert for_data(MultVAEConfig(), small).total_anneal_steps == ANNEAL_EPOCHS * 2 == 1_000
    assert for_data(MultVAEConfig(), large).total_anneal_steps == ANNEAL_EPOCHS * 232
    assert for_data(MultVAEConfig(batch_size=100), small).total_anneal_steps == ANNEAL_EPOCHS * 8
    assert for_data(MultVAEConfig(total_anneal_steps=300), large).total_anneal_steps == 300  # given: kept
    with pytest.raises(ModelInputError, match="for_data"):  # an unresolved config refuses to train
        make().annealing(0, 0)


def test_architecture_is_mirrored():
    model = MultVAE(MultVAEConfig(), n_items=50, n_users=3)  # the paper's [I-600-200-600-I]
    shapes = [tuple(layer.weight.shape) for layer in model._layers()]
    assert shapes == [(600, 50), (400, 600), (600, 200), (50, 600)]  # 400 = [mu, logvar]


def test_inference_is_deterministic_and_uses_the_posterior_mean():
    model = make().eval()
    x = clicks()
    logits, mu, _ = model.network(x)
    torch.testing.assert_close(logits, model.decode(mu))
    torch.testing.assert_close(model.network(x)[0], logits)
    rows = sp.csr_matrix(x.numpy())
    torch.testing.assert_close(model.scores(rows), model.scores(rows))


def test_reparameterisation_samples_in_training():
    model = make(dropout=0.0).train()  # no dropout: only the sampling of z is random
    x = clicks()
    a, mu_a, _ = model.network(x)
    b, mu_b, _ = model.network(x)
    torch.testing.assert_close(mu_a, mu_b)
    assert not torch.allclose(a, b)


def test_input_is_normalised_always_and_dropped_out_only_in_training():
    model = make(dropout=0.5)
    x = clicks()
    model.eval()
    mu, _ = model.encode(x)
    torch.testing.assert_close(model.encode(3.0 * x)[0], mu)  # L2 normalisation: scale does not matter
    model.train()
    torch.manual_seed(1)
    dropped = [model.encode(x)[0] for _ in range(5)]
    assert any(not torch.allclose(d, mu) for d in dropped)
    no_dropout = make(dropout=0.0).train()
    no_dropout.load_state_dict(model.state_dict())
    torch.testing.assert_close(no_dropout.encode(3.0 * x)[0], mu)


def test_neg_elbo_on_a_hand_example():
    model = make(weight_decay=0.0).eval()  # eval: z = mu, no dropout, so the loss is exact
    with torch.no_grad():
        for layer in model._layers():
            layer.weight.zero_()
            layer.bias.zero_()
        # pi = softmax(bias) = (1/2, 1/4, 1/4, 0+, ...) up to the tiny other items
        model.decoder[-1].bias.copy_(torch.tensor([math.log(0.5), math.log(0.25), math.log(0.25), -60.0, -60.0, -60.0]))
        model.to_posterior.bias.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0]))  # mu = (1, 1), logvar = (0, 0)
    x = np.array([[1, 0, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=np.float32)
    neg_ll = (-(math.log(0.5) + math.log(0.25)) - (math.log(0.25) + math.log(0.25))) / 2  # per-user mean
    kl = 0.5 * (1.0 + 1.0)  # 1/2 sum_k (-0 + e^0 + 1 - 1) over 2 latent dims
    assert neg_elbo(model, x, 0.0) == pytest.approx(neg_ll, rel=1e-5)
    assert neg_elbo(model, x, 0.3) == pytest.approx(neg_ll + 0.3 * kl, rel=1e-5)

    regularised = make(weight_decay=0.01).eval()
    regularised.load_state_dict(model.state_dict())
    with torch.no_grad():
        regularised.encoder[0].weight.fill_(0.5)  # 8 x 6 weights of 0.5: sum of squares 12; z still = mu
    assert neg_elbo(regularised, x, 0.3) == pytest.approx(neg_ll + 0.3 * kl + 0.01 * 12.0, rel=1e-5)


def test_training_reduces_the_loss():
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(np.kron(np.eye(2), np.ones((8, 3))).astype(np.float32))  # two taste blocks
    model = make(dims=(16, 4), batch_size=16, dropout=0.0, lr=0.01)
    optimizer = model.configure_optimizer()
    model.eval()
    before = neg_elbo(model, X.toarray(), 0.0)
    model.train()
    for _ in range(25):
        for batch in model.training_batches(TrainData(X), rng):
            model.train_step(batch, optimizer, anneal=0.0)
    model.eval()
    assert neg_elbo(model, X.toarray(), 0.0) < 0.8 * before


def test_bad_options_are_rejected():
    with pytest.raises(ModelInputError, match="dims"):
        build_config(MultVAEConfig, {"dims": []})
    with pytest.raises(ModelInputError, match="dropout"):
        build_config(MultVAEConfig, {"dropout": 1.0})
    with pytest.raises(ModelInputError, match="total_anneal_steps"):
        build_config(MultVAEConfig, {"total_anneal_steps": 0})
