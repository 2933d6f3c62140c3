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

One departure, on by default (``center="bias"``; ``"none"`` is the paper's math): the network
learns the residual on the user+item bias model (``models.baselines``),

    o_ui = μ + b_u + b_i,     x_ui = r_ui - o_ui on the rated entries (0 elsewhere),
    U-AutoRec:  r̂_u = o_u + h(x_u)         (reads and rebuilds the user's residuals)
    I-AutoRec:  r̂_ui = o_ui + h(r_i)[u]    (reads item i's ratings, rebuilds its residuals x_i)

    min  sum ||x - h(.)||^2_O  +  lambda/2 · (||W||_F^2 + ||V||_F^2 + ||b||^2)

μ and b_i fitted on the training matrix by ALS and saved with the weights, b_u the ALS user
step on the user's own ratings (so a new user's offset is known at fold-in). b repeats b_u or
b_i, so it is penalised too: a strongly regularised AutoRec falls back to the bias baseline
instead of below it (bench/robustness.py). I-AutoRec reads the raw column: which users rated an
item is signal that residuals near 0 would hide (bench/RESULTS.md, "Centred on the bias model").
U-AutoRec also offers ``center="user"``: o_u = the row's mean rating.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from models.base import ModelInputError, Recommender, TrainData
from models.baselines import BiasOffset, centre
from models.rows import DeviceRows, RowBatch, as_row_batch, count_rows
from models.sizes import DataShape

CODE_BATCH = 4096  # training vectors encoded per pass when caching I-AutoRec's item codes
# U-AutoRec's lambda rule, LAMBDA_U x (RATINGS_PER_USER / the training ratings a user) ** LAMBDA_POWER:
# ml-100k's validated 100 on its rating-random split; thinner rows want a stronger prior on the
# validation parts of its subsamples (bench/RESULTS.md, "Centred on the bias model").
LAMBDA_U, RATINGS_PER_USER, LAMBDA_POWER = 100.0, 85_500 / 943, 2.5


@dataclass(frozen=True)
class AutoRecConfig:
    # a config saved before ``center`` existed trained the paper's h(r) (models.load reads this)
    legacy_defaults: ClassVar[dict] = {"center": "none"}

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
    # "bias": learn r - (μ + b_u + b_i) (module docstring); "none": the paper's h(r)
    center: str = "bias"
    centres: ClassVar[tuple[str, ...]] = ("bias", "none")  # I-AutoRec's columns mix users: no row mean

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", centre(self.center, self.centres))
        if self.hidden < 1:
            raise ModelInputError(f"AutoRec hidden must be a positive number of units, got {self.hidden}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ModelInputError(f"AutoRec weight_decay (lambda) must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class AutoRecUConfig(AutoRecConfig):
    """U-AutoRec: the same network over user rows (fewer, longer vectors), tuned on ml-100k validation.

    lambda 100 (30 -> 0.9391, 100 -> 0.9344, 300 -> worse); fewer vectors per epoch, so a larger step.
    """

    lr: float = 2e-3
    # None: LAMBDA_U x (RATINGS_PER_USER / ratings a user) ** LAMBDA_POWER (``for_data``): fewer ratings
    # a row, more of the prior (bench/RESULTS.md, "Centred on the bias model")
    weight_decay: float | None = None
    # also "user": each row centred on its own mean rating m, m + h(r - m) on the rated entries
    # (bench/RESULTS.md, "AutoRec-U centred"); a missing rating then reads as "the user's average"
    centres: ClassVar[tuple[str, ...]] = ("bias", "user", "none")

    def for_data(self, shape: DataShape) -> AutoRecUConfig:
        """weight_decay, when not given: the LAMBDA_U rule above."""
        if self.weight_decay is not None:
            return self
        per_user = shape.nnz / max(1, shape.n_users)
        return dataclasses.replace(self, weight_decay=LAMBDA_U * (RATINGS_PER_USER / per_user) ** LAMBDA_POWER)


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space);
# the paper's lambda grid spans 0.001-1000; centred on the bias model, sparse data's validation RMSE
# wants more (LAMBDA_U; bench/RESULTS.md, "Centred on the bias model")
SEARCH_SPACE = {"hidden": ("int", 100, 800), "weight_decay": ("log", 1.0, 30_000.0)}


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
        # μ + b_u + b_i that the network's output is added to (module docstring); none in an older save
        self.offset = BiasOffset(n_items) if config.center == "bias" else None

    def _training_vectors(self, data: TrainData) -> DeviceRows:
        """The training matrix on the device, one training vector per row (items x users for I-AutoRec)."""
        if data.X.shape != (self.n_users, self.n_items):
            raise ModelInputError(f"training matrix has shape {data.X.shape}, the model was built for {(self.n_users, self.n_items)}")
        return data.on_device(self.device, self.n_items, binary=False, items_as_rows=self.item_based)

    def reconstruct(self, r: torch.Tensor) -> torch.Tensor:
        """h(r) = W sigmoid(V r + mu) + b."""
        return self.decoder(torch.sigmoid(self.encoder(r)))

    def _fit_offset(self, data: TrainData) -> torch.Tensor | None:
        """Fit the bias model centred on (once per fit); the training users' b_u, None without one."""
        return None if self.offset is None else self.offset.fit(data)

    def _pair(self, r: torch.Tensor, vectors: torch.Tensor, user_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the network reads, what it must rebuild on the rated entries) for training vectors ``r``
        (indices ``vectors``): (r, r) here, U-AutoRec centres inside ``reconstruct``; I-AutoRec overrides it."""
        return r, r

    def training_batches(
        self, data: TrainData, generator: np.random.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(inputs, targets, observed) per minibatch of training vectors; a stored 0 is no rating (team convention)."""
        vectors = self._training_vectors(data)
        user_bias = self._fit_offset(data)
        for batch in vectors.batches(data.epoch_order(vectors.n_rows, generator), self.config.batch_size):
            r = batch.dense()
            yield *self._pair(r, batch.rows, user_bias), (r != 0).float()

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], **annealing: float) -> torch.Tensor:
        x, target, observed = (t.to(self.device) for t in batch)
        # float32 errors whatever the layers ran in (bfloat16 under autocast rounds a rating near 4 by 0.016)
        squared_error = masked_squared_error(self.reconstruct(x).float(), target, observed).mean()
        # The objective summed over all N training vectors, divided by N: a minibatch's mean
        # error estimates the first term, so the L2 term is lambda / (2N) and keeps the paper's scale.
        l2 = self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum()
        if self.offset is not None:  # b repeats b_u or b_i, which the bias model shrinks: shrink it too
            l2 = l2 + self.decoder.bias.pow(2).sum()
        return squared_error + self.config.weight_decay / (2 * self.n_vectors) * l2

    def configure_optimizer(self) -> torch.optim.Optimizer:
        if self.config.weight_decay is None:  # trainer.fit sets it; a hand-built config must too
            raise ModelInputError(f"{self.name} weight_decay is None: set it or apply models.sizes.for_data")
        return torch.optim.Adam(self.parameters(), lr=self.config.lr)

    def prepare_scoring(self, data: TrainData) -> None:
        self._fit_offset(data)


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

    def _pair(self, r: torch.Tensor, vectors: torch.Tensor, user_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Item columns ``r`` [items, n_users] as they are and their residuals on μ + b_i + b_u (the rated
        entries): the network reads the ratings and rebuilds the residual (module docstring)."""
        if self.offset is None:
            return r, r
        offset = self.offset.mean + self.offset.item_bias[vectors, None] + user_bias[None, :]
        return r, torch.where(r != 0, r - offset, torch.zeros_like(r))

    @torch.no_grad()
    def prepare_scoring(self, data: TrainData) -> None:
        columns = self._training_vectors(data)
        self._fit_offset(data)
        for start in range(0, self.n_items, CODE_BATCH):
            stop = min(start + CODE_BATCH, self.n_items)
            self.item_codes[start:stop] = torch.sigmoid(self.encoder(columns.between(start, stop).dense()))

    def _offset(self, rows: RowBatch | sp.csr_matrix) -> torch.Tensor | float:
        """μ + b_u + b_i [n_rows, n_items], b_u from the rows given (a training row: its trained b_u); 0 without."""
        if self.offset is None:
            return 0.0
        return self.offset(as_row_batch(rows, self.n_items, self.device, binary=False).dense())

    @torch.no_grad()
    def scores(
        self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None
    ) -> torch.Tensor:
        users = self._check_users(users, count_rows(rows, self.n_items))  # raises for None or users it was not trained on
        u = torch.from_numpy(users).to(self.device)
        # prediction(u, i) = o_ui + W[u] · h_i + b[u], for all items at once
        return self.decoder.weight[u] @ self.item_codes.T + self.decoder.bias[u, None] + self._offset(rows)

    @torch.no_grad()
    def pair_scores(
        self, rows: RowBatch | sp.csr_matrix, pair_rows: torch.Tensor, items: torch.Tensor, users: np.ndarray | None = None,
        timestamps: sp.csr_matrix | None = None,
    ) -> torch.Tensor:
        users = self._check_users(users, count_rows(rows, self.n_items))
        u = torch.from_numpy(users).to(self.device)[pair_rows]
        # o_ui + W[u] · h_i + b[u] for the asked pairs only, not for every item
        offset = self._offset(rows)
        offset = offset[pair_rows, items] if isinstance(offset, torch.Tensor) else offset
        return (self.decoder.weight[u] * self.item_codes[items]).sum(dim=1) + self.decoder.bias[u] + offset

    def item_embeddings(self) -> torch.Tensor:
        return self.item_codes.detach()


class AutoRecU(_AutoRec):
    """User-based AutoRec: reconstructs a user's row; folds in any user from their ratings."""

    name = "autorec-u"
    Config: ClassVar[type] = AutoRecUConfig
    search_space = SEARCH_SPACE
    item_based = False

    def _centred(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(the rows the network reads, the offset o its output is added to): (r - o on rated entries, o),
        o = μ + b_u + b_i [n, n_items] (``center="bias"``) or each row's mean rating [n, 1] (0 for an empty
        row, ``"user"``); (r, 0) with ``"none"``."""
        if self.config.center == "none":
            return r, 0.0
        rated = r != 0
        if self.offset is not None:
            offset = self.offset(r)
        else:
            offset = r.sum(dim=1, keepdim=True) / rated.sum(dim=1, keepdim=True).clamp(min=1)
        return torch.where(rated, r - offset, torch.zeros_like(r)), offset

    def reconstruct(self, r: torch.Tensor) -> torch.Tensor:
        """h(r) = W sigmoid(V r + mu) + b, or o + h(r - o) when centred on o."""
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
        if isinstance(offset, torch.Tensor):  # [n, n_items] on the bias model, [n, 1] on the row's mean
            offset = offset[pair_rows, items if offset.shape[1] > 1 else 0]
        return (self.decoder.weight[items] * code[pair_rows]).sum(dim=1) + self.decoder.bias[items] + offset

    def item_embeddings(self) -> torch.Tensor:
        return self.decoder.weight.detach()  # W's row i produces item i's rating
