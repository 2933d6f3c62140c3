"""``POST /feedback``: events on items of served lists, checked against the list and stored once.

An event names a ``recommendation_id`` and an item of that list. The whole batch is refused when one
event is wrong: a recommendation id that no served list has is a 404 (``unknown_recommendation``,
naming the ids); an item its list did not show is a 422 (``item_not_recommended``, naming the item
and the entry); a rating without a value on the rating scale, or a value on another kind, is a 422
on that entry's ``value``. A list recorded by this process and not yet written is checked from
memory (``ImpressionRecorder.pending``). Stored events are unique per (list, item, kind), so a
retried batch stores nothing twice; an ``Idempotency-Key`` returns the first answer as for
``POST /interactions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Sequence

from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from rating_scale import RatingScale
from service.errors import ApiError
from service.impressions import ImpressionRecorder, count_feedback
from service.metrics import Metrics
from service.schemas import FeedbackIn
from storage import crud
from storage.crud import online
from storage.session import retry_if_dropped


def check_values(events: Sequence[FeedbackIn], scale: RatingScale) -> None:
    """A rating carries a value on the scale; the other kinds carry none."""
    wrong = []
    for n, event in enumerate(events):
        if event.kind == "rating":
            if event.value is None:
                wrong.append((n, "a rating needs its value", "missing"))
            elif not scale.allows([event.value])[0]:
                wrong.append((n, f"{event.value:g} is not on the rating scale {scale}", "rating_off_scale"))
        elif event.value is not None:
            wrong.append((n, f"a {event.kind} carries no value (only a rating does)", "value_not_allowed"))
    if wrong:
        raise RequestValidationError([{"loc": ("body", n, "value"), "msg": msg, "type": kind} for n, msg, kind in wrong])


def shown_lists(session: Session, recorder: ImpressionRecorder, ids: Sequence[str]) -> dict[str, online.ShownList]:
    """The lists the events name: from memory while still queued, else from the database."""
    lists = {i: shown for i in set(ids) if (shown := recorder.pending(i)) is not None}
    missing = [i for i in set(ids) if i not in lists]
    if missing:
        with crud.reads(session) as db:
            lists.update(online.shown_lists(db, missing))
    return lists


def records(events: Sequence[FeedbackIn], lists: dict[str, online.ShownList]) -> list[online.FeedbackRecord]:
    unknown = {e.recommendation_id for e in events} - set(lists)
    if unknown:
        named = sorted(unknown)
        raise ApiError(404, "unknown_recommendation", f"no served list has the recommendation_id {named[0]!r}"
                       + (f" (nor {len(named) - 1} more)" if len(named) > 1 else ""),
                       {"recommendation_ids": named,
                        "entries": [n for n, e in enumerate(events) if e.recommendation_id in unknown]})
    now = datetime.now(UTC)
    built = []
    for n, event in enumerate(events):
        shown = lists[event.recommendation_id]
        position = shown.position(event.item_id)
        if position is None:
            raise ApiError(422, "item_not_recommended", f"item {event.item_id!r} was not in the list "
                           f"{event.recommendation_id} (entry {n})",
                           {"loc": ["body", n, "item_id"], "item_id": event.item_id, "recommendation_id": event.recommendation_id})
        built.append(online.FeedbackRecord(event.recommendation_id, event.item_id, event.kind, event.value, position,
                                           shown.team(position), "feedback", now))
    return built


def store(session: Session, recorder: ImpressionRecorder, metrics: Metrics, events: Sequence[FeedbackIn],
          claim: crud.IdempotencyClaim | None) -> dict[str, int]:
    """Check the events against their lists and store them (in a worker thread). ``IdempotencyKeyTaken`` when
    a concurrent request recorded the same key first."""
    lists = retry_if_dropped(lambda: shown_lists(session, recorder, [e.recommendation_id for e in events]))
    built = records(events, lists)
    stored = retry_if_dropped(lambda: online.store_feedback(session, built, claim))
    count_feedback(metrics, lists, stored.inserted)
    return stored.answer
