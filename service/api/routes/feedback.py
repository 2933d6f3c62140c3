"""POST /feedback: clicks, ratings, purchases and dismissals on the items of served lists (a write key required)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from starlette.concurrency import run_in_threadpool

from service import feedback
from service.api.deps import API_KEY_HEADER, IdempotencyKey, MetricsDep, RecorderDep, SessionDep, SettingsDep, WriteAccess
from service.api.routing import AccessFirstRoute
from service.schemas import FeedbackIn, FeedbackResult
from service.serving import check_list
from service.writes import idempotency_claim, recorded_answer
from storage import crud
from storage.session import retry_if_dropped

router = APIRouter(tags=["feedback"], dependencies=[WriteAccess], route_class=AccessFirstRoute)


@router.post("/feedback", response_model=FeedbackResult, status_code=201)
async def add_feedback(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    recorder: RecorderDep,
    body: Annotated[FeedbackIn | list[FeedbackIn], Body()],
    idempotency_key: IdempotencyKey = None,
) -> FeedbackResult:
    """One event or a list of them, all or nothing. 404 unknown_recommendation when no served list has a
    recommendation_id; 422 item_not_recommended when an item was not in its list; a rating needs a value
    on the rating scale, the other kinds none. An event stored before (same list, item and kind) is not
    stored again (`duplicates`). Interactions posted to /interactions count as feedback too, without
    a call here: see FEEDBACK_WINDOW_S."""
    events = body if isinstance(body, list) else [body]
    check_list("feedback", events, settings)
    feedback.check_values(events, settings.rating_scale)
    claim = idempotency_claim(idempotency_key, request.headers.get(API_KEY_HEADER), events, settings.IDEMPOTENCY_TTL_S,
                              endpoint="feedback")
    factory = request.app.state.parts.session_factory
    if claim is not None:
        recorded = await run_in_threadpool(retry_if_dropped, lambda: recorded_answer(factory, claim))
        if recorded is not None:
            return FeedbackResult(**recorded)
    try:
        answer = await run_in_threadpool(feedback.store, session, recorder, metrics, events, claim)
    except crud.IdempotencyKeyTaken:  # a concurrent request with the key committed first: its answer (or the 422)
        answer = await run_in_threadpool(retry_if_dropped, lambda: recorded_answer(factory, claim))
    return FeedbackResult(**answer)
