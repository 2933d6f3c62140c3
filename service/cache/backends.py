"""The key-value stores behind the cache: ``RedisCache`` when ``REDIS_URL`` is set (redis-py blocking, a
pipelined hiredis connection on the event loop: ``service.cache.redis_pipe``), ``MemoryCache`` (TTL + LRU, in
process) otherwise; get / set / delete_many / ping, blocking and on the event loop.

The cache is an optimisation, never a dependency: a Redis error or timeout is counted in
``aerec_cache_errors_total`` and answered as a miss, and after a failure Redis is left alone for
``BACKOFF_S`` so a dead server costs nothing per request. Besides the plain operations each backend
does the two steps of the users' lists atomically (``service.cache.users``): reading a user's
generation token, their write record and an entry in one step (on Redis, one round trip: a Lua
script), and deleting tokens while recording writes (``record_writes``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, Iterable, NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.cache.redis_pipe import LuaScript, RedisPipe, RedisPyLoopClient, loop_client, redis_py_options
from service.metrics import Metrics

log = logging.getLogger("service.cache")

BACKOFF_S = 2.0  # after a Redis failure, skip Redis this long (requests go uncached, fast)
LATER_S = 0.02  # a ``set_later`` answer waits at most this long for a lookup to carry it to Redis


class CacheUnavailable(Exception):
    pass


class UserEntryKeys(NamedTuple):
    """What ``Backend.user_entry`` reads, namespaced: the user's generation token and write record, and the
    entry's key before the token; and a fresh token to draw, with its TTL, if the user has none."""

    generation: str
    written: str
    entry_prefix: str
    fresh_token: str
    ttl_ms: int


class FoundEntry(NamedTuple):
    generation: str
    value: str | None
    known: bool  # the token was there (False: ``fresh_token`` was drawn now)
    written: str | None = None  # (the script's reply drops a trailing nil)


def ms(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))  # Redis TTLs in whole milliseconds, at least one


class Backend(ABC):
    """get/set/delete_many/ping; failures of the backend become misses and are counted."""

    name: str  # "memory" or "redis", as readiness reports it

    def __init__(self, metrics: Metrics, namespace: str = "aerec") -> None:
        self.metrics = metrics
        self.namespace = namespace
        self._counters: dict[tuple[bool, str], Any] = {}  # labels() takes a lock and a lookup each call

    def key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def get(self, key: str, kind: str = "other") -> str | None:
        try:
            value = self._get(self.key(key))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return None
        return self.counted(value, kind)

    def counted(self, value: str | None, kind: str) -> str | None:
        self.count(value is not None, kind)
        return value

    def count(self, hit: bool, kind: str) -> None:
        """One more cache hit (or miss) of ``kind``."""
        counter = self._counters.get((hit, kind))
        if counter is None:
            counter = self._counters[hit, kind] = (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(kind)
        counter.inc()

    def set(self, key: str, value: str, ttl_s: float, *, only_if_absent: bool = False) -> bool:
        """Store ``value`` for ``ttl_s`` seconds; with ``only_if_absent`` keep an existing value. True if stored."""
        try:
            return self._set(self.key(key), value, ttl_s, only_if_absent)
        except CacheUnavailable:
            self.metrics.cache_errors.labels("set").inc()
            return False

    def delete_many(self, keys: Iterable[str]) -> bool:
        keys = [self.key(k) for k in keys]
        if not keys:
            return True
        try:
            self._delete_many(keys)
            return True
        except CacheUnavailable:
            self.metrics.cache_errors.labels("delete").inc()
            return False

    def ping(self) -> bool:
        try:
            return self._ping()
        except CacheUnavailable:
            return False

    def close(self) -> None:
        """Close the blocking connections (after ``aclose``, at shutdown)."""

    async def aclose(self) -> None:
        """Close what belongs to the running event loop (before ``close``, at shutdown)."""

    # What a request does on the event loop. Redis answers through the loop's own connection, so a
    # hit costs no thread hop; errors and metrics as in ``get`` and ``set``.
    async def get_async(self, key: str, kind: str = "other") -> str | None:
        try:
            value = await self._get_async(self.key(key))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return None
        return self.counted(value, kind)

    async def set_async(self, key: str, value: str, ttl_s: float) -> bool:
        try:
            return await self._set_async(self.key(key), value, ttl_s)
        except CacheUnavailable:
            self.metrics.cache_errors.labels("set").inc()
            return False

    def set_later(self, key: str, value: str, ttl_s: float) -> None:
        """``set_async`` without waiting for it, from the event loop (the answer goes out first); in process: now."""
        self.set(key, value, ttl_s)

    @abstractmethod
    def _get(self, key: str) -> str | None: ...

    @abstractmethod
    def _set(self, key: str, value: str, ttl_s: float, only_if_absent: bool) -> bool: ...

    @abstractmethod
    def _delete_many(self, keys: list[str]) -> None: ...

    @abstractmethod
    def _ping(self) -> bool: ...

    # In process the asyncio hooks are the blocking ones (no I/O); Redis overrides them.
    async def _get_async(self, key: str) -> str | None:
        return self._get(key)

    async def _set_async(self, key: str, value: str, ttl_s: float) -> bool:
        return self._set(key, value, ttl_s, False)

    # ---- the users' lists' steps (``service.cache.users``); namespaced keys; raise ``CacheUnavailable`` ----
    @abstractmethod
    def user_entry(self, keys: UserEntryKeys) -> FoundEntry:
        """The user's token (``keys.fresh_token`` set if there was none), the entry under it and the write record."""

    async def user_entry_async(self, keys: UserEntryKeys) -> FoundEntry:
        return self.user_entry(keys)

    @abstractmethod
    def read_record(self, key: str) -> str | None:
        """A write record (``record_writes``'s), which is never evicted nor expired."""

    @abstractmethod
    def record_writes(self, tokens: list[str], written: dict[str, str]) -> None:
        """Delete ``tokens`` and set ``written`` (never evicted nor expired) at once; tried even while backing off."""

    async def record_writes_async(self, tokens: list[str], written: dict[str, str]) -> None:
        self.record_writes(tokens, written)


class MemoryCache(Backend):
    """In-process TTL + LRU: an OrderedDict in recency order, bounded by ``max_entries``."""

    name = "memory"

    def __init__(self, metrics: Metrics, namespace: str = "aerec", max_entries: int = 10_000) -> None:
        super().__init__(metrics, namespace)
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._written: dict[str, str] = {}  # out of the LRU: a lost record would let a stale list be served
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def _get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key, time.monotonic())

    def _set(self, key: str, value: str, ttl_s: float, only_if_absent: bool) -> bool:
        now = time.monotonic()
        with self._lock:
            return self._put(key, value, now + ttl_s, now, only_if_absent)

    def _put(self, key: str, value: str, expires: float, now: float, only_if_absent: bool = False) -> bool:
        if only_if_absent and self._live(key, now) is not None:
            return False
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # least recently used
        return True

    def _delete_many(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def _ping(self) -> bool:
        return True

    def user_entry(self, keys: UserEntryKeys) -> FoundEntry:
        now = time.monotonic()
        with self._lock:  # one step, as Redis's script is
            generation = self._live(keys.generation, now)
            if generation is None:
                self._put(keys.generation, keys.fresh_token, now + keys.ttl_ms / 1000, now)
                return FoundEntry(keys.fresh_token, None, False, self._written.get(keys.written))
            return FoundEntry(generation, self._live(f"{keys.entry_prefix}:{generation}", now), True,
                              self._written.get(keys.written))

    def read_record(self, key: str) -> str | None:
        return self._written.get(key)

    def record_writes(self, tokens: list[str], written: dict[str, str]) -> None:
        with self._lock:
            self._written.update(written)  # first: a reader between the two sees the write and scores
        self._delete_many(tokens)


# A user's entry in one round trip instead of two or three (GET the generation, SET a fresh one
# if there is none, GET the entry). Atomic, as the SET NX of ``UserLists.user_generation`` is.
# KEYS[1]: the generation key, KEYS[2] the user's write record; ARGV: a fresh token, its TTL in ms,
# the entry's key before the token. Returns the token, the entry, whether the token was there, the record.
# KEYS[3..] with ARGV[4..] (value, TTL in ms each): answers of ``set_later`` stored in the same round trip.
_USER_ENTRY_LUA = """
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'PX', ARGV[2 * i - 1]) end
local written = redis.call('GET', KEYS[2])
local generation = redis.call('GET', KEYS[1])
if not generation then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {ARGV[1], false, 0, written}
end
return {generation, redis.call('GET', ARGV[3] .. ':' .. generation), 1, written}
"""
_USER_ENTRY = LuaScript(_USER_ENTRY_LUA)


class RedisCache(Backend):
    """Redis with short timeouts; any Redis error is a ``CacheUnavailable`` (counted, served uncached)."""

    name = "redis"

    def __init__(self, url: str, metrics: Metrics, namespace: str = "aerec", timeout_s: float = 0.25) -> None:
        super().__init__(metrics, namespace)
        self._url, self._timeout_s = url, timeout_s
        self.client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **redis_py_options(timeout_s))
        self._down_until = 0.0
        self._user_entry = self.client.register_script(_USER_ENTRY_LUA)  # EVALSHA, loaded again after a restart
        self._async: tuple[asyncio.AbstractEventLoop, RedisPipe | RedisPyLoopClient] | None = None
        self._later: dict[str, tuple[str, int]] = {}  # ``set_later``'s, until the next lookup or ``LATER_S``
        self._flushing: set[asyncio.Task] = set()

    def _loop_client(self) -> RedisPipe | RedisPyLoopClient:
        """The running loop's client (its connection belongs to that loop)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, loop_client(self._url, self._timeout_s))
        return self._async[1]

    def _call(self, fn, *args, force: bool = False, **kwargs):
        if not force and time.monotonic() < self._down_until:
            raise CacheUnavailable("redis is backing off after a failure")
        try:
            return fn(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            raise CacheUnavailable(str(exc)) from exc

    async def _acall(self, fn, *args, force: bool = False, **kwargs):
        if not force and time.monotonic() < self._down_until:
            raise CacheUnavailable("redis is backing off after a failure")
        try:
            return await fn(*args, **kwargs)
        except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(exc)
            raise CacheUnavailable(str(exc)) from exc

    def _failed(self, exc: BaseException) -> None:
        if self._down_until == 0.0 or time.monotonic() >= self._down_until + BACKOFF_S:
            log.warning("redis unavailable, serving uncached: %s", exc)
        self._down_until = time.monotonic() + BACKOFF_S

    def _get(self, key: str) -> str | None:
        return self._call(self.client.get, key)

    def _set(self, key: str, value: str, ttl_s: float, only_if_absent: bool) -> bool:
        return bool(self._call(self.client.set, key, value, px=ms(ttl_s), nx=only_if_absent))

    def _delete_many(self, keys: list[str]) -> None:
        # Invalidation is tried even while backing off: a missed delete could serve a stale list.
        self._call(self.client.delete, *keys, force=True)

    def _ping(self) -> bool:
        # readiness asks Redis itself, ignoring the backoff, so it reports recovery at once
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    async def _get_async(self, key: str) -> str | None:
        return await self._acall(self._loop_client().execute, "GET", key)

    async def _set_async(self, key: str, value: str, ttl_s: float) -> bool:
        return bool(await self._acall(self._loop_client().execute, "SET", key, value, "PX", ms(ttl_s)))

    def set_later(self, key: str, value: str, ttl_s: float) -> None:
        # stored by the next lookup's script, in its round trip; a round trip of their own cost a first request
        # most of what it costs more than a hit (bench/request_cpu.py; bench/RESULTS.md,
        # "First requests from stored top-N lists")
        if not self._later:
            asyncio.get_running_loop().call_later(LATER_S, self._flush_later)  # if no lookup comes first
        self._later[self.key(key)] = (value, ms(ttl_s))

    def _flush_later(self) -> None:
        if self._later:
            task = asyncio.get_running_loop().create_task(self._store_later())
            self._flushing.add(task)  # a reference until done: the loop keeps weak ones
            task.add_done_callback(self._flushing.discard)

    async def _store_later(self) -> None:
        pending, self._later = self._later, {}
        try:
            await self._acall(self._loop_client().pipeline,
                              [("SET", key, value, "PX", ttl_ms) for key, (value, ttl_ms) in pending.items()])
        except CacheUnavailable:
            self.metrics.cache_errors.labels("set").inc()

    def user_entry(self, keys: UserEntryKeys) -> FoundEntry:
        return FoundEntry(*self._call(self._user_entry, keys=[keys.generation, keys.written],
                                      args=[keys.fresh_token, keys.ttl_ms, keys.entry_prefix]))

    async def user_entry_async(self, keys: UserEntryKeys) -> FoundEntry:
        pending, self._later = self._later, {}  # ``set_later``'s answers ride along
        return FoundEntry(*await self._acall(
            self._loop_client().script, _USER_ENTRY, [keys.generation, keys.written, *pending],
            [keys.fresh_token, keys.ttl_ms, keys.entry_prefix, *(part for stored in pending.values() for part in stored)]))

    def read_record(self, key: str) -> str | None:
        return self._get(key)

    def record_writes(self, tokens: list[str], written: dict[str, str]) -> None:
        pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC: a lookup sees both changes or neither
        pipe.mset(written)
        pipe.delete(*tokens)
        self._call(pipe.execute, force=True)

    async def record_writes_async(self, tokens: list[str], written: dict[str, str]) -> None:
        mset = ("MSET", *(part for pair in written.items() for part in pair))
        await self._acall(self._loop_client().transaction, [mset, ("DEL", *tokens)], force=True)  # as ``record_writes``'s

    async def aclose(self) -> None:
        if self._async is not None and self._async[0] is asyncio.get_running_loop():
            await self._async[1].aclose()
            self._async = None

    def close(self) -> None:
        self.client.close()
