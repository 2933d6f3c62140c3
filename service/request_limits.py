"""The size and rating-scale checks of the rating and interaction requests, made by their routes
around FastAPI's validation (each says whether it runs before or after it)."""

from __future__ import annotations

from typing import Any, Sequence

from fastapi.exceptions import RequestValidationError

from rating_scale import RatingScale
from service.core.config import Settings
from service.errors import ApiError
from service.schemas import InteractionIn


def check_interaction_ratings(entries: Sequence[InteractionIn], scale: RatingScale) -> None:
    """Every rating given is on the deployment's scale; the others are a 422 like any invalid field's."""
    rated = [(n, entry.rating) for n, entry in enumerate(entries) if entry.rating is not None]
    on_scale = scale.allows([rating for _, rating in rated])
    off = [{"loc": ("body", n, "rating"), "msg": f"{rating:g} is not on the rating scale {scale}", "type": "rating_off_scale"}
           for (n, rating), ok in zip(rated, on_scale) if not ok]
    if off:
        raise RequestValidationError(off)


def rating_hint(scale: RatingScale) -> str:
    """What a rating may be, added to every refusal of one (its type is in the schema, its values are a setting)."""
    if scale.implicit:
        return "this deployment's rating scale is implicit: leave the rating out"
    return f"a rating is {scale.allowed} (rating scale {scale}), or null for implicit feedback"


def check_ratings_size(body: Any, settings: Settings) -> None:
    """Refuses a ``POST /ratings`` body (parsed JSON, not yet validated) that asks for more than
    ``MAX_RATING_USERS`` users or ``MAX_RATING_PAIRS`` (user, item) pairs, summed over its users:
    the work of a request grows with both. Counted before validation, which costs far more than the
    count (bench/RESULTS.md, "Figures moved out"): the refusal must cost little."""
    requests = body if isinstance(body, list) else [body]
    if len(requests) > settings.MAX_RATING_USERS:
        raise ApiError(
            413, "too_many_users", f"the request asks for {len(requests)} users' ratings; at most MAX_RATING_USERS="
            f"{settings.MAX_RATING_USERS} per request", {"users": len(requests), "max_users": settings.MAX_RATING_USERS},
        )
    pairs = sum(len(r["item_ids"]) for r in requests if isinstance(r, dict) and isinstance(r.get("item_ids"), list))
    if pairs > settings.MAX_RATING_PAIRS:
        raise ApiError(
            413, "too_many_pairs", f"the request asks for {pairs} (user, item) ratings; at most MAX_RATING_PAIRS="
            f"{settings.MAX_RATING_PAIRS} per request", {"pairs": pairs, "max_pairs": settings.MAX_RATING_PAIRS},
        )


RATING_ID_BYTES = 258  # an id of 255 ASCII characters in a JSON list: quoted, and a comma
RATING_ENTRY_BYTES = 100  # {"user_id": ..., "item_ids": [...], "model": "<64 characters>"} around the ids


def check_ratings_length(content_length: str | None, settings: Settings) -> None:
    """Refuses a ``POST /ratings`` body declared larger than the largest compact one within the caps
    (ids of 255 ASCII characters), before it is read."""
    limit = (settings.MAX_RATING_PAIRS + settings.MAX_RATING_USERS) * RATING_ID_BYTES + settings.MAX_RATING_USERS * RATING_ENTRY_BYTES
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise ApiError(
            413, "payload_too_large", f"the body is {content_length} bytes; one within MAX_RATING_USERS="
            f"{settings.MAX_RATING_USERS} and MAX_RATING_PAIRS={settings.MAX_RATING_PAIRS} is at most {limit}",
            {"max_bytes": limit, "max_users": settings.MAX_RATING_USERS, "max_pairs": settings.MAX_RATING_PAIRS},
        )
