"""A thread that calls one function every ``interval_s`` until stopped: the service's watchers (the model
version, the running experiment, the item titles) each run one."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger("service.poller")


class Poller:
    """``poll`` called every ``interval_s`` on a daemon thread; a failure is logged and tried again at the next tick."""

    def __init__(self, name: str, poll: Callable[[], Any], interval_s: float) -> None:
        self.name, self.poll, self.interval_s = name, poll, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a watcher must survive anything (the database or files may be away)
                log.warning("%s: poll failed, tried again in %.0f s: %s", self.name, self.interval_s,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                log.debug("%s: the failed poll", self.name, exc_info=True)
