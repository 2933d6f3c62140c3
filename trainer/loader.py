"""Load an interaction log the user brings (CSV, TSV, Parquet) into ``Interactions``.

Every problem is one ``DataError`` line naming the file, the 1-based data row and what is
wrong. Validation is vectorised: boolean masks over whole columns find the first bad row,
and only that one row is looked at in Python to word the message.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rating_scale import RatingScale
from rating_scale.latest import keep_latest_pairs  # the rule serving shares (re-exported for trainer.pipeline)
from trainer.dataset import Interactions
from errors import DataError

IMPLICIT = RatingScale.parse("implicit")
ROLES = ("user", "item", "rating", "timestamp")  # also the order of a headerless file's columns
# Header names each role is recognised by, compared lower-case without "_", "-" or spaces
# (userId, user_id, USER ID are all "userid"): MovieLens, RecBole and common exports.
RECOGNISED = {
    "user": ("user", "userid", "uid", "users"),
    "item": ("item", "itemid", "iid", "items", "movie", "movieid", "product", "productid"),
    "rating": ("rating", "ratings", "score", "stars"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date"),
}
PARQUET_SUFFIXES = {".parquet", ".pq"}
SEPARATORS = ("\t", ",", ";", "|")  # candidates when sniffing a text file's first line
_SEP_BY_SUFFIX = {".tsv": "\t", ".tab": "\t", ".csv": ","}
_UNIT_SEP = "\x1f"  # stands in for MovieLens' two-character "::" so the fast C parser applies


@dataclass(frozen=True)
class FileColumns:
    """Which column holds what, and the separator; None: recognised by name (``RECOGNISED``) or sniffed."""

    user: str | None = None
    item: str | None = None
    rating: str | None = None
    timestamp: str | None = None
    sep: str | None = None


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
      (``RECOGNISED``: ``userId``, ``movieId``, ``item_id``, ...).
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
        frame, used_sep, has_header = _read_parquet(path), None, True
        wanted = resolve_columns(path, [str(c) for c in frame.columns], columns)
    else:
        frame, used_sep, has_header, wanted = _read_text(path, columns, header)
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no data rows")
    if rating_scale is not None and rating_scale.implicit:
        wanted_ratings = {**wanted, "rating": None}
    else:
        wanted_ratings = wanted

    users, items, ratings, timestamps = _validated_columns(
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


def resolve_columns(path: Path, found: list[str], columns: FileColumns) -> dict[str, str | None]:
    """Role -> column of ``found``: the one ``columns`` names, else the one recognised by name (``RECOGNISED``).
    User and item are required; a named column that is absent, or two that could fill one role, is an error."""
    listed = ", ".join(found)
    roles: dict[str, str | None] = {}
    for role in ROLES:
        given = getattr(columns, role)
        if given is not None:
            if given not in found:
                raise DataError(f"{path}: no {role} column {given!r} (columns found: {listed})")
            roles[role] = given
    for role in ROLES:
        if role in roles:
            continue
        matches = [c for c in found if _plain(c) in RECOGNISED[role] and c not in roles.values()]
        if len(matches) > 1:
            raise DataError(f"{path}: columns {matches[0]!r} and {matches[1]!r} could both hold the {role}s; "
                            f"choose one with --{role}-col")
        roles[role] = matches[0] if matches else None
    for role in ("user", "item"):
        if roles[role] is None:
            raise DataError(f"{path}: no {role} column (columns found: {listed}; recognised names: "
                            f"{', '.join(RECOGNISED[role])}); name it with --{role}-col")
    named = [c for c in roles.values() if c is not None]
    if len(set(named)) < len(named):
        raise DataError(f"{path}: one column cannot hold two roles ({', '.join(f'{r}={c}' for r, c in roles.items() if c)})")
    return roles


def _plain(name: str) -> str:
    return re.sub(r"[\s_-]", "", name).lower()


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


# --- reading -------------------------------------------------------------------------


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet or damaged file
        raise DataError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None


def _read_text(
    path: Path, columns: FileColumns, header: bool | None
) -> tuple[pd.DataFrame, str, bool, dict[str, str | None]]:
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    first_line = head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()[0] if head.strip() else ""
    if not first_line.strip():
        raise DataError(f"{path}: the file is empty")
    sep = columns.sep or _sniff_separator(path, first_line)
    fields = [f.strip().strip('"') for f in first_line.split(sep)]
    if header is None:
        # A header names at least one column asked for, or is not all numbers (recognised names are not).
        named = {getattr(columns, role) for role in ROLES}
        header = any(f in named for f in fields) or bool(pd.to_numeric(pd.Series(fields), errors="coerce").isna().any())
    names = list(ROLES[: len(fields)]) + [f"column {k + 1}" for k in range(len(ROLES), len(fields))]
    wanted = resolve_columns(path, fields if header else names, columns)
    positional = None if header else names

    source: Path | io.BytesIO = path
    c_sep = sep
    if len(sep) > 1:  # pandas' fast parser takes one character; "::" files are small enough to rewrite
        source = io.BytesIO(path.read_bytes().replace(sep.encode(), _UNIT_SEP.encode()))
        c_sep = _UNIT_SEP
    id_columns = {wanted["user"]: str, wanted["item"]: str}  # ids stay text ("007" is not 7)
    try:
        frame = pd.read_csv(
            source, sep=c_sep, header=0 if header else None, names=positional, dtype=id_columns,
            engine="c", encoding="utf-8", encoding_errors="replace", skipinitialspace=True, low_memory=False,
            keep_default_na=False,  # "" stays "" (an empty field) and "nan" stays text; NaN then only pads short rows
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: {_parser_problem(exc, bool(header))}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, sep, bool(header), wanted


def _sniff_separator(path: Path, first_line: str) -> str:
    by_suffix = _SEP_BY_SUFFIX.get(path.suffix.lower())
    if by_suffix and by_suffix in first_line:
        return by_suffix
    if "::" in first_line:
        return "::"
    counts = {s: first_line.count(s) for s in SEPARATORS}
    best = max(counts, key=counts.get)
    if counts[best] == 0:
        raise DataError(
            f"{path}: cannot tell the separator from the first line (no tab, ',', ';', '|' or '::'); give --sep"
        )
    return best


def _parser_problem(exc: Exception, header: bool) -> str:
    # pandas: "Error tokenizing data. C error: Expected 4 fields in line 7, saw 5" (a file line)
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if found:
        expected, line, saw = (int(g) for g in found.groups())
        return f"row {line - header}: {saw} fields, expected {expected} (an unquoted separator inside a value?)"
    return f"cannot parse ({_one_line(exc)})"


# --- validation ----------------------------------------------------------------------


def _validated_columns(
    path: Path,
    frame: pd.DataFrame,
    wanted: dict[str, str | None],
    *,
    inferring: bool,
    sep: str | None,
    header: bool,
) -> tuple[pd.Series, pd.Series, np.ndarray, np.ndarray | None]:
    """Vectorised checks; on the first bad row raise one ``DataError`` describing it. Whether a rating
    is on a declared scale is checked by the caller; an inferred scale may not go below 0."""
    users, items = frame[wanted["user"]], frame[wanted["item"]]
    bad = _blank(users) | _blank(items)

    if wanted["rating"] is not None:
        raw_rating = frame[wanted["rating"]]
        rating = pd.to_numeric(raw_rating, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad |= ~np.isfinite(rating)
        if inferring:
            bad |= rating < 0
    else:
        raw_rating, rating = None, np.ones(len(frame), dtype=np.float64)

    if wanted["timestamp"] is not None:
        raw_time = frame[wanted["timestamp"]]
        seconds, time_ok = _epoch_seconds(raw_time)
        bad |= ~time_ok
    else:
        raw_time, seconds = None, None

    if bad.any():
        row = int(np.argmax(bad))
        fields = None if sep is None else _fields_in_row(path, sep, header, row)
        what = _describe_row(frame, row, wanted, raw_rating, rating, raw_time, fields)
        raise DataError(f"{path}: row {row + 1}: {what}")
    return users, items, rating.astype(np.float32), seconds


def _blank(column: pd.Series) -> np.ndarray:
    """Missing (a short row's padding) or an empty field."""
    blank = column.isna().to_numpy()
    if not pd.api.types.is_numeric_dtype(column.dtype):
        blank = blank | (column.astype(str).str.strip() == "").to_numpy()
    return blank


def _epoch_seconds(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer seconds since the epoch from numbers or ISO-8601 text, and which rows parsed."""
    numeric = pd.to_numeric(raw, errors="coerce") if not pd.api.types.is_numeric_dtype(raw.dtype) else raw
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(values)
    text_rows = ~ok & raw.notna().to_numpy()
    seconds = np.zeros(len(raw), dtype=np.int64)
    seconds[ok] = np.floor(values[ok]).astype(np.int64)
    if text_rows.any():
        parsed = pd.to_datetime(raw[text_rows].astype(str), format="ISO8601", utc=True, errors="coerce")
        parsed_ok = parsed.notna().to_numpy()
        delta = (parsed[parsed_ok] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        where = np.flatnonzero(text_rows)
        seconds[where[parsed_ok]] = np.asarray(delta, dtype=np.int64)
        ok[where[parsed_ok]] = True
    return seconds, ok


def _describe_row(
    frame: pd.DataFrame,
    row: int,
    wanted: dict[str, str | None],
    raw_rating: pd.Series | None,
    rating: np.ndarray,
    raw_time: pd.Series | None,
    fields: int | None,
) -> str:
    """Word what is wrong with one row (only the first bad row ever gets here)."""
    values = frame.iloc[row]
    used = [wanted[r] for r in ROLES if wanted[r] is not None]
    missing = [c for c in used if pd.isna(values[c]) or str(values[c]).strip() == ""]
    if missing:
        if fields is not None and fields < len(frame.columns):
            return f"truncated row: {fields} of {len(frame.columns)} fields (no {', '.join(missing)})"
        return f"empty {missing[0]!r} value"
    if raw_rating is not None:
        value = rating[row]
        if np.isnan(value):
            return f"rating {_shown(raw_rating.iloc[row])} is not a number"
        if not np.isfinite(value):
            return f"rating {value} is not finite"
        if value < 0:
            return f"rating {value:g} is negative (declare a scale that has it with --rating-scale)"
    if raw_time is not None:
        return f"timestamp {_shown(raw_time.iloc[row])} is neither integer epoch seconds nor an ISO-8601 date"
    return "malformed row"


def _fields_in_row(path: Path, sep: str, header: bool, row: int) -> int | None:
    """How many fields data row ``row`` has in the file itself (the parser pads short rows).

    Newlines are found with numpy over a memory map; blank lines are skipped as the parser
    skips them. None when the line cannot be told (e.g. a quoted value spanning lines).
    """
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    ends = np.r_[np.flatnonzero(raw == ord("\n")), raw.size]
    starts = np.r_[0, ends[:-1] + 1]
    lengths = ends - starts - (raw[np.maximum(ends - 1, 0)] == ord("\r"))
    non_blank = np.flatnonzero(lengths > 0)
    if row + header >= non_blank.size:
        return None
    line_no = non_blank[row + header]
    line = bytes(raw[starts[line_no] : starts[line_no] + lengths[line_no]]).decode("utf-8", errors="replace")
    if len(sep) > 1:
        return len(line.split(sep))
    return len(next(csv.reader([line], delimiter=sep, skipinitialspace=True)))


def _shown(value: object) -> str:
    text = repr(str(value))
    return text if len(text) <= 40 else text[:37] + "...'"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
