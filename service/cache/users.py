"""A user's cached lists, invalidated by a per-user generation token, on any ``Backend``.

Every list's key ends in the user's token (``UserLists.user_entry``). POST /interactions deletes
the users' tokens (``invalidate_users``); the next read draws a fresh random token, so every list
cached before, including one computed from a history read before the write committed, can never
be found again. ``user_entry`` reads the token and the list together: on Redis, one round trip.
An invalidation that fails is retried (``INVALIDATION_TRIES``) and counted; if it still fails the
users stay "unconfirmed" in this process: their reads go uncached, and try the delete again, as a
background thread does every second, until one succeeds (a token that outlived a write must never
be read again; other replicas read it until the delete lands).
Beside deleting a token, a write records when it was made (``written:<user>``, no expiry, set in
the same step as the delete): a user's stored top-N list (``service.inference.stored_recommendation``)
is served only to users with no write after the list's data was read, and a lookup returns that
time with the entry (``CacheEntry.written_at``), in the same round trip.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Collection
from typing import Iterable, NamedTuple

from service.cache.backends import Backend, CacheUnavailable, FoundEntry, UserEntryKeys, ms
from service.random_pool import random_bytes

log = logging.getLogger("service.cache")

INVALIDATION_TRIES = 3  # deletes of the users' tokens after a write, before the write is answered 503
INVALIDATION_BACKOFF_S = 0.05  # before the second try; doubled before each next one
CONFIRM_INTERVAL_S = 1.0  # then, how often a background thread tries the deletes again

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


UNUSABLE = CacheEntry(None, None, None)


def written_time(value: str | None) -> float:
    return NO_WRITE if value is None else float(value)


class UserLists:
    """The generation protocol over ``backend``: lookups, invalidation after writes, and its retries."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.metrics = backend.metrics
        self._unconfirmed: set[str] = set()  # users whose token a write could not delete: read uncached
        self._unconfirmed_lock = threading.Lock()
        self._confirming: threading.Thread | None = None  # retries their deletes in the background
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def user_generation(self, user_id: str, ttl_s: float) -> str | None:
        """The user's current generation token (None when the cache cannot be used now)."""
        if not self._confirmed(user_id):
            return None
        key = f"gen:{user_id}"
        token = self.backend.get(key, kind="generation")
        if token is not None:
            return token
        fresh = random_bytes(8).hex()
        if self.backend.set(key, fresh, ttl_s, only_if_absent=True):
            return fresh
        return self.backend.get(key, kind="generation")  # another request drew one first (or the cache is down: None)

    def user_entry(self, user_id: str, key: str, generation_ttl_s: float, kind: str) -> CacheEntry:
        """``key`` under the user's current generation and its cached value (None: a miss); all
        None when the cache cannot be used now (compute, do not store)."""
        if not self._confirmed(user_id):
            return UNUSABLE
        try:
            found = self.backend.user_entry(self._entry_keys(user_id, key, generation_ttl_s))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return UNUSABLE
        return self._entry(key, kind, found)

    async def user_entry_async(self, user_id: str, key: str, generation_ttl_s: float, kind: str) -> CacheEntry:
        """``user_entry`` from the event loop (Redis: the loop's connection, so a hit costs no thread hop)."""
        if not await self._confirmed_async(user_id):
            return UNUSABLE
        try:
            found = await self.backend.user_entry_async(self._entry_keys(user_id, key, generation_ttl_s))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return UNUSABLE
        return self._entry(key, kind, found)

    def _entry_keys(self, user_id: str, key: str, generation_ttl_s: float) -> UserEntryKeys:
        return UserEntryKeys(self.backend.key(f"gen:{user_id}"), self.backend.key(f"written:{user_id}"),
                             self.backend.key(key), random_bytes(8).hex(), ms(generation_ttl_s))

    def _entry(self, key: str, kind: str, found: FoundEntry) -> CacheEntry:
        self.backend.count(found.known, "generation")
        # a new token finds nothing
        return CacheEntry(f"{key}:{found.generation}", self.backend.counted(found.value, kind), found.generation,
                          written_time(found.written))

    def written_at(self, user_id: str) -> float:
        """When the user's latest write was recorded (``NO_WRITE``: never; inf: the cache cannot say)."""
        try:
            return written_time(self.backend.read_record(self.backend.key(f"written:{user_id}")))
        except CacheUnavailable:
            self.metrics.cache_errors.labels("get").inc()
            return math.inf

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
            await self.backend.record_writes_async(*self._write_keys([user_id]))
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
            self.backend.record_writes(*self._write_keys(users))
            return True
        except CacheUnavailable:
            self.metrics.cache_errors.labels("delete").inc()
            return False

    def _write_keys(self, users: Collection[str]) -> tuple[list[str], dict[str, str]]:
        """The users' generation tokens to delete, and their write records to set (to now)."""
        now = repr(time.time())
        return [self.backend.key(f"gen:{u}") for u in users], {self.backend.key(f"written:{u}"): now for u in users}
