"""One small cache interface (get / set / delete_many / ping) with two backends.

``RedisCache`` (redis-py) when ``REDIS_URL`` is set, ``MemoryCache`` (TTL + LRU, in
process) otherwise. The cache is an optimisation, never a dependency: a Redis error or
timeout is counted in ``aerec_cache_errors_total`` and answered as a miss, and after a
failure Redis is left alone for ``BACKOFF_S`` so a dead server costs nothing per request.

Invalidation of a user's lists uses a per-user generation token that is part of every
list's key (``user_generation``). POST /interactions deletes the users' tokens; the next
read draws a fresh random token, so every list cached before, including one computed
from a history read before the write committed, can never be found again. ``user_entry``
reads the token and the list together: on Redis, one round trip (a Lua script).
A user's history is kept in process under the token it was read with
(``user_history``): a request for another list of the same user (another page, another
``k``) reuses it while no write for that user has moved the token on.
An invalidation that fails is retried (``INVALIDATION_TRIES``) and counted; if it still fails
the users stay "unconfirmed" in this process: their reads go uncached, and try the delete
again, as a background thread does every second, until one succeeds (a token that outlived a
write must never be read again; other replicas read it until the delete lands).
Beside deleting a token, a write records when it was made (``written:<user>``, no expiry, set in
the same transaction as the delete): a user's stored top-N list (``service.inference.
stored_recommendation``) is served only to users with no write after the list's data was read,
and a lookup returns that time with the entry (``CacheEntry.written_at``), in the same round trip.
Requests look up on the event loop (``user_entry_async``, ``get_async``: Redis's asyncio
client, with the same timeouts and backoff); the rest runs in worker threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Collection, Sized
from typing import Any, Callable, Iterable, NamedTuple, Sequence, TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.metrics import Metrics

log = logging.getLogger("service.cache")

BACKOFF_S = 2.0  # after a Redis failure, skip Redis this long (requests go uncached, fast)
MAX_TITLES = 1_000_000  # item titles kept in process (a catalogue larger than this is refetched)
INVALIDATION_TRIES = 3  # deletes of the users' tokens after a write, before the write is answered 503
INVALIDATION_BACKOFF_S = 0.05  # before the second try; doubled before each next one
CONFIRM_INTERVAL_S = 1.0  # then, how often a background thread tries the deletes again


class CacheUnavailable(Exception):
    pass


NO_WRITE = 0.0  # ``CacheEntry.written_at`` of a user never written through the API (as far as the cache knows)


class CacheEntry(NamedTuple):
    """A cached entry: its key (a user's: under their current generation), the cached value
    (None: a miss) and that generation (None for entries of no user); all None when the
    cache cannot be used now. ``written_at``: when the user's latest write was invalidated
    (epoch seconds; ``NO_WRITE``: none recorded; inf: unknown, the cache could not say)."""

    key: str | None
    value: str | None
    generation: str | None
    written_at: float = math.inf


H = TypeVar("H", bound=Sized)


def _ms(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))  # Redis TTLs in whole milliseconds, at least one


class Cache(ABC):
    """get/set/delete_many/ping; failures of the backend become misses and are counted."""

    backend: str

    def __init__(self, metrics: Metrics, namespace: str = "aerec", history_rows: int = 0) -> None:
        self.metrics = metrics
        self.namespace = namespace
        self._titles: dict[str, tuple[float, str | None]] = {}  # item id -> (expires, title or None)
        # user id -> (generation, expires, history), least recently used first; at most
        # ``history_rows`` interactions in all (0: histories are not kept)
        self.history_rows = history_rows
        self._histories: OrderedDict[str, tuple[str, float, Any]] = OrderedDict()
        self._history_rows_held = 0
        self._histories_lock = threading.Lock()
        self._unconfirmed: set[str] = set()  # users whose token a write could not delete: read uncached
        self._unconfirmed_lock = threading.Lock()
        self._confirming: threading.Thread | None = None  # retries their deletes in the background
        self._closed = threading.Event()

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def get(self, key: str, kind: str = "other") -> str | None:
        try:
            value = self._get(self._key(key))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return None
        return self._counted(value, kind)

    def _counted(self, value: str | None, kind: str) -> str | None:
        (self.metrics.cache_hits if value is not None else self.metrics.cache_misses).labels(kind).inc()
        return value

    def set(self, key: str, value: str, ttl_s: float, *, only_if_absent: bool = False) -> bool:
        """Store ``value`` for ``ttl_s`` seconds; with ``only_if_absent`` keep an existing value. True if stored."""
        try:
            return self._set(self._key(key), value, ttl_s, only_if_absent)
        except CacheUnavailable:
            self.metrics.cache_errors.labels("set").inc()
            return False

    def delete_many(self, keys: Iterable[str]) -> bool:
        keys = [self._key(k) for k in keys]
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
        self._closed.set()

    async def aclose(self) -> None:
        """Close what belongs to the running event loop (before ``close``, at shutdown)."""

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

    # ---- what the service caches -----------------------------------------------------
    def user_generation(self, user_id: str, ttl_s: float) -> str | None:
        """The user's current generation token (None when the cache cannot be used now)."""
        if not self._confirmed(user_id):
            return None
        key = f"gen:{user_id}"
        token = self.get(key, kind="generation")
        if token is not None:
            return token
        fresh = secrets.token_hex(8)
        if self.set(key, fresh, ttl_s, only_if_absent=True):
            return fresh
        return self.get(key, kind="generation")  # another request drew one first (or the cache is down: None)

    def user_entry(self, user_id: str, key: str, generation_ttl_s: float, kind: str) -> CacheEntry:
        """``key`` under the user's current generation and its cached value (None: a miss); all
        None when the cache cannot be used now (compute, do not store)."""
        generation = self.user_generation(user_id, generation_ttl_s)  # None while the user is unconfirmed
        if generation is None:
            return CacheEntry(None, None, None)
        entry_key = f"{key}:{generation}"
        return CacheEntry(entry_key, self.get(entry_key, kind=kind), generation, self.written_at(user_id))

    def written_at(self, user_id: str) -> float:
        """When the user's latest write was recorded (``NO_WRITE``: never; inf: the cache cannot say)."""
        try:
            value = self._get(self._key(f"written:{user_id}"))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return math.inf
        return _written_time(value)

    def user_history(self, user_id: str, generation: str | None, fetch: Callable[[], H], ttl_s: float) -> H:
        """The user's history: kept from an earlier ``fetch`` (a query) under the same generation
        token, else fetched now and kept under ``generation``.

        In process whatever the backend, as titles are: on Redis a history would cost a round
        trip like the query it saves. The token is read before ``fetch`` runs, and a write deletes
        it after its commit, so a history kept under a token holds every write made before that
        token was drawn; one kept across a write can only be found again until the write's
        invalidation runs, as the lists can. ``generation`` None (the cache is down): fetched, not kept.
        """
        if generation is None or self.history_rows <= 0:
            return fetch()
        now = time.monotonic()
        with self._histories_lock:
            entry = self._histories.get(user_id)
            if entry is not None and entry[0] == generation and entry[1] > now:
                self._histories.move_to_end(user_id)
                self.metrics.cache_hits.labels("history").inc()
                return entry[2]
        self.metrics.cache_misses.labels("history").inc()
        history = fetch()
        rows = len(history)
        if rows > self.history_rows:
            return history  # larger than the whole budget: not kept
        with self._histories_lock:
            old = self._histories.pop(user_id, None)
            if old is not None:
                self._history_rows_held -= len(old[2])
            self._histories[user_id] = (generation, now + ttl_s, history)
            self._history_rows_held += rows
            while self._history_rows_held > self.history_rows:
                _, (_, _, evicted) = self._histories.popitem(last=False)  # least recently used
                self._history_rows_held -= len(evicted)
        return history

    # What a request does on the event loop. Redis answers through its asyncio client, so a
    # hit costs no thread hop; errors and metrics as in ``get`` and ``set``.
    async def get_async(self, key: str, kind: str = "other") -> str | None:
        try:
            value = await self._get_async(self._key(key))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return None
        return self._counted(value, kind)

    async def set_async(self, key: str, value: str, ttl_s: float) -> bool:
        try:
            return await self._set_async(self._key(key), value, ttl_s)
        except CacheUnavailable:
            self.metrics.cache_errors.labels("set").inc()
            return False

    async def user_entry_async(self, user_id: str, key: str, generation_ttl_s: float, kind: str) -> CacheEntry:
        return self.user_entry(user_id, key, generation_ttl_s, kind)

    def set_later(self, key: str, value: str, ttl_s: float) -> None:
        """``set_async`` without waiting for it, from the event loop (the answer goes out first); in process: now."""
        self.set(key, value, ttl_s)

    def invalidate_users(self, user_ids: Iterable[str]) -> bool:
        """Delete the users' generation tokens after a write: tried ``INVALIDATION_TRIES`` times, each
        failure counted. False if the last try failed too: the users are then read uncached in this
        process until a delete of their token succeeds (``_confirmed``)."""
        users = set(user_ids)
        with self._unconfirmed_lock:
            users |= self._unconfirmed  # a write is also a chance to confirm the earlier failures
        for attempt in range(INVALIDATION_TRIES):
            if self._record_writes(users):
                with self._unconfirmed_lock:
                    self._unconfirmed -= users
                return True
            last = attempt == INVALIDATION_TRIES - 1
            self.metrics.cache_invalidation_failures.labels("gave_up" if last else "retried").inc()
            if not last:
                time.sleep(INVALIDATION_BACKOFF_S * 2**attempt)
        with self._unconfirmed_lock:
            self._unconfirmed |= users
            if self._confirming is None or not self._confirming.is_alive():
                # other replicas read the same tokens: delete them as soon as the cache takes it, not at the next read here
                self._confirming = threading.Thread(target=self._keep_confirming, name="cache-invalidation", daemon=True)
                self._confirming.start()
        log.error("cached lists of %d users could not be invalidated; they are served uncached until it succeeds", len(users))
        return False

    def _keep_confirming(self) -> None:
        """Retry the unconfirmed users' deletes every ``CONFIRM_INTERVAL_S`` until none is left (or the cache closes)."""
        while not self._closed.wait(CONFIRM_INTERVAL_S):
            with self._unconfirmed_lock:
                users = set(self._unconfirmed)
            if users and self._record_writes(users):
                with self._unconfirmed_lock:
                    self._unconfirmed -= users
            with self._unconfirmed_lock:
                if not self._unconfirmed:
                    self._confirming = None
                    return

    def _confirmed(self, user_id: str) -> bool:
        """True unless the user's token outlived a write and still cannot be deleted."""
        if user_id not in self._unconfirmed:  # the usual case: one set lookup, no lock
            return True
        if not self._record_writes({user_id}):
            return False
        with self._unconfirmed_lock:
            self._unconfirmed.discard(user_id)
        return True

    async def _confirmed_async(self, user_id: str) -> bool:
        if user_id not in self._unconfirmed:
            return True
        try:
            await self._record_writes_async(user_id)
        except CacheUnavailable:
            self.metrics.cache_errors.labels("delete").inc()
            return False
        with self._unconfirmed_lock:
            self._unconfirmed.discard(user_id)
        return True

    def _record_writes(self, users: set[str]) -> bool:
        """Delete the users' tokens and record when they were written, at once; False (counted) if the cache failed."""
        if not users:
            return True
        try:
            self._invalidate(*self._write_keys(users))
            return True
        except CacheUnavailable:
            self.metrics.cache_errors.labels("delete").inc()
            return False

    async def _record_writes_async(self, user_id: str) -> None:
        self._invalidate(*self._write_keys([user_id]))

    def _write_keys(self, users: Collection[str]) -> tuple[list[str], dict[str, str]]:
        """The users' generation tokens to delete, and their write records to set (to now)."""
        now = repr(time.time())
        return [self._key(f"gen:{u}") for u in users], {self._key(f"written:{u}"): now for u in users}

    @abstractmethod
    def _invalidate(self, tokens: list[str], written: dict[str, str]) -> None:
        """Delete ``tokens`` and set ``written`` (never evicted nor expired) at once; tried even while backing off."""

    def known_titles(self, item_ids: Sequence[str]) -> dict[str, str] | None:
        """The titles of ``item_ids`` if every one is known here and fresh (no query), else None."""
        now = time.monotonic()
        titles = {}
        for item_id in item_ids:
            entry = self._titles.get(item_id)
            if entry is None or entry[0] <= now:
                return None
            if entry[1] is not None:
                titles[item_id] = entry[1]
        return titles

    def item_titles(
        self, item_ids: Sequence[str], fetch: Callable[[list[str]], dict[str, str]], ttl_s: float
    ) -> dict[str, str]:
        """Titles of ``item_ids``, from ``fetch`` (a query) only for ids not seen in ``ttl_s``.

        Kept in process whatever the backend: titles hardly change (a seed sets them) and a
        Redis round trip would cost as much as the query it saves. A changed title shows
        within ``ttl_s``.
        """
        now = time.monotonic()
        known = self._titles
        titles: dict[str, str] = {}
        missing: list[str] = []
        for item_id in item_ids:  # one lookup each: fresh (titled or not), or to fetch
            entry = known.get(item_id)
            if entry is None or entry[0] <= now:
                missing.append(item_id)
            elif entry[1] is not None:
                titles[item_id] = entry[1]
        if missing:
            fetched = fetch(missing)
            if len(known) > MAX_TITLES:
                known.clear()  # a bound on memory; the catalogue refills it
            for item_id in missing:
                known[item_id] = (now + ttl_s, fetched.get(item_id))
            titles.update(fetched)
        return titles


def _written_time(value: str | None) -> float:
    return NO_WRITE if value is None else float(value)


def list_key(prefix: str, *parts: Any) -> str:
    """A compact key from the request's parameters (model version and name among them)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return f"{prefix}:{digest}"


class MemoryCache(Cache):
    """In-process TTL + LRU: an OrderedDict in recency order, bounded by ``max_entries``."""

    backend = "memory"

    def __init__(self, metrics: Metrics, namespace: str = "aerec", max_entries: int = 10_000, history_rows: int = 0) -> None:
        super().__init__(metrics, namespace, history_rows)
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
            if only_if_absent and self._live(key, now) is not None:
                return False
            self._entries[key] = (now + ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)  # least recently used
            return True

    def _delete_many(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def _invalidate(self, tokens: list[str], written: dict[str, str]) -> None:
        with self._lock:
            self._written.update(written)  # first: a reader between the two sees the write and scores
        self._delete_many(tokens)

    def written_at(self, user_id: str) -> float:
        return _written_time(self._written.get(self._key(f"written:{user_id}")))

    def _ping(self) -> bool:
        return True


# A user's entry in one round trip instead of two or three (GET the generation, SET a fresh one
# if there is none, GET the entry). Atomic, as the SET NX of ``user_generation`` is.
# KEYS[1]: the generation key, KEYS[2] the user's write record; ARGV: a fresh token, its TTL in ms,
# the entry's key before the token. Returns the token, the entry, whether the token was there, the record.
_USER_ENTRY_LUA = """
local written = redis.call('GET', KEYS[2])
local generation = redis.call('GET', KEYS[1])
if not generation then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {ARGV[1], false, 0, written}
end
return {generation, redis.call('GET', ARGV[3] .. ':' .. generation), 1, written}
"""


class RedisCache(Cache):
    """Redis with short timeouts; any Redis error is a ``CacheUnavailable`` (counted, served uncached)."""

    backend = "redis"

    def __init__(self, url: str, metrics: Metrics, namespace: str = "aerec", timeout_s: float = 0.25,
                 history_rows: int = 0) -> None:
        super().__init__(metrics, namespace, history_rows)
        # the blocking client and the asyncio one alike; no client-side retries: a failure is a miss at once
        self._url, self._options = url, dict(
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False,
            health_check_interval=30, decode_responses=True,
        )
        self.client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **self._options)
        self._down_until = 0.0
        self._user_entry = self.client.register_script(_USER_ENTRY_LUA)  # EVALSHA, loaded again after a restart
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis, Any] | None = None
        self._later: dict[str, tuple[str, int]] = {}  # ``set_later``'s, until the loop's next turn
        self._flushing: set[asyncio.Task] = set()

    def _async_client(self) -> tuple[redis.asyncio.Redis, Any]:
        """The asyncio client of the running loop (its connections belong to that loop), and its script."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = redis.asyncio.Redis.from_url(self._url, retry=AsyncRetry(NoBackoff(), 0), **self._options)
            self._async = (loop, client, client.register_script(_USER_ENTRY_LUA))
        return self._async[1], self._async[2]

    async def _acall(self, fn, *args, **kwargs):
        if time.monotonic() < self._down_until:
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

    async def _get_async(self, key: str) -> str | None:
        return await self._acall(self._async_client()[0].get, key)

    def set_later(self, key: str, value: str, ttl_s: float) -> None:
        # the sets of one turn of the loop go in one pipeline: a round trip each cost a first request a third
        # of its throughput on 2 cores (ml-100k, 8 clients)
        first = not self._later
        self._later[self._key(key)] = (value, _ms(ttl_s))
        if first:
            task = asyncio.get_running_loop().create_task(self._flush_later())
            self._flushing.add(task)  # a reference until done: the loop keeps weak ones
            task.add_done_callback(self._flushing.discard)

    async def _flush_later(self) -> None:
        await asyncio.sleep(0)  # let the other requests of this turn add theirs
        pending, self._later = self._later, {}
        pipe = self._async_client()[0].pipeline(transaction=False)
        for key, (value, ttl_ms) in pending.items():
            pipe.set(key, value, px=ttl_ms)
        try:
            await self._acall(pipe.execute)
        except CacheUnavailable:
            self.metrics.cache_errors.labels("set").inc()

    async def _set_async(self, key: str, value: str, ttl_s: float) -> bool:
        return bool(await self._acall(self._async_client()[0].set, key, value, px=_ms(ttl_s)))

    async def user_entry_async(self, user_id: str, key: str, generation_ttl_s: float, kind: str) -> CacheEntry:
        if not await self._confirmed_async(user_id):
            return CacheEntry(None, None, None)
        _, script = self._async_client()
        try:
            found = await self._acall(script, keys=self._user_entry_keys(user_id), args=self._user_entry_args(key, generation_ttl_s))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return CacheEntry(None, None, None)
        return self._user_entry_found(key, kind, *found)

    def user_entry(self, user_id: str, key: str, generation_ttl_s: float, kind: str) -> CacheEntry:
        if not self._confirmed(user_id):
            return CacheEntry(None, None, None)
        try:
            found = self._call(self._user_entry, keys=self._user_entry_keys(user_id), args=self._user_entry_args(key, generation_ttl_s))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return CacheEntry(None, None, None)
        return self._user_entry_found(key, kind, *found)

    def _user_entry_keys(self, user_id: str) -> list[str]:
        return [self._key(f"gen:{user_id}"), self._key(f"written:{user_id}")]

    def _user_entry_args(self, key: str, generation_ttl_s: float) -> list:
        return [secrets.token_hex(8), _ms(generation_ttl_s), self._key(key)]

    def _user_entry_found(self, key: str, kind: str, generation: str, value: str | None, known: int,
                          written: str | None = None) -> CacheEntry:
        (self.metrics.cache_hits if known else self.metrics.cache_misses).labels("generation").inc()
        # a new token finds nothing
        return CacheEntry(f"{key}:{generation}", self._counted(value, kind), generation, _written_time(written))

    def _call(self, fn, *args, force: bool = False, **kwargs):
        if not force and time.monotonic() < self._down_until:
            raise CacheUnavailable("redis is backing off after a failure")
        try:
            return fn(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            raise CacheUnavailable(str(exc)) from exc

    def _get(self, key: str) -> str | None:
        return self._call(self.client.get, key)

    def _set(self, key: str, value: str, ttl_s: float, only_if_absent: bool) -> bool:
        return bool(self._call(self.client.set, key, value, px=_ms(ttl_s), nx=only_if_absent))

    def _delete_many(self, keys: list[str]) -> None:
        # Invalidation is tried even while backing off: a missed delete could serve a stale list.
        self._call(self.client.delete, *keys, force=True)

    def _invalidate(self, tokens: list[str], written: dict[str, str]) -> None:
        pipe = self.client.pipeline(transaction=True)  # MULTI/EXEC: a lookup sees both changes or neither
        pipe.mset(written)
        pipe.delete(*tokens)
        self._call(pipe.execute, force=True)

    async def _record_writes_async(self, user_id: str) -> None:
        tokens, written = self._write_keys([user_id])
        pipe = self._async_client()[0].pipeline(transaction=True)  # as ``_invalidate``'s, on the loop's client
        pipe.mset(written)
        pipe.delete(*tokens)
        try:  # tried even while backing off, as ``_delete_many`` is
            await pipe.execute()
        except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(exc)
            raise CacheUnavailable(str(exc)) from exc

    def _ping(self) -> bool:
        # readiness asks Redis itself, ignoring the backoff, so it reports recovery at once
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    async def aclose(self) -> None:
        if self._async is not None and self._async[0] is asyncio.get_running_loop():
            await self._async[1].aclose()
            self._async = None

    def close(self) -> None:
        super().close()
        self.client.close()


def make_cache(redis_url: str | None, metrics: Metrics, *, namespace: str, max_entries: int, timeout_s: float,
               history_rows: int = 0) -> Cache:
    if redis_url:
        return RedisCache(redis_url, metrics, namespace=namespace, timeout_s=timeout_s, history_rows=history_rows)
    return MemoryCache(metrics, namespace=namespace, max_entries=max_entries, history_rows=history_rows)
