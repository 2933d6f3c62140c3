"""What every benchmark shares: tables, JSON + PNG output, servers, the load generator.

* ``print_table`` / ``write_json`` / ``save_figure``: each bench prints a table and writes
  ``bench/out/<name>.json`` and ``<name>.png``.
* ``ServerProcess``: a server started as a subprocess (``python -m service --port P`` or the
  ceiling app), its output in a log file, readiness polled over HTTP, stopped by its pid
  (SIGTERM, then SIGKILL), its resident memory read from ``/proc``.
* ``run_load``: an asyncio load generator on loopback (``HttpConnection``: keep-alive
  HTTP/1.1 written and read directly), bounded by a request count and a duration:
  ``concurrency`` clients each send a request, await the answer, send the next;
  or, with ``rate``, requests start on a fixed schedule (the soak). Latency is measured by
  the client, around each request.
* ``train_registry`` / ``seed_database`` / ``postgres_database`` / ``redis_namespace``: the
  fixtures of a serving run, made through the project's own CLIs.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
_SHARED_ML100K = REPO.parent / "shared" / "data" / "ml-100k"
# A local GroupLens copy beside the clone (CI, offline machines); otherwise the trainer's own
# dataset cache, filled from GroupLens on first use.
ML100K: Path | None = _SHARED_ML100K if (_SHARED_ML100K / "u.data").is_file() else None
PYTHON = sys.executable
API_KEY = "bench-key-6d0f3c9a1e"
# The shared servers; a bench makes its own database on PostgreSQL and its own key namespace on Redis.
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")


class BenchError(Exception):
    """A step of a benchmark failed (a CLI exited non-zero, a server never got ready)."""


# ---- output -----------------------------------------------------------------------------
def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], title: str | None = None) -> str:
    """A fixed-width table; ``columns`` are (key, header, format spec). Returns the text it printed."""
    cells = [[("" if row.get(k) is None else format(row[k], fmt)) for k, _, fmt in columns] for row in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]
    lines = [] if title is None else [title]
    lines.append("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def registry_dir(value: str) -> Path:
    """argparse type of ``--artifacts-dir``: an absolute path to a registry with a published
    version. The servers run from the repository root, so a relative path would name another
    directory there, and a registry without ``LATEST`` would leave them never ready."""
    import argparse

    path = Path(value).expanduser().resolve()
    if not (path / "LATEST").is_file():
        raise argparse.ArgumentTypeError(f"{value!r} is not a model registry with a published version (no {path / 'LATEST'})")
    return path


def verdict(name: str, passed: bool, detail: str) -> dict[str, Any]:
    """Print one ``PASS``/``FAIL`` line and return it as a record for the JSON."""
    print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}", flush=True)
    return {"target": name, "passed": bool(passed), "detail": detail}


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, and how busy the machine was (load average as the results are written)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")))
    import torch

    return {
        "cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1_5_15_min": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    print(f"wrote {path.relative_to(REPO)}", flush=True)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_figure(name: str, fig) -> Path:
    import matplotlib.pyplot as plt

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps legends placed outside the axes
    plt.close(fig)
    print(f"wrote {path.relative_to(REPO)}", flush=True)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


# ---- processes --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process (Linux ``/proc``); 0 once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return int(line.split()[1]) * 1024 if line else 0


def run_cli(args: Sequence[str], env: dict[str, str] | None = None, timeout_s: float = 1800, what: str = "") -> str:
    """Run a project CLI (``python -m ...``) to completion; its stdout, or ``BenchError`` with its last lines."""
    started = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, *args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise BenchError(f"{what or ' '.join(args[:3])} failed (exit {proc.returncode}):\n{tail}")
    print(f"  {what or ' '.join(args[:3])}: {time.perf_counter() - started:.1f}s", flush=True)
    return proc.stdout


def service_env(database_url: str, artifacts_dir: Path, redis_url: str | None = None, **extra: Any) -> dict[str, str]:
    """Environment of a service process: the bench's settings, nothing inherited from a ``.env``."""
    env = {
        "ENVIRONMENT": "development", "DATABASE_URL": database_url, "ARTIFACTS_DIR": str(artifacts_dir),
        "API_KEY": API_KEY, "REDIS_URL": redis_url or "",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


class ServerProcess:
    """A server in its own process group, logging to a file; a context manager that always stops it."""

    def __init__(self, args: Sequence[str], env: dict[str, str], port: int, log_path: Path,
                 ready_path: str = "/readyz", ready_timeout_s: float = 120, cwd: Path = REPO) -> None:
        self.args, self.env, self.port, self.log_path, self.cwd = list(args), env, port, log_path, cwd
        self.ready_path, self.ready_timeout_s = ready_path, ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.base_url = f"http://127.0.0.1:{port}"

    @classmethod
    def service(cls, env: dict[str, str], log_path: Path, port: int | None = None, **kwargs) -> ServerProcess:
        port = port or free_port()
        args = [PYTHON, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        return cls(args, env, port, log_path, **kwargs)

    @classmethod
    def ceiling(cls, log_path: Path, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        args = [PYTHON, str(REPO / "bench" / "_ceiling_app.py"), "--port", str(port)]
        return cls(args, {}, port, log_path, ready_path="/healthz")

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args, cwd=self.cwd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends it and nothing else
        )
        log.close()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"server exited with {self.proc.returncode} before it was ready:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise BenchError(f"server not ready on {self.base_url}{self.ready_path} after {self.ready_timeout_s:.0f}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid) if self.proc and self.proc.poll() is None else 0

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout_s: float = 15) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)  # graceful: uvicorn finishes requests and runs the lifespan's exit
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- fault injection ----------------------------------------------------------------------
class TcpProxy:
    """A TCP proxy on loopback that can be cut and restored: a database restart, as its clients see it.

    ``cut()`` stops listening (new connections are refused) and resets every open
    connection; ``restore()`` listens again on the same port. It runs an asyncio loop in a
    thread of its own, so the caller's code stays synchronous.
    """

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def _call(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def start(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        if self._thread.is_alive():
            self.cut()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()  # RST: the peer sees the connection die, as when a server restarts
        self._open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._open |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class RedisServer:
    """A redis-server of our own on a free port (the shared one on 6379 is never touched)."""

    def __init__(self, port: int | None = None, password: str | None = None) -> None:
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import redis

        probe = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        for _ in range(200):
            try:
                probe.ping()
                probe.close()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.kill()
        raise BenchError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


class Schedule(threading.Thread):
    """Runs ``(at_seconds, label, action)`` steps at their times from ``start()``; records when each ran."""

    def __init__(self, steps: Sequence[tuple[float, str, Callable[[], Any]]]) -> None:
        super().__init__(name="fault-schedule", daemon=True)
        self.steps = sorted(steps, key=lambda s: s[0])
        self.done: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        for at, label, action in self.steps:
            if self._stop_event.wait(max(0.0, started + at - time.perf_counter())):
                return
            try:
                action()
                self.done.append((label, round(time.perf_counter() - started, 2)))
            except Exception as exc:  # reported by the caller: a fault that could not be injected
                self.errors.append(f"{label}: {type(exc).__name__}: {exc}")

    def cancel(self) -> None:
        self._stop_event.set()


# ---- the load generator -----------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json: Any = None
    headers: dict[str, str] | None = None
    body: bytes | None = None  # JSON encoded once, sent as is (a large body sent many times)


@dataclass
class LoadResult:
    """One cell of a load test. ``failed``: transport errors and statuses outside ``ok``."""

    scenario: str
    concurrency: int
    requests: int
    seconds: float
    statuses: dict[str, int]
    failed: int
    latencies_ms: np.ndarray = field(repr=False)
    failures: list[str] = field(default_factory=list, repr=False)  # first few, for the report

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "concurrency": self.concurrency, "requests": self.requests,
            "seconds": round(self.seconds, 3), "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 2), "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2), "max_ms": round(float(self.latencies_ms.max()), 2) if self.latencies_ms.size else None,
            "failed": self.failed, "statuses": self.statuses, "failures": self.failures[:5],
        }


LOAD_COLUMNS = [
    ("scenario", "scenario", ""), ("concurrency", "clients", "d"), ("requests", "requests", ",d"),
    ("rps", "req/s", ",.0f"), ("p50_ms", "p50 ms", ".2f"), ("p95_ms", "p95 ms", ".2f"),
    ("p99_ms", "p99 ms", ".2f"), ("failed", "failed", "d"),
]


def run_load(
    base_url: str | Sequence[str],
    make_request: Callable[[int], Request],
    *,
    scenario: str,
    concurrency: int,
    seconds: float,
    max_requests: int = 1_000_000,
    warmup_s: float = 0.5,
    ok: Callable[[int], bool] = lambda status: 200 <= status < 300,
    rate: float | None = None,
    on_tick: Callable[[float], None] | None = None,
    on_response: Callable[[Request, int | None, bytes], None] | None = None,
    stop_when: Callable[[], bool] | None = None,
    timeout_s: float = 10.0,
) -> LoadResult:
    """Drive ``base_url`` with ``concurrency`` clients for ``seconds`` (or ``max_requests``), after a warm-up.

    Several base URLs (replicas of one server): client ``c`` keeps to ``base_url[c % n]``, so
    the clients spread evenly, as a proxy's round robin over keep-alive connections does.

    ``make_request(i)`` builds the i-th request (i counts from 0 over the warm-up and the run,
    so each request can be distinct). With ``rate``, request i starts at ``i / rate`` seconds
    (open loop, the clients only bound how many are in flight). ``on_tick(elapsed_s)`` is
    called about once a second from the event loop (the soak samples memory with it).
    ``on_response(request, status or None, body)`` sees every measured answer (the fault
    runs record which writes were acknowledged). ``stop_when()`` ends the run early when true.
    """
    return run_loads([dict(base_url=base_url, make_request=make_request, scenario=scenario, concurrency=concurrency,
                           seconds=seconds, max_requests=max_requests, warmup_s=warmup_s, ok=ok, rate=rate,
                           on_tick=on_tick, on_response=on_response, stop_when=stop_when, timeout_s=timeout_s)])[0]


def run_loads(loads: Sequence[dict[str, Any]]) -> list[LoadResult]:
    """Several ``run_load``s at once, in one event loop (each dict its keyword arguments, the same defaults):
    servers measured side by side, so the machine's drift from second to second falls on all of them alike."""
    defaults = {name: p.default for name, p in inspect.signature(run_load).parameters.items()
                if p.default is not inspect.Parameter.empty}
    # The load generator's own full collections (35-45 ms each with everything the bench has
    # imported) stalled every client at once and showed as the service's tail: what is alive
    # before the run is frozen out of the collector's sight, as the service does at start.
    gc.collect()
    gc.freeze()

    async def together() -> list[LoadResult]:
        return list(await asyncio.gather(*(_load(**{**defaults, **load}) for load in loads)))

    try:
        return asyncio.run(together())
    finally:
        gc.unfreeze()


class TransportError(Exception):
    """A request that got no complete answer; ``kind`` names what happened (a status column)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to one server, for the load generator.

    httpx spent ~1 ms of the client's CPU on each request (measured: 950-990 us a request
    against the ceiling at 8 clients), so on these 2 cores the generator saturated a core of
    its own near 1,200 req/s and its queueing showed as the server's latency. This writes
    the request bytes and reads the answer by its Content-Length (or chunks): ~45 us a
    request.
    """

    def __init__(self, base_url: str, timeout_s: float) -> None:
        parsed = urlsplit(base_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"the load generator speaks plain http to a host:port, got {base_url!r}")
        self.host, self.port, self.timeout_s = parsed.hostname, parsed.port or 80, timeout_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def encode(self, request: Request) -> bytes:
        body = request.body if request.body is not None else b"" if request.json is None else json.dumps(request.json).encode()
        lines = [f"{request.method} {request.path} HTTP/1.1", f"host: {self.host}:{self.port}",
                 f"content-length: {len(body)}"]
        if request.json is not None or request.body is not None:
            lines.append("content-type: application/json")
        lines += [f"{k}: {v}" for k, v in (request.headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def request(self, request: Request) -> tuple[int, bytes]:
        """(status, body) of ``request``; ``TransportError`` when no complete answer came."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._exchange(self.encode(request))
        except TimeoutError:
            self.close()  # the answer may still come: this connection can't be reused
            raise TransportError("ReadTimeout", f"no answer in {self.timeout_s:g} s") from None
        except (ConnectionRefusedError, socket.gaierror) as exc:
            self.close()
            raise TransportError("ConnectError", str(exc) or type(exc).__name__) from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise TransportError("ConnectionError", f"{type(exc).__name__}: {exc}") from None

    async def _exchange(self, message: bytes) -> tuple[int, bytes]:
        if self._streams is None or self._streams[0].at_eof():  # closed by the server while idle: a new one
            self.close()
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(message)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, chunked, close = 0, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append((await reader.readexactly(size + 2))[:-2])
            await reader.readuntil(b"\r\n")  # the end of the (empty) trailers
            body = b"".join(parts)
        else:
            body = await reader.readexactly(length)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _load(*, base_url, make_request, scenario, concurrency, seconds, max_requests, warmup_s, ok, rate, on_tick,
                on_response, stop_when, timeout_s) -> LoadResult:
    counter = iter(range(10**12))
    bases = [base_url] if isinstance(base_url, str) else list(base_url)
    # Client c keeps one connection to bases[c % n], over the warm-up and the run
    connections = [HttpConnection(bases[c % len(bases)], timeout_s) for c in range(concurrency)]
    try:
        if warmup_s > 0:
            await _phase(connections, make_request, counter, warmup_s, 10**9, ok, None, None, None, None)
        return await _phase(connections, make_request, counter, seconds, max_requests, ok, rate,
                            on_tick, on_response, stop_when, scenario=scenario)
    finally:
        for connection in connections:
            connection.close()


async def _phase(connections, make_request, counter, seconds, max_requests, ok, rate, on_tick,
                 on_response, stop_when, scenario: str = "warm-up") -> LoadResult:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    sent = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def client_loop(connection: HttpConnection) -> None:
        nonlocal sent
        while sent < max_requests and time.perf_counter() < deadline and not (stop_when and stop_when()):
            n = sent
            sent += 1
            i = next(counter)
            if rate is not None:  # open loop: request n is due at n / rate
                delay = started + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.perf_counter() >= deadline:
                    sent -= 1
                    return
            req = make_request(i)
            t0 = time.perf_counter()
            try:
                status, body = await connection.request(req)
            except TransportError as exc:
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[exc.kind] += 1
                failures.append(f"{req.method} {req.path}: {exc.kind}: {exc}")
                if on_response:
                    on_response(req, None, b"")
                continue
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[str(status)] += 1
            if not ok(status):
                failures.append(f"{req.method} {req.path}: {status} {body[:200].decode('utf-8', 'replace')}")
            if on_response:
                on_response(req, status, body)

    async def ticker() -> None:
        while time.perf_counter() < deadline:
            await asyncio.sleep(1.0)
            on_tick(time.perf_counter() - started)

    tasks = [asyncio.create_task(client_loop(connection)) for connection in connections]
    tick = asyncio.create_task(ticker()) if on_tick else None
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    if tick:
        tick.cancel()
    failed = sum(v for k, v in statuses.items() if not (k.isdigit() and ok(int(k))))
    return LoadResult(scenario, len(connections), len(latencies), elapsed, dict(statuses), failed,
                      np.asarray(latencies, dtype=np.float64), failures)


# ---- fixtures of a serving run ------------------------------------------------------------
def train_registry(artifacts_dir: Path, models: str, data_args: Sequence[str], extra: Sequence[str] = ()) -> str:
    """``python -m trainer train`` into ``artifacts_dir``; returns the published version."""
    run_cli(["-m", "trainer", "train", *data_args, "--models", models, "--artifacts-dir", str(artifacts_dir),
             "--no-progress", "--no-gate", *extra], what=f"train {models}")
    return (artifacts_dir / "LATEST").read_text().strip()


def seed_database(database_url: str, data_args: Sequence[str]) -> str:
    """``python -m service seed`` (migrates first); returns its one-line summary."""
    return run_cli(["-m", "service", "seed", *data_args], env={"DATABASE_URL": database_url}, what="seed").strip()


@contextmanager
def postgres_database(prefix: str = "aerec_bench") -> Iterator[str]:
    """A fresh database on the shared PostgreSQL server, dropped afterwards; yields its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"  # generated here, never user input
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def redis_namespace(url: str = REDIS_URL, prefix: str = "aerec-bench") -> Iterator[str]:
    """A key namespace of our own on a shared Redis, its keys deleted afterwards."""
    namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        yield namespace
    finally:
        delete_namespace(url, namespace)


def delete_namespace(url: str, namespace: str) -> int:
    """Delete every key of ``namespace`` (a cache flush that touches nobody else's keys)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(f"{namespace}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


def ml100k_args() -> list[str]:
    return ["--dataset", "ml-100k"] + (["--source", str(ML100K)] if ML100K else [])


def add_scale_arguments(parser) -> None:
    """``--scale`` and the synthetic set's size (ML-20M's shape by default), for every bench that runs on either."""
    parser.add_argument("--scale", choices=("ml-100k", "synthetic"), default="ml-100k")
    parser.add_argument("--synthetic-users", type=int, default=140_000)
    parser.add_argument("--synthetic-items", type=int, default=20_000)
    parser.add_argument("--synthetic-interactions", type=int, default=20_000_000)


def synthetic_description(args) -> str:
    return (f"synthetic {args.synthetic_users:,} users x {args.synthetic_items:,} items, "
            f"{args.synthetic_interactions:,} interactions")


def prepare_data(args, workdir: Path) -> tuple[list[str], str]:
    """The trainer's and the seeder's data arguments for ``--scale``, and a description of the data."""
    if args.scale == "ml-100k":
        return ml100k_args(), "ml-100k"
    path = workdir / "synthetic.parquet"
    run_cli(["-m", "trainer", "data", "synthetic", "--users", str(args.synthetic_users), "--items",
             str(args.synthetic_items), "--interactions", str(args.synthetic_interactions), "--out", str(path)],
            what="synthetic data")
    return ["--file", str(path)], synthetic_description(args)
