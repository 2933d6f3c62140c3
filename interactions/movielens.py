"""The MovieLens datasets GroupLens publishes: what each one's files are and look like, and their readers.

``read_dataset`` reads a folder as extracted from ``<name>.zip``; ``interactions.datasets`` fetches,
verifies and caches one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from errors import DataError, UserError
from interactions import STARS, Interactions
from interactions.files import FileColumns, interactions_from_columns, load_file
from rating_scale import RatingScale


@dataclass(frozen=True)
class DatasetSpec:
    """One GroupLens dataset: its files, their layout and what a genuine copy looks like."""

    name: str
    ratings_file: str
    titles_file: str
    layout: str  # "ml-100k" (tab, headerless), "dat" ("::"), "csv" (header)
    rating_scale: RatingScale
    shape: tuple[int, int, int] | None  # published (users, items, ratings); None where GroupLens updates it
    sha256: dict[str, str] = field(default_factory=dict)  # pinned checksums of files we know byte for byte


HALF_STARS = RatingScale.parse("0.5:5:0.5")  # ml-10m and later (protocols.md, "Datasets")
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "ml-100k", "u.data", "u.item", "ml-100k", STARS, (943, 1_682, 100_000),
            {"u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"},
        ),
        DatasetSpec("ml-1m", "ratings.dat", "movies.dat", "dat", STARS, (6_040, 3_706, 1_000_209)),
        DatasetSpec("ml-10m", "ratings.dat", "movies.dat", "dat", HALF_STARS, (69_878, 10_677, 10_000_054)),
        DatasetSpec("ml-20m", "ratings.csv", "movies.csv", "csv", HALF_STARS, (138_493, 26_744, 20_000_263)),
        DatasetSpec("ml-25m", "ratings.csv", "movies.csv", "csv", HALF_STARS, (162_541, 59_047, 25_000_095)),
        # "latest" is re-issued by GroupLens from time to time, so its shape is not pinned.
        DatasetSpec("ml-latest-small", "ratings.csv", "movies.csv", "csv", HALF_STARS, None),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


# --- readers -------------------------------------------------------------------------


def read_dataset(name: str, folder: str | Path) -> Interactions:
    """Read a GroupLens folder (as extracted from ``<name>.zip``) into ``Interactions``.

    Ids stay the dataset's own (as strings, "196"), timestamps are epoch seconds, and
    ``item_titles`` is filled when the movies file is there.
    """
    spec = dataset_spec(name)
    folder = Path(folder)
    ratings_path = folder / spec.ratings_file
    if not ratings_path.is_file():
        raise DataError(f"{folder}: no {spec.ratings_file}; is this the {name} folder?")
    frame = _read_ratings(spec, ratings_path)
    titles_path = folder / spec.titles_file
    titles = _read_titles(spec, titles_path) if titles_path.is_file() else None
    return interactions_from_columns(
        frame["user"].to_numpy(), frame["item"].to_numpy(), frame["rating"].to_numpy(), frame["timestamp"].to_numpy(),
        name=name, rating_scale=spec.rating_scale, item_titles=titles,
    )


_RATING_DTYPES = {"user": np.int64, "item": np.int64, "rating": np.float32, "timestamp": np.int64}


def _read_ratings(spec: DatasetSpec, path: Path) -> pd.DataFrame:
    """Typed fast read (C parser); on any failure the careful loader finds and names the bad row."""
    names = list(_RATING_DTYPES)
    try:
        if spec.layout == "ml-100k":
            frame = pd.read_csv(path, sep="\t", header=None, names=names, dtype=_RATING_DTYPES, engine="c")
        elif spec.layout == "dat":
            # "1::122::5::838985046" split on ":" gives empty fields 1, 3, 5 between the values.
            frame = pd.read_csv(
                path, sep=":", header=None, names=range(7), usecols=[0, 2, 4, 6], engine="c",
                dtype={0: np.int64, 2: np.int64, 4: np.float32, 6: np.int64},
            )
            frame.columns = names
        else:
            columns = {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "timestamp"}
            dtypes = {column: _RATING_DTYPES[role] for column, role in columns.items()}
            frame = pd.read_csv(path, usecols=list(columns), dtype=dtypes, engine="c")
            frame = frame.rename(columns=columns)[names]
        if len(frame) and spec.rating_scale.allows(frame["rating"].to_numpy()).all():
            return frame
        problem = "no rows" if not len(frame) else f"ratings off the rating scale {spec.rating_scale}"
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        problem = " ".join(str(exc).split())[:200]
    _diagnose(spec, path)  # names the first bad row, if the careful reader finds one
    raise DataError(f"{path}: not in the {spec.name} {spec.ratings_file} layout ({problem})")


def _diagnose(spec: DatasetSpec, path: Path) -> None:
    """Raise the loader's one-line ``DataError`` for the first bad row of ``path``."""
    if spec.layout == "csv":
        columns = FileColumns(user="userId", item="movieId", rating="rating", timestamp="timestamp", sep=",")
        load_file(path, columns, header=True, rating_scale=spec.rating_scale)
    else:
        load_file(path, FileColumns(sep="\t" if spec.layout == "ml-100k" else "::"), header=False,
                  rating_scale=spec.rating_scale)


def _read_titles(spec: DatasetSpec, path: Path) -> dict[str, str]:
    if spec.layout == "ml-100k":  # "1|Toy Story (1995)|01-Jan-1995||http://...|0|0|..." in latin-1
        frame = pd.read_csv(
            path, sep="|", header=None, usecols=[0, 1], dtype=str, encoding="latin-1",
            quoting=csv.QUOTE_NONE, engine="c",
        )
        return dict(zip(frame[0].str.strip(), frame[1].str.strip()))
    if spec.layout == "dat":  # "1::Toy Story (1995)::Animation|Children's|Comedy"; titles may hold ":"
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # ml-1m is latin-1
        rows = [line.split("::", 2) for line in text.splitlines() if line.count("::") >= 1]
        return {row[0].strip(): row[1].strip() for row in rows}
    frame = pd.read_csv(path, usecols=["movieId", "title"], dtype=str, engine="c")
    return dict(zip(frame["movieId"].str.strip(), frame["title"].str.strip()))
