"""Engine and session construction, from settings (called by the app factory and the CLI),
and the one retry a request gets when the database dropped a pooled connection."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("storage")

T = TypeVar("T")


def redacted(url: str) -> str:
    """A database URL without its password, for manifests, logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: whoever connects reports that itself
        return "<unparsable url>"


def make_engine(database_url: str, *, timeout_s: int = 5, **kwargs) -> Engine:
    """An engine that fails fast when the database is unreachable.

    Pooled connections are not pinged before each use (``pool_pre_ping``): on PostgreSQL
    that ping is a round trip per request, and dropping it served more uncached recommendations
    and ratings (bench/serving.py; bench/RESULTS.md, "Figures moved out"). A connection that a database
    restart dropped fails on its first statement instead; the request's work runs once
    more on a new connection (``retry_if_dropped``).
    """
    url = make_url(database_url)
    connect_args: dict = dict(kwargs.pop("connect_args", {}))
    if url.get_backend_name() == "sqlite":
        connect_args.setdefault("timeout", timeout_s)  # wait this long for a writer's lock, then error
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql":
        connect_args.setdefault("connect_timeout", timeout_s)
    kwargs.setdefault("pool_timeout", timeout_s)
    return create_engine(url, connect_args=connect_args, **kwargs)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores foreign keys unless asked
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
    # each impression flush rewrites the same few pages (the users' heads, the tails of the table and its key):
    # checkpointed every 10,000 pages, not 1,000, such a page is copied to the database once in several flushes
    # (bench/RESULTS.md, "What recording impressions costs")
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def retry_if_dropped(work: Callable[[], T]) -> T:
    """``work()``, run once more if it failed because its pooled connection had been dropped.

    When a statement finds its connection gone (a database restart, a proxy or firewall
    cutting idle connections), SQLAlchemy marks every connection the pool opened before that
    moment for replacement, so the second run gets a new one. ``work`` must open its own
    connection or session, and be safe to repeat (the reads are; a write repeated after a
    commit whose answer was lost finds its rows there and inserts nothing twice). If the
    database is still away, the second run fails to connect and that error goes on (a 503).
    """
    try:
        return work()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.warning("a pooled database connection had been dropped (%s); running the request's work again",
                    type(exc.orig).__name__)
    return work()
