"""Liveness, readiness and Prometheus metrics (keyed where METRICS_REQUIRE_KEY is true)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from service.api.deps import CacheDep, MetricsAccess, MetricsDep, SessionDep, StoreDep
from service.api.routing import AccessFirstRoute
from service.errors import ApiError
from service.schemas import ErrorBody, Health, Readiness
from storage import crud
from storage.session import retry_if_dropped

router = APIRouter(tags=["health"], route_class=AccessFirstRoute)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (it says nothing about models or the database)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorBody}})
def readyz(session: SessionDep, cache: CacheDep, store: StoreDep) -> Readiness:
    """Ready when a model version is loaded and the database and cache answer; 503 with the reasons otherwise."""
    checks = {}
    version = store.current
    checks["model"] = (  # why none is loaded is in the log: an answer carries no paths or exception texts
        {"ok": True, "detail": f"serving version {version.version}"}
        if version
        else {"ok": False, "detail": "no version loaded (the service log says why)"}
    )
    try:
        retry_if_dropped(lambda: crud.ping(session))
        checks["database"] = {"ok": True, "detail": "reachable"}
    except SQLAlchemyError as exc:
        checks["database"] = {"ok": False, "detail": f"unreachable: {type(getattr(exc, 'orig', None) or exc).__name__}"}
    checks["cache"] = (
        {"ok": True, "detail": f"{cache.backend.name} reachable"} if cache.backend.ping() else {"ok": False, "detail": f"{cache.backend.name} unreachable"}
    )
    if not all(c["ok"] for c in checks.values()):
        failing = ", ".join(f"{name}: {c['detail']}" for name, c in checks.items() if not c["ok"])
        raise ApiError(503, "not_ready", f"not ready: {failing}", {"checks": checks})
    return Readiness(ready=True, checks=checks)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
            dependencies=[MetricsAccess])
def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format: requests and latency per route and model, cache, model version, swaps."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
