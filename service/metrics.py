"""Prometheus metrics of one app instance, in its own registry (so several apps can coexist in tests).

``RequestMetrics`` is a plain ASGI middleware: it times every request and labels it with
the route template (``/users/{user_id}/recommendations``, not the raw path, to keep
cardinality bounded), the status and the model the route served (set by the route in
``request.state.model``). It also refuses bodies over ``max_body_bytes`` with a 413.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_json

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = time.time()  # the dashboard's requests per second are counted since this
        r = self.registry
        self.requests = Counter(
            "aerec_http_requests", "HTTP requests served", ["method", "route", "status", "model"], registry=r
        )
        self.latency = Histogram(
            "aerec_http_request_duration_seconds", "Request latency", ["method", "route", "model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.cache_hits = Counter("aerec_cache_hits", "Cache lookups answered from the cache", ["kind"], registry=r)
        self.cache_misses = Counter("aerec_cache_misses", "Cache lookups that had to compute", ["kind"], registry=r)
        self.cache_errors = Counter(
            "aerec_cache_errors", "Cache operations that failed (served uncached)", ["operation"], registry=r
        )
        self.cache_invalidation_failures = Counter(
            "aerec_cache_invalidation_failures", "Failed deletes of users' cached lists after a write: retried, or "
            "gave_up (the write answered 503 cache_not_invalidated; those users are read uncached)", ["outcome"], registry=r,
        )
        self.model_info = Gauge("aerec_model_version_info", "The model version being served (value 1)", ["version"], registry=r)
        self.model_swaps = Counter("aerec_model_swaps", "Model versions swapped in", registry=r)
        self.model_refused = Counter("aerec_model_versions_refused", "Model versions that failed validation", registry=r)
        self.model_fallback = Gauge(
            "aerec_model_fallback", "1 while an older version serves because the one LATEST names was refused", registry=r
        )
        self.model_loaded_at = Gauge("aerec_model_loaded_timestamp_seconds", "When the served version was loaded", registry=r)
        self.write_group = Histogram(
            "aerec_interaction_batches_per_commit", "Interaction batches (requests) written by one transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.impressions_dropped = Counter(
            "aerec_impressions_dropped", "Impressions (or interactions to attribute) not recorded: the queue was full "
            "(queue_full), or the database refused the batch (write_failed)", ["kind", "reason"], registry=r,
        )
        self.experiment_impressions = Counter(
            "aerec_experiment_impressions", "Lists of an experiment's arm written (served, or scored in shadow)",
            ["experiment", "arm", "mode"], registry=r,
        )
        self.experiment_feedback = Counter(
            "aerec_experiment_feedback", "Feedback events stored on an experiment's lists, by the arm credited",
            ["experiment", "arm", "kind"], registry=r,
        )

    def served_version(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
        self.model_loaded_at.set_to_current_time()


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body without Content-Length grows past the limit; the
    app's HTTP-error handler turns it into the 413 error body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")


class RequestMetrics:
    """ASGI middleware: body size limit, then per-route/model request counts and latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self._series: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}  # labels() takes a lock and a lookup each call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        try:
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                await self._too_large(send_and_record)
            else:
                await self.app(scope, self._limited(receive), send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            model = (scope.get("state") or {}).get("model", "")
            method = scope.get("method", "")
            key = (method, route, str(status["code"]), model)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (self.metrics.requests.labels(*key), self.metrics.latency.labels(method, route, model))
            series[0].inc()
            series[1].observe(time.perf_counter() - started)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:  # a chunked body with no Content-Length
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return receive_limited

    async def _too_large(self, send: Send) -> None:
        body = error_json("payload_too_large", f"the request body is over {self.max_body_bytes} bytes",
                          {"max_bytes": self.max_body_bytes})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
