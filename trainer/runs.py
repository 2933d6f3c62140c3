"""One model's run: split, fit with early stopping, test, refit for publishing, and its record.

1. **Split** by the protocol that fits the model (protocols.md): rating models ``rating-random``
   (early stopping on RMSE of the validation ratings, test RMSE/MAE with the bias
   baseline as fallback); sequential models (svae) ``temporal``; other rankers ``strong``
   (early stopping on validation NDCG@100, test Recall@20/50 and NDCG@100). Positives
   for rankers are ratings >= the positive threshold of the source's declared rating
   scale (``rating_scale``; 4 on 1-5 stars, as the protocol; every row of implicit data).
2. **Fit** on the split's train part with early stopping on its validation part, then
   evaluate on its test part. These are the figures reported in ``metrics.json``.
   The task's baselines (``split_baselines``: global mean and bias, or popularity) are
   fitted on the same split and scored the same way, once per split; each model is marked
   against its task's baseline by the margin of ``registry.best`` (``versus_baseline``).
3. **Refit for publishing** (default) on *all* interactions, for the number of epochs
   early stopping chose (closed-form models simply solve on everything). Why not publish
   the split run's best-on-validation weights: the published model must know every user
   and item the service will see. Under ``strong``/``temporal`` the held-out users and the
   items only they touched are missing from the split's training matrix (I-AutoRec cannot
   fold in users at all; CDAE learns a vector per training user), and the evaluation held
   back 10-20% of the data. Refitting gives id maps covering the whole source (``ids.json``:
   every user and item in it). The reported metrics are those of the split run: the refit's
   configuration evaluated without leakage. The cost is a second fit (no validation passes,
   no patience epochs; its share of a run: bench/RESULTS.md, "Figures moved out"). ``refit=False``
   (``--no-refit``) publishes the split run's best weights instead, for when time matters
   more: held-out users are then folded in at serving time, and ``ids.json`` lists only
   the split's training users and items.

``ModelRun`` is the record: what the registry gets, the figures, and the gate's decision
(``trainer.gate.quality_gate``, taken by the pipeline against the published version).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from errors import TrainingError
from interactions import Interactions
import registry
from registry import best
from trainer.gate import GateDecision, heldout_fingerprint
from trainer.protocols import RankingSplit, RatingSplit
from trainer.sources import positive_threshold, positives
from trainer.training import FitResult, TrainingLog, fit

def protocol_for(cls: type) -> str:
    if cls.task == "rating":
        return "rating-random"
    return "temporal" if cls.sequential else "strong"


@dataclass
class ModelRun:
    """What training one model produced; ``published`` is what the registry gets (the refit, or the split model)."""

    name: str
    protocol: str
    split_model: Any
    published: Any
    valid_metric: str
    valid_value: float
    higher_is_better: bool
    test: dict[str, float]
    headline: tuple[str, ...]
    log: TrainingLog  # the split run's fit
    refit_log: TrainingLog  # the refit's; empty without one
    refit: bool
    user_ids: Any  # external ids of the published model's rows / columns
    item_ids: Any
    fingerprint: dict[str, Any]
    timings: dict[str, float]
    gate: GateDecision | None = None
    train: dict[str, Any] = field(default_factory=dict)
    cold_start: Any = None  # rating models: the bias baseline on the published model's training matrix
    # its task's baseline on the same split: {"name", "valid", "required", "beats"} (``registry.best``)
    baseline: dict[str, Any] | None = None
    # trained_pairs.npz: the published model's training pairs (user_ids x item_ids), for the next run's gate;
    # packed here (4 bytes a pair), so that no model's matrix stays in memory until the version is published
    trained_pairs: bytes = b""
    # ``trainer.tune``: the search's record (values, trials, best_value, budget_s...) or the reused one
    # (``reused_from``), the study's files (tuning.json, tuning.png) and the line saying which
    tuned: dict[str, Any] | None = None
    tuning_files: dict[str, bytes] = field(default_factory=dict)
    tune_note: str | None = None

    def metrics_json(self, seed: int, hyper: dict[str, Any]) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "seed": seed,
            "train": self.train,
            "valid": {self.valid_metric: self.valid_value, "higher_is_better": self.higher_is_better},
            "test": self.test,
            "curve": self.log.get("curve", []),
            "best_epoch": self.log.get("best_epoch"),
            "epochs_run": self.log.get("epochs"),
            "refit": {"epochs": self.refit_log.get("epochs"), "curve": self.refit_log.get("curve", [])},
            "heldout": self.fingerprint,
            "gate": None if self.gate is None else self.gate.as_dict(),
            "baseline": self.baseline,
            "timings": self.timings,
            "hyper": hyper,
            "tuned": self.tuned,
            "device": self.log.get("device"),
            "precision": self.log.get("precision", "fp32"),  # the one it trained in (fit's log)
            "world_size": self.log.get("world_size", 1),  # processes under torchrun (data-parallel)
            "published_weights": "refit on all interactions for best_epoch epochs" if self.refit
            else "best-on-validation weights of the split run (--no-refit)",
        }

    def summary(self) -> str:
        figures = "  ".join(f"{m} {self.test[m]:.4f}" for m in self.headline if m in self.test)
        versus = ""
        if self.baseline is not None:
            b = self.baseline
            versus = (f"  |  {'beats' if b['beats'] else 'BELOW'} {b['name']} {b['valid']:.4f}"
                      f" (needs {b['required']:.4f})")
        return (
            f"{self.name:<10} {self.protocol:<13} test {figures}  |  valid {self.valid_metric} {self.valid_value:.4f}"
            f"{versus}  |  epochs {self.log.get('best_epoch', 0)}/{self.log.get('epochs', 0)}"
            f"  |  {self.timings['total_seconds']:.1f}s (cpu {self.timings['cpu_seconds']:.1f}s)"
            + (f"  |  top-N lists {self.timings['top_lists_seconds']:.1f}s" if "top_lists_seconds" in self.timings else "")
        )


@dataclass
class BaselineRun:
    """A baseline fitted on one protocol's split, scored as the models are (validation and test)."""

    name: str
    protocol: str
    model: Any  # fitted on the split's train part
    valid_metric: str
    valid_value: float
    test: dict[str, float]
    headline: tuple[str, ...]

    def summary(self) -> str:
        figures = "  ".join(f"{m} {self.test[m]:.4f}" for m in self.headline if m in self.test)
        return (f"{self.name:<10} {self.protocol:<13} test {figures}  |  valid {self.valid_metric} "
                f"{self.valid_value:.4f}  |  baseline")

    def record(self) -> dict[str, Any]:
        """What the manifest keeps: the validation figure and the headline test figures, as for a model."""
        return {"valid": {self.valid_metric: self.valid_value},
                "test": {m: self.test[m] for m in (*self.headline, "n") if m in self.test}}


def split_baselines(protocol: str, split: RatingSplit | RankingSplit) -> dict[str, BaselineRun]:
    """The baselines of ``protocol``'s task on ``split``: fitted on its train part, validated by the models'
    own early-stopping score and tested by their own evaluation (rating tests with the bias fallback)."""
    from models.base import TrainData
    from models.baselines import BASELINES, fit_baseline
    from trainer.evaluation import evaluate_ranking, evaluate_rating
    from trainer.protocols import PROTOCOL_METRICS, PROTOCOL_TASK, protocol_ks
    from trainer.training import validation_score

    task = PROTOCOL_TASK[protocol]
    if isinstance(split, RatingSplit):
        data = TrainData(split.train, rating_range=split.rating_range)
    else:
        data = TrainData(split.train, timestamps=split.train_timestamps, rating_range=(0.0, 1.0))
    fitted = {name: fit_baseline(name, data) for name, cls in BASELINES.items() if cls.task == task}
    runs = {}
    for name, model in fitted.items():
        metric, value, _ = validation_score(model, split.train, split.valid)
        if isinstance(split, RatingSplit):
            test = evaluate_rating(model, split.train, split.test, fallback=fitted["bias"])
        else:
            test = evaluate_ranking(model, split.test, ks=protocol_ks(protocol))
        runs[name] = BaselineRun(name, protocol, model, metric, float(value), {k: float(v) for k, v in test.items()},
                                 PROTOCOL_METRICS[protocol][:3])
    return runs


def versus_baseline(run: ModelRun, baseline: BaselineRun) -> dict[str, Any]:
    """``run`` against its task's baseline on the same split, by the margin of ``registry.best``."""
    from trainer.protocols import PROTOCOL_TASK

    task = PROTOCOL_TASK[run.protocol]
    return {"name": baseline.name, "valid": baseline.valid_value, "required": best.required(task, baseline.valid_value),
            "beats": best.beats(task, run.valid_value, baseline.valid_value), "margin": best.margin_text(task)}


def _bias_fallback(X: sp.csr_matrix, rating_range: tuple[float, float]):
    """The bias baseline on ``X``: the test's fallback on a split, and a rating model's published cold start."""
    from models.base import TrainData
    from models.baselines import fit_baseline
    from trainer.evaluation import FALLBACK_BASELINE

    return fit_baseline(FALLBACK_BASELINE, TrainData(X, rating_range=rating_range))


def _refit(
    name: str, inter: Interactions, threshold: float, hyper: dict[str, Any], split_log: dict[str, Any], **fit_args: Any
) -> tuple[FitResult, sp.csr_matrix]:
    """Train again on all interactions, for the epoch count early stopping chose; return it and its matrix."""
    from models import REGISTRY

    cls = REGISTRY[name]
    fit_args = {**fit_args, "holdout": 0.0}  # exactly the chosen epochs, on everything
    refit_hyper = dict(hyper)
    if not cls.closed_form:
        refit_hyper["epochs"] = max(1, int(split_log.get("best_epoch") or split_log.get("epochs") or 1))
    if cls.task == "rating":
        X = inter.matrix("rating")
        return fit(name, X, rating_range=inter.rating_range, **fit_args, **refit_hyper), X
    X, ts = positives(inter, threshold)
    result = fit(name, X, timestamps=ts, rating_range=(0.0, 1.0), **fit_args, **refit_hyper)
    return result, X


def model_split(name: str, inter: Interactions, seed: int,
                split_cache: dict[str, RatingSplit | RankingSplit]) -> RatingSplit | RankingSplit:
    """The split of the protocol that fits model ``name``, made once per protocol and run."""
    from models import REGISTRY
    from trainer.protocols import make_split

    protocol = protocol_for(REGISTRY[name])
    if protocol not in split_cache:
        options = {} if protocol == "rating-random" else {"min_rating": positive_threshold(inter)}
        split_cache[protocol] = make_split(protocol, inter, seed, **options)
    return split_cache[protocol]


def fit_on_split(name: str, split: RatingSplit | RankingSplit, hyper: dict[str, Any], **fit_args: Any) -> FitResult:
    """``fit`` on the split's train part, early-stopped on its validation part (the run's figures and the tuner's
    trials)."""
    if isinstance(split, RatingSplit):
        return fit(name, split.train, valid=split.valid, rating_range=split.rating_range, **fit_args, **hyper)
    return fit(name, split.train, timestamps=split.train_timestamps, valid=split.valid, rating_range=(0.0, 1.0),
               **fit_args, **hyper)


def train_model(
    name: str,
    inter: Interactions,
    *,
    hyper: dict[str, Any],
    seed: int,
    device: torch.device,
    progress: bool,
    split_cache: dict[str, RatingSplit | RankingSplit],
    refit: bool = True,
    precision: str = "fp32",
    prefit: FitResult | None = None,
) -> ModelRun:
    """Split, fit with early stopping, test; then refit on everything, or not (see the module docstring).
    ``prefit``: a fit already made on this split with ``hyper`` (the tuner's best trial), used as is."""
    from models import REGISTRY
    from trainer.evaluation import evaluate_ranking, evaluate_rating
    from trainer.protocols import PROTOCOL_METRICS, protocol_ks

    cls = REGISTRY[name]
    protocol = protocol_for(cls)
    threshold = positive_threshold(inter)
    started, cpu_started = time.perf_counter(), time.process_time()
    split = model_split(name, inter, seed, split_cache)
    split_seconds = time.perf_counter() - started

    t0 = time.perf_counter()
    if prefit is not None:  # the tuner's best trial: fitted on this split with these very values
        fitted = prefit
    else:
        fitted = fit_on_split(name, split, hyper, seed=seed, device=device, progress=progress, precision=precision)
    fit_seconds = time.perf_counter() - t0
    model, log = fitted.model, dict(fitted.log)
    if not math.isfinite(float(log.get("valid_value", float("nan")))):
        raise TrainingError(f"{name} gave a non-finite validation {log.get('valid_metric')}: nothing is published")

    t0 = time.perf_counter()
    if isinstance(split, RatingSplit):
        fallback = _bias_fallback(split.train, split.rating_range)
        test = evaluate_rating(model, split.train, split.test, fallback=fallback)
    else:
        test = evaluate_ranking(model, split.test, ks=protocol_ks(protocol))
    test_seconds = time.perf_counter() - t0
    bad = [m for m, v in test.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise TrainingError(f"{name} gave non-finite test {', '.join(bad)}: nothing is published")

    t0 = time.perf_counter()
    refit_log: TrainingLog = {}
    if refit:
        refitted, train_matrix = _refit(name, inter, threshold, hyper, log, seed=seed, device=device, progress=progress,
                                        precision=precision)
        published, refit_log = refitted.model, dict(refitted.log)
        user_ids, item_ids = inter.user_ids, inter.item_ids
    elif isinstance(split, RatingSplit):  # the split's matrices span every user and item
        published, train_matrix, user_ids, item_ids = model, split.train, inter.user_ids, inter.item_ids
    else:  # only the split's training users and the items they touched
        published, train_matrix = model, None
        user_ids, item_ids = np.asarray(inter.user_ids)[split.train_users], np.asarray(inter.item_ids)[split.item_ids]
    refit_seconds = time.perf_counter() - t0
    train = {"loss": (refit_log.get("curve") or log.get("curve") or [{}])[-1].get("loss")}
    cold_start = None
    if cls.task == "rating":
        train.update({k: v for k, v in evaluate_rating(published, train_matrix, train_matrix).items()
                      if k in ("rmse", "mae")})
        # served to users it has no usable history of; the test's fallback when it saw the same matrix
        cold_start = fallback if train_matrix is split.train else _bias_fallback(train_matrix, published.rating_range)

    higher = log["valid_metric"] != "rmse"
    return ModelRun(
        name=name,
        protocol=protocol,
        split_model=model,
        published=published,
        valid_metric=log["valid_metric"],
        valid_value=float(log["valid_value"]),
        higher_is_better=higher,
        test={k: float(v) for k, v in test.items()},
        headline=PROTOCOL_METRICS[protocol][:3],
        log=log,
        refit_log=refit_log,
        refit=refit,
        user_ids=user_ids,
        item_ids=item_ids,
        fingerprint=heldout_fingerprint(inter, split),
        train=train,
        cold_start=cold_start,
        trained_pairs=registry.trained_pairs_bytes(split.train if train_matrix is None else train_matrix),
        timings={
            "split_seconds": round(split_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
            "test_seconds": round(test_seconds, 3),
            "refit_seconds": round(refit_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
            # CPU seconds of this process (all threads): comparable across runs on a shared, busy machine
            "cpu_seconds": round(time.process_time() - cpu_started, 3),
        },
    )
