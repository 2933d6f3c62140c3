"""`python -m trainer schedule`: retrain on an interval or a cron expression (same options as `train`)."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from interactions.file_options import with_column_options, with_scale_options
from trainer.commands.options import TrainOptions, with_train_options


@with_scale_options
@with_column_options
@with_train_options(tune=False, tune_budget=None, progress=False)  # no search on a timer, no bars in a log
def schedule(
    every: Annotated[Optional[str], typer.Option("--every", help="Interval: 90s, 30m, 6h, 1d.")] = None,
    cron: Annotated[Optional[str], typer.Option("--cron", help='Cron expression, e.g. "0 3 * * *".')] = None,
    run_now: Annotated[bool, typer.Option("--run-now", help="Also train once right away.")] = False,
    max_runs: Annotated[Optional[int], typer.Option("--max-runs", help="Stop after this many runs.")] = None,
    *,
    options: TrainOptions,
) -> None:
    """Retrain periodically; each run is logged, a failed run does not stop the schedule."""
    from trainer.schedule import make_trigger, run_schedule

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # our own lines say what each run did
    trigger = make_trigger(every, cron)
    run_schedule(options.job(), trigger, max_runs=max_runs, run_now=run_now)
