"""The in-memory form of a ratings/clicks log: contiguous indices plus both id maps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from rating_scale import RatingScale

STARS = RatingScale.parse("1:5:1")


@dataclass
class Interactions:
    """One row per (user, item) interaction, no duplicates.

    ``users``/``items`` are contiguous indices; ``user_ids[u]`` / ``item_ids[i]`` give
    back the dataset's own ids (the inverse maps are ``user_index`` / ``item_index``).
    """

    users: np.ndarray  # int32 [n]
    items: np.ndarray  # int32 [n]
    ratings: np.ndarray  # float32 [n]
    timestamps: np.ndarray | None  # int64 [n] (seconds since epoch) or None
    user_ids: np.ndarray  # [n_users] external ids
    item_ids: np.ndarray  # [n_items] external ids
    name: str = "interactions"
    rating_scale: RatingScale = STARS  # declared by the source, never taken from the ratings' min and max
    item_titles: dict | None = field(default=None, repr=False)  # external item id -> title, where known

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.items) != n or len(self.ratings) != n or (self.timestamps is not None and len(self.timestamps) != n):
            raise ValueError("users, items, ratings and timestamps must have the same length")

    @property
    def rating_range(self) -> tuple[float, float]:
        return self.rating_scale.range

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def user_index(self) -> dict:
        return {u: i for i, u in enumerate(self.user_ids.tolist())}

    @property
    def item_index(self) -> dict:
        return {u: i for i, u in enumerate(self.item_ids.tolist())}

    def matrix(self, values: str = "rating") -> sp.csr_matrix:
        """users x items CSR of ratings (``"rating"``), ones (``"binary"``) or timestamps (``"timestamp"``)."""
        if values == "rating":
            data = self.ratings.astype(np.float32)
        elif values == "binary":
            data = np.ones(len(self), dtype=np.float32)
        elif values == "timestamp":
            if self.timestamps is None:
                raise ValueError(f"{self.name} has no timestamps")
            data = self.timestamps.astype(np.float64)
        else:
            raise ValueError(f"unknown values {values!r}")
        m = sp.csr_matrix((data, (self.users, self.items)), shape=(self.n_users, self.n_items))
        m.sort_indices()
        return m

    def describe(self) -> dict:
        hist_values, hist_counts = np.unique(self.ratings, return_counts=True)
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "ratings": len(self),
            "density": len(self) / max(1, self.n_users * self.n_items),
            "rating_histogram": {float(v): int(c) for v, c in zip(hist_values, hist_counts)},
            "has_timestamps": self.timestamps is not None,
        }
