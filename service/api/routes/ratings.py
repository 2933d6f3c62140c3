"""POST /ratings: predicted ratings from a rating model (one request object or a list)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response

from service import request_limits, serving
from service.api.deps import PartsDep, ReadAccess, SessionDep, SettingsDep
from service.api.routing import AccessFirstRoute
from service.schemas import RatingRequest, RatingResponse


class RatingsRoute(AccessFirstRoute):
    def before_body(self, request: Request) -> None:
        """A body declared larger than the caps allow is refused unread: reading it on a busy event loop costs more than the refusal may."""
        request_limits.check_ratings_length(request.headers.get("content-length"), request.app.state.parts.settings)


router = APIRouter(tags=["ratings"], dependencies=[ReadAccess], route_class=RatingsRoute)


async def size_within_caps(request: Request, settings: SettingsDep) -> None:
    """Runs before the body is validated (``request_limits.check_ratings_size``); FastAPI has parsed it by then."""
    if await request.body():
        request_limits.check_ratings_size(await request.json(), settings)


@router.post("/ratings", response_model=RatingResponse | list[RatingResponse], dependencies=[Depends(size_within_caps)])
async def predict_ratings(
    request: Request,
    session: SessionDep,
    parts: PartsDep,
    body: Annotated[RatingRequest | list[RatingRequest], Body()],
) -> Response:
    """Ratings clipped to the model's rating range; a list of requests gets a list back, in order."""
    many = isinstance(body, list)
    answer = await serving.ratings(session, parts, body if many else [body], many)
    request.state.model = answer.model
    return Response(answer.json, media_type="application/json")  # already the response model's JSON
