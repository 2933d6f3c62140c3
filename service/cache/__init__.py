"""What the service caches, composed of three parts that each do one thing:

- ``backend``: the key-value store (``service.cache.backends``: Redis when ``REDIS_URL`` is set, else
  in process), where the answers are cached;
- ``users``: the users' lists on that backend, invalidated by a generation token per user
  (``service.cache.users``);
- ``histories`` and ``titles``: memos kept in process whatever the backend (``service.cache.memos``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json

from service.cache.backends import BACKOFF_S, Backend, CacheUnavailable, MemoryCache, RedisCache
from service.cache.memos import Histories, Titles
from service.cache.users import NO_WRITE, CacheEntry, UserLists
from service.metrics import Metrics

__all__ = ["BACKOFF_S", "NO_WRITE", "Backend", "Cache", "CacheEntry", "CacheUnavailable", "Histories", "MemoryCache",
           "RedisCache", "Titles", "UserLists", "list_key", "make_cache"]


@dataclass(frozen=True)
class Cache:
    backend: Backend
    users: UserLists
    histories: Histories
    titles: Titles

    @property
    def metrics(self) -> Metrics:
        return self.backend.metrics

    async def aclose(self) -> None:
        await self.backend.aclose()

    def close(self) -> None:
        self.users.close()  # stops the retries of unconfirmed invalidations
        self.backend.close()


def make_cache(redis_url: str | None, metrics: Metrics, *, namespace: str, max_entries: int, timeout_s: float,
               history_rows: int = 0) -> Cache:
    if redis_url:
        backend: Backend = RedisCache(redis_url, metrics, namespace=namespace, timeout_s=timeout_s)
    else:
        backend = MemoryCache(metrics, namespace=namespace, max_entries=max_entries)
    return Cache(backend, UserLists(backend), Histories(metrics, history_rows), Titles())


def list_key(prefix: str, *parts: Any) -> str:
    """A compact key from the request's parameters (model version and name among them; a dict's keys in its
    order, as a model's dump gives them): pydantic-core's JSON costs a lookup a third of ``json.dumps``'s."""
    digest = hashlib.sha256(to_json(parts, fallback=str)).hexdigest()[:32]
    return f"{prefix}:{digest}"
