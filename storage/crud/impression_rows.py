"""Impressions written: one batch of rows in one transaction, the driver's own fastest path on each database.

Part of the one data layer (``storage.crud``); the impression writer (``service.impressions``) calls
``store_impressions`` with rows in ``online._IMPRESSION_COLUMNS`` order.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import Sequence

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from storage.crud.common import one_writer
from storage.crud.online import _IMPRESSION_COLUMNS, EPOCH, ImpressionRow, from_epoch_ns


SQLITE_ROWS_PER_STATEMENT = 512  # 5,632 parameters, under SQLite's limit (32,766)


def _statement_sizes(rows: int) -> list[int]:
    """``rows`` as full statements and then powers of two: ten statement texts in all, each prepared once per
    connection (SQLite's statement cache), where a text per batch size would be prepared again every batch."""
    sizes = [SQLITE_ROWS_PER_STATEMENT] * (rows // SQLITE_ROWS_PER_STATEMENT)
    rest = rows % SQLITE_ROWS_PER_STATEMENT
    return sizes + [1 << bit for bit in reversed(range(rest.bit_length())) if rest & (1 << bit)]


# OR FAIL: no statement journal, which ABORT filled with each page a statement changed (half the writer's writes,
# bench/RESULTS.md, "What recording impressions costs"); the batch's rollback undoes a failed statement's rows
_SQLITE_INSERT = "INSERT OR FAIL INTO"


@lru_cache(maxsize=32)
def _impressions_insert(dialect_name: str, paramstyle: str, rows: int = 1) -> str:
    """The driver's own INSERT of ``rows`` impressions in one VALUES (a list's JSON text cast on PostgreSQL)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    json_mark = f"{mark}::json" if dialect_name == "postgresql" else mark
    row = "(" + ", ".join(json_mark if c in ("items", "teams") else mark for c in _IMPRESSION_COLUMNS) + ")"
    insert = _SQLITE_INSERT if dialect_name == "sqlite" else "INSERT INTO"
    return (f"{insert} impressions ({', '.join(_IMPRESSION_COLUMNS)}) VALUES {', '.join([row] * rows)} "
            "ON CONFLICT (recommendation_id) DO NOTHING")


# A list served outside any experiment (most of them) has no experiment, arm or teams and is not a shadow: SQLite
# gets those as constants, not values to bind (a None or a bool is looked up among the adapters, a value each)
_PLAIN_COLUMNS = ("recommendation_id", "user_id", "model", "version", "items", "k", "created_at")
_PLAIN_CONSTANTS = {"experiment_id": None, "arm": None, "shadow": False, "teams": None}
_SQL_LITERALS = {None: "NULL", False: "0"}
_OUTSIDE_AN_EXPERIMENT = tuple(_PLAIN_CONSTANTS.values())
# a row's values at those columns, and at the plain columns but its time (formatted for SQLite apart)
_EXPERIMENT_VALUES = itemgetter(*(_IMPRESSION_COLUMNS.index(c) for c in _PLAIN_CONSTANTS))
_PLAIN_VALUES = itemgetter(*(_IMPRESSION_COLUMNS.index(c) for c in _PLAIN_COLUMNS[:-1]))


@lru_cache(maxsize=32)
def _plain_impressions_insert(rows: int) -> str:
    """SQLite's INSERT of ``rows`` plain impressions (``_PLAIN_COLUMNS`` bound, the rest constants)."""
    row = "(" + ", ".join(["?"] * len(_PLAIN_COLUMNS) + [_SQL_LITERALS[v] for v in _PLAIN_CONSTANTS.values()]) + ")"
    return (f"{_SQLITE_INSERT} impressions ({', '.join((*_PLAIN_COLUMNS, *_PLAIN_CONSTANTS))}) VALUES {', '.join([row] * rows)} "
            "ON CONFLICT (recommendation_id) DO NOTHING")


_SECOND = timedelta(seconds=1)


@lru_cache(maxsize=8)
def _second_text(epoch_s: int) -> str:
    return (EPOCH + epoch_s * _SECOND).replace(tzinfo=None).isoformat(" ")


def _time_text(ns: int) -> str:
    """An ``epoch_ns`` time as UTC ``YYYY-MM-DD HH:MM:SS.ffffff``: what SQLAlchemy's SQLite DateTime stores (its
    reads and comparisons expect it) and, with ``+00``, PostgreSQL's input. A batch's times share a few seconds:
    each second is formatted once (isoformat per row cost 1.3 us, ``bench/impression_writer.py``)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_second_text(seconds)}.{str(rest // 1000).zfill(6)}"  # zfill: half a format spec's cost


_COLUMN_LIST = ", ".join(_IMPRESSION_COLUMNS)
# SQLite: a batch inserted grouped by user walks the (user_id, created_at) index's leaves once each, in order, where
# the served order sought another user's leaf at every row (bench/RESULTS.md, "What recording impressions costs"); a
# stable sort on the user alone keeps each user's rows in the order served, a key tuple per row cost 4 times as much
_BY_USER = itemgetter(1)


def _other_impressions_insert(rows: int) -> str:
    return _impressions_insert("sqlite", "qmark", rows)


# COPY's columns: a plain row's texts first, then what a list outside an experiment holds as constants
_COPY_COLUMNS = ("recommendation_id", "user_id", "model", "version", "items", "k", "created_at", *_PLAIN_CONSTANTS)
_COPY_ORDER = itemgetter(*(_IMPRESSION_COLUMNS.index(c) for c in _COPY_COLUMNS))
_PLAIN_TEXTS = itemgetter(*(_IMPRESSION_COLUMNS.index(c) for c in _COPY_COLUMNS[:5]))
_COPY_NULL = "\\N"
_PLAIN_TAIL = "".join("\t" + (_COPY_NULL if v is None else "f") for v in _PLAIN_CONSTANTS.values()) + "\n"
_K, _CREATED = _IMPRESSION_COLUMNS.index("k"), _IMPRESSION_COLUMNS.index("created_at")


def _copy_field(value: object, column: str) -> str:
    """A value in COPY's text format: NULL as \\N, a bool as t/f, a time as text, and backslash, tab, newline
    and carriage return escaped, so that no value can end its field or its row."""
    if value is None:
        return _COPY_NULL
    if isinstance(value, bool):
        return "t" if value else "f"
    text = f"{_time_text(value)}+00" if column == "created_at" else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_line(row: ImpressionRow) -> str:
    """A row as a line of COPY text: a plain row whose texts need no escape (all but a rare id's) by one join and
    one format, any other field by field (``_copy_field``)."""
    if _EXPERIMENT_VALUES(row) == _OUTSIDE_AN_EXPERIMENT and row[_K].__class__ is int:
        try:
            texts = "\t".join(_PLAIN_TEXTS(row))
        except TypeError:  # a None: written field by field as NULL, for the database to refuse
            texts = ""
        if texts.count("\t") == 4 and "\\" not in texts and "\n" not in texts and "\r" not in texts:
            return f"{texts}\t{row[_K]}\t{_time_text(row[_CREATED])}+00{_PLAIN_TAIL}"
    return "\t".join(map(_copy_field, _COPY_ORDER(row), _COPY_COLUMNS)) + "\n"


def _copy_impressions(connection: Connection, rows: Sequence[ImpressionRow]) -> int:
    """PostgreSQL: the rows COPYed into a temporary table of this connection, then inserted from it skipping
    stored ids (COPY itself cannot skip a conflict). The COPY text is built here, a plain row by one join and one
    format: less client CPU than psycopg's ``write_row`` (2.4 us a row) or its pipelined executemany (8.3 us)
    (bench/impression_writer.py --backend postgres; bench/RESULTS.md, "What recording impressions costs")."""
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS impressions_batch (LIKE impressions) ON COMMIT DELETE ROWS")
        with cursor.copy(f"COPY impressions_batch ({', '.join(_COPY_COLUMNS)}) FROM STDIN") as copy:
            copy.write("".join(map(_copy_line, rows)))
        cursor.execute(f"INSERT INTO impressions ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM impressions_batch "
                       "ON CONFLICT (recommendation_id) DO NOTHING")
        return cursor.rowcount
    finally:
        cursor.close()


def _insert_sqlite(connection: Connection, rows: Sequence[ImpressionRow]) -> int:
    """SQLite: the plain rows (``_PLAIN_COLUMNS``) and the rest in statements of their own, each part in the
    (user_id, created_at) index's order, through the driver's cursor (SQLAlchemy's execution cost more a statement)."""
    plain, other = [], []
    for row in rows:
        if _EXPERIMENT_VALUES(row) == _OUTSIDE_AN_EXPERIMENT:
            plain.append((*_PLAIN_VALUES(row), _time_text(row[-1])))
        else:
            other.append((*row[:-1], _time_text(row[-1])))
    plain.sort(key=_BY_USER)
    other.sort(key=_BY_USER)
    cursor = connection.connection.driver_connection.cursor()
    inserted = 0
    try:
        for part, statement in ((plain, _plain_impressions_insert), (other, _other_impressions_insert)):
            start = 0
            for size in _statement_sizes(len(part)):
                cursor.execute(statement(size), tuple(chain.from_iterable(part[start : start + size])))
                inserted += cursor.rowcount
                start += size
    finally:
        cursor.close()
    return inserted


def store_impressions(session: Session, rows: Sequence[ImpressionRow]) -> int:
    """Insert a batch in one transaction; an id stored already is skipped (a batch written again adds nothing).
    Returns the rows inserted.

    Plain values straight to the driver: SQLAlchemy's per-value bind processing was most of the writer's Python
    time. SQLite takes up to 512 rows a statement (an executemany hands the GIL back and forth with the requests
    at every row's step); PostgreSQL a COPY (``_copy_impressions``)."""
    if not rows:
        return 0
    inserted = 0
    with one_writer(session):
        try:
            connection = session.connection()
            dialect = connection.dialect
            if dialect.name == "postgresql":
                inserted = _copy_impressions(connection, rows)
            elif dialect.name != "sqlite":
                timed = [(*row[:-1], from_epoch_ns(row[-1])) for row in rows]
                inserted = connection.exec_driver_sql(_impressions_insert(dialect.name, dialect.paramstyle), timed).rowcount
            else:
                inserted = _insert_sqlite(connection, rows)
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return inserted
