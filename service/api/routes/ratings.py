"""POST /ratings: predicted ratings from a rating model (one request object or a list)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request

from service import serving
from service.api.deps import ReadAccess, SessionDep, SettingsDep, StoreDep
from service.schemas import RatingRequest, RatingResponse

router = APIRouter(tags=["ratings"], dependencies=[ReadAccess])


@router.post("/ratings", response_model=RatingResponse | list[RatingResponse])
async def predict_ratings(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    body: Annotated[RatingRequest | list[RatingRequest], Body()],
) -> RatingResponse | list[RatingResponse]:
    """Ratings clipped to the model's rating range; a list of requests gets a list back, in order."""
    many = isinstance(body, list)
    responses = await serving.ratings(session, store, settings, body if many else [body])
    request.state.model = ",".join(sorted({r.model for r in responses}))
    return responses if many else responses[0]
