"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``.

Routes and the layers below raise ``ApiError``; ``install_error_handlers`` turns it,
FastAPI's validation errors, HTTP errors (404 route, 405 method, 413 body) and an
unreachable database into that body. Anything else is a 500 with the same shape.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service.errors")

# Exceptions that mean "the database cannot be reached or is not answering": 503, retry later.
DATABASE_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error the client should see, with an HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}


def error_response(status: int, code: str, message: str, details: Any = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def error_json(code: str, message: str, details: Any = None) -> bytes:
    """The error body as bytes, for what answers below the ASGI app (the HTTP protocol)."""
    return json.dumps(error_body(code, message, details)).encode()


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only loc/msg/type: ``input`` and ``ctx`` may hold values that are not JSON (bytes, exceptions).
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _validation_error(field_hints: dict[str, str], _: Request, exc: RequestValidationError) -> JSONResponse:
    details = _validation_details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return error_response(400, "invalid_json", "the request body is not valid JSON", details)
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    hint = field_hints.get(str(first["loc"][-1])) if first["loc"] else None
    message = f"invalid request: {where}: {first['msg']}" + (f"; {hint}" if hint else "")
    return error_response(422, "validation_error", message, details)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return error_response(
        503,
        "database_unavailable",
        "the database cannot be reached; nothing was written, retry later",
        {"reason": type(getattr(exc, "orig", None) or exc).__name__},
        {"Retry-After": "5"},
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")


def install_error_handlers(app: FastAPI, field_hints: dict[str, str] | None = None) -> None:
    """``field_hints``: field name -> a sentence added to a 422 about that field (what settings allow in it)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, partial(_validation_error, field_hints or {}))
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_type in DATABASE_UNAVAILABLE:
        app.add_exception_handler(exc_type, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
