"""Random bytes from the OS, drawn a block at a time: each ``os.urandom`` is a system call, and a cache hit
needed two (its recommendation id, the user's fresh token), about a tenth of its CPU (bench/RESULTS.md,
"Cache-hit CPU"). The same bytes as ``os.urandom``'s, each handed out once: under a lock (lookups also run in
worker threads), and a forked child starts with none of its parent's.
"""

from __future__ import annotations

import os
import threading

BLOCK_BYTES = 4096


class RandomPool:
    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        self.block_bytes = block_bytes
        self._lock = threading.Lock()
        self._block, self._at = b"", 0
        os.register_at_fork(after_in_child=self.forget)

    def take(self, n: int) -> bytes:
        """``n`` bytes never handed out before (at most ``block_bytes``)."""
        with self._lock:
            if self._at + n > len(self._block):
                self._block, self._at = os.urandom(self.block_bytes), 0
            start = self._at
            self._at += n
            return self._block[start:self._at]

    def forget(self) -> None:
        """Drop what is left of the block (a forked child must not hand out its parent's bytes)."""
        self._lock = threading.Lock()  # the parent's may have been held by another thread at the fork
        self._block, self._at = b"", 0


_POOL = RandomPool()


def random_bytes(n: int) -> bytes:
    return _POOL.take(n)
