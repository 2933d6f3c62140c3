"""Helpers for the deployment tests: child processes and servers, ports, readiness, the DDP worker.

The tests here start the commands a deployment runs (``torchrun``, ``python -m service``,
``python -m trainer schedule``) as subprocesses with the interpreter running pytest, so
they work from ``/work/venv`` and from CI's ``.venv`` alike. PostgreSQL and Redis come
from ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL``; outside CI an unreachable server skips
the test, under ``CI=true`` it fails it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from _test_servers import PG_URL, REDIS_URL, free_port, unavailable  # noqa: F401 (re-exported to the tests)

REPO = Path(__file__).resolve().parents[2]


def base_env(**extra: str) -> dict[str, str]:
    """A child's environment: this one's without its deployment settings, one thread per process (2 shared cores)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "ARTIFACTS_DIR", "API_KEY")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run(args: Sequence[str], env: dict[str, str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a command to its end; fail the test with its output when it does not succeed."""
    try:
        done = subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} did not finish in {timeout:.0f}s:\n{(exc.stderr or '')[-3000:]}")
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


class Server:
    """A long-running child process (API or scheduler) whose output goes to a log file."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path = REPO) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "w")
        # its own process group: stopping it also stops anything it started
        self.proc = subprocess.Popen(self.args, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if not self.alive():
                pytest.fail(f"{' '.join(self.args)} exited {self.proc.returncode} before logging {text!r}:\n{self.log()[-4000:]}")
            time.sleep(0.5)
        pytest.fail(f"{' '.join(self.args)} did not log {text!r} within {timeout:.0f}s:\n{self.log()[-4000:]}")

    def stop(self) -> int:
        """SIGTERM (what `docker compose stop` sends), SIGKILL after 15 s; returns the exit code."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._log.close()
        return self.proc.returncode


@contextmanager
def servers() -> Iterator[list[Server]]:
    """Every server appended to the list is stopped at the end, whatever happened."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def wait_ready(base_url: str, server: Server, timeout: float, version: str | None = None) -> dict:
    """Poll GET /readyz until it answers 200 (and serves ``version`` when given); returns its body."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            pytest.fail(f"{' '.join(server.args)} exited {server.proc.returncode}:\n{server.log()[-4000:]}")
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=5)
            last = f"{response.status_code} {response.text[:300]}"
            if response.status_code == 200 and (version is None or version in response.text):
                return response.json()
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.3)
    pytest.fail(f"{base_url} not ready{' with version ' + version if version else ''} in {timeout:.0f}s: {last}\n"
                f"{server.log()[-3000:]}")


# ---- data-parallel training, two gloo processes ---------------------------------------------


def planted_data(n_users: int = 96, n_items: int = 60, seed: int = 0):
    """Ratings 1..5 with three taste groups, plus timestamps on the same pattern (for svae)."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    group = np.arange(n_users) % 3
    liked = (np.arange(n_items)[None, :] % 3) == group[:, None]
    seen = rng.random((n_users, n_items)) < np.where(liked, 0.5, 0.08)
    ratings = np.where(liked, rng.integers(4, 6, seen.shape), rng.integers(1, 4, seen.shape)) * seen
    X = sp.csr_matrix(ratings.astype(np.float32))
    ts = X.copy()
    ts.data = rng.permutation(X.nnz).astype(np.float64) + 1e9
    return X, ts


def planted_heldout(X, n: int = 24):
    """The first ``n`` users as fold-in rows: even columns are shown, odd ones are to be found."""
    import numpy as np
    import scipy.sparse as sp

    from trainer.protocols import HeldOut

    rows = sp.csr_matrix(X[:n] > 0, dtype=np.float32)
    odd = sp.diags((np.arange(X.shape[1]) % 2).astype(np.float32))
    targets = sp.csr_matrix(rows @ odd)
    inputs = sp.csr_matrix(rows - targets)
    inputs.eliminate_zeros()
    targets.eliminate_zeros()
    return HeldOut(inputs, targets, users=np.arange(n), train_rows=np.full(n, -1), input_timestamps=None)


def ddp_worker(rank: int, world: int, port: int, out: str, names: list[str], validate: str) -> None:
    """One rank of a torchrun-like job: the env:// variables torchrun sets, then ``trainer.fit``.

    Writes each model's final weights and training log to ``out/rank<r>.pt``.
    """
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from models import REGISTRY
    from trainer.training import fit

    X, ts = planted_data()
    valid = planted_heldout(X)
    results = {}
    for name in names:
        sequential = REGISTRY[name].sequential
        model, log = fit(name, X, timestamps=ts if sequential else None, valid=valid if name == validate else None,
                         seed=0, device="cpu", progress=False, epochs=3, batch_size=16, holdout=0)
        results[name] = {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                         "log": log}
    torch.save(results, Path(out) / f"rank{rank}.pt")
