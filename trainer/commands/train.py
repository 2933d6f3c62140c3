"""`python -m trainer train`: train models on a dataset, a file or the service's database, and publish.

The options are shared with `python -m trainer schedule` (``job_from_options`` builds the job);
how to read a ``--file`` is ``trainer.file_options``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rating_scale import RatingScale
from trainer.cli import app
from trainer.errors import UserError
from trainer.file_options import with_column_options, with_scale_options
from trainer.loader import FileColumns

DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="A MovieLens dataset by name, e.g. ml-100k.")]
SourceOpt = Annotated[Optional[Path], typer.Option("--source", help="Local folder or .zip of the --dataset (offline).")]
FileOpt = Annotated[Optional[Path], typer.Option("--file", help="Your own CSV/TSV/Parquet: user, item[, rating[, timestamp]].")]
FromDbOpt = Annotated[bool, typer.Option("--from-db", help="Train on the interactions stored by the service.")]
DatabaseUrlOpt = Annotated[
    Optional[str], typer.Option("--database-url", help="SQLAlchemy URL for --from-db (default: the DATABASE_URL setting).")
]
ModelsOpt = Annotated[str, typer.Option("--models", help="'all' or a comma-separated list, e.g. ease,multvae.")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a hyper-parameter: model.key=value (repeatable).")
]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML/YAML file: one table of overrides per model.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (GPU when present), cpu or cuda.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="fp32, or bf16: Mult-VAE's, Mult-DAE's and CDAE's dense layers in bfloat16 (mixed precision; "
    "fast on GPUs and on CPUs with AVX512-BF16 or AMX, slow elsewhere).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the splits and of training.")]
ArtifactsOpt = Annotated[
    Optional[Path], typer.Option("--artifacts-dir", help="Model registry (default: the ARTIFACTS_DIR setting).")
]
KeepOpt = Annotated[Optional[int], typer.Option("--keep", help="Versions kept (default: the KEEP_VERSIONS setting).")]
NoGateOpt = Annotated[bool, typer.Option("--no-gate", help="Publish even if a model is worse than the published one.")]
ToleranceOpt = Annotated[
    float, typer.Option("--gate-tolerance", help="Relative worsening of the validation metric the gate accepts.")
]
RefitOpt = Annotated[
    bool,
    typer.Option("--refit/--no-refit", help="Publish a refit on all data (default) or the split run's best weights."),
]
TuneOpt = Annotated[bool, typer.Option(
    "--tune", help="Search each model's key hyper-parameters on the validation split first (Optuna: TPE, median "
    "pruning); the chosen values are recorded in the version and reused by later runs until the next --tune.")]
TuneBudgetOpt = Annotated[Optional[str], typer.Option(
    "--tune-budget", help="Time for the whole search, shared by the models: 300s, 5m, 1h (default: the config "
    "file's [tune] budget, else 10m); implies --tune.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show tqdm progress bars.")]


def job_from_options(
    *,
    dataset: str | None,
    source: Path | None,
    file: Path | None,
    columns: FileColumns = FileColumns(),
    rating_scale: RatingScale | None = None,
    from_db: bool,
    database_url: str | None,
    models: str,
    set_: list[str] | None,
    config: Path | None,
    device: str,
    seed: int,
    artifacts_dir: Path | None,
    precision: str = "fp32",
    keep: int | None,
    no_gate: bool,
    gate_tolerance: float,
    refit: bool,
    progress: bool,
    tune: bool = False,
    tune_budget: str | None = None,
):
    """Check every option (sources, model names, hyper-parameters) before anything trains."""
    from models import REGISTRY
    from trainer.hparams import read_tune_section, resolve
    from trainer.tune import options_from
    from trainer.pipeline import SourceSpec, TrainJob, resolve_models
    from trainer.settings import get_settings
    from trainer.training import check_precision

    settings = get_settings()
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {device!r}")
    check_precision(precision)
    if database_url is not None and not from_db:
        raise UserError("--database-url goes with --from-db")
    source_spec = SourceSpec(
        dataset=dataset,
        source=source,
        file=file,
        columns=columns,
        rating_scale=rating_scale,
        database_url=(database_url or settings.DATABASE_URL) if from_db else None,
    )
    names = resolve_models(models)
    overrides = resolve(config, set_ or [], {name: cls.Config for name, cls in REGISTRY.items()})
    tune_options = options_from(tune, tune_budget, read_tune_section(config) if config else None)
    return TrainJob(
        source=source_spec,
        models="all" if models.strip() == "all" else tuple(names),
        hyper_overrides=overrides,
        device=device,
        seed=seed,
        artifacts_dir=artifacts_dir or settings.ARTIFACTS_DIR,
        keep=settings.KEEP_VERSIONS if keep is None else keep,
        gate=not no_gate,
        gate_tolerance=gate_tolerance,
        refit=refit,
        progress=progress,
        precision=precision,
        tune=tune_options,
    )


@app.command("train")
@with_scale_options
@with_column_options
def train(
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
    tune: TuneOpt = False,
    tune_budget: TuneBudgetOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train models (all by default), evaluate them, and publish a new version atomically."""
    job = job_from_options(
        dataset=dataset, source=source, file=file, columns=columns, rating_scale=rating_scale, from_db=from_db,
        database_url=database_url, models=models, set_=set_, config=config, device=device, seed=seed,
        artifacts_dir=artifacts_dir, keep=keep, no_gate=no_gate, gate_tolerance=gate_tolerance, refit=refit,
        progress=progress, precision=precision, tune=tune, tune_budget=tune_budget,
    )
    from trainer.distributed import context, shutdown

    try:
        report = job.run()
        if context().is_main:  # under torchrun, one summary, not one per rank
            for line in report.summary_lines():
                typer.echo(line)
    finally:
        # Under torchrun, the process group is torn down here, not by the interpreter's exit:
        # left to the exit, a rank once aborted after publishing ("terminate called without an
        # active exception", exit -6) and failed the job.
        shutdown()
