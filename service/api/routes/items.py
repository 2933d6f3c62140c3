"""GET /items/{item_id}/similar: item-to-item neighbours from a model's item embeddings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from service import serving
from service.api.deps import PartsDep, ReadAccess, SessionDep
from service.api.routing import AccessFirstRoute
from service.schemas import ID_MAX_CHARS, ID_PATTERN, MODEL_PATTERN, SimilarItemsResponse

router = APIRouter(tags=["items"], dependencies=[ReadAccess], route_class=AccessFirstRoute)


@router.get("/items/{item_id}/similar", response_model=SimilarItemsResponse)
async def similar_items(
    request: Request,
    item_id: Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)],
    session: SessionDep,
    parts: PartsDep,
    k: Annotated[int, Query(ge=1)] = 10,
    model: Annotated[str | None, Query(pattern=MODEL_PATTERN)] = None,
) -> Response:
    """The k most similar items (cosine of the model's item embeddings: EASE's weights, AE decoders)."""
    answer = await serving.similar(session, parts, item_id, k, model)
    request.state.model = answer.model
    return Response(answer.json, media_type="application/json")  # already the response model's JSON
