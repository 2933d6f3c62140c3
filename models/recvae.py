"""RecVAE (Shenbin, Alekseev, Tutubalina, Malykh & Nikolenko, WSDM 2020): Mult-VAE with a deeper
encoder, a composite prior, a per-user KL weight and alternating updates.

A user's click row x (binary: values > 0 are positives) is encoded as in Mult-VAE, by a
deeper network with dense residual links and layer norm, and decoded by one linear layer:

    x~      = dropout(x / ||x||_2)                         (encoder updates only; keep prob 0.5)
    h_1     = LN(swish(W_1 x~))
    h_k     = LN(swish(W_k h_{k-1} + h_1 + ... + h_{k-1}))   k = 2..5, width 600
    mu, logvar = linear(h_5);  z = mu + eps * exp(logvar / 2)  (z = mu at inference)
    pi(z)   = softmax(W_d z + b_d)

The prior is a mixture of a standard normal, the posterior of the encoder as it was when the
epoch began (q_old(z|x), which keeps each update close to the last epoch's), and a wide normal:

    p(z|x)  = 3/20 N(0, I) + 3/4 q_old(z|x) + 1/10 N(0, e^10 I)

and the loss is the negative ELBO with the KL weighted by the user's number of clicks,
beta(x) = gamma * |x|, estimated with the one sample z:

    loss = -sum_i x_i log pi_i(z) + gamma |x| (log q(z|x) - log p(z|x))

Each epoch updates the encoder over ``encoder_passes`` passes of the data, then the decoder
over one pass (with no input dropout), as the authors' code does. Users are folded in from
their rows: the model scores any row, trained on or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Iterator, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import ModelInputError, Recommender, TrainData
from models.layers import InputLayer, sparse_rows
from models.rows import RowBatch, as_row_batch

KEEP_ALL = nn.Identity()  # no input dropout: the decoder's updates, the prior's old encoder


@dataclass(frozen=True)
class RecVAEConfig:
    hidden: int = 600  # width of the encoder's five layers, as the paper
    latent: int = 200
    dropout: float = 0.5  # input dropout of the encoder's updates
    # beta(x) = gamma * |x|: a stronger pull to the prior than the paper's 0.005 suits a small set
    # (validation, bench/RESULTS.md, "RecVAE and EDLAE").
    gamma: float = 0.02
    # weights of N(0, I), q_old(z|x) and N(0, e^wide_logvar I) in the composite prior, as the paper
    mixture: tuple[float, float, float] = (0.15, 0.75, 0.10)
    wide_logvar: float = 10.0
    encoder_passes: int = 3  # encoder passes per epoch, then one decoder pass (the authors' 3 and 1)
    lr: float = 5e-4  # Adam, as the authors' code
    batch_size: int = 500
    # The authors train 50 epochs on ML-20M (~230 updates per pass); ml-100k's strong split has
    # ~740 training users (2 updates per pass), so more epochs, kept by validation NDCG@100.
    epochs: int = 200
    patience: int = 30

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.latent < 1:
            raise ModelInputError(f"RecVAE hidden and latent must be positive, got {self.hidden} and {self.latent}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelInputError(f"RecVAE dropout must be in [0, 1), got {self.dropout}")
        if len(self.mixture) != 3 or min(self.mixture) <= 0 or not math.isclose(sum(self.mixture), 1.0):
            raise ModelInputError(f"RecVAE mixture must be three positive weights summing to 1, got {self.mixture}")
        if self.encoder_passes < 1:
            raise ModelInputError(f"RecVAE encoder_passes must be at least 1, got {self.encoder_passes}")


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space)
SEARCH_SPACE = {"gamma": ("log", 1e-3, 3e-2), "dropout": ("float", 0.0, 0.9), "hidden": ("choice", [300, 600, 900])}


class PhaseBatch(NamedTuple):
    rows: RowBatch
    encoder_step: bool  # True: this step updates the encoder; False: the decoder


def log_normal(z: torch.Tensor, mu: torch.Tensor | float, logvar: torch.Tensor | float) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) per coordinate."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (logvar + math.log(2 * math.pi) + (z - mu).pow(2) / logvar.exp())


class Encoder(nn.Module):
    """x -> (mu, logvar): five swish layers with dense residual links and layer norm."""

    def __init__(self, n_items: int, hidden: int, latent: int, depth: int = 5):
        super().__init__()
        self.first = InputLayer(nn.Linear(n_items, hidden))  # reads clicks: a sum of its items' rows
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden, eps=0.1) for _ in range(depth))  # the authors' eps
        self.to_posterior = nn.Linear(hidden, 2 * latent)

    def forward(self, x: torch.Tensor, dropout: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        h = [self.norms[0](F.silu(self.first(sparse_rows(x, dropout, normalize=True))))]
        for layer, norm in zip(self.layers, self.norms[1:]):
            h.append(norm(F.silu(layer(h[-1]) + sum(h))))
        mu, logvar = self.to_posterior(h[-1]).chunk(2, dim=1)
        return mu, logvar


class RecVAE(Recommender):
    """RecVAE: residual encoder [I-600x5-200], linear decoder, composite prior, alternating updates."""

    name = "recvae"
    task = "ranking"
    reduced_precision = True
    Config: ClassVar[type] = RecVAEConfig
    search_space = SEARCH_SPACE

    def __init__(self, config: RecVAEConfig, n_items: int, n_users: int, rating_range=(1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        self.input_dropout = nn.Dropout(config.dropout)
        self.encoder = Encoder(self.n_items, config.hidden, config.latent)
        self.decoder = nn.Linear(config.latent, self.n_items)
        self.prior_encoder = Encoder(self.n_items, config.hidden, config.latent).requires_grad_(False)
        self.log_mixture = [math.log(w) for w in config.mixture]

    def training_batches(self, data: TrainData, generator: np.random.Generator) -> Iterator[PhaseBatch]:
        self._refresh_prior()
        clicks = data.on_device(self.device, self.n_items, binary=True)
        for encoder_step in [True] * self.config.encoder_passes + [False]:
            for rows in clicks.batches(data.epoch_order(clicks.n_rows, generator), self.config.batch_size):
                yield PhaseBatch(rows, encoder_step)

    @torch.no_grad()
    def _refresh_prior(self) -> None:
        """q_old := the encoder as it is now: the prior of this epoch's updates (the authors' update_prior)."""
        for old, new in zip(self.prior_encoder.parameters(), self.encoder.parameters()):
            old.copy_(new)

    def loss(self, batch: PhaseBatch | RowBatch | sp.csr_matrix, **annealing: float) -> torch.Tensor:
        """The negative ELBO (per-user mean) with the composite prior and beta(x) = gamma |x|."""
        encoder_step = batch.encoder_step if isinstance(batch, PhaseBatch) else True
        rows = as_row_batch(batch.rows if isinstance(batch, PhaseBatch) else batch, self.n_items, self.device, binary=True)
        x_sparse = rows.sparse()
        # float32 from here whatever the layers ran in (bfloat16 under autocast): the softmax and the prior's densities
        mu, logvar = (t.float() for t in self.encoder(x_sparse, self.input_dropout if encoder_step else KEEP_ALL))
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        x = rows.dense()
        log_likelihood = (F.log_softmax(self.decoder(z).float(), dim=1) * x).sum(dim=1)
        with torch.no_grad():
            old_mu, old_logvar = (t.float() for t in self.prior_encoder(x_sparse, KEEP_ALL))
        standard, old, wide = self.log_mixture
        log_prior = torch.logsumexp(torch.stack([
            log_normal(z, 0.0, 0.0) + standard,
            log_normal(z, old_mu, old_logvar) + old,
            log_normal(z, 0.0, self.config.wide_logvar) + wide,
        ]), dim=0)
        kl = (log_normal(z, mu, logvar) - log_prior).sum(dim=1) * (self.config.gamma * x.sum(dim=1))
        return (kl - log_likelihood).mean()

    def train_step(
        self, batch: PhaseBatch, optimizer: torch.optim.Optimizer, *, forward=None, **annealing: float
    ) -> torch.Tensor:
        """One update of the encoder or of the decoder (the other half's gradients are dropped:
        Adam leaves a parameter with no gradient untouched, so one Adam is the paper's two)."""
        forward = self if forward is None else forward
        optimizer.zero_grad(set_to_none=True)
        loss = forward(batch, **annealing)
        loss.backward()
        for p in (self.decoder if batch.encoder_step else self.encoder).parameters():
            p.grad = None
        optimizer.step()
        return loss.detach()

    def configure_optimizer(self) -> torch.optim.Optimizer:
        trained = [p for p in self.parameters() if p.requires_grad]  # not the prior's copy
        return torch.optim.Adam(trained, lr=self.config.lr)

    @torch.no_grad()
    def scores(self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None) -> torch.Tensor:
        mu, _ = self.encoder(as_row_batch(rows, self.n_items, self.device, binary=True).sparse(), KEEP_ALL)
        return self.decoder(mu)  # log pi(z) up to a per-row constant: same ranking

    def item_embeddings(self) -> torch.Tensor:
        return self.decoder.weight.detach()  # row i produces item i's logit
