"""Failures of what the service depends on: the database and Redis.

Database unreachable: 503 ``database_unavailable``, nothing half-written. Redis stopped in
the middle of a run (a redis-server this test starts on a port of its own, or a relay to the
shared one that it shuts): requests keep succeeding, uncached, and the errors are counted.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import time
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import NullPool

from _service_support import API_KEY, PG_URL, REDIS_URL, RedisGate, error_body, free_port, new_user, unavailable
from service.core.config import Settings
from service.main import create_app
from storage import crud
from storage.migrate import upgrade_to_head
from storage.session import make_engine

KEY = {"X-API-Key": API_KEY}


@pytest.mark.parametrize("database_url", [
    f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere",
    "sqlite:////nonexistent-folder/for/aerec.db",
], ids=["postgres-refused", "sqlite-unopenable"])
def test_unreachable_database_answers_503(tmp_path, registry, database_url):
    settings = Settings(DATABASE_URL=database_url, ARTIFACTS_DIR=registry, API_KEY=API_KEY, DB_TIMEOUT_S=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        calls = [
            client.post("/users/1/recommendations", json={"k": 3}),
            client.post("/ratings", json={"user_id": 1, "item_ids": [1]}),
            client.post("/interactions", json=[{"user_id": 1, "item_id": 1}], headers=KEY),
            client.get("/items/50/similar"),
        ]
        for response in calls:
            assert response.status_code == 503, response.text
            error = error_body(response)
            assert error["code"] == "database_unavailable" and "database" in error["message"]
            assert response.headers["retry-after"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        checks = error_body(ready)["details"]["checks"]
        assert not checks["database"]["ok"] and checks["model"]["ok"]
        assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_database_dying_mid_batch_leaves_nothing_half_written(client):
    """The connection fails at the interactions INSERT, after the batch's new users and items went in."""
    engine = client.app.state.parts.engine
    backend = engine.dialect.name

    def die(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO INTERACTIONS"):
            if backend == "postgresql":
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # the server drops us, for real
            raise sqlite3.OperationalError("disk I/O error")

    def counts():
        with client.app.state.parts.session_factory() as session:
            return crud.counts(session)

    before = counts()
    user, item = new_user(), f"item-{uuid.uuid4().hex[:8]}"
    batch = [{"user_id": user, "item_id": item, "rating": 4}, {"user_id": user, "item_id": "50", "rating": 5}]
    event.listen(engine, "before_cursor_execute", die)
    try:
        response = client.post("/interactions", json=batch, headers=KEY)
    finally:
        event.remove(engine, "before_cursor_execute", die)
    assert response.status_code == 503, response.text
    assert error_body(response)["code"] == "database_unavailable"
    assert counts() == before  # the new user and item were rolled back with the batch
    again = client.post("/interactions", json=batch, headers=KEY)  # the pool recovers
    assert again.status_code == 201 and again.json()["new_users"] == 1 and again.json()["inserted"] == 2


def _drop_pooled_connections(engine, count: int = 3) -> list[int]:
    """Fill the pool with ``count`` connections, then have the server end them, as a restart would.
    Returns their backend pids."""
    connections = [engine.connect() for _ in range(count)]
    pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() for c in connections]
    for connection in connections:
        connection.close()  # back to the pool, still open as far as the pool knows
    admin = create_engine(PG_URL, poolclass=NullPool)
    try:
        with admin.connect() as connection:
            for pid in pids:
                assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    finally:
        admin.dispose()
    return pids


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # SQLite has no server to drop a connection
def test_connections_a_database_restart_dropped_cost_no_failed_request(client, auth, caplog):
    """Pooled connections are not pinged before use: the first statement on a dropped one fails,
    and the request's work runs again on a new connection instead of answering 503."""
    engine = client.app.state.parts.engine
    assert engine.dialect.name == "postgresql"
    user = new_user()
    calls = {
        # a user never asked for: no list or history of theirs is cached, so the history is read
        "recommendations": lambda: client.post(f"/users/{new_user()}/recommendations", json={"k": 3}),
        "ratings": lambda: client.post("/ratings", json={"user_id": new_user(), "item_ids": ["50", "172"]}),
        "interactions": lambda: client.post("/interactions", json=[{"user_id": user, "item_id": "50", "rating": 5}],
                                            headers=auth),
        "readyz": lambda: client.get("/readyz"),
    }
    for name, call in calls.items():
        pids = _drop_pooled_connections(engine)
        with caplog.at_level(logging.WARNING, logger="storage"):
            caplog.clear()
            response = call()
        assert response.status_code in (200, 201), (name, response.text)
        assert any("dropped" in r.getMessage() for r in caplog.records), f"{name} never met a dropped connection"
        assert client.app.state.parts.recorder.flush()  # its impression or attribution written: the next drop is the next call's
        with engine.connect() as connection:  # the pool now hands out new connections
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() not in pids
    with engine.connect() as connection:
        assert list(crud.user_history(connection, user).item_ids) == ["50"]  # written once


class RedisServer:
    """A redis-server of our own on a free port, started and killed by this test."""

    def __init__(self, binary: str) -> None:
        self.binary, self.port, self.proc = binary, free_port(), None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_outage():
    """A Redis the test may stop and restart: a dedicated redis-server when one is installed, else a
    relay to the shared server (TEST_REDIS_URL) that the test shuts. The shared server is never stopped."""
    binary = shutil.which("redis-server")
    if binary:
        server = RedisServer(binary)
    else:
        upstream = redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            unavailable(f"Redis at {REDIS_URL}", exc)
        server = RedisGate((upstream.get("host", "127.0.0.1"), upstream.get("port", 6379)))
    server.start()
    probe = redis.Redis(port=server.port, socket_connect_timeout=0.2)
    for _ in range(100):
        try:
            probe.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        server.stop()
        pytest.fail("the test's Redis did not start")
    yield server
    server.stop()


def _counter(client, series: str) -> float:
    """Sum of the samples whose line starts with ``series`` (a name, optionally with labels)."""
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(series))


def test_redis_stopped_mid_run_requests_keep_succeeding(tmp_path, registry, redis_outage):
    database_url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade_to_head(make_engine(database_url))
    settings = Settings(DATABASE_URL=database_url, REDIS_URL=f"redis://127.0.0.1:{redis_outage.port}/0",
                        ARTIFACTS_DIR=registry, API_KEY=API_KEY, REDIS_TIMEOUT_S=0.2,
                        CACHE_NAMESPACE=f"aerec-test-{uuid.uuid4().hex[:8]}", CACHE_TTL_S=30)  # keys expire soon
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        user = new_user()
        client.post("/interactions", json=[{"user_id": user, "item_id": "50", "rating": 5}], headers=KEY)
        first = client.post(f"/users/{user}/recommendations", json={"k": 5}).json()
        client.post(f"/users/{user}/recommendations", json={"k": 5})
        assert _counter(client, 'aerec_cache_hits_total{kind="recommendations"}') >= 1

        redis_outage.stop()
        started = time.perf_counter()
        for _ in range(20):
            response = client.post(f"/users/{user}/recommendations", json={"k": 5})
            assert response.status_code == 200 and response.json()["items"] == first["items"]
        assert time.perf_counter() - started < 10  # failing fast, not waiting on Redis each time
        assert client.get("/items/50/similar").status_code == 200
        more = client.post("/interactions", json=[{"user_id": user, "item_id": "172", "rating": 5}], headers=KEY)
        # stored, but the users' lists could not be invalidated: said so, not acknowledged as a plain success
        assert more.status_code == 503 and error_body(more)["code"] == "cache_not_invalidated"
        assert error_body(more)["details"]["stored"]["inserted"] == 1
        assert _counter(client, "aerec_cache_errors_total{") >= 1
        assert _counter(client, 'aerec_cache_invalidation_failures_total{outcome="gave_up"}') == 1
        ready = client.get("/readyz")
        assert ready.status_code == 503 and not error_body(ready)["details"]["checks"]["cache"]["ok"]

        redis_outage.start()  # Redis comes back: the cache is used again
        wait = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < wait, "readiness did not recover with Redis"
            time.sleep(0.1)
        time.sleep(2.1)  # past the backoff
        client.post(f"/users/{user}/recommendations", json={"k": 6})
        hits = _counter(client, 'aerec_cache_hits_total{kind="recommendations"}')
        client.post(f"/users/{user}/recommendations", json={"k": 6})
        assert _counter(client, 'aerec_cache_hits_total{kind="recommendations"}') == hits + 1
