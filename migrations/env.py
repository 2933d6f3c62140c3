"""Alembic environment: runs the migrations against the service's database.

The URL is, in order: a connection handed over in ``config.attributes["connection"]``
(tests, ``storage.migrate``), the ``sqlalchemy.url`` option, or the ``DATABASE_URL`` setting.
``render_as_batch`` lets the same migrations alter tables on SQLite.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from storage.tables import Base

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from storage.settings import DatabaseSettings

    return DatabaseSettings().DATABASE_URL


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from storage.session import make_engine

    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
