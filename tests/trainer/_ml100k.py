"""ml-100k as an ``Interactions``, read once per folder from the GroupLens copy (fixture ``ml100k_dir``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from interactions import Interactions
from interactions.movielens import read_dataset


@lru_cache(maxsize=2)
def ml100k(folder: Path) -> Interactions:
    """943 users x 1682 items, 100,000 ratings 1..5 with timestamps; reads, writes no cache."""
    return read_dataset("ml-100k", folder)
