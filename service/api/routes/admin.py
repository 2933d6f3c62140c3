"""POST /admin/reload: load the version LATEST names now (the admin key, API_KEY, required)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AdminAccess, StoreDep
from service.api.routing import AccessFirstRoute
from service.errors import ApiError
from service.schemas import ErrorBody, ReloadResult

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminAccess], route_class=AccessFirstRoute)


@router.post("/reload", response_model=ReloadResult, responses={409: {"model": ErrorBody}})
def reload(store: StoreDep) -> ReloadResult:
    """The same load-check-swap as the watcher, retrying versions refused before. 409 when the
    version LATEST names (or LATEST itself) is refused: the newest older version that loads serves."""
    outcome = store.reload(retry_refused=True)
    if outcome.refused:
        raise ApiError(409, "version_refused", outcome.message, {"serving": outcome.version, "requested": outcome.requested})
    return ReloadResult(version=outcome.version, previous=outcome.previous, swapped=outcome.swapped, message=outcome.message)
