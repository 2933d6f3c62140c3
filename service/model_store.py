"""The model version being served, swapped atomically when the registry's ``LATEST`` moves.

``ModelStore.current`` is one reference to an immutable ``ServingVersion``. A request
reads it once and works on that object to the end, so a swap never changes a model
under a running request. New versions are loaded and checked off the request path (the
watcher thread, or ``POST /admin/reload`` in a worker thread): ``registry.load_version``
checks the manifest, the files, id maps against weight shapes and a smoke
recommendation; here each model also predicts for a real history and builds its id
indexes. Only then is the reference replaced.

A version that fails is refused (logged, counted, remembered with a stamp of its files)
and the older versions on disk are tried, newest first, at start-up as on a reload, down
to the one already served, which stays if none of them loads. A version is all or nothing:
it is one trained snapshot (models, id maps and popularity list together, named in every
answer's ``model_version``), so a damaged model takes its whole version out and the
previous whole version serves all models. A refused version is tried again when its files
change (``version_stamp``), or on ``POST /admin/reload``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from registry import ArtifactError, LoadedModel, latest_version, list_versions, load_version, version_stamp
from registry import best
from service.metrics import Metrics
from service.poller import Poller

log = logging.getLogger("service.model_store")


class IdIndex:
    """External id -> position (-1 for an unknown id), for a whole array of ids at once.

    A dict lookup per id, deliberately: it measured faster than ``pandas.Index.get_indexer``
    (a fixed cost per call) at every request size (bench/RESULTS.md, "Figures moved out").
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.positions = {i: n for n, i in enumerate(ids)}
        self.is_unique = len(self.positions) == len(ids)

    @classmethod
    def from_positions(cls, positions: dict[str, int], n_ids: int) -> IdIndex:
        """Wrap a map already built (the artifact's ``ids.json`` maps), not a second copy of it."""
        index = cls.__new__(cls)
        index.positions, index.is_unique = positions, len(positions) == n_ids
        return index

    def get_indexer(self, ids: Sequence[str]) -> np.ndarray:
        get = self.positions.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    def get(self, id_: str) -> int:
        return self.positions.get(id_, -1)


class ItemVectors:
    """Item embeddings for cosine similarity: the model's own weights, read in place, and each
    vector's inverse L2 norm. Not a normalised copy: EASE's vectors are B's columns, a second
    1.6 GB per replica at 20,000 items (bench/RESULTS.md, "Memory")."""

    NORM_BLOCK_ROWS = 256  # rows widened to float64 at a time: ~40 MB at 20,000 dimensions

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors.view()
        self.vectors.flags.writeable = False  # the served model's weights: never written through here
        norms = np.empty(len(vectors), dtype=np.float64)
        for start in range(0, len(vectors), self.NORM_BLOCK_ROWS):
            # float64, so a norm is non-finite only if a value is (float32 squares overflow at 1.8e19)
            norms[start : start + self.NORM_BLOCK_ROWS] = np.linalg.norm(
                vectors[start : start + self.NORM_BLOCK_ROWS].astype(np.float64), axis=1)
        self.finite = bool(np.isfinite(norms).all())
        self.inverse_norms = (1.0 / np.maximum(norms, 1e-12)).astype(np.float32)

    def cosine_to(self, col: int) -> np.ndarray:
        """Cosine similarity of every item to item ``col`` (a new array)."""
        return (self.vectors @ self.vectors[col]) * (self.inverse_norms * self.inverse_norms[col])


WRITE_CLOCK_MARGIN_S = 60.0  # the trainer's and the service's clocks may disagree by this much


@dataclass(frozen=True)
class StoredLists:
    """A ranker's top-N of every user it knows, published with it (``trainer.top_lists``), memory-mapped."""

    items: np.ndarray  # int32 [users, N], by the model's user row; -1 pads (a first -1: no list)
    scores: np.ndarray  # float32 [users, N]
    # a user written through the API at or after this (epoch seconds) has a history the lists never saw;
    # 0 when the lists come from a file or dataset: the database's writes are none of theirs
    valid_before: float


def _stored_lists(loaded: LoadedModel) -> StoredLists | None:
    if loaded.top_items is None or loaded.model.task != "ranking":
        return None
    info = loaded.info["top_lists"]
    valid_before = float(info["data_read_at"]) - WRITE_CLOCK_MARGIN_S if info.get("from_database") else 0.0
    # plain ndarrays over the same mapping (np.memmap's subclass hooks cost more than a row's filtering), in C order:
    # ``inference.stored_recommendation`` reads rows through memoryviews (a Fortran-ordered file is copied)
    return StoredLists(np.ascontiguousarray(loaded.top_items), np.ascontiguousarray(loaded.top_scores), valid_before)


@dataclass(frozen=True)
class ServingModel:
    """A loaded model plus the vectorised id maps the service needs."""

    name: str
    loaded: LoadedModel
    item_index: IdIndex  # external item id -> column
    user_index: IdIndex  # external user id -> training row
    item_ids: np.ndarray  # column -> external item id
    item_vectors: ItemVectors | None  # for similar items; None if the model has no item embeddings
    # Rankers are trained on positives (protocols.md: rating >= 4 on 1-5). When the manifest says
    # where that line was, only those ratings (and implicit feedback) are fed to the model.
    positive_threshold: float | None = None
    # Rating models: what a user with no usable history is rated by (``inference.user_source`` says who)
    cold_start: Any = None
    lists: StoredLists | None = None  # each known user's top-N (``inference.stored_recommendation``)

    @property
    def model(self):
        return self.loaded.model

    @property
    def task(self) -> str:
        return self.loaded.model.task

    @property
    def can_fold_in(self) -> bool:
        return self.loaded.model.can_fold_in

    def cold_ratings(self, cols: np.ndarray) -> np.ndarray:
        """Ratings of item columns ``cols`` for a user with no usable history: the baseline's for an
        empty row (global mean + item bias, user bias 0), clipped to the scale as every rating is."""
        empty = sp.csr_matrix((1, self.cold_start.n_items), dtype=np.float32)
        return self.cold_start.predict(empty, cols, pair_rows=np.zeros(len(cols), dtype=np.int64))


@dataclass(frozen=True)
class ServingVersion:
    version: str
    manifest: dict
    models: dict[str, ServingModel]
    popular_items: pd.Index  # external ids, most popular first
    popular_counts: np.ndarray
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # task -> (model, why): what "best" names here (``registry.best.default_model``), resolved once per version
    defaults: dict[str, tuple[str | None, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ReloadOutcome:
    version: str | None  # served after the reload
    previous: str | None
    swapped: bool
    message: str
    refused: bool = False  # the version LATEST names (or LATEST itself) could not be served
    requested: str | None = None  # the version LATEST names; None when it names none


@dataclass(frozen=True)
class Refusal:
    reason: str
    stamp: tuple  # ``version_stamp`` when it was refused: tried again once the files differ


def _item_vectors(loaded: LoadedModel) -> ItemVectors | None:
    try:
        embeddings = loaded.model.item_embeddings()  # a view of the weights (float32 by now)
    except NotImplementedError:
        return None
    return ItemVectors(embeddings.detach().float().cpu().numpy())


def _cold_start(loaded: LoadedModel) -> Any:
    """A rating model's cold-start baseline; for a version published before baselines were, a
    constant at the middle of its rating range: no mean was saved, and an empty row fed to the
    model answers an extreme (DeepRec's 1.0)."""
    model = loaded.model
    if model.task != "rating":
        return None
    if loaded.cold_start is not None:
        return loaded.cold_start.float()
    from models.baselines import GlobalMean, GlobalMeanConfig

    middle = (model.rating_range[0] + model.rating_range[1]) / 2
    fallback = GlobalMean(GlobalMeanConfig(), model.n_items, model.n_users, model.rating_range)
    fallback.mean.fill_(middle)
    return fallback.to(model.device).eval()


def _serving_model(name: str, loaded: LoadedModel, popular: np.ndarray, manifest: dict) -> ServingModel:
    model = loaded.model
    # Served in float32: a ranking or a clipped rating needs no more. EASE's B can be float64
    # from the solve (ease.dtype, models/ease.py); float32 halves memory and scoring time (bench/RESULTS.md, "Figures moved out").
    model.float()
    items = IdIndex.from_positions(loaded.item_index, len(loaded.item_ids))
    threshold = (loaded.info or {}).get("positive_threshold", manifest.get("positive_threshold"))
    served = ServingModel(
        name=name,
        loaded=loaded,
        item_index=items,
        user_index=IdIndex.from_positions(loaded.user_index, len(loaded.user_ids)),
        item_ids=np.asarray(loaded.item_ids, dtype=object),
        item_vectors=_item_vectors(loaded),
        positive_threshold=float(threshold) if threshold is not None and model.task == "ranking" else None,
        cold_start=_cold_start(loaded),
        lists=_stored_lists(loaded),
    )
    if not items.is_unique or not served.user_index.is_unique:
        raise ArtifactError(f"model {name}: ids.json holds duplicate ids")
    # Smoke test: a real history (the most popular items) as user 0's, through the same calls requests make.
    cols = items.get_indexer(popular[:5])
    cols = np.unique(cols[cols >= 0]) if len(popular) else np.array([], dtype=np.int64)
    row = sp.csr_matrix((np.ones(len(cols), np.float32), (np.zeros(len(cols), int), cols)), shape=(1, model.n_items))
    users = np.zeros(1, dtype=np.int64)
    ids, scores = model.recommend(row, k=min(10, model.n_items), users=users, timestamps=row)
    if not np.isfinite(scores[ids >= 0]).all():
        raise ArtifactError(f"model {name} gives non-finite scores for a real history")
    if model.task == "rating":
        ratings = model.predict(row, np.zeros(1, dtype=np.int64), users=users)
        cold = served.cold_ratings(cols)
        if not (np.isfinite(ratings).all() and np.isfinite(cold).all()):
            raise ArtifactError(f"model {name} predicts non-finite ratings")
    if served.item_vectors is not None and not served.item_vectors.finite:
        raise ArtifactError(f"model {name} has non-finite item embeddings")
    return served


def prepare_version(root: Path, version: str, device: str = "cpu") -> ServingVersion:
    """Load and check a whole version onto ``device``; raises ``ArtifactError`` (or any error) if it cannot serve."""
    loaded = load_version(root, version, map_location=device)
    popular = np.asarray(loaded.popular_items, dtype=object)
    if len(popular) == 0:
        raise ArtifactError(f"version {version} has an empty popularity list")
    models = {name: _serving_model(name, lm, popular, loaded.manifest) for name, lm in loaded.models.items()}
    without = sorted(name for name, lm in loaded.models.items() if lm.model.task == "rating" and lm.cold_start is None)
    if without:
        log.warning("version %s has no cold-start baseline for %s (published before they were): users with no usable "
                    "history are rated at the middle of the rating scale until the next training", version, ", ".join(without))
    tasks = {name: served.task for name, served in models.items()}
    return ServingVersion(
        version=loaded.version, manifest=loaded.manifest, models=models, popular_items=pd.Index(popular),
        popular_counts=np.asarray(loaded.popular_counts, dtype=np.float64),
        defaults={task: best.default_model(loaded.manifest, task, tasks) for task in best.TASK_BASELINE},
    )


class ModelStore:
    """Holds the served version and the watcher thread that polls ``LATEST``."""

    def __init__(self, root: Path, metrics: Metrics, interval_s: float, torch_threads: int | None = None,
                 device: str = "cpu") -> None:
        self.root = Path(root)
        self.device = device  # where the models score: recommend() masks and ranks there too
        self.torch_threads = torch_threads  # scoring threads, set when a version loads (torch comes in with it)
        self.metrics = metrics
        self.interval_s = interval_s
        self.current: ServingVersion | None = None  # replaced in one assignment; readers grab it once
        self.requested: str | None = None  # the version LATEST named at the last reload
        self.fallback: str | None = None  # why the served version is not the one LATEST names; None when it is
        self.refused: dict[str, Refusal] = {}
        self.swaps = 0
        self.last_error: str | None = None
        self._reload_lock = threading.Lock()  # one load at a time (watcher and admin)
        self._watcher = Poller("model-watcher", self.reload, interval_s)

    def reload(self, *, retry_refused: bool = False) -> ReloadOutcome:
        """Serve the version ``LATEST`` names; if it cannot serve, the newest older one that can.

        Versions are tried newest first from the one ``LATEST`` names, stopping at the one
        served now, which stays if none loads. A version refused before is skipped while its
        files are unchanged, unless ``retry_refused``. With ``LATEST`` unreadable the served
        version stays; with nothing served yet, the newest version on disk that loads serves.
        """
        with self._reload_lock:
            previous = self.current.version if self.current else None
            on_disk = list_versions(self.root)
            try:
                requested, pointer_error = latest_version(self.root), None
            except ArtifactError as exc:
                requested, pointer_error = None, self._without_root(str(exc))
            if requested is None and pointer_error is None:
                return ReloadOutcome(previous, previous, False, self._without_root(f"no version published in {self.root}"))
            self.requested = requested
            self.refused = {v: r for v, r in self.refused.items() if v in on_disk or v == requested}
            if requested is not None and requested == previous:
                self._set_fallback(None)
                return ReloadOutcome(previous, previous, False, f"version {requested} is already served", requested=requested)
            if pointer_error is not None:
                if pointer_error != self.fallback:  # met again at every poll: reported once
                    self._report(pointer_error)
                candidates = [] if previous else on_disk[::-1]
            else:
                candidates = [requested, *(v for v in reversed(on_disk) if v < requested)]
            for version in candidates:
                if version == previous:
                    break  # nothing newer loads: keep it
                if self._try(version, retry_refused):
                    break
            served = self.current.version if self.current else None
            if served is not None and served == requested:
                self._set_fallback(None)
                return ReloadOutcome(served, previous, True, f"now serving version {served}", requested=requested)
            why = pointer_error or f"version {requested} refused: {self.refused[requested].reason}"
            self._set_fallback(why)
            older = "" if pointer_error else "older "
            if served is None:
                instead = f"no {older}version loads, none is served"
            elif served == previous:
                instead = f"still serving {served}"
            else:
                instead = f"now serving {served}, the newest {older}version that loads"
            return ReloadOutcome(served, previous, served != previous, f"{why}; {instead}", True, requested)

    def _try(self, version: str, retry_refused: bool) -> bool:
        """Load ``version`` and swap it in; False (and remembered as refused) if it cannot serve."""
        stamp = version_stamp(self.root, version)
        known = self.refused.get(version)
        if known is not None and known.stamp == stamp and not retry_refused:
            return False
        started = time.perf_counter()
        self._set_torch_threads()
        try:
            serving = prepare_version(self.root, version, self.device)
        except Exception as exc:  # any failure to load means "do not serve this version"
            log.error("version %s cannot load: %s: %s", version, type(exc).__name__, exc)
            reason = self._without_root(str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__} while loading (see the log)")
            self.refused[version] = Refusal(reason, stamp)
            self._report(f"version {version} refused: {reason}")
            return False
        previous = self.current.version if self.current else None
        self.current = serving  # the atomic swap: requests that already hold the old object keep it
        self.swaps += 1
        self.refused.pop(version, None)
        self.metrics.model_swaps.inc()
        self.metrics.served_version(version)
        log.info("serving version %s (was %s), loaded in %.2fs", version, previous, time.perf_counter() - started)
        return True

    def _without_root(self, text: str) -> str:
        """``text`` with the registry's own path cut: reasons reach clients (/models, 409s), the path only the log."""
        for root in {str(self.root.resolve()), str(self.root)}:
            text = text.replace(root + "/", "").replace(root, "the model registry")
        return text

    def _report(self, error: str) -> None:
        log.error("%s (serving %s)", error, self.current.version if self.current else "nothing")
        self.metrics.model_refused.inc()
        self.last_error = error

    def _set_fallback(self, why: str | None) -> None:
        self.fallback = why
        if why is None:
            self.last_error = None
        self.metrics.model_fallback.set(0 if why is None else 1)

    def _set_torch_threads(self) -> None:
        if self.torch_threads is None:
            return
        import torch  # not at import: an API with no version to serve stays without torch (bench/RESULTS.md, "Memory")

        if torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)  # process-wide

    # ---- watcher ------------------------------------------------------------------------
    def start_watcher(self) -> None:
        self._watcher.start()

    def stop_watcher(self) -> None:
        self._watcher.stop()
