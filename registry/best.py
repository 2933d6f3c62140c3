"""Each task's baseline, the margin a model must beat it by, and which model a version serves by default.

The trainer fits each task's baselines on the same split as the models (``trainer.pipeline.train_all``)
and records, per task, the best-validated model, the baseline included (manifest ``"best"``).
A model that does not beat its task's baseline by ``MARGINS`` on validation is still published,
for inspection, but is never that record's model. The service resolves ``"best"`` with
``default_model``: the record, or for a version published before it, the old defaults.

The trainer records, the service resolves: standard library only.
"""

from __future__ import annotations

from typing import Any, Mapping

BEST_KEY = "best"  # manifest: {task: {"model", "metric", "value", "protocol", "baseline", "baseline_value", "reason"}}
BASELINES_KEY = "baselines"  # manifest: {protocol: {baseline: {"valid": {metric: value}, "test": {...}}}}
BEST = "best"  # the DEFAULT_MODEL / DEFAULT_RATING_MODEL value (and a request's model) that means the record's model
TASK_BASELINE = {"rating": "bias", "ranking": "popularity"}  # the servable baseline each task's models are held to
TASK_PROTOCOLS = {"rating": ("rating-random",), "ranking": ("strong", "temporal")}  # the first one trained decides
# A version without the record serves what the service served before it, else the task's first model
LEGACY_DEFAULTS = {"ranking": "ease", "rating": "autorec-u"}
# Margins just past one split's noise on ml-100k, which every real model clears (bench/RESULTS.md, "Figures moved out").
MARGINS: dict[str, tuple[str, float]] = {"rating": ("minus", 0.005), "ranking": ("times", 1.1)}


def required(task: str, baseline_value: float) -> float:
    """The validation figure a model of ``task`` must reach (RMSE at most, NDCG at least) to beat its baseline."""
    kind, amount = MARGINS[task]
    return baseline_value - amount if kind == "minus" else baseline_value * amount


def beats(task: str, value: float, baseline_value: float) -> bool:
    need = required(task, baseline_value)
    return value <= need if task == "rating" else value >= need


def margin_text(task: str) -> str:
    kind, amount = MARGINS[task]
    return f"at least {amount:g} below" if kind == "minus" else f"at least {amount:g}x"


def choose(task: str, protocol: str, metric: str, candidates: Mapping[str, float], baseline_value: float) -> dict[str, Any]:
    """The record for ``task``: the best candidate on validation among those that beat the baseline by the
    margin, else the baseline itself. ``candidates``: {model: validation figure}, all on ``protocol``."""
    baseline = TASK_BASELINE[task]
    qualified = {name: value for name, value in candidates.items() if beats(task, value, baseline_value)}
    if qualified:
        pick = (min if task == "rating" else max)(qualified, key=qualified.__getitem__)
        value = qualified[pick]
    else:
        pick, value = baseline, baseline_value
    return {
        "model": pick, "metric": metric, "value": value, "protocol": protocol, "baseline": baseline,
        "baseline_value": baseline_value,
        "reason": (f"best validation {metric} {value:.4f} ({baseline} {baseline_value:.4f})" if qualified else
                   f"no model beats {baseline} by the margin ({margin_text(task)} its validation {metric} "
                   f"{baseline_value:.4f})"),
    }


def default_model(manifest: Mapping[str, Any], task: str, tasks: Mapping[str, str]) -> tuple[str | None, str]:
    """(model, why) served for ``task`` when a request asks for ``BEST``; ``tasks``: {model: task} of the version
    as served, in manifest order. None when the version has no model of that task."""
    record = (manifest.get(BEST_KEY) or {}).get(task)
    if isinstance(record, dict) and tasks.get(record.get("model")) == task:
        return record["model"], str(record.get("reason") or "recorded best")
    legacy = LEGACY_DEFAULTS[task]
    if tasks.get(legacy) == task:
        return legacy, "no best model recorded in this version: the former default"
    first = next((name for name, t in tasks.items() if t == task), None)
    return first, "no best model recorded in this version: its first model of the task"
