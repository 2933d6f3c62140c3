"""`python -m service`: serve the API, migrate the database, seed it with a dataset (typer).

A mistake the user can fix (a bad file, an unknown dataset, an unreachable database,
invalid settings) is printed as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from interactions.file_options import with_column_options
from interactions.files import FileColumns

app = typer.Typer(
    name="service",
    help="The aerec recommendation API: serve, migrate, seed.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


class CliError(Exception):
    """A user mistake: one line, exit 2."""


def _settings():
    from pydantic import ValidationError

    from service.core.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise CliError(f"invalid settings: {where}: {first.get('msg')}") from None


def _migrate(settings) -> None:
    """The schema at head, and the settings' rating scale stored with the data (the trainer's ``--from-db`` reads it)."""
    from sqlalchemy.exc import OperationalError

    from storage import crud
    from storage.migrate import upgrade_to_head
    from storage.session import make_engine, make_session_factory

    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        engine = make_engine(settings.DATABASE_URL)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise CliError(f"DATABASE_URL is not a database URL SQLAlchemy can use: {_first_line(exc)}") from None
    try:
        upgrade_to_head(engine)
        with make_session_factory(engine)() as session:
            replaced = crud.record_rating_scale(session, settings.rating_scale)
        if replaced is not None:
            typer.echo(f"the rating scale stored with the data changed from {replaced.summary} to "
                       f"{settings.rating_scale.summary}; training refuses stored ratings off it", err=True)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    except OperationalError as exc:
        raise CliError(f"cannot migrate {engine.url.render_as_string(hide_password=True)}: {_first_line(exc)}") from None
    finally:
        engine.dispose()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    migrate: Annotated[bool, typer.Option(help="Bring the database schema to head first.")] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the API (the default command)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from service.http_protocol import head_limited
    from service.main import create_app

    settings = _settings()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if migrate:
        _migrate(settings)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, http=head_limited(settings.MAX_HEADER_BYTES))


@app.command("migrate")
def migrate_command() -> None:
    """Bring the database (DATABASE_URL) to the newest schema (alembic upgrade head)."""
    settings = _settings()
    _migrate(settings)
    typer.echo("database schema is at head")


@app.command("seed")
@with_column_options
def seed(
    dataset: Annotated[Optional[str], typer.Option(help="A MovieLens dataset name, e.g. ml-100k.")] = None,
    source: Annotated[Optional[Path], typer.Option(help="A local folder or .zip with the dataset's files.")] = None,
    file: Annotated[Optional[Path], typer.Option(help="Your own interaction log (CSV, TSV, Parquet).")] = None,
    columns: FileColumns = FileColumns(),
) -> None:
    """Load users, items (with titles) and interactions into the database, in bulk; idempotent.
    Ratings must be on the deployment's RATING_SCALE (under an implicit one they are left out)."""
    from errors import UserError

    if (dataset is None) == (file is None):
        raise CliError("give exactly one of --dataset NAME or --file PATH")
    if source is not None and dataset is None:
        raise CliError("--source goes with --dataset")
    if file is None and columns != FileColumns():
        raise CliError("--user-col, --item-col, --rating-col, --timestamp-col and --sep go with --file")
    settings = _settings()
    _migrate(settings)
    scale = settings.rating_scale
    try:
        if dataset is not None:
            from interactions.datasets import get_dataset

            inter = get_dataset(dataset, source=source, progress=False)
            refusal = None if scale.implicit else scale.refusal(inter.ratings, dataset, lambda n: (
                f"user {inter.user_ids[inter.users[n]]!r}, item {inter.item_ids[inter.items[n]]!r}, "
                f"rating {inter.ratings[n]:g}"))
            if refusal:
                raise CliError(f"{refusal}; RATING_SCALE={inter.rating_scale} would take them")
            inter = replace(inter, rating_scale=scale) if scale.implicit else inter
        else:
            from interactions.files import load_file

            inter, report = load_file(file, columns, rating_scale=scale)
            for note in report.notes():
                typer.echo(f"{file}: {note}", err=True)
    except UserError as exc:
        raise CliError(str(exc)) from None
    from service.seed import seed_interactions

    started = time.perf_counter()
    result = seed_interactions(settings.DATABASE_URL, inter)
    typer.echo(
        f"seeded {inter.name}: {result['inserted']:,} new interactions ({result['duplicates']:,} already there), "
        f"{result['new_users']:,} new users, {result['new_items']:,} new items in {time.perf_counter() - started:.1f}s"
    )


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy.exc import OperationalError

    from errors import run_cli

    return run_cli(app, argv, "python -m service", {
        CliError: str, OperationalError: lambda exc: f"the database cannot be reached: {_first_line(exc)}"})
