"""Train every requested model on one data source, check it, and publish a new registry version.

``train_all(job)`` runs a ``TrainJob`` (what ``trainer train`` and ``trainer schedule`` build
from their options) by stage:

1. **Read** the source (``trainer.sources``): its interactions on their declared rating scale.
2. **Run** each model, in registry order (``trainer.runs``): split by the protocol that fits it,
   fit with early stopping, test, refit on all interactions for publishing; the task's baselines
   are fitted on the same split, once per split. A ``--tune`` search, or the latest version's
   tuned values, come first (``_Tuning``).
3. **Gate** (``trainer.gate.quality_gate``): the published model is scored again beside the new
   one on this run's held-out users, less the pairs it trained on (each version publishes them,
   ``trained_pairs.npz``); a model worse by more than the tolerance, or a published one
   declared on another scale, threshold or protocol, stops the run and nothing is published.
4. **Publish** (``trainer.publishing``): the models, the task baselines, the default model per
   task and the carried ones, as one version.

The run holds the registry lock (``ARTIFACTS_DIR/.lock``) from start to publish, so two
trainer processes sharing a folder never train at once: the second one stops at once with
"another training is running". NaN in training raises ``TrainingError``: nothing is published.

Under ``torchrun`` every rank runs this whole pipeline (same data, same splits, each rank
training on its share of the users, see ``trainer.distributed``); rank 0 alone takes the
lock, reports progress and publishes, and tells the other ranks the version's name.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from filelock import Timeout
from tqdm.auto import tqdm

from errors import DataError, UserError
from interactions import Interactions
import registry
from registry import ArtifactError, LoadedModel
from registry import best
from trainer import distributed
from trainer.gate import DEFAULT_GATE_TOLERANCE, GateRefused, quality_gate
from trainer.protocols import PROTOCOL_TASK, RankingSplit, RatingSplit
from trainer.publishing import best_records, publish_version
from trainer.runs import BaselineRun, ModelRun, fit_on_split, model_split, split_baselines, train_model, versus_baseline
from trainer.sources import SourceSpec, is_implicit, load_source


class TrainingBusy(UserError):
    """Another process holds the registry lock."""


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs, so the scheduler can repeat it (``trainer.commands.options`` builds it
    from the command line; ``train_all`` checks it before reading any data)."""

    source: SourceSpec
    models: str | Sequence[str] | None = "all"
    hyper_overrides: dict[str, dict[str, Any]] | None = field(default_factory=dict)
    device: str | None = "auto"
    seed: int = 0
    artifacts_dir: str | Path = Path(".artifacts")
    keep: int = 5
    gate: bool = True
    gate_tolerance: float = DEFAULT_GATE_TOLERANCE
    refit: bool = True
    progress: bool = True
    precision: str = "fp32"
    tune: Any = None  # trainer.tune.TuneOptions: search first; None: reuse the latest version's tuned values

    def run(self) -> TrainReport:
        return train_all(self)


@dataclass
class TrainReport:
    version: str | None
    runs: dict[str, ModelRun]
    carried: list[str]
    seconds: float
    source: dict[str, Any]
    data_note: str  # what was read, on which rating scale (``load_source``)
    baselines: dict[str, dict[str, BaselineRun]] = field(default_factory=dict)  # protocol -> baseline -> its run
    best: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> the record (``registry.best.choose``)

    def summary_lines(self) -> list[str]:
        lines = [self.data_note, *(run.summary() for run in self.runs.values())]
        lines += [b.summary() for by_name in self.baselines.values() for b in by_name.values()]
        lines += [run.tune_note for run in self.runs.values() if run.tune_note]
        for run in self.runs.values():
            if run.baseline is not None and not run.baseline["beats"]:
                b = run.baseline
                lines.append(f"{run.name} does not beat {b['name']} by the margin (valid {run.valid_metric} "
                             f"{run.valid_value:.4f}, needs {b['required']:.4f}): published for inspection, "
                             "never the default")
        for task, record in self.best.items():
            lines.append(f"default {task} model: {record['model']} ({record['reason']})")
        if self.carried:
            lines.append(f"kept from the previous version (not retrained): {', '.join(self.carried)}")
        lines.append(f"published version {self.version} in {self.seconds:.1f}s" if self.version else "nothing published")
        return lines


def resolve_models(requested: Sequence[str] | str | None, inter: Interactions | None = None) -> list[str]:
    """``all``/None: every registered model that fits the data; else the listed names (unknown: error)."""
    from models import REGISTRY

    if requested is None or requested == "all" or list(requested) == ["all"]:
        names, explicit = list(REGISTRY), False
    else:
        names = [n.strip() for n in (requested.split(",") if isinstance(requested, str) else requested) if n.strip()]
        unknown = [n for n in names if n not in REGISTRY]
        if not names:
            raise UserError(f"--models is empty; give 'all' or some of: {', '.join(REGISTRY)}")
        if unknown:
            raise UserError(f"unknown model {', '.join(map(repr, unknown))}; known models: {', '.join(REGISTRY)}")
        names, explicit = list(dict.fromkeys(names)), True
    if inter is None:
        return names
    usable = []
    for name in names:
        cls = REGISTRY[name]
        reason = None
        if cls.task == "rating" and is_implicit(inter):
            reason = f"{name} predicts ratings, and {inter.name} has none (implicit feedback)"
        elif cls.sequential and inter.timestamps is None:
            reason = f"{name} needs interaction order, and {inter.name} has no timestamps"
        if reason and explicit:
            raise UserError(reason)
        if reason:
            tqdm.write(f"skipping {reason}", file=sys.stderr)
            continue
        usable.append(name)
    if not usable:
        raise UserError(f"no model can be trained on {inter.name}")
    return usable


def _previous(root: Path) -> tuple[str | None, dict[str, Any] | None]:
    version = registry.latest_version(root)
    if version is None:
        return None, None
    try:
        return version, registry.read_manifest(root, version)
    except ArtifactError as exc:
        tqdm.write(f"warning: the published version {version} is unreadable ({exc}); the gate cannot compare", file=sys.stderr)
        return None, None


def train_all(job: TrainJob) -> TrainReport:
    """Run ``job``: train its models on its source and publish one version to its ``artifacts_dir`` (see the
    module docstring).

    ``job.tune``: a ``trainer.tune.TuneOptions`` searches each model's hyper-parameters first; None reuses the
    latest version's tuned values (explicit ``hyper_overrides`` win over both)."""
    from models import REGISTRY
    from trainer.hparams import validate
    from trainer.training import resolve_device, resolve_precision

    if job.keep < 1:
        raise UserError(f"--keep must be at least 1, got {job.keep}")
    if not 0 <= job.gate_tolerance < 1:
        raise UserError(f"--gate-tolerance is relative and must be in [0, 1), got {job.gate_tolerance}")
    resolve_models(job.models)  # unknown names fail before any data is read
    overrides = validate(job.hyper_overrides or {}, {name: cls.Config for name, cls in REGISTRY.items()})
    torch_device = resolve_device(job.device)
    resolve_precision(job.precision, torch_device)  # a bad value fails before any data is read
    root = Path(job.artifacts_dir)
    dist_ctx = distributed.context()
    if job.tune is not None and dist_ctx.active:
        raise UserError("--tune searches in one process: run it without torchrun, then train under torchrun (it reuses the values)")
    progress = job.progress and dist_ctx.is_main
    lock = registry.registry_lock(root)
    busy = None
    if dist_ctx.is_main:  # the other ranks of a torchrun job share rank 0's lock
        try:
            lock.acquire(blocking=False)
        except Timeout:
            busy = f"another training is running (lock {root / registry.LOCK_FILE} is held); skipped"
    busy = distributed.broadcast_from_main(busy)
    if busy:
        raise TrainingBusy(busy)
    try:
        started = time.perf_counter()
        data_read_at = time.time()  # before the read: a write after it is not in the lists (trainer.top_lists)
        inter, data_note = load_source(job.source, progress=progress)
        if progress:
            tqdm.write(data_note, file=sys.stderr)
        if len(inter) == 0:
            raise DataError(f"{inter.name} has no interactions to train on")
        names = resolve_models(job.models, inter)
        previous_version, previous_manifest = _previous(root)
        previous_loaded: dict[str, LoadedModel] | None = None

        runs: dict[str, ModelRun] = {}
        split_cache: dict[str, RatingSplit | RankingSplit] = {}
        baselines: dict[str, dict[str, BaselineRun]] = {}
        tuning = _Tuning(job.tune, names, overrides, previous_version, previous_manifest, seed=job.seed,
                         device=torch_device, precision=job.precision, progress=progress, dataset=inter.name)
        for name in tqdm(names, desc="models", unit="model", disable=not progress):
            hyper, prefit, tuned = tuning.values(name, inter, split_cache)
            run = train_model(name, inter, hyper=hyper, seed=job.seed, device=torch_device, progress=progress,
                              split_cache=split_cache, refit=job.refit, precision=job.precision, prefit=prefit)
            run.tuned, run.tuning_files, run.tune_note = tuned
            if run.protocol not in baselines:  # once per split, on the split the models trained on
                baselines[run.protocol] = split_baselines(run.protocol, split_cache[run.protocol])
                if progress:
                    for baseline in baselines[run.protocol].values():
                        tqdm.write(baseline.summary(), file=sys.stderr)
            task_baseline = best.TASK_BASELINE[PROTOCOL_TASK[run.protocol]]
            run.baseline = versus_baseline(run, baselines[run.protocol][task_baseline])
            if job.gate and previous_manifest and name in previous_manifest["models"]:
                if previous_loaded is None:
                    previous_loaded = registry.load_version(root, previous_version, map_location=str(torch_device)).models
                run.gate = quality_gate(run, inter, split_cache[run.protocol], previous_loaded[name], previous_version,
                                        job.gate_tolerance, previous_manifest)
                if not run.gate.passed:
                    raise GateRefused(f"{run.gate.message}; version {previous_version} stays published (--no-gate to force)")
                if dist_ctx.is_main:
                    tqdm.write(f"gate: {run.gate.message}", file=sys.stderr)
            runs[name] = run
            if progress:  # each model's line as it finishes; the command prints them all at the end too
                tqdm.write(run.summary(), file=sys.stderr)

        records = best_records(runs, baselines)
        refreshed = {best.TASK_BASELINE[task] for task in records}  # baselines of the tasks trained: solved again
        carried = [] if previous_manifest is None else [n for n in previous_manifest["models"]
                                                        if n not in runs and n not in refreshed]
        version = None
        if dist_ctx.is_main:
            version = publish_version(root, inter, job.source, runs, job.seed, overrides, job.keep, previous_version,
                                      previous_manifest, carried, baselines, records, data_read_at=data_read_at,
                                      device=torch_device)
        version = distributed.broadcast_from_main(version)
        return TrainReport(version, runs, carried, time.perf_counter() - started, job.source.describe(), data_note,
                           baselines, records)
    finally:
        lock.release()


class _Tuning:
    """Each model's values for this run: searched (``trainer.tune``) when ``options`` is given, else the
    latest version's tuned ones; the explicit overrides win either way. The budget is shared as the
    module docstring of ``trainer.tune`` says: what is left, divided by the models left to tune."""

    def __init__(self, options: Any, names: list[str], overrides: dict[str, dict[str, Any]], previous_version: str | None,
                 previous_manifest: dict[str, Any] | None, **fit_args: Any) -> None:
        from models import REGISTRY

        self.options, self.overrides = options, overrides
        self.previous_version, self.previous_manifest = previous_version, previous_manifest
        self.dataset = fit_args.pop("dataset")
        self.progress = fit_args.pop("progress")
        self.fit_args = fit_args
        self.tunable = [n for n in names if set(REGISTRY[n].search_space) - set(overrides.get(n, {}))]
        self.searched = 0.0  # seconds spent searching: the budget counts the studies, not the usual fits between them

    def _say(self, line: str) -> None:
        if self.progress:
            tqdm.write(line, file=sys.stderr)

    def values(self, name: str, inter: Interactions, split_cache: dict[str, RatingSplit | RankingSplit]
               ) -> tuple[dict[str, Any], Any, tuple[dict[str, Any] | None, dict[str, bytes], str | None]]:
        """(hyper, the tuner's best fit on the split or None, (tuned record, study files, summary line))."""
        from models.sizes import DataShape
        from trainer.tune import _fmt, reused_values, tune_model

        explicit = dict(self.overrides.get(name, {}))
        if self.options is None:
            values, record = reused_values(name, self.previous_version, self.previous_manifest, explicit)
            if not values:
                return explicit, None, (None, {}, None)
            try:  # a key this code's Config no longer has, or a value it refuses: the defaults instead
                from models import REGISTRY
                from trainer.hparams import validate

                validate({name: {**values, **explicit}}, {name: REGISTRY[name].Config})
            except UserError as exc:
                note = f"{name}: the tuned values of version {record['reused_from']} do not fit this code ({exc}); not reused"
                self._say(note)
                return explicit, None, (None, {}, note)
            chosen = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            note = f"{name} reuses the tuned values {chosen} of version {record['reused_from']}"
            if record["overridden"]:
                note += f" (--set/--config win for {', '.join(record['overridden'])})"
            self._say(note)
            return {**values, **explicit}, None, (record, {}, note)
        if name not in self.tunable:
            return explicit, None, (None, {}, None)
        left = self.tunable[self.tunable.index(name):]
        share = max(0.0, self.options.budget_s - self.searched) / len(left)
        if share < 1.0:
            note = f"tune {name}: the budget is spent; its defaults and explicit values are used"
            self._say(note)
            return explicit, None, (None, {}, note)
        split = model_split(name, inter, self.fit_args["seed"], split_cache)
        result = tune_model(
            name, lambda hyper, on_epoch: fit_on_split(name, split, hyper, progress=False, on_epoch=on_epoch,
                                                       **self.fit_args),
            budget_s=share, seed=self.fit_args["seed"], fixed=explicit, trials=self.options.trials, log=self._say,
            shape=DataShape.of(split.train))
        self.searched += result.seconds
        files = result.files(f"{name} on {self.dataset} (seed {self.fit_args['seed']})")
        if not result.values:
            return explicit, None, (result.record(), files, result.summary(name))
        return {**result.values, **explicit}, result.best_fit, (result.record(), files, result.summary(name))
