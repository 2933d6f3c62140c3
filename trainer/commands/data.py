"""`python -m trainer data ...`: get and verify datasets, check a file, make synthetic data.

    python -m trainer data ml-100k [--source PATH] [--data-dir DIR]
    python -m trainer data file ratings.csv --user-col userId --item-col movieId
    python -m trainer data synthetic --users 140000 --items 20000 --interactions 20000000 --out ml20m-like.parquet

Each prints the shape, density and rating histogram of what it read.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from typer.core import TyperGroup

from errors import UserError
from interactions import Interactions
from interactions.file_options import with_column_options, with_scale_options
from interactions.files import FileColumns
from interactions.movielens import DATASETS
from rating_scale import RatingScale



class _DataGroup(TyperGroup):
    """Answers an unknown dataset name with the known ones (one line, exit 2), not a usage dump."""

    def resolve_command(self, ctx, args):  # noqa: ANN001, ANN201  (click's signature)
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            others = [name for name in self.commands if name not in DATASETS]
            raise UserError(
                f"unknown dataset {args[0]!r}; known: {', '.join(DATASETS)} (other commands: {', '.join(others)})"
            )
        return super().resolve_command(ctx, args)


data_app = typer.Typer(
    cls=_DataGroup,
    help="Get and verify MovieLens datasets, check your own interaction file, or generate synthetic data.",
    no_args_is_help=True,
)

SourceOption = Annotated[
    Optional[Path], typer.Option("--source", help="A local folder or .zip holding the GroupLens files (offline use).")
]
DataDirOption = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Cache folder (default: the DATA_DIR setting).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No download progress bar.")]


def summary(interactions: Interactions) -> str:
    """Shape, density, time span and a rating histogram, as a few lines of text."""
    facts = interactions.describe()
    lines = [
        f"{facts['name']}: {facts['users']:,} users, {facts['items']:,} items, {facts['ratings']:,} ratings "
        f"(density {facts['density']:.2%})"
    ]
    if interactions.timestamps is not None and len(interactions):
        first, last = (
            dt.datetime.fromtimestamp(int(t), dt.timezone.utc).date()
            for t in (interactions.timestamps.min(), interactions.timestamps.max())
        )
        lines.append(f"timestamps: {first} .. {last}")
    lines.append(f"{'rating':>8}  {'count':>12}  {'share':>6}")
    for value, count in facts["rating_histogram"].items():
        lines.append(f"{value:>8g}  {count:>12,}  {count / max(1, facts['ratings']):>6.1%}")
    return "\n".join(lines)


def _dataset_command(name: str) -> None:
    spec = DATASETS[name]

    def command(source: SourceOption = None, data_dir: DataDirOption = None, quiet: QuietOption = False) -> None:
        from interactions.datasets import dataset_origin, get_dataset

        interactions = get_dataset(name, data_dir=data_dir, source=source, progress=not quiet)
        typer.echo(summary(interactions))
        typer.echo(f"from: {dataset_origin(name, data_dir=data_dir)}")

    shape = "" if spec.shape is None else " ({:,} users, {:,} items, {:,} ratings)".format(*spec.shape)
    command.__doc__ = f"Get {name}{shape}: from the verified cache, --source, GroupLens" + (
        ", or the RecBole wheel on PyPI." if name == "ml-100k" else "."
    )
    data_app.command(name)(command)


for _name in DATASETS:
    _dataset_command(_name)


@data_app.command("file")
@with_scale_options
@with_column_options
def check_file(
    path: Annotated[Path, typer.Argument(help="CSV, TSV or Parquet file of interactions.")],
    columns: FileColumns = FileColumns(),
    rating_scale: RatingScale | None = None,
) -> None:
    """Load and check your own interaction file; report its shape, columns, rating scale and the duplicates dropped."""
    from interactions.files import load_file

    interactions, report = load_file(path, columns, rating_scale=rating_scale)
    typer.echo(summary(interactions))
    for note in report.notes():
        typer.echo(note)


@data_app.command("synthetic")
def synthetic(
    users: Annotated[int, typer.Option("--users", help="Number of users.")] = 140_000,
    items: Annotated[int, typer.Option("--items", help="Number of items.")] = 20_000,
    interactions: Annotated[
        int, typer.Option("--interactions", help="Number of (user, item) interactions.")
    ] = 20_000_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same data.")] = 0,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Write it here as Parquet (user, item, rating, timestamp).")
    ] = None,
) -> None:
    """Generate an ML-20M-shaped log: Zipf item popularity, log-normal user activity, unique pairs."""
    from trainer.synthetic import generate, write_parquet

    log = generate(users, items, interactions, seed=seed)
    typer.echo(summary(log))
    rated = int(np.count_nonzero(np.bincount(log.items, minlength=log.n_items)))
    typer.echo(f"items with at least one rating: {rated:,}")
    if out is not None:
        try:
            write_parquet(log, out)
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
        typer.echo(f"wrote {out}")
