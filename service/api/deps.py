"""Request dependencies: the service's parts (``ServiceParts``) or one of them, a DB session, and the API keys'
scopes and checks.

Everything comes from ``request.app.state.parts``, built by the app factory, so a test can
build an app with its own settings and database. Every dependency is ``async def``:
FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per dependency
per request (two for one with ``yield``), which on the cached path cost more than the
lookup itself. None of them blocks the event loop: a new ``Session`` opens no connection
until its first query (made in a worker thread), and closing one that still holds a
connection happens in a worker thread too.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.cache import Cache
from service.core.config import Settings
from service.errors import ApiError
from service.experiment_registry import ExperimentRegistry
from service.impressions import ImpressionRecorder
from service.metrics import Metrics
from service.model_store import ModelStore
from service.parts import ServiceParts
from service.training_runs import TrainingRuns
from service.writes import IDEMPOTENCY_HEADER, InteractionWriter

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="API_KEY, or WRITE_API_KEY for writes.")
# The same header under scheme names of their own, so the OpenAPI document can drop it where these
# settings ask no key (service.main: ``optional_key_schemes``): the document says what the service does.
READ_KEY_SCHEME = "ApiKeyForReads"
read_key_header = APIKeyHeader(
    name=API_KEY_HEADER, scheme_name=READ_KEY_SCHEME, auto_error=False,
    description="Any of the service's keys (READ_API_KEY, WRITE_API_KEY, API_KEY), where READS_REQUIRE_KEY is true.",
)
METRICS_KEY_SCHEME = "ApiKeyForMetrics"
metrics_key_header = APIKeyHeader(
    name=API_KEY_HEADER, scheme_name=METRICS_KEY_SCHEME, auto_error=False,
    description="Any of the service's keys, where METRICS_REQUIRE_KEY is true.",
)


async def get_parts(request: Request) -> ServiceParts:
    return request.app.state.parts


async def get_db(request: Request) -> AsyncIterator[Session]:
    session: Session = request.app.state.parts.session_factory()  # lazy: no connection yet
    try:
        yield session
    finally:
        if session.in_transaction():  # holds a connection: closing rolls back and returns it (I/O)
            await run_in_threadpool(session.close)
        else:
            session.close()


def _part(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency giving one of the service's parts (``ServiceParts``), by its field name."""

    async def get(request: Request) -> Any:
        return getattr(request.app.state.parts, name)

    get.__name__ = f"get_{name}"
    return get


IdempotencyKey = Annotated[str | None, Header(
    alias=IDEMPOTENCY_HEADER, min_length=1, max_length=255,
    description="Any string unique to this batch: a retry with the same key and body returns the first answer "
    "and stores nothing (for IDEMPOTENCY_TTL_S); the same key with another body is a 422.",
)]  # the one declaration of the header the write endpoints honour (service.writes)
PartsDep = Annotated[ServiceParts, Depends(get_parts)]  # all of them: for a route that hands them on (``serving``)
SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(_part("settings"))]
CacheDep = Annotated[Cache, Depends(_part("cache"))]
StoreDep = Annotated[ModelStore, Depends(_part("store"))]
MetricsDep = Annotated[Metrics, Depends(_part("metrics"))]
WriterDep = Annotated[InteractionWriter, Depends(_part("writer"))]
RecorderDep = Annotated[ImpressionRecorder, Depends(_part("recorder"))]
ExperimentsDep = Annotated[ExperimentRegistry, Depends(_part("experiments"))]
TrainingRunsDep = Annotated[TrainingRuns, Depends(_part("training_runs"))]


class KeyScope(IntEnum):
    """What a key opens: its own scope and every narrower one."""

    READ = 1
    WRITE = 2
    ADMIN = 3


def _configured_keys(settings: Settings) -> list[tuple[KeyScope, str]]:
    keys = [(KeyScope.ADMIN, settings.API_KEY), (KeyScope.WRITE, settings.WRITE_API_KEY), (KeyScope.READ, settings.READ_API_KEY)]
    return [(scope, key) for scope, key in keys if key]


def key_scope(key: str | None, settings: Settings) -> KeyScope | None:
    """The scope ``key`` opens (the header's value as Starlette decodes it, latin-1); None if it is
    none of the service's keys. Also the rule before the routing: the rate limits
    (``service.rate_limits``) identify a client with it."""
    if not key:
        return None
    opened = None
    for scope, configured in _configured_keys(settings):
        # constant time, and every key compared: the time tells neither how much of a guess was right nor which key
        if secrets.compare_digest(key.encode(), configured.encode()):
            opened = scope
    return opened


@dataclass(frozen=True)
class Access:
    """A route's key rule: the scope a key must open, where ``required(settings)`` asks for a key at all."""

    scope: KeyScope
    required: Callable[[Settings], bool]

    def check(self, key: str | None, settings: Settings) -> None:
        """Raises the 401 or 403 the route answers; returns when the request may go on."""
        if not self.required(settings):
            return
        if not key:
            raise ApiError(401, "missing_api_key", f"this endpoint needs the {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"})
        opened = key_scope(key, settings)
        if opened is None:
            raise ApiError(403, "invalid_api_key", f"the {API_KEY_HEADER} header does not hold a valid key")
        if opened < self.scope:
            raise ApiError(403, "insufficient_scope", f"this key opens {opened.name.lower()} endpoints; this one needs a "
                           f"{self.scope.name.lower()} key", {"key_scope": opened.name.lower(), "needed": self.scope.name.lower()})

    def allows(self, key: str | None, settings: Settings) -> bool:
        try:
            self.check(key, settings)
        except ApiError:
            return False
        return True


READ = Access(KeyScope.READ, lambda settings: bool(settings.READS_REQUIRE_KEY))
WRITE = Access(KeyScope.WRITE, lambda settings: True)
ADMIN = Access(KeyScope.ADMIN, lambda settings: True)
METRICS = Access(KeyScope.READ, lambda settings: settings.METRICS_REQUIRE_KEY)


def optional_key_schemes(settings: Settings) -> dict[str, bool]:
    """Whether each optional key scheme of the OpenAPI document is asked for under these settings."""
    return {READ_KEY_SCHEME: READ.required(settings), METRICS_KEY_SCHEME: METRICS.required(settings)}


async def read_access(settings: SettingsDep, key: Annotated[str | None, Security(read_key_header)]) -> None:
    READ.check(key, settings)


async def write_access(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)]) -> None:
    WRITE.check(key, settings)


async def admin_access(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)]) -> None:
    ADMIN.check(key, settings)


async def metrics_access(settings: SettingsDep, key: Annotated[str | None, Security(metrics_key_header)]) -> None:
    METRICS.check(key, settings)


# Each key-checking dependency and its rule: ``service.api.routing.AccessFirstRoute`` applies the
# rule before FastAPI reads the body; the dependency checks again, and documents the header.
ACCESS_RULES: dict[Callable[..., Any], Access] = {read_access: READ, write_access: WRITE, admin_access: ADMIN, metrics_access: METRICS}

ReadAccess = Depends(read_access)
WriteAccess = Depends(write_access)
AdminAccess = Depends(admin_access)
MetricsAccess = Depends(metrics_access)
