"""`python -m trainer`: the offline job's command line (typer).

Each command group lives in ``trainer/commands/``; this module builds the app from them
(they never import it) and turns a ``UserError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

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
    from errors import UserError, click_usage_error
    from models.base import ModelInputError

    try:
        app(args=argv, standalone_mode=False, prog_name="python -m trainer")
    except (UserError, ModelInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:
        usage_error = click_usage_error(exc)
        if usage_error is None:
            raise
        usage_error.show()  # click's own one-line usage message
        return usage_error.exit_code
    return 0
