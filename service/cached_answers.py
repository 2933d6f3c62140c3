"""Cache hits of ``POST /users/{user_id}/recommendations``, answered before FastAPI's routing.

A hit is one cache lookup and stored JSON, yet through the router it also paid for the
routing, the route's dependencies (session, settings, cache, store, the read-key check) and
FastAPI's body handling: about two thirds of its time (py-spy, ml-100k, 8 clients; the
bench's ceiling, a bare FastAPI route, answered 8,700 req/s where hits reached 2,600).
This middleware answers a hit itself, and a miss that the user's stored top-N list answers
(``serving.stored_answer``: a user's first request of a version, every title known here),
with the same validation of the body (the route's media type rule and pydantic model), the
same key rule (``deps.READ``) and lookup
(``serving.recommendation_lookup``, with its limits), the same JSON, and the route's labels
in the request metrics. The rate limits (``service.rate_limits``) run before it.

Anything else goes on to the route unchanged, its body replayed: a miss (with its lookup
handed over, so a miss still costs one lookup), a body that does not validate, a missing or
wrong API key where reads need one, an unknown model, no loaded version, a body sent in
chunks or larger than a request needs. The route then answers, or gives its error, as it
always did; nothing is answered here that the route would refuse.
"""

from __future__ import annotations

import logging
import re

from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import serving
from service.api.deps import API_KEY_HEADER, READ
from service.api.routing import json_or_no_body
from service.cache import Cache
from service.core.config import Settings
from service.errors import ApiError
from service.model_store import ModelStore
from service.schemas import ID_PATTERN, RecommendationRequest

log = logging.getLogger("service.cached_answers")

ROUTE_PATH = "/users/{user_id}/recommendations"
_PATH = re.compile(r"/users/([^/]+)/recommendations")  # {user_id}: Starlette's default, one path segment
_USER_ID = re.compile(ID_PATTERN)
MAX_USER_ID_CHARS = 255  # the route's Path(max_length=...)
MAX_BODY_BYTES = 64 << 10  # a recommendation request is a few hundred bytes; more goes to the route
ENTRY_STATE = "recommendation_entry"  # scope state: a miss's lookup, for the route to reuse


class CachedRecommendations:
    """ASGI middleware: answers cache hits of the recommendations route, passes on the rest."""

    def __init__(self, app: ASGIApp, settings: Settings, cache: Cache, store: ModelStore, route: object) -> None:
        self.app, self.settings, self.cache, self.store = app, settings, cache, store
        self.route = route  # the APIRoute: what the request metrics label the request with

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)  # the first of repeated headers, latin-1: as the route reads them
        declared = headers.get("content-length")
        if declared is None or not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            await self.app(scope, receive, send)  # chunked or large: the route reads it
            return
        if not READ.allows(headers.get(API_KEY_HEADER), self.settings) or not json_or_no_body(headers):
            await self.app(scope, receive, send)  # the route refuses it, before reading the body
            return
        messages, body = await _read_body(receive)
        answer = None
        try:
            if body is not None:  # None: the client went away, which the route's receive sees too
                answer = await self._cached(scope, match.group(1), body)
        except Exception:  # the route will meet the same trouble and answer it properly
            log.exception("cached answer failed; the route answers instead")
        if answer is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        payload = answer.encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    async def _cached(self, scope: Scope, user_id: str, body: bytes) -> str | None:
        """The stored JSON for this request, or None for the route to answer."""
        if len(user_id) > MAX_USER_ID_CHARS or not _USER_ID.fullmatch(user_id):  # "$" alone allows a final newline
            return None
        if body:  # the route parses any body, whitespace too (a 400)
            try:
                request = RecommendationRequest.model_validate_json(body)
            except ValidationError:
                return None
        else:
            request = RecommendationRequest()
        try:
            lookup = serving.recommendation_lookup(self.cache, self.store, self.settings, user_id, request)
        except ApiError:
            return None
        entry = await lookup()
        answer = entry.value
        if answer is None:
            answer = serving.stored_answer(lookup, request, entry)
            if answer is None:
                scope.setdefault("state", {})[ENTRY_STATE] = (lookup.key, entry)
                return None
            if entry.key is not None:  # stored for the next ask, after this answer is sent, as a hit
                self.cache.set_later(entry.key, answer, self.settings.CACHE_TTL_S)
        scope["route"] = self.route
        scope.setdefault("state", {})["model"] = lookup.model
        return answer


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages read and the whole body (None if the client disconnected first)."""
    messages, chunks = [], []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back the messages already read."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
