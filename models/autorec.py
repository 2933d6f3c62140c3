"""AutoRec (Sedhain, Menon, Sanner & Xie, WWW 2015): a one-hidden-layer autoencoder for ratings.

Each training vector r (I-AutoRec: an item's column over users; U-AutoRec: a user's row
over items) is reconstructed through

    h(r) = W · sigmoid(V r + mu) + b          (sigmoid hidden layer, identity output)

and the objective counts observed entries only (||.||_O), with L2 on both weight matrices:

    min  sum_r ||r - h(r)||^2_O  +  lambda/2 · (||W||_F^2 + ||V||_F^2)

I-AutoRec predicts user u's rating of item i as h(r_i)[u] = W[u] · h_i + b[u], where
h_i = sigmoid(V r_i + mu) is item i's code computed from the training matrix. It
therefore serves only users it was trained on (no fold-in). U-AutoRec reads a user's row
and folds in new users for free, but is the weaker model in the paper (ML-1M RMSE 0.874
against 0.831).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from models.base import ModelInputError, Recommender, TrainData
from models.rows import DeviceRows, RowBatch, as_row_batch, count_rows

CODE_BATCH = 4096  # training vectors encoded per pass when caching I-AutoRec's item codes


@dataclass(frozen=True)
class AutoRecConfig:
    hidden: int = 500  # "k = 500 hidden units" throughout the paper's experiments
    # lambda of the L2 term: best validation RMSE on ml-100k (bench/RESULTS.md, "Figures moved out").
    weight_decay: float = 100.0
    # The paper optimises with L-BFGS / Rprop (full batch). We use Adam on minibatches: one
    # epoch of minibatches costs what one full-batch step does, and Adam converges in tens of
    # epochs (seconds on 2 CPU cores) where Rprop/L-BFGS need hundreds of full-batch steps.
    lr: float = 1e-3
    batch_size: int = 256  # smaller batches at lr 1e-3 gave a noisier, worse validation curve
    epochs: int = 300
    patience: int = 10

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ModelInputError(f"AutoRec hidden must be a positive number of units, got {self.hidden}")
        if self.weight_decay < 0:
            raise ModelInputError(f"AutoRec weight_decay (lambda) must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class AutoRecUConfig(AutoRecConfig):
    """U-AutoRec: the same network over user rows (fewer, longer vectors), tuned on ml-100k validation.

    lambda 100 (30 -> 0.9391, 100 -> 0.9344, 300 -> worse); fewer vectors per epoch, so a larger step.
    """

    lr: float = 2e-3
    # Each row centred on its own mean rating m: m + h(r - m) on the rated entries (DeepRec's
    # ``center``), so a missing rating reads as "the user's average", not as a rating of 0.
    # False: the paper's h(r). Figures in bench/RESULTS.md ("AutoRec-U centred").
    center: bool = True


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space);
# the paper's lambda grid spans 0.001-1000, the top of it is where ml-100k's validation RMSE is best
SEARCH_SPACE = {"hidden": ("int", 100, 800), "weight_decay": ("log", 1.0, 1000.0)}


def masked_squared_error(predicted: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """||target - predicted||^2_O per row: only observed entries (observed = 1) count."""
    return (observed * (predicted - target) ** 2).sum(dim=1)


class _AutoRec(Recommender):
    """Shared network and masked loss; subclasses choose what a training vector is."""

    task = "rating"
    reduced_precision = True

    item_based: ClassVar[bool]

    def __init__(self, config: AutoRecConfig, n_items: int, n_users: int, rating_range=(1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        # I-AutoRec: n_items vectors of length n_users; U-AutoRec: n_users vectors of length n_items
        self.n_vectors, n_in = (self.n_items, self.n_users) if self.item_based else (self.n_users, self.n_items)
        self.encoder = nn.Linear(n_in, config.hidden)  # V, mu
        self.decoder = nn.Linear(config.hidden, n_in)  # W, b

    def _training_vectors(self, data: TrainData) -> DeviceRows:
        """The training matrix on the device, one training vector per row (items x users for I-AutoRec)."""
        if data.X.shape != (self.n_users, self.n_items):
            raise ModelInputError(f"training matrix has shape {data.X.shape}, the model was built for {(self.n_users, self.n_items)}")
        return data.on_device(self.device, self.n_items, binary=False, items_as_rows=self.item_based)

    def reconstruct(self, r: torch.Tensor) -> torch.Tensor:
        """h(r) = W sigmoid(V r + mu) + b."""
        return self.decoder(torch.sigmoid(self.encoder(r)))

    def training_batches(
        self, data: TrainData, generator: np.random.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(ratings, observed) per minibatch of training vectors; a stored 0 is no rating (team convention)."""
        vectors = self._training_vectors(data)
        for batch in vectors.batches(data.epoch_order(vectors.n_rows, generator), self.config.batch_size):
            r = batch.dense()
            yield r, (r != 0).float()

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], **schedule: float) -> torch.Tensor:
        r, observed = (t.to(self.device) for t in batch)
        # float32 errors whatever the layers ran in (bfloat16 under autocast rounds a rating near 4 by 0.016)
        squared_error = masked_squared_error(self.reconstruct(r).float(), r, observed).mean()
        # The objective summed over all N training vectors, divided by N: a minibatch's mean
        # error estimates the first term, so the L2 term is lambda / (2N) and keeps the paper's scale.
        l2 = self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum()
        return squared_error + self.config.weight_decay / (2 * self.n_vectors) * l2

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.config.lr)


class AutoRecI(_AutoRec):
    """Item-based AutoRec: reconstructs each item's column of ratings over the training users."""

    name = "autorec-i"
    Config: ClassVar[type] = AutoRecConfig
    search_space = SEARCH_SPACE
    can_fold_in = False
    item_based = True
    explainable = False  # scores by user index alone: the history given moves nothing

    def __init__(self, config: AutoRecConfig, n_items: int, n_users: int, rating_range=(1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        # h_i for every item, from the training matrix; saved with the weights so a loaded model scores.
        self.register_buffer("item_codes", torch.zeros(n_items, config.hidden))

    @torch.no_grad()
    def prepare_scoring(self, data: TrainData) -> None:
        columns = self._training_vectors(data)
        for start in range(0, self.n_items, CODE_BATCH):
            stop = min(start + CODE_BATCH, self.n_items)
            self.item_codes[start:stop] = torch.sigmoid(self.encoder(columns.between(start, stop).dense()))

    @torch.no_grad()
    def scores(
        self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None
    ) -> torch.Tensor:
        users = self._check_users(users, count_rows(rows, self.n_items))  # raises for None or users it was not trained on
        u = torch.from_numpy(users).to(self.device)
        # prediction(u, i) = W[u] · h_i + b[u], for all items at once
        return self.decoder.weight[u] @ self.item_codes.T + self.decoder.bias[u, None]

    @torch.no_grad()
    def pair_scores(
        self, rows: RowBatch | sp.csr_matrix, pair_rows: torch.Tensor, items: torch.Tensor, users: np.ndarray | None = None,
        timestamps: sp.csr_matrix | None = None,
    ) -> torch.Tensor:
        users = self._check_users(users, count_rows(rows, self.n_items))
        u = torch.from_numpy(users).to(self.device)[pair_rows]
        # W[u] · h_i + b[u] for the asked pairs only, not for every item
        return (self.decoder.weight[u] * self.item_codes[items]).sum(dim=1) + self.decoder.bias[u]

    def item_embeddings(self) -> torch.Tensor:
        return self.item_codes.detach()


class AutoRecU(_AutoRec):
    """User-based AutoRec: reconstructs a user's row; folds in any user from their ratings."""

    name = "autorec-u"
    Config: ClassVar[type] = AutoRecUConfig
    search_space = SEARCH_SPACE
    item_based = False

    def _centred(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(the rows the network reads, the offset its output is added to): (r - m on rated entries, m) with
        ``center``, m each row's mean rating (0 for an empty row); (r, 0) without."""
        if not self.config.center:
            return r, 0.0
        rated = r != 0
        mean = r.sum(dim=1, keepdim=True) / rated.sum(dim=1, keepdim=True).clamp(min=1)
        return torch.where(rated, r - mean, torch.zeros_like(r)), mean

    def reconstruct(self, r: torch.Tensor) -> torch.Tensor:
        """h(r) = W sigmoid(V r + mu) + b, or m + h(r - m) with ``center``."""
        x, offset = self._centred(r)
        return self.decoder(torch.sigmoid(self.encoder(x))) + offset

    @torch.no_grad()
    def scores(
        self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None
    ) -> torch.Tensor:
        return self.reconstruct(as_row_batch(rows, self.n_items, self.device, binary=False).dense())

    @torch.no_grad()
    def pair_scores(
        self, rows: RowBatch | sp.csr_matrix, pair_rows: torch.Tensor, items: torch.Tensor, users: np.ndarray | None = None,
        timestamps: sp.csr_matrix | None = None,
    ) -> torch.Tensor:
        # h(r) = W sigmoid(V r + mu) + b read at the asked items only (decoder rows W_i): faster (bench/RESULTS.md, "Figures moved out")
        x, offset = self._centred(as_row_batch(rows, self.n_items, self.device, binary=False).dense())
        code = torch.sigmoid(self.encoder(x))
        offset = offset[pair_rows, 0] if isinstance(offset, torch.Tensor) else offset
        return (self.decoder.weight[items] * code[pair_rows]).sum(dim=1) + self.decoder.bias[items] + offset

    def item_embeddings(self) -> torch.Tensor:
        return self.decoder.weight.detach()  # W's row i produces item i's rating
