"""GET /models: the served version, its models and their metrics."""

from __future__ import annotations

from fastapi import APIRouter

from service import serving
from service.api.deps import ReadAccess, SettingsDep, StoreDep
from service.api.routing import AccessFirstRoute
from service.schemas import ModelsResponse

router = APIRouter(tags=["models"], dependencies=[ReadAccess], route_class=AccessFirstRoute)


@router.get("/models", response_model=ModelsResponse)
def list_models(store: StoreDep, settings: SettingsDep) -> ModelsResponse:
    return ModelsResponse(**serving.models_report(store, settings))
