"""Reading an interaction file's columns: the separator sniffed, the header told from data, each role's
column found by name, then every row checked at once (vectorised masks; only the first bad row is
worded, as one ``DataError`` naming the file, the 1-based data row and what is wrong)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from errors import DataError

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


# --- reading -------------------------------------------------------------------------


def read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet or damaged file
        raise DataError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None


def read_text(
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


def validated_columns(
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
