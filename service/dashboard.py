"""What each dashboard page shows, as plain dicts for its template: between the thin routes
(``service.api.routes.dashboard``) and the data (``crud``, the model store, the registry, the metrics).

The lists a page shows are the API's own answers: ``serving.recommendations``, ``ratings`` and
``similar`` are called in process (cache included), never over HTTP, so the page and the API
cannot disagree. A published version never changes, so what is read from its files (manifest,
metrics.json) is kept in memory by version name.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from errors import UserError
import registry
from registry import best
from service import serving, svg
from service.cache import Cache
from service.core.config import Settings
from service.errors import ApiError
from service.model_store import ModelStore, StoredLists
from service.parts import ServiceParts
from service.schemas import RatingRequest, RecommendationRequest
from storage import crud
from storage.session import retry_if_dropped

RECENT_RUNS = 5  # versions listed under "last training runs"
NEXT_RUN_FILE = "SCHEDULE.json"  # in the registry, written by ``trainer.schedule.record_next_run`` (same name: tested)
HISTORY_ROWS = 50  # a user's latest interactions shown; the count says how many there are in all
LIST_K = 10  # items per list on the Users and Items pages


def when(timestamp: float | None) -> str:
    return "" if timestamp is None else datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


# ---- the registry: manifests and metrics.json of published (immutable) versions ----------------
@lru_cache(maxsize=256)
def _manifest(root: str, version: str) -> dict[str, Any] | None:
    try:
        return registry.read_manifest(root, version)
    except UserError:  # removed by retention, or damaged: the page says "unreadable"
        return None


@lru_cache(maxsize=1024)
def _model_metrics(root: str, version: str, name: str) -> dict[str, Any]:
    manifest = _manifest(root, version) or {"models": {}}
    folder = Path(root) / version / manifest["models"].get(name, {}).get("path", name)
    try:
        return json.loads((folder / registry.METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _test_metrics(entry: dict[str, Any], metrics_json: dict[str, Any]) -> dict[str, float]:
    return entry.get("metrics") or metrics_json.get("test") or {}


def recent_runs(settings: Settings) -> list[dict[str, Any]]:
    """The latest published versions, newest first, each model's gate decision (or "carried from")."""
    root = str(settings.ARTIFACTS_DIR)
    runs = []
    for version in reversed(registry.list_versions(root)[-RECENT_RUNS:]):
        manifest = _manifest(root, version)
        if manifest is None:
            runs.append({"version": version, "created_at": None, "models": []})
            continue
        models = []
        for name, entry in manifest["models"].items():
            if entry.get("carried_from"):
                decision = f"carried from {entry['carried_from']}"
            else:
                gate = _model_metrics(root, version, name).get("gate")
                decision = gate.get("message", "passed" if gate.get("passed") else "refused") if gate else "no gate (first version of this model)"
            models.append({"name": name, "decision": decision})
        runs.append({"version": version, "created_at": manifest.get("created_at"), "models": models})
    return runs


def _previous_version(settings: Settings, current: str | None) -> str | None:
    versions = registry.list_versions(settings.ARTIFACTS_DIR)
    older = [v for v in versions if current is None or v < current]
    return older[-1] if older else None


# ---- Overview -------------------------------------------------------------------------------
def next_run(settings: Settings, now: float) -> dict[str, Any]:
    """The next scheduled training, as the trainer's ``schedule`` command records it in the registry
    (only that process knows its trigger); ``due`` None when no schedule runs."""
    try:
        record = json.loads((Path(settings.ARTIFACTS_DIR) / NEXT_RUN_FILE).read_text(encoding="utf-8"))
        due = float(record["next_run"])
    except FileNotFoundError:
        return {"due": None, "text": "no schedule (start one with python -m trainer schedule)", "overdue": False}
    except (OSError, ValueError, KeyError, TypeError):
        return {"due": None, "text": f"the schedule's record ({NEXT_RUN_FILE}) is unreadable", "overdue": False}
    trigger = str(record.get("trigger") or "")
    overdue = due < now - 60  # a run is recorded as it starts: a minute late, the scheduler has likely stopped
    text = f"{when(due)} UTC ({trigger})" if not overdue else \
        f"was due {when(due)} UTC ({trigger}); the scheduler (pid {record.get('pid')}) seems to have stopped"
    return {"due": due, "text": text, "overdue": overdue}


def health(session: Session, cache: Cache, store: ModelStore) -> list[dict[str, Any]]:
    """Database, cache and model store: up or not, and why, as /readyz sees them."""
    try:
        retry_if_dropped(lambda: crud.ping(session))
        database = (True, "reachable")
    except SQLAlchemyError as exc:
        database = (False, f"unreachable: {type(getattr(exc, 'orig', None) or exc).__name__}")
    version = store.current
    if version is None:
        models = (False, "no version loaded (the service log says why)")
    elif store.fallback:
        models = (False, f"serving {version.version}; the version LATEST names was refused: {store.fallback}")
    else:
        models = (True, f"serving {version.version}")
    cached = cache.backend.ping()
    checks = {"database": database, "cache": (cached, f"{cache.backend.name} {'reachable' if cached else 'unreachable'}"), "model store": models}
    return [{"name": name, "ok": ok, "detail": detail} for name, (ok, detail) in checks.items()]


def overview(session: Session, cache: Cache, store: ModelStore, settings: Settings) -> dict[str, Any]:
    report = serving.models_report(store, settings)
    root = str(settings.ARTIFACTS_DIR)
    previous = _previous_version(settings, report["version"])
    previous_manifest = _manifest(root, previous) if previous else None
    current_manifest = store.current.manifest if store.current else {}
    models = []
    for model in report["models"]:
        entry = (current_manifest.get("models") or {}).get(model["name"], {})
        before = None
        if previous_manifest and model["name"] in previous_manifest["models"]:
            before = _test_metrics(previous_manifest["models"][model["name"]], _model_metrics(root, previous, model["name"]))
        models.append({
            **model,
            "previous": before,
            # the task's baselines on the model's own split: the manifest's {protocol: {baseline: {"test": ...}}}
            "baselines": {} if entry.get("baseline") else {
                name: record.get("test") or {}
                for name, record in ((current_manifest.get(best.BASELINES_KEY) or {}).get(entry.get("protocol")) or {}).items()
            },
            "carried_from": entry.get("carried_from"),
        })
    metric_names = sorted({m for model in models for m in model["metrics"]})
    return {
        "report": report, "models": models, "metric_names": metric_names, "previous": previous,
        "runs": recent_runs(settings), "health": health(session, cache, store), "next_run": next_run(settings, time.time()),
        # what a request naming no model gets (the "best" setting resolved by the version), not the setting's word
        "defaults": {endpoint: next((m["name"] for m in report["models"] if endpoint in m["default_for"]), "–")
                     for endpoint in ("recommendations", "ratings")},
    }


# ---- Model ----------------------------------------------------------------------------------
def learning_curve(metrics_json: dict[str, Any], valid_metric: str | None) -> svg.Markup | None:
    """Training loss (right scale) and the validation metric (left) per epoch, the kept epoch marked."""
    curve = [p for p in metrics_json.get("curve") or [] if isinstance(p, dict) and "epoch" in p]
    if not curve:
        return None
    metric = valid_metric or next((k for p in curve for k in p if k not in ("epoch", "loss", "seconds")), None)
    series = []
    if metric and any(metric in p for p in curve):
        points = [p for p in curve if metric in p]
        series.append(svg.Series(f"validation {metric}", [p["epoch"] for p in points], [p[metric] for p in points]))
    losses = [p for p in curve if p.get("loss") is not None]
    if losses:
        series.append(svg.Series("training loss", [p["epoch"] for p in losses], [p["loss"] for p in losses],
                                 axis="right" if series else "left"))
    best = metrics_json.get("best_epoch")
    return svg.line_chart("learning curve", series, x_label="epoch", marker_x=best,
                          marker_label=f"kept epoch {best}" if best is not None else "")


def _config(model: Any) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}


def model_page(store: ModelStore, settings: Settings, name: str) -> dict[str, Any]:
    version = serving.serving_version(store)
    served = version.models.get(name)
    if served is None:
        raise ApiError(404, "unknown_model", f"model {name!r} is not in the served version {version.version}",
                       {"model": name, "available": sorted(version.models)})
    metrics_json = served.loaded.metrics or {}
    info = served.loaded.info or {}
    valid = metrics_json.get("valid") or {}
    valid_metric = next((k for k in valid if k != "higher_is_better"), None) or (info.get("valid_metric") or {}).get("name")
    return {
        "name": name, "version": version.version, "task": served.task, "info": info,
        # metrics.json's record of the run, else the model's own config (saved with its weights)
        "hyper": metrics_json.get("hyper") or _config(served.model),
        "timings": metrics_json.get("timings") or (version.manifest.get("timings") or {}).get(name) or metrics_json.get("train") or {},
        "test": metrics_json.get("test") or info.get("metrics") or {},
        "valid": valid, "best_epoch": metrics_json.get("best_epoch"), "epochs_run": metrics_json.get("epochs_run"),
        "gate": metrics_json.get("gate"), "snapshot": version.manifest.get("source") or {},
        "n_users": served.model.n_users, "n_items": served.model.n_items,
        "curve": learning_curve(metrics_json, valid_metric), "curve_points": len(metrics_json.get("curve") or []),
    }


# ---- Data -----------------------------------------------------------------------------------
def data_page(session: Session) -> dict[str, Any]:
    with crud.reads(session) as db:
        counts = crud.counts(db)
        histogram = crud.rating_histogram(db)
        width, over_time = crud.interactions_over_time(db)
        popularity = crud.item_interaction_counts(db)
    n = counts["interactions"]
    head = sum(popularity[: max(1, len(popularity) // 5)]) if popularity else 0
    return {
        "counts": counts,
        "density": n / (counts["users"] * counts["items"]) if counts["users"] and counts["items"] else 0.0,
        "histogram": histogram,
        "histogram_chart": svg.bar_chart("interactions per rating", ["implicit" if r is None else f"{r:g}" for r, _ in histogram],
                                         [c for _, c in histogram]) if histogram else None,
        "over_time_chart": svg.bar_chart(f"interactions per {width / 86400:.3g} days",
                                         [datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d") for t, _ in over_time],
                                         [c for _, c in over_time]) if over_time else None,
        "span_days": width / 86400,
        "first": when(over_time[0][0]) if over_time else "", "last": when(over_time[-1][0] + width) if over_time else "",
        "long_tail_chart": svg.line_chart("interactions per item, most popular first (log scale)",
                                          [svg.Series("interactions", range(1, len(popularity) + 1), popularity)],
                                          x_label="item rank", log_y=True) if popularity else None,
        "head_share": head / n if n else 0.0,
        "items_with_interactions": len(popularity),
    }


# ---- Users ----------------------------------------------------------------------------------
def _error_text(exc: ApiError) -> str:
    return f"{exc.code}: {exc.message}"


async def user_page(session: Session, parts: ServiceParts, user_id: str, rate_items: list[str]) -> dict[str, Any]:
    """A user's history, every ranker's list with why each item is on it (the API's answer with
    ``explain``, ``serving.recommendations``), and the
    rating models' predictions for ``rate_items`` (``serving.ratings``)."""
    version = serving.serving_version(parts.store)

    def read() -> tuple[int, list]:
        with crud.reads(session) as db:
            return crud.titled_history(db, user_id, HISTORY_ROWS)

    total, history = await run_in_threadpool(retry_if_dropped, read)
    lists = []
    for name, served in version.models.items():
        if served.task != "ranking":
            continue
        try:
            answer = await serving.recommendations(session, parts, user_id,
                                                   RecommendationRequest(k=LIST_K, model=name, explain=True))
            body = json.loads(answer.json)
            for item in body["items"]:  # why: the history items that raise it (the API's reasons, those adding > 0)
                item["why"] = [r["title"] or r["item_id"] for r in item.get("because") or [] if r["contribution"] > 0]
            lists.append({"model": name, **body, "error": None})
        except ApiError as exc:
            lists.append({"model": name, "items": [], "source": None, "error": _error_text(exc)})
    ratings = []
    rating_models = [n for n, m in version.models.items() if m.task == "rating"]
    if rate_items and rating_models:
        serving.check_list("items", rate_items, parts.settings)
        for name in rating_models:
            try:
                answer = await serving.ratings(session, parts,
                                               [RatingRequest(user_id=user_id, item_ids=rate_items, model=name)], many=False)
                ratings.append({"model": name, **json.loads(answer.json), "error": None})
            except ApiError as exc:
                ratings.append({"model": name, "ratings": [], "error": _error_text(exc)})
    return {
        "user_id": user_id, "total": total, "version": version.version, "k": LIST_K, "lists": lists, "ratings": ratings,
        "rate_items": rate_items, "rating_models": rating_models,
        "history": [{"item_id": i, "title": t, "rating": r, "when": when(ts)} for i, t, r, ts in history],
    }


# ---- Items ----------------------------------------------------------------------------------
async def item_search(session: Session, text: str) -> list[dict[str, Any]]:
    def read() -> list:
        with crud.reads(session) as db:
            return crud.search_items(db, text)

    return [{"item_id": i, "title": t} for i, t in await run_in_threadpool(retry_if_dropped, read)]


async def item_title(session: Session, item_id: str) -> str | None:
    def read() -> dict[str, str]:
        with crud.reads(session) as db:
            return crud.item_titles(db, [item_id])

    return (await run_in_threadpool(retry_if_dropped, read)).get(item_id)


async def similar_lists(session: Session, parts: ServiceParts, item_id: str) -> list[dict[str, Any]]:
    """Every model's similar items (the API's answer, ``serving.similar``); a model without item embeddings says so."""
    version = serving.serving_version(parts.store)
    lists = []
    for name in version.models:
        try:
            answer = await serving.similar(session, parts, item_id, LIST_K, name)
            lists.append({"model": name, **json.loads(answer.json), "error": None})
        except ApiError as exc:
            lists.append({"model": name, "items": [], "error": _error_text(exc)})
    return lists


COUNT_BLOCK_USERS = 8192  # users' lists counted at a time: 13 MB of indices at N = 200
_list_counts_lock = threading.Lock()
_list_counts: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, int, int]] = {}


def _times_listed(version: str, name: str, lists: StoredLists, n_items: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per item column, in how many users' stored lists it is within the top ``LIST_K`` and the top N;
    the number of lists; N. Counted once per version (its lists never change), for the served one only."""
    with _list_counts_lock:
        found = _list_counts.get((version, name))
        if found is None:
            if any(v != version for v, _ in _list_counts):
                _list_counts.clear()  # a version no longer served: its counts go with it
            counts = np.zeros(2 * (n_items + 1), dtype=np.int64)
            n, users = lists.items.shape[1], 0
            # one bincount per block of users: column + 1 (the -1 padding lands in bin 0) in the upper half
            # where the rank is within the top LIST_K, the lower half past it; blocks bound the temporaries
            # (all of ML-20M's lists at once: 224 MB of int64 indices)
            upper = (n_items + 1) * (np.arange(n) < LIST_K)
            for start in range(0, lists.items.shape[0], COUNT_BLOCK_USERS):
                block = np.asarray(lists.items[start:start + COUNT_BLOCK_USERS])
                block = block[block[:, 0] >= 0]  # a first -1: no list for that user
                users += len(block)
                counts += np.bincount((block + 1 + upper).ravel(), minlength=len(counts))
            in_top_k = counts[n_items + 2:]
            found = (in_top_k, in_top_k + counts[1:n_items + 1], users, n)
            _list_counts[(version, name)] = found
    return found


def how_often_recommended(store: ModelStore, item_id: str) -> list[dict[str, Any]]:
    """For each ranker of the served version, in how many users' stored top-N lists (``trainer.top_lists``,
    what a known user's first request is answered from) ``item_id`` is within the top ``LIST_K`` and the top N."""
    version = serving.serving_version(store)
    rows = []
    for name, served in version.models.items():
        if served.task != "ranking":
            continue
        row: dict[str, Any] = {"model": name, "k": LIST_K, "error": None}
        col = served.item_index.get(item_id)
        if served.lists is None:
            row["error"] = "no stored lists in this version"
        elif col < 0:
            row["error"] = "not in this model's items"
        else:
            in_top_k, in_top_n, users, n = _times_listed(version.version, name, served.lists, served.model.n_items)
            row.update(top_k=int(in_top_k[col]), top_n=int(in_top_n[col]), users=users, n=n)
        rows.append(row)
    return rows
