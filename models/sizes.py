"""The size of the data a model trains on, and the Config rules that read it.

Some defaults depend on the data's size (a number of updates, a penalty beside a mean loss): a
Config declares those fields ``None`` and implements ``for_data(shape) -> Config``, which fills
only the Nones; ``trainer.fit`` applies it before building the model, so a value given by the
user (``--set``, a tuned value) always wins and the saved config holds what the model trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import scipy.sparse as sp


@dataclass(frozen=True)
class DataShape:
    """The size of a training matrix, all that a Config's size rules read (``for_data``)."""

    n_users: int
    n_items: int
    nnz: int  # stored interactions

    @classmethod
    def of(cls, X: sp.spmatrix) -> "DataShape":
        return cls(n_users=int(X.shape[0]), n_items=int(X.shape[1]), nnz=int(X.nnz))

    def batches(self, batch_size: int) -> int:
        """Minibatches in one epoch over the users: the updates an epoch makes."""
        return max(1, -(-self.n_users // int(batch_size)))


def for_data(config: Any, shape: DataShape) -> Any:
    """``config`` with the fields it leaves to the data (default None) set by its class's rules."""
    rule = getattr(config, "for_data", None)
    return config if rule is None else rule(shape)
