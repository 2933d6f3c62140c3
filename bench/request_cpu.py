"""CPU per recommendation request in process: the app answers through an ASGI transport, no sockets, no
load generator, so the figure is the service's own work and holds on a machine too busy for bench/serving.py.

    python bench/request_cpu.py --artifacts-dir REGISTRY --database-url sqlite:///seeded.db [--redis-url URL] [--direct]

Hits: ``HIT_USERS`` users asked again and again (``{"k": 10}``, as bench/serving.py's rec-hit); first requests: a
new (user, offset) pair within the stored lists each time (rec-first: answered from the list); misses: a
new (user, offset) pair past the stored lists each time, so the model scores it (rec-miss). CPU time is the
process's, worker threads included. Run it on two trees in turn (``PYTHONPATH`` picks the tree) to compare
them on the same machine. ``--direct`` calls the
app as an ASGI server does (a scope, ``receive``, ``send``) instead of through httpx's client, whose own
~300 us a request would otherwise be most of a hit's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json as _json
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import httpx

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: the tree it names is measured

from bench.serving import HIT_USERS, known_ids, list_size  # noqa: E402


class DirectClient:
    """``post(path, json=body)`` as one ASGI call of the app, the way uvicorn calls it: no client-side work but
    building the scope."""

    class Answer:
        def __init__(self, status_code: int, text: str) -> None:
            self.status_code, self.text = status_code, text

    def __init__(self, app) -> None:
        self.app = app

    async def post(self, path: str, json: dict) -> DirectClient.Answer:
        body = _json.dumps(json).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {}}
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        return self.Answer(sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]).decode())


async def measure(app, users: list[str], stored: int, hits: int, misses: int, direct: bool = False) -> dict[str, float]:
    """Microseconds of CPU and wall time per hit and per miss, after a warm-up of each."""
    missed, firsts = iter(range(10**9)), iter(range(10**9))

    def hit(i: int) -> tuple[str, dict]:
        return f"/users/{users[i % HIT_USERS]}/recommendations", {"k": 10}

    def miss(_: int) -> tuple[str, dict]:
        n = next(missed)
        return f"/users/{users[n % len(users)]}/recommendations", {"k": 10, "offset": stored + n // len(users)}

    def first(_: int) -> tuple[str, dict]:  # a new (user, offset) pair within the stored lists (rec-first)
        n = next(firsts)
        return f"/users/{users[n % len(users)]}/recommendations", {"k": 10, "offset": (n // len(users)) % max(1, stored - 10)}

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
            client = DirectClient(app) if direct else http

            async def run(make: Callable[[int], tuple[str, dict]], count: int) -> tuple[float, float]:
                cpu, wall = time.process_time(), time.perf_counter()
                for i in range(count):
                    path, body = make(i)
                    response = await client.post(path, json=body)
                    if response.status_code != 200:
                        raise SystemExit(f"{path}: {response.status_code} {response.text}")
                return (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6

            await run(hit, 200)
            await run(miss, 50)
            await run(first, 200)
            hit_cpu, hit_wall = await run(hit, hits)
            first_cpu, first_wall = await run(first, hits) if stored else (float("nan"), float("nan"))
            miss_cpu, miss_wall = await run(miss, misses)
    return {"hit_cpu_us": hit_cpu, "hit_wall_us": hit_wall, "first_cpu_us": first_cpu, "first_wall_us": first_wall,
            "miss_cpu_us": miss_cpu, "miss_wall_us": miss_wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", type=Path, required=True, help="a published registry")
    parser.add_argument("--database-url", required=True, help="a database seeded with the registry's dataset")
    parser.add_argument("--redis-url", default=None, help="Redis as the cache (default: the in-process one)")
    parser.add_argument("--hits", type=int, default=4000)
    parser.add_argument("--misses", type=int, default=1000)
    parser.add_argument("--direct", action="store_true", help="call the app as an ASGI server does, not through httpx")
    args = parser.parse_args(argv)

    from service.core.config import Settings
    from service.main import create_app

    settings = Settings(ENVIRONMENT="development", DATABASE_URL=args.database_url, REDIS_URL=args.redis_url,
                        ARTIFACTS_DIR=args.artifacts_dir, CACHE_NAMESPACE=f"bench-cpu-{uuid.uuid4().hex[:8]}")
    users, _ = known_ids(args.artifacts_dir)
    figures = asyncio.run(measure(create_app(settings), users, list_size(args.artifacts_dir), args.hits, args.misses,
                                  args.direct))
    print(" ".join(f"{name}={value:.0f}" for name, value in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
