"""POST /ratings: predicted ratings from a rating model (one request object or a list)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from service import serving
from service.api.deps import CacheDep, ReadAccess, SessionDep, SettingsDep, StoreDep
from service.schemas import RatingRequest, RatingResponse

router = APIRouter(tags=["ratings"], dependencies=[ReadAccess])


@router.post("/ratings", response_model=RatingResponse | list[RatingResponse])
async def predict_ratings(
    request: Request,
    session: SessionDep,
    cache: CacheDep,
    store: StoreDep,
    settings: SettingsDep,
    body: Annotated[RatingRequest | list[RatingRequest], Body()],
) -> Response:
    """Ratings clipped to the model's rating range; a list of requests gets a list back, in order."""
    many = isinstance(body, list)
    answer = await serving.ratings(session, cache, store, settings, body if many else [body], many)
    request.state.model = answer.model
    return Response(answer.json, media_type="application/json")  # already the response model's JSON
