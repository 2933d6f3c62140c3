"""The options of `python -m trainer train` and `python -m trainer schedule`, declared once.

``TrainOptions`` holds them as typed on the command line, each field's typer option in its
metadata. ``with_train_options`` puts them in a command's signature in place of its one
``options: TrainOptions`` argument (``interactions.file_options.replacing``, as for the file's
columns), and ``TrainOptions.job()`` checks every one and builds the ``TrainJob``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from errors import UserError
from interactions.file_options import replacing
from interactions.files import FileColumns
from rating_scale import RatingScale
from trainer.gate import DEFAULT_GATE_TOLERANCE

if TYPE_CHECKING:
    from trainer.pipeline import TrainJob


def _option(default: Any, name: str, help: str) -> Any:
    return field(default=default, metadata={"option": typer.Option(name, help=help)})


@dataclass(frozen=True)
class TrainOptions:
    """The training options as given; ``columns`` and ``rating_scale`` are ``interactions.file_options``'s."""

    dataset: Optional[str] = _option(None, "--dataset", "A MovieLens dataset by name, e.g. ml-100k.")
    source: Optional[Path] = _option(None, "--source", "Local folder or .zip of the --dataset (offline).")
    file: Optional[Path] = _option(None, "--file", "Your own CSV/TSV/Parquet: user, item[, rating[, timestamp]].")
    columns: FileColumns = FileColumns()
    rating_scale: Optional[RatingScale] = None
    from_db: bool = _option(False, "--from-db", "Train on the interactions stored by the service.")
    database_url: Optional[str] = _option(
        None, "--database-url", "SQLAlchemy URL for --from-db (default: the DATABASE_URL setting).")
    models: str = _option("all", "--models", "'all' or a comma-separated list, e.g. ease,multvae.")
    set_: Optional[list[str]] = _option(None, "--set", "Override a hyper-parameter: model.key=value (repeatable).")
    config: Optional[Path] = _option(None, "--config", "TOML/YAML file: one table of overrides per model.")
    device: str = _option("auto", "--device", "auto (GPU when present), cpu or cuda.")
    precision: str = _option(
        "fp32", "--precision", "fp32, or bf16: every gradient-trained model's dense layers in bfloat16 (mixed "
        "precision; fast on GPUs and on CPUs with AVX512-BF16 or AMX, slow elsewhere).")
    seed: int = _option(0, "--seed", "Seed of the splits and of training.")
    artifacts_dir: Optional[Path] = _option(
        None, "--artifacts-dir", "Model registry (default: the ARTIFACTS_DIR setting).")
    keep: Optional[int] = _option(None, "--keep", "Versions kept (default: the KEEP_VERSIONS setting).")
    no_gate: bool = _option(False, "--no-gate", "Publish even if a model is worse than the published one.")
    gate_tolerance: float = _option(
        DEFAULT_GATE_TOLERANCE, "--gate-tolerance", "Relative worsening of the validation metric the gate accepts.")
    refit: bool = _option(
        True, "--refit/--no-refit", "Publish a refit on all data (default) or the split run's best weights.")
    tune: bool = _option(
        False, "--tune", "Search each model's key hyper-parameters on the validation split first (Optuna: TPE, "
        "median pruning); the chosen values are recorded in the version and reused by later runs until the next "
        "--tune.")
    tune_budget: Optional[str] = _option(
        None, "--tune-budget", "Time for the whole search, shared by the models: 300s, 5m, 1h (default: the config "
        "file's [tune] budget, else 10m); implies --tune.")
    progress: bool = _option(True, "--progress/--no-progress", "Show tqdm progress bars.")

    def job(self) -> TrainJob:
        """Check every option (sources, model names, hyper-parameters) before anything trains."""
        from models import REGISTRY
        from trainer.hparams import read_tune_section, resolve
        from trainer.pipeline import TrainJob, resolve_models  # here: the command line starts without torch
        from trainer.settings import get_settings
        from trainer.sources import SourceSpec
        from trainer.training import check_precision
        from trainer.tune import options_from

        settings = get_settings()
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        check_precision(self.precision)
        if self.database_url is not None and not self.from_db:
            raise UserError("--database-url goes with --from-db")
        source = SourceSpec(
            dataset=self.dataset,
            source=self.source,
            file=self.file,
            columns=self.columns,
            rating_scale=self.rating_scale,
            database_url=(self.database_url or settings.DATABASE_URL) if self.from_db else None,
        )
        names = resolve_models(self.models)
        overrides = resolve(self.config, self.set_ or [], {name: cls.Config for name, cls in REGISTRY.items()})
        tune = options_from(self.tune, self.tune_budget, read_tune_section(self.config) if self.config else None)
        return TrainJob(
            source=source,
            models="all" if self.models.strip() == "all" else tuple(names),
            hyper_overrides=overrides,
            device=self.device,
            seed=self.seed,
            artifacts_dir=self.artifacts_dir or settings.ARTIFACTS_DIR,
            keep=settings.KEEP_VERSIONS if self.keep is None else self.keep,
            gate=not self.no_gate,
            gate_tolerance=self.gate_tolerance,
            refit=self.refit,
            progress=self.progress,
            precision=self.precision,
            tune=tune,
        )


def with_train_options(**fixed: Any):
    """A decorator: the command's ``options`` argument becomes the ``TrainOptions`` on its command line, but for
    the ``fixed`` ones (given those values). ``columns`` and ``rating_scale`` stay one argument each, for
    ``with_column_options`` and ``with_scale_options`` to expand."""
    unknown = set(fixed) - {f.name for f in dataclasses.fields(TrainOptions)}
    if unknown:
        raise TypeError(f"not training options: {sorted(unknown)}")
    hints = typing.get_type_hints(TrainOptions)
    taken = [f for f in dataclasses.fields(TrainOptions) if f.name not in fixed]
    options = {f.name: Annotated[hints[f.name], f.metadata["option"]] if "option" in f.metadata else hints[f.name]
               for f in taken}
    return replacing("options", options, lambda **values: TrainOptions(**values, **fixed),
                     defaults={f.name: f.default for f in taken})
