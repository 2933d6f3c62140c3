"""The routes' ``APIRoute``: the key and the body's media type are checked before FastAPI reads the body.

FastAPI reads and parses a route's JSON body before it runs any dependency, so a request
without a key would have its body (up to MAX_BODY_BYTES) parsed before its 401. This
route class runs the route's key rule (``deps.ACCESS_RULES``) first, refuses a body that
is not JSON with a 415, and lets a route refuse more from the headers (``before_body``);
the dependencies run as before once the body is read. ``check_headers`` is that step alone,
for a route that reads its body itself (``routes.recommendations``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any, Callable, Coroutine

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Scope

from service.api.deps import ACCESS_RULES, API_KEY_HEADER, Access
from service.errors import ApiError

API_KEY_LOOKUP = API_KEY_HEADER.lower()  # ASGI servers give header names in lower case


def first_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by name, the first of repeated ones, latin-1: what Starlette's ``Headers.get`` reads,
    in one pass (each of its lookups scans them all; a cache hit's checks made four: bench/RESULTS.md, "Cache-hit CPU")."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])}


def json_or_no_body(headers: Mapping[str, str]) -> bool:
    """Whether the request has no body or declares it JSON (``application/json``, ``application/*+json``),
    read as FastAPI reads it before parsing a body as JSON (``email.message``: a type with other than one
    "/" is text/plain), so that what passes here is parsed, never validated as bytes."""
    if headers.get("content-length", "0").lstrip("0") == "" and "transfer-encoding" not in headers:
        return True
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type.count("/") != 1:
        return False
    main_type, subtype = media_type.split("/")
    return main_type == "application" and (subtype == "json" or subtype.endswith("+json"))


class AccessFirstRoute(APIRoute):
    """An ``APIRoute`` whose key rule and body media type are checked before the body is read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked_first(request: Request) -> Response:
            self.check_headers(request)
            return await handler(request)

        return checked_first

    @cached_property
    def access_rules(self) -> list[Access]:
        return [ACCESS_RULES[d.dependency] for d in self.dependencies if d.dependency in ACCESS_RULES]

    def check_headers(self, request: Request) -> None:
        """Raises the refusal a request gets from its headers alone: the key (401, 403), a body not JSON (415),
        then ``before_body``."""
        headers = first_headers(request.scope)
        for rule in self.access_rules:
            rule.check(headers.get(API_KEY_LOOKUP), request.app.state.parts.settings)
        if self.body_field is not None and not json_or_no_body(headers):
            raise ApiError(415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)",
                           {"content_type": headers.get("content-type")})
        self.before_body(request)

    def before_body(self, request: Request) -> None:
        """What else the route refuses from the headers alone, before the body is read (nothing here)."""
