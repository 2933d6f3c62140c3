"""DeepRec (Kuchaiev & Ginsburg 2017, "Training Deep AutoEncoders for Collaborative Filtering").

A deep user-based autoencoder: a user's sparse rating row x over all items goes through

    encoder   e_1 = selu(W_1 x + b_1), ..., z = selu(W_L e_{L-1} + b_L)
    code      z~ = dropout(z)                      (the paper drops 80% of the code: p = 0.8)
    decoder   mirrors the encoder back to n_items; "constrained": W^dec_l = (W_l)^T

with SELU everywhere (the output layer too in the authors' code: ``last_layer_activation``),
trained on the masked mean squared error over the observed ratings,

    MMSE = sum_i m_i (r_i - y_i)^2 / sum_i m_i,     m_i = 1 iff r_i is observed,

and "dense re-feeding": after the update on x, the dense f(x) is fed in again as a new,
fully observed example (target f(x)) and a second update is made. New users fold in
from their row.

One departure, on by default and off for the paper's math (``center="none"``): each row is
centred on an offset o, and the network learns the residual on it,

    f_c(x) = o + g(m * (x - o)),     g = the network above with an identity output,

    o_ui = μ + b_u + b_i     (``center="bias"``, the default: the user+item bias model,
                              ``models.baselines``; μ and b_i fitted on the training matrix by
                              ALS and saved with the weights, b_u the ALS user step on the row)
    o_ui = mean of the row's ratings     (``center="user"``)

so a missing rating enters as "no news" rather than as 0, a rating far below the scale that
the network must learn to ignore, and the network predicts deviations instead of rebuilding
the rating scale. b_u comes from the row itself, so a new user folds in. On the bias model,
weight decay pulls g towards a constant ≈ 0 and the model falls back to the bias baseline
rather than below it on sparse data (bench/robustness.py). A re-fed dense f(x) is centred
the same way (every entry observed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar, Iterator, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import ModelInputError, Recommender, TrainData
from models.baselines import BiasOffset, centre
from models.sizes import DataShape
from models.rows import RowBatch, as_row_batch

# weight_decay's rule, WEIGHT_DECAY_RATINGS / training ratings: the loss is a mean over the observed
# ratings, so an L2 prior of fixed strength weighs 1/nnz against it (MAP); 256.5 keeps ml-100k's
# validated weight decay (bench/RESULTS.md, "Defaults as rules of the data").
WEIGHT_DECAY_RATINGS = 256.5


@dataclass(frozen=True)
class DeepRecConfig:
    """Defaults for MovieLens-scale data (tuned on ml-100k validation, rating-random); the
    paper's best Netflix setup is ``PAPER_NETFLIX`` below, to pass as overrides. 943 users
    cannot feed the paper's 3.3M-weight network (bench/RESULTS.md, "Figures moved out").
    """

    # a config saved before ``center`` existed trained the paper's f(x) (models.load reads this)
    legacy_defaults: ClassVar[dict] = {"center": "none"}

    # Encoder sizes; the decoder mirrors them. The paper: (128, 256, 256) for its smallest
    # Netflix split, (512, 512, 1024) for the full one (256s here: bench/RESULTS.md, "Figures moved out").
    layers: tuple[int, ...] = (128, 256, 256)
    dropout: float = 0.65  # drop probability on the code: dp(0.65) with those layers, dp(0.8) for the big one
    constrained: bool = False  # tie each decoder weight to its encoder's transpose
    # The authors' code puts SELU on the output too; a centred output is a signed deviation
    # (a 1 from a user averaging 4 is -3, below SELU's floor of -1.76), so identity here.
    last_layer_activation: bool = False
    center: str = "bias"  # predict o + g(x - o), o the bias model or the row's mean (module docstring); "none": f(x)
    refeed: bool = True  # dense re-feeding: one extra update on (f(x), f(x)) per batch
    # The paper: SGD, momentum 0.9 (and Adam variants); Adam converges far sooner (bench/RESULTS.md, "Figures moved out").
    optimizer: Literal["momentum", "adam"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # for optimizer="momentum"
    # The paper regularises with dropout only; with ~900 users L2 is what stops overfitting.
    # None: WEIGHT_DECAY_RATINGS / the training ratings (``for_data``).
    weight_decay: float | None = None
    batch_size: int = 128  # the authors' script (other sizes: bench/RESULTS.md, "Figures moved out")
    epochs: int = 100  # early stopping ends every seed before 45
    patience: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", centre(self.center))
        if not self.layers or min(self.layers) < 1:
            raise ModelInputError(f"DeepRec layers must be positive sizes, got {self.layers!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelInputError(f"DeepRec dropout must be in [0, 1), got {self.dropout}")
        if self.optimizer not in ("momentum", "adam"):
            raise ModelInputError(f"DeepRec optimizer must be 'momentum' or 'adam', got {self.optimizer!r}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ModelInputError(f"DeepRec weight_decay must be at least 0, got {self.weight_decay}")

    def for_data(self, shape: DataShape) -> DeepRecConfig:
        """weight_decay, when not given: WEIGHT_DECAY_RATINGS / shape.nnz."""
        if self.weight_decay is not None:
            return self
        return dataclasses.replace(self, weight_decay=WEIGHT_DECAY_RATINGS / shape.nnz)


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space)
SEARCH_SPACE = {
    "dropout": ("float", 0.0, 0.9),
    "layers": ("choice", [(128, 128), (128, 256, 256), (256, 256, 256), (512, 512, 1024)]),
    "weight_decay": ("log", 1e-4, 1e-1),
}


# The paper's best Netflix model (full split, RMSE 0.9099) with its own math, as overrides of DeepRecConfig.
PAPER_NETFLIX = dict(
    layers=(512, 512, 1024), dropout=0.8, optimizer="momentum", lr=1e-3, weight_decay=0.0,
    center="none", last_layer_activation=True,
)


class DeepRec(Recommender):
    """Deep SELU autoencoder over a user's ratings, with code dropout and dense re-feeding."""

    name = "deeprec"
    task = "rating"
    reduced_precision = True
    Config: ClassVar[type] = DeepRecConfig
    search_space = SEARCH_SPACE

    def __init__(self, config: DeepRecConfig, n_items: int, n_users: int, rating_range=(1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        sizes = (self.n_items, *config.layers)
        self.encoder = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in pairwise(sizes))
        # Decoder layer k (from the code back to n_items) mirrors encoder layer L-1-k: weight [out, in].
        decoder_shapes = [(n_in, n_out) for n_in, n_out in reversed(list(pairwise(sizes)))]
        if config.constrained:
            self.decoder_weights = None  # the encoder's weights, transposed, serve both ways
        else:
            self.decoder_weights = nn.ParameterList(nn.Parameter(torch.empty(shape)) for shape in decoder_shapes)
        self.decoder_biases = nn.ParameterList(nn.Parameter(torch.zeros(out)) for out, _ in decoder_shapes)
        self.code_dropout = nn.Dropout(config.dropout)
        # μ + b_u + b_i that the output is added to (module docstring); none in an older save
        self.offset = BiasOffset(n_items) if config.center == "bias" else None
        for layer in self.encoder:  # the authors initialise weights Xavier-uniform, biases zero
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        for weight in self.decoder_weights or []:
            nn.init.xavier_uniform_(weight)

    def decoder_weight(self, k: int) -> torch.Tensor:
        """Weight [out, in] of decoder layer k (0 = right after the code)."""
        if self.decoder_weights is None:
            return self.encoder[len(self.encoder) - 1 - k].weight.T
        return self.decoder_weights[k]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): SELU encoder, dropout on the code, SELU decoder back to one rating per item.

        Centred: o + g(x - o), o = μ + b_u + b_i ("bias") or the row's mean over its non-zero entries
        (0 if none, "user").
        """
        offset = 0.0
        if self.config.center != "none":
            rated = x != 0
            if self.offset is not None:
                offset = self.offset(x)
            else:
                offset = x.sum(dim=1, keepdim=True) / rated.sum(dim=1, keepdim=True).clamp(min=1)
            x = torch.where(rated, x - offset, torch.zeros_like(x))
        h = x
        for layer in self.encoder:
            h = F.selu(layer(h))
        h = self.code_dropout(h)
        last = len(self.decoder_biases) - 1
        for k, bias in enumerate(self.decoder_biases):
            h = F.linear(h, self.decoder_weight(k), bias)
            if k < last or self.config.last_layer_activation:
                h = F.selu(h)
        return h + offset

    def training_batches(
        self, data: TrainData, generator: np.random.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ratings = data.on_device(self.device, self.n_items, binary=False)
        if ratings.n_rows != self.n_users:
            raise ModelInputError(f"training matrix has {ratings.n_rows} users, the model was built for {self.n_users}")
        self.prepare_scoring(data)  # the bias model the rows are centred on, fitted once per fit
        for batch in ratings.batches(data.epoch_order(ratings.n_rows, generator), self.config.batch_size):
            x = batch.dense()
            yield x, (x != 0).float()  # a stored 0 is no rating (team convention)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor | None], **annealing: float) -> torch.Tensor:
        """MMSE over the observed entries; ``observed=None`` means every entry (a re-fed dense example)."""
        x, observed = batch
        x = x.to(self.device)
        squared_error = (self.reconstruct(x).float() - x) ** 2  # float32 errors, as AutoRec's
        if observed is None:
            return squared_error.mean()
        observed = observed.to(self.device)
        return (observed * squared_error).sum() / observed.sum().clamp(min=1.0)

    def train_step(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        *,
        forward: Any = None,
        **annealing: float,
    ) -> torch.Tensor:
        """The paper's two updates: MMSE on the sparse x, then MSE of f(f(x)) against the dense f(x)."""
        if self.config.refeed:
            # f(x) at this step's weights (dropout on, as in training), taken before the first update changes them
            with torch.no_grad():
                dense = self.reconstruct(batch[0].to(self.device))
        loss = super().train_step(batch, optimizer, forward=forward, **annealing)
        if self.config.refeed:
            super().train_step((dense, None), optimizer, forward=forward, **annealing)
        return loss

    def prepare_scoring(self, data: TrainData) -> None:
        if self.offset is not None:
            self.offset.fit(data)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.weight_decay is None:  # trainer.fit sets it; a hand-built config must too
            raise ModelInputError("DeepRec weight_decay is None: set it or apply models.base.for_data")
        if cfg.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    @torch.no_grad()
    def scores(
        self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None
    ) -> torch.Tensor:
        return self.reconstruct(as_row_batch(rows, self.n_items, self.device, binary=False).dense())

    def item_embeddings(self) -> torch.Tensor:
        return self.decoder_weight(len(self.decoder_biases) - 1).detach()  # [n_items, layers[0]]
