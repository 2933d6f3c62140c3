"""`python -m trainer`: the offline job's command line (typer).

Each command group lives in ``trainer/commands/``; this module builds the app from them
(they never import it); ``errors.run_cli`` turns a ``UserError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import typer

from trainer.commands import baselines, data, schedule, train

app = typer.Typer(
    name="trainer",
    help="Get datasets, evaluate baselines, train and publish autoencoder recommenders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("baselines")(baselines.baselines)
app.command("train")(train.train)
app.command("schedule")(schedule.schedule)
app.add_typer(data.data_app, name="data")


def main(argv: list[str] | None = None) -> int:
    from errors import UserError, run_cli
    from models.base import ModelInputError

    return run_cli(app, argv, "python -m trainer", {(UserError, ModelInputError): str})
