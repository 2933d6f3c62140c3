"""The writes: interactions in bulk, one row per (user, item), with their users and items and idempotency keys."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sqlalchemy import Connection, bindparam, func, select, text, tuple_
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from interactions.rows import keep_latest_pairs
from rating_scale import RatingScale
from storage.crud.common import ARRAY_CHUNK, chunks, core_connection, dialect_insert, one_writer
from storage.tables import DeclaredRatingScale, IdempotencyKey, Interaction, Item, User

def record_rating_scale(session: Session, scale: RatingScale) -> RatingScale | None:
    """Store ``scale`` as the one the data is written under; return the one it replaced, when it differed."""
    row = session.get(DeclaredRatingScale, 1)
    before = None if row is None else RatingScale.parse(row.scale, row.positive_threshold)
    if before != scale:
        session.merge(DeclaredRatingScale(id=1, scale=str(scale), positive_threshold=None if scale.implicit
                                          else scale.positive, declared_at=func.now()))
        session.commit()
    return before if before is not None and before != scale else None


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
    stmt = dialect_insert(connection, table.__table__).on_conflict_do_nothing(index_elements=["external_id"])
    created: dict[str, int] = {}
    for chunk in chunks(missing):
        created.update(connection.execute(stmt.returning(table.external_id, table.id), list(chunk)).all())
    ids.update(created)
    # created meanwhile by a concurrent transaction (ON CONFLICT DO NOTHING returned nothing for them)
    ids.update(_ids(connection, table, [r["external_id"] for r in missing if r["external_id"] not in created]))
    return ids, set(created)


def _ids(connection: Connection, table, external_ids: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in chunks(external_ids):
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

    One row per (user, item): the latest entry of a pair wins (``interactions.rows``: the
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
    with one_writer(session):
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
            # a user created in this transaction has no stored rows: a seed's later transactions look none up
            fresh = {user_map[u] for u in new_users}
            stored = _stored_interactions(connection, sorted({(u, i) for u, i in zip(users.tolist(), items.tolist())
                                                              if u not in fresh}))
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
            record_answers(connection, [(b.claim, c) for b, c in zip(batches, counts) if b.claim is not None], now)
            session.commit()
        except BaseException:
            session.rollback()
            raise
    return counts


def record_answers(connection: Connection, answers: list[tuple[IdempotencyClaim, dict[str, int]]], now: int) -> None:
    """Record each key's answer; an expired record of the key is replaced, a live one is ``IdempotencyKeyTaken``."""
    if not answers:
        return
    table = IdempotencyKey.__table__
    connection.execute(table.delete().where(table.c.expires_at < now))  # the expired ones go (indexed)
    insert = dialect_insert(connection, table)
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
    row = core_connection(db).execute(stmt).first()
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
        for chunk in chunks(pairs, ARRAY_CHUNK):
            rows = connection.execute(stmt, {"user_id": [u for u, _ in chunk], "item_id": [i for _, i in chunk]})
            found.update(((u, i), (r, t)) for u, i, r, t in rows)
        return found
    pair = tuple_(table.c.user_id, table.c.item_id)
    for chunk in chunks(pairs):
        found.update(((u, i), (r, t)) for u, i, r, t in connection.execute(columns.where(pair.in_(list(chunk)))))
    return found


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
        for chunk in chunks(rows, ARRAY_CHUNK):
            connection.execute(stmt, dict(zip(columns, map(list, zip(*chunk)))))
    else:
        stmt = upsert(dialect_insert(connection, table))
        for chunk in chunks(rows):
            connection.execute(stmt, [dict(zip(columns, row)) for row in chunk])
