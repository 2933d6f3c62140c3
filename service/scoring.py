"""The scoring slots: a request's model work runs in a worker thread, a bounded number at once."""

from __future__ import annotations

from typing import Callable, TypeVar

import anyio

T = TypeVar("T")


class ScoringSlots:
    """At most ``concurrency`` requests' model work (their history query, scoring, serialising the answer) at once.

    The rest wait their turn on the event loop, not in threads: threads running Python only take turns on the
    GIL, and more of them at once served fewer uncached recommendations than one at a time (bench/serving.py).
    """

    def __init__(self, concurrency: int = 1) -> None:
        self.limiter = anyio.CapacityLimiter(concurrency)

    async def run(self, work: Callable[..., T], *args) -> T:
        """``work(*args)`` in a worker thread, in a slot."""
        return await anyio.to_thread.run_sync(work, *args, limiter=self.limiter)
