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
    """The same load-check-swap as the watcher, retrying a version refused before.
    409 when the version is refused (the old one keeps serving)."""
    outcome = store.reload(retry_refused=True)
    if outcome.refused:
        raise ApiError(409, "version_refused", outcome.message, {"serving": outcome.version})
    return ReloadResult(version=outcome.version, previous=outcome.previous, swapped=outcome.swapped, message=outcome.message)
