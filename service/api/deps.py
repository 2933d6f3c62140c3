"""Request dependencies: the DB session, settings, cache, model store and the API-key checks.

Everything comes from ``request.app.state``, filled by the app factory, so a test can
build an app with its own settings and database. Every dependency is ``async def``:
FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per dependency
per request (two for one with ``yield``), which on the cached path cost more than the
lookup itself. None of them blocks the event loop: a new ``Session`` opens no connection
until its first query (made in a worker thread), and closing one that still holds a
connection happens in a worker thread too.
"""

from __future__ import annotations

import secrets
from typing import Annotated, AsyncIterator

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.cache import Cache
from service.core.config import Settings
from service.errors import ApiError
from service.metrics import Metrics
from service.model_store import ModelStore
from service.writes import InteractionWriter

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The service's API_KEY.")
# The same header under its own scheme name, so the OpenAPI document can drop it from the reads
# when READS_REQUIRE_KEY is false (service.main): the document then says what the service does.
READ_KEY_SCHEME = "ApiKeyForReads"
read_key_header = APIKeyHeader(
    name=API_KEY_HEADER, scheme_name=READ_KEY_SCHEME, auto_error=False,
    description="The service's API_KEY, on reads only when the service runs with READS_REQUIRE_KEY=true.",
)


async def get_db(request: Request) -> AsyncIterator[Session]:
    session: Session = request.app.state.session_factory()  # lazy: no connection yet
    try:
        yield session
    finally:
        if session.in_transaction():  # holds a connection: closing rolls back and returns it (I/O)
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_cache(request: Request) -> Cache:
    return request.app.state.cache


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_writer(request: Request) -> InteractionWriter:
    return request.app.state.writer


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WriterDep = Annotated[InteractionWriter, Depends(get_writer)]


def api_key_accepted(key: str | None, settings: Settings) -> bool:
    """Whether ``key`` (the header's value as Starlette decodes it, latin-1) is the service's
    API key. Also checked before the routing for cache hits (``service.cached_answers``)."""
    # constant time: the comparison must not leak how much of the key was right
    return bool(key) and secrets.compare_digest(key.encode(), settings.API_KEY.encode())


async def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)]) -> None:
    if not key:
        raise ApiError(401, "missing_api_key", f"this endpoint needs the {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"})
    if not api_key_accepted(key, settings):
        raise ApiError(403, "invalid_api_key", f"the {API_KEY_HEADER} header does not hold a valid key")


async def require_read_access(settings: SettingsDep, key: Annotated[str | None, Security(read_key_header)]) -> None:
    if settings.READS_REQUIRE_KEY:
        await require_api_key(settings, key)


ReadAccess = Depends(require_read_access)
WriteAccess = Depends(require_api_key)
