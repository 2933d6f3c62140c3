"""POST /users/{user_id}/recommendations: a user's top-k items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Request, Response

from service import serving
from service.api.deps import CacheDep, ReadAccess, SessionDep, SettingsDep, StoreDep
from service.api.routing import AccessFirstRoute
from service.cached_answers import ENTRY_STATE
from service.schemas import ID_PATTERN, RecommendationRequest, RecommendationResponse

router = APIRouter(tags=["recommendations"], dependencies=[ReadAccess], route_class=AccessFirstRoute)

UserIdPath = Annotated[str, Path(min_length=1, max_length=255, pattern=ID_PATTERN, description="The user's external id.")]


@router.post("/users/{user_id}/recommendations", response_model=RecommendationResponse)
async def recommend(
    request: Request,
    user_id: UserIdPath,
    session: SessionDep,
    cache: CacheDep,
    store: StoreDep,
    settings: SettingsDep,
    body: Annotated[RecommendationRequest | None, Body()] = None,
) -> Response:
    """Top-k items for a user: from the model for users it was trained on, by fold-in from the
    stored history for users who arrived after training, the popularity list for users with none."""
    looked_up = getattr(request.state, ENTRY_STATE, None)  # a miss already looked up before the routing
    answer = await serving.recommendations(session, cache, store, settings, user_id, body or RecommendationRequest(), looked_up)
    request.state.model = answer.model
    return Response(answer.json, media_type="application/json")  # already the response model's JSON
