"""RecVAE: the loss by hand (composite prior, beta = gamma |x|), the alternating updates and the prior's refresh."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.base import ModelInputError, TrainData, build_config
from models.recvae import PhaseBatch, RecVAE, RecVAEConfig, log_normal

N_ITEMS = 6


def make(**overrides) -> RecVAE:
    torch.manual_seed(0)
    return RecVAE(RecVAEConfig(**{"hidden": 8, "latent": 2, **overrides}), n_items=N_ITEMS, n_users=10)


def normal_logpdf(z: float, mu: float, var: float) -> float:
    return -0.5 * (math.log(2 * math.pi * var) + (z - mu) ** 2 / var)


def test_loss_on_a_hand_example():
    """eval (z = mu): every weight 0, so mu = 0 + bias, logvar = bias, and q_old = q."""
    model = make(gamma=0.01).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.decoder.bias.copy_(torch.tensor([math.log(0.5), math.log(0.25), math.log(0.25), -60.0, -60.0, -60.0]))
        model.encoder.to_posterior.bias.copy_(torch.tensor([0.5, -1.0, 0.0, math.log(2.0)]))  # mu (0.5, -1), var (1, 2)
    model._refresh_prior()
    x = np.array([[1, 0, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0]], dtype=np.float32)  # 2 and 3 clicks
    neg_ll = [-(math.log(0.5) + math.log(0.25)), -(math.log(0.25) * 2 - 60.0)]
    w_standard, w_old, w_wide = 0.15, 0.75, 0.10
    kl = 0.0
    for z, var in ((0.5, 1.0), (-1.0, 2.0)):  # per latent coordinate: log q(z) - log p(z) at z = mu
        log_q = normal_logpdf(z, z, var)
        prior = (w_standard * math.exp(normal_logpdf(z, 0.0, 1.0)) + w_old * math.exp(log_q)
                 + w_wide * math.exp(normal_logpdf(z, 0.0, math.exp(10.0))))
        kl += log_q - math.log(prior)
    expected = np.mean([neg_ll[u] + 0.01 * clicks * kl for u, clicks in enumerate((2, 3))])
    with torch.no_grad():
        assert float(model.loss(sp.csr_matrix(x))) == pytest.approx(expected, rel=1e-5)


def test_log_normal_is_the_gaussian_log_density():
    z = torch.tensor([0.3, -2.0])
    np.testing.assert_allclose(log_normal(z, 1.0, math.log(4.0)).numpy(),
                               [normal_logpdf(0.3, 1.0, 4.0), normal_logpdf(-2.0, 1.0, 4.0)], rtol=1e-6)


def _state(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_each_step_updates_only_its_half_and_the_epoch_alternates():
    X = sp.csr_matrix(np.kron(np.eye(2), np.ones((8, 3))).astype(np.float32))
    model = make(batch_size=16, encoder_passes=3, lr=0.01).train()
    batches = list(model.training_batches(TrainData(X), np.random.default_rng(0)))
    assert [b.encoder_step for b in batches] == [True, True, True, False]  # 16 users, batch 16: one per pass
    optimizer = model.configure_optimizer()
    for batch in batches:
        encoder, decoder, prior = _state(model.encoder), _state(model.decoder), _state(model.prior_encoder)
        model.train_step(batch, optimizer)
        assert _changed(encoder, model.encoder) == batch.encoder_step
        assert _changed(decoder, model.decoder) == (not batch.encoder_step)
        assert not _changed(prior, model.prior_encoder)  # frozen within the epoch


def test_the_prior_is_the_encoder_as_the_epoch_began():
    X = sp.csr_matrix(np.kron(np.eye(2), np.ones((8, 3))).astype(np.float32))
    model = make(batch_size=8, lr=0.01).train()
    optimizer = model.configure_optimizer()
    rng = np.random.default_rng(0)
    for batch in model.training_batches(TrainData(X), rng):
        model.train_step(batch, optimizer)
    assert _changed(_state(model.prior_encoder), model.encoder)  # trained past the prior
    next_epoch = model.training_batches(TrainData(X), rng)
    next(next_epoch)  # the epoch begins: the prior is refreshed
    for old, new in zip(model.prior_encoder.parameters(), model.encoder.parameters()):
        assert torch.equal(old, new)
    assert all(not p.requires_grad for p in model.prior_encoder.parameters())
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_training_reduces_the_loss_and_inference_is_deterministic():
    X = sp.csr_matrix(np.kron(np.eye(2), np.ones((8, 3))).astype(np.float32))
    model = make(hidden=16, latent=4, batch_size=16, dropout=0.0, lr=0.01)
    optimizer = model.configure_optimizer()
    model.eval()
    with torch.no_grad():
        before = float(model.loss(X))
    model.train()
    rng = np.random.default_rng(0)
    for _ in range(15):
        for batch in model.training_batches(TrainData(X), rng):
            model.train_step(batch, optimizer)
    model.eval()
    with torch.no_grad():
        assert float(model.loss(X)) < 0.8 * before
    assert torch.equal(model.scores(X), model.scores(X))
    top = model.scores(X[:1]).argsort(descending=True)[0, :3]
    assert set(top.tolist()) == {0, 1, 2}  # the first user's block


@pytest.mark.parametrize("bad", [{"dropout": 1.0}, {"mixture": (0.5, 0.5)}, {"mixture": (0.2, 0.2, 0.2)},
                                 {"encoder_passes": 0}, {"latent": 0}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ModelInputError):
        build_config(RecVAEConfig, bad)


def test_phase_batch_is_what_the_trainer_passes():
    X = sp.csr_matrix(np.eye(N_ITEMS, dtype=np.float32))
    batch = next(make().training_batches(TrainData(X), np.random.default_rng(0)))
    assert isinstance(batch, PhaseBatch) and batch.encoder_step
