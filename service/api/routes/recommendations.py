"""POST /users/{user_id}/recommendations: a user's top-k items, hits and misses in one handler.

The route answers its requests itself (``RecommendationsRoute.answer``) instead of through
FastAPI's dependencies and body handling, which cost a cache hit most of its time; the
``BeforeRouting`` middleware sends them to it ahead of FastAPI's routing. One parse step
(``parse``) turns the path id, the headers and the body into a request or the refusal FastAPI
gave the same request: the key and the media type first (``AccessFirstRoute.check_headers``,
before the body is read), then the body's JSON (400) and the fields of the id and the body (422,
located as FastAPI locates them), their limits declared once (``UserIdPath``,
``RecommendationRequest``). ``recommend``'s signature is the operation's OpenAPI description,
and what the route calls with the parsed request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any, Awaitable, Callable, Coroutine

from fastapi import APIRouter, Body, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator
from starlette.exceptions import HTTPException
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service import serving
from service.api.deps import PartsDep, ReadAccess
from service.api.routing import AccessFirstRoute
from service.schemas import ID_MAX_CHARS, ID_PATTERN, RecommendationRequest, RecommendationResponse

UserIdPath = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN, description="The user's external id.")]
RequestBody = Annotated[RecommendationRequest | None, Body()]
# the adapters' core validators, called directly: TypeAdapter's own methods are one more Python call a request
_USER_ID = TypeAdapter(UserIdPath).validator
_BODY = TypeAdapter(RequestBody).validator
_BODY_JSON = TypeAdapter(RecommendationRequest).validator  # JSON mode: the same coercions as Python mode for these fields


class RecommendationsRoute(AccessFirstRoute):
    """An ``APIRoute`` whose requests ``answer`` handles: parsed here, answered by ``recommend``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.respond

    async def respond(self, request: Request) -> Response:
        return Response(await self.answer(request), media_type="application/json")

    async def answer(self, request: Request) -> bytes:
        """The body answering one request, hit or miss; a refusal is raised, for the app's error handlers."""
        user_id, body = await self.parse(request)
        answer = await recommend(request.app.state.parts, user_id, body)
        request.scope.setdefault("state", {})["model"] = answer.model  # the request metrics' label (``request.state`` builds a State)
        return answer.json.encode()  # the one place a hit's and a miss's answer becomes the body sent

    async def parse(self, request: Request) -> tuple[str, RecommendationRequest | None]:
        """The user id and the request, or the refusal FastAPI's own handling raised, in its order."""
        self.check_headers(request)
        raw = await _body(request)
        errors: list[dict[str, Any]] = []
        user_id = _validated(_USER_ID, request.path_params["user_id"], ("path", "user_id"), errors)
        if raw:
            try:  # the usual body, parsed and validated in one step; what fails it is read again as FastAPI reads it
                body = _BODY_JSON.validate_json(raw)
            except ValidationError:
                body = _validated(_BODY, _json(raw), ("body",), errors)
        else:
            body = None
        if errors:
            raise RequestValidationError(errors)
        return user_id, body


async def _body(request: Request) -> bytes:
    """The whole body; a failure to read it is FastAPI's 400 (a body over MAX_BODY_BYTES: its own 413)."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            raise HTTPException(400, "There was an error parsing the body")  # the client went away
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json(raw: bytes) -> Any:
    """``raw`` as FastAPI parses a JSON body (``json.loads``: UTF-8, 16 or 32), or its 400."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}]) from exc
    except Exception as exc:  # not UTF-8, 16 or 32; nested past the recursion limit
        raise HTTPException(400, "There was an error parsing the body") from exc


def _validated(adapter: SchemaValidator, value: Any, loc: tuple[str, ...], errors: list[dict[str, Any]]) -> Any:
    """``value`` validated as FastAPI validates a parameter (Python mode, from attributes; None is no value);
    its errors, located under ``loc``, added to ``errors``."""
    if value is None:
        return None
    try:
        return adapter.validate_python(value, from_attributes=True)
    except ValidationError as exc:
        errors += [{**error, "loc": loc + tuple(error["loc"])} for error in exc.errors(include_url=False)]
        return None


async def recommend(parts: PartsDep, user_id: UserIdPath, body: RequestBody = None) -> serving.Answer:
    """Top-k items for a user: from the model for users it was trained on, by fold-in from the
    stored history for users who arrived after training, the popularity list for users with none.
    Every answer has its own `recommendation_id` (for POST /feedback); while an experiment runs, a
    request that names no model is answered by the user's arm, or a team-draft mix of two arms'
    lists (`experiment` says which)."""

    def answer(store: Any, request: RecommendationRequest) -> Awaitable[serving.Answer]:
        served = parts if store is parts.store else replace(parts, store=store)  # an arm's pinned version
        return serving.recommendations(parts.session_factory, served, user_id, request)

    return await parts.experiment_serving.recommend(user_id, body or RecommendationRequest(), answer)


router = APIRouter(tags=["recommendations"], dependencies=[ReadAccess], route_class=RecommendationsRoute)
router.add_api_route("/users/{user_id}/recommendations", recommend, methods=["POST"], response_model=RecommendationResponse)


class BeforeRouting:
    """ASGI middleware: the route's requests go to the route at once, not through FastAPI's routing and
    request handling, which cost a cache hit much of its throughput (bench/serving.py rec-hit). The route
    matches them as the router would (the scope's route and path parameters) and its refusals meet the
    app's exception handlers."""

    def __init__(self, app: ASGIApp, route: RecommendationsRoute, handlers: Mapping[Any, Any]) -> None:
        self.app, self.route, self.handlers = app, route, handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in self.route.methods:
            # Starlette's full match (Route.matches), inlined: its calls cost a hit ~2 us (bench/RESULTS.md, "Cache-hit CPU")
            match = self.route.path_regex.match(get_route_path(scope))
            if match is not None:
                params = {name: self.route.param_convertors[name].convert(value) for name, value in match.groupdict().items()}
                scope.update(endpoint=self.route.endpoint, path_params={**scope.get("path_params", {}), **params}, route=self.route)
                await self.answer(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            body = await self.route.answer(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            await (await handler(request, exc))(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [  # the route's Response, unbuilt
            (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    def _handler(self, exc: Exception) -> Any:
        """The app's handler of ``exc``, found as Starlette's ExceptionMiddleware finds it (a wrapper it costs a hit
        a few per cent); None for the last resort's (``Exception``): the outermost middleware applies that one."""
        return next((self.handlers[cls] for cls in type(exc).__mro__ if cls in self.handlers and cls is not Exception), None)
