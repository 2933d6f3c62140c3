"""Load an interaction log the user brings (CSV, TSV, Parquet) into ``Interactions``.

Every problem is one ``DataError`` line naming the file, the 1-based data row and what is
wrong. Validation is vectorised: boolean masks over whole columns find the first bad row,
and only that one row is looked at in Python to word the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from errors import DataError
from interactions import Interactions
from interactions.file_reading import (PARQUET_SUFFIXES, FileColumns, read_parquet, read_text, resolve_columns,
                                       validated_columns)
from interactions.rows import keep_latest_pairs
from rating_scale import RatingScale

IMPLICIT = RatingScale.parse("implicit")


@dataclass
class LoadReport:
    """What ``load_file`` did besides returning the interactions."""

    path: Path
    rows: int  # data rows in the file
    duplicates_dropped: int  # repeated (user, item) rows removed, keeping the latest
    implicit: bool  # no rating column (or an implicit scale): every row counts 1.0
    has_timestamps: bool
    separator: str | None  # None for Parquet
    header: bool
    columns: dict[str, str | None]  # role -> the file's column holding it
    rating_scale: RatingScale
    scale_inferred: bool  # no scale was declared: it was inferred from the ratings

    def scale_note(self) -> str:
        """The rating scale used and where it came from: printed on every load, since it decides the positives."""
        origin = f"inferred from {self.path.name}; --rating-scale declares it" if self.scale_inferred else "declared"
        return f"rating scale {self.rating_scale.summary} ({origin})"

    def columns_note(self) -> str:
        return "columns: " + ", ".join(f"{role}={column}" for role, column in self.columns.items() if column is not None)

    def notes(self) -> list[str]:
        """Human-readable lines for the CLI."""
        lines = [self.columns_note(), self.scale_note()]
        if self.duplicates_dropped:
            rule = "latest by timestamp" if self.has_timestamps else "last in file"
            lines.append(f"duplicates dropped: {self.duplicates_dropped:,} repeated (user, item) rows, kept the {rule}")
        else:
            lines.append("duplicates dropped: 0")
        if self.implicit and self.columns["rating"] is None:
            lines.append("no rating column: every row counts as an implicit 1.0")
        elif self.implicit:
            lines.append(f"rating column {self.columns['rating']!r}: every row counts as an implicit 1.0 "
                         "(the rating scale is implicit)")
        if not self.has_timestamps:
            lines.append("no timestamp column: temporal protocols are unavailable")
        return lines


def load_file(
    path: str | Path,
    columns: FileColumns = FileColumns(),
    *,
    rating_scale: RatingScale | None = None,
    header: bool | None = None,
) -> tuple[Interactions, LoadReport]:
    """Read ``path`` and return its interactions plus a ``LoadReport``.

    - Format: Parquet by suffix (``.parquet``/``.pq``); otherwise delimited text whose
      separator is ``columns.sep``, else the suffix's (``.csv`` ``,``; ``.tsv`` tab) when the
      first line contains it, else sniffed from the first line (tab, ``,``, ``;``, ``|``, ``::``).
    - Header: detected unless ``header`` is given. A first line of numbers only is data,
      read positionally as user, item[, rating[, timestamp]] (GroupLens ``u.data``).
    - Columns: those ``columns`` names, else the header's column recognised for each role
      (``file_reading.RECOGNISED``: ``userId``, ``movieId``, ``item_id``, ...).
    - Ids: any text or integers; kept as strings, indexed contiguously in numeric order
      when every id is a number, else in text order. Both maps are on ``Interactions``.
    - Rating column optional: when the file has none (or ``rating_scale`` is implicit),
      every row is an implicit 1.0. Ratings must be finite numbers on ``rating_scale``; when
      none is declared, the scale is inferred from them (``RatingScale.infer``) and must not
      go below 0.
    - Timestamp column optional: integer epoch seconds or ISO-8601 strings (naive = UTC).
    - Duplicate (user, item) rows: the latest by timestamp is kept (the last in the file
      when there are no timestamps, or on ties); ``LoadReport.duplicates_dropped`` counts
      the others.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give the interaction file inside it")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")

    if path.suffix.lower() in PARQUET_SUFFIXES:
        frame, used_sep, has_header = read_parquet(path), None, True
        wanted = resolve_columns(path, [str(c) for c in frame.columns], columns)
    else:
        frame, used_sep, has_header, wanted = read_text(path, columns, header)
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no data rows")
    if rating_scale is not None and rating_scale.implicit:
        wanted_ratings = {**wanted, "rating": None}
    else:
        wanted_ratings = wanted

    users, items, ratings, timestamps = validated_columns(
        path, frame, wanted_ratings, inferring=rating_scale is None, sep=used_sep, header=has_header
    )
    implicit = wanted_ratings["rating"] is None
    scale = IMPLICIT if implicit else rating_scale or RatingScale.infer(ratings)
    if scale.implicit:
        ratings = np.ones(len(ratings), dtype=np.float32)
    else:
        refusal = scale.refusal(ratings, str(path), lambda row: f"row {row + 1}: rating {ratings[row]:g}")
        if refusal:
            raise DataError(refusal)
    user_index, user_ids = index_ids(users)
    item_index, item_ids = index_ids(items)
    keep, dropped = keep_latest_pairs(user_index, item_index, timestamps)
    if dropped:
        user_index, item_index, ratings = user_index[keep], item_index[keep], ratings[keep]
        timestamps = None if timestamps is None else timestamps[keep]

    interactions = Interactions(
        users=user_index, items=item_index, ratings=ratings, timestamps=timestamps,
        user_ids=user_ids, item_ids=item_ids, name=path.stem, rating_scale=scale,
    )
    report = LoadReport(path, len(frame), dropped, scale.implicit, timestamps is not None, used_sep, has_header,
                        wanted, scale, scale_inferred=rating_scale is None and not implicit)
    return interactions, report


def interactions_from_columns(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    timestamps: np.ndarray | None,
    *,
    name: str,
    rating_scale: RatingScale,
    item_titles: dict | None = None,
) -> Interactions:
    """Index raw user/item ids contiguously and build ``Interactions`` (rows as given)."""
    user_index, user_ids = index_ids(users)
    item_index, item_ids = index_ids(items)
    return Interactions(
        users=user_index,
        items=item_index,
        ratings=np.asarray(ratings, dtype=np.float32),
        timestamps=None if timestamps is None else np.asarray(timestamps, dtype=np.int64),
        user_ids=user_ids,
        item_ids=item_ids,
        name=name,
        rating_scale=rating_scale,
        item_titles=item_titles,
    )


def index_ids(values: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int32 index per row, external ids as strings). Numeric ids sort as numbers."""
    values = pd.Series(values) if not isinstance(values, pd.Series) else values
    if pd.api.types.is_integer_dtype(values.dtype):
        codes, uniques = pd.factorize(values, sort=True)
        return codes.astype(np.int32), np.asarray(uniques.astype(str), dtype=str)
    codes, uniques = pd.factorize(values)  # hash in order of appearance, then sort the few uniques
    text = np.asarray(pd.Index(uniques).astype(str), dtype=str)
    numeric = pd.to_numeric(pd.Series(text), errors="coerce")
    by_number = not numeric.isna().any()
    order = np.argsort(numeric.to_numpy() if by_number else text, kind="stable")
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return rank[codes], text[order]
