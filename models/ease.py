"""EASE (Steck, WWW 2019): a shallow linear autoencoder with a closed-form solution.

EASE learns an item-item weight matrix B with a zero diagonal (so no item predicts
itself) by ridge regression of X on itself:

    min_B ||X - X B||_F^2 + lambda ||B||_F^2   s.t.  diag(B) = 0

whose solution, with G = X^T X + lambda I and P = G^{-1}, is

    B = I - P diagMat(1 / diag(P)),   i.e.  B_ij = -P_ij / P_jj (i != j),  B_jj = 0.

A user's scores are x_u B, so any user is folded in from their row (values > 0 are
positives). The solve runs with torch.linalg on the model's device (the GPU when the
model is on one), in float64 by default because G can be badly conditioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch

from models.base import ModelInputError, Recommender, TrainData, as_csr, binary_csr_to_torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class EASEConfig:
    # The paper's best lambda is ~500 on ML-20M (1000 Netflix, 200 MSD). On ml-100k's strong
    # split (~740 training users), mean validation NDCG@100 over seeds 0-4 for lambda in
    # {100, 150, 200, 250, 300, 400, 500} is 0.445 / 0.448 / 0.449 / 0.452 / 0.451 / 0.450 / 0.447: 250.
    lam: float = 250.0
    dtype: Literal["float32", "float64"] = "float64"  # precision of the solve and of B

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ModelInputError(f"EASE dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.lam > 0:
            raise ModelInputError(f"EASE lam must be positive (it makes X^T X + lam I invertible), got {self.lam}")


class EASE(Recommender):
    """Embarrassingly Shallow AutoEncoder: scores = X B, B in closed form."""

    name = "ease"
    task = "ranking"
    closed_form = True
    Config: ClassVar[type] = EASEConfig

    def __init__(self, config: EASEConfig, n_items: int, n_users: int, rating_range=(1.0, 5.0)):
        super().__init__(config, n_items, n_users, rating_range)
        # A buffer, so B is in state_dict (saved and restored) and follows .to(device)
        self.register_buffer("B", torch.zeros(self.n_items, self.n_items, dtype=DTYPES[config.dtype]))

    @torch.no_grad()
    def solve(self, data: TrainData) -> None:
        X = sp.csr_matrix(as_csr(data.X, self.n_items) > 0, dtype=np.float64)
        gram = torch.from_numpy((X.T @ X).toarray()).to(self.device, DTYPES[self.config.dtype])
        gram.diagonal().add_(self.config.lam)  # G = X^T X + lambda I, symmetric positive definite
        P = torch.cholesky_inverse(torch.linalg.cholesky(gram))
        B = -P / P.diagonal()  # column j divided by P_jj
        B.diagonal().zero_()  # the constraint diag(B) = 0
        self.B.copy_(B)

    @torch.no_grad()
    def scores(self, rows: sp.csr_matrix, users: np.ndarray | None = None, timestamps: sp.csr_matrix | None = None) -> torch.Tensor:
        x = binary_csr_to_torch(as_csr(rows, self.n_items), self.device, self.B.dtype)
        return (x @ self.B).float()  # the sum of B's rows over each user's items

    def item_embeddings(self) -> torch.Tensor:
        return self.B.T.float().clone()  # item j: column j of B, the weights that predict j
