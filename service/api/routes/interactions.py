"""POST /interactions: store a batch of interactions (API key required)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from service import crud
from service.api.deps import CacheDep, SessionDep, SettingsDep, WriteAccess
from service.schemas import InteractionIn, InteractionsResult
from service.serving import check_list

router = APIRouter(tags=["interactions"], dependencies=[WriteAccess])


@router.post("/interactions", response_model=InteractionsResult, status_code=201)
def add_interactions(
    session: SessionDep,
    cache: CacheDep,
    settings: SettingsDep,
    body: Annotated[list[InteractionIn], Body(min_length=1)],
) -> InteractionsResult:
    """One transaction; idempotent on (user, item, timestamp); new users and items are created.
    The affected users' cached lists are invalidated after the commit."""
    check_list("interactions", body, settings)
    result = crud.store_interactions(
        session,
        [i.user_id for i in body],
        [i.item_id for i in body],
        [i.rating for i in body],
        [i.timestamp for i in body],
    )
    cache.invalidate_users(i.user_id for i in body)
    return InteractionsResult(**result)
