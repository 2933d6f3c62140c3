"""The dashboard: HTML pages under /dashboard (``/`` redirects there), server-rendered with Jinja2.

A router of its own, left out of the OpenAPI document, and no middleware: the API's requests
take the same path with or without it. Pages are reads, so they need the read key where reads
do (``READS_REQUIRE_KEY``). A browser cannot send the ``X-API-Key`` header by itself: the key
form (``/dashboard/key``) keeps the key in a cookie, HttpOnly and SameSite=Strict, scoped to
/dashboard; the header works too (a script, a proxy that adds it).

With the admin key, the overview also shows the admin actions (reload a version, start a
training run): forms posting to /dashboard/admin/*, which call the admin API's own route
functions. A cross-site form cannot trigger them: the cookies are SameSite=Strict, every form
carries a token bound to a random per-browser session cookie and the admin key (HMAC), and a
request the browser marks cross-site (``Sec-Fetch-Site``) is refused before anything runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Coroutine
from urllib.parse import parse_qs

from fastapi import APIRouter, Path as PathParam, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from models import REGISTRY
from service import dashboard, dashboard_experiments
from service import traffic as traffic_page
from service.api.deps import (API_KEY_HEADER, READ, CacheDep, KeyScope, MetricsDep, PartsDep, SessionDep, SettingsDep, StoreDep,
                              TrainingRunsDep, key_scope)
from service.api.routes import admin
from service.api.routes.experiments import ExperimentId
from service.core.config import Settings
from service.errors import ApiError
from service.schemas import ID_PATTERN, MODEL_PATTERN, TrainingRequest

KEY_COOKIE = "aerec_dashboard_key"
SESSION_COOKIE = "aerec_dashboard_session"  # random per browser: what the admin forms' token is bound to
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[2] / "templates" / "dashboard")


def _page(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context, status_code=status)


def _keep(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", path="/dashboard", secure=request.url.scheme == "https")


def _request_key(request: Request) -> str | None:
    return request.headers.get(API_KEY_HEADER) or request.cookies.get(KEY_COOKIE)


def _form_token(settings: Settings, session: str) -> str:
    """The admin forms' token: keyed by the admin key, so a page of another site can neither read nor compute it."""
    return hmac.new(settings.API_KEY.encode(), f"dashboard admin form {session}".encode(), hashlib.sha256).hexdigest()


def _admin_controls(request: Request, settings: Settings) -> dict[str, Any] | None:
    """What the admin forms need (None without the admin key): the token, the session it is bound to, the model names."""
    if key_scope(_request_key(request), settings) != KeyScope.ADMIN:
        return None
    session = request.cookies.get(SESSION_COOKIE) or secrets.token_urlsafe(32)
    return {"session": session, "token": _form_token(settings, session), "models": sorted(REGISTRY)}


def _from_elsewhere(request: Request) -> bool:
    """The browser says another site (or a sibling subdomain) sent this request (``Sec-Fetch-Site``)."""
    return request.headers.get("sec-fetch-site") in ("cross-site", "same-site")


async def _admin_form(request: Request, settings: Settings) -> dict[str, list[str]]:
    """The posted admin form's fields, once the request is shown to come from the dashboard's own page
    with the admin key; an ``ApiError`` (a 403 page) otherwise, before any action."""
    if _from_elsewhere(request):
        raise ApiError(403, "cross_site_request", "admin actions are taken from the dashboard's own pages only")
    if key_scope(_request_key(request), settings) != KeyScope.ADMIN:
        raise ApiError(403, "insufficient_scope", "admin actions need the admin key (API_KEY): enter it at /dashboard/key")
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    session = request.cookies.get(SESSION_COOKIE)
    token = (form.get("token") or [""])[0]
    if not session or not hmac.compare_digest(token.encode(), _form_token(settings, session).encode()):
        raise ApiError(403, "invalid_form_token", "the form's token does not belong to this browser's session: "
                       "open the overview again and resubmit")
    return form


class KeyedPage(APIRoute):
    """A page route: the read key checked first (header or cookie; the key form when it is missing or
    wrong), and an ``ApiError`` shown as a page rather than the API's JSON body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def keyed(request: Request) -> Response:
            settings = request.app.state.parts.settings
            key = _request_key(request)
            if not READ.allows(key, settings):
                here = request.url.path + (f"?{request.url.query}" if request.url.query else "")  # back to the same lookup
                return _page(request, "key.html", {"wrong": bool(key), "asked": True,
                                                   "next": here if request.method == "GET" else "/dashboard"}, 401)
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
    return _page(request, "key.html", {"wrong": False, "asked": False, "next": "/dashboard"})


@entry.post("/dashboard/key", response_class=HTMLResponse)
async def keep_key(request: Request, settings: SettingsDep) -> Response:
    """The key form's POST (application/x-www-form-urlencoded): a key of the service's goes into the cookie."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0]
    target = (form.get("next") or ["/dashboard"])[0]
    if not target.startswith("/dashboard") or "//" in target:  # only back into the dashboard, never off-site
        target = "/dashboard"
    if _from_elsewhere(request):  # another site must not set this browser's key (even one of its own)
        return _page(request, "key.html", {"wrong": False, "asked": True, "next": target}, 403)
    if key_scope(key, settings) is None:
        return _page(request, "key.html", {"wrong": True, "asked": True, "next": target}, 403)
    response = RedirectResponse(target, status_code=303)
    _keep(response, request, KEY_COOKIE, key)
    return response


@router.get("/dashboard", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep, cache: CacheDep, store: StoreDep, settings: SettingsDep,
             runs: TrainingRunsDep) -> HTMLResponse:
    controls = _admin_controls(request, settings)
    context = dashboard.overview(session, cache, store, settings)
    context["admin"] = controls
    context["training"] = runs.last.describe() if controls and runs.last else None
    response = _page(request, "overview.html", context)
    if controls and request.cookies.get(SESSION_COOKIE) != controls["session"]:
        _keep(response, request, SESSION_COOKIE, controls["session"])
    return response


@router.post("/dashboard/admin/reload", response_class=HTMLResponse)
async def admin_reload(request: Request, store: StoreDep, settings: SettingsDep) -> HTMLResponse:
    await _admin_form(request, settings)
    outcome = await run_in_threadpool(admin.reload, store)  # POST /admin/reload's own function
    return _page(request, "admin_done.html", {"action": "Reload", "message": outcome.message})


@router.post("/dashboard/admin/training", response_class=HTMLResponse)
async def admin_training(request: Request, settings: SettingsDep, runs: TrainingRunsDep) -> HTMLResponse:
    form = await _admin_form(request, settings)
    try:
        body = TrainingRequest(models=form.get("models"), seed=(form.get("seed") or ["0"])[0] or "0")
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ApiError(422, "validation_error", f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    run = await run_in_threadpool(admin.start_training, body, runs)  # POST /admin/training's own function
    return _page(request, "admin_done.html", {"action": "Training",
                                              "message": f"training run {run.id} started ({', '.join(run.models)})"}, 202)


@router.get("/dashboard/models/{name}", response_class=HTMLResponse)
def model(request: Request, name: Annotated[str, PathParam(pattern=MODEL_PATTERN)], store: StoreDep,
          settings: SettingsDep) -> HTMLResponse:
    return _page(request, "model.html", dashboard.model_page(store, settings, name))


@router.get("/dashboard/data", response_class=HTMLResponse)
def data(request: Request, session: SessionDep) -> HTMLResponse:
    return _page(request, "data.html", dashboard.data_page(session))


@router.get("/dashboard/users", response_class=HTMLResponse)
async def users(request: Request, session: SessionDep, parts: PartsDep,
                user_id: UserId = "", items: ItemsText = "") -> HTMLResponse:
    rate_items = [i for i in (part.strip() for part in items.replace(",", " ").split()) if i]
    context: dict[str, Any] = {"user_id": user_id, "items_text": items, "page": None}
    if user_id:
        context["page"] = await dashboard.user_page(session, parts, user_id, rate_items)
    return _page(request, "users.html", context)


@router.get("/dashboard/items", response_class=HTMLResponse)
async def items(request: Request, session: SessionDep, parts: PartsDep,
                q: SearchText = "", item_id: UserId = "") -> HTMLResponse:
    context: dict[str, Any] = {"q": q, "item_id": item_id, "found": None, "similar": None, "title": None, "recommended": None}
    if q.strip():
        context["found"] = await dashboard.item_search(session, q.strip())
    if item_id:
        context["similar"] = await dashboard.similar_lists(session, parts, item_id)
        context["title"] = await dashboard.item_title(session, item_id)
        # the first call of a version counts every list (memory-mapped files): off the event loop
        context["recommended"] = await run_in_threadpool(dashboard.how_often_recommended, parts.store, item_id)
    return _page(request, "items.html", context)


@router.get("/dashboard/traffic", response_class=HTMLResponse)
def traffic(request: Request, metrics: MetricsDep) -> HTMLResponse:
    return _page(request, "traffic.html", traffic_page.traffic(metrics, time.time()))


@router.get("/dashboard/experiments", response_class=HTMLResponse)
def experiments(request: Request, session: SessionDep) -> HTMLResponse:
    return _page(request, "experiments.html", dashboard_experiments.experiments_page(session))


@router.get("/dashboard/experiments/{experiment_id}", response_class=HTMLResponse)
def experiment(request: Request, session: SessionDep, experiment_id: ExperimentId) -> HTMLResponse:
    return _page(request, "experiment.html", dashboard_experiments.experiment_page(session, experiment_id))
