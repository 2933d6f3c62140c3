"""Where a training run's data comes from, and what identifies it.

``SourceSpec`` names one source: a named dataset, a file, or the service's database
(``--from-db``); ``load_source`` reads it into ``Interactions`` on its declared rating scale.
``snapshot`` is the data's size and digest (the manifest's ``source``); ``positives`` is a
ranker's input (its positives by ``interactions.rows``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from errors import UserError
from interactions import Interactions
from interactions.files import FileColumns
from interactions.rows import is_positive
from rating_scale import RatingScale


@dataclass(frozen=True)
class SourceSpec:
    """Exactly one of: a named dataset (optionally from a local ``source`` folder/zip), a file (read as
    ``columns`` say, on ``rating_scale``, inferred when None), a database URL."""

    dataset: str | None = None
    source: Path | None = None
    file: Path | None = None
    database_url: str | None = None
    columns: FileColumns = FileColumns()
    rating_scale: RatingScale | None = None

    def __post_init__(self) -> None:
        chosen = [x for x in (self.dataset, self.file, self.database_url) if x is not None]
        if len(chosen) != 1:
            raise UserError("choose exactly one data source: --dataset NAME, --file PATH or --from-db")
        if self.source is not None and self.dataset is None:
            raise UserError("--source points at a local copy of a named dataset: use it with --dataset")
        if self.file is None and (self.columns != FileColumns() or self.rating_scale is not None):
            raise UserError("--user-col, --item-col, --rating-col, --timestamp-col, --sep and --rating-scale say how "
                            "to read a --file: use them with --file (datasets and the database declare their own)")

    def describe(self) -> dict[str, Any]:
        if self.dataset:
            return {"kind": "dataset", "name": self.dataset, **({"source": str(self.source)} if self.source else {})}
        if self.file:
            return {"kind": "file", "path": str(self.file)}
        from storage.session import redacted  # SQLAlchemy only for a database source

        return {"kind": "database", "url": redacted(self.database_url or "")}


def load_source(spec: SourceSpec, progress: bool = True) -> tuple[Interactions, str]:
    """The source's interactions, and one line naming them and the rating scale they are on, and who declared it."""
    if spec.file:
        from interactions.files import load_file

        inter, report = load_file(spec.file, spec.columns, rating_scale=spec.rating_scale)
        return inter, f"data: {spec.file} ({report.columns_note()}), {report.scale_note()}"
    if spec.dataset:
        from interactions.datasets import get_dataset

        inter, origin = get_dataset(spec.dataset, source=spec.source, progress=progress), f"{spec.dataset}'s own"
    else:
        inter, origin = read_database(spec.database_url or "")
    return inter, f"data: {inter.name}, rating scale {inter.rating_scale.summary} ({origin})"


def read_database(url: str) -> tuple[Interactions, str]:
    """Every interaction the service stored (``storage.export``), on the scale stored with the data, else on
    this process's ``RATING_SCALE`` setting; and where that scale was declared."""
    from storage.export import stored_interactions
    from trainer.settings import get_settings

    return stored_interactions(url, lambda: get_settings().rating_scale)


def snapshot(inter: Interactions) -> dict[str, Any]:
    """Size and sha256 of the data as trained on.

    The digest covers both id lists (external ids, in index order) and the interaction
    arrays sorted by (user, item): the same rows give the same digest whatever their order
    in the file or table. Hashing the arrays' bytes keeps it fast on 20M+ rows.
    """
    order = np.lexsort((inter.items, inter.users))
    parts = [
        "\n".join(map(str, inter.user_ids)).encode("utf-8"),
        "\n".join(map(str, inter.item_ids)).encode("utf-8"),
        inter.users[order].astype("<i8").tobytes(),
        inter.items[order].astype("<i8").tobytes(),
        inter.ratings[order].astype("<f8").tobytes(),
    ]
    if inter.timestamps is not None:
        parts.append(inter.timestamps[order].astype("<i8").tobytes())
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))  # length-prefixed: no two splits of the bytes collide
        digest.update(part)
    return {
        "n_users": inter.n_users,
        "n_items": inter.n_items,
        "n_interactions": len(inter),
        "bytes": sum(len(part) for part in parts),
        "sha256": digest.hexdigest(),
        "rating_range": list(inter.rating_range),
        "has_timestamps": inter.timestamps is not None,
    }


def positive_threshold(inter: Interactions) -> float:
    """Ratings from this one on are a ranker's positives: the declared scale's (4 on 1-5 stars, protocols.md)."""
    return inter.rating_scale.positive


def is_implicit(inter: Interactions) -> bool:
    return bool(len(inter)) and bool(np.all(inter.ratings == inter.ratings[0]))


def positives(inter: Interactions, threshold: float) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """All users x all items, 1 where a rating is a positive; and the timestamps on the same pattern."""
    keep = is_positive(inter.ratings, threshold)
    shape = (inter.n_users, inter.n_items)
    ones = sp.csr_matrix((np.ones(keep.sum(), np.float32), (inter.users[keep], inter.items[keep])), shape=shape)
    ones.sort_indices()
    if inter.timestamps is None:
        return ones, None
    ts = sp.csr_matrix((inter.timestamps[keep].astype(np.float64), (inter.users[keep], inter.items[keep])), shape=shape)
    ts.sort_indices()
    return ones, ts
