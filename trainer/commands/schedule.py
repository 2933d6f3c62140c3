"""`python -m trainer schedule`: retrain on an interval or a cron expression (same options as `train`)."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from rating_scale import RatingScale
from trainer.cli import app
from trainer.commands.train import (
    ArtifactsOpt,
    ConfigOpt,
    DatabaseUrlOpt,
    DatasetOpt,
    DeviceOpt,
    FileOpt,
    FromDbOpt,
    KeepOpt,
    ModelsOpt,
    NoGateOpt,
    PrecisionOpt,
    RefitOpt,
    SeedOpt,
    SetOpt,
    SourceOpt,
    ToleranceOpt,
    job_from_options,
)
from trainer.file_options import with_column_options, with_scale_options
from trainer.loader import FileColumns


@app.command("schedule")
@with_scale_options
@with_column_options
def schedule(
    every: Annotated[Optional[str], typer.Option("--every", help="Interval: 90s, 30m, 6h, 1d.")] = None,
    cron: Annotated[Optional[str], typer.Option("--cron", help='Cron expression, e.g. "0 3 * * *".')] = None,
    run_now: Annotated[bool, typer.Option("--run-now", help="Also train once right away.")] = False,
    max_runs: Annotated[Optional[int], typer.Option("--max-runs", help="Stop after this many runs.")] = None,
    dataset: DatasetOpt = None,
    source: SourceOpt = None,
    file: FileOpt = None,
    columns: FileColumns = FileColumns(),
    rating_scale: RatingScale | None = None,
    from_db: FromDbOpt = False,
    database_url: DatabaseUrlOpt = None,
    models: ModelsOpt = "all",
    set_: SetOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    seed: SeedOpt = 0,
    artifacts_dir: ArtifactsOpt = None,
    keep: KeepOpt = None,
    no_gate: NoGateOpt = False,
    gate_tolerance: ToleranceOpt = 0.02,
    refit: RefitOpt = True,
) -> None:
    """Retrain periodically; each run is logged, a failed run does not stop the schedule."""
    from trainer.schedule import make_trigger, run_schedule

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # our own lines say what each run did
    trigger = make_trigger(every, cron)
    job = job_from_options(
        dataset=dataset, source=source, file=file, columns=columns, rating_scale=rating_scale, from_db=from_db,
        database_url=database_url, models=models,
        set_=set_, config=config, device=device, seed=seed, artifacts_dir=artifacts_dir, keep=keep,
        no_gate=no_gate, gate_tolerance=gate_tolerance, refit=refit, progress=False,  # no bars in a log
        precision=precision,
    )
    run_schedule(job, trigger, max_runs=max_runs, run_now=run_now)
