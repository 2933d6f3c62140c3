"""Mult-DAE: the paper's [I-200-I] network, a deterministic code, dropout only in training, the loss by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.base import ModelInputError, build_config
from models.multdae import MultDAE, MultDAEConfig

N_ITEMS = 6


def make(**overrides) -> MultDAE:
    torch.manual_seed(0)
    return MultDAE(MultDAEConfig(**{"dims": (8,), **overrides}), n_items=N_ITEMS, n_users=10)


def clicks() -> torch.Tensor:
    return torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float32)


def test_default_architecture_is_the_papers_dae():
    model = MultDAE(MultDAEConfig(), n_items=50, n_users=3)
    assert [tuple(layer.weight.shape) for layer in model.layers] == [(200, 50), (50, 200)]
    deeper = MultDAE(MultDAEConfig(dims=(600, 200)), n_items=50, n_users=3)
    assert [layer.out_features for layer in deeper.layers] == [600, 200, 600, 50]


def test_code_is_deterministic_without_dropout_even_in_training():
    model = make(dropout=0.0).train()  # no sampling anywhere: the only noise is dropout
    x = clicks()
    torch.testing.assert_close(model.network(x), model.network(x))


def test_dropout_only_in_training_and_scores_deterministic():
    model = make(dropout=0.5)
    x = clicks()
    model.train()
    torch.manual_seed(3)
    assert not torch.allclose(model.network(x), model.network(x))
    model.eval()
    torch.testing.assert_close(model.network(x), model.network(2.0 * x))  # L2-normalised input
    rows = sp.csr_matrix(x.numpy())
    torch.testing.assert_close(model.scores(rows), model.scores(rows))
    torch.testing.assert_close(model.scores(rows), model.network(x).detach())


@torch.no_grad()
def test_multinomial_loss_on_a_hand_example():
    model = make(weight_decay=0.0).eval()
    for layer in model.layers:
        layer.weight.zero_()
    model.layers[-1].bias.copy_(torch.tensor([math.log(0.5), math.log(0.25), math.log(0.25), -60.0, -60.0, -60.0]))
    x = np.array([[1, 0, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=np.float32)
    neg_ll = (-(math.log(0.5) + math.log(0.25)) - (math.log(0.25) + math.log(0.25))) / 2
    assert float(model.loss(sp.csr_matrix(x))) == pytest.approx(neg_ll, rel=1e-5)
    regularised = make(weight_decay=0.01).eval()
    regularised.load_state_dict(model.state_dict())
    regularised.layers[0].weight.fill_(0.5)  # 8 x 6 weights of 0.5: sum of squares 12
    assert float(regularised.loss(sp.csr_matrix(x))) == pytest.approx(neg_ll + 0.01 * 12.0, rel=1e-5)


def test_bad_options_are_rejected():
    with pytest.raises(ModelInputError, match="dims"):
        build_config(MultDAEConfig, {"dims": [0]})
    with pytest.raises(ModelInputError, match="dropout"):
        build_config(MultDAEConfig, {"dropout": -0.1})
