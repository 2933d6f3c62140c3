"""Impressions written: one batch of rows in one transaction, the driver's own fastest path on each database.

Part of the one data layer (``storage.crud``); the impression writer (``service.impressions``) calls
``store_impressions`` with rows in ``online._IMPRESSION_COLUMNS`` order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import Sequence

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from storage.crud.common import one_writer
from storage.crud.online import _IMPRESSION_COLUMNS, ImpressionRow, as_utc


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


@lru_cache(maxsize=8)
def _sqlite_second(epoch_s: int) -> str:
    return (_EPOCH + epoch_s * _SECOND).replace(tzinfo=None).isoformat(" ")


_COLUMN_LIST = ", ".join(_IMPRESSION_COLUMNS)
# SQLite: a batch inserted grouped by user walks the (user_id, created_at) index's leaves once each, in order, where
# the served order sought another user's leaf at every row (bench/RESULTS.md, "What recording impressions costs"); a
# stable sort on the user alone keeps each user's rows in the order served, a key tuple per row cost 4 times as much
_BY_USER = itemgetter(1)


def _other_impressions_insert(rows: int) -> str:
    return _impressions_insert("sqlite", "qmark", rows)


def _copy_impressions(connection: Connection, rows: Sequence[ImpressionRow]) -> int:
    """PostgreSQL: the rows COPYed into a temporary table of this connection, then inserted from it skipping
    stored ids (COPY itself cannot skip a conflict). psycopg writes each COPY row in C: 2.4 us of client CPU a
    row where its pipelined executemany spent 8.3 us (bench/RESULTS.md, "What recording impressions costs")."""
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS impressions_batch (LIKE impressions) ON COMMIT DELETE ROWS")
        with cursor.copy(f"COPY impressions_batch ({_COLUMN_LIST}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"INSERT INTO impressions ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM impressions_batch "
                       "ON CONFLICT (recommendation_id) DO NOTHING")
        return cursor.rowcount
    finally:
        cursor.close()


def _sqlite_time(moment: datetime) -> str:
    """A UTC time as SQLAlchemy's SQLite DateTime stores it (naive, microseconds): what its reads and comparisons
    expect. A batch's times share a few seconds: each second is formatted once (isoformat per row cost 2-4 us)."""
    since = as_utc(moment) - _EPOCH  # whole seconds from its days and seconds: ``// _SECOND`` divided big integers
    return f"{_sqlite_second(since.days * 86_400 + since.seconds)}.{since.microseconds:06d}"


def _insert_sqlite(connection: Connection, rows: Sequence[ImpressionRow]) -> int:
    """SQLite: the plain rows (``_PLAIN_COLUMNS``) and the rest in statements of their own, each part in the
    (user_id, created_at) index's order, through the driver's cursor (SQLAlchemy's execution cost more a statement)."""
    plain, other = [], []
    for row in rows:
        if _EXPERIMENT_VALUES(row) == _OUTSIDE_AN_EXPERIMENT:
            plain.append((*_PLAIN_VALUES(row), _sqlite_time(row[-1])))
        else:
            other.append((*row[:-1], _sqlite_time(row[-1])))
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
                inserted = connection.exec_driver_sql(_impressions_insert(dialect.name, dialect.paramstyle), list(rows)).rowcount
            else:
                inserted = _insert_sqlite(connection, rows)
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return inserted
