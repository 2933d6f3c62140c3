"""CDAE (Wu, DuBois, Zheng & Ester, WSDM 2016): a denoising autoencoder with a per-user input node.

A user's implicit-feedback row y_u (values > 0 are positives) is corrupted by drop-out
(each entry zeroed with probability q, survivors scaled by 1/(1-q) so the corruption is
unbiased), then

    z_u      = sigmoid(W^T y~_u + V_u + b)        hidden layer, K = 50 units; V_u: the user node
    y^_u     = f(W'^T z_u + b')                     f = sigmoid or identity (``output``)

    loss     = sum_i l(y_ui, y^_ui)  +  lambda/2 (||W||^2 + ||W'||^2 + ||V||^2 + ||b||^2 + ||b'||^2)

with l the logistic loss ("bce", needs the sigmoid output) or the square loss ("square").
The paper sums l over the positives and a sample of negatives; ``negatives = 0`` sums it
over every item instead, which is exact and cheap on small catalogues (ml-100k: 1.6K items).

New users: V_u exists only for the ``n_users`` training rows. Rows whose ``users`` entry
is a training-row index in [0, n_users) use their V_u; rows with no ``users`` (None) or an
index outside that range (e.g. -1 for held-out users) use V_u = 0, i.e. the network
without the user node, so any user can be folded in from their row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import ModelInputError, Recommender, TrainData
from models.layers import sparse_rows
from models.rows import RowBatch, as_row_batch


@dataclass(frozen=True)
class CDAEConfig:
    hidden: int = 50  # K, the number of latent factors; the paper reports K = 50
    # q of the drop-out corruption, tuned on ml-100k validation (bench/RESULTS.md, "Figures moved out").
    corruption: float = 0.5
    output: Literal["sigmoid", "identity"] = "sigmoid"
    # The paper's logistic ("bce") and square losses; bce ranks better (bench/RESULTS.md, "Figures moved out").
    loss: Literal["bce", "square"] = "bce"
    # Negatives per positive, as the paper does for speed; 0 = every zero counts (exact, better) (bench/RESULTS.md, "Figures moved out").
    negatives: int = 0
    # lambda of the paper's L2 term, chosen on ml-100k validation (bench/RESULTS.md, "Figures moved out").
    weight_decay: float = 1.0
    # Adam (the paper: AdaGrad); at Adam's usual 1e-3 CDAE ranks like popularity (bench/RESULTS.md, "Figures moved out").
    lr: float = 0.03
    batch_size: int = 64
    epochs: int = 200  # early stopping ends it: the best epoch on ml-100k is 25-45
    patience: int = 15

    def __post_init__(self) -> None:
        if self.output not in ("sigmoid", "identity"):
            raise ModelInputError(f"CDAE output must be 'sigmoid' or 'identity', got {self.output!r}")
        if self.loss not in ("bce", "square"):
            raise ModelInputError(f"CDAE loss must be 'bce' or 'square', got {self.loss!r}")
        if self.loss == "bce" and self.output != "sigmoid":
            raise ModelInputError("CDAE loss 'bce' (logistic) needs output 'sigmoid'")
        if not 0.0 <= self.corruption < 1.0:
            raise ModelInputError(f"CDAE corruption q must be in [0, 1), got {self.corruption}")


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space);
# K too: the paper's 50 is narrow for dense implicit data (binarised ml-100k: bench/RESULTS.md, "Centred on the bias model")
SEARCH_SPACE = {"corruption": ("float", 0.0, 0.9), "weight_decay": ("log", 0.1, 10.0), "hidden": ("int", 50, 400)}


class CDAE(Recommender):
    """Collaborative Denoising Auto-Encoder: one sigmoid hidden layer plus a learned user node V_u."""

    name = "cdae"
    task = "ranking"
    Config: ClassVar[type] = CDAEConfig
    search_space = SEARCH_SPACE
    reduced_precision = True

    def __init__(self, config: CDAEConfig, n_items: int, n_users: int, rating_range=(1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        self.corrupt = nn.Dropout(config.corruption)  # zero with prob q, scale survivors by 1/(1-q)
        self.encoder = nn.Linear(self.n_items, config.hidden)  # W, b
        self.user_nodes = nn.Embedding(self.n_users, config.hidden)  # V
        self.decoder = nn.Linear(config.hidden, self.n_items)  # W', b'
        nn.init.normal_(self.user_nodes.weight, std=0.01)

    def _user_vectors(self, users: np.ndarray | None, n_rows: int) -> torch.Tensor:
        """V_u for known training rows, zeros for everyone else (new users)."""
        nodes = torch.zeros(n_rows, self.config.hidden, device=self.device)
        if users is None:
            return nodes
        users = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
        known = (users >= 0) & (users < self.n_users)
        nodes[known] = self.user_nodes(users[known])
        return nodes

    def network(self, y: torch.Tensor, user_vectors: torch.Tensor) -> torch.Tensor:
        """Output pre-activation W'^T z + b' of sparse CSR (or dense) rows y (corrupted only in training mode)."""
        # Drop-out of the positives only (a zero stays zero anyway): a few thousand random draws
        # per batch instead of one per item. (At K = 50, W^T y~ is cheaper dense than sparse.)
        y = sparse_rows(y, self.corrupt).to_dense()
        z = torch.sigmoid(self.encoder(y) + user_vectors)
        return self.decoder(z)

    def training_batches(self, data: TrainData, generator: np.random.Generator) -> Iterator[RowBatch]:
        clicks = data.on_device(self.device, self.n_items, binary=True)
        if clicks.n_rows != self.n_users:
            raise ModelInputError(f"training matrix has {clicks.n_rows} users, the model was built for {self.n_users}")
        # a batch's ``rows`` are its users' training rows: they pick the user nodes V_u
        yield from clicks.batches(data.epoch_order(clicks.n_rows, generator), self.config.batch_size)

    def loss(self, batch: RowBatch, **annealing: float) -> torch.Tensor:
        rows = as_row_batch(batch, self.n_items, self.device, binary=True)
        v = self.user_nodes(rows.rows)
        out = self.network(rows.sparse(), v).float()  # errors in float32
        y = rows.dense()
        if self.config.loss == "bce":
            per_entry = F.binary_cross_entropy_with_logits(out, y, reduction="none")
        else:
            y_hat = torch.sigmoid(out) if self.config.output == "sigmoid" else out
            per_entry = (y_hat - y).pow(2)
        if self.config.negatives:
            # Keep every positive and each zero with prob. negatives * |positives| / |zeros| (per user)
            n_pos = y.sum(dim=1, keepdim=True)
            keep_zero = torch.rand_like(y) < self.config.negatives * n_pos / (self.n_items - n_pos).clamp(min=1)
            per_entry = per_entry * ((y > 0) | keep_zero)
        # The paper's objective sums over users; the minibatch mean per user estimates it divided
        # by n_users. So the L2 term of the weights every user shares (W, W', b, b') is scaled by
        # 1/n_users (see configure_optimizer), and each V_u is penalised with its own user's term
        # (the batch mean of ||V_u||^2).
        own = v.pow(2).sum(dim=1).mean()
        return per_entry.sum(dim=1).mean() + self.config.weight_decay / 2 * own

    def configure_optimizer(self) -> torch.optim.Optimizer:
        # lambda/2 * ||p||^2 / n_users for the shared weights is Adam's weight_decay = lambda / n_users:
        # the same gradient, added in the optimiser's one fused pass instead of two passes per step.
        shared = [*self.encoder.parameters(), *self.decoder.parameters()]
        groups = [{"params": shared, "weight_decay": self.config.weight_decay / self.n_users},
                  {"params": list(self.user_nodes.parameters()), "weight_decay": 0.0}]
        return torch.optim.Adam(groups, lr=self.config.lr, fused=True)  # fused: one pass over the weights, not ~10

    @torch.no_grad()
    def scores(self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None) -> torch.Tensor:
        rows = as_row_batch(rows, self.n_items, self.device, binary=True)
        users = self._check_users(users, len(rows))
        out = self.network(rows.sparse(), self._user_vectors(users, len(rows)))
        return torch.sigmoid(out) if self.config.output == "sigmoid" else out

    def item_embeddings(self) -> torch.Tensor:
        return self.decoder.weight.detach()  # row i produces item i's output
