"""Requests per client, counted with ``limits`` (in Redis when ``REDIS_URL`` is set, so every
replica shares the counts; in process otherwise), answered 429 with ``Retry-After`` past the limit.

A client is the key a request carries, if it is one of the service's keys (``deps.key_scope``,
the routes' own rule: its scope names it, never the secret), else the client's address: a
request with a wrong key counts against its address, so guessing keys is limited too.
``RATE_LIMIT`` bounds each address, ``RATE_LIMIT_PER_KEY`` each key. The middleware runs
before the routes (and ``BeforeRouting``), so nothing goes around it; the health and metrics
endpoints are not counted (probes must not get 429).
The limits are a guard, never a dependency: when Redis fails, requests pass uncounted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection

import redis.asyncio
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import API_KEY_HEADER, key_scope
from service.cache.backends import BACKOFF_S
from service.core.config import Settings
from service.errors import error_response
from service.metrics import Metrics

log = logging.getLogger("service.rate_limits")


class RateLimits:
    """The two limits and their counters; ``retry_after`` is what the middleware asks."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.per_address = _items(settings.RATE_LIMIT)
        self.per_key = _items(settings.RATE_LIMIT_PER_KEY)
        self._pool: redis.asyncio.ConnectionPool | None = None
        if settings.REDIS_URL:
            # the cache's timeouts, and no client-side retries: a dead Redis costs one timeout, then BACKOFF_S of nothing
            self._pool = redis.asyncio.ConnectionPool.from_url(
                settings.REDIS_URL, socket_timeout=settings.REDIS_TIMEOUT_S,
                socket_connect_timeout=settings.REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
            )
            storage = RedisStorage(f"async+{settings.REDIS_URL}", implementation="redispy", wrap_exceptions=True,
                                   key_prefix=f"{settings.CACHE_NAMESPACE}:limits", connection_pool=self._pool)
        else:
            storage = MemoryStorage()
        self.limiter = SlidingWindowCounterRateLimiter(storage)
        self._down_until = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.per_address or self.per_key)

    def client(self, scope: Scope) -> tuple[str, list[RateLimitItem]]:
        """Who sent the request (a key's scope, or an address) and the limits that apply."""
        opened = key_scope(Headers(scope=scope).get(API_KEY_HEADER), self.settings)
        if opened is not None:
            return f"key:{opened.name.lower()}", self.per_key
        address = scope.get("client") or ("unknown", 0)
        return f"address:{address[0]}", self.per_address

    async def retry_after(self, client: str, items: list[RateLimitItem]) -> int | None:
        """Seconds until ``client`` may send again, or None if this request is within its limits (counted)."""
        if not items or time.monotonic() < self._down_until:
            return None
        try:
            for item in items:
                if not await self.limiter.hit(item, client):
                    reset_at = (await self.limiter.get_window_stats(item, client)).reset_time
                    return max(1, math.ceil(reset_at - time.time()))
        except StorageError as exc:
            if time.monotonic() >= self._down_until + BACKOFF_S:
                log.warning("rate limit storage unavailable, requests pass uncounted: %s", exc.storage_error)
            self._down_until = time.monotonic() + BACKOFF_S
            self.metrics.cache_errors.labels("rate_limit").inc()
        return None

    async def aclose(self) -> None:
        """Closes the Redis connections, which belong to the running event loop (at shutdown)."""
        if self._pool is not None:
            await self._pool.disconnect()


def _items(limit: str | None) -> list[RateLimitItem]:
    return [] if limit in (None, "off") else parse_many(limit)


class RateLimited:
    """ASGI middleware: a 429 with ``Retry-After`` for a client past its limit; the rest goes on."""

    def __init__(self, app: ASGIApp, limits: RateLimits, exempt_paths: Collection[str]) -> None:
        self.app, self.limits, self.exempt_paths = app, limits, frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.exempt_paths:
            client, items = self.limits.client(scope)
            wait = await self.limits.retry_after(client, items)
            if wait is not None:
                response = error_response(
                    429, "rate_limited", f"too many requests from this client; retry in {wait} s",
                    {"client": client.split(":", 1)[0], "limits": [str(item) for item in items], "retry_after_s": wait},
                    {"Retry-After": str(wait)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
