"""The one data-access layer: every query the service (and the seed command) makes.

Writes are bulk statements built with SQLAlchemy (``INSERT ... ON CONFLICT`` in the
PostgreSQL and SQLite dialects), never SQL from strings. A batch of interactions
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
from sqlalchemy import Connection, Select, bindparam, func, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from rating_scale import RatingScale
from rating_scale.latest import keep_latest_pairs
from service.db.tables import DeclaredRatingScale, IdempotencyKey, Interaction, Item, User

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
    a BEGIN and a ROLLBACK round trip (bench/RESULTS.md, "Figures moved out").
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


# ---- the dashboard's reads: aggregates computed in SQL, a few rows back -------------------------
def rating_histogram(db: Session | Connection) -> list[tuple[float | None, int]]:
    """(rating, interactions) per distinct rating, None (implicit feedback) first."""
    stmt = select(Interaction.rating, func.count()).group_by(Interaction.rating).order_by(Interaction.rating.is_not(None), Interaction.rating)
    return [(r, n) for r, n in _connection(db).execute(stmt).all()]


def interactions_over_time(db: Session | Connection, buckets: int = 40) -> tuple[int, list[tuple[int, int]]]:
    """The interactions' timestamps in ``buckets`` equal spans: (span in seconds, [(span start, interactions)])."""
    connection = _connection(db)
    first, last = connection.execute(select(func.min(Interaction.timestamp), func.max(Interaction.timestamp))).one()
    if first is None:
        return 0, []
    width = max(1, -(-(int(last) - int(first) + 1) // buckets))  # ceiling: the last timestamp falls in the last span
    bucket = (Interaction.timestamp - int(first)) // width  # SQLAlchemy's floor division: integer "/" on both databases
    rows = connection.execute(select(bucket.label("b"), func.count()).group_by("b").order_by("b")).all()
    return width, [(int(first) + int(b) * width, n) for b, n in rows]


def item_interaction_counts(db: Session | Connection) -> list[int]:
    """Interactions per item that has any, most first: the popularity long tail."""
    n = func.count().label("n")
    stmt = select(n).select_from(Interaction).group_by(Interaction.item_id).order_by(n.desc())
    return list(_connection(db).execute(stmt).scalars())


def search_items(db: Session | Connection, text_: str, limit: int = 20) -> list[tuple[str, str | None]]:
    """Items whose id is ``text_`` (first) or whose title contains it, any case: (id, title)."""
    exact = Item.external_id == text_
    stmt = (
        select(Item.external_id, Item.title)
        .where(exact | Item.title.icontains(text_, autoescape=True))
        .order_by(exact.desc(), Item.title, Item.external_id)
        .limit(limit)
    )
    return [(i, t) for i, t in _connection(db).execute(stmt).all()]


def titled_history(db: Session | Connection, user_id: str, limit: int) -> tuple[int, list[tuple[str, str | None, float | None, int]]]:
    """A user's interaction count and latest ``limit`` interactions, newest first: (item, title, rating, timestamp)."""
    connection = _connection(db)
    stmt = (
        select(Item.external_id, Item.title, Interaction.rating, Interaction.timestamp)
        .select_from(Interaction).join(User, User.id == Interaction.user_id).join(Item, Item.id == Interaction.item_id)
        .where(User.external_id == user_id).order_by(Interaction.timestamp.desc(), Item.external_id).limit(limit)
    )
    total = connection.scalar(
        select(func.count()).select_from(Interaction).join(User, User.id == Interaction.user_id).where(User.external_id == user_id)
    )
    return int(total or 0), [tuple(row) for row in connection.execute(stmt).all()]


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
class IdempotencyClaim:
    """A request's ``Idempotency-Key``: its answer is recorded in the transaction that stores the batch."""

    scope: str  # sha256 of the API key used
    key: str
    body_sha256: str
    ttl_s: float


class IdempotencyKeyTaken(Exception):
    """A concurrent transaction recorded the same key first: this one is rolled back (its answer is that one's)."""


@dataclass(frozen=True)
class InteractionBatch:
    """One request's interactions, as parallel lists, and its idempotency key if it has one."""

    user_ids: Sequence[str]
    item_ids: Sequence[str]
    ratings: Sequence[float | None]
    timestamps: Sequence[int | None]
    claim: IdempotencyClaim | None = None

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

    One row per (user, item): the latest entry of a pair wins (``rating_scale.latest``: the
    newest timestamp, ties to the last given), and replaces a stored row no newer than it.
    A missing timestamp is the insertion time. New users and items are created in the same
    transaction. ``item_info`` may carry a title/metadata for items (the seed command);
    existing items are left as they are.
    """
    return store_interaction_batches(session, [InteractionBatch(user_ids, item_ids, ratings, timestamps)], item_info)[0]


def store_interaction_batches(
    session: Session, batches: Sequence[InteractionBatch], item_info: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, int]]:
    """Several batches in one transaction (a group commit: one set of statements, one commit).

    Each batch gets the counts it would have got stored on its own, the batches one after
    another in the order given: a user, item or pair that two batches bring is new for the
    first, and updated (or unchanged) by the second. The answers of batches with an idempotency
    key are recorded in the same transaction (``IdempotencyKeyTaken`` if one is recorded already).
    """
    now = int(time.time())
    item_info = item_info or {}
    user_ids = [u for b in batches for u in b.user_ids]
    item_ids = [i for b in batches for i in b.item_ids]
    with _one_writer(session):
        try:
            connection = session.connection()  # Core statements: the ORM's execute path costs more than they do
            user_map, new_users = _ensure(connection, User, [{"external_id": u} for u in dict.fromkeys(user_ids)])  # one per id
            item_rows = [{"external_id": i, "title": None, "metadata": None} for i in dict.fromkeys(item_ids)]
            item_rows += [{"external_id": i, "title": v.get("title"), "metadata": v.get("metadata")} for i, v in item_info.items()]
            item_map, new_items = _ensure(connection, Item, item_rows)
            users = np.fromiter((user_map[u] for u in user_ids), dtype=np.int64, count=len(user_ids))
            items = np.fromiter((item_map[i] for i in item_ids), dtype=np.int64, count=len(item_ids))
            stamps = np.fromiter((now if t is None else int(t) for b in batches for t in b.timestamps),
                                 dtype=np.int64, count=len(user_ids))
            ratings = [r for b in batches for r in b.ratings]
            stored = _stored_interactions(connection, sorted(set(zip(users.tolist(), items.tolist()))))
            state = dict(stored)  # (user, item) -> (rating, timestamp), as each batch in turn leaves it
            counts, start = [], 0
            credited_users: set[str] = set()
            credited_items: set[str] = set()
            for b in batches:
                end = start + len(b)
                keep, _ = keep_latest_pairs(users[start:end], items[start:end], stamps[start:end])
                inserted = updated = 0
                for n in (keep + start).tolist():
                    pair, entry = (int(users[n]), int(items[n])), (ratings[n], int(stamps[n]))
                    before = state.get(pair)
                    if before is None:
                        inserted += 1
                    elif entry[1] >= before[1] and entry != before:
                        updated += 1
                    else:
                        continue  # older than the stored row, or the same: it stays
                    state[pair] = entry
                # Each new user and item is credited to the first batch that brought it.
                batch_users = {u for u in b.user_ids if u in new_users} - credited_users
                batch_items = {i for i in b.item_ids if i in new_items} - credited_items
                credited_users |= batch_users
                credited_items |= batch_items
                counts.append(_counts(len(b), inserted, updated, len(batch_users), len(batch_items)))
                start = end
            # only what changed is written; sorted: one lock order for concurrent transactions, no deadlocks
            rows = sorted((u, i, r, t) for (u, i), (r, t) in state.items() if stored.get((u, i)) != (r, t))
            _upsert_interactions(connection, rows)
            _record_answers(connection, [(b.claim, c) for b, c in zip(batches, counts) if b.claim is not None], now)
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return counts


def _record_answers(connection: Connection, answers: list[tuple[IdempotencyClaim, dict[str, int]]], now: int) -> None:
    """Record each key's answer; an expired record of the key is replaced, a live one is ``IdempotencyKeyTaken``."""
    if not answers:
        return
    table = IdempotencyKey.__table__
    connection.execute(table.delete().where(table.c.expires_at < now))  # the expired ones go (indexed)
    insert = _insert(connection, table)
    stmt = insert.on_conflict_do_update(
        index_elements=["scope", "key"],
        set_={c: insert.excluded[c] for c in ("body_sha256", "answer", "expires_at")},
        where=table.c.expires_at < now,
    ).returning(table.c.key)
    for claim, answer in answers:
        row = {"scope": claim.scope, "key": claim.key, "body_sha256": claim.body_sha256, "answer": answer,
               "expires_at": now + max(1, int(claim.ttl_s))}
        if connection.execute(stmt, row).first() is None:
            raise IdempotencyKeyTaken(claim.key)


def idempotent_answer(db: Session | Connection, claim: IdempotencyClaim) -> tuple[str, dict[str, int]] | None:
    """(body sha256, answer) recorded under the claim's scope and key, unless it expired."""
    table = IdempotencyKey.__table__
    stmt = select(table.c.body_sha256, table.c.answer).where(
        table.c.scope == claim.scope, table.c.key == claim.key, table.c.expires_at >= int(time.time()))
    row = _connection(db).execute(stmt).first()
    return None if row is None else (row[0], dict(row[1]))


def _counts(received: int, inserted: int, updated: int, new_users: int, new_items: int) -> dict[str, int]:
    return {
        "received": received, "inserted": inserted, "updated": updated, "unchanged": received - inserted - updated,
        "duplicates": received - inserted, "new_users": new_users, "new_items": new_items,
    }


def _stored_interactions(connection: Connection, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[float | None, int]]:
    """The stored (rating, timestamp) of each of ``pairs`` that has a row."""
    table = Interaction.__table__
    columns = select(table.c.user_id, table.c.item_id, table.c.rating, table.c.timestamp)
    found: dict[tuple[int, int], tuple[float | None, int]] = {}
    if connection.dialect.name == "postgresql":  # the pairs as two arrays, joined: a seed's millions in few statements
        arrays = func.unnest(*[bindparam(c, type_=postgresql.ARRAY(table.c[c].type)) for c in ("user_id", "item_id")])
        wanted = arrays.table_valued("user_id", "item_id").render_derived()
        stmt = columns.join_from(table, wanted, (wanted.c.user_id == table.c.user_id) & (wanted.c.item_id == table.c.item_id))
        for chunk in _chunks(pairs, ARRAY_CHUNK):
            rows = connection.execute(stmt, {"user_id": [u for u, _ in chunk], "item_id": [i for _, i in chunk]})
            found.update(((u, i), (r, t)) for u, i, r, t in rows)
        return found
    pair = tuple_(table.c.user_id, table.c.item_id)
    for chunk in _chunks(pairs):
        found.update(((u, i), (r, t)) for u, i, r, t in connection.execute(columns.where(pair.in_(list(chunk)))))
    return found


# SQLite takes one writer at a time, and a writer that finds the lock taken sleeps in growing
# steps before it retries: a long write p99 under concurrent writers (bench/RESULTS.md, "Figures moved out").
# Writers of this process wait their turn on a lock instead (other processes still
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
    whole items table (a cost per request) until autovacuum gets to it.
    """
    session.execute(text("ANALYZE"))  # the whole database: the service's own tables (SQLite and PostgreSQL alike)
    session.commit()


def _upsert_interactions(connection: Connection, rows: list[tuple[int, int, float | None, int]]) -> None:
    """INSERT ... ON CONFLICT (user_id, item_id) DO UPDATE, where the new row is no older than the stored one
    (a concurrent transaction's newer rating stays)."""
    table = Interaction.__table__
    columns = ["user_id", "item_id", "rating", "timestamp"]

    def upsert(insert):
        return insert.on_conflict_do_update(
            index_elements=["user_id", "item_id"],
            set_={"rating": insert.excluded.rating, "timestamp": insert.excluded.timestamp},
            where=insert.excluded.timestamp >= table.c.timestamp,
        )

    if connection.dialect.name == "postgresql":
        # The rows travel as four arrays unnested by the server: one statement per 50k rows.
        # (An executemany of thousands of placeholders spends most of its time in the driver.)
        arrays = func.unnest(*[bindparam(c, type_=postgresql.ARRAY(table.c[c].type)) for c in columns])
        source = arrays.table_valued(*columns).render_derived()
        stmt = upsert(postgresql.insert(table).from_select(columns, select(*source.c)))
        for chunk in _chunks(rows, ARRAY_CHUNK):
            connection.execute(stmt, dict(zip(columns, map(list, zip(*chunk)))))
    else:
        stmt = upsert(_insert(connection, table))
        for chunk in _chunks(rows):
            connection.execute(stmt, [dict(zip(columns, row)) for row in chunk])
