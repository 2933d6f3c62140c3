"""EASE (Steck, WWW 2019): a shallow linear autoencoder with a closed-form solution.

EASE learns an item-item weight matrix B with a zero diagonal (so no item predicts
itself) by ridge regression of X on itself:

    min_B ||X - X B||_F^2 + lambda ||B||_F^2   s.t.  diag(B) = 0

whose solution, with G = X^T X + lambda I and P = G^{-1}, is

    B = I - P diagMat(1 / diag(P)),   i.e.  B_ij = -P_ij / P_jj (i != j),  B_jj = 0.

A user's scores are x_u B, so any user is folded in from their row (values > 0 are
positives). X^T X and the solve run on the model's device (the GPU when the model is on
one: ``models.rows.gram``). The solve's precision (``dtype="auto"``) follows G's condition
number kappa, which bounds how much the inverse amplifies rounding: every eigenvalue of G
lies in [lambda, lambda + max_i sum_j G_ij] (X^T X is positive semi-definite; Gershgorin), so

    kappa <= 1 + max_i sum_j (X^T X)_ij / lambda.

Under FLOAT32_MAX_CONDITION the solve runs in float32 (half the time and memory), otherwise
in float64. It holds two n_items^2 matrices at its peak (G, then its Cholesky factor, then the
inverse, which becomes B in place): ``memory_needed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch

from models.base import ModelInputError, Recommender, TrainData
from models.rows import RowBatch, as_row_batch, gram

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# float32 rounds at 6e-8; times a condition number under 1,000 the inverse's relative error
# stays under ~1e-4 (ml-100k's float32 B against float64's: bench/RESULTS.md, "Figures moved out").
FLOAT32_MAX_CONDITION = 1_000.0


@dataclass(frozen=True)
class EASEConfig:
    # The paper's best lambda is ~500 on ML-20M (1000 Netflix, 200 MSD); 250 is best on ml-100k's strong
    # split validation (bench/RESULTS.md, "Figures moved out").
    # A constant, not a rule of the data's size: the loss is summed over the users, so lambda is a
    # prior of fixed weight: on sparser subsamples of ml-100k the best validation lambda did not fall
    # with the density (bench/RESULTS.md, "Defaults as rules of the data").
    lam: float = 250.0
    # precision of the solve and of B; "auto": float32 when G is well conditioned (see above)
    dtype: Literal["auto", "float32", "float64"] = "auto"

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ModelInputError(f"EASE dtype must be auto, {' or '.join(DTYPES)}, got {self.dtype!r}")
        if not self.lam > 0:
            raise ModelInputError(f"EASE lam must be positive (it makes X^T X + lam I invertible), got {self.lam}")


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space)
SEARCH_SPACE = {"lam": ("log", 10.0, 5000.0)}


class EASE(Recommender):
    """Embarrassingly Shallow AutoEncoder: scores = X B, B in closed form."""

    name = "ease"
    task = "ranking"
    closed_form = True
    explained_by = "weights"  # contributions: B's entries, exact
    Config: ClassVar[type] = EASEConfig
    search_space = SEARCH_SPACE

    def __init__(self, config: EASEConfig, n_items: int, n_users: int, rating_range=(1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        # A buffer, so B is in state_dict (saved and restored) and follows .to(device); "auto"
        # picks its dtype in solve (or takes the saved one in load_state_dict)
        dtype = DTYPES.get(config.dtype, torch.float32)
        self.register_buffer("B", torch.zeros(self.n_items, self.n_items, dtype=dtype))

    def solve_dtype(self, gram_matrix: torch.Tensor) -> torch.dtype:
        """The configured dtype, or for "auto" float32 when G's condition bound is under FLOAT32_MAX_CONDITION."""
        if self.config.dtype != "auto":
            return DTYPES[self.config.dtype]
        condition_bound = 1.0 + float(gram_matrix.sum(dim=1).max()) / self.config.lam if len(gram_matrix) else 1.0
        return torch.float32 if condition_bound <= FLOAT32_MAX_CONDITION else torch.float64

    def diagonal_penalty(self, gram_diagonal: torch.Tensor) -> torch.Tensor | float:
        """What the ridge adds to X^T X's diagonal: lambda for every item (EDLAE adds more)."""
        return self.config.lam

    def memory_needed(self, dtype: torch.dtype) -> int:
        """Bytes the solve holds at its peak: two n_items^2 matrices of ``dtype`` (float64: plus the float32 Gram)."""
        n2 = self.n_items**2
        return 2 * n2 * dtype.itemsize + (n2 * 4 if dtype != torch.float32 else 0)

    @torch.no_grad()
    def solve(self, data: TrainData) -> None:
        self.B = self.B.new_empty(0)  # the placeholder's n_items^2 is freed for the solve
        self._check_memory(torch.float32)
        G = gram(data.on_device(self.device, self.n_items, binary=True))
        dtype = self.solve_dtype(G)
        self._check_memory(dtype)
        G = G.to(dtype)
        G.diagonal().add_(self.diagonal_penalty(G.diagonal()))  # G = X^T X + lambda I, symmetric positive definite
        L = torch.linalg.cholesky(G)
        del G
        P = torch.cholesky_inverse(L)
        del L
        P.div_(P.diagonal().neg())  # B_ij = -P_ij / P_jj: column j divided by -P_jj (the diagonal is copied first)
        P.diagonal().zero_()  # the constraint diag(B) = 0
        self.B = P

    def _check_memory(self, dtype: torch.dtype) -> None:
        """A clear refusal before a GPU solve that cannot fit (a CPU swaps or raises MemoryError itself)."""
        if self.device.type != "cuda":
            return
        free, total = torch.cuda.mem_get_info(self.device)
        needed = self.memory_needed(dtype)
        if needed > free:
            raise ModelInputError(
                f"EASE at {self.n_items:,} items needs about {needed / 2**30:.1f} GiB on {self.device} in {dtype}, "
                f"which has {free / 2**30:.1f} GiB free of {total / 2**30:.1f}: train it on fewer items or on the CPU"
            )

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args) -> None:
        saved = state_dict.get(prefix + "B")
        if saved is not None and saved.dtype in DTYPES.values() and saved.dtype != self.B.dtype:
            self.B = torch.zeros_like(self.B, dtype=saved.dtype)  # keep the precision it was solved in
        super()._load_from_state_dict(state_dict, prefix, *args)

    @torch.no_grad()
    def scores(self, rows: RowBatch | sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None) -> torch.Tensor:
        x = as_row_batch(rows, self.n_items, self.device, binary=True)
        return (x.sparse(self.B.dtype) @ self.B).float()  # the sum of B's rows over each user's items

    @torch.no_grad()
    def contributions(self, row, items, *, history=None, users=None, timestamps=None) -> np.ndarray:
        """Exact: scores are x B with x binary, so history item j adds B[j, i] to item i's score, and
        removing j lowers it by exactly that (the removal ``Recommender.contributions`` measures)."""
        row, items, history, _, _ = self._explain_inputs(row, items, history, timestamps)
        h, i = (torch.from_numpy(a).to(self.B.device) for a in (history, items))
        return self.B[h[None, :], i[:, None]].float().cpu().numpy()  # [items, history]: only those entries gathered

    def item_embeddings(self) -> torch.Tensor:
        return self.B.T.float()  # item j: column j of B, the weights that predict j
