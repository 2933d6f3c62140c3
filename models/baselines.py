"""The floor every model must beat (protocols.md, "Baselines"): global mean, user+item bias, popularity.

They are ``Recommender``s like the autoencoders, so they share ``recommend``, ``predict``,
``save`` and ``models.load``; each is solved in closed form. They are not in
``models.REGISTRY`` (that lists the autoencoders): ``BASELINES`` lists them.

    global-mean   r̂_ui = μ
    bias          r̂_ui = μ + b_u + b_i, fitted by alternating least squares as Surprise's
                  BaselineOnly: b_i = Σ_u (r_ui - μ - b_u) / (λ_i + |U_i|), then
                  b_u = Σ_i (r_ui - μ - b_i) / (λ_u + |I_u|), repeated.
    popularity    items ranked by their number of training interactions.
No model keeps user state: the bias model computes b_u from the row it is given (its
last ALS step, so a training row gets exactly its trained bias, and a new user a fold-in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from models.base import ModelInputError, Recommender, TrainData, build_config
from models.rows import as_csr, as_row_batch, count_rows


def _ratings(data: TrainData, n_items: int) -> sp.csr_matrix:
    X = as_csr(data.X, n_items).copy()  # our own copy: the caller's matrix is not ours to edit
    X.sum_duplicates()
    X.eliminate_zeros()  # a stored 0 is no interaction
    if X.nnz == 0:
        raise ModelInputError("cannot fit a baseline on a matrix with no interactions")
    return X


def _every_row(item_scores: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The same item scores for each of ``n_rows`` rows, as a writable [n_rows, n_items] tensor."""
    return item_scores.unsqueeze(0).expand(n_rows, -1).clone()


# ---- global mean ------------------------------------------------------------------------
@dataclass(frozen=True)
class GlobalMeanConfig:
    """No hyper-parameters: μ is the mean training rating."""


class GlobalMean(Recommender):
    name = "global-mean"
    task = "rating"
    Config = GlobalMeanConfig
    closed_form = True
    explainable = False  # one number for every pair

    def __init__(
        self, config: GlobalMeanConfig, n_items: int, n_users: int, rating_range: tuple[float, float] = (1.0, 5.0)
    ):
        super().__init__(config, n_items, n_users, rating_range)
        self.register_buffer("mean", torch.zeros(()))

    def solve(self, data: TrainData) -> None:
        self.mean.fill_(float(_ratings(data, self.n_items).data.astype(np.float64).mean()))

    def scores(self, rows, users=None, timestamps=None) -> torch.Tensor:
        return _every_row(self.mean.expand(self.n_items), count_rows(rows, self.n_items))


# ---- user + item bias -------------------------------------------------------------------
@dataclass(frozen=True)
class UserItemBiasConfig:
    """Surprise BaselineOnly's ALS defaults: reg_i 10, reg_u 15, 10 epochs."""

    reg_items: float = 10.0
    reg_users: float = 15.0
    n_iters: int = 10

    def __post_init__(self) -> None:
        if self.reg_items <= 0 or self.reg_users <= 0:
            raise ModelInputError(f"reg_items and reg_users must be > 0, got {self.reg_items}, {self.reg_users}")
        if int(self.n_iters) != self.n_iters or self.n_iters < 1:
            raise ModelInputError(f"n_iters must be a positive integer, got {self.n_iters!r}")


def als_biases(X: sp.csr_matrix, config: UserItemBiasConfig) -> tuple[float, np.ndarray, np.ndarray]:
    """(μ, b_i, b_u) of a ratings matrix with no stored zeros, by the module docstring's ALS."""
    X = X.tocoo()
    u, i, r = X.row, X.col, X.data.astype(np.float64)
    n_users, n_items = X.shape
    mu = float(r.mean())
    per_item = np.bincount(i, minlength=n_items)
    per_user = np.bincount(u, minlength=n_users)
    b_u, b_i = np.zeros(n_users), np.zeros(n_items)
    for _ in range(int(config.n_iters)):
        b_i = np.bincount(i, r - mu - b_u[u], minlength=n_items) / (config.reg_items + per_item)
        b_u = np.bincount(u, r - mu - b_i[i], minlength=n_users) / (config.reg_users + per_user)
    return mu, b_i, b_u


class UserItemBias(Recommender):
    name = "bias"
    task = "rating"
    Config = UserItemBiasConfig
    closed_form = True

    def __init__(
        self, config: UserItemBiasConfig, n_items: int, n_users: int, rating_range: tuple[float, float] = (1.0, 5.0)
    ):
        super().__init__(config, n_items, n_users, rating_range)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("item_bias", torch.zeros(n_items))

    def solve(self, data: TrainData) -> None:
        mu, b_i, _ = als_biases(_ratings(data, self.n_items), self.config)
        self.mean.fill_(mu)
        self.item_bias.copy_(torch.from_numpy(b_i))

    def user_bias(self, rows) -> torch.Tensor:
        """b_u of each row from its own ratings, given μ and the item biases (the ALS user step)."""
        batch = as_row_batch(rows, self.n_items, self.item_bias.device, binary=False)  # stored 0s are no rating
        row_of = batch.row_of
        residual = batch.values.double() - self.mean.double() - self.item_bias.double()[batch.col]
        sums = torch.zeros(len(batch), dtype=torch.float64, device=row_of.device).index_add_(0, row_of, residual)
        return sums / (self.config.reg_users + torch.bincount(row_of, minlength=len(batch)))

    def scores(self, rows, users=None, timestamps=None) -> torch.Tensor:
        b_u = self.user_bias(rows).to(self.item_bias)
        return self.mean + b_u[:, None] + self.item_bias[None, :]


CENTRES = ("bias", "user", "none")  # what a rating autoencoder's output is added to: see centre()


def centre(value: str | bool, allowed: tuple[str, ...] = CENTRES) -> str:
    """A rating autoencoder's ``center`` as one of ``allowed``: "bias" (μ + b_u + b_i, ``BiasOffset``),
    "user" (the row's mean rating) or "none"; a bool is how a config saved before "bias" said
    "user" (True) or "none" (False)."""
    if isinstance(value, bool):
        value = "user" if value else "none"
    if value not in allowed:
        raise ModelInputError(f"center must be one of {', '.join(allowed)}, got {value!r}")
    return value


class BiasOffset(nn.Module):
    """The bias model's μ + b_u + b_i as a part of a rating autoencoder that learns the residual on it.

    μ and b_i are fitted on the training matrix (``fit``) and kept as buffers, saved with the
    network; b_u is the ALS user step on the ratings at hand, so a row seen in training gets its
    trained bias and a new user's comes from their history at request time (fold-in).
    """

    def __init__(self, n_items: int, config: UserItemBiasConfig = UserItemBiasConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("item_bias", torch.zeros(n_items))

    def fit(self, data: TrainData) -> torch.Tensor:
        """Set μ and b_i from ``data`` (once per fit: kept with its resident matrices); return the
        training rows' b_u [n_users] on the buffers' device."""
        def solve() -> tuple[float, torch.Tensor, torch.Tensor]:
            mu, b_i, b_u = als_biases(_ratings(data, self.item_bias.shape[0]), self.config)
            return mu, torch.from_numpy(b_i).to(self.item_bias), torch.from_numpy(b_u).to(self.item_bias)

        mu, b_i, b_u = data.cached(("bias-offset", self.config, str(self.item_bias.device)), solve)
        self.mean.fill_(mu)
        self.item_bias.copy_(b_i)
        return b_u

    def user_bias(self, r: torch.Tensor) -> torch.Tensor:
        """b_u [n, 1] of dense rows ``r`` [n, n_items] (0: no rating)."""
        rated = r != 0
        residual = torch.where(rated, r - self.mean - self.item_bias, torch.zeros_like(r))
        return residual.sum(dim=1, keepdim=True) / (self.config.reg_users + rated.sum(dim=1, keepdim=True))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """μ + b_u + b_i [n, n_items] for dense rows ``r``."""
        return self.mean + self.item_bias + self.user_bias(r)


# ---- popularity -------------------------------------------------------------------------
@dataclass(frozen=True)
class PopularityConfig:
    """No hyper-parameters: an item's score is its rank by training interactions."""


class Popularity(Recommender):
    """Most-interacted items first; also the service's cold-start list (``recommend`` on an empty row).

    Scores are n_items - rank (rank 0 = most interactions, ties to the lower item index),
    so every score differs and ``torch.topk``'s order among ties never matters.
    ``item_counts`` keeps the raw counts.
    """

    name = "popularity"
    task = "ranking"
    Config = PopularityConfig
    closed_form = True
    explainable = False  # the same list for everyone

    def __init__(
        self, config: PopularityConfig, n_items: int, n_users: int, rating_range: tuple[float, float] = (0.0, 1.0)
    ):
        super().__init__(config, n_items, n_users, rating_range)
        self.register_buffer("item_counts", torch.zeros(n_items))
        self.register_buffer("item_scores", torch.zeros(n_items))

    def solve(self, data: TrainData) -> None:
        counts = np.bincount(_ratings(data, self.n_items).indices, minlength=self.n_items)
        order = np.lexsort((np.arange(self.n_items), -counts))  # most first, then lower index
        rank_score = np.empty(self.n_items, dtype=np.float32)
        rank_score[order] = self.n_items - np.arange(self.n_items)
        self.item_counts.copy_(torch.from_numpy(counts.astype(np.float32)))
        self.item_scores.copy_(torch.from_numpy(rank_score))

    def scores(self, rows, users=None, timestamps=None) -> torch.Tensor:
        return _every_row(self.item_scores, count_rows(rows, self.n_items))


BASELINES: dict[str, type[Recommender]] = {cls.name: cls for cls in (GlobalMean, UserItemBias, Popularity)}


def fit_baseline(name: str, data: TrainData, **hyper: Any) -> Recommender:
    """Build and solve baseline ``name`` on ``data``; ``fit_baseline("popularity", ...)`` is the cold-start list."""
    if name not in BASELINES:
        raise ModelInputError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    cls = BASELINES[name]
    n_users, n_items = data.X.shape
    model = cls(build_config(cls.Config, hyper), n_items=n_items, n_users=n_users, rating_range=data.rating_range)
    model.solve(data)
    return model.eval()
