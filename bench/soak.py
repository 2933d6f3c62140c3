"""Soak: a steady request rate for a bounded time; memory must not grow and no request may fail.

    python bench/soak.py                       # 10 minutes at 40 requests/s, SQLite + in-process cache
    python bench/soak.py --minutes 1 --backend postgres

The service (``python -m service``, ml-100k models: EASE and AutoRec-U) gets an open-loop
mix at ``--rate`` requests/s: recommendations (70%: repeated users and parameters, so
mostly cache hits, with a bounded share of new keys), ``POST /ratings`` (15%) and
``POST /interactions`` (15%, a new row each, which also invalidates that user's lists).
Its resident memory is sampled every second. The first 20% of the run is warm-up
(caches and allocator arenas filling). On the rest, the Theil-Sen slope of RSS over time
(a median of pairwise slopes: the allocator's step-wise growth and release do not tip it)
must stay under ``--max-slope`` MiB per minute, or, on runs too short to tell a slope from
the allocator's steps, under ``--noise-mib`` spread over the measured window. The error
count must be zero.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    API_KEY, REDIS_URL, BenchError, Request, ServerProcess, machine_info, ml100k_args, postgres_database, print_table,
    pyplot, redis_namespace, registry_dir, run_load, save_figure, seed_database, service_env, train_registry, verdict,
    write_json,
)
from bench.serving import defaults, known_ids  # noqa: E402

MIB = 2**20
WARMUP_SHARE = 0.2


def make_mix(users: list[str], items: list[str]):
    auth = {"X-API-Key": API_KEY}
    base_ts = int(time.time())

    def make(i: int) -> Request:
        slot = i % 20
        user = users[(i * 7919) % 300]  # 300 users, revisited: the cache's working set stays bounded
        if slot < 14:
            return Request("POST", f"/users/{user}/recommendations", {"k": (5, 10, 20)[i % 3], "offset": (i // 3) % 4})
        if slot < 17:
            return Request("POST", "/ratings", {"user_id": user, "item_ids": items[(i % 50):(i % 50) + 5]})
        return Request("POST", "/interactions",
                       [{"user_id": user, "item_id": items[i % len(items)], "rating": 4.0, "timestamp": base_ts + i}], auth)

    return make


@contextmanager
def backend(name: str, workdir: Path) -> Iterator[tuple[str, str | None, str]]:
    """(database URL, Redis URL or None, cache namespace); the PostgreSQL database and Redis keys are removed after."""
    if name == "embedded":
        yield f"sqlite:///{workdir / 'soak.db'}", None, "soak"
        return
    with postgres_database("aerec_soak") as database_url, redis_namespace() as namespace:
        yield database_url, REDIS_URL, namespace


def slope_mib_per_minute(times: np.ndarray, rss: np.ndarray) -> tuple[float, float]:
    """Theil-Sen slope (MiB/min) and intercept of RSS over time."""
    from scipy.stats import theilslopes

    if len(times) < 3:
        return float("nan"), float("nan")
    fit = theilslopes(rss / MIB, times / 60.0)
    return float(fit.slope), float(fit.intercept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second (open loop)")
    parser.add_argument("--concurrency", type=int, default=16, help="most requests in flight")
    parser.add_argument("--backend", choices=("embedded", "postgres"), default="embedded")
    parser.add_argument("--max-slope", type=float, default=1.0, help="MiB per minute allowed after warm-up")
    parser.add_argument("--noise-mib", type=float, default=5.0,
                        help="allocator step noise: short runs may grow this much over the measured window")
    parser.add_argument("--artifacts-dir", type=registry_dir, default=None)
    args = parser.parse_args(argv)
    samples: list[tuple[float, int]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="aerec-soak-") as tmp:
            workdir = Path(tmp)
            artifacts = args.artifacts_dir or workdir / "artifacts"
            if args.artifacts_dir is None:
                train_registry(artifacts, "ease,autorec-u", ml100k_args(), ["--set", "autorec-u.epochs=3"])
            users, items = known_ids(artifacts)
            with backend(args.backend, workdir) as (database_url, redis_url, namespace):
                print(" ", seed_database(database_url, ml100k_args()), flush=True)
                env = service_env(database_url, artifacts, redis_url, CACHE_NAMESPACE=namespace, **defaults(artifacts))
                with ServerProcess.service(env, workdir / "soak.log") as server:
                    samples.append((0.0, server.rss()))
                    print(f"  soaking {args.minutes:g} min at {args.rate:g} req/s ...", flush=True)
                    result = run_load(server.base_url, make_mix(users, items), scenario="soak",
                                      concurrency=args.concurrency, seconds=args.minutes * 60, warmup_s=0,
                                      rate=args.rate, on_tick=lambda t: samples.append((t, server.rss())))
                    alive = server.proc.poll() is None
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    times = np.array([t for t, _ in samples])
    rss = np.array([r for _, r in samples], dtype=np.float64)
    steady = times >= WARMUP_SHARE * times.max()
    slope, intercept = slope_mib_per_minute(times[steady], rss[steady])
    window_min = (times[steady].max() - times[steady].min()) / 60.0
    allowed = max(args.max_slope, args.noise_mib / max(window_min, 1e-9))
    summary = result.summary()
    title = f"soak · ml-100k · {args.backend} · {args.minutes:g} min at {args.rate:g} req/s"
    print()
    print_table([summary], [("requests", "requests", ",d"), ("rps", "req/s", ",.1f"), ("p50_ms", "p50 ms", ".1f"),
                            ("p99_ms", "p99 ms", ".1f"), ("max_ms", "max ms", ".0f"), ("failed", "failed", "d")],
                title=title)
    print(f"RSS {rss[steady][0] / MIB:,.1f} -> {rss[-1] / MIB:,.1f} MiB after warm-up "
          f"(peak {rss.max() / MIB:,.1f} MiB), slope {slope:+.2f} MiB/min\n")
    verdicts = [
        verdict("soak errors", result.failed == 0 and alive,
                f"{result.failed} failed of {result.requests:,}{'' if alive else '; the server died'}"),
        verdict("soak memory", slope < allowed,
                f"RSS slope {slope:+.2f} MiB/min over the last {window_min:.1f} min (target < {allowed:.2f}: "
                f"{args.max_slope:g} MiB/min, or {args.noise_mib:g} MiB over a window this short)"),
    ]
    write_json("soak", {"bench": "soak", "backend": args.backend, "minutes": args.minutes, "rate": args.rate,
                        "machine": machine_info(), "load": summary, "rss_samples": [[t, r] for t, r in samples],
                        "slope_mib_per_min": slope, "allowed_slope_mib_per_min": allowed, "targets": verdicts})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(times / 60, rss / MIB, label="service RSS")
    if np.isfinite(slope):
        t = times[steady] / 60
        ax.plot(t, intercept + slope * t, "--", label=f"Theil-Sen {slope:+.2f} MiB/min")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.legend(fontsize="small")
    ax.set_title(f"{title} · {result.failed} failed", fontsize="small")
    save_figure("soak", fig)
    return 0 if all(v["passed"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
