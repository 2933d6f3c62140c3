"""Engine and session construction, from settings (called by the app factory and the CLI)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(database_url: str, *, timeout_s: int = 5, **kwargs) -> Engine:
    """An engine that fails fast when the database is unreachable and checks pooled connections."""
    url = make_url(database_url)
    connect_args: dict = dict(kwargs.pop("connect_args", {}))
    if url.get_backend_name() == "sqlite":
        connect_args.setdefault("timeout", timeout_s)  # wait this long for a writer's lock, then error
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql":
        connect_args.setdefault("connect_timeout", timeout_s)
    kwargs.setdefault("pool_pre_ping", True)  # a connection dropped by a database restart is replaced, not used
    kwargs.setdefault("pool_timeout", timeout_s)
    return create_engine(url, connect_args=connect_args, **kwargs)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores foreign keys unless asked
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
