"""All routers in one place, with the error responses every route can give documented once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.routes import admin, dashboard, experiments, feedback, health, interactions, items, models, ratings, recommendations
from service.schemas import ErrorBody

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Malformed JSON",
        401: "API key missing",
        403: "API key wrong, or of a narrower scope",
        404: "Unknown user, item, model, recommendation or experiment",
        413: "Body, batch or request size past its cap",
        415: "Body not JSON",
        422: "Invalid request",
        429: "Too many requests from this client (Retry-After says when to retry)",
        503: "Database or model unavailable",
    }.items()
}

api_router = APIRouter()
for router in (recommendations.router, ratings.router, interactions.router, feedback.router, items.router, models.router,
               experiments.router, admin.router, experiments.admin):
    api_router.include_router(router, responses=ERROR_RESPONSES)
api_router.include_router(health.router)
# HTML pages, out of the OpenAPI document: their errors are pages, not the API's error bodies
api_router.include_router(dashboard.entry)
api_router.include_router(dashboard.router)
