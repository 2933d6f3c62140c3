"""POST /interactions: store a batch of interactions (a write key required)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request

from service.api.deps import API_KEY_HEADER, IdempotencyKey, SettingsDep, WriteAccess, WriterDep
from service.api.routing import AccessFirstRoute
from service.request_limits import check_interaction_ratings
from service.schemas import InteractionIn, InteractionsResult
from service.serving import check_list
from service.writes import idempotency_claim
from storage import crud

router = APIRouter(tags=["interactions"], dependencies=[WriteAccess], route_class=AccessFirstRoute)


@router.post("/interactions", response_model=InteractionsResult, status_code=201)
async def add_interactions(
    writer: WriterDep,
    settings: SettingsDep,
    request: Request,
    body: Annotated[list[InteractionIn], Body(min_length=1)],
    idempotency_key: IdempotencyKey = None,
) -> InteractionsResult:
    """All or nothing; new users and items are created. One row per (user, item): the latest entry
    of a pair wins (the newest timestamp, ties to the last), replacing a stored row no newer than it.
    Ratings must be on the deployment's rating scale (RATING_SCALE), else the batch is a 422.
    Answered after the commit, once the affected users' cached lists are invalidated (else a 503
    cache_not_invalidated: the batch is stored, and those users are served uncached meanwhile).
    Concurrent requests share a transaction (group commit); each gets its own counts."""
    check_list("interactions", body, settings)
    check_interaction_ratings(body, settings.rating_scale)
    batch = crud.InteractionBatch(
        [i.user_id for i in body], [i.item_id for i in body], [i.rating for i in body], [i.timestamp for i in body],
        idempotency_claim(idempotency_key, request.headers.get(API_KEY_HEADER), body, settings.IDEMPOTENCY_TTL_S),
    )
    return InteractionsResult(**await writer.store(batch))
