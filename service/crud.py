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

from rating_scale import RatingScale
from service.db.tables import DeclaredRatingScale, Interaction, Item, User

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


def _insert(connection: Connection, table):
    """The dialect's INSERT, which has ``on_conflict_do_nothing``."""
    dialect = connection.dialect.name
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
    with reads(session) as connection:  # a connection of its own each call: ``retry_if_dropped`` can repeat it
        connection.execute(select(1)).scalar_one()


def counts(session: Session) -> dict[str, int]:
    return {
        "users": session.scalar(select(func.count()).select_from(User)),
        "items": session.scalar(select(func.count()).select_from(Item)),
        "interactions": session.scalar(select(func.count()).select_from(Interaction)),
    }


def record_rating_scale(session: Session, scale: RatingScale) -> RatingScale | None:
    """Store ``scale`` as the one the data is written under; return the one it replaced, when it differed."""
    row = session.get(DeclaredRatingScale, 1)
    before = None if row is None else RatingScale.parse(row.scale, row.positive_threshold)
    if before != scale:
        session.merge(DeclaredRatingScale(id=1, scale=str(scale), positive_threshold=None if scale.implicit
                                          else scale.positive, declared_at=func.now()))
        session.commit()
    return before if before is not None and before != scale else None


# ---- writes --------------------------------------------------------------------------------
def _ensure(connection: Connection, table, rows: list[dict[str, Any]]) -> tuple[dict[str, int], set[str]]:
    """Create the rows whose external_id is new; return external_id -> id for all, and the new external_ids.

    Looks the ids up first and inserts only what is missing: a write for known users and items
    (the usual case) costs one statement per table, not an insert and a lookup.
    """
    if not rows:
        return {}, set()
    rows = sorted({r["external_id"]: r for r in rows}.values(), key=lambda r: r["external_id"])  # one lock order
    ids = _ids(connection, table, [r["external_id"] for r in rows])
    missing = [r for r in rows if r["external_id"] not in ids]
    if not missing:
        return ids, set()
    stmt = _insert(connection, table.__table__).on_conflict_do_nothing(index_elements=["external_id"])
    created: dict[str, int] = {}
    for chunk in _chunks(missing):
        created.update(connection.execute(stmt.returning(table.external_id, table.id), list(chunk)).all())
    ids.update(created)
    # created meanwhile by a concurrent transaction (ON CONFLICT DO NOTHING returned nothing for them)
    ids.update(_ids(connection, table, [r["external_id"] for r in missing if r["external_id"] not in created]))
    return ids, set(created)


def _ids(connection: Connection, table, external_ids: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in _chunks(external_ids):
        ids.update(connection.execute(select(table.external_id, table.id).where(table.external_id.in_(chunk))).all())
    return ids


@dataclass(frozen=True)
class InteractionBatch:
    """One request's interactions, as parallel lists."""

    user_ids: Sequence[str]
    item_ids: Sequence[str]
    ratings: Sequence[float | None]
    timestamps: Sequence[int | None]

    def __len__(self) -> int:
        return len(self.user_ids)


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
    return store_interaction_batches(session, [InteractionBatch(user_ids, item_ids, ratings, timestamps)], item_info)[0]


def store_interaction_batches(
    session: Session, batches: Sequence[InteractionBatch], item_info: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, int]]:
    """Several batches in one transaction (a group commit: one set of statements, one commit).

    Each batch gets the counts it would have got stored on its own, the batches one after
    another in the order given: a user, item or interaction that two batches bring is new
    for the first and already there for the second.
    """
    now = int(time.time())
    item_info = item_info or {}
    user_ids = [u for b in batches for u in b.user_ids]
    item_ids = [i for b in batches for i in b.item_ids]
    with _one_writer(session):
        try:
            connection = session.connection()  # Core statements: the ORM's execute path costs more than they do
            user_map, new_users = _ensure(connection, User, [{"external_id": u} for u in user_ids])
            item_rows = [{"external_id": i, "title": None, "metadata": None} for i in item_ids]
            item_rows += [{"external_id": i, "title": v.get("title"), "metadata": v.get("metadata")} for i, v in item_info.items()]
            item_map, new_items = _ensure(connection, Item, item_rows)
            keys = [  # (user, item, timestamp) per interaction, in batch order
                (user_map[u], item_map[i], now if t is None else int(t))
                for b in batches for u, i, t in zip(b.user_ids, b.item_ids, b.timestamps)
            ]
            ratings = [r for b in batches for r in b.ratings]
            rows = sorted(  # one lock order for concurrent transactions: no deadlocks
                ((u, i, r, t) for (u, i, t), r in zip(keys, ratings)), key=lambda row: (row[0], row[1], row[3])
            )
            # which rows were new only matters to share them out; one batch (a seed's millions of rows) needs the count
            inserted = _insert_new_interactions(connection, rows, with_keys=len(batches) > 1)
            session.commit()
        except BaseException:
            session.rollback()
            raise
    if len(batches) == 1:
        return [_counts(len(keys), inserted, len(new_users), len(new_items))]
    # Each new user, item and row is credited to the first batch that brought it.
    credited_users, credited_items, credited_rows = set(), set(), set()
    results, start = [], 0
    for b in batches:
        users = {u for u in b.user_ids if u in new_users} - credited_users
        items = {i for i in b.item_ids if i in new_items} - credited_items
        rows_new = {k for k in keys[start : start + len(b)] if k in inserted} - credited_rows
        credited_users |= users
        credited_items |= items
        credited_rows |= rows_new
        results.append(_counts(len(b), len(rows_new), len(users), len(items)))
        start += len(b)
    return results


def _counts(received: int, inserted: int, new_users: int, new_items: int) -> dict[str, int]:
    return {
        "received": received, "inserted": inserted, "duplicates": received - inserted,
        "new_users": new_users, "new_items": new_items,
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


def _insert_new_interactions(
    connection: Connection, rows: list[tuple[int, int, float | None, int]], with_keys: bool = False
) -> int | set[tuple[int, int, int]]:
    """INSERT ... ON CONFLICT (user_id, item_id, timestamp) DO NOTHING.

    Returns how many rows were new, or with ``with_keys`` their (user_id, item_id, timestamp).
    """
    table = Interaction.__table__
    columns = ["user_id", "item_id", "rating", "timestamp"]
    conflict = {"index_elements": ["user_id", "item_id", "timestamp"]}
    returned = (table.c.user_id, table.c.item_id, table.c.timestamp) if with_keys else (table.c.id,)
    new_rows: list[Any] = []
    if connection.dialect.name == "postgresql":
        # The rows travel as four arrays unnested by the server: one statement per 50k rows.
        # (An executemany of thousands of placeholders spends most of its time in the driver.)
        arrays = func.unnest(*[bindparam(c, type_=postgresql.ARRAY(table.c[c].type)) for c in columns])
        source = arrays.table_valued(*columns).render_derived()
        stmt = (
            postgresql.insert(table)
            .from_select(columns, select(*source.c))
            .on_conflict_do_nothing(**conflict)
            .returning(*returned)
        )
        for chunk in _chunks(rows, ARRAY_CHUNK):
            values = dict(zip(columns, map(list, zip(*chunk))))
            found = connection.execute(stmt, values).all()
            new_rows += found if with_keys else [len(found)]
    else:
        stmt = _insert(connection, table).on_conflict_do_nothing(**conflict).returning(*returned)
        for chunk in _chunks(rows):
            found = connection.execute(stmt, [dict(zip(columns, row)) for row in chunk]).all()
            new_rows += found if with_keys else [len(found)]
    return {tuple(row) for row in new_rows} if with_keys else sum(new_rows)
