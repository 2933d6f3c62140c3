"""CPU per recommendation request in process: the app answers through an ASGI transport, no sockets, no
load generator, so the figure is the service's own work and holds on a machine too busy for bench/serving.py.

    python bench/request_cpu.py --artifacts-dir REGISTRY --database-url sqlite:///seeded.db [--redis-url URL]

Hits: ``HIT_USERS`` users asked again and again (``{"k": 10}``, as bench/serving.py's rec-hit); misses: a
new (user, offset) pair past the stored lists each time, so the model scores it (rec-miss). CPU time is the process's, worker threads included. Run it on
two trees in turn (``PYTHONPATH`` picks the tree) to compare them on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serving import HIT_USERS, known_ids, list_size  # noqa: E402


async def measure(app, users: list[str], stored: int, hits: int, misses: int) -> dict[str, float]:
    """Microseconds of CPU and wall time per hit and per miss, after a warm-up of each."""
    missed = iter(range(10**9))

    def hit(i: int) -> tuple[str, dict]:
        return f"/users/{users[i % HIT_USERS]}/recommendations", {"k": 10}

    def miss(_: int) -> tuple[str, dict]:
        n = next(missed)
        return f"/users/{users[n % len(users)]}/recommendations", {"k": 10, "offset": stored + n // len(users)}

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
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
            hit_cpu, hit_wall = await run(hit, hits)
            miss_cpu, miss_wall = await run(miss, misses)
    return {"hit_cpu_us": hit_cpu, "hit_wall_us": hit_wall, "miss_cpu_us": miss_cpu, "miss_wall_us": miss_wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", type=Path, required=True, help="a published registry")
    parser.add_argument("--database-url", required=True, help="a database seeded with the registry's dataset")
    parser.add_argument("--redis-url", default=None, help="Redis as the cache (default: the in-process one)")
    parser.add_argument("--hits", type=int, default=4000)
    parser.add_argument("--misses", type=int, default=1000)
    args = parser.parse_args(argv)

    from service.core.config import Settings
    from service.main import create_app

    settings = Settings(ENVIRONMENT="development", DATABASE_URL=args.database_url, REDIS_URL=args.redis_url,
                        ARTIFACTS_DIR=args.artifacts_dir, CACHE_NAMESPACE=f"bench-cpu-{uuid.uuid4().hex[:8]}")
    users, _ = known_ids(args.artifacts_dir)
    figures = asyncio.run(measure(create_app(settings), users, list_size(args.artifacts_dir), args.hits, args.misses))
    print(" ".join(f"{name}={value:.0f}" for name, value in figures.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
