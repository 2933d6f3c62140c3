"""The one interface every recommender implements.

A model takes a batch of user interaction rows (a CSR matrix, users x items) and
returns a score for every item. It never holds the dataset: a user it has never
seen is scored from the rows passed in ("fold-in"). Ranking, masking of seen
items and the top-k cut happen outside the network, once for all models
(``models.scoring``).

``recommend``, ``predict``, ``contributions`` and ``scores`` all take what a caller has
and each model reads what it needs, so callers never ask what a model is:
  * ``users``: each row's training-row index, -1 (or None for all rows) where the model did
    not train on the user. A model with per-user parameters (CDAE) reads them; one that cannot
    fold in (I-AutoRec) refuses a row without one; the rest ignore them.
  * ``timestamps``: a CSR with the rows' pattern. A sequential model (SVAE) reads each row
    in time order and refuses rows without them; the rest ignore them.

A model file implements four things:
  * ``Config``: a frozen dataclass of hyper-parameters, defaults from the paper;
  * ``scores(rows, users=None, timestamps=None) -> Tensor[n, n_items]``;
  * ``training_batches(data, generator)`` and ``loss(batch, **annealing)`` for
    gradient-trained models, or ``solve(data)`` for closed-form ones (EASE);
  * ``configure_optimizer()``: the optimiser the paper used;
  * optionally ``pair_scores``: a rating model's scores at given (row, item) pairs only;
  * optionally ``contributions``: each history item's share of a row's scores (``Recommender``'s
    default removes each item in one batched pass; EASE and EDLAE give their exact linear terms).
Gradient-trained configs carry ``epochs``, ``batch_size``, ``lr`` and ``patience``
(early-stopping patience in epochs, on the validation metric).
Training-loop state (optimiser, annealing, early stopping) lives in the trainer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from models.errors import ModelInputError
from models.rows import DeviceRows, as_csr
from models.scoring import SCORE_BATCH_ROWS, evaluating, item_scores, pair_predictions, top_k, without_each

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model.json"


@dataclass
class TrainData:
    """What a model trains on: users x items CSR, plus timestamps (same pattern) for sequential models.

    ``on_device`` moves the matrix to the training device once per fit; every epoch's batches
    are gathered there (``models.rows``).
    """

    X: sp.csr_matrix
    timestamps: sp.csr_matrix | None = None
    rating_range: tuple[float, float] = (1.0, 5.0)
    rank: int = 0  # this process's rank under data-parallel training (torchrun)
    world_size: int = 1
    _resident: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def epoch_order(self, n: int, generator: np.random.Generator) -> np.ndarray:
        """This process's share of one epoch's shuffled example indices (0..n-1).

        Every rank draws the same permutation (same seed) and takes an equal-length
        slice, so all ranks make the same number of steps, as DistributedDataParallel needs.
        """
        order = generator.permutation(n)
        if self.world_size == 1:
            return order
        per_rank = n // self.world_size
        return order[self.rank * per_rank : (self.rank + 1) * per_rank]

    def cached(self, key: Any, build: Any) -> Any:
        """``build()`` once per fit, kept beside the resident matrices (e.g. the bias model a rating AE centres on)."""
        return self._resident[key] if key in self._resident else self._resident.setdefault(key, build())

    def on_device(
        self, device: torch.device, n_items: int, *, binary: bool, items_as_rows: bool = False,
        in_time_order: bool = False,
    ) -> DeviceRows:
        """The training matrix (``n_items`` wide, as the model was built) on ``device``, built on
        first use and kept for the fit: ``binary`` (positives as 1s) or the stored values;
        ``items_as_rows``: its transpose (one row per item); ``in_time_order``: each row's entries
        in time order (needs timestamps)."""
        if self.X.shape[1] != n_items:
            raise ModelInputError(f"training matrix has {self.X.shape[1]} columns but the model was built for {n_items} items")
        key = (str(device), binary, items_as_rows, in_time_order)
        if key not in self._resident:
            if in_time_order and self.timestamps is None:
                raise ModelInputError("this model reads each user's items in time order: pass timestamps")
            X = sp.csr_matrix(self.X.T) if items_as_rows else self.X
            self._resident[key] = DeviceRows(X, device, binary=binary, timestamps=self.timestamps if in_time_order else None)
        return self._resident[key]


class Recommender(nn.Module):
    """Base of every model. Subclasses set the class attributes and implement ``scores``."""

    name: ClassVar[str]
    task: ClassVar[Literal["rating", "ranking"]]
    Config: ClassVar[type]
    can_fold_in: ClassVar[bool] = True  # False: serves only the users it was trained on
    sequential: ClassVar[bool] = False  # True: needs interaction order (timestamps)
    closed_form: ClassVar[bool] = False  # True: trained by ``solve``, not by gradient steps
    # True: the loss may run its dense layers in bfloat16 under autocast (the trainer's
    # ``precision="bf16"``); it takes its softmax and error terms in float32 itself.
    reduced_precision: ClassVar[bool] = False
    # False: a row's items do not move its scores (a model that scores by user index, a constant
    # per item), so ``contributions`` has nothing to say and refuses
    explainable: ClassVar[bool] = True
    # how ``contributions`` is computed: "removal" (the score drops, measured) or "weights" (exact terms)
    explained_by: ClassVar[Literal["removal", "weights"]] = "removal"
    # The key hyper-parameters ``trainer train --tune`` searches, as plain data (no Optuna here):
    # {Config field: ("log", low, high) | ("float", low, high) | ("int", low, high) | ("choice", [values])};
    # "log" is a float drawn on a log scale. Declared in each model's file beside its Config.
    search_space: ClassVar[dict[str, tuple]] = {}

    def __init__(self, config: Any, n_items: int, n_users: int, rating_range: tuple[float, float] = (1.0, 5.0)):
        super().__init__()
        self.config = config
        self.n_items = int(n_items)
        self.n_users = int(n_users)
        self.rating_range = (float(rating_range[0]), float(rating_range[1]))

    # ---- implemented by each model -------------------------------------------------
    def scores(
        self, rows: sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None
    ) -> torch.Tensor:
        """Scores for every item, shape [n_rows, n_items], on ``self.device``; no grad."""
        raise NotImplementedError

    def pair_scores(
        self, rows: sp.csr_matrix, pair_rows: torch.Tensor, items: torch.Tensor, users: np.ndarray | None = None,
        timestamps: sp.csr_matrix | None = None,
    ) -> torch.Tensor:
        """``scores(rows, users, timestamps)[pair_rows, items]``, [n_pairs]: what ``predict`` reads. A model
        whose last layer is one vector per item overrides it to compute the asked items alone."""
        return self.scores(rows, users=users, timestamps=timestamps)[pair_rows, items]

    def training_batches(self, data: TrainData, generator: np.random.Generator) -> Iterator[Any]:
        raise NotImplementedError(f"{self.name} is not trained by gradient steps")

    def loss(self, batch: Any, **annealing: float) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} is not trained by gradient steps")

    def solve(self, data: TrainData) -> None:
        raise NotImplementedError(f"{self.name} has no closed form")

    def configure_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError(f"{self.name} is not trained by gradient steps")

    def item_embeddings(self) -> torch.Tensor:
        """One vector per item, [n_items, d], for item-to-item similarity (cosine): a view of
        the model's weights where it has them as such (the service reads them in place), so
        read-only."""
        raise NotImplementedError(f"{self.name} has no item embeddings")

    def prepare_scoring(self, data: TrainData) -> None:
        """Run before validation and after training with the training data (e.g. cache item codes)."""

    def annealing(self, step: int, epoch: int) -> dict[str, float]:
        """Loss weights annealed by step, by name (the VAEs' KL weight); a pure function of the step."""
        return {}

    def forward(self, batch: Any, **annealing: float) -> torch.Tensor:
        """Training forward pass = the loss, so a DistributedDataParallel wrapper can drive it."""
        return self.loss(batch, **annealing)

    def train_step(
        self, batch: Any, optimizer: torch.optim.Optimizer, *, forward: Any = None, **annealing: float
    ) -> torch.Tensor:
        """One optimiser step; returns the loss, detached, on the device (reading it would make
        the host wait for the step). Models with a special update (DeepRec's re-feeding) override it.

        ``forward`` is the callable computing the loss: the model itself, or its DDP wrapper
        (whose call synchronises gradients across processes).
        """
        forward = self if forward is None else forward
        optimizer.zero_grad(set_to_none=True)
        loss = forward(batch, **annealing)
        loss.backward()
        optimizer.step()
        return loss.detach()

    # ---- shared by all models ------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def _check_users(self, users: np.ndarray | None, n_rows: int) -> np.ndarray | None:
        """``users`` as int64 (None: no row's user is known); a model that cannot fold in refuses a row whose
        user it did not train on."""
        if users is None:
            if not self.can_fold_in:
                raise ModelInputError(
                    f"{self.name} cannot fold in new users: pass `users` (training-row indices) for users it was trained on"
                )
            return None
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if users.shape[0] != n_rows:
            raise ModelInputError(f"users has {users.shape[0]} entries for {n_rows} rows")
        if not self.can_fold_in and ((users < 0) | (users >= self.n_users)).any():
            bad = users[(users < 0) | (users >= self.n_users)][0]
            raise ModelInputError(f"{self.name} cannot fold in new users: it was not trained on user index {bad} "
                                  f"(it knows {self.n_users} users)")
        return users

    def _check_timestamps(self, timestamps: Any, rows: sp.csr_matrix) -> sp.csr_matrix | None:
        """``timestamps`` if this model reads the order of each row's items, else None (ignored); a
        sequential model requires them, a sparse matrix of the rows' shape and entries."""
        if not self.sequential:
            return None
        if timestamps is None or not sp.issparse(timestamps) or timestamps.shape != rows.shape or timestamps.nnz != rows.nnz:
            raise ModelInputError(f"{self.name} reads each row's items in time order: pass the rows' timestamps "
                                  "(a sparse matrix with the same shape and entries as the rows)")
        return timestamps

    @torch.no_grad()
    def recommend(
        self,
        rows: sp.csr_matrix,
        k: int = 10,
        *,
        users: np.ndarray | None = None,
        exclude_seen: bool = True,
        exclude: sp.csr_matrix | np.ndarray | None = None,
        candidates: np.ndarray | None = None,
        timestamps: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores for each row, best first, both [n_rows, k].

        ``exclude``: items never to return (an index array for all rows, or a CSR of
        per-row items). ``candidates``: an index array; only these items may be returned.
        Where fewer than k items are allowed, the tail is padded with id -1 and score -inf.
        """
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ModelInputError(f"k must be a positive integer, got {k!r}")
        rows = as_csr(rows, self.n_items)
        users = self._check_users(users, rows.shape[0])
        timestamps = self._check_timestamps(timestamps, rows)
        if candidates is not None:
            candidates = np.asarray(candidates, dtype=np.int64).reshape(-1)
            if ((candidates < 0) | (candidates >= self.n_items)).any():
                raise ModelInputError("candidates contain item indices outside the model's items")
        if exclude is not None and sp.issparse(exclude) and exclude.shape != rows.shape:
            raise ModelInputError(f"exclude has shape {exclude.shape}, rows have {rows.shape}")
        inputs = DeviceRows(rows, self.device, binary=self.task == "ranking", timestamps=timestamps)
        with evaluating(self):
            return top_k(self.scores, inputs, int(k), users, exclude_seen=exclude_seen, exclude=exclude,
                         candidates=candidates)

    @torch.no_grad()
    def predict(
        self,
        rows: sp.csr_matrix,
        items: np.ndarray,
        *,
        users: np.ndarray | None = None,
        pair_rows: np.ndarray | None = None,
        batch_rows: int = SCORE_BATCH_ROWS,
        timestamps: sp.csr_matrix | None = None,
    ) -> np.ndarray:
        """Rating predictions for pairs, clipped to the rating range: pair j is row ``pair_rows[j]``
        of ``rows`` (row j without ``pair_rows``) and item ``items[j]``.

        Each distinct row is scored once, however many of its items are asked for: a user's
        whole score row costs the same for one item as for all of them.
        """
        if self.task != "rating":
            raise ModelInputError(f"{self.name} ranks items; it does not predict ratings")
        rows = as_csr(rows, self.n_items)
        timestamps = self._check_timestamps(timestamps, rows)
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if pair_rows is None:
            if items.shape[0] != rows.shape[0]:
                raise ModelInputError(f"items has {items.shape[0]} entries for {rows.shape[0]} rows")
            pair_rows = np.arange(rows.shape[0])
        pair_rows = np.asarray(pair_rows, dtype=np.int64).reshape(-1)
        if pair_rows.shape[0] != items.shape[0]:
            raise ModelInputError(f"items has {items.shape[0]} entries for {pair_rows.shape[0]} pair_rows")
        if ((pair_rows < 0) | (pair_rows >= rows.shape[0])).any():
            raise ModelInputError(f"pair_rows contain indices outside the {rows.shape[0]} rows")
        if ((items < 0) | (items >= self.n_items)).any():
            raise ModelInputError("items contain indices outside the model's items")
        if users is not None:
            users = np.asarray(users).reshape(-1)
            if users.shape[0] != rows.shape[0]:
                raise ModelInputError(f"users has {users.shape[0]} entries for {rows.shape[0]} rows")
        # only the rows some pair asks about are scored (and their users checked)
        distinct, pair_block_row = np.unique(pair_rows, return_inverse=True)
        users = self._check_users(None if users is None else users[distinct], distinct.size)
        if distinct.size < rows.shape[0]:  # np.unique is sorted: all rows asked about means rows as they are
            rows, timestamps = rows[distinct], None if timestamps is None else timestamps[distinct]
        with evaluating(self):
            out = pair_predictions(self.pair_scores, rows, pair_block_row, items, users, timestamps, batch_rows, self.device)
        return np.clip(out, *self.rating_range)

    # ---- explanations --------------------------------------------------------------
    def _explain_inputs(
        self, row: Any, items: np.ndarray, history: np.ndarray | None, timestamps: Any
    ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray, sp.csr_matrix | None]:
        """(row checked, items, history columns, each history column's position among the row's entries,
        the timestamps this model reads)."""
        if not self.explainable:
            raise ModelInputError(f"{self.name}'s scores do not depend on the history it is given: nothing to explain")
        row = as_csr(row, self.n_items)
        if row.shape[0] != 1:
            raise ModelInputError(f"contributions explains one row at a time, got {row.shape[0]}")
        timestamps = self._check_timestamps(timestamps, row)
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if ((items < 0) | (items >= self.n_items)).any():
            raise ModelInputError("items contain indices outside the model's items")
        cols = row.indices.astype(np.int64)
        history = cols.copy() if history is None else np.asarray(history, dtype=np.int64).reshape(-1)
        order = np.argsort(cols, kind="stable")
        at = np.searchsorted(cols[order], history).clip(max=max(len(cols) - 1, 0))
        if len(history) and (not len(cols) or (cols[order][at] != history).any()):
            raise ModelInputError("history contains items that are not in the row")
        return row, items, history, order[at] if len(history) else np.zeros(0, dtype=np.int64), timestamps

    @torch.no_grad()
    def contributions(
        self,
        row: sp.csr_matrix,
        items: np.ndarray,
        *,
        history: np.ndarray | None = None,
        users: np.ndarray | None = None,
        timestamps: sp.csr_matrix | None = None,
    ) -> np.ndarray:
        """What each history item adds to one row's scores of ``items``, [len(items), len(history)]:
        entry (t, h) is the score of ``items[t]`` from the whole row minus its score from the row
        without ``history[h]`` (positive: the item pulled it up). A rating model's scores are its
        predictions before clipping.

        ``history``: columns stored in ``row`` (default: all of them, in stored order). One batched
        pass: the row and the len(history) rows each lacking one of its items are scored together."""
        row, items, history, at, timestamps = self._explain_inputs(row, items, history, timestamps)
        users = self._check_users(users, 1)
        if len(history) == 0 or len(items) == 0:
            return np.zeros((len(items), len(history)), dtype=np.float32)
        batch, batch_ts = without_each(row, at, timestamps)  # row 0: the whole row; row 1 + h: without at[h]
        inputs = DeviceRows(batch, self.device, binary=self.task == "ranking", timestamps=batch_ts)
        with evaluating(self):
            out = item_scores(self.scores, inputs, items, None if users is None else np.repeat(users, len(history) + 1))
        return (out[0:1] - out[1:]).T.contiguous().cpu().numpy()

    # ---- persistence ---------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Weights as safetensors plus a JSON of the config; enough to rebuild without the trainer."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_FILE))
        meta = {
            "model": self.name,
            "config": dataclasses.asdict(self.config),
            "n_items": self.n_items,
            "n_users": self.n_users,
            "rating_range": list(self.rating_range),
        }
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def build_config(config_cls: type, overrides: dict[str, Any]) -> Any:
    """Build a model's config from overrides; an unknown key is an error, not a silent None."""
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ModelInputError(
            f"unknown hyper-parameter(s) for {config_cls.__qualname__}: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    values = {}
    for key, value in overrides.items():
        default = getattr(config_cls, key, None) if known[key].default is not dataclasses.MISSING else None
        # tuples arrive as lists from JSON/TOML; keep the dataclass hashable and frozen
        if isinstance(value, list) or isinstance(default, tuple):
            value = tuple(value) if isinstance(value, (list, tuple)) else value
        values[key] = value
    return config_cls(**values)
