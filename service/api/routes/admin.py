"""Admin endpoints (the admin key, API_KEY, required): POST /admin/reload loads the version LATEST
names now; POST /admin/training starts a training run on the service's database, GET /admin/training
says how it goes (``service.training_runs``)."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from errors import UserError
from models import REGISTRY
from service.api.deps import AdminAccess, StoreDep, TrainingRunsDep
from service.api.routing import AccessFirstRoute
from service.errors import ApiError
from service.schemas import ErrorBody, ReloadResult, TrainingRequest, TrainingRun
from service.training_runs import TrainingBusy

log = logging.getLogger("service.admin")
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminAccess], route_class=AccessFirstRoute)


@router.post("/reload", response_model=ReloadResult, responses={409: {"model": ErrorBody}})
def reload(store: StoreDep) -> ReloadResult:
    """The same load-check-swap as the watcher, retrying versions refused before. 409 when the
    version LATEST names (or LATEST itself) is refused: the newest older version that loads serves."""
    outcome = store.reload(retry_refused=True)
    if outcome.refused:
        raise ApiError(409, "version_refused", outcome.message, {"serving": outcome.version, "requested": outcome.requested})
    return ReloadResult(version=outcome.version, previous=outcome.previous, swapped=outcome.swapped, message=outcome.message)


def trainable_models(names: list[str] | None) -> tuple[str, ...]:
    """``names`` checked against the trainer's models (422 naming the unknown ones), in order, once each; () for all."""
    if not names:
        return ()
    unknown = sorted({n for n in names if n not in REGISTRY})
    if unknown:
        raise ApiError(422, "unknown_model", f"no model is named {', '.join(map(repr, unknown))}",
                       {"unknown": unknown, "available": sorted(REGISTRY)})
    return tuple(dict.fromkeys(names))


@router.post("/training", response_model=TrainingRun, status_code=202, responses={409: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}})
def start_training(body: TrainingRequest, runs: TrainingRunsDep) -> TrainingRun:
    """Start ``python -m trainer train --from-db`` on the service's database and registry, and answer at
    once (202): the run goes on in its own process; GET /admin/training follows it. Its version is
    served when it publishes (the watcher, or POST /admin/reload). 409 while a run is going."""
    models = trainable_models(body.models)
    try:
        run = runs.start(models, body.seed)
    except TrainingBusy as exc:
        raise ApiError(409, "training_running", str(exc), {"running": exc.running.id if exc.running else None}) from None
    except (OSError, UserError) as exc:  # the deployment's to fix; its path and reason go to the log, never to a client
        log.error("cannot start a training run: %s", exc)
        setting = runs.unwritable_setting(exc)
        where = f"the folder {setting} names cannot be written" if setting else "the trainer's process could not start"
        raise ApiError(503, "training_unavailable", f"cannot start a training run: {where} (the service's log says why)",
                       {"setting": setting}) from None
    return TrainingRun(**run.describe())


@router.get("/training", response_model=TrainingRun, responses={404: {"model": ErrorBody}})
def training(runs: TrainingRunsDep) -> TrainingRun:
    """The run going now, or the last one this service process started: its state, exit code, times
    and the last lines of its output."""
    run = runs.last
    if run is None:
        raise ApiError(404, "no_training_run", "this service process has started no training run (POST /admin/training starts one)")
    return TrainingRun(**run.describe())
