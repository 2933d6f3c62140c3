"""Serving throughput and latency on loopback, against a bare FastAPI ceiling measured in the same run.

    python bench/serving.py                          # ml-100k models, embedded + PostgreSQL/Redis
    python bench/serving.py --backends embedded --seconds 2 --concurrency 1,8
    python bench/serving.py --scale synthetic --synthetic-interactions 2000000 --train-set multvae.epochs=2

Trains EASE, AutoRec-U and Mult-VAE with ``python -m trainer train`` (gradient models
capped at ``--epochs``, 10 by default: what is measured here is serving) into a temporary
registry, seeds a database with ``python -m service seed`` and starts ``python -m service``
as a subprocess on each backend:

* ``embedded``: SQLite file + the in-process cache (the default settings);
* ``postgres``: a database created on the PostgreSQL server for this run (dropped after)
  + Redis (``BENCH_REDIS_URL``, db 5, keys under a namespace of this run, deleted after).

Scenarios, each at 1, 8 and 32 concurrent clients (asyncio, keep-alive HTTP/1.1): recommendations
with a cache hit (64 users asked again and again), a first request (every request a new
(user, offset) pair within the users' stored top-N lists: no cache entry, answered from the
list, as a user's first request of a version is; ml-100k's 943 users are fewer than a cell
asks, so users repeat with other offsets), a cache miss (a new (user, offset) pair past the
stored lists, so the model scores it), ``POST /ratings`` (10 items) and
``POST /interactions`` (one new interaction per request). The ceiling is
``bench/_ceiling_app.py`` (same uvicorn settings, a constant list), run before the services and
again after them; "of ceiling" is a row's req/s over the mean of the two. The load generator
runs on the same 2 cores as the server: the figures are what one machine does, client
included.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    API_KEY, LOAD_COLUMNS, PG_ADMIN_URL, REDIS_URL, BenchError, LoadResult, Request, ServerProcess, add_scale_arguments,
    machine_info, postgres_database, prepare_data, print_table, pyplot, redis_namespace, registry_dir, run_load,
    save_figure, seed_database, service_env, train_registry, verdict, write_json,
)

SCENARIOS = ("rec-hit", "rec-first", "rec-miss", "ratings", "interactions")
HIT_USERS = 64
TARGET_HIT, TARGET_MISS, TARGET_P99_MS, TARGET_CLIENTS = 0.60, 0.30, 25.0, 8


def served_models(artifacts_dir: Path) -> dict[str, str]:
    """{model name: task} of the version ``LATEST`` names."""
    version = (artifacts_dir / "LATEST").read_text().strip()
    manifest = json.loads((artifacts_dir / version / "manifest.json").read_text())
    return {name: info["task"] for name, info in manifest["models"].items()}


def defaults(artifacts_dir: Path) -> dict[str, str]:
    """DEFAULT_MODEL / DEFAULT_RATING_MODEL settings: the service's own unless the version lacks them."""
    models = served_models(artifacts_dir)
    rankers = [n for n, t in models.items() if t == "ranking"]
    raters = [n for n, t in models.items() if t == "rating"]
    env = {"DEFAULT_MODEL": "ease" if "ease" in rankers else rankers[0]}
    if raters:
        env["DEFAULT_RATING_MODEL"] = "autorec-u" if "autorec-u" in raters else raters[0]
    return env


def known_ids(artifacts_dir: Path) -> tuple[list[str], list[str]]:
    """External user and item ids the default ranker was trained with."""
    version = (artifacts_dir / "LATEST").read_text().strip()
    ids = json.loads((artifacts_dir / version / defaults(artifacts_dir)["DEFAULT_MODEL"] / "ids.json").read_text())
    return ids["users"], ids["items"]


def list_size(artifacts_dir: Path) -> int:
    """N of the default ranker's stored top-N lists (0: none published)."""
    version = (artifacts_dir / "LATEST").read_text().strip()
    manifest = json.loads((artifacts_dir / version / "manifest.json").read_text())
    return int((manifest["models"][defaults(artifacts_dir)["DEFAULT_MODEL"]].get("top_lists") or {}).get("n", 0))


def request_makers(users: list[str], items: list[str], stored: int = 0) -> dict[str, Callable[[int], Request]]:
    """How each scenario builds its i-th request. Counters live across runs so no key repeats.
    ``stored``: N of the stored lists; misses ask past them, first requests within them."""
    miss_counter = itertools.count()
    first_counter = itertools.count()
    write_counter = itertools.count()
    hit_users = users[:HIT_USERS]
    rating_items = items[:10]
    auth = {"X-API-Key": API_KEY}
    started = int(time.time())

    def rec_hit(i: int) -> Request:
        return Request("POST", f"/users/{hit_users[i % len(hit_users)]}/recommendations", {"k": 10})

    def rec_miss(_: int) -> Request:
        n = next(miss_counter)
        # a (user, offset) pair never asked before, past the stored list: a new cache key, the model runs
        return Request("POST", f"/users/{users[n % len(users)]}/recommendations",
                       {"k": 10, "offset": stored + n // len(users)})

    def rec_first(_: int) -> Request:
        n = next(first_counter)
        # a (user, offset) pair never asked before (until the offsets wrap), within the stored list
        offset = (n // len(users)) % max(1, stored - 10)
        return Request("POST", f"/users/{users[n % len(users)]}/recommendations", {"k": 10, "offset": offset})

    def ratings(i: int) -> Request:
        return Request("POST", "/ratings", {"user_id": users[i % len(users)], "item_ids": rating_items})

    def interactions(_: int) -> Request:
        n = next(write_counter)
        body = [{"user_id": users[n % len(users)], "item_id": items[(n * 7) % len(items)], "rating": 4.0,
                 "timestamp": started + n}]  # a new timestamp: always a new row
        return Request("POST", "/interactions", body, auth)

    return {"rec-hit": rec_hit, "rec-first": rec_first, "rec-miss": rec_miss, "ratings": ratings,
            "interactions": interactions}


SCENARIO_ROUTES = {"rec-hit": "/users/{user_id}/recommendations", "rec-first": "/users/{user_id}/recommendations",
                   "rec-miss": "/users/{user_id}/recommendations",
                   "ratings": "/ratings", "interactions": "/interactions"}


def server_histogram(base_urls: list[str], route: str) -> dict[float, float]:
    """The service's own request-duration histogram for ``route``, summed over its replicas:
    {bucket upper edge in s: cumulative count}."""
    total: dict[float, float] = {}
    for base_url in base_urls:
        for edge, count in histogram_from_text(httpx.get(f"{base_url}/metrics", timeout=10).text, route).items():
            total[edge] = total.get(edge, 0.0) + count
    return total


def histogram_from_text(exposition: str, route: str) -> dict[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name == "aerec_http_request_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("route") == route:
                    edge = float(sample.labels["le"])
                    counts[edge] = counts.get(edge, 0.0) + sample.value  # summed over the model label
    return counts


def server_p99_bound_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The smallest bucket edge under which 99% of the requests between two snapshots finished, in ms."""
    served = {edge: after[edge] - before.get(edge, 0.0) for edge in after}
    total = served.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return next(edge * 1000 for edge in sorted(served) if served[edge] >= 0.99 * total)


def measure(base_urls: list[str], makers: dict, scenarios, levels, seconds: float, label: str) -> list[dict]:
    rows = []
    for scenario in scenarios:
        for clients in levels:
            route = SCENARIO_ROUTES.get(scenario)  # the ceiling has no metrics
            before = server_histogram(base_urls, route) if route else {}
            result: LoadResult = run_load(base_urls, makers[scenario], scenario=scenario, concurrency=clients,
                                          seconds=seconds, warmup_s=min(1.0, seconds / 3))
            # The service's own view of the same requests (warm-up included: an upper bound), to
            # tell its time from the queueing and scheduling the load generator also sees.
            server_p99 = server_p99_bound_ms(before, server_histogram(base_urls, route)) if route else None
            rows.append({"backend": label, "replicas": len(base_urls), **result.summary(), "server_p99_ms": server_p99})
    return rows


def replica_label(name: str, replicas: int) -> str:
    return name if replicas == 1 else f"{name} x{replicas}"


@contextmanager
def running(start: Callable[[int], ServerProcess], replicas: int) -> Iterator[list[ServerProcess]]:
    """``replicas`` servers from ``start(n)``, all stopped on leaving."""
    with ExitStack() as stack:
        yield [stack.enter_context(start(n)) for n in range(replicas)]


def run_backend(label: str, database_url: str, redis_url: str | None, namespace: str, artifacts: Path,
                data_args: list[str], makers: dict, args, log_dir: Path, replica_counts: list[int]) -> list[dict]:
    """Seed once, then serve with each number of replicas (processes on their own ports, one database and cache)."""
    print(f"\n== {label}: {database_url.split('@')[-1]}{' + ' + redis_url if redis_url else ' + in-process cache'}", flush=True)
    print(" ", seed_database(database_url, data_args), flush=True)
    env = service_env(database_url, artifacts, redis_url, CACHE_NAMESPACE=namespace, RELOAD_INTERVAL_S=60,
                      **defaults(artifacts))
    rows = []
    for replicas in replica_counts:
        name = replica_label(label, replicas)
        with running(lambda n: ServerProcess.service(env, log_dir / f"service-{label}-{n}.log"), replicas) as servers:
            measured = measure([s.base_url for s in servers], makers, args.scenarios, args.concurrency,
                               args.seconds, name)
            for row in measured:
                row["rss_mib"] = round(sum(s.rss() for s in servers) / 2**20, 1)
            rows += measured
    return rows


def measure_ceilings(replica_counts: list[int], when: str, makers: dict, args, log_dir: Path) -> list[dict]:
    """The bare FastAPI ceiling with each number of replicas, its rows labelled ``when`` it ran."""
    rows = []
    for replicas in replica_counts:
        label = replica_label(f"ceiling ({when})", replicas)
        print(f"\n== {label} (bare FastAPI, constant list)", flush=True)
        with running(lambda n: ServerProcess.ceiling(log_dir / f"ceiling-{when}-{n}.log"), replicas) as ceiling:
            rows += measure([c.base_url for c in ceiling], {"ceiling": makers["rec-hit"]}, ["ceiling"],
                            args.concurrency, args.seconds, label)
    return rows


def ceilings(rows: list[dict]) -> dict[tuple[int, int], float]:
    """{(replicas, clients): the ceiling's req/s}, the mean of its runs (before and after the services): each row
    is compared with the ceiling run as it was."""
    runs: dict[tuple[int, int], list[float]] = {}
    for r in rows:
        if r["scenario"] == "ceiling":
            runs.setdefault((r["replicas"], r["concurrency"]), []).append(r["rps"])
    return {key: sum(rps) / len(rps) for key, rps in runs.items()}


def of_ceiling(row: dict, ceiling: dict[tuple[int, int], float]) -> float | None:
    top = ceiling.get((row["replicas"], row["concurrency"]))
    return row["rps"] / top if top else None


def targets(rows: list[dict]) -> list[dict]:
    ceiling = ceilings(rows)
    out = []
    for row in rows:
        if row["scenario"] == "ceiling" or row["concurrency"] != TARGET_CLIENTS:
            continue
        name = f"{row['backend']} {row['scenario']} @{TARGET_CLIENTS}"
        ratio = of_ceiling(row, ceiling)
        ratio = float("nan") if ratio is None else ratio
        if row["scenario"] in ("rec-hit", "rec-first", "rec-miss"):
            need = TARGET_MISS if row["scenario"] == "rec-miss" else TARGET_HIT  # a first request: as a hit
            out.append(verdict(f"{name} throughput", ratio >= need,
                               f"{row['rps']:,.0f} req/s = {ratio:.0%} of the ceiling (target >= {need:.0%})"))
        server = "" if row.get("server_p99_ms") is None else f" (in the service: <= {row['server_p99_ms']:g} ms)"
        out.append(verdict(f"{name} p99", row["p99_ms"] < TARGET_P99_MS and row["failed"] == 0,
                           f"p99 {row['p99_ms']:.1f} ms{server} (target < {TARGET_P99_MS:.0f} ms), {row['failed']} failed"))
    return out


def plot(rows: list[dict], name: str, title: str) -> None:
    plt = pyplot()
    series = sorted({(r["backend"], r["scenario"]) for r in rows}, key=lambda s: (s[1] != "ceiling", s))
    levels = sorted({r["concurrency"] for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(series)
    for j, (backend, scenario) in enumerate(series):
        by_level = {r["concurrency"]: r for r in rows if (r["backend"], r["scenario"]) == (backend, scenario)}
        x = [i + j * width for i in range(len(levels))]
        label = backend if scenario == "ceiling" else f"{backend} {scenario}"
        ax1.bar(x, [by_level[c]["rps"] if c in by_level else 0 for c in levels], width, label=label)
        ax2.bar(x, [by_level[c]["p99_ms"] if c in by_level else 0 for c in levels], width, label=label)
    for ax, ylabel in ((ax1, "requests / s"), (ax2, "p99 latency (ms, log)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(levels))], [f"{c} clients" for c in levels])
        ax.set_ylabel(ylabel)
    ax2.set_yscale("log")
    ax2.axhline(TARGET_P99_MS, color="red", linestyle="--", linewidth=1)
    ax1.legend(fontsize="small", ncol=5, loc="upper center", bbox_to_anchor=(1.1, -0.1))
    ax1.set_title(title, fontsize="small")
    save_figure(name, fig)


def epoch_caps(models: str, epochs: int) -> list[str]:
    from models import REGISTRY

    names = list(REGISTRY) if models == "all" else models.split(",")
    return [] if epochs <= 0 else [f"{n}.epochs={epochs}" for n in names if not REGISTRY[n].closed_form]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scale_arguments(parser)
    parser.add_argument("--models", default="ease,autorec-u,multvae")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of each gradient model (serving cost does not depend on it; 0: the configs' own)")
    parser.add_argument("--train-set", action="append", default=[], help="passed to the trainer as --set (repeatable)")
    parser.add_argument("--artifacts-dir", type=registry_dir, default=None, help="serve this registry instead of training one")
    parser.add_argument("--backends", default="embedded,postgres")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per cell (after a warm-up)")
    parser.add_argument("--replicas", default="1",
                        help="API processes behind one PostgreSQL + Redis, e.g. 1,2 (the ceiling gets as many; "
                             "the embedded default is one process: its in-process cache is not shared)")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    try:
        args.replicas = sorted({int(r) for r in args.replicas.split(",")})
    except ValueError:
        parser.error(f"--replicas takes counts like 1,2, got {args.replicas!r}")
    if min(args.replicas) < 1:
        parser.error("--replicas counts must be at least 1")
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.scenarios) - set(SCENARIOS) | set(args.backends.split(",")) - {"embedded", "postgres"}
    if unknown:
        parser.error(f"unknown scenario/backend: {', '.join(sorted(unknown))}")
    name = "serving" if args.scale == "ml-100k" else "serving-synthetic"
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="aerec-bench-") as tmp:
            workdir = Path(tmp)
            data_args, data_desc = prepare_data(args, workdir)
            artifacts = args.artifacts_dir or workdir / "artifacts"
            if args.artifacts_dir is None:
                extra = [a for s in epoch_caps(args.models, args.epochs) + args.train_set for a in ("--set", s)]
                print("version", train_registry(artifacts, args.models, data_args, extra), flush=True)
            users, items = known_ids(artifacts)
            makers = request_makers(users, items, list_size(artifacts))
            if "rec-first" in args.scenarios and not list_size(artifacts):
                print("the default ranker has no stored lists: the rec-first scenario is skipped", flush=True)
                args.scenarios.remove("rec-first")
            if "DEFAULT_RATING_MODEL" not in defaults(artifacts) and "ratings" in args.scenarios:
                print("no rating model in this version: the ratings scenario is skipped", flush=True)
                args.scenarios.remove("ratings")
            rows = []
            backends = args.backends.split(",")
            # the ceiling as many times as the service runs (once per replica count measured), before the services
            # and again after them: one reading moved 5,400-8,200 req/s from run to run on this machine
            ceiling_replicas = ({1} if "embedded" in backends else set()) | (set(args.replicas) if "postgres" in backends else set())
            rows += measure_ceilings(sorted(ceiling_replicas), "before", makers, args, workdir)
            for backend in backends:
                if backend == "embedded":
                    rows += run_backend("embedded", f"sqlite:///{workdir / 'bench.db'}", None, "bench", artifacts,
                                        data_args, makers, args, workdir, [1])
                else:
                    with postgres_database() as pg_url, redis_namespace() as namespace:
                        rows += run_backend("postgres", pg_url, REDIS_URL, namespace, artifacts, data_args, makers,
                                            args, workdir, args.replicas)
            rows += measure_ceilings(sorted(ceiling_replicas), "after", makers, args, workdir)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ceiling = ceilings(rows)
    for row in rows:
        row["of_ceiling"] = of_ceiling(row, ceiling)
    title = f"serving · {data_desc} · {args.seconds:g}s per cell"
    print()
    print_table(rows, [("backend", "backend", "")] + LOAD_COLUMNS + [("of_ceiling", "of ceiling", ".0%"),
                                                                     ("server_p99_ms", "server p99 <= ms", "g")],
                title=title)
    print()
    verdicts = targets(rows)
    write_json(name, {
        "bench": "serving", "data": data_desc, "models": args.models, "seconds_per_cell": args.seconds,
        "machine": machine_info(), "postgres": make_url(PG_ADMIN_URL).render_as_string(hide_password=True),
        "redis": make_url(REDIS_URL).render_as_string(hide_password=True),
        "wall_seconds": round(time.perf_counter() - started, 1), "results": rows, "targets": verdicts,
    })
    plot(rows, name, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
