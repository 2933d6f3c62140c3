"""The dashboard: read-only HTML pages under /dashboard (``/`` redirects there), server-rendered with Jinja2.

A router of its own, left out of the OpenAPI document, and no middleware: the API's requests
take the same path with or without it. Pages are reads, so they need the read key where reads
do (``READS_REQUIRE_KEY``). A browser cannot send the ``X-API-Key`` header by itself: the key
form (``/dashboard/key``) keeps the key in a cookie, HttpOnly and SameSite=Strict, scoped to
/dashboard; the header works too (a script, a proxy that adds it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Callable, Coroutine
from urllib.parse import parse_qs

from fastapi import APIRouter, Path as PathParam, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from service import dashboard
from service.api.deps import API_KEY_HEADER, READ, CacheDep, MetricsDep, SessionDep, SettingsDep, StoreDep, key_scope
from service.errors import ApiError
from service.schemas import ID_PATTERN, MODEL_PATTERN

KEY_COOKIE = "aerec_dashboard_key"
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[2] / "templates" / "dashboard")


def _page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context, status_code=status)


class KeyedPage(APIRoute):
    """A page route: the read key checked first (header or cookie; the key form when it is missing or
    wrong), and an ``ApiError`` shown as a page rather than the API's JSON body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def keyed(request: Request) -> Response:
            settings = request.app.state.settings
            key = request.headers.get(API_KEY_HEADER) or request.cookies.get(KEY_COOKIE)
            if not READ.allows(key, settings):
                here = request.url.path + (f"?{request.url.query}" if request.url.query else "")  # back to the same lookup
                return _page(request, "key.html", {"wrong": bool(key), "next": here}, 401)
            try:
                return await handler(request)
            except ApiError as exc:
                return _page(request, "error.html", {"error": exc}, exc.status)

        return keyed


router = APIRouter(include_in_schema=False, route_class=KeyedPage)
entry = APIRouter(include_in_schema=False)  # the root redirect and the key form: no key needed to reach them

UserId = Annotated[str, Query(max_length=255, pattern=f"^$|{ID_PATTERN}")]
ItemsText = Annotated[str, Query(max_length=4000)]
SearchText = Annotated[str, Query(max_length=255)]


@entry.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=307)


@entry.get("/dashboard/key", response_class=HTMLResponse)
def key_form(request: Request) -> HTMLResponse:
    return _page(request, "key.html", {"wrong": False, "next": "/dashboard"})


@entry.post("/dashboard/key", response_class=HTMLResponse)
async def keep_key(request: Request, settings: SettingsDep) -> Response:
    """The key form's POST (application/x-www-form-urlencoded): a key of the service's goes into the cookie."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0]
    target = (form.get("next") or ["/dashboard"])[0]
    if not target.startswith("/dashboard") or "//" in target:  # only back into the dashboard, never off-site
        target = "/dashboard"
    if key_scope(key, settings) is None:
        return _page(request, "key.html", {"wrong": True, "next": target}, 403)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict", path="/dashboard",
                        secure=request.url.scheme == "https")
    return response


@router.get("/dashboard", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep, cache: CacheDep, store: StoreDep, settings: SettingsDep) -> HTMLResponse:
    return _page(request, "overview.html", dashboard.overview(session, cache, store, settings))


@router.get("/dashboard/models/{name}", response_class=HTMLResponse)
def model(request: Request, name: Annotated[str, PathParam(pattern=MODEL_PATTERN)], store: StoreDep,
          settings: SettingsDep) -> HTMLResponse:
    return _page(request, "model.html", dashboard.model_page(store, settings, name))


@router.get("/dashboard/data", response_class=HTMLResponse)
def data(request: Request, session: SessionDep) -> HTMLResponse:
    return _page(request, "data.html", dashboard.data_page(session))


@router.get("/dashboard/users", response_class=HTMLResponse)
async def users(request: Request, session: SessionDep, cache: CacheDep, store: StoreDep, settings: SettingsDep,
                user_id: UserId = "", items: ItemsText = "") -> HTMLResponse:
    rate_items = [i for i in (part.strip() for part in items.replace(",", " ").split()) if i]
    context: dict[str, Any] = {"user_id": user_id, "items_text": items, "page": None}
    if user_id:
        context["page"] = await dashboard.user_page(session, cache, store, settings, user_id, rate_items)
    return _page(request, "users.html", context)


@router.get("/dashboard/items", response_class=HTMLResponse)
async def items(request: Request, session: SessionDep, cache: CacheDep, store: StoreDep, settings: SettingsDep,
                q: SearchText = "", item_id: UserId = "") -> HTMLResponse:
    context: dict[str, Any] = {"q": q, "item_id": item_id, "found": None, "similar": None, "title": None}
    if q.strip():
        context["found"] = await dashboard.item_search(session, q.strip())
    if item_id:
        context["similar"] = await dashboard.similar_lists(session, cache, store, settings, item_id)
        context["title"] = await dashboard.item_title(session, item_id)
    return _page(request, "items.html", context)


@router.get("/dashboard/traffic", response_class=HTMLResponse)
def traffic(request: Request, metrics: MetricsDep) -> HTMLResponse:
    return _page(request, "traffic.html", dashboard.traffic(metrics, time.time()))
