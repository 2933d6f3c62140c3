"""Faults under load, each with a PASS/FAIL line: Redis killed, PostgreSQL cut, broken versions, a hot swap, poisoned ratings.

    python bench/faults.py                          # every fault, 20 s of load each, 8 clients
    python bench/faults.py --seconds 6 --faults redis,postgres

The service runs as ``python -m service`` (a subprocess) on PostgreSQL and Redis that this
run controls, never the shared servers' state:

* PostgreSQL: a database made for the run on the shared server, reached by the service
  through a ``TcpProxy`` of ours. Cutting the proxy is what a database restart looks like
  from the service (open connections reset, new ones refused); restoring it is the
  database coming back. The shared server itself is never restarted.
* Redis: a ``redis-server`` started by this run on a free port, killed with SIGKILL and
  started again on the same port.

Scenarios (``tests/reliability/test_faults.py`` runs the same functions, shorter):

* ``redis``: reads and writes while Redis dies and comes back -> zero failed requests.
* ``postgres``: one new interaction per write while the database goes away and comes back
  -> every write is either acknowledged (201) and present in the database afterwards, or
  answered 503; zero acknowledged writes lost; the service recovers on its own.
* ``artifacts``: broken versions published under load (half-written weights, a truncated
  manifest, NaN weights, ``LATEST`` naming a missing folder or holding garbage) -> each is
  refused, the old version keeps serving, zero failed requests; then a good version is
  published -> swapped in under load, zero failed requests.
* ``poisoning``: ratings of 1000 and -3 (and "5", true) posted to ``/interactions`` -> each a
  422 naming the allowed values; the same ratings written straight into the database -> the
  scheduled trainer's run fails with one line naming how many and one of them, and the
  published version keeps serving, zero failed requests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    API_KEY, ML100K, PYTHON, REPO, BenchError, LoadResult, Request, RedisServer, Schedule, ServerProcess, TcpProxy,
    machine_info, ml100k_args,
    postgres_database, print_table, pyplot, registry_dir, run_load, save_figure, service_env, train_registry, verdict,
    write_json,
)

AUTH = {"X-API-Key": API_KEY}
RELOAD_INTERVAL_S = 0.2


@dataclass
class Rig:
    """A service process on a proxied PostgreSQL database and a Redis of our own."""

    server: ServerProcess
    proxy: TcpProxy
    redis: RedisServer
    database_url: str  # direct, not through the proxy: to check what was stored
    artifacts: Path


def build_registry(artifacts: Path) -> str:
    """A published version with EASE on ml-100k (the service's default model), through the trainer's CLI."""
    return train_registry(artifacts, "ease", ml100k_args())


def publish_ease(root: Path, source: Path | None = ML100K) -> str:
    """EASE solved on all of ml-100k's positives (ratings >= 4) and published with the trainer's own
    publisher, in seconds: the registry of the reliability tests, which test the service, not the
    training pipeline's split, evaluation and refit."""
    import numpy as np
    import scipy.sparse as sp

    import trainer
    from trainer import artifacts
    from trainer.datasets import get_dataset, read_dataset

    # a local folder is read as it is (no cache written); otherwise the trainer's dataset cache
    inter = read_dataset("ml-100k", source) if source else get_dataset("ml-100k", progress=False)
    positive = inter.ratings >= 4
    X = sp.csr_matrix((np.ones(int(positive.sum()), np.float32), (inter.users[positive], inter.items[positive])),
                      shape=(inter.n_users, inter.n_items))
    model = trainer.fit("ease", X, progress=False)
    users, items = [str(u) for u in inter.user_ids], [str(i) for i in inter.item_ids]
    counts = np.asarray(X.getnnz(axis=0)).ravel()
    order = np.argsort(-counts, kind="stable")
    fit_seconds = model.training_log["fit_seconds"]
    staged = {"ease": artifacts.StagedModel(model, users, items, metrics={"train": {"fit_seconds": fit_seconds}})}
    manifest = {
        "source": {"dataset": "ml-100k", "n_users": X.shape[0], "n_items": X.shape[1], "n_interactions": int(X.nnz)},
        "positive_threshold": 4.0,
        "models": {"ease": {"task": "ranking", "metrics": {}, "epochs": 0, "fit_seconds": fit_seconds}},
    }
    popularity = {"items": [items[i] for i in order], "counts": counts[order].tolist()}
    return artifacts.publish(root, staged, manifest, popularity=popularity)


@contextmanager
def fault_rig(workdir: Path, artifacts: Path, *, redis_password: str | None = None, database_password: str | None = None,
              log_level: str = "warning", **settings) -> Iterator[Rig]:
    """Everything a fault run needs, torn down whatever happens (servers stopped, database dropped).

    ``settings`` override the service's environment. The passwords (Redis ``requirepass``; one in
    the database URL, which trust authentication accepts) let a test look for them in logs."""
    from sqlalchemy.engine import make_url

    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_database("aerec_faults"))
        direct = make_url(database_url)
        proxy = stack.enter_context(TcpProxy(direct.host or "127.0.0.1", direct.port or 5432))
        redis = stack.enter_context(RedisServer(password=redis_password))
        proxied = direct.set(host="127.0.0.1", port=proxy.port, password=database_password or direct.password)
        proxied = proxied.render_as_string(hide_password=False)
        env = service_env(proxied, artifacts, redis.url, RELOAD_INTERVAL_S=RELOAD_INTERVAL_S, DB_TIMEOUT_S=2,
                          REDIS_TIMEOUT_S=0.25, **settings)
        server = ServerProcess.service(env, workdir / f"service-{uuid.uuid4().hex[:6]}.log")
        server.args[server.args.index("--log-level") + 1] = log_level
        stack.enter_context(server)
        yield Rig(server, proxy, redis, database_url, artifacts)


def _counter(base_url: str, prefix: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def _served_version(base_url: str) -> str | None:
    return httpx.get(f"{base_url}/models", timeout=5).json()["version"]


def _wait_ready(base_url: str, timeout_s: float = 30) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise BenchError(f"the service did not become ready again within {timeout_s:.0f}s")


# ---- Redis ------------------------------------------------------------------------------------
def redis_outage(rig: Rig, seconds: float = 20, concurrency: int = 8) -> dict:
    """Reads (cached and not) and writes while Redis is killed at 30% of the run and restarted at 60%."""
    run = uuid.uuid4().hex[:6]
    users = [f"r{run}-{n}" for n in range(32)]
    # every user gets a history first, so recommendations are folded in and cached
    seed = [{"user_id": u, "item_id": str(1 + (n * 13) % 400), "rating": 5} for n, u in enumerate(users)]
    httpx.post(f"{rig.server.base_url}/interactions", json=seed, headers=AUTH, timeout=10).raise_for_status()
    started_ts = int(time.time())

    def make(i: int) -> Request:
        user = users[i % len(users)]
        kind = i % 4
        if kind == 0:
            return Request("POST", "/interactions",
                           [{"user_id": user, "item_id": str(1 + i % 500), "rating": 4, "timestamp": started_ts + i}], AUTH)
        if kind == 1:
            return Request("POST", f"/users/{user}/recommendations", {"k": 10, "offset": i % 50})  # mostly misses
        return Request("POST", f"/users/{user}/recommendations", {"k": 10})  # hits while Redis is up

    errors_before = _counter(rig.server.base_url, "aerec_cache_errors_total")
    schedule = Schedule([(0.3 * seconds, "redis killed", rig.redis.kill),
                         (0.6 * seconds, "redis restarted", rig.redis.start)])
    schedule.start()
    result = run_load(rig.server.base_url, make, scenario="redis outage", concurrency=concurrency, seconds=seconds,
                      warmup_s=0)
    schedule.join()
    ready_after = _wait_ready(rig.server.base_url)
    cache_errors = _counter(rig.server.base_url, "aerec_cache_errors_total") - errors_before
    passed = result.failed == 0 and not schedule.errors and len(schedule.done) == 2
    detail = (f"{result.requests:,} requests, {result.failed} failed, {cache_errors:.0f} cache errors served uncached, "
              f"faults at {schedule.done}{' ' + str(schedule.errors) if schedule.errors else ''}")
    return {"fault": "redis killed and restarted", "passed": passed, "detail": detail, "load": result.summary(),
            "cache_errors": cache_errors, "ready_again_after_s": ready_after, "steps": schedule.done}


# ---- PostgreSQL -------------------------------------------------------------------------------
def postgres_outage(rig: Rig, seconds: float = 20, concurrency: int = 8) -> dict:
    """Writes (one new interaction each) and reads while the database is cut at 30% and restored at 60%."""
    run = uuid.uuid4().hex[:6]
    base_ts = int(time.time())
    acked: dict[tuple[str, str, int], float] = {}
    refused: dict[tuple[str, str, int], float] = {}
    unexpected: list[str] = []
    reads = {"200": 0, "503": 0}

    def make(i: int) -> Request:
        if i % 4 == 3:
            return Request("POST", f"/users/p{run}-{i % 16}/recommendations", {"k": 5})
        row = {"user_id": f"p{run}-{i % 16}", "item_id": str(1 + i % 300), "rating": 3, "timestamp": base_ts + i}
        return Request("POST", "/interactions", [row], AUTH)

    def on_response(req: Request, status: int | None, body: bytes) -> None:
        now = time.perf_counter()
        if req.path != "/interactions":
            if status in (200, 503):
                reads[str(status)] += 1
            else:
                unexpected.append(f"read -> {status}: {body[:120]!r}")
            return
        row = req.json[0]
        key = (row["user_id"], row["item_id"], row["timestamp"])
        if status == 201:
            acked[key] = now
        elif status == 503:
            refused[key] = now
        else:
            unexpected.append(f"write -> {status}: {body[:120]!r}")

    marks: dict[str, float] = {}

    def cut() -> None:
        rig.proxy.cut()
        marks["cut"] = time.perf_counter()

    def restore() -> None:
        rig.proxy.restore()
        marks["restore"] = time.perf_counter()

    schedule = Schedule([(0.3 * seconds, "database cut", cut), (0.6 * seconds, "database restored", restore)])
    schedule.start()
    result = run_load(rig.server.base_url, make, scenario="postgres outage", concurrency=concurrency, seconds=seconds,
                      warmup_s=0, ok=lambda s: s in (200, 201, 503), on_response=on_response)
    schedule.join()
    ready_after = _wait_ready(rig.server.base_url)
    stored = _stored_rows(rig.database_url, f"p{run}-")
    lost = [k for k in acked if k not in stored]
    refused_but_stored = sum(1 for k in refused if k in stored)  # the commit landed, the answer did not
    recovered = [t for t in acked.values() if t > marks.get("restore", float("inf"))]
    recovery_s = min(recovered) - marks["restore"] if recovered else None
    passed = (not lost and not unexpected and result.failed == 0 and len(refused) > 0 and recovery_s is not None
              and not schedule.errors)
    detail = (f"{len(acked):,} writes acknowledged, {len(lost)} of them lost; {len(refused):,} answered 503 "
              f"({refused_but_stored} of those stored anyway); reads {reads['200']:,} ok / {reads['503']:,} 503; "
              f"{result.failed} failed otherwise; first acknowledged write "
              f"{'%.2fs' % recovery_s if recovery_s is not None else 'never'} after the database came back")
    return {"fault": "postgres cut and restored", "passed": passed, "detail": detail, "load": result.summary(),
            "acknowledged": len(acked), "lost": len(lost), "answered_503": len(refused),
            "refused_but_stored": refused_but_stored, "reads": reads, "unexpected": unexpected[:5],
            "recovery_seconds": recovery_s, "ready_again_after_s": ready_after, "steps": schedule.done}


def _stored_rows(database_url: str, user_prefix: str) -> set[tuple[str, str, int]]:
    """(user, item, timestamp) of every stored interaction of this run's users, read directly (no proxy)."""
    from sqlalchemy import select

    from service.db.session import make_engine
    from service.db.tables import Interaction, Item, User

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(User.external_id, Item.external_id, Interaction.timestamp)
                .join(User, User.id == Interaction.user_id).join(Item, Item.id == Interaction.item_id)
                .where(User.external_id.startswith(user_prefix))
            ).all()
    finally:
        engine.dispose()
    return {(u, i, int(t)) for u, i, t in rows}


# ---- model versions ---------------------------------------------------------------------------
def _copy_version(root: Path, good: str) -> tuple[str, Path]:
    from trainer.artifacts import new_version_name

    name = new_version_name(root)
    folder = root / name
    shutil.copytree(root / good, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = name
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return name, folder


def _point_latest(root: Path, text: str) -> None:
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.write_text(text)
    tmp.replace(root / "LATEST")  # atomic, as the trainer does


def _nan_weights(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    first = next(k for k, v in state.items() if v.is_floating_point() and v.numel())
    state[first].view(-1)[0] = float("nan")
    save_file(state, str(path))


DAMAGES = ("half-written-weights", "truncated-manifest", "nan-weights", "missing-folder", "garbage-latest")


def plant(root: Path, good: str, damage: str) -> str | None:
    """Publish a broken version (or a broken pointer) named by ``LATEST``; returns the version name it names."""
    if damage == "garbage-latest":
        _point_latest(root, "not-a-version\x00")
        return None
    if damage == "missing-folder":
        from trainer.artifacts import new_version_name

        name = new_version_name(root)
        _point_latest(root, name + "\n")
        return name
    name, folder = _copy_version(root, good)
    weights = next(folder.glob("*/weights.safetensors"))
    if damage == "half-written-weights":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])  # a copy interrupted half-way
    elif damage == "truncated-manifest":
        text = (folder / "manifest.json").read_text()
        (folder / "manifest.json").write_text(text[: len(text) // 2])
    elif damage == "nan-weights":
        _nan_weights(weights)
    else:
        raise ValueError(damage)
    _point_latest(root, name + "\n")
    return name


def _wait_for(predicate, timeout_s: float = 15.0) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _reads_while(base: str, steps: Callable[[], None], versions_seen: dict[str, int], *, scenario: str,
                 concurrency: int, limit_s: float) -> tuple[LoadResult, list[str]]:
    """Recommendation reads from ``concurrency`` clients until ``steps`` (in a thread) ends, ``limit_s`` at most;
    ``versions_seen`` counts the answers of each served version as they come. Returns the load and what
    ``steps`` raised (a step that could not run is reported in the verdict)."""
    errors: list[str] = []
    finished = threading.Event()

    def make(i: int) -> Request:
        return Request("POST", f"/users/{1 + i % 900}/recommendations", {"k": 10, "offset": i % 40})

    def on_response(req: Request, status: int | None, body: bytes) -> None:
        if status == 200:
            version = json.loads(body)["model_version"]
            versions_seen[version] = versions_seen.get(version, 0) + 1

    def run_steps() -> None:
        try:
            steps()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            finished.set()

    thread = threading.Thread(target=run_steps, name=scenario, daemon=True)
    thread.start()
    result = run_load(base, make, scenario=scenario, concurrency=concurrency, seconds=limit_s, warmup_s=0,
                      on_response=on_response, stop_when=finished.is_set)
    thread.join()
    return result, errors


def artifact_faults(rig: Rig, seconds: float = 20, concurrency: int = 8, damages=DAMAGES) -> dict:
    """Under load, one after the other: each damage planted, its refusal awaited and checked, undone; then a
    good version published and its swap awaited. The load runs ``seconds`` at least, and until the steps end."""
    root = rig.artifacts
    base = rig.server.base_url
    good = _served_version(base)
    versions_seen: dict[str, int] = {}
    checks: list[dict] = []
    swap: dict = {}
    pause = seconds / (len(damages) + 2)

    def steps() -> None:
        for damage in damages:
            time.sleep(pause)
            refused_before = _counter(base, "aerec_model_versions_refused_total")
            name = plant(root, good, damage)
            noticed = _wait_for(lambda: _counter(base, "aerec_model_versions_refused_total") > refused_before)
            served = httpx.get(f"{base}/models", timeout=5).json()
            listed = name is None or name in served["refused"]
            checks.append({"damage": damage, "version": name, "served": served["version"], "refused": noticed and listed,
                           "ok": noticed and listed and served["version"] == good})
            _point_latest(root, good + "\n")  # undo: the operator points LATEST back
        time.sleep(pause)
        name, _ = _copy_version(root, good)
        _point_latest(root, name + "\n")
        swap.update(version=name, seen=_wait_for(lambda: name in versions_seen))
        time.sleep(pause)  # keep serving the new version under load for a while

    result, errors = _reads_while(base, steps, versions_seen, scenario="broken versions + hot swap",
                                  concurrency=concurrency, limit_s=max(seconds, 120))
    broken_served = [c["version"] for c in checks if c["version"] in versions_seen]
    passed = (result.failed == 0 and len(checks) == len(damages) and all(c["ok"] for c in checks)
              and swap.get("seen", False) and not broken_served and not errors)
    detail = (f"{result.requests:,} requests, {result.failed} failed; refused with the old version still serving: "
              f"{sum(c['ok'] for c in checks)}/{len(damages)} ({', '.join(damages)}); hot swap to the new version "
              f"{'seen' if swap.get('seen') else 'NOT seen'} in {versions_seen.get(swap.get('version'), 0):,} answers"
              f"{'; ' + '; '.join(errors) if errors else ''}")
    return {"fault": "broken versions, then a hot swap", "passed": passed, "detail": detail, "load": result.summary(),
            "checks": checks, "versions_seen": versions_seen, "swap": swap.get("version")}


# ---- poisoned ratings -------------------------------------------------------------------------
POISON = (1000, -3, "5", True)  # off the 1-5 scale, below it, a string, a boolean


def _store_directly(database_url: str, user: str, item: str, rating: float) -> None:
    """One interaction written past the API, as a script or a bad migration could."""
    from service import crud
    from service.db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            crud.store_interactions(session, [user], [item], [rating], [int(time.time())])
    finally:
        engine.dispose()


def poisoning(rig: Rig, seconds: float = 20, concurrency: int = 8) -> dict:
    """Under read load: each poisoned rating posted to the API, then two written straight into the database and
    one scheduled training run on it (``trainer schedule --from-db --run-now --max-runs 1``)."""
    from trainer.artifacts import latest_version

    base = rig.server.base_url
    good = _served_version(base)
    user = f"m{uuid.uuid4().hex[:6]}"
    refusals: list[dict] = []
    trainer: dict = {}
    versions_seen: dict[str, int] = {}

    def steps() -> None:
        time.sleep(seconds / 4)
        for rating in POISON:
            answer = httpx.post(f"{base}/interactions", json=[{"user_id": user, "item_id": "50", "rating": rating}],
                                headers=AUTH, timeout=10)
            refusals.append({"rating": rating, "status": answer.status_code,
                             "message": answer.json().get("error", {}).get("message", answer.text[:200])})
        _store_directly(rig.database_url, user, "50", 1000.0)  # stored first: the example the trainer names
        _store_directly(rig.database_url, user, "172", -3.0)
        done = subprocess.run(
            [PYTHON, "-m", "trainer", "schedule", "--from-db", "--database-url", rig.database_url, "--every", "1h",
             "--run-now", "--max-runs", "1", "--models", "ease", "--device", "cpu", "--artifacts-dir", str(rig.artifacts)],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        trainer.update(exit=done.returncode, failed=next(
            (line.split(": ", 1)[1] for line in done.stderr.splitlines() if "run 1 failed" in line), None))
        time.sleep(seconds / 4)  # the published version goes on serving after the failed run

    result, errors = _reads_while(base, steps, versions_seen, scenario="poisoned ratings", concurrency=concurrency,
                                  limit_s=max(seconds, 600))
    refused = [r for r in refusals if r["status"] == 422 and "one of 1, 2, 3, 4, 5" in r["message"]]
    failed_line = trainer.get("failed") or ""
    trainer_refused = trainer.get("exit") == 0 and "2 ratings are off the rating scale 1:5:1" in failed_line
    kept = latest_version(rig.artifacts) == good == _served_version(base)
    passed = (result.failed == 0 and len(refused) == len(POISON) and trainer_refused and kept
              and set(versions_seen) == {good} and not errors)
    detail = (f"{result.requests:,} requests, {result.failed} failed; API refused {len(refused)}/{len(POISON)} "
              f"poisoned ratings naming the allowed values; trainer run on the poisoned database: "
              f"{'refused' if trainer_refused else 'NOT refused'} ({failed_line[:160] or trainer}); "
              f"version {good} {'still' if kept else 'NO LONGER'} published and served"
              f"{'; ' + '; '.join(errors) if errors else ''}")
    return {"fault": "poisoned ratings", "passed": passed, "detail": detail, "load": result.summary(),
            "refusals": refusals, "trainer": trainer, "versions_seen": versions_seen}


# ---- the bench ------------------------------------------------------------------------------
SCENARIOS = {"redis": redis_outage, "postgres": postgres_outage, "artifacts": artifact_faults, "poisoning": poisoning}


def plot(results: list[dict]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = [r["fault"] for r in results]
    ok = [r["load"]["requests"] - r["load"]["failed"] for r in results]
    ax.barh(names, ok, color=["tab:green" if r["passed"] else "tab:red" for r in results])
    for y, r in enumerate(results):
        ax.text(ok[y], y, f"  {'PASS' if r['passed'] else 'FAIL'} · {r['load']['failed']} failed", va="center")
    ax.set_xlabel("requests answered as expected")
    ax.set_title("faults under load", fontsize="small")
    save_figure("faults", fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration of each fault run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--faults", default=",".join(SCENARIOS))
    parser.add_argument("--artifacts-dir", type=registry_dir, default=None, help="a registry to copy instead of training one")
    args = parser.parse_args(argv)
    chosen = [f for f in args.faults.split(",") if f]
    if set(chosen) - set(SCENARIOS):
        parser.error(f"unknown fault(s); choose from {', '.join(SCENARIOS)}")
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="aerec-faults-") as tmp:
            workdir = Path(tmp)
            artifacts = workdir / "artifacts"
            if args.artifacts_dir:
                shutil.copytree(args.artifacts_dir, artifacts)
            else:
                build_registry(artifacts)
            for name in chosen:
                print(f"\n== {name}: {args.seconds:g}s at {args.concurrency} clients", flush=True)
                with fault_rig(workdir, artifacts) as rig:
                    results.append(SCENARIOS[name](rig, args.seconds, args.concurrency))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print_table([{"fault": r["fault"], **r["load"]} for r in results], [
        ("fault", "fault", ""), ("requests", "requests", ",d"), ("rps", "req/s", ",.0f"), ("p99_ms", "p99 ms", ".1f"),
        ("max_ms", "max ms", ".0f"), ("failed", "failed", "d"),
    ], title=f"faults under load · {args.concurrency} clients · {args.seconds:g}s each")
    print()
    verdicts = [verdict(r["fault"], r["passed"], r["detail"]) for r in results]
    write_json("faults", {"bench": "faults", "seconds": args.seconds, "concurrency": args.concurrency,
                          "machine": machine_info(), "results": results, "targets": verdicts})
    plot(results)
    return 0 if all(v["passed"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
