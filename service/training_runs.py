"""Training runs started through the admin API: one ``python -m trainer train --from-db`` subprocess at a time.

The service never waits on a run: the process starts with its output going to a file in
``TRAINING_RUNS_DIR``, and a daemon thread records its exit. The trainer trains on the
service's database and publishes into the service's registry under the registry lock, so
the watcher (or ``POST /admin/reload``) serves its version as it serves any other.

Only checked values reach the command line: model names of ``models.REGISTRY`` and an
integer seed; the database URL goes by environment variable, out of ``ps``'s sight.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import Timeout

import registry
from service.core.config import Settings

KEPT_LOGS = 20  # output files of older runs are deleted when a new one starts
TAIL_BYTES = 16_384  # read from the end of the output for its last lines


class TrainingBusy(Exception):
    """A run is going: this service's (``running``) or another process's (the registry lock is held)."""

    def __init__(self, message: str, running: TrainingRun | None) -> None:
        super().__init__(message)
        self.running = running


@dataclass
class TrainingRun:
    id: str
    models: tuple[str, ...]  # empty: all
    seed: int
    command: list[str]
    output: Path
    pid: int
    started_at: float
    ended_at: float | None = None
    exit_code: int | None = None

    @property
    def state(self) -> str:
        if self.exit_code is None:
            return "running"
        return "finished" if self.exit_code == 0 else "failed"

    def describe(self) -> dict:
        """What GET /admin/training answers (``schemas.TrainingRun``) and the overview shows."""
        return {"id": self.id, "state": self.state, "models": list(self.models) or ["all"], "seed": self.seed,
                "pid": self.pid, "started_at": _stamp(self.started_at), "ended_at": _stamp(self.ended_at),
                "exit_code": self.exit_code, "command": self.command, "output_tail": self.tail()}

    def tail(self, lines: int = 30) -> list[str]:
        """The last ``lines`` lines of the run's output so far (progress bars are off, so lines are lines)."""
        try:
            with self.output.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - TAIL_BYTES))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


def _stamp(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class TrainingRuns:
    """The runs this service process started: the current one, or the last one finished."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = Path(settings.TRAINING_RUNS_DIR)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self.last: TrainingRun | None = None

    def start(self, models: tuple[str, ...], seed: int) -> TrainingRun:
        """Start a run of ``models`` (already checked against ``models.REGISTRY``; empty: all); raises
        ``TrainingBusy`` while one is going, here or in another process holding the registry lock."""
        with self._lock:
            if self.last is not None and self.last.state == "running":
                raise TrainingBusy(f"training run {self.last.id} is running (started {_stamp(self.last.started_at)})", self.last)
            lock = registry.registry_lock(self.settings.ARTIFACTS_DIR)
            try:  # a scheduled trainer (or another replica's run) would make ours skip: say so now
                lock.acquire(blocking=False)
                lock.release()
            except Timeout:
                raise TrainingBusy("another training is running (the registry's lock is held)", None) from None
            self.folder.mkdir(parents=True, exist_ok=True)
            self._drop_old_outputs()
            run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
            command = [sys.executable, "-m", "trainer", "train", "--from-db",
                       "--artifacts-dir", str(Path(self.settings.ARTIFACTS_DIR).resolve()),
                       "--models", ",".join(models) or "all", "--seed", str(seed), "--no-progress"]
            env = {**os.environ, "DATABASE_URL": self.settings.DATABASE_URL, "RATING_SCALE": self.settings.RATING_SCALE,
                   "PYTHONUNBUFFERED": "1"}  # unbuffered: the output's tail is live, not held in a pipe buffer
            env.pop("POSITIVE_THRESHOLD", None)
            if self.settings.POSITIVE_THRESHOLD is not None:
                env["POSITIVE_THRESHOLD"] = str(self.settings.POSITIVE_THRESHOLD)
            output = self.folder / f"{run_id}.log"
            with output.open("wb") as sink:
                # a session of its own: a signal to the service (Ctrl+C in its terminal) does not reach the run
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                           env=env, start_new_session=True)
            run = TrainingRun(run_id, models, seed, command, output, process.pid, time.time())
            self._process, self.last = process, run
            threading.Thread(target=self._wait, args=(process, run), name=f"training-{run_id}", daemon=True).start()
            return run

    def unwritable_setting(self, error: Exception) -> str | None:
        """The setting whose folder ``start`` could not write (``error``: its OSError, or the registry's
        ``UserError``); None when neither folder is at fault (the trainer's process could not start)."""
        filename = getattr(error, "filename", None)
        if filename is None:
            return None if isinstance(error, OSError) else "ARTIFACTS_DIR"
        path = Path(os.fsdecode(filename)).resolve()
        for setting, folder in (("TRAINING_RUNS_DIR", self.folder), ("ARTIFACTS_DIR", Path(self.settings.ARTIFACTS_DIR))):
            if path.is_relative_to(folder.resolve()):
                return setting
        return None

    def _wait(self, process: subprocess.Popen, run: TrainingRun) -> None:
        code = process.wait()
        with self._lock:
            run.ended_at, run.exit_code = time.time(), code  # in this order: a reader without the lock never sees an end without a time

    def _drop_old_outputs(self) -> None:
        for old in sorted(self.folder.glob("*.log"))[:-KEPT_LOGS + 1]:
            old.unlink(missing_ok=True)

    def stop(self, grace_s: float = 5.0) -> None:
        """At shutdown: end a run still going (its output and exit would be nobody's to see; the
        trainer publishes atomically, so an interrupted run leaves the registry as it was)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
