"""The evaluation functions every model is judged with, and the baselines' multi-seed runs.

* ``evaluate_ranking(model, heldout)``: the model ranks all items for each held-out user
  from that user's fold-in input, seen items excluded; ``trainer.metrics.ranking_report``
  scores the lists against the targets. Each user's training row (``heldout.train_rows``: as in
  ``seed-ranking``, or -1 for users never trained on, as in ``strong``) is passed as ``users``:
  models with per-user parameters use it, and one that cannot fold in refuses a -1.
* ``evaluate_rating(model, train, targets, fallback)``: every stored rating of ``targets``
  is predicted from that user's ``train`` row, clipped to the rating range. A rating whose
  user or item has no training rating gets the fallback's prediction and still counts.
* ``baseline_report`` (``evaluate_baselines`` + ``summarise``) and ``format_table``: the baselines over seeds
  (``python -m trainer baselines`` and ``bench/baselines.py`` both call these).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from errors import DataError, UserError
from interactions import Interactions
from models.base import ModelInputError, Recommender, TrainData
from models.rows import as_csr
from models.baselines import BASELINES, fit_baseline
from trainer.metrics import mae, ranking_report, rmse
from trainer.protocols import PROTOCOL_METRICS, PROTOCOL_TASK, HeldOut, make_split, protocol_ks

FALLBACK_BASELINE = "bias"  # protocols.md: unknown users/items in rating-random get the bias prediction


# ---- ranking ------------------------------------------------------------------------------

def ranked_lists(model: Recommender, heldout: HeldOut, k: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """(the model's top-k [n, k] for the held-out users with targets, seen items excluded; their targets)."""
    inputs = as_csr(heldout.inputs, model.n_items)
    targets = as_csr(heldout.targets, model.n_items)
    if inputs.shape != targets.shape:
        raise ModelInputError(f"held-out inputs {inputs.shape} and targets {targets.shape} differ in shape")
    evaluated = np.flatnonzero((targets != 0).getnnz(axis=1) > 0)
    if evaluated.size == 0:
        raise DataError("no held-out user has any target to evaluate")
    users = np.asarray(heldout.train_rows, dtype=np.int64)[evaluated]  # -1: a user the model did not train on
    timestamps = None if heldout.input_timestamps is None else sp.csr_matrix(heldout.input_timestamps)[evaluated]
    # one call: the rows cross to the model's device once, and it scores them in blocks there
    ranked, _ = model.recommend(inputs[evaluated], k=k, users=users, exclude_seen=True, timestamps=timestamps)
    return ranked, targets[evaluated]


def evaluate_ranking(model: Recommender, heldout: HeldOut, ks: Sequence[int] = (20, 50, 100)) -> dict[str, float]:
    """``ranking_report`` of the model's top-max(ks) lists for the held-out users with targets, plus ``n`` users."""
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise UserError(f"ks must be positive cut-offs, got {ks!r}")
    ranked, targets = ranked_lists(model, heldout, max(ks))
    report = ranking_report(ranked, targets, ks=ks, n_items=model.n_items)
    report["n"] = int(ranked.shape[0])
    return report


# ---- ratings ------------------------------------------------------------------------------
def evaluate_rating(
    model: Recommender,
    train: sp.csr_matrix,
    targets: sp.csr_matrix,
    fallback: Recommender | None = None,
    batch_rows: int = 2048,
) -> dict[str, float]:
    """RMSE and MAE over every stored rating in ``targets`` (rows aligned with ``train``).

    Ratings whose user or item has no rating in ``train`` are predicted by ``fallback``
    (``None``: by the model itself) and are counted; ``n_fallback`` says how many.
    """
    train = as_csr(train, model.n_items)
    targets = as_csr(targets, model.n_items)
    if targets.shape != train.shape:
        raise ModelInputError(f"targets have shape {targets.shape}, train {train.shape}")
    pairs = targets.tocoo()
    stored = pairs.data != 0  # a stored zero is no rating
    users, items = pairs.row[stored].astype(np.int64), pairs.col[stored].astype(np.int64)
    actual = pairs.data[stored].astype(np.float64)
    if actual.size == 0:
        raise DataError("no ratings to evaluate")
    rated = train != 0
    known = (rated.getnnz(axis=1) > 0)[users] & (rated.getnnz(axis=0) > 0)[items]
    if fallback is None:
        known[:] = True
    predicted = np.empty(actual.size, dtype=np.float64)
    every_row = np.arange(train.shape[0])  # a model that needs training-row indices gets them
    for predictor, mask in ((model, known), (fallback, ~known)):
        if mask.any():  # one forward pass per user, not per rating
            predicted[mask] = predictor.predict(
                train, items[mask], users=every_row, pair_rows=users[mask], batch_rows=batch_rows
            )
    return {
        "rmse": rmse(predicted, actual, model.rating_range),
        "mae": mae(predicted, actual, model.rating_range),
        "n": int(actual.size),
        "n_fallback": int((~known).sum()),
    }


# ---- baselines over seeds -------------------------------------------------------------------
def evaluate_baselines(
    interactions: Interactions, protocol: str, seeds: Sequence[int] = (0, 1, 2, 3, 4), **split_options
) -> dict[str, dict[str, list[float]]]:
    """{baseline: {metric: [value per seed]}} for the baselines that fit the protocol's task.

    Each baseline trains on the split's train matrix; rating protocols use the bias
    baseline (trained on the same matrix) as the fallback for every model.
    """
    if protocol not in PROTOCOL_TASK:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOL_TASK)}")
    task = PROTOCOL_TASK[protocol]
    names = [name for name, cls in BASELINES.items() if cls.task == task]
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for seed in seeds:
        split = make_split(protocol, interactions, int(seed), **split_options)
        if task == "rating":
            data = TrainData(split.train, rating_range=split.rating_range)
            fitted = {name: fit_baseline(name, data) for name in names}
            results = {
                name: evaluate_rating(model, split.train, split.test, fallback=fitted[FALLBACK_BASELINE])
                for name, model in fitted.items()
            }
        else:
            data = TrainData(split.train, timestamps=split.train_timestamps, rating_range=(0.0, 1.0))
            results = {
                name: evaluate_ranking(fit_baseline(name, data), split.test, ks=protocol_ks(protocol)) for name in names
            }
        for name, result in results.items():
            for metric, value in result.items():
                runs[name].setdefault(metric, []).append(float(value))
    return runs


def summarise(runs: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict]]:
    """{baseline: {metric: {"mean", "std", "values"}}}; std is the sample std (ddof=1) over seeds."""
    return {
        name: {
            metric: {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": list(values),
            }
            for metric, values in metrics.items()
        }
        for name, metrics in runs.items()
    }


def baseline_report(interactions: Interactions, protocol: str, seeds: Sequence[int]) -> dict:
    """The baselines on one dataset and protocol over ``seeds``: what the CLI prints and the bench writes."""
    return {
        "dataset": interactions.name,
        "protocol": protocol,
        "seeds": [int(seed) for seed in seeds],
        "metrics": list(PROTOCOL_METRICS[protocol]),
        "std": "sample standard deviation over seeds (ddof=1)",
        "results": summarise(evaluate_baselines(interactions, protocol, seeds)),
    }


def format_table(summary: dict[str, dict[str, dict]], metrics: Sequence[str]) -> str:
    """Plain-text table, one row per baseline, ``mean ± std`` per metric."""
    header = ["baseline", *metrics]
    rows = [
        [name, *(f"{values[m]['mean']:.4f} ± {values[m]['std']:.4f}" for m in metrics)]
        for name, values in summary.items()
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])

