"""Server CPU per cache hit (or first request) through the real server: several trees' servers driven by one
client, in turn.

    python bench/server_cpu.py --artifacts-dir REGISTRY --tree OLD=/path/to/old:old.db --tree NEW=.:new.db \
        [--rate 2000] [--rounds 4] [--seconds 4] [--clients 8] [--scenario rec-first] [--redis-url URL]

Each ``--tree NAME=PATH:DB`` starts ``python -m service`` from PATH (its own code, ``PYTHONPATH=PATH``) on a
SQLite database seeded by that tree (``python -m service seed``), impressions off, the in-process cache (or
Redis at ``--redis-url``, a key namespace per tree, deleted after), and the same registry for all (trained by
the oldest tree's trainer, so every tree can serve it). One load generator (``bench._common.run_load``;
rec-hit: 64 users asked ``{"k": 10}`` again and again; rec-first: bench/serving.py's, a new (user, offset)
pair within the stored lists each time) drives each
server in turn, as fast as its clients go (``--rate 0``) or at a fixed rate (open loop), and the figure is
the CPU the server's process group used (all threads and children, from /proc) over the requests answered:
unlike req/s it holds on a shared machine, and the client's own work is the same for every tree.
Prints each round and, per tree, the median and the median of its per-round ratio to the first tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PYTHON, ServerProcess, free_port, redis_namespace, run_load, service_env  # noqa: E402
from bench.serving import known_ids, list_size, request_makers  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """CPU seconds of the processes of group ``pgid``: user and system, threads and reaped children included."""
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == pgid:
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / TICK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", type=Path, required=True)
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH:SQLITE_DB, the first is the reference")
    parser.add_argument("--rate", type=float, default=0, help="requests a second (open loop); 0: as fast as the clients go")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--scenario", choices=("rec-hit", "rec-first"), default="rec-hit")
    parser.add_argument("--redis-url", default=None, help="Redis as the cache (default: the in-process one)")
    args = parser.parse_args(argv)
    trees = {}
    for spec in args.tree:
        name, _, rest = spec.partition("=")
        path, _, db = rest.rpartition(":")
        trees[name] = (Path(path).resolve(), Path(db).resolve())
    users, items = known_ids(args.artifacts_dir)
    request = request_makers(users, items, list_size(args.artifacts_dir))[args.scenario]

    figures: dict[str, list[float]] = {name: [] for name in trees}
    with ExitStack() as stack:
        servers = {}
        for name, (tree, db) in trees.items():
            namespace = {} if args.redis_url is None else {
                "CACHE_NAMESPACE": stack.enter_context(redis_namespace(args.redis_url))}
            env = service_env(f"sqlite:///{db}", args.artifacts_dir, args.redis_url, IMPRESSIONS_ENABLED="false",
                              DEFAULT_MODEL="ease", OMP_NUM_THREADS="1", **namespace)
            port = free_port()  # the tree's own code, run from it
            server = ServerProcess([PYTHON, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                   {**env, "PYTHONPATH": str(tree)}, port, Path(f"/tmp/server_cpu-{name}.log"), cwd=tree)
            servers[name] = stack.enter_context(server)
            run_load(servers[name].base_url, request, scenario="warm-up", concurrency=args.clients, seconds=1, warmup_s=0)
        for round_ in range(args.rounds):
            for name in (list(trees) if round_ % 2 == 0 else list(reversed(trees))):  # each tree first in turn
                server = servers[name]
                before = group_cpu_s(server.pid)
                result = run_load(server.base_url, request, scenario=args.scenario, concurrency=args.clients,
                                  seconds=args.seconds, warmup_s=0, rate=args.rate or None)
                if result.failed:
                    raise SystemExit(f"{name}: {result.failed} requests failed: {result.failures[:3]}")
                figures[name].append((group_cpu_s(server.pid) - before) / result.requests * 1e6)
                print(f"round {round_} {name}: {figures[name][-1]:.1f} us of server CPU a request, {result.rps:,.0f} req/s", flush=True)
    reference = next(iter(trees))
    summary = {}
    for name, values in figures.items():
        ratios = [v / r for v, r in zip(values, figures[reference])]
        summary[name] = {"median_us": round(statistics.median(values), 1), "range_us": [round(min(values), 1), round(max(values), 1)],
                         "ratio_median": round(statistics.median(ratios), 3), "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}
        print(f"{name}: {summary[name]['median_us']} us ({min(values):.1f}-{max(values):.1f}), x{summary[name]['ratio_median']} "
              f"of {reference} ({min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
