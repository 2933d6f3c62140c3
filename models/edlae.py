"""EDLAE, full rank (Steck, NeurIPS 2020): EASE trained as if its input were dropped out.

Training a linear autoencoder on inputs dropped out with probability p (and targets kept)
is, in expectation, ridge regression with a penalty that grows with each item's own count:

    min_B ||X - X B||_F^2 + ||Lambda^{1/2} B||_F^2   s.t.  diag(B) = 0,
    Lambda = lambda I + p / (1 - p) diagMat(diag(X^T X))

so a popular item pays more for predicting others, which counters the pull towards the
identity that the zero diagonal only removes exactly. The solution is EASE's with that
diagonal: G = X^T X + Lambda, P = G^{-1}, B_ij = -P_ij / P_jj, B_jj = 0; p = 0 is EASE.
Everything else (device, precision, memory, fold-in, scoring) is EASE's: ``models.ease``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from models.base import ModelInputError
from models.ease import DTYPES, EASE


@dataclass(frozen=True)
class EDLAEConfig:
    # The author's notebook: p = 0.25, lambda = 70 on MSD. On ml-100k validation is flat near the top:
    # the middle of the best three (bench/RESULTS.md, "RecVAE and EDLAE").
    lam: float = 150.0
    dropout: float = 0.67  # p: the emphasis on each item's own count is p / (1 - p)
    dtype: Literal["auto", "float32", "float64"] = "auto"  # as EASE's

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ModelInputError(f"EDLAE dtype must be auto, {' or '.join(DTYPES)}, got {self.dtype!r}")
        if not self.lam > 0:
            raise ModelInputError(f"EDLAE lam must be positive (it makes X^T X + Lambda invertible), got {self.lam}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelInputError(f"EDLAE dropout must be in [0, 1), got {self.dropout}")


# `trainer train --tune` searches these on the validation split (format: models.base.Recommender.search_space)
SEARCH_SPACE = {"lam": ("log", 10.0, 2000.0), "dropout": ("float", 0.0, 0.9)}


class EDLAE(EASE):
    """Emphasized denoising linear autoencoder, full rank: EASE with a count-weighted ridge."""

    name = "edlae"
    Config: ClassVar[type] = EDLAEConfig
    search_space = SEARCH_SPACE

    def diagonal_penalty(self, gram_diagonal: torch.Tensor) -> torch.Tensor:
        p = self.config.dropout
        return self.config.lam + p / (1.0 - p) * gram_diagonal
