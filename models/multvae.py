"""Mult-VAE (Liang, Krishnan, Hoffman & Jebara, WWW 2018): a variational autoencoder with a multinomial likelihood.

A user's click row x (binary: values > 0 are positives) is encoded to a Gaussian
posterior q(z|x) = N(mu, diag(exp(logvar))) and decoded to a softmax over all items:

    x~     = dropout(x / ||x||_2)                        (training only, keep prob 0.5)
    mu, logvar = g(x~)                                    encoder [I-600-200], tanh
    z      = mu + eps * exp(logvar / 2),  eps ~ N(0, I)   (training); z = mu (inference)
    pi(z)  = softmax(f(z))                                decoder [200-600-I], tanh

and is trained on the annealed negative ELBO plus the L2 term of the authors' code:

    neg_ELBO = -sum_i x_i log pi_i(z)  +  beta * KL(q(z|x) || N(0, I))  +  lambda * sum ||W||^2
    KL       = 1/2 * sum_k (-logvar_k + exp(logvar_k) + mu_k^2 - 1)
    beta     = min(anneal_cap, step / total_anneal_steps)

Users are folded in from their rows: the model scores any row, trained on or not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import ModelInputError, Recommender, TrainData
from models.layers import InputLayer, sparse_rows
from models.sizes import DataShape
from models.rows import RowBatch, as_row_batch

# total_anneal_steps' rule: beta reaches the cap 0.2 at epoch 100 (0.2 x 500), half the epoch cap; checked on
# validation across data sizes (bench/RESULTS.md, "Defaults as rules of the data", "Figures moved out").
ANNEAL_EPOCHS = 500


@dataclass(frozen=True)
class MultVAEConfig:
    # Encoder widths from the input: I -> 600 -> 200 (the last is the latent size); the
    # decoder mirrors it, 200 -> 600 -> I: the paper's [I-600-200-600-I].
    dims: tuple[int, ...] = (600, 200)
    dropout: float = 0.5  # dropout on the normalised input (keep probability 0.5)
    anneal_cap: float = 0.2  # beta stops growing here (the paper's best beta on ML-20M)
    # Updates over which beta grows from 0 to 1 (it stops at the cap); None: ANNEAL_EPOCHS epochs'
    # worth of updates for the data (``for_data``). A count of updates does not carry over: the
    # paper's 200,000 (ML-20M, ~233 updates an epoch at batch 500) would keep beta near 0 for the
    # whole run on ml-100k, whose strong split has ~740 training users: 2 updates an epoch.
    total_anneal_steps: int | None = None
    # lambda of lambda * sum ||W||^2 (weights, not biases): the authors' code applies tf's
    # l2_regularizer(lam) times 2, i.e. lam * ||W||^2, and trains Mult-VAE with lam = 0.
    # 0 also validates better on ml-100k (bench/RESULTS.md, "Figures moved out").
    weight_decay: float = 0.0
    lr: float = 1e-3  # Adam at 1e-3, as the paper
    # Users per batch, as the paper. A larger batch makes fewer updates an epoch: scale
    # total_anneal_steps by 500 / batch_size, and lr by about sqrt(batch_size / 500) (bench/RESULTS.md,
    # "Larger batches"). Beyond that, measure: bench/quality.py --set.
    batch_size: int = 500
    epochs: int = 200  # the authors train 200 epochs and keep the best validation NDCG@100
    # Early stopping after 30 epochs without a better validation NDCG@100 (bench/RESULTS.md, "Figures moved out").
    patience: int = 30

    def __post_init__(self) -> None:
        if not self.dims or min(self.dims) < 1:
            raise ModelInputError(f"Mult-VAE dims must be positive layer widths ending in the latent size, got {self.dims}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelInputError(f"Mult-VAE dropout must be in [0, 1), got {self.dropout}")
        if self.total_anneal_steps is not None and self.total_anneal_steps < 1:
            raise ModelInputError(f"Mult-VAE total_anneal_steps must be at least 1, got {self.total_anneal_steps}")


    def for_data(self, shape: DataShape) -> MultVAEConfig:
        """total_anneal_steps, when not given: ANNEAL_EPOCHS epochs of ``shape``'s updates."""
        if self.total_anneal_steps is not None:
            return self
        return dataclasses.replace(self, total_anneal_steps=ANNEAL_EPOCHS * shape.batches(self.batch_size))


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space)
SEARCH_SPACE = {
    "anneal_cap": ("float", 0.0, 1.0),  # the beta cap
    "dropout": ("float", 0.0, 0.9),
    "dims": ("choice", [(200, 100), (600, 200), (800, 200), (600, 100)]),  # width and latent size
}


class MultVAE(Recommender):
    """Mult-VAE^PR: [I-600-200-600-I], tanh, multinomial log-likelihood, annealed KL."""

    name = "multvae"
    task = "ranking"
    Config: ClassVar[type] = MultVAEConfig
    search_space = SEARCH_SPACE
    reduced_precision = True

    def __init__(self, config: MultVAEConfig, n_items: int, n_users: int, rating_range=(1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        *hidden, latent = config.dims
        encoder_dims = [self.n_items, *hidden]
        decoder_dims = [latent, *reversed(hidden), self.n_items]
        self.input_dropout = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(encoder_dims[:-1], encoder_dims[1:]))
        self.to_posterior = nn.Linear(encoder_dims[-1], 2 * latent)  # [mu, logvar]
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(decoder_dims[:-1], decoder_dims[1:]))
        for layer in self._layers():
            # The authors' initialisation: Xavier weights, biases ~ N(0, 0.001^2)
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)
        # The first layer reads clicks: the same initial values, stored one row per item (InputLayer)
        if hidden:
            self.encoder[0] = InputLayer(self.encoder[0])
        else:
            self.to_posterior = InputLayer(self.to_posterior)

    def _layers(self) -> list[nn.Linear]:
        return [*self.encoder, self.to_posterior, *self.decoder]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x) for sparse CSR (or dense) rows: L2-normalised, then dropped out in training."""
        h = sparse_rows(x, self.input_dropout, normalize=True)  # the first layer costs per click, not per item
        for layer in self.encoder:
            h = torch.tanh(layer(h))
        mu, logvar = self.to_posterior(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised log-probabilities f(z) over items (softmax gives pi(z))."""
        for layer in self.decoder[:-1]:
            z = torch.tanh(layer(z))
        return self.decoder[-1](z)

    def network(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits f(z), mu, logvar) for a batch of rows."""
        mu, logvar = self.encode(x)
        # Reparameterisation: sample z in training; the posterior mean at inference (deterministic scores)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar

    def annealing(self, step: int, epoch: int) -> dict[str, float]:
        if self.config.total_anneal_steps is None:  # trainer.fit sets it; a hand-built config must too
            raise ModelInputError("Mult-VAE total_anneal_steps is None: set it or apply models.base.for_data")
        return {"anneal": min(self.config.anneal_cap, step / self.config.total_anneal_steps)}

    def training_batches(self, data: TrainData, generator: np.random.Generator) -> Iterator[RowBatch]:
        clicks = data.on_device(self.device, self.n_items, binary=True)
        yield from clicks.batches(data.epoch_order(clicks.n_rows, generator), self.config.batch_size)

    def loss(self, batch: RowBatch | sp.csr_matrix, anneal: float | None = None) -> torch.Tensor:
        """The annealed negative ELBO (per-user mean) of a batch of click rows (values > 0 are
        positives); ``anneal`` defaults to the cap (fully annealed)."""
        beta = self.config.anneal_cap if anneal is None else anneal
        rows = as_row_batch(batch, self.n_items, self.device, binary=True)
        # float32 from here whatever the layers ran in (bfloat16 under autocast): a softmax over every item
        logits, mu, logvar = (t.float() for t in self.network(rows.sparse()))  # stays sparse: see encode
        x = rows.dense()
        neg_ll = -(F.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
        kl = (0.5 * (-logvar + logvar.exp() + mu.pow(2) - 1)).sum(dim=1).mean()
        if not self.config.weight_decay:
            return neg_ll + beta * kl  # lambda = 0 (the default): no pass over the weights for nothing
        l2 = sum(layer.weight.pow(2).sum() for layer in self._layers())
        return neg_ll + beta * kl + self.config.weight_decay * l2

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.config.lr, fused=True)  # one pass over the weights, not ~10

    @torch.no_grad()
    def scores(self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None) -> torch.Tensor:
        logits, _, _ = self.network(as_row_batch(rows, self.n_items, self.device, binary=True).sparse())
        return logits  # log pi(z) up to a per-row constant: same ranking

    def item_embeddings(self) -> torch.Tensor:
        return self.decoder[-1].weight.detach()  # row i produces item i's logit
