"""Publishing a run: the version's models, their top-N lists, the task baselines and the manifest.

The version also holds the bias and popularity baselines of the tasks trained, as models
(solved on all interactions), the baselines' figures (manifest ``baselines``) and, per task,
the best-validated model that clears the margin, else the baseline (manifest ``best``): the
service's default. A model this run did not train is carried from the previous version.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from interactions import Interactions
import registry
from registry import StagedModel
from registry import best
from trainer.plots import learning_curve_png
from trainer.runs import BaselineRun, ModelRun
from trainer.sources import SourceSpec, positive_threshold, positives, snapshot

def code_version() -> str:
    """``git describe`` of the checkout when there is one, else the installed package's version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=repo, capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"aerec {importlib.metadata.version('aerec')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def best_records(runs: dict[str, ModelRun], baselines: dict[str, dict[str, BaselineRun]]) -> dict[str, dict[str, Any]]:
    """Per task trained, ``registry.best.choose`` over the models of the task's first protocol in this run
    (figures on different splits do not compare: svae's ``temporal`` joins only when no ``strong`` ranker ran)."""

    records = {}
    for task, protocols in best.TASK_PROTOCOLS.items():
        protocol = next((p for p in protocols if p in baselines), None)
        if protocol is None:
            continue
        baseline = baselines[protocol][best.TASK_BASELINE[task]]
        candidates = {name: run.valid_value for name, run in runs.items() if run.protocol == protocol}
        records[task] = best.choose(task, protocol, baseline.valid_metric, candidates, baseline.valid_value)
    return records


def _servable_baseline(task: str, inter: Interactions) -> Any:
    """The task's baseline solved on all interactions, as the models are refit: it knows every user and item
    (closed form: no epochs to choose, nothing to leak)."""
    from models.base import TrainData
    from models.baselines import fit_baseline

    if task == "rating":
        return fit_baseline(best.TASK_BASELINE[task], TrainData(inter.matrix("rating"), rating_range=inter.rating_range))
    X, _ = positives(inter, positive_threshold(inter))
    return fit_baseline(best.TASK_BASELINE[task], TrainData(X, rating_range=(0.0, 1.0)))


def publish_version(
    root: Path,
    inter: Interactions,
    source: SourceSpec,
    runs: dict[str, ModelRun],
    seed: int,
    overrides: dict[str, dict[str, Any]],
    keep: int,
    previous_version: str | None,
    previous_manifest: dict[str, Any] | None,
    carried: list[str],
    baselines: dict[str, dict[str, BaselineRun]] | None = None,
    records: dict[str, dict[str, Any]] | None = None,
    *,
    data_read_at: float,
    device: torch.device | None = None,
) -> str:
    """Stage every model of ``runs``, the tasks' baselines and the carried models, and publish them as one
    version (``registry.publish``); returns its name."""
    staged: dict[str, StagedModel] = {}
    entries: dict[str, Any] = {}
    lists = _top_lists(inter, runs, data_read_at, source.database_url is not None, device)
    for name, run in runs.items():
        hyper = dataclasses.asdict(run.published.config)
        png = learning_curve_png(f"{name} on {inter.name} ({run.protocol}, seed {seed})", run.log.get("curve", []),
                                 run.valid_metric, run.log.get("best_epoch"))
        staged[name] = StagedModel(
            model=run.published,
            user_ids=run.user_ids,
            item_ids=run.item_ids,
            metrics=run.metrics_json(seed, hyper),
            cold_start=run.cold_start,
            files={registry.CURVE_FILE: png, registry.TRAINED_PAIRS_FILE: run.trained_pairs,
                   **(lists[name][0] if name in lists else {}), **run.tuning_files},
        )
        entries[name] = {
            "metrics": {m: run.test[m] for m in run.headline if m in run.test},
            "valid_metric": {"name": run.valid_metric, "value": run.valid_value},
            "protocol": run.protocol,
            "epochs": run.refit_log.get("epochs", 0) if run.refit else run.log.get("best_epoch", 0),
            "refit": run.refit,
            "fit_seconds": round(run.timings["fit_seconds"] + run.timings["refit_seconds"], 3),
            "overrides": overrides.get(name, {}),
            **({"top_lists": lists[name][1]} if name in lists else {}),
        }
        if run.tuned is not None:
            entries[name]["tuned"] = run.tuned
    baselines, records = baselines or {}, dict(records or {})
    for task, record in records.items():  # the task's baseline, servable as any model of the version
        name, split_run = best.TASK_BASELINE[task], baselines[record["protocol"]][best.TASK_BASELINE[task]]
        model = _servable_baseline(task, inter)
        staged[name] = StagedModel(
            model=model, user_ids=inter.user_ids, item_ids=inter.item_ids,
            metrics={"protocol": split_run.protocol, "seed": seed, "baseline": True,
                     "valid": {split_run.valid_metric: split_run.valid_value,
                               "higher_is_better": split_run.valid_metric != "rmse"},
                     "test": split_run.test, "hyper": dataclasses.asdict(model.config),
                     "published_weights": "solved on all interactions"},
            cold_start=model if task == "rating" else None,  # a user with no history: its own empty-row answer
        )
        entries[name] = {
            "metrics": {m: split_run.test[m] for m in split_run.headline if m in split_run.test},
            "valid_metric": {"name": split_run.valid_metric, "value": split_run.valid_value},
            "protocol": split_run.protocol, "epochs": 0, "refit": True, "fit_seconds": 0.0, "overrides": {},
            "baseline": True,
        }
    for name, run in runs.items():
        if run.baseline is not None:
            entries[name]["vs_baseline"] = dict(run.baseline)
    # a task this run did not train keeps the previous version's record while its model is carried
    for task, record in ((previous_manifest or {}).get(best.BEST_KEY) or {}).items():
        if task not in records and isinstance(record, dict) and record.get("model") in carried:
            records[task] = record
    carry_from = {}
    for name in carried:
        entries[name] = {**previous_manifest["models"][name], "carried_from": previous_version}
        carry_from[name] = root / previous_version / previous_manifest["models"][name].get("path", name)

    counts = np.bincount(inter.items, minlength=inter.n_items)
    order = np.lexsort((np.arange(inter.n_items), -counts))
    order = order[counts[order] > 0]
    manifest = {
        "code_version": code_version(),
        "source": {**source.describe(), **snapshot(inter), "dataset_name": inter.name},
        "seed": seed,
        # rankers trained on ratings >= this; the service folds in a new user's history the same way
        "positive_threshold": positive_threshold(inter),
        "rating_scale": inter.rating_scale.as_dict(),
        "models": entries,
        "timings": {name: run.timings for name, run in runs.items()},
        best.BASELINES_KEY: {protocol: {name: b.record() for name, b in by_name.items()}
                             for protocol, by_name in baselines.items()},
        best.BEST_KEY: records,
    }
    popularity = {"items": np.asarray(inter.item_ids)[order].tolist(), "counts": counts[order].tolist()}
    return registry.publish(root, staged, manifest, popularity=popularity, keep=keep, carry_from=carry_from)


def _top_lists(inter: Interactions, runs: dict[str, ModelRun], data_read_at: float, from_database: bool,
               device: torch.device | None) -> dict[str, tuple[dict[str, bytes], dict[str, Any]]]:
    """{model: (its list files, their manifest entry)} for each refit ranker (its rows are every user of the
    data); the seconds each took go in its timings, so the run summary reports them."""
    from trainer.settings import get_settings
    from trainer.top_lists import compute_top_lists

    n = get_settings().TOP_LIST_SIZE
    eligible = {name: run for name, run in runs.items()
                if n > 0 and run.refit and run.published.task == "ranking"}
    if not eligible:
        return {}
    X, timestamps = positives(inter, positive_threshold(inter))  # the input the service builds from the same history
    seen = sp.csr_matrix((np.ones(len(inter), np.float32), (inter.users, inter.items)), shape=X.shape)
    seen.sum_duplicates()
    out = {}
    for name, run in eligible.items():
        lists = compute_top_lists(run.published, X, seen, n, device=None if device is None else str(device),
                                  timestamps=timestamps)
        run.timings["top_lists_seconds"] = round(lists.seconds, 3)
        out[name] = (lists.files(), lists.info(data_read_at, from_database))
    return out
