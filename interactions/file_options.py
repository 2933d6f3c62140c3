"""The command-line options that say how to read an interaction file, defined once.

``trainer data file``, ``trainer train --file``, ``trainer schedule --file`` and ``service seed
--file`` take the column options (``with_column_options``: the command receives one
``columns: FileColumns``); the trainer's commands also take the scale options
(``with_scale_options``: one ``rating_scale: RatingScale | None``, None to infer it). Typer
reads a command's options from its signature, so each decorator puts its options in the
signature in place of the one argument the command declares (``replacing``, which
``trainer.commands.options`` uses for the training options too).
"""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any, Callable, Optional

import typer

from errors import UserError
from interactions.files import FileColumns
from rating_scale import RatingScale

COLUMN_OPTIONS = {
    "user_col": Annotated[Optional[str], typer.Option(
        "--user-col", help="Column of user ids (default: one named user, user_id, userId, uid, ...).")],
    "item_col": Annotated[Optional[str], typer.Option(
        "--item-col", help="Column of item ids (default: one named item, item_id, itemId, movieId, ...).")],
    "rating_col": Annotated[Optional[str], typer.Option(
        "--rating-col", help="Column of ratings (default: one named rating, score, ...; none: implicit 1.0).")],
    "timestamp_col": Annotated[Optional[str], typer.Option(
        "--timestamp-col", help="Column of epoch seconds or ISO-8601 times (default: one named timestamp, ts, ...).")],
    "sep": Annotated[Optional[str], typer.Option(
        "--sep", help="Field separator of a text file (default: sniffed; 'tab' for a tab).")],
}
SCALE_OPTIONS = {
    "rating_scale": Annotated[Optional[str], typer.Option(
        "--rating-scale", help="The file's rating scale: LOW:HIGH:STEP (1:5:1, 0.5:5:0.5), LOW:HIGH or implicit "
        "(default: inferred from the ratings, and printed).")],
    "positive_threshold": Annotated[Optional[float], typer.Option(
        "--positive-threshold", help="Ratings >= this are positives for the rankers (default: 3/4 up the scale, "
        "4 on 1:5:1); goes with --rating-scale.")],
}


def file_columns(user_col: str | None, item_col: str | None, rating_col: str | None, timestamp_col: str | None,
                 sep: str | None) -> FileColumns:
    return FileColumns(user_col, item_col, rating_col, timestamp_col, "\t" if sep == "tab" else sep)


def declared_scale(rating_scale: str | None, positive_threshold: float | None) -> RatingScale | None:
    if rating_scale is None:
        if positive_threshold is not None:
            raise UserError("--positive-threshold goes with --rating-scale (the scale it is on)")
        return None
    try:
        return RatingScale.parse(rating_scale, positive_threshold)
    except ValueError as exc:
        raise UserError(f"--rating-scale: {exc}") from None


def replacing(argument: str, options: dict[str, Any], build: Callable[..., Any],
              defaults: dict[str, Any] | None = None):
    """A decorator: the command's ``argument`` becomes ``options`` (name: annotated type; default None unless
    ``defaults`` says) on the command line, built into one value by ``build``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        params = list(signature.parameters.values())
        at = [p.name for p in params].index(argument)
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=(defaults or {}).get(name),
                                   annotation=kind) for name, kind in options.items()]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[:at] + params[at + 1:]]
        params[at:at] = added  # in the help, where the command declared the argument

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            built = build(**{name: values.pop(name) for name in options})
            return command(**values, **{argument: built})

        wrapper.__signature__ = signature.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


with_column_options = replacing("columns", COLUMN_OPTIONS, file_columns)
with_scale_options = replacing("rating_scale", SCALE_OPTIONS, declared_scale)
