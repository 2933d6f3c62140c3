"""The served version's item titles, kept in process while they are in use.

A first request is answered from its stored list on the event loop only while every title of
the list is known in process (``serving.stored_answer``); titles are kept for ``CACHE_TTL_S``.
So they are read at start, again when another version is served, and every ``CACHE_TTL_S / 2``:
none expires while it is in use, and a changed title still shows within ``CACHE_TTL_S``
(tests/service/test_stored_lists.py, the titles test).
"""

from __future__ import annotations

import time

from service.cache.memos import MAX_TITLES
from service.parts import ServiceParts
from service.poller import Poller
from service.serving import read_titles


class TitlesKeeper:
    def __init__(self, parts: ServiceParts) -> None:
        self.parts = parts
        self.every_s = parts.settings.CACHE_TTL_S / 2
        self._read: tuple[str, float] | None = None  # (version, monotonic time) of the last read
        self._watcher = Poller("titles-keeper", self.refresh, min(self.every_s, parts.store.interval_s))

    def refresh(self) -> int:
        """Read the served version's titles if another version is served or they were read ``every_s`` ago; how many."""
        version = self.parts.store.current
        if version is None:
            return 0
        now = time.monotonic()
        if self._read is not None and self._read[0] == version.version and now - self._read[1] < self.every_s:
            return 0
        read = warm_titles(self.parts)
        self._read = (version.version, now)
        return read

    def start(self) -> None:
        self._watcher.start()

    def stop(self) -> None:
        self._watcher.stop()


def warm_titles(parts: ServiceParts, per_query: int = 2_000) -> int:
    """Read the served version's item titles into the memo, each kept CACHE_TTL_S from its read; how many."""
    version = parts.store.current
    if version is None or len(version.popular_items) > MAX_TITLES:
        return 0
    with parts.session_factory() as session:
        item_ids = version.popular_items.tolist()
        for start in range(0, len(item_ids), per_query):  # ids per IN list
            read_at, chunk = time.monotonic(), item_ids[start : start + per_query]
            parts.cache.titles.keep(chunk, read_titles(session, chunk), parts.settings.CACHE_TTL_S, read_at)
    return len(item_ids)
