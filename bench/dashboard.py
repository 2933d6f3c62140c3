"""How long each dashboard page takes to answer on ml-100k: a live ``python -m service`` (PostgreSQL and
Redis by default, or SQLite and the in-process cache), every page asked ``--repeats`` times in turn.

    python bench/dashboard.py                                   # PostgreSQL (TEST_DATABASE_URL's server) + Redis
    python bench/dashboard.py --database-url sqlite:///x.db --redis-url ""
    python bench/dashboard.py --rankers all --epochs 2            # every ranker on the Users page

The version: EASE on all of ml-100k's positives (with every user's stored top-N list, as the trainer
publishes them) and AutoRec-U on its ratings (5 epochs, its curve kept), published with the
trainer's publisher; ``--rankers all`` adds every other ranker (EDLAE, Mult-VAE, Mult-DAE, RecVAE,
CDAE, SVAE; ``--epochs`` each, enough for timing), as ``trainer train --models all`` would serve them.
The database holds all 100,000 ratings. One client, one request at a time: the figure is a page's own
time, not a server under load. The Users page shows every ranker's list explained, and a repeat is a
cache hit, so it is also asked for ``--repeats`` distinct users, the heaviest first ("users, uncached"),
and each ranker's explained list on its own for those users (the second table).
The dashboard's target (issue 24): every page under 300 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import API_KEY, ML100K, ServerProcess, print_table, service_env, write_json  # noqa: E402

PAGES = {
    "overview": "/dashboard",
    "model": "/dashboard/models/autorec-u",
    "data": "/dashboard/data",
    "traffic": "/dashboard/traffic",
    "users": "/dashboard/users?user_id=13&items=1,50,100,181",
    "items search": "/dashboard/items?q=star",
    "items similar": "/dashboard/items?item_id=50",  # with how often each ranker's stored lists hold it
    "overview (admin)": "/dashboard",  # the admin key: the admin forms and the training run's state too
}
ADMIN_PAGES = {"overview (admin)"}
TARGET_MS = 300
OTHER_RANKERS = ("edlae", "multvae", "multdae", "recvae", "cdae", "svae")  # with --rankers all


def publish(root: Path, every_ranker: bool = False, epochs: int = 2) -> str:
    import numpy as np
    import scipy.sparse as sp

    from interactions.movielens import read_dataset
    import registry
    import trainer
    from trainer.top_lists import compute_top_lists

    inter = read_dataset("ml-100k", ML100K)
    users, items = [str(u) for u in inter.user_ids], [str(i) for i in inter.item_ids]
    ratings = sp.csr_matrix((inter.ratings.astype(np.float32), (inter.users, inter.items)), shape=(inter.n_users, inter.n_items))
    positives = sp.csr_matrix(ratings >= 4, dtype=np.float32)
    fitted = {"ease": trainer.fit("ease", positives, progress=False),
              "autorec-u": trainer.fit("autorec-u", ratings, progress=False, epochs=5, seed=0, holdout=0)}
    if every_ranker:
        times = sp.csr_matrix((inter.timestamps.astype(np.float64), (inter.users, inter.items)), shape=ratings.shape)
        times = sp.csr_matrix(times.multiply(positives))  # the positives' times: SVAE reads their order
        for name in OTHER_RANKERS:
            hyper = {} if name == "edlae" else {"epochs": epochs}
            fitted[name] = trainer.fit(name, positives, timestamps=times if name == "svae" else None, progress=False,
                                       seed=0, holdout=0, **hyper)
    seen = sp.csr_matrix(ratings != 0, dtype=np.float32)
    lists = {name: compute_top_lists(fit.model, positives, seen) for name, fit in fitted.items()
             if fit.model.task == "ranking" and not fit.model.sequential}  # as the trainer publishes them
    staged = {name: registry.StagedModel(model, users, items, metrics={"curve": log.get("curve", []),
                                                                         "train": {"fit_seconds": log["fit_seconds"]}},
                                          files=lists[name].files() if name in lists else {})
              for name, (model, log) in fitted.items()}
    counts = np.asarray(positives.getnnz(axis=0)).ravel()
    order = np.argsort(-counts, kind="stable")
    manifest = {
        "source": {"dataset": "ml-100k", "n_users": inter.n_users, "n_items": inter.n_items, "n_interactions": len(inter)},
        "positive_threshold": 4.0,
        "models": {name: {"task": m.task, "metrics": {}, "epochs": log.get("epochs", 0),
                          "fit_seconds": log["fit_seconds"],
                          **({"top_lists": lists[name].info(time.time(), False)} if name in lists else {})}
                   for name, (m, log) in fitted.items()},
    }
    return registry.publish(root, staged, manifest, popularity={"items": [items[i] for i in order], "counts": counts[order].tolist()})


def seed(database_url: str) -> None:
    from interactions.movielens import read_dataset
    from service.seed import seed_interactions
    from storage.migrate import upgrade_to_head
    from storage.session import make_engine

    engine = make_engine(database_url)
    upgrade_to_head(engine)
    engine.dispose()
    seed_interactions(database_url, read_dataset("ml-100k", ML100K))


def heaviest_users(n: int) -> list[str]:
    """ml-100k's ``n`` users with the most positives (rating >= 4), the most first: the longest explanations."""
    import numpy as np

    from interactions.movielens import read_dataset

    inter = read_dataset("ml-100k", ML100K)
    counts = np.bincount(inter.users[inter.ratings >= 4], minlength=inter.n_users)
    return [str(inter.user_ids[u]) for u in np.argsort(-counts, kind="stable")[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="default: a database made for the run on TEST_DATABASE_URL's server")
    parser.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rankers", choices=("ease", "all"), default="ease",
                        help="all: every ranker in the version, so the Users page explains each one's list")
    parser.add_argument("--epochs", type=int, default=2, help="with --rankers all: epochs of each gradient-trained ranker")
    args = parser.parse_args()

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    work = Path(tempfile.mkdtemp(prefix="aerec-dash-"))
    made = None
    database_url = args.database_url
    if database_url is None:  # a database of our own on the shared server, dropped at the end
        server = make_url(os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
        made = f"aerec_dash_{uuid.uuid4().hex[:8]}"
        admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{made}"'))  # a generated name, not input
        database_url = server.set(database=made).render_as_string(hide_password=False)
    try:
        started = time.perf_counter()
        version = publish(work / "registry", every_ranker=args.rankers == "all", epochs=args.epochs)
        seed(database_url)
        print(f"published {version} and seeded ml-100k in {time.perf_counter() - started:.0f}s", flush=True)
        env = service_env(database_url, work / "registry", args.redis_url or None, CACHE_NAMESPACE=f"dash-{uuid.uuid4().hex[:6]}")
        with ServerProcess.service(env, work / "service.log") as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
            for _ in range(3):  # some API traffic for the Traffic page, and every page once (imports, first queries)
                client.post("/users/13/recommendations", json={"k": 10}, headers={"X-API-Key": API_KEY})
            first: dict[str, float] = {}
            admin_headers = {"X-API-Key": API_KEY}
            for name, path in PAGES.items():  # the first of each: imports, first queries, an item's list counts of the version
                t = time.perf_counter()
                assert client.get(path, headers=admin_headers if name in ADMIN_PAGES else None).status_code == 200, path
                first[name] = (time.perf_counter() - t) * 1000
            times: dict[str, list[float]] = {name: [] for name in PAGES}
            for _ in range(args.repeats):
                for name, path in PAGES.items():
                    t = time.perf_counter()
                    response = client.get(path, headers=admin_headers if name in ADMIN_PAGES else None)
                    times[name].append((time.perf_counter() - t) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
            # distinct users: each Users page and each explained list computed, none a cache hit
            users = heaviest_users(2 * args.repeats)
            times["users, uncached"] = []
            for user in users[: args.repeats]:
                t = time.perf_counter()
                assert client.get(f"/dashboard/users?user_id={user}&items=1,50,100,181").status_code == 200, user
                times["users, uncached"].append((time.perf_counter() - t) * 1000)
            rankers = [m["name"] for m in client.get("/models").json()["models"] if m["task"] == "ranking"]
            explained: dict[str, list[float]] = {name: [] for name in rankers}
            for user in users[args.repeats :]:
                for name in rankers:
                    t = time.perf_counter()
                    response = client.post(f"/users/{user}/recommendations", json={"k": 10, "model": name, "explain": True},
                                           headers=admin_headers)
                    explained[name].append((time.perf_counter() - t) * 1000)
                    assert response.status_code == 200, (name, user, response.text)
    finally:
        if made:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{made}" WITH (FORCE)'))
            admin.dispose()
    rows = [{"page": name, "first_ms": first.get(name), "median_ms": statistics.median(t), "p95_ms": sorted(t)[int(0.95 * (len(t) - 1))],
             "max_ms": max(t)} for name, t in times.items()]
    backend = make_url(database_url).get_backend_name() + (" + redis" if args.redis_url else " + in-process cache")
    print_table(rows, [("page", "page", "s"), ("first_ms", "first ms", ".1f"), ("median_ms", "median ms", ".1f"), ("p95_ms", "p95 ms", ".1f"), ("max_ms", "max ms", ".1f")],
                title=f"dashboard pages on ml-100k ({backend}, {args.repeats} requests each)")
    lists = [{"model": name, "median_ms": statistics.median(t), "max_ms": max(t)} for name, t in explained.items()]
    print_table(lists, [("model", "model", "s"), ("median_ms", "median ms", ".1f"), ("max_ms", "max ms", ".1f")],
                title=f"one explained list (k=10) per request, {args.repeats} distinct heavy users, no cache hits")
    worst = max(r["max_ms"] for r in rows)
    print(f"{'PASS' if worst < TARGET_MS else 'FAIL'}: every page under {TARGET_MS} ms (slowest request {worst:.0f} ms)")
    write_json("dashboard" if args.rankers == "ease" else "dashboard-all-rankers",
               {"backend": backend, "repeats": args.repeats, "rankers": rankers, "pages": rows, "explained_lists": lists,
                "target_ms": TARGET_MS})


if __name__ == "__main__":
    main()
