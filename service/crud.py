"""The one data-access layer: every query the service (and the seed command) makes.

Writes are bulk statements built with SQLAlchemy (``INSERT ... ON CONFLICT DO NOTHING``
in the PostgreSQL and SQLite dialects), never SQL from strings. A batch of interactions
is one transaction: its new users and items are created in it, and nothing is written
if any statement fails.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from sqlalchemy import Connection, Select, bindparam, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.db.tables import Interaction, Item, User

CHUNK = 5000  # rows per statement / ids per IN list: stays under every driver's parameter limit
ARRAY_CHUNK = 50_000  # rows per PostgreSQL statement when rows travel as arrays


@dataclass
class History:
    """Interactions as parallel arrays (one row per stored interaction)."""

    user_ids: np.ndarray  # external user ids (object)
    item_ids: np.ndarray  # external item ids (object)
    ratings: np.ndarray  # float64, NaN for implicit feedback
    timestamps: np.ndarray  # int64 epoch seconds

    def __len__(self) -> int:
        return len(self.item_ids)

    def of(self, user_id: str) -> History:
        keep = self.user_ids == user_id
        return History(self.user_ids[keep], self.item_ids[keep], self.ratings[keep], self.timestamps[keep])


def _insert(session: Session, table):
    """The dialect's INSERT, which has ``on_conflict_do_nothing``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database {dialect!r}: use PostgreSQL or SQLite")


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# Built once: constructing a statement cost more per request than running it.
_HISTORY_COLUMNS = (
    select(Item.external_id, Interaction.rating, Interaction.timestamp)
    .select_from(Interaction)
    .join(User, User.id == Interaction.user_id)
    .join(Item, Item.id == Interaction.item_id)
)
ONE_USER_HISTORY: Select = _HISTORY_COLUMNS.where(User.external_id == bindparam("user_id"))
USERS_HISTORY: Select = _HISTORY_COLUMNS.add_columns(User.external_id).where(
    User.external_id.in_(bindparam("user_ids", expanding=True))
)


def _as_history(rows: Sequence[Any], user_id: str | None = None) -> History:
    """Rows of (item, rating, timestamp) for ``user_id``, or of (item, rating, timestamp, user)."""
    if not rows:
        empty = np.array([], dtype=object)
        return History(empty, empty, np.array([], dtype=np.float64), np.array([], dtype=np.int64))
    columns = list(zip(*rows))
    users = np.full(len(rows), user_id, dtype=object) if user_id is not None else np.array(columns[3], dtype=object)
    return History(
        users,
        np.array(columns[0], dtype=object),
        np.array(columns[1], dtype=np.float64),  # None (implicit) becomes NaN
        np.array(columns[2], dtype=np.int64),
    )


@contextmanager
def reads(session: Session) -> Iterator[Connection]:
    """A connection of the session's engine for a request's reads, back in the pool when the block ends.

    In autocommit on PostgreSQL: each read is one statement, and a transaction around it cost
    a BEGIN and a ROLLBACK round trip (a history read: 700 us with them, 420 without).
    SQLite's driver opens no transaction for a SELECT. Returned at the end of the block, in
    the worker thread that used it, rather than when the request ends (one more thread hop).
    """
    with session.get_bind().connect() as connection:
        if connection.dialect.name != "sqlite":
            connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


def _connection(db: Session | Connection) -> Connection:
    # Core on the connection: the ORM's execute path doubled the time of a history read
    return db.connection() if isinstance(db, Session) else db


def user_history(db: Session | Connection, user_id: str) -> History:
    """All of one user's interactions, in one query."""
    return _as_history(_connection(db).execute(ONE_USER_HISTORY, {"user_id": user_id}).all(), user_id)


def user_histories(db: Session | Connection, user_ids: Sequence[str]) -> History:
    """All interactions of several users, in one query."""
    return _as_history(_connection(db).execute(USERS_HISTORY, {"user_ids": sorted(set(user_ids))}).all())


def item_titles(db: Session | Connection, item_ids: Sequence[str]) -> dict[str, str]:
    if not item_ids:
        return {}
    stmt = select(Item.external_id, Item.title).where(Item.external_id.in_(item_ids), Item.title.is_not(None))
    return dict(_connection(db).execute(stmt).all())


def ping(session: Session) -> None:
    session.execute(select(1)).scalar_one()


def counts(session: Session) -> dict[str, int]:
    return {
        "users": session.scalar(select(func.count()).select_from(User)),
        "items": session.scalar(select(func.count()).select_from(Item)),
        "interactions": session.scalar(select(func.count()).select_from(Interaction)),
    }


# ---- writes --------------------------------------------------------------------------------
def _ensure(session: Session, table, rows: list[dict[str, Any]]) -> tuple[dict[str, int], int]:
    """Create the rows whose external_id is new; return external_id -> id for all, and how many were new."""
    if not rows:
        return {}, 0
    rows = sorted({r["external_id"]: r for r in rows}.values(), key=lambda r: r["external_id"])  # one lock order
    stmt = _insert(session, table.__table__).on_conflict_do_nothing(index_elements=["external_id"])
    created = 0
    for chunk in _chunks(rows):
        created += len(session.execute(stmt.returning(table.id), list(chunk)).all())
    ids: dict[str, int] = {}
    external = [r["external_id"] for r in rows]
    for chunk in _chunks(external):
        ids.update(session.execute(select(table.external_id, table.id).where(table.external_id.in_(chunk))).all())
    return ids, created


def store_interactions(
    session: Session,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    ratings: Sequence[float | None],
    timestamps: Sequence[int | None],
    item_info: dict[str, dict[str, Any]] | None = None,
) -> dict[str, int]:
    """Store a batch of interactions in one transaction (the caller's session, committed here).

    Idempotent on (user, item, timestamp); a missing timestamp is the insertion time.
    New users and items are created in the same transaction. ``item_info`` may carry a
    title/metadata for items (the seed command); existing items are left as they are.
    """
    now = int(time.time())
    item_info = item_info or {}
    with _one_writer(session):
        try:
            user_map, new_users = _ensure(session, User, [{"external_id": u} for u in user_ids])
            item_rows = [{"external_id": i, "title": None, "metadata": None} for i in item_ids]
            item_rows += [{"external_id": i, "title": v.get("title"), "metadata": v.get("metadata")} for i, v in item_info.items()]
            item_map, new_items = _ensure(session, Item, item_rows)
            rows = sorted((  # one lock order for concurrent batches: no deadlocks
                (user_map[u], item_map[i], r, now if t is None else int(t))
                for u, i, r, t in zip(user_ids, item_ids, ratings, timestamps)
            ), key=lambda row: (row[0], row[1], row[3]))
            inserted = _insert_new_interactions(session, rows)
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return {
        "received": len(rows),
        "inserted": inserted,
        "duplicates": len(rows) - inserted,
        "new_users": new_users,
        "new_items": new_items,
    }


# SQLite takes one writer at a time, and a writer that finds the lock taken sleeps in growing
# steps (up to 100 ms) before it retries: at 8 concurrent writers that made the p99 of a write
# 372 ms. Writers of this process wait their turn on a lock instead (other processes still
# meet SQLite's busy timeout). PostgreSQL locks rows, not the database: no lock there.
_SQLITE_WRITER = threading.Lock()
WRITER_WAIT_S = 5.0


@contextmanager
def _one_writer(session: Session) -> Iterator[None]:
    if session.get_bind().dialect.name != "sqlite":
        yield
        return
    queued = _SQLITE_WRITER.acquire(timeout=WRITER_WAIT_S)  # past that, SQLite's own busy wait decides
    try:
        yield
    finally:
        if queued:
            _SQLITE_WRITER.release()


def refresh_statistics(session: Session) -> None:
    """Refresh the query planner's statistics after a bulk load (``ANALYZE``).

    Right after a seed PostgreSQL has none, and plans a history read with a hash of the
    whole items table (0.28 ms for 1,682 items, per request) until autovacuum gets to it.
    """
    session.execute(text("ANALYZE"))  # the whole database: the service's own tables (SQLite and PostgreSQL alike)
    session.commit()


def _insert_new_interactions(session: Session, rows: list[tuple[int, int, float | None, int]]) -> int:
    """INSERT ... ON CONFLICT (user_id, item_id, timestamp) DO NOTHING; returns how many rows were new."""
    table = Interaction.__table__
    columns = ["user_id", "item_id", "rating", "timestamp"]
    conflict = {"index_elements": ["user_id", "item_id", "timestamp"]}
    inserted = 0
    if session.get_bind().dialect.name == "postgresql":
        # The rows travel as four arrays unnested by the server: one statement per 50k rows.
        # (An executemany of thousands of placeholders spends most of its time in the driver.)
        arrays = func.unnest(*[bindparam(c, type_=postgresql.ARRAY(table.c[c].type)) for c in columns])
        source = arrays.table_valued(*columns).render_derived()
        stmt = (
            postgresql.insert(table)
            .from_select(columns, select(*source.c))
            .on_conflict_do_nothing(**conflict)
            .returning(table.c.id)
        )
        for chunk in _chunks(rows, ARRAY_CHUNK):
            values = dict(zip(columns, map(list, zip(*chunk))))
            inserted += len(session.execute(stmt, values).all())
        return inserted
    stmt = _insert(session, table).on_conflict_do_nothing(**conflict).returning(table.c.id)
    for chunk in _chunks(rows):
        inserted += len(session.execute(stmt, [dict(zip(columns, row)) for row in chunk]).all())
    return inserted
