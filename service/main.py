"""The app factory: ``create_app(settings)`` wires settings, database, cache, models and routes.

Nothing is built at import time. The lifespan loads the version ``LATEST`` names and
starts the watcher that swaps in new ones; it stops the watcher and closes connections
on shutdown. For ``uvicorn --factory service.main:create_app``.
"""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.api.deps import optional_key_schemes
from service.api.main import api_router
from service.api.routes import health, recommendations
from service.cache import make_cache
from service.core.config import Settings
from service.errors import install_error_handlers
from service.experiment_registry import ExperimentRegistry
from service.experiment_serving import ExperimentServing
from service.impressions import ImpressionRecorder
from service.metrics import Metrics, RequestMetrics
from service.model_store import ModelStore
from service.parts import ServiceParts
from service.rate_limits import RateLimited, RateLimits
from service.request_limits import rating_hint
from service.scoring import ScoringSlots
from service.titles import TitlesKeeper
from service.training_runs import TrainingRuns
from service.writes import InteractionWriter
from storage.session import make_engine, make_session_factory

log = logging.getLogger("service")
YOUNG_COLLECTION_EVERY = 10_000  # the collector's first threshold once the process is up (Python's default: 700)

DESCRIPTION = """Recommendations from autoencoder models (EASE, Mult-VAE, AutoRec, ...) trained by `python -m trainer`.

User and item ids are the dataset's own ids (strings or integers). Errors are
`{"error": {"code", "message", "details"}}`. Keys go in the `X-API-Key` header: admin needs
`API_KEY`, writes `WRITE_API_KEY` or `API_KEY`, reads (outside development) any of the keys."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    engine = make_engine(settings.DATABASE_URL, timeout_s=settings.DB_TIMEOUT_S, pool_size=settings.DB_POOL_SIZE)
    cache = make_cache(
        settings.REDIS_URL, metrics, namespace=settings.CACHE_NAMESPACE,
        max_entries=settings.CACHE_MAX_ENTRIES, timeout_s=settings.REDIS_TIMEOUT_S,
        history_rows=settings.HISTORY_CACHE_ROWS,
    )
    limits = RateLimits(settings, metrics)
    store = ModelStore(settings.ARTIFACTS_DIR, metrics, settings.RELOAD_INTERVAL_S, torch_threads=settings.TORCH_THREADS,
                       device=settings.scoring_device)
    training_runs = TrainingRuns(settings)
    session_factory = make_session_factory(engine)
    recorder = ImpressionRecorder(
        session_factory, metrics, enabled=settings.IMPRESSIONS_ENABLED, queue_size=settings.IMPRESSION_QUEUE_SIZE,
        batch_size=settings.IMPRESSION_BATCH, feedback_window_s=settings.FEEDBACK_WINDOW_S, linger_s=settings.IMPRESSION_FLUSH_S,
    )
    experiments = ExperimentRegistry(session_factory, store, settings.EXPERIMENTS_REFRESH_S)
    parts = ServiceParts(
        settings=settings, metrics=metrics, engine=engine, session_factory=session_factory, cache=cache, store=store,
        scoring=ScoringSlots(settings.SCORING_CONCURRENCY), training_runs=training_runs,
        writer=InteractionWriter(session_factory, cache.users, metrics, max_rows=settings.MAX_BATCH, recorder=recorder),
        recorder=recorder, experiments=experiments, experiment_serving=ExperimentServing(recorder, experiments, store),
    )

    titles = TitlesKeeper(parts)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        outcome = await run_in_threadpool(store.reload)  # off the event loop: loading takes a moment
        log.info("startup: %s", outcome.message)
        try:
            log.info("startup: %d item titles read", await run_in_threadpool(titles.refresh))
        except SQLAlchemyError as exc:  # the database may come up later: titles are then read as lists need them
            log.warning("startup: item titles not read (%s)", type(exc).__name__)
        # What is alive now (imported libraries, the first model version) lives as long as the
        # process: move it out of the collector's sight, so a full collection walks only what
        # requests create (else a latency spike: bench/RESULTS.md, "Figures moved out").
        gc.collect()  # garbage first: what is frozen is never collected
        gc.freeze()
        # at 700 the impression writer's batches set young collections off in its thread and the loop's (bench/RESULTS.md,
        # "What recording impressions costs")
        gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])
        try:  # a start that fails (a bad experiments file) stops what started before it, no thread left behind
            store.start_watcher()
            titles.start()
            recorder.start()
            await run_in_threadpool(experiments.start, settings.EXPERIMENTS_FILE)
            yield
        finally:
            experiments.stop_watcher()
            await run_in_threadpool(recorder.close)  # what is queued is written before the connections close
            titles.stop()
            store.stop_watcher()
            await run_in_threadpool(training_runs.stop)
            await limits.aclose()
            await cache.aclose()
            cache.close()
            engine.dispose()

    telemetry = {} if settings.OTEL_ENABLED else {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="aerec", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, telemetry=telemetry)
    app.state.parts = parts
    install_error_handlers(app, field_hints={"rating": rating_hint(settings.rating_scale)})
    app.include_router(api_router)
    app.add_middleware(recommendations.BeforeRouting, route=recommendations.router.routes[0], handlers=app.exception_handlers)
    if limits.enabled:  # before the routes; probes and scrapes are never limited
        app.add_middleware(RateLimited, limits=limits, exempt_paths=[route.path for route in health.router.routes])
    app.add_middleware(RequestMetrics, metrics=metrics, max_body_bytes=settings.MAX_BODY_BYTES)
    app.openapi = lambda: _openapi_for_settings(app, settings)
    return app


def _openapi_for_settings(app: FastAPI, settings: Settings) -> dict:
    """The OpenAPI document as these settings make the service behave.

    Routes and schemas are declared once, at import, but three things depend on settings:
    whether reads and metrics need a key (``READS_REQUIRE_KEY``, ``METRICS_REQUIRE_KEY``), the
    largest list (``MAX_K``) and the ratings a write may carry (``RATING_SCALE``).
    """
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        unasked = {name for name, asked in optional_key_schemes(settings).items() if not asked}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                requirements = [r for r in operation.get("security", []) if not unasked & r.keys()]
                if requirements:
                    operation["security"] = requirements
                else:
                    operation.pop("security", None)
                for parameter in operation.get("parameters", []):
                    _limit_k(parameter["name"], parameter.get("schema", {}), settings.MAX_K)
        for name in unasked:
            schema.get("components", {}).get("securitySchemes", {}).pop(name, None)
        request = schema.get("components", {}).get("schemas", {}).get("RecommendationRequest", {})
        for name, property_schema in request.get("properties", {}).items():
            _limit_k(name, property_schema, settings.MAX_K)
        interaction = schema.get("components", {}).get("schemas", {}).get("InteractionIn", {})
        if "rating" in interaction.get("properties", {}):
            interaction["properties"]["rating"] = settings.rating_scale.json_schema()
        app.openapi_schema = schema
    return app.openapi_schema


def _limit_k(name: str, schema: dict, max_k: int) -> None:
    if name == "k":
        schema["maximum"] = max_k
    elif name == "offset":
        schema["maximum"] = max_k - 1  # k + offset <= MAX_K, and k >= 1
