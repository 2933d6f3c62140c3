"""What is kept in process whatever the backend: users' histories and item titles.

On Redis either would cost a round trip like the query it saves, so they never touch the backend.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sized
from typing import Any, Callable, Sequence, TypeVar

from service.metrics import Metrics

MAX_TITLES = 1_000_000  # item titles kept in process (a catalogue larger than this is refetched)

H = TypeVar("H", bound=Sized)


class Histories:
    """Users' histories, each kept under the generation token it was read with, least recently used
    out first, at most ``max_rows`` interactions in all (0: none kept)."""

    def __init__(self, metrics: Metrics, max_rows: int = 0) -> None:
        self.metrics = metrics
        self.max_rows = max_rows
        self._kept: OrderedDict[str, tuple[str, float, Any]] = OrderedDict()  # user -> (generation, expires, history)
        self.rows_held = 0
        self._lock = threading.Lock()

    def user_history(self, user_id: str, generation: str | None, fetch: Callable[[], H], ttl_s: float) -> H:
        """The user's history: kept from an earlier ``fetch`` (a query) under the same generation
        token, else fetched now and kept under ``generation``.

        The token is read before ``fetch`` runs, and a write deletes it after its commit, so a
        history kept under a token holds every write made before that token was drawn; one kept
        across a write can only be found again until the write's invalidation runs, as the lists
        can. ``generation`` None (the cache is down): fetched, not kept.
        """
        if generation is None or self.max_rows <= 0:
            return fetch()
        now = time.monotonic()
        with self._lock:
            entry = self._kept.get(user_id)
            if entry is not None and entry[0] == generation and entry[1] > now:
                self._kept.move_to_end(user_id)
                self.metrics.cache_hits.labels("history").inc()
                return entry[2]
        self.metrics.cache_misses.labels("history").inc()
        history = fetch()
        rows = len(history)
        if rows > self.max_rows:
            return history  # larger than the whole budget: not kept
        with self._lock:
            old = self._kept.pop(user_id, None)
            if old is not None:
                self.rows_held -= len(old[2])
            self._kept[user_id] = (generation, now + ttl_s, history)
            self.rows_held += rows
            while self.rows_held > self.max_rows:
                _, (_, _, evicted) = self._kept.popitem(last=False)  # least recently used
                self.rows_held -= len(evicted)
        return history


class Titles:
    """Item titles (or their absence), each fresh for the ``ttl_s`` it was fetched with.

    Titles hardly change (a seed sets them); a changed title shows within ``ttl_s``.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, str | None]] = {}  # item id -> (expires, title or None)

    def known(self, item_ids: Sequence[str]) -> dict[str, str] | None:
        """The titles of ``item_ids`` if every one is known here and fresh (no query), else None."""
        now = time.monotonic()
        titles = {}
        for item_id in item_ids:
            entry = self._known.get(item_id)
            if entry is None or entry[0] <= now:
                return None
            if entry[1] is not None:
                titles[item_id] = entry[1]
        return titles

    def item_titles(self, item_ids: Sequence[str], fetch: Callable[[list[str]], dict[str, str]], ttl_s: float
                    ) -> dict[str, str]:
        """Titles of ``item_ids``, from ``fetch`` (a query) only for ids not seen in ``ttl_s``."""
        now = time.monotonic()
        known = self._known
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
            self.keep(missing, fetched, ttl_s, now)
            titles.update(fetched)
        return titles

    def keep(self, item_ids: Sequence[str], fetched: dict[str, str], ttl_s: float, now: float | None = None) -> None:
        """Keep ``fetched`` (read at ``now``, or just now) as the titles of ``item_ids`` for ``ttl_s``; an id it
        lacks has none."""
        expires = (time.monotonic() if now is None else now) + ttl_s
        known = self._known
        if len(known) > MAX_TITLES:
            known.clear()  # a bound on memory; the catalogue refills it
        for item_id in item_ids:
            known[item_id] = (expires, fetched.get(item_id))
