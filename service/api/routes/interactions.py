"""POST /interactions: store a batch of interactions (a write key required)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from service import crud
from service.api.deps import SettingsDep, WriteAccess, WriterDep
from service.api.routing import AccessFirstRoute
from service.schemas import InteractionIn, InteractionsResult
from service.serving import check_interaction_ratings, check_list

router = APIRouter(tags=["interactions"], dependencies=[WriteAccess], route_class=AccessFirstRoute)


@router.post("/interactions", response_model=InteractionsResult, status_code=201)
async def add_interactions(
    writer: WriterDep,
    settings: SettingsDep,
    body: Annotated[list[InteractionIn], Body(min_length=1)],
) -> InteractionsResult:
    """All or nothing; idempotent on (user, item, timestamp); new users and items are created.
    Ratings must be on the deployment's rating scale (RATING_SCALE), else the batch is a 422.
    Answered after the commit, once the affected users' cached lists are invalidated.
    Concurrent requests share a transaction (group commit); each gets its own counts."""
    check_list("interactions", body, settings)
    check_interaction_ratings(body, settings.rating_scale)
    batch = crud.InteractionBatch(
        [i.user_id for i in body], [i.item_id for i in body], [i.rating for i in body], [i.timestamp for i in body]
    )
    return InteractionsResult(**await writer.store(batch))
