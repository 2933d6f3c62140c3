"""Experiments as the service runs them: created (admin API or ``EXPERIMENTS_FILE``), checked against
the models that can serve them, stopped, and the running one known to every replica.

The experiments live in the database, so every replica serves the same ones. A replica never
reads them per request: a thread checks a fingerprint of the table (``crud.online.experiments_fingerprint``,
one aggregate) every ``EXPERIMENTS_REFRESH_S`` and reloads them only when it changed; the replica
that created or stopped one reloads at once. One experiment runs at a time (it decides which model
a request that names none gets); creating another while one runs is a 409.
"""

from __future__ import annotations

import json
import logging
import threading
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.errors import ApiError
from service.experiments.assignment import HOLDOUT_MODEL, Experiment, from_config
from service.model_store import ModelStore, ServingVersion, prepare_version
from service.poller import Poller
from storage import crud
from storage.crud import online

log = logging.getLogger("service.experiments")


def experiment_of(row: online.ExperimentRow) -> Experiment:
    return from_config({**row.definition, "started_at": row.started_at and online.as_utc(row.started_at),
                        "stopped_at": row.stopped_at and online.as_utc(row.stopped_at)})


def build(section: dict[str, Any], store: ModelStore, load_version: Callable[[str], ServingVersion]) -> Experiment:
    """The experiment a request body or a config file section defines, once it can serve; a 422 naming
    what is wrong otherwise."""
    try:
        experiment = from_config({k: v for k, v in section.items() if k not in ("started_at", "stopped_at")})
    except (ValueError, TypeError) as exc:
        raise ApiError(422, "invalid_experiment", str(exc), {"field": _field_named(str(exc))}) from None
    check_servable(experiment, store, load_version)
    if experiment.shadow and (experiment.kind != "ab" or len(experiment.arms) < 2):
        raise ApiError(422, "invalid_experiment", "shadow mode serves the first arm and scores the others unserved: it needs "
                       "an A/B experiment with at least 2 arms", {"field": "shadow"})
    return experiment


def _field_named(message: str) -> str | None:
    """The body field ``from_config``'s message is about (its messages name it in words)."""
    for words, field in (("shares", "arms.share"), ("share", "arms.share"), ("arm name", "arms.name"), ("holdout", "holdout"),
                         ("interleaving needs", "arms"), ("kind", "kind"), ("seed", "seed"), ("id", "id"), ("arm", "arms")):
        if words in message:
            return field
    return None


def check_servable(experiment: Experiment, store: ModelStore, load_version: Callable[[str], ServingVersion]) -> None:
    """Every arm names a model of the version it names (the served one when none; any model ranks items
    for the recommendation route), a version other than the served one loads (``load_version``), and a
    holdout has the popularity list to serve."""
    served = store.current
    if served is None:
        raise ApiError(503, "model_unavailable", "no model version is loaded yet: experiments are checked against it",
                       None, {"Retry-After": "5"})
    for n, arm in enumerate(experiment.arms):
        version = served
        if arm.version is not None and arm.version != served.version:
            if Path(arm.version).name != arm.version or arm.version.startswith("."):  # a folder of the registry, no path
                raise ApiError(422, "unknown_version", f"arm {arm.name}: {arm.version!r} is not a version name",
                               {"field": f"arms.{n}.version"})
            try:
                version = load_version(arm.version)
            except Exception as exc:  # noqa: BLE001 - any reason it cannot serve: the body names the field, the log why
                log.warning("experiment %s: version %s does not load: %s", experiment.id, arm.version, exc)
                raise ApiError(422, "unknown_version", f"arm {arm.name}: version {arm.version!r} is not in the model "
                               f"registry or does not load ({type(exc).__name__})", {"field": f"arms.{n}.version"}) from None
        if arm.model not in version.models:
            raise ApiError(422, "unknown_model", f"arm {arm.name}: model {arm.model!r} is not in version {version.version}",
                           {"field": f"arms.{n}.model", "model": arm.model, "available": sorted(version.models)})
    if experiment.holdout > 0 and HOLDOUT_MODEL not in served.models:
        raise ApiError(422, "invalid_experiment", f"a holdout is served the {HOLDOUT_MODEL} list, and the served version "
                       f"{served.version} has no {HOLDOUT_MODEL!r} model", {"field": "holdout"})


def read_experiments_file(path: Path) -> list[dict[str, Any]]:
    """The experiment sections of a TOML file (``[[experiments]]``) or a JSON one (a list, or {"experiments": [...]})."""
    text = path.read_text()
    parsed = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    sections = parsed.get("experiments", []) if isinstance(parsed, dict) else parsed
    if not isinstance(sections, list):
        raise ValueError(f"{path}: experiments must be a list of tables/objects")
    return sections


class ExperimentRegistry:
    """The running experiment of this replica, kept in step with the database by a polling thread."""

    def __init__(self, session_factory: Callable[[], Session], store: ModelStore, refresh_s: float) -> None:
        self._session_factory = session_factory
        self._store = store
        self.refresh_s = refresh_s
        self.running: Experiment | None = None  # replaced in one assignment; a request reads it once
        self._pinned: dict[str, ServingVersion] = {}  # versions the running experiment's arms name, loaded
        self._fingerprint: tuple | None = None
        self._lock = threading.RLock()  # a refresh loads pinned versions under it, as a create does
        self._watcher = Poller("experiments-watcher", self.refresh, refresh_s)

    # ---- changes (worker threads) -----------------------------------------------------------
    def create(self, section: dict[str, Any]) -> online.ExperimentRow:
        """Check, store and start an experiment; 409 if the id exists or another one is running."""
        experiment = build(section, self._store, self._loaded)
        definition = {k: v for k, v in experiment.to_config().items() if k not in ("started_at", "stopped_at")}
        with self._session_factory() as session:
            running = [row.id for row in online.experiments(session, active_only=True)]
            if running:
                raise ApiError(409, "experiment_running", f"experiment {running[0]!r} is running: stop it first (one "
                               "experiment decides the model of requests that name none)", {"running": running[0]})
            if not online.create_experiment(session, experiment.id, experiment.kind, definition, datetime.now(UTC)):
                raise ApiError(409, "experiment_exists", f"an experiment {experiment.id!r} exists already (ids are never "
                               "reused: its impressions stay attached to it)", {"id": experiment.id})
            row = online.experiment(session, experiment.id)
        self.refresh(force=True)
        return row

    def stop(self, id_: str) -> online.ExperimentRow:
        with self._session_factory() as session:
            row = online.stop_experiment(session, id_, datetime.now(UTC))
        if row is None:
            raise ApiError(404, "unknown_experiment", f"no experiment {id_!r}", {"id": id_})
        self.refresh(force=True)
        return row

    def create_from_file(self, path: Path) -> None:
        """At start: create the file's experiments whose id is new (one that exists is left as it is)."""
        for section in read_experiments_file(path):
            try:
                self.create(section)
                log.info("experiment %s created from %s", section.get("id"), path)
            except ApiError as exc:
                if exc.code in ("experiment_exists", "experiment_running"):
                    log.info("experiment %s from %s not created: %s", section.get("id"), path, exc.message)
                else:
                    raise ValueError(f"{path}: experiment {section.get('id')!r}: {exc.message}") from None

    # ---- keeping in step ---------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Reload the running experiment if the table changed (or ``force``); True when it was reloaded. Either
        way, the versions its arms pin are loaded (the served version may have moved away from one)."""
        with self._lock:
            with self._session_factory() as session, crud.reads(session) as db:
                fingerprint = online.experiments_fingerprint(db)
                changed = force or fingerprint != self._fingerprint
                rows = online.experiments(db, active_only=True) if changed else []
            if changed:
                now = datetime.now(UTC)
                self.running = next((e for e in map(experiment_of, rows) if e.running(now)), None)  # the earliest started
                self._fingerprint = fingerprint
            self._load_pinned()
            return changed

    def _loaded(self, version: str) -> ServingVersion:
        """A version an arm pins, loaded once (``prepare_version``: the same checks as a version that serves)."""
        with self._lock:
            if version not in self._pinned:
                self._pinned[version] = prepare_version(self._store.root, version, self._store.device)
                log.info("version %s loaded for an experiment's arm", version)
            return self._pinned[version]

    def _load_pinned(self) -> None:
        """Load the versions the running experiment's arms pin (other than the one served), drop the others."""
        running, served = self.running, self._store.current
        wanted = {a.version for a in running.arms if a.version is not None} if running is not None else set()
        for version in sorted(wanted):
            if served is None or version != served.version:
                self._loaded(version)
        self._pinned = {v: loaded for v, loaded in self._pinned.items() if v in wanted}

    def pinned_version(self, version: str) -> ServingVersion:
        """An arm's version, loaded (a 503 for the moment between a swap away from it and the next check)."""
        loaded = self._pinned.get(version)
        if loaded is None:
            served = self._store.current
            if served is not None and served.version == version:
                return served
            raise ApiError(503, "experiment_version_loading", f"version {version} of the running experiment is being "
                           "loaded", {"version": version}, {"Retry-After": str(max(1, round(self.refresh_s)))})
        return loaded

    def start(self, experiments_file: Path | None) -> None:
        """At start: create the file's experiments, learn the running one, and start the watcher. A database
        that cannot be read yet is logged; the watcher learns the experiments once it can."""
        try:
            if experiments_file is not None:
                self.create_from_file(experiments_file)
            self.refresh(force=True)
        except SQLAlchemyError as exc:
            log.warning("could not read the experiments at start (%s); the watcher tries every %.0f s",
                        type(getattr(exc, "orig", None) or exc).__name__, self.refresh_s)
        self.start_watcher()

    def start_watcher(self) -> None:
        self._watcher.start()

    def stop_watcher(self) -> None:
        self._watcher.stop(timeout_s=5)
