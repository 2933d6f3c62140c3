"""The one interface every recommender implements.

A model takes a batch of user interaction rows (a CSR matrix, users x items) and
returns a score for every item. It never holds the dataset: a user it has never
seen is scored from the rows passed in ("fold-in"). Ranking, masking of seen
items and the top-k cut happen here, outside the network, once for all models.

A model file implements four things:
  * ``Config``: a frozen dataclass of hyper-parameters, defaults from the paper;
  * ``scores(rows, users=None, timestamps=None) -> Tensor[n, n_items]``;
  * ``training_batches(data, generator)`` and ``loss(batch, **schedule)`` for
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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ModelInputError
from models.rows import DeviceRows, RowBatch

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model.json"
SCORE_BATCH_ROWS = 2048  # rows scored per forward pass: bounds memory at n * n_items floats


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


def as_csr(rows: Any, n_items: int) -> sp.csr_matrix:
    """Check a batch of rows at the door: CSR (or convertible), float32, the model's width."""
    if not sp.issparse(rows):
        raise ModelInputError(f"rows must be a scipy.sparse matrix, got {type(rows).__name__}")
    if not (isinstance(rows, sp.csr_matrix) and rows.dtype == np.float32):
        rows = sp.csr_matrix(rows, dtype=np.float32)  # a copy only when the type or dtype differ
    if rows.ndim != 2 or rows.shape[1] != n_items:
        raise ModelInputError(f"rows have {rows.shape[1]} columns but the model was trained on {n_items} items")
    if rows.nnz and not np.isfinite(rows.data).all():
        raise ModelInputError("rows contain NaN or infinite values")
    return rows


def as_row_batch(
    rows: Any, n_items: int, device: torch.device, *, binary: bool, timestamps: sp.csr_matrix | None = None
) -> RowBatch:
    """What ``scores`` reads: a ``RowBatch`` on ``device`` as it is (already checked and on the device:
    ``recommend``, training), or a scipy CSR checked by ``as_csr`` and moved there (``binary``: its
    positives as 1s; ``timestamps``: each row in time order)."""
    if isinstance(rows, RowBatch):
        if rows.n_cols != n_items:
            raise ModelInputError(f"rows have {rows.n_cols} columns but the model was trained on {n_items} items")
        return rows
    rows = as_csr(rows, n_items)
    return DeviceRows(rows, device, binary=binary, timestamps=timestamps).between(0, rows.shape[0])


def use_tensor_cores(device: torch.device | str) -> None:
    """On a GPU, float32 matrix products in TF32 on the tensor cores (a 10-bit mantissa with float32's
    range and accumulation), several times the plain float32 rate (bench/gpu.py). Process-wide."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def count_rows(rows: Any, n_items: int) -> int:
    """How many rows ``rows`` holds (a ``RowBatch`` or a scipy CSR, checked like ``as_csr``), for
    models that score by user index and never read the rows themselves."""
    if isinstance(rows, RowBatch):
        return len(as_row_batch(rows, n_items, rows.device, binary=False))
    return as_csr(rows, n_items).shape[0]


def score_block_rows(n_items: int, device: torch.device) -> int:
    """Rows scored per pass: SCORE_BATCH_ROWS on a CPU; on a GPU as many as keep a block of
    float32 scores near 1 GiB, since each pass pays launch and sync overheads (bench/gpu.py)."""
    if device.type == "cpu":
        return SCORE_BATCH_ROWS
    return max(SCORE_BATCH_ROWS, (1 << 28) // max(1, n_items))


# ---- training helpers: the first layer of the autoencoders reads a batch's non-zeros only ----
def sparse_rows(x: torch.Tensor, dropout: nn.Module, normalize: bool = False) -> torch.Tensor:
    """``dropout(F.normalize(x, dim=1))`` (``normalize=False``: ``dropout(x)``) as a sparse CSR tensor.

    Both act on the non-zeros alone (a zero stays zero, whatever the mask), so no dense batch
    is made and ``InputLayer`` then reads only the weight rows of the batch's items.
    ``x``: a sparse CSR tensor (``RowBatch.sparse``) or dense rows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        x = x if x.layout == torch.sparse_csr else x.to_sparse_csr()
        crow, col, values = x.crow_indices(), x.col_indices(), x.values()
        if normalize:
            per_row = crow.diff()
            norms = torch.segment_reduce(values.square(), "sum", lengths=per_row).sqrt()
            values = values / norms.clamp_min(1e-12).repeat_interleave(per_row, output_size=values.shape[0])  # F.normalize's eps; no sync
        return torch.sparse_csr_tensor(crow, col, dropout(values), x.shape, check_invariants=False)  # valid: x's own


# Density from which the first layer's dense bf16 product on AMX beats the sparse (bench/RESULTS.md, "Figures moved out").
DENSE_MIN_DENSITY = 0.025


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX tiles for bfloat16 (Intel Sapphire Rapids and later)."""
    return bool(torch.cpu.get_capabilities().get("amx_bf16", False))


def _bfloat16_matrix_units(device: torch.device) -> bool:
    """A bfloat16 autocast is on for ``device`` and the device multiplies bfloat16 matrices in
    hardware built for it (measured: AMX; a CPU with only AVX512-BF16 was faster sparse)."""
    return (device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and cpu_has_amx_bf16())


class InputLayer(nn.Module):
    """An autoencoder's first layer, ``x W^T + b`` on click rows, with W stored one row per item.

    ``nn.Linear`` stores W as [out, n_items]; here it is ``item_weight`` [n_items, out], so a
    sparse batch's product is a sum of its items' rows (``embedding_bag``), and so is W's
    gradient: faster epochs than a sparse x dense product through ``nn.Linear``'s layout
    (bench/RESULTS.md, "Figures moved out").
    """

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.item_weight = nn.Parameter(layer.weight.detach().t().contiguous())  # same values as layer's
        self.bias = nn.Parameter(layer.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """W as ``nn.Linear`` has it, [out, n_items] (a view: for the L2 term and tests)."""
        return self.item_weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.layout == torch.strided:
            return torch.addmm(self.bias, x, self.item_weight)
        if _bfloat16_matrix_units(x.device) and x.values().numel() >= DENSE_MIN_DENSITY * x.shape[0] * x.shape[1]:
            # On AMX dense bf16 x W beats the sparse sum, whose backward sorts (bench/RESULTS.md, "Figures moved out").
            return torch.addmm(self.bias, x.to_dense(), self.item_weight)
        # float32 whatever the autocast: a sum of a few rows gains nothing from bfloat16
        with torch.autocast(x.device.type, enabled=False):
            return F.embedding_bag(
                x.col_indices(), self.item_weight, x.crow_indices(), mode="sum", per_sample_weights=x.values(),
                include_last_offset=True,
            ) + self.bias

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # Weights saved before this layer existed hold nn.Linear's ``weight`` [out, n_items]
        if prefix + "weight" in state_dict and prefix + "item_weight" not in state_dict:
            state_dict[prefix + "item_weight"] = state_dict.pop(prefix + "weight").t()
        super()._load_from_state_dict(state_dict, prefix, *args)


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
        self, rows: sp.csr_matrix, pair_rows: torch.Tensor, items: torch.Tensor, users: np.ndarray | None = None
    ) -> torch.Tensor:
        """``scores(rows, users)[pair_rows, items]``, [n_pairs]: what ``predict`` reads. A model
        whose last layer is one vector per item overrides it to compute the asked items alone."""
        return self.scores(rows, users=users)[pair_rows, items]

    def training_batches(self, data: TrainData, generator: np.random.Generator) -> Iterator[Any]:
        raise NotImplementedError(f"{self.name} is not trained by gradient steps")

    def loss(self, batch: Any, **schedule: float) -> torch.Tensor:
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

    def schedule(self, step: int, epoch: int) -> dict[str, float]:
        """Per-step values the paper's loss needs (e.g. the KL weight); a pure function of the step."""
        return {}

    def forward(self, batch: Any, **schedule: float) -> torch.Tensor:
        """Training forward pass = the loss, so a DistributedDataParallel wrapper can drive it."""
        return self.loss(batch, **schedule)

    def train_step(
        self, batch: Any, optimizer: torch.optim.Optimizer, *, forward: Any = None, **schedule: float
    ) -> torch.Tensor:
        """One optimiser step; returns the loss, detached, on the device (reading it would make
        the host wait for the step). Models with a special update (DeepRec's re-feeding) override it.

        ``forward`` is the callable computing the loss: the model itself, or its DDP wrapper
        (whose call synchronises gradients across processes).
        """
        forward = self if forward is None else forward
        optimizer.zero_grad(set_to_none=True)
        loss = forward(batch, **schedule)
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
            raise ModelInputError(f"{self.name} was not trained on user index {bad} (it knows {self.n_users} users)")
        return users

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
        device = self.device
        n_rows, k_eff = rows.shape[0], min(int(k), self.n_items)
        # The rows cross to the device once; blocks, the seen-item mask and the top-k stay there
        # and only ids and scores come back (bench/gpu.py, "scoring").
        inputs = DeviceRows(rows, device, binary=self.task == "ranking", timestamps=timestamps if self.sequential else None)
        allowed = None
        if candidates is not None:
            candidates = np.asarray(candidates, dtype=np.int64).reshape(-1)
            if ((candidates < 0) | (candidates >= self.n_items)).any():
                raise ModelInputError("candidates contain item indices outside the model's items")
            allowed = torch.zeros(self.n_items, dtype=torch.bool, device=device)
            allowed[torch.from_numpy(candidates).to(device)] = True
        global_exclude = per_row_exclude = None
        if exclude is not None and not sp.issparse(exclude):
            global_exclude = torch.from_numpy(np.asarray(exclude, dtype=np.int64).reshape(-1)).to(device)
        if exclude is not None and sp.issparse(exclude):
            if exclude.shape != rows.shape:
                raise ModelInputError(f"exclude has shape {exclude.shape}, rows have {rows.shape}")
            per_row_exclude = DeviceRows(exclude, device)

        top_ids = torch.empty(n_rows, k_eff, dtype=torch.int64, device=device)
        top_scores = torch.empty(n_rows, k_eff, dtype=torch.float32, device=device)
        block = score_block_rows(self.n_items, device)
        was_training = self.training
        if was_training:  # a served model is in eval mode already: walking its modules costs time each call
            self.eval()
        try:
            for start in range(0, n_rows, block):
                stop = min(start + block, n_rows)
                batch = inputs.between(start, stop)
                s = self.scores(batch, users=None if users is None else users[start:stop]).float()
                if exclude_seen:
                    s[batch.row_of, batch.col] = -torch.inf
                if global_exclude is not None:
                    s[:, global_exclude] = -torch.inf
                if per_row_exclude is not None:
                    excluded = per_row_exclude.between(start, stop)
                    s[excluded.row_of, excluded.col] = -torch.inf
                if allowed is not None:
                    s[:, ~allowed] = -torch.inf
                top_scores[start:stop], top_ids[start:stop] = torch.topk(s, k_eff, dim=1)
        finally:
            if was_training:
                self.train()
        ids_out = np.full((n_rows, k), -1, dtype=np.int64)
        scores_out = np.full((n_rows, k), -np.inf, dtype=np.float32)
        ids_out[:, :k_eff], scores_out[:, :k_eff] = top_ids.cpu().numpy(), top_scores.cpu().numpy()
        ids_out[~np.isfinite(scores_out)] = -1
        return ids_out, scores_out

    @torch.no_grad()
    def predict(
        self,
        rows: sp.csr_matrix,
        items: np.ndarray,
        *,
        users: np.ndarray | None = None,
        pair_rows: np.ndarray | None = None,
        batch_rows: int = SCORE_BATCH_ROWS,
    ) -> np.ndarray:
        """Rating predictions for pairs, clipped to the rating range: pair j is row ``pair_rows[j]``
        of ``rows`` (row j without ``pair_rows``) and item ``items[j]``.

        Each distinct row is scored once, however many of its items are asked for: a user's
        whole score row costs the same for one item as for all of them. ``users`` are the
        training-row indices of ``rows`` (one per row), for models that need them.
        """
        if self.task != "rating":
            raise ModelInputError(f"{self.name} ranks items; it does not predict ratings")
        rows = as_csr(rows, self.n_items)
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
        # only the rows some pair asks about are scored, in blocks of batch_rows
        distinct, pair_block_row = np.unique(pair_rows, return_inverse=True)
        users = self._check_users(None if users is None else users[distinct], distinct.size)
        if distinct.size < rows.shape[0]:  # np.unique is sorted: all rows asked about means rows as they are
            rows = rows[distinct]
        order = np.argsort(pair_block_row, kind="stable")
        sorted_rows = pair_block_row[order]
        out = np.empty(items.shape[0], dtype=np.float32)
        device = self.device
        was_training = self.training
        if was_training:
            self.eval()
        try:
            for start in range(0, distinct.size, batch_rows):
                stop = min(start + batch_rows, distinct.size)
                lo, hi = np.searchsorted(sorted_rows, [start, stop])
                pairs = order[lo:hi]
                block = rows if stop - start == rows.shape[0] else rows[start:stop]  # one request: no slice copy
                r = torch.from_numpy(pair_block_row[pairs] - start).to(device)
                c = torch.from_numpy(items[pairs]).to(device)
                predicted = self.pair_scores(block, r, c, users=None if users is None else users[start:stop])
                out[pairs] = predicted.float().cpu().numpy()
        finally:
            if was_training:
                self.train()
        return np.clip(out, *self.rating_range)

    # ---- explanations --------------------------------------------------------------
    def _explain_inputs(
        self, row: Any, items: np.ndarray, history: np.ndarray | None, timestamps: sp.csr_matrix | None = None
    ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
        """(row checked, items, history columns, each history column's position among the row's entries);
        a sequential model's row comes with its timestamps (its order is what it reads)."""
        if not self.explainable:
            raise ModelInputError(f"{self.name}'s scores do not depend on the history it is given: nothing to explain")
        row = as_csr(row, self.n_items)
        if row.shape[0] != 1:
            raise ModelInputError(f"contributions explains one row at a time, got {row.shape[0]}")
        if self.sequential and (timestamps is None or timestamps.shape != row.shape or timestamps.nnz != row.nnz):
            raise ModelInputError(f"{self.name} reads each row's items in time order: pass the row's timestamps")
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if ((items < 0) | (items >= self.n_items)).any():
            raise ModelInputError("items contain indices outside the model's items")
        cols = row.indices.astype(np.int64)
        history = cols.copy() if history is None else np.asarray(history, dtype=np.int64).reshape(-1)
        order = np.argsort(cols, kind="stable")
        at = np.searchsorted(cols[order], history).clip(max=max(len(cols) - 1, 0))
        if len(history) and (not len(cols) or (cols[order][at] != history).any()):
            raise ModelInputError("history contains items that are not in the row")
        return row, items, history, order[at] if len(history) else np.zeros(0, dtype=np.int64)

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

        ``history``: columns stored in ``row`` (default: all of them, in stored order); ``users``:
        the row's training-row index, for models that read it; ``timestamps``: the row's (a
        sequential model reads the order). One batched pass: the row and the len(history) rows
        each lacking one of its items are scored together (in blocks of ``score_block_rows``)."""
        row, items, history, at = self._explain_inputs(row, items, history, timestamps)
        users = self._check_users(users, 1)
        n_h, nnz = len(history), row.nnz
        if n_h == 0 or len(items) == 0:
            return np.zeros((len(items), n_h), dtype=np.float32)
        # row 0: the whole row; row 1 + h: the row without its entry at[h]
        keep = np.ones((n_h + 1, nnz), dtype=bool)
        keep[1 + np.arange(n_h), at] = False
        indptr = np.zeros(n_h + 2, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=indptr[1:])
        indices = np.broadcast_to(row.indices, keep.shape)[keep]
        batch = sp.csr_matrix((np.broadcast_to(row.data, keep.shape)[keep], indices, indptr), shape=(n_h + 1, self.n_items))
        batch_ts = sp.csr_matrix((np.broadcast_to(timestamps.data, keep.shape)[keep], indices, indptr),
                                 shape=batch.shape) if self.sequential else None
        device = self.device
        inputs = DeviceRows(batch, device, binary=self.task == "ranking", timestamps=batch_ts)
        targets = torch.from_numpy(items).to(device)
        out = torch.empty(n_h + 1, len(items), dtype=torch.float32, device=device)
        block = score_block_rows(self.n_items, device)
        was_training = self.training
        if was_training:
            self.eval()
        try:
            for start in range(0, n_h + 1, block):
                stop = min(start + block, n_h + 1)
                part = inputs.between(start, stop)
                s = self.scores(part, users=None if users is None else np.repeat(users, stop - start))
                out[start:stop] = s.float()[:, targets]
        finally:
            if was_training:
                self.train()
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
