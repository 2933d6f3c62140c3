"""What every data-access module shares: the dialect's INSERT, chunked statements, Core connections, and
one SQLite writer at a time in this process."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

CHUNK = 5000  # rows per statement / ids per IN list: stays under every driver's parameter limit
ARRAY_CHUNK = 50_000  # rows per PostgreSQL statement when rows travel as arrays


def dialect_insert(connection: Connection, table):
    """The dialect's INSERT, which has ``on_conflict_do_nothing``."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database {dialect!r}: use PostgreSQL or SQLite")


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


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


def core_connection(db: Session | Connection) -> Connection:
    # Core on the connection: the ORM's execute path doubled the time of a history read
    return db.connection() if isinstance(db, Session) else db


# SQLite takes one writer at a time, and a writer that finds the lock taken sleeps in growing
# steps before it retries: a long write p99 under concurrent writers (bench/RESULTS.md, "Figures moved out").
# Writers of this process wait their turn on a lock instead (other processes still
# meet SQLite's busy timeout). PostgreSQL locks rows, not the database: no lock there.
_SQLITE_WRITER = threading.Lock()
WRITER_WAIT_S = 5.0


@contextmanager
def one_writer(session: Session) -> Iterator[None]:
    if session.get_bind().dialect.name != "sqlite":
        yield
        return
    queued = _SQLITE_WRITER.acquire(timeout=WRITER_WAIT_S)  # past that, SQLite's own busy wait decides
    try:
        yield
    finally:
        if queued:
            _SQLITE_WRITER.release()
