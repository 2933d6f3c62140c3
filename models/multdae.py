"""Mult-DAE (Liang, Krishnan, Hoffman & Jebara, WWW 2018): a denoising autoencoder with a multinomial likelihood.

The deterministic sibling of Mult-VAE. A user's click row x (values > 0 are positives)
is normalised, corrupted by dropout in training, encoded to a 200-d code and decoded to
a softmax over all items:

    x~    = dropout(x / ||x||_2)          (training only, keep prob 0.5)
    h     = tanh(W_1 x~ + b_1)             [I-200-I], the paper's Mult-DAE
    pi    = softmax(W_2 h + b_2)

    loss  = -sum_i x_i log pi_i  +  lambda * sum ||W||^2

Users are folded in from their rows: the model scores any row, trained on or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import ModelInputError, Recommender, TrainData
from models.layers import InputLayer, sparse_rows
from models.rows import RowBatch, as_row_batch


@dataclass(frozen=True)
class MultDAEConfig:
    # Encoder widths from the input; the decoder mirrors them. The paper's Mult-DAE is
    # [I-200-I]: no hidden layer around the 200-d code.
    dims: tuple[int, ...] = (200,)
    dropout: float = 0.5  # dropout on the normalised input (keep probability 0.5)
    # lambda of lambda * sum ||W||^2 (weights, not biases): the authors' code uses
    # lam = 0.01 / batch_size = 2e-5 for Mult-DAE; 0 validates the same (bench/RESULTS.md, "Figures moved out").
    weight_decay: float = 2e-5
    lr: float = 1e-3  # Adam at 1e-3, as the paper
    # Users per batch, as the paper. A larger batch makes fewer updates an epoch and needs a larger
    # lr (bench/RESULTS.md, "Larger batches"). Beyond that, measure: bench/quality.py --set.
    batch_size: int = 500
    epochs: int = 200  # the authors train 200 epochs and keep the best validation NDCG@100
    patience: int = 30  # early stopping; on ml-100k the best epoch is 110-200 at batch 500

    def __post_init__(self) -> None:
        if not self.dims or min(self.dims) < 1:
            raise ModelInputError(f"Mult-DAE dims must be positive layer widths ending in the code size, got {self.dims}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelInputError(f"Mult-DAE dropout must be in [0, 1), got {self.dropout}")


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space)
SEARCH_SPACE = {"dropout": ("float", 0.0, 0.9), "dims": ("choice", [(100,), (200,), (600, 200)])}


class MultDAE(Recommender):
    """Mult-DAE: [I-200-I], tanh, input L2-normalisation + dropout, multinomial log-likelihood."""

    name = "multdae"
    task = "ranking"
    Config: ClassVar[type] = MultDAEConfig
    search_space = SEARCH_SPACE
    reduced_precision = True

    def __init__(self, config: MultDAEConfig, n_items: int, n_users: int, rating_range=(1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        dims = [self.n_items, *config.dims, *reversed(config.dims[:-1]), self.n_items]
        self.input_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for layer in self.layers:
            # The authors' initialisation: Xavier weights, biases ~ N(0, 0.001^2)
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)
        self.layers[0] = InputLayer(self.layers[0])  # reads clicks: the same initial values, one row per item

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log-probabilities over items of sparse CSR (or dense) rows; dropout only in training."""
        h = sparse_rows(x, self.input_dropout, normalize=True)  # the first layer costs per click, not per item
        for layer in self.layers[:-1]:
            h = torch.tanh(layer(h))
        return self.layers[-1](h)

    def training_batches(self, data: TrainData, generator: np.random.Generator) -> Iterator[RowBatch]:
        clicks = data.on_device(self.device, self.n_items, binary=True)
        yield from clicks.batches(data.epoch_order(clicks.n_rows, generator), self.config.batch_size)

    def loss(self, batch: RowBatch | sp.csr_matrix, **annealing: float) -> torch.Tensor:
        """The multinomial negative log-likelihood (per-user mean) plus L2, of a batch of click rows."""
        rows = as_row_batch(batch, self.n_items, self.device, binary=True)
        logits = self.network(rows.sparse()).float()  # stays sparse: see network; float32: see Mult-VAE's loss
        x = rows.dense()
        neg_ll = -(F.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
        if not self.config.weight_decay:
            return neg_ll  # lambda = 0: no pass over the weights for nothing
        l2 = sum(layer.weight.pow(2).sum() for layer in self.layers)
        return neg_ll + self.config.weight_decay * l2

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.config.lr, fused=True)  # one pass over the weights, not ~10

    @torch.no_grad()
    def scores(self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None) -> torch.Tensor:
        return self.network(as_row_batch(rows, self.n_items, self.device, binary=True).sparse())  # log pi up to a per-row constant: same ranking

    def item_embeddings(self) -> torch.Tensor:
        return self.layers[-1].weight.detach()  # row i produces item i's logit
