"""Schema and data access on both databases: migrations equal the ORM, one-query histories, bulk upserts."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, inspect

from storage import crud
from storage.migrate import alembic_config, upgrade_to_head
from storage.session import make_engine, make_session_factory
from storage.tables import Base

HEAD = "0007"


def test_migrations_build_exactly_the_orm_schema(seeded_backend):
    engine = make_engine(seeded_backend.database_url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            assert MigrationContext.configure(conn).get_current_revision() == HEAD
        columns = {c["name"] for c in inspect(engine).get_columns("interactions")}
        assert columns == {"id", "user_id", "item_id", "rating", "timestamp", "created_at"}
        uniques = inspect(engine).get_unique_constraints("interactions")
        # one row per pair; (user, item, timestamp) kept a release for the previous one's ON CONFLICT
        assert sorted(sorted(u["column_names"]) for u in uniques) == [["item_id", "timestamp", "user_id"], ["item_id", "user_id"]]
    finally:
        engine.dispose()


def test_downgrade_and_upgrade_round_trip(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    command.downgrade(alembic_config(url), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade_to_head(engine)
    assert {"users", "items", "interactions"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_history_is_one_query_and_upserts_are_idempotent(seeded_backend):
    engine = make_engine(seeded_backend.database_url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        with make_session_factory(engine)() as session:
            user = f"s-{uuid.uuid4().hex[:8]}"
            items = ["50", "100", f"new-{uuid.uuid4().hex[:6]}"]
            result = crud.store_interactions(session, [user] * 3, items, [5.0, None, 3.0], [10, 20, None])
            assert result == {"received": 3, "inserted": 3, "updated": 0, "unchanged": 0, "duplicates": 0,
                              "new_users": 1, "new_items": 1}
            statements.clear()
            history = crud.user_history(session, user)
            assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
            assert sorted(history.item_ids.tolist()) == sorted(items)
            ratings = dict(zip(history.item_ids.tolist(), history.ratings.tolist()))
            assert ratings["50"] == 5.0 and ratings[items[2]] == 3.0 and ratings["100"] != ratings["100"]  # NaN: implicit
            assert history.timestamps.min() == 10 and history.timestamps.max() > 1_600_000_000  # default: now
            # The same pair again: the latest entry (timestamp 11) replaces the stored row (timestamp 10)
            again = crud.store_interactions(session, [user, user], ["50", "50"], [1.0, 2.0], [10, 11])
            assert again == {"received": 2, "inserted": 0, "updated": 1, "unchanged": 1, "duplicates": 2,
                             "new_users": 0, "new_items": 0}
            history = crud.user_history(session, user)
            assert len(history) == 3 and dict(zip(history.item_ids.tolist(), history.ratings.tolist()))["50"] == 2.0
            many = crud.user_histories(session, [user, "1", "no-such-user"])
            assert set(many.user_ids.tolist()) == {user, "1"}
    finally:
        engine.dispose()


def test_concurrent_writers_are_all_acknowledged_and_stored(seeded_backend):
    """Eight threads writing at once (SQLite: one writer at a time): every batch commits, none is lost."""
    engine = make_engine(seeded_backend.database_url)
    factory = make_session_factory(engine)
    run = uuid.uuid4().hex[:8]

    def write(n: int) -> dict[str, int]:
        with factory() as session:  # each batch: a new user, a new item and a known one
            return crud.store_interactions(session, [f"w{run}-{n}"] * 2, [f"wi{run}-{n}", "50"], [4.0, 5.0], [n, n])

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(write, range(40)))
        assert all(r == {"received": 2, "inserted": 2, "updated": 0, "unchanged": 0, "duplicates": 0,
                         "new_users": 1, "new_items": 1} for r in results)
        with factory() as session:
            stored = crud.user_histories(session, [f"w{run}-{n}" for n in range(40)])
        assert len(stored) == 80 and set(stored.item_ids.tolist()) == {f"wi{run}-{n}" for n in range(40)} | {"50"}
    finally:
        engine.dispose()


def test_reads_run_outside_a_transaction_and_leave_none_behind(seeded_backend):
    """``crud.reads``: on PostgreSQL the reads leave no transaction open on the server (no BEGIN,
    no ROLLBACK round trips); the connection goes back to the pool at the end of the block,
    and a write after it is still all or nothing."""
    from sqlalchemy import select

    from storage.tables import User

    engine = make_engine(seeded_backend.database_url)
    factory = make_session_factory(engine)
    user, newcomer = f"r-{uuid.uuid4().hex[:8]}", f"n-{uuid.uuid4().hex[:8]}"
    try:
        with factory() as session:
            crud.store_interactions(session, [user], ["50"], [4.0], [1])
            with crud.reads(session) as db:
                history = crud.user_history(db, user)
                titles = crud.item_titles(db, ["50"])
                if engine.dialect.name == "postgresql":
                    from psycopg.pq import TransactionStatus

                    assert db.connection.dbapi_connection.info.transaction_status == TransactionStatus.IDLE
            assert history.item_ids.tolist() == ["50"] and titles == {"50": "Star Wars (1977)"}
            assert engine.pool.checkedout() == 0 and not session.in_transaction()
            # A batch that fails after its first INSERT (the new user), on a pooled connection
            # the reads used: nothing of it stays, so that connection left autocommit behind.
            with pytest.raises(ValueError):
                crud.store_interactions(session, [newcomer], ["50"], [4.0], ["not a time"])
            assert session.execute(select(User.id).where(User.external_id == newcomer)).first() is None
    finally:
        engine.dispose()


def test_statistics_are_refreshed_for_the_planner(seeded_backend):
    from sqlalchemy import text

    engine = make_engine(seeded_backend.database_url)
    try:
        with make_session_factory(engine)() as session:
            crud.refresh_statistics(session)
            if engine.dialect.name == "postgresql":
                analyzed = session.scalar(text(
                    "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'interactions' AND schemaname = current_schema()"
                ))
                assert analyzed is not None
            else:
                assert "interactions" in set(session.scalars(text("SELECT tbl FROM sqlite_stat1")))
    finally:
        engine.dispose()


def test_migration_0003_keeps_the_latest_row_of_each_pair(empty_backend):
    """Repeats stored under the old (user, item, timestamp) key collapse to the latest row of each pair."""
    from sqlalchemy import text

    engine = make_engine(empty_backend.database_url)
    config = alembic_config()
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0002")
            connection.execute(text("INSERT INTO users (id, external_id) VALUES (1, 'u')"))
            connection.execute(text("INSERT INTO items (id, external_id) VALUES (1, 'a'), (2, 'b')"))
            connection.execute(text(
                "INSERT INTO interactions (id, user_id, item_id, rating, timestamp) VALUES "
                "(1, 1, 1, 5, 20), (2, 1, 1, 1, 10), (3, 1, 2, 2, 30), (4, 1, 2, 4, 25), (5, 1, 2, 3, 40)"
            ))
        upgrade_to_head(engine)
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id, item_id, rating FROM interactions ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [(1, 1, 5.0), (5, 2, 3.0)]
        with make_session_factory(engine)() as session:  # and a re-rating now replaces the row
            assert crud.store_interactions(session, ["u"], ["a"], [2.0], [20])["updated"] == 1
            assert sorted(crud.user_history(session, "u").ratings.tolist()) == [2.0, 3.0]
    finally:
        engine.dispose()


def test_migration_0007_chains_each_users_stored_impressions_newest_first(empty_backend):
    """Impressions stored under the (user_id, created_at) index are chained oldest first, each user's head the
    newest, so an interaction's recent lists are found as before."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text

    from storage.crud import online
    from storage.tables import Impression

    engine = make_engine(empty_backend.database_url)
    config = alembic_config()
    at = datetime(2026, 12, 6, 12, tzinfo=UTC)
    stored = {"a": [("a1", 0), ("a2", 30), ("a3", 30), ("a4", 90)], "b": [("b1", 10)]}  # id, seconds after ``at``
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0006")
            connection.execute(Impression.__table__.insert(), [  # written newest first: chained by time, not by rowid
                {"recommendation_id": rid, "user_id": user, "shadow": rid == "a3", "model": "ease", "version": "v1",
                 "items": [rid], "k": 1, "created_at": at + timedelta(seconds=seconds)}
                for user, lists in stored.items() for rid, seconds in reversed(lists)])
        upgrade_to_head(engine)
        with engine.connect() as connection:
            links = dict(connection.execute(text("SELECT recommendation_id, prev_recommendation_id FROM impressions")).all())
            heads = dict(connection.execute(text("SELECT user_id, recommendation_id FROM impression_heads")).all())
        assert links == {"a1": None, "a2": "a1", "a3": "a2", "a4": "a3", "b1": None} and heads == {"a": "a4", "b": "b1"}
        with make_session_factory(engine)() as session:
            found = online.recent_lists(session, ["a", "b"], at + timedelta(seconds=30))
        assert {user: [s.recommendation_id for s in lists] for user, lists in found.items()} == {"a": ["a4", "a2"]}
    finally:
        engine.dispose()
