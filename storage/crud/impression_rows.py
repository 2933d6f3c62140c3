"""Impressions written: one batch of rows in one transaction, the driver's own fastest path on each database.

Part of the one data layer (``storage.crud``); the impression writer (``service.impressions``) calls
``store_impressions`` with rows in ``online._IMPRESSION_COLUMNS`` order. Each row is linked to the one
written before it for its user, and each user's head moved to their newest row (``_insert_sqlite``; on
PostgreSQL in SQL, ``_PG_INSERT_LINKED``): the chain ``online.recent_lists`` walks.
"""

from __future__ import annotations

import json
from datetime import timedelta
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import Sequence

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from storage.crud.common import chunks, one_writer
from storage.crud.online import _IMPRESSION_COLUMNS, EPOCH, ImpressionRow
from storage.tables import Impression


SQLITE_ROWS_PER_STATEMENT = 512  # 5,632 parameters, under SQLite's limit (32,766)


def _statement_sizes(rows: int) -> list[int]:
    """``rows`` as full statements and then powers of two: ten statement texts in all, each prepared once per
    connection (SQLite's statement cache), where a text per batch size would be prepared again every batch."""
    sizes = [SQLITE_ROWS_PER_STATEMENT] * (rows // SQLITE_ROWS_PER_STATEMENT)
    rest = rows % SQLITE_ROWS_PER_STATEMENT
    return sizes + [1 << bit for bit in reversed(range(rest.bit_length())) if rest & (1 << bit)]


def _execute_in_statements(cursor, statement, rows: Sequence[tuple]) -> int:
    """``rows`` bound into ``statement(size)`` texts of ``_statement_sizes``; returns the rows the database took."""
    taken = start = 0
    for size in _statement_sizes(len(rows)):
        cursor.execute(statement(size), tuple(chain.from_iterable(rows[start : start + size])))
        taken += cursor.rowcount
        start += size
    return taken


# OR FAIL: no statement journal, which ABORT filled with each page a statement changed (half the writer's writes,
# bench/RESULTS.md, "What recording impressions costs"); the batch's rollback undoes a failed statement's rows
_SQLITE_INSERT = "INSERT OR FAIL INTO"


_LINK_COLUMNS = ("prev_recommendation_id", "newest_at")


@lru_cache(maxsize=32)
def _other_impressions_insert(rows: int) -> str:
    """SQLite's INSERT of ``rows`` impressions, every column bound (``_IMPRESSION_COLUMNS``, then the links)."""
    row = "(" + ", ".join(["?"] * (len(_IMPRESSION_COLUMNS) + len(_LINK_COLUMNS))) + ")"
    return (f"{_SQLITE_INSERT} impressions ({', '.join((*_IMPRESSION_COLUMNS, *_LINK_COLUMNS))}) VALUES "
            f"{', '.join([row] * rows)} ON CONFLICT (recommendation_id) DO NOTHING")


# A list served outside any experiment (most of them) has no experiment, arm or teams and is not a shadow: SQLite
# gets those as constants, not values to bind (a None or a bool is looked up among the adapters, a value each)
_PLAIN_COLUMNS = ("recommendation_id", "user_id", "model", "version", "items", "k", "created_at")
_PLAIN_CONSTANTS = {"experiment_id": None, "arm": None, "shadow": False, "teams": None}
_SQL_LITERALS = {None: "NULL", False: "0"}
_OUTSIDE_AN_EXPERIMENT = tuple(_PLAIN_CONSTANTS.values())
# a row's values at those columns; the plain columns' positions, which ``_insert_sqlite`` takes one by one
_EXPERIMENT_VALUES = itemgetter(*(_IMPRESSION_COLUMNS.index(c) for c in _PLAIN_CONSTANTS))
assert [_IMPRESSION_COLUMNS.index(c) for c in _PLAIN_COLUMNS] == [0, 1, 5, 6, 7, 9, 10]


@lru_cache(maxsize=32)
def _plain_impressions_insert(rows: int) -> str:
    """SQLite's INSERT of ``rows`` plain impressions linked to a row before them as new as they are
    (``_PLAIN_COLUMNS`` and ``prev_recommendation_id`` bound, the rest constants, ``newest_at`` NULL)."""
    constants = [_SQL_LITERALS[v] for v in _PLAIN_CONSTANTS.values()]
    row = "(" + ", ".join(["?"] * (len(_PLAIN_COLUMNS) + 1) + constants + ["NULL"]) + ")"
    columns = ", ".join((*_PLAIN_COLUMNS, _LINK_COLUMNS[0], *_PLAIN_CONSTANTS, _LINK_COLUMNS[1]))
    return f"{_SQLITE_INSERT} impressions ({columns}) VALUES {', '.join([row] * rows)} ON CONFLICT (recommendation_id) DO NOTHING"


_SECOND = timedelta(seconds=1)


@lru_cache(maxsize=8)
def _second_text(epoch_s: int) -> str:
    return (EPOCH + epoch_s * _SECOND).replace(tzinfo=None).isoformat(" ")


_THREE_DIGITS = [f"{n:03d}" for n in range(1000)]


def _time_text(ns: int) -> str:
    """An ``epoch_ns`` time as UTC ``YYYY-MM-DD HH:MM:SS.ffffff``: what SQLAlchemy's SQLite DateTime stores (its
    reads and comparisons expect it) and, with ``+00``, PostgreSQL's input. A batch's times share a few seconds:
    each second is formatted once, the microseconds looked up three digits at a time (0.29 us a call against 0.49
    for ``zfill``, 1.3 for isoformat; ``timeit``)."""
    micros = ns // 1000
    return f"{_second_text(micros // 1_000_000)}.{_THREE_DIGITS[micros // 1000 % 1000]}{_THREE_DIGITS[micros % 1000]}"


# ---- the chain: each row names the one written before it for its user ----------------------------------------
Heads = dict[str, tuple[str, int]]  # user -> (their newest row's id, the newest created_at in their chain)
_MOVE_HEADS = ("ON CONFLICT (user_id) DO UPDATE SET recommendation_id = excluded.recommendation_id, "
               "newest_ns = excluded.newest_ns")
_ADVISORY_KEY = 0x61657265635F696D  # "aerec_im": impression writers of every replica take turns on PostgreSQL


def _sqlite_heads(cursor, users: Sequence[str]) -> Heads:
    """The batch's users' heads, read after taking the write lock, so no other writer moves them until commit."""
    if not cursor.connection.in_transaction:
        cursor.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first INSERT
    cursor.execute("SELECT user_id, recommendation_id, newest_ns FROM impression_heads "
                   "WHERE user_id IN (SELECT value FROM json_each(?))", (json.dumps(users),))
    return {user: (rid, newest) for user, rid, newest in cursor.fetchall()}


@lru_cache(maxsize=16)
def _sqlite_heads_upsert(rows: int) -> str:
    values = ", ".join(["(?, ?, ?)"] * rows)
    return f"INSERT INTO impression_heads (user_id, recommendation_id, newest_ns) VALUES {values} {_MOVE_HEADS}"


def _sqlite_move_heads(cursor, heads: Heads, users: Sequence[str]) -> None:
    """The batch's users' heads set to their last rows, bound in statements of ``_statement_sizes`` (a JSON text
    and SQLite's JSON functions cost more)."""
    _execute_in_statements(cursor, _sqlite_heads_upsert, [(user, *heads[user]) for user in users])


# ---- PostgreSQL: COPY, then linked by the database -----------------------------------------------------------
# COPY's columns: a plain row's texts first, then what a list outside an experiment holds as constants
_COPY_COLUMNS = ("recommendation_id", "user_id", "model", "version", "items", "k", "created_at", *_PLAIN_CONSTANTS)
_COPY_ORDER = itemgetter(*(_IMPRESSION_COLUMNS.index(c) for c in _COPY_COLUMNS))
_PLAIN_TEXTS = itemgetter(*(_IMPRESSION_COLUMNS.index(c) for c in _COPY_COLUMNS[:5]))
_COPY_NULL = "\\N"
_PLAIN_TAIL = "".join("\t" + (_COPY_NULL if v is None else "f") for v in _PLAIN_CONSTANTS.values()) + "\n"
_K, _CREATED = _IMPRESSION_COLUMNS.index("k"), _IMPRESSION_COLUMNS.index("created_at")
_COLUMN_LIST = ", ".join(_COPY_COLUMNS)
_NS = "(EXTRACT(EPOCH FROM {}) * 1000000000)::bigint"  # exact: EXTRACT gives a numeric (PostgreSQL 14 on)
# ``_insert_sqlite``'s links in SQL, so that the client's CPU is COPY's alone: a row's user's row before it in this
# batch (COPY's order, ``ord``), else their head; newest_at where a row before it in the chain was created later
_PG_INSERT_LINKED = f"""
    INSERT INTO impressions ({_COLUMN_LIST}, {", ".join(_LINK_COLUMNS)})
    SELECT {_COLUMN_LIST}, prev,
           CASE WHEN newest_before > {_NS.format("created_at")}
                THEN TIMESTAMPTZ 'epoch' + newest_before / 1000 * INTERVAL '1 microsecond' END
    FROM (SELECT b.*, COALESCE(LAG(b.recommendation_id) OVER earlier, h.recommendation_id) AS prev,
                 GREATEST(MAX({_NS.format("b.created_at")}) OVER (earlier ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                          h.newest_ns) AS newest_before
          FROM impressions_batch AS b LEFT JOIN impression_heads AS h ON h.user_id = b.user_id
          WINDOW earlier AS (PARTITION BY b.user_id ORDER BY b.ord)) AS linked
    ORDER BY ord
    ON CONFLICT (recommendation_id) DO NOTHING"""
_PG_MOVE_HEADS = f"""
    INSERT INTO impression_heads (user_id, recommendation_id, newest_ns)
    SELECT b.user_id, (ARRAY_AGG(b.recommendation_id ORDER BY b.ord DESC))[1],
           GREATEST(MAX({_NS.format("b.created_at")}), MAX(h.newest_ns))
    FROM impressions_batch AS b LEFT JOIN impression_heads AS h ON h.user_id = b.user_id
    GROUP BY b.user_id
    {_MOVE_HEADS}"""


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


def _copy_impressions(cursor, rows: Sequence[ImpressionRow]) -> int:
    """PostgreSQL: the rows COPYed into a temporary table of this connection, then inserted from it linked and
    skipping stored ids (COPY itself cannot skip a conflict), and the heads moved. The COPY text is built here, a
    plain row by one join and one format: less client CPU than psycopg's ``write_row`` (2.4 us a row) or its
    pipelined executemany (8.3 us) (bench/impression_writer.py --backend postgres; bench/RESULTS.md, "What
    recording impressions costs")."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))  # no other writer moves a head till commit
    cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS impressions_batch (LIKE impressions, ord bigserial) "
                   "ON COMMIT DELETE ROWS")
    with cursor.copy(f"COPY impressions_batch ({_COLUMN_LIST}) FROM STDIN") as copy:
        copy.write("".join(map(_copy_line, rows)))
    cursor.execute(_PG_INSERT_LINKED)
    inserted = cursor.rowcount
    cursor.execute(_PG_MOVE_HEADS)
    return inserted


# ---- SQLite: multi-row INSERTs, linked here ---------------------------------------------------------------
def _insert_sqlite(cursor, rows: Sequence[ImpressionRow], heads: Heads) -> int:
    """SQLite: each row linked to its user's head, which moves on to it; then the plain rows (``_PLAIN_COLUMNS``,
    linked to a row no newer) and the rest in statements of their own, in the order served (the primary key's, a
    UUIDv7's), through the driver's cursor (SQLAlchemy's execution cost more a statement).

    A row's ``newest_at`` is set only where a row before it in its chain was created later (another replica's
    batch, a clock set back), so that a walk back from the head stops at the first row whose ``newest_at``, else
    ``created_at``, is before its window (``online.recent_lists``)."""
    plain, other = [], []
    time_text, get = _time_text, heads.get
    for row in rows:
        user, created = row[1], row[-1]
        head = get(user)
        if head is not None and created >= head[1]:  # nearly every row: no newest_at
            heads[user] = (row[0], created)
            if _EXPERIMENT_VALUES(row) == _OUTSIDE_AN_EXPERIMENT:  # _PLAIN_COLUMNS by index: one tuple built, not two
                plain.append((row[0], row[1], row[5], row[6], row[7], row[9], time_text(created), head[0]))
                continue
            link = (head[0], None)
        elif head is None:
            heads[user] = (row[0], created)
            link = (None, None)
        else:
            heads[user] = (row[0], head[1])
            link = (head[0], time_text(head[1]))
        other.append((*row[:-1], time_text(created), *link))
    inserted = _execute_in_statements(cursor, _plain_impressions_insert, plain)
    return inserted + _execute_in_statements(cursor, _other_impressions_insert, other)


def _insert_linked(connection: Connection, rows: Sequence[ImpressionRow]) -> int:
    """The rows inserted, linked to their users' chains, and the heads moved; returns the rows inserted."""
    cursor = connection.connection.driver_connection.cursor()
    try:
        if connection.dialect.name == "postgresql":
            return _copy_impressions(cursor, rows)
        users = list(dict.fromkeys(row[1] for row in rows))
        heads = _sqlite_heads(cursor, users)
        inserted = _insert_sqlite(cursor, rows, heads)
        _sqlite_move_heads(cursor, heads, users)
        return inserted
    finally:
        cursor.close()


def _not_stored(connection: Connection, rows: Sequence[ImpressionRow]) -> list[ImpressionRow]:
    """The rows whose ids are not stored yet, each id once."""
    seen: set[str] = set()
    unique = [row for row in rows if not (row[0] in seen or seen.add(row[0]))]  # the first of each id, in order
    stored: set[str] = set()
    for chunk in chunks([row[0] for row in unique]):
        stored.update(connection.scalars(select(Impression.recommendation_id).where(Impression.recommendation_id.in_(chunk))))
    return [row for row in unique if row[0] not in stored]


def store_impressions(session: Session, rows: Sequence[ImpressionRow]) -> int:
    """Insert a batch in one transaction; an id stored already is skipped (a batch written again adds nothing).
    Returns the rows inserted.

    Plain values straight to the driver: SQLAlchemy's per-value bind processing was most of the writer's Python
    time. SQLite takes up to 512 rows a statement (an executemany hands the GIL back and forth with the requests
    at every row's step); PostgreSQL a COPY (``_copy_impressions``)."""
    if not rows:
        return 0
    with one_writer(session):
        try:
            inserted = _insert_linked(session.connection(), rows)
            if inserted < len(rows):  # ids stored already (a write repeated): linked again without them, so that no
                session.rollback()    # chain runs through a row this batch did not write
                fresh = _not_stored(session.connection(), rows)
                inserted = _insert_linked(session.connection(), fresh) if fresh else 0
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return inserted
