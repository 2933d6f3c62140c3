"""Hyper-parameter search per model and dataset: ``trainer train --tune [--tune-budget 10m]``.

Each model declares its key hyper-parameters as plain data beside its Config
(``Recommender.search_space``); this module turns them into Optuna suggestions and runs one
study per model on the model's own protocol split, scored by the validation metric the
training loop already early-stops on (NDCG@100 for rankers, RMSE for rating models):

* **Sampler**: TPE, seeded by ``--seed`` (the same run searches the same points).
* **Pruning**: median pruning on the learning curve. ``trainer.training.fit`` calls back after
  every epoch's validation; the trial reports the value and stops when it falls below the
  median of earlier trials at the same epoch (after ``PRUNER_STARTUP_TRIALS`` full trials and
  ``PRUNER_WARMUP_EPOCHS`` epochs). Closed-form models (EASE, EDLAE) are one solve a trial.
* **Budget**: the total (``--tune-budget``, default ``DEFAULT_BUDGET``) is search time, shared by
  the models to tune in turn: each gets what is left of it divided by the models left, so time a
  fast model does not use goes to the next. The usual fits (test, refit) come on top. A study starts no trial past its share (Optuna's ``timeout``)
  and a running trial stops at the first epoch past it (recorded as pruned, "budget"), so the
  search overruns by at most one epoch (one solve for closed-form models).
* **Trials**: the first trial is the Config's defaults (the search never reports worse than them);
  a study runs at most ``[tune] trials``, else ``TRIALS_PER_PARAMETER`` per searched parameter.
* **Explicit values win**: a key given by ``--set``/``--config`` is fixed in every trial, not searched.

The best completed trial's values are recorded in the version (``manifest.models[name].tuned``
and ``metrics.json``), its split model is the run's split model (no second fit of the same
values), and the pipeline goes on as usual (test, gate, refit). The study is published in the
model's folder: every trial as ``tuning.json`` (state, values, objective, learning curve) and
``tuning.png`` (the objective per trial and the learning curves). A later ``trainer train`` or
scheduled run without ``--tune`` reuses the latest version's tuned values (``reused_values``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from errors import TrainingError, UserError

if TYPE_CHECKING:
    from models.sizes import DataShape
    from trainer.training import FitResult

DEFAULT_BUDGET = "10m"
PRUNER_STARTUP_TRIALS = 3  # full trials before any is pruned: the median needs a few curves
PRUNER_WARMUP_EPOCHS = 5  # epochs every trial runs: early epochs of good settings can look poor
TRIALS_PER_PARAMETER = 15  # default cap on a study's trials: 15 for EASE's lambda, 45 for Mult-VAE's three
TUNING_JSON = "tuning.json"
TUNING_PNG = "tuning.png"
TUNE_KEY = "tune"  # the config file's table: budget = "10m", trials = 50, enabled = true
_UNITS = {"s": 1, "m": 60, "h": 3600}
KINDS = ("log", "float", "int", "choice")


@dataclass(frozen=True)
class TuneOptions:
    """``--tune``: search; ``budget_s`` in total for the run's models; ``trials``: at most this many per model."""

    budget_s: float
    trials: int | None = None


def parse_budget(text: str | float | int, what: str = "--tune-budget") -> float:
    """"5m", "300s", "1h", "1.5h" or a number of seconds, as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"{what} {text!r}: expected a positive duration such as 300s, 5m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def options_from(tune: bool, budget: str | None, file_section: Mapping[str, Any] | None) -> TuneOptions | None:
    """``--tune``/``--tune-budget`` over the config file's ``[tune]`` table (its presence turns tuning on,
    ``enabled = false`` off); None: no search this run. ``--tune-budget`` alone implies ``--tune``."""
    section = dict(file_section or {})
    unknown = sorted(set(section) - {"enabled", "budget", "trials"})
    if unknown:
        raise UserError(f"unknown key(s) in the config file's [{TUNE_KEY}] table: {', '.join(unknown)}; "
                        "known: enabled, budget, trials")
    enabled = section.get("enabled", file_section is not None)
    if not isinstance(enabled, bool):
        raise UserError(f"[{TUNE_KEY}] enabled must be true or false, got {enabled!r}")
    if not (tune or budget is not None or enabled):
        return None
    seconds = parse_budget(budget) if budget is not None else parse_budget(
        section.get("budget", DEFAULT_BUDGET), f"[{TUNE_KEY}] budget")
    trials = section.get("trials")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise UserError(f"[{TUNE_KEY}] trials must be a positive integer, got {trials!r}")
    return TuneOptions(budget_s=seconds, trials=trials)


def check_space(name: str, config_cls: type, space: Mapping[str, tuple]) -> None:
    """Every key a field of the Config, every entry a known kind with sane bounds, both ends buildable."""
    from models.base import build_config

    fields = {f.name for f in dataclasses.fields(config_cls)}
    for key, spec in space.items():
        if key not in fields:
            raise ValueError(f"{name}'s search space names {key!r}, not a field of {config_cls.__name__}")
        kind = spec[0]
        if kind not in KINDS:
            raise ValueError(f"{name}.{key}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        ends = list(spec[1]) if kind == "choice" else [spec[1], spec[2]]
        if kind != "choice" and not ends[0] < ends[1] or kind == "log" and ends[0] <= 0:
            raise ValueError(f"{name}.{key}: bad range {spec!r}")
        for value in ends:
            build_config(config_cls, {key: value})


def suggest(trial: Any, space: Mapping[str, tuple]) -> dict[str, Any]:
    """The trial's values for ``space`` (Optuna's ``suggest_*``); a choice is suggested by its index
    in the list, so tuples (layer widths) work, and recorded as the value itself."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec[0]
        if kind == "log":
            values[key] = trial.suggest_float(key, float(spec[1]), float(spec[2]), log=True)
        elif kind == "float":
            values[key] = trial.suggest_float(key, float(spec[1]), float(spec[2]))
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(spec[1]), int(spec[2]))
        else:
            choices = list(spec[1])
            values[key] = choices[trial.suggest_categorical(key, list(range(len(choices))))]
    return values


def default_params(config_cls: type, space: Mapping[str, tuple], shape: DataShape | None = None) -> dict[str, Any]:
    """The Config's defaults as Optuna parameters of ``space`` (a choice by its index; a default outside
    its range or choices is left to the sampler); with ``shape``, the size rules' values for that data
    (``models.base.for_data``), the values a plain fit on it would use."""
    from models.sizes import for_data

    config = config_cls() if shape is None else for_data(config_cls(), shape)
    defaults = {f.name: getattr(config, f.name) for f in dataclasses.fields(config_cls)}
    params: dict[str, Any] = {}
    for key, spec in space.items():
        value = defaults.get(key)
        if spec[0] == "choice":
            choices = [tuple(c) if isinstance(c, list) else c for c in spec[1]]
            if value in choices:
                params[key] = choices.index(value)
        elif isinstance(value, (int, float)) and spec[1] <= value <= spec[2]:
            params[key] = value
    return params


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass
class TuneResult:
    """What a study found; ``record()`` goes into the version."""

    values: dict[str, Any]  # the best completed trial's searched values ({} when none completed)
    best_value: float | None
    metric: str
    trials: list[dict[str, Any]]
    budget_s: float
    seconds: float
    best_fit: FitResult | None = None  # the best trial's fit on the split: the run uses it instead of fitting again
    fixed: dict[str, Any] = field(default_factory=dict)  # explicit values every trial used

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for trial in self.trials:
            out[trial["state"]] = out.get(trial["state"], 0) + 1
        return out

    def record(self) -> dict[str, Any]:
        return {"values": {k: _plain(v) for k, v in self.values.items()}, "metric": self.metric,
                "best_value": self.best_value, "trials": len(self.trials), "states": self.counts(),
                "budget_s": round(self.budget_s, 1), "seconds": round(self.seconds, 1),
                "fixed": {k: _plain(v) for k, v in self.fixed.items()}}

    def summary(self, name: str) -> str:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.counts().items()))
        if not self.values:
            return f"tune {name}: no trial completed in {self.seconds:.0f}s ({states}); defaults kept"
        chosen = ", ".join(f"{k}={_fmt(v)}" for k, v in self.values.items())
        return (f"tune {name}: {len(self.trials)} trials ({states}) in {self.seconds:.0f}s of {self.budget_s:.0f}s; "
                f"best valid {self.metric} {self.best_value:.4f} with {chosen}")

    def files(self, title: str) -> dict[str, bytes]:
        study = {"metric": self.metric, "higher_is_better": self.metric != "rmse", **self.record(),
                 "trial_list": self.trials}
        return {TUNING_JSON: json.dumps(study, indent=1, default=_plain).encode(), TUNING_PNG: search_png(title, self)}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(_plain(value))


class _BudgetSpent(Exception):
    """Raised from the epoch callback when the model's share of the budget is spent."""


def tune_model(
    name: str,
    fit_trial: Callable[[dict[str, Any], Callable[[int, float], None]], FitResult],
    *,
    budget_s: float,
    seed: int,
    fixed: Mapping[str, Any] | None = None,
    trials: int | None = None,
    space: Mapping[str, tuple] | None = None,
    log: Callable[[str], None] | None = None,
    shape: DataShape | None = None,
) -> TuneResult:
    """One Optuna study for model ``name``: ``fit_trial(hyper, on_epoch)`` fits on the split with validation
    (``trainer.runs.fit_on_split``) and returns its ``FitResult``, whose log holds the objective. ``shape``:
    the split's training matrix, whose size rules give the first trial's values (``default_params``)."""
    import optuna

    from trainer.training import model_class

    cls = model_class(name)
    fixed = dict(fixed or {})
    space = {k: v for k, v in (cls.search_space if space is None else space).items() if k not in fixed}
    higher = cls.task != "rating"
    metric = "rmse" if cls.task == "rating" else "ndcg@100"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if higher else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                           n_warmup_steps=PRUNER_WARMUP_EPOCHS + 1),  # steps are epochs, from 1
        study_name=f"{name}-seed{seed}",
    )
    started = time.perf_counter()
    deadline = started + budget_s
    best: dict[str, Any] = {"fit": None, "value": None}
    records: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        curve: list[float] = []
        record = {"number": trial.number, "values": {k: _plain(v) for k, v in values.items()}, "curve": curve}
        records.append(record)
        t0 = time.perf_counter()

        def on_epoch(epoch: int, value: float) -> None:
            curve.append(float(value))
            trial.report(float(value), epoch)
            if time.perf_counter() > deadline:
                raise _BudgetSpent
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {metric} {value:.4f} below the median")

        try:
            fitted = fit_trial({**values, **fixed}, on_epoch)
        except _BudgetSpent:
            record.update(state="PRUNED", reason="budget", seconds=round(time.perf_counter() - t0, 3))
            study.stop()
            raise optuna.TrialPruned("the budget is spent") from None
        except optuna.TrialPruned:
            record.update(state="PRUNED", reason="median", seconds=round(time.perf_counter() - t0, 3))
            raise
        except (TrainingError, UserError) as exc:  # a diverging or refused setting: recorded, the search goes on
            record.update(state="FAIL", reason=str(exc), seconds=round(time.perf_counter() - t0, 3))
            raise
        value = float(fitted.log["valid_value"])
        if not curve:  # closed form: one point
            curve.append(value)
        record.update(state="COMPLETE", value=value, seconds=round(time.perf_counter() - t0, 3),
                      best_epoch=fitted.log.get("best_epoch"))
        if math.isfinite(value) and (best["value"] is None or (value > best["value"] if higher else value < best["value"])):
            best.update(fit=fitted, value=value, values=values)
        return value

    def stop_when_spent(study: optuna.Study, _trial: Any) -> None:
        if time.perf_counter() > deadline:
            study.stop()

    if not space:  # every key fixed by the user (or nothing declared): nothing to search
        return TuneResult({}, None, metric, [], budget_s, 0.0, fixed=fixed)
    study.enqueue_trial(default_params(cls.Config, space, shape), skip_if_exists=True)
    trials = trials or TRIALS_PER_PARAMETER * len(space)
    study.optimize(objective, n_trials=trials, timeout=budget_s, callbacks=[stop_when_spent],
                   catch=(TrainingError, UserError), gc_after_trial=False)
    result = TuneResult(dict(best.get("values") or {}), best["value"], metric, records, budget_s,
                        time.perf_counter() - started, best_fit=best["fit"], fixed=fixed)
    if log:
        log(result.summary(name))
    return result


def reused_values(name: str, previous_version: str | None, previous_manifest: Mapping[str, Any] | None,
                  explicit: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The latest version's tuned values of ``name``, less the keys given explicitly this run, and the
    record to carry into the new version (``reused_from``: the version that searched them); ({}, None)
    when there are none."""
    entry = ((previous_manifest or {}).get("models") or {}).get(name) or {}
    tuned = entry.get("tuned")
    if not isinstance(tuned, dict) or not tuned.get("values"):
        return {}, None
    values = {k: v for k, v in tuned["values"].items() if k not in explicit}
    searched_in = tuned.get("reused_from") or entry.get("carried_from") or previous_version
    record = {**tuned, "reused_from": searched_in}
    record["overridden"] = sorted(k for k in tuned["values"] if k in explicit)
    return values, record


def search_png(title: str, result: TuneResult) -> bytes:
    """Left: the objective per trial (completed dots, pruned crosses at their last value, the best so far as
    a line). Right: every trial's learning curve (validation metric per epoch), the best one highlighted."""
    from matplotlib.ticker import MaxNLocator

    from trainer.plots import plt, png_bytes  # the Agg backend chosen there

    fig, (ax, curves_ax) = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=100)
    try:
        higher = result.metric != "rmse"
        done = [(t["number"], t["value"]) for t in result.trials if t.get("state") == "COMPLETE"]
        pruned = [(t["number"], t["curve"][-1]) for t in result.trials if t.get("state") == "PRUNED" and t["curve"]]
        if done:
            ax.plot(*zip(*done), "o", color="tab:blue", label="completed")
            running, line = None, []
            for number, value in done:
                running = value if running is None else (max(running, value) if higher else min(running, value))
                line.append((number, running))
            ax.step(*zip(*line), where="post", color="tab:orange", label="best so far")
        if pruned:
            ax.plot(*zip(*pruned), "x", color="grey", label="pruned (last value)")
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"validation {result.metric}")
        ax.set_title(f"search: {len(result.trials)} trials")
        if done or pruned:
            ax.legend(fontsize=8)
        best_number = next((n for n, v in done if v == result.best_value), None)
        for trial in result.trials:
            if len(trial["curve"]) > 1:
                is_best = trial["number"] == best_number
                curves_ax.plot(range(1, len(trial["curve"]) + 1), trial["curve"],
                               color="tab:orange" if is_best else "tab:blue" if trial["state"] == "COMPLETE" else "grey",
                               alpha=1.0 if is_best else 0.4, linewidth=2 if is_best else 1)
        curves_ax.set_xlabel("epoch")
        curves_ax.set_title("learning curves (orange: chosen)" if any(len(t["curve"]) > 1 for t in result.trials)
                            else "closed form: one solve per trial")
        fig.suptitle(title)
        return png_bytes(fig)
    finally:
        plt.close(fig)
