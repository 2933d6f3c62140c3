"""Train every requested model on one data source, check it, and publish a new registry version.

For each model, in registry order:

1. **Split** by the protocol that fits it (protocols.md): rating models ``rating-random``
   (early stopping on RMSE of the validation ratings, test RMSE/MAE with the bias
   baseline as fallback); sequential models (svae) ``temporal``; other rankers ``strong``
   (early stopping on validation NDCG@100, test Recall@20/50 and NDCG@100). Positives
   for rankers are ratings >= the positive threshold of the source's declared rating
   scale (``rating_scale``; 4 on 1-5 stars, as the protocol; every row of implicit data).
2. **Fit** on the split's train part with early stopping on its validation part, then
   evaluate on its test part. These are the figures reported in ``metrics.json``.
   The task's baselines (``split_baselines``: global mean and bias, or popularity) are
   fitted on the same split and scored the same way, once per split; each model is marked
   against its task's baseline by the margin of ``trainer.best``.
3. **Gate** (``quality_gate``): the published model is scored again beside the new one on
   this run's held-out users, less the pairs it trained on (each version publishes them,
   ``trained_pairs.npz``); a model worse by more than the tolerance, or a published one
   declared on another scale, threshold or protocol, stops the run and nothing is published.
4. **Refit for publishing** (default) on *all* interactions, for the number of epochs
   early stopping chose (closed-form models simply solve on everything). Why not publish
   the split run's best-on-validation weights: the published model must know every user
   and item the service will see. Under ``strong``/``temporal`` the held-out users and the
   items only they touched are missing from the split's training matrix (I-AutoRec cannot
   fold in users at all; CDAE learns a vector per training user), and the evaluation held
   back 10-20% of the data. Refitting gives id maps covering the whole source (``ids.json``:
   every user and item in it). The reported metrics are those of the split run: the refit's
   configuration evaluated without leakage. The cost is a second fit (no validation passes,
   no patience epochs; about 45% of a run's time on ml-100k). ``refit=False``
   (``--no-refit``) publishes the split run's best weights instead, for when time matters
   more: held-out users are then folded in at serving time, and ``ids.json`` lists only
   the split's training users and items.

The version also holds the bias and popularity baselines of the tasks trained, as models
(solved on all interactions), the baselines' figures (manifest ``baselines``) and, per task,
the best-validated model that clears the margin, else the baseline (manifest ``best``): the
service's default.

The run holds the registry lock (``ARTIFACTS_DIR/.lock``) from start to publish, so two
trainer processes sharing a folder never train at once: the second one stops at once with
"another training is running". NaN in training raises ``TrainingError``: nothing is published.

Under ``torchrun`` every rank runs this whole pipeline (same data, same splits, each rank
training on its share of the users, see ``trainer.distributed``); rank 0 alone takes the
lock, reports progress and publishes, and tells the other ranks the version's name.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from filelock import Timeout
from tqdm.auto import tqdm

from rating_scale import RatingScale
from trainer import artifacts, best, distributed
from trainer.artifacts import ArtifactError, LoadedModel, StagedModel
from trainer.dataset import Interactions
from trainer.errors import DataError, TrainingError, UserError
from trainer.gate import GateDecision, GateRefused, heldout_fingerprint, quality_gate
from trainer.loader import FileColumns
from trainer.plots import learning_curve_png
from trainer.protocols import PROTOCOL_TASK
from trainer.splits import RankingSplit, RatingSplit
from trainer.training import FitResult, TrainingLog

DEFAULT_GATE_TOLERANCE = 0.02  # relative: refuse a validation metric more than 2% worse than the published one


class TrainingBusy(UserError):
    """Another process holds the registry lock."""


# ---- sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """Exactly one of: a named dataset (optionally from a local ``source`` folder/zip), a file (read as
    ``columns`` say, on ``rating_scale``, inferred when None), a database URL."""

    dataset: str | None = None
    source: Path | None = None
    file: Path | None = None
    database_url: str | None = None
    columns: FileColumns = FileColumns()
    rating_scale: RatingScale | None = None

    def __post_init__(self) -> None:
        chosen = [x for x in (self.dataset, self.file, self.database_url) if x is not None]
        if len(chosen) != 1:
            raise UserError("choose exactly one data source: --dataset NAME, --file PATH or --from-db")
        if self.source is not None and self.dataset is None:
            raise UserError("--source points at a local copy of a named dataset: use it with --dataset")
        if self.file is None and (self.columns != FileColumns() or self.rating_scale is not None):
            raise UserError("--user-col, --item-col, --rating-col, --timestamp-col, --sep and --rating-scale say how "
                            "to read a --file: use them with --file (datasets and the database declare their own)")

    def describe(self) -> dict[str, Any]:
        if self.dataset:
            return {"kind": "dataset", "name": self.dataset, **({"source": str(self.source)} if self.source else {})}
        if self.file:
            return {"kind": "file", "path": str(self.file)}
        return {"kind": "database", "url": _redact(self.database_url or "")}


def _redact(url: str) -> str:
    """A database URL without its password, for manifests and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: the reader reports that itself
        return "<unparsable url>"


def load_source(spec: SourceSpec, progress: bool = True) -> tuple[Interactions, str]:
    """The source's interactions, and one line naming them and the rating scale they are on, and who declared it."""
    if spec.file:
        from trainer.loader import load_file

        inter, report = load_file(spec.file, spec.columns, rating_scale=spec.rating_scale)
        return inter, f"data: {spec.file} ({report.columns_note()}), {report.scale_note()}"
    if spec.dataset:
        from trainer.datasets import get_dataset

        inter, origin = get_dataset(spec.dataset, source=spec.source, progress=progress), f"{spec.dataset}'s own"
    else:
        inter, origin = read_database(spec.database_url or "")
    return inter, f"data: {inter.name}, rating scale {inter.rating_scale.summary} ({origin})"


def read_database(url: str) -> tuple[Interactions, str]:
    """Every stored interaction, through the service's ORM classes (PostgreSQL, SQLite, ... by URL), and
    where its rating scale was declared.

    The scale is the one stored with the data (``python -m service migrate`` records the
    service's ``RATING_SCALE``), else this process's ``RATING_SCALE`` setting; never the
    ratings' min and max. A stored rating off it stops the run (``DataError`` naming how
    many and one of them). A missing rating (implicit feedback) counts as a positive at the
    top of the scale, 1.0 on an implicit one. The same user and item at several times keep
    the latest row, as the file loader does.
    """
    import pandas as pd
    from sqlalchemy import select
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from service.db.session import make_engine
    from service.db.tables import DeclaredRatingScale, Interaction, Item, User
    from trainer.loader import interactions_from_columns, keep_latest_pairs
    from trainer.settings import get_settings

    query = (
        select(
            User.external_id.label("user"),
            Item.external_id.label("item"),
            Interaction.rating.label("rating"),
            Interaction.timestamp.label("timestamp"),
        )
        .join(User, Interaction.user_id == User.id)
        .join(Item, Interaction.item_id == Item.id)
        .order_by(Interaction.id)
    )
    where = _redact(url)
    try:
        engine = make_engine(url)
    except (ArgumentError, ValueError, ImportError) as exc:
        raise UserError(f"--database-url {where!r} is not a usable database URL: {exc}") from None
    try:
        with engine.connect() as connection:
            declared = connection.execute(
                select(DeclaredRatingScale.scale, DeclaredRatingScale.positive_threshold)).first()
            result = connection.execute(query)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except SQLAlchemyError as exc:
        first = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        raise DataError(f"cannot read interactions from {where}: {first} (did you run `python -m service migrate`?)") from None
    finally:
        engine.dispose()
    if frame.empty:
        raise DataError(f"the database {where} has no interactions to train on")
    if declared is not None:
        scale, origin = RatingScale.parse(declared.scale, declared.positive_threshold), "stored with the data"
    else:
        scale, origin = get_settings().rating_scale, "the RATING_SCALE setting: the database stores none"

    ratings = frame["rating"].to_numpy(dtype=np.float64)
    missing = np.isnan(ratings)
    rated = frame[~missing]
    refusal = scale.refusal(ratings[~missing], f"the database {where}", lambda n: (
        "user {!r}, item {!r}, rating {:g}".format(*rated.iloc[n][["user", "item", "rating"]])))
    if refusal:
        raise DataError(f"{refusal}; nothing was trained (delete or fix those rows, or declare a scale that has them)")
    ratings = np.where(missing, scale.high, ratings) if not scale.implicit else np.ones_like(ratings)
    inter = interactions_from_columns(
        frame["user"].astype(str).to_numpy(),
        frame["item"].astype(str).to_numpy(),
        ratings.astype(np.float32),
        frame["timestamp"].to_numpy(dtype=np.int64),
        name="database",
        rating_scale=scale,
    )
    keep, dropped = keep_latest_pairs(inter.users, inter.items, inter.timestamps)
    if dropped:
        inter = Interactions(
            users=inter.users[keep], items=inter.items[keep], ratings=inter.ratings[keep],
            timestamps=inter.timestamps[keep], user_ids=inter.user_ids, item_ids=inter.item_ids,
            name=inter.name, rating_scale=inter.rating_scale,
        )
    return inter, origin


def snapshot(inter: Interactions) -> dict[str, Any]:
    """Size and sha256 of the data as trained on.

    The digest covers both id lists (external ids, in index order) and the interaction
    arrays sorted by (user, item): the same rows give the same digest whatever their order
    in the file or table. Hashing the arrays' bytes keeps it fast on 20M+ rows.
    """
    order = np.lexsort((inter.items, inter.users))
    parts = [
        "\n".join(map(str, inter.user_ids)).encode("utf-8"),
        "\n".join(map(str, inter.item_ids)).encode("utf-8"),
        inter.users[order].astype("<i8").tobytes(),
        inter.items[order].astype("<i8").tobytes(),
        inter.ratings[order].astype("<f8").tobytes(),
    ]
    if inter.timestamps is not None:
        parts.append(inter.timestamps[order].astype("<i8").tobytes())
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))  # length-prefixed: no two splits of the bytes collide
        digest.update(part)
    return {
        "n_users": inter.n_users,
        "n_items": inter.n_items,
        "n_interactions": len(inter),
        "bytes": sum(len(part) for part in parts),
        "sha256": digest.hexdigest(),
        "rating_range": list(inter.rating_range),
        "has_timestamps": inter.timestamps is not None,
    }


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


# ---- one model --------------------------------------------------------------------------------


def protocol_for(cls: type) -> str:
    if cls.task == "rating":
        return "rating-random"
    return "temporal" if cls.sequential else "strong"


def positive_threshold(inter: Interactions) -> float:
    """Ratings from this one on are a ranker's positives: the declared scale's (4 on 1-5 stars, protocols.md)."""
    return inter.rating_scale.positive


def is_implicit(inter: Interactions) -> bool:
    return bool(len(inter)) and bool(np.all(inter.ratings == inter.ratings[0]))


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
    # its task's baseline on the same split: {"name", "valid", "required", "beats"} (``trainer.best``)
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


def _versus(run: ModelRun, baseline: BaselineRun) -> dict[str, Any]:
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


def _positives(inter: Interactions, threshold: float) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """All users x all items, 1 where a rating is a positive; and the timestamps on the same pattern."""
    keep = inter.ratings >= threshold
    shape = (inter.n_users, inter.n_items)
    ones = sp.csr_matrix((np.ones(keep.sum(), np.float32), (inter.users[keep], inter.items[keep])), shape=shape)
    ones.sort_indices()
    if inter.timestamps is None:
        return ones, None
    ts = sp.csr_matrix((inter.timestamps[keep].astype(np.float64), (inter.users[keep], inter.items[keep])), shape=shape)
    ts.sort_indices()
    return ones, ts


def _refit(
    name: str, inter: Interactions, threshold: float, hyper: dict[str, Any], split_log: dict[str, Any], **fit_args: Any
) -> tuple[FitResult, sp.csr_matrix]:
    """Train again on all interactions, for the epoch count early stopping chose; return it and its matrix."""
    from models import REGISTRY
    from trainer.training import fit

    cls = REGISTRY[name]
    fit_args = {**fit_args, "holdout": 0.0}  # exactly the chosen epochs, on everything
    refit_hyper = dict(hyper)
    if not cls.closed_form:
        refit_hyper["epochs"] = max(1, int(split_log.get("best_epoch") or split_log.get("epochs") or 1))
    if cls.task == "rating":
        X = inter.matrix("rating")
        return fit(name, X, rating_range=inter.rating_range, **fit_args, **refit_hyper), X
    X, ts = _positives(inter, threshold)
    result = fit(name, X, timestamps=ts if cls.sequential else None, rating_range=(0.0, 1.0), **fit_args, **refit_hyper)
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
    from models import REGISTRY
    from trainer.training import fit

    if isinstance(split, RatingSplit):
        return fit(name, split.train, valid=split.valid, rating_range=split.rating_range, **fit_args, **hyper)
    return fit(name, split.train, timestamps=split.train_timestamps if REGISTRY[name].sequential else None,
               valid=split.valid, rating_range=(0.0, 1.0), **fit_args, **hyper)


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
        trained_pairs=artifacts.trained_pairs_bytes(split.train if train_matrix is None else train_matrix),
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


# ---- the whole run ----------------------------------------------------------------------------


@dataclass
class TrainReport:
    version: str | None
    runs: dict[str, ModelRun]
    carried: list[str]
    seconds: float
    source: dict[str, Any]
    data_note: str  # what was read, on which rating scale (``load_source``)
    baselines: dict[str, dict[str, BaselineRun]] = field(default_factory=dict)  # protocol -> baseline -> its run
    best: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> the record (``trainer.best.choose``)

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
    version = artifacts.latest_version(root)
    if version is None:
        return None, None
    try:
        return version, artifacts.read_manifest(root, version)
    except ArtifactError as exc:
        tqdm.write(f"warning: the published version {version} is unreadable ({exc}); the gate cannot compare", file=sys.stderr)
        return None, None


def train_all(
    source: SourceSpec,
    models: Sequence[str] | str | None = "all",
    hyper_overrides: dict[str, dict[str, Any]] | None = None,
    device: str | None = "auto",
    seed: int = 0,
    artifacts_dir: str | Path = ".artifacts",
    *,
    keep: int = 5,
    gate: bool = True,
    gate_tolerance: float = DEFAULT_GATE_TOLERANCE,
    refit: bool = True,
    progress: bool = True,
    precision: str = "fp32",
    tune: Any = None,
) -> TrainReport:
    """Train ``models`` on ``source`` and publish one version to ``artifacts_dir`` (see the module docstring).

    ``tune``: a ``trainer.tune.TuneOptions`` searches each model's hyper-parameters first; None reuses the
    latest version's tuned values (explicit ``hyper_overrides`` win over both)."""
    from models import REGISTRY
    from trainer.hparams import validate
    from trainer.training import resolve_device, resolve_precision

    if keep < 1:
        raise UserError(f"--keep must be at least 1, got {keep}")
    if not 0 <= gate_tolerance < 1:
        raise UserError(f"--gate-tolerance is relative and must be in [0, 1), got {gate_tolerance}")
    resolve_models(models)  # unknown names fail before any data is read
    overrides = validate(hyper_overrides or {}, {name: cls.Config for name, cls in REGISTRY.items()})
    torch_device = resolve_device(device)
    resolve_precision(precision, torch_device)  # a bad value fails before any data is read
    root = Path(artifacts_dir)
    dist_ctx = distributed.context()
    if tune is not None and dist_ctx.active:
        raise UserError("--tune searches in one process: run it without torchrun, then train under torchrun (it reuses the values)")
    progress = progress and dist_ctx.is_main
    lock = artifacts.registry_lock(root)
    busy = None
    if dist_ctx.is_main:  # the other ranks of a torchrun job share rank 0's lock
        try:
            lock.acquire(blocking=False)
        except Timeout:
            busy = f"another training is running (lock {root / artifacts.LOCK_FILE} is held); skipped"
    busy = distributed.broadcast_from_main(busy)
    if busy:
        raise TrainingBusy(busy)
    try:
        started = time.perf_counter()
        data_read_at = time.time()  # before the read: a write after it is not in the lists (trainer.top_lists)
        inter, data_note = load_source(source, progress=progress)
        if progress:
            tqdm.write(data_note, file=sys.stderr)
        if len(inter) == 0:
            raise DataError(f"{inter.name} has no interactions to train on")
        names = resolve_models(models, inter)
        previous_version, previous_manifest = _previous(root)
        previous_loaded: dict[str, LoadedModel] | None = None

        runs: dict[str, ModelRun] = {}
        split_cache: dict[str, RatingSplit | RankingSplit] = {}
        baselines: dict[str, dict[str, BaselineRun]] = {}
        tuning = _Tuning(tune, names, overrides, previous_version, previous_manifest, seed=seed, device=torch_device,
                         precision=precision, progress=progress, dataset=inter.name)
        for name in tqdm(names, desc="models", unit="model", disable=not progress):
            hyper, prefit, tuned = tuning.values(name, inter, split_cache)
            run = train_model(name, inter, hyper=hyper, seed=seed, device=torch_device, progress=progress,
                              split_cache=split_cache, refit=refit, precision=precision, prefit=prefit)
            run.tuned, run.tuning_files, run.tune_note = tuned
            if run.protocol not in baselines:  # once per split, on the split the models trained on
                baselines[run.protocol] = split_baselines(run.protocol, split_cache[run.protocol])
                if progress:
                    for baseline in baselines[run.protocol].values():
                        tqdm.write(baseline.summary(), file=sys.stderr)
            run.baseline = _versus(run, baselines[run.protocol][best.TASK_BASELINE[PROTOCOL_TASK[run.protocol]]])
            if gate and previous_manifest and name in previous_manifest["models"]:
                if previous_loaded is None:
                    previous_loaded = artifacts.load_version(root, previous_version, map_location=str(torch_device)).models
                run.gate = quality_gate(run, inter, split_cache[run.protocol], previous_loaded[name], previous_version,
                                        gate_tolerance, previous_manifest)
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
            version = _publish(root, inter, source, runs, seed, overrides, keep, previous_version, previous_manifest, carried,
                               baselines, records, data_read_at=data_read_at, device=torch_device)
        version = distributed.broadcast_from_main(version)
        return TrainReport(version, runs, carried, time.perf_counter() - started, source.describe(), data_note,
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
            budget_s=share, seed=self.fit_args["seed"], fixed=explicit, trials=self.options.trials, log=self._say)
        self.searched += result.seconds
        files = result.files(f"{name} on {self.dataset} (seed {self.fit_args['seed']})")
        if not result.values:
            return explicit, None, (result.record(), files, result.summary(name))
        return {**result.values, **explicit}, result.best_fit, (result.record(), files, result.summary(name))


def best_records(runs: dict[str, ModelRun], baselines: dict[str, dict[str, BaselineRun]]) -> dict[str, dict[str, Any]]:
    """Per task trained, ``trainer.best.choose`` over the models of the task's first protocol in this run
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
    X, _ = _positives(inter, positive_threshold(inter))
    return fit_baseline(best.TASK_BASELINE[task], TrainData(X, rating_range=(0.0, 1.0)))


def _publish(
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
    import dataclasses

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
            files={artifacts.CURVE_FILE: png, artifacts.TRAINED_PAIRS_FILE: run.trained_pairs,
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
    return artifacts.publish(root, staged, manifest, popularity=popularity, keep=keep, carry_from=carry_from)


def _top_lists(inter: Interactions, runs: dict[str, ModelRun], data_read_at: float, from_database: bool,
               device: torch.device | None) -> dict[str, tuple[dict[str, bytes], dict[str, Any]]]:
    """{model: (its list files, their manifest entry)} for each refit ranker (its rows are every user of the
    data); the seconds each took go in its timings, so the run summary reports them."""
    from trainer.settings import get_settings
    from trainer.top_lists import compute_top_lists

    n = get_settings().TOP_LIST_SIZE
    eligible = {name: run for name, run in runs.items()
                if n > 0 and run.refit and run.published.task == "ranking" and not run.published.sequential}
    if not eligible:
        return {}
    X, _ = _positives(inter, positive_threshold(inter))  # the input the service builds from the same history
    seen = sp.csr_matrix((np.ones(len(inter), np.float32), (inter.users, inter.items)), shape=X.shape)
    seen.sum_duplicates()
    out = {}
    for name, run in eligible.items():
        lists = compute_top_lists(run.published, X, seen, n, device=None if device is None else str(device))
        run.timings["top_lists_seconds"] = round(lists.seconds, 3)
        out[name] = (lists.files(), lists.info(data_read_at, from_database))
    return out


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs, so the scheduler can repeat it."""

    source: SourceSpec
    models: str | tuple[str, ...] = "all"
    hyper_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    artifacts_dir: Path = Path(".artifacts")
    keep: int = 5
    gate: bool = True
    gate_tolerance: float = DEFAULT_GATE_TOLERANCE
    refit: bool = True
    progress: bool = True
    precision: str = "fp32"
    tune: Any = None  # trainer.tune.TuneOptions: search first; None: reuse the latest version's tuned values

    def run(self) -> TrainReport:
        return train_all(
            self.source, self.models, self.hyper_overrides, self.device, self.seed, self.artifacts_dir,
            keep=self.keep, gate=self.gate, gate_tolerance=self.gate_tolerance, refit=self.refit,
            progress=self.progress, precision=self.precision, tune=self.tune,
        )
