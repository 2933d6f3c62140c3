"""`python -m service`: migrate, seed (fast, idempotent), one-line errors with exit 2, and serving."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from _service_support import API_KEY, free_port
from service.cli import main
from storage import crud
from storage.session import make_engine, make_session_factory


@pytest.fixture
def env(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray .env from the repository
    from trainer.settings import get_settings

    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        result = crud.counts(session)
    engine.dispose()
    return result


def test_migrate_creates_the_schema(env, capsys):
    assert main(["migrate"]) == 0
    assert {"users", "items", "interactions", "alembic_version"} <= set(inspect(create_engine(env)).get_table_names())
    assert main(["migrate"]) == 0  # idempotent
    assert "head" in capsys.readouterr().out


def test_seed_ml100k_is_fast_and_idempotent(env, ml100k_dir, capsys):
    started = time.perf_counter()
    assert main(["seed", "--dataset", "ml-100k", "--source", str(ml100k_dir)]) == 0
    elapsed = time.perf_counter() - started
    assert counts(env) == {"users": 943, "items": 1682, "interactions": 100_000}
    assert elapsed < 30, f"seeding 100k interactions took {elapsed:.1f}s"
    assert main(["seed", "--dataset", "ml-100k", "--source", str(ml100k_dir)]) == 0
    assert counts(env)["interactions"] == 100_000
    out = capsys.readouterr().out
    assert "100,000 new interactions" in out and "0 new interactions (100,000 already there)" in out
    engine = make_engine(env)
    with make_session_factory(engine)() as session:
        assert crud.item_titles(session, ["50"]) == {"50": "Star Wars (1977)"}
        # the planner has statistics of the seeded tables (ANALYZE after the bulk load)
        assert {"users", "items", "interactions"} <= set(session.scalars(text("SELECT tbl FROM sqlite_stat1")))
    engine.dispose()


def test_seed_a_users_file(env, tmp_path):
    log = tmp_path / "clicks.csv"
    log.write_text("user,item,timestamp\nalice,book-1,100\nalice,book-2,200\nbob,book-1,300\n")
    assert main(["seed", "--file", str(log)]) == 0
    assert counts(env) == {"users": 2, "items": 2, "interactions": 3}
    assert gc.isenabled()  # paused for the bulk load only


@pytest.mark.parametrize("argv, needle", [
    (["seed"], "exactly one of --dataset"),
    (["seed", "--dataset", "ml-100k", "--file", "x.csv"], "exactly one of --dataset"),
    (["seed", "--file", "/no/such/file.csv"], "no such file"),
    (["seed", "--dataset", "ml-7"], "unknown dataset"),
])
def test_user_mistakes_are_one_line_and_exit_2(env, capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1


def test_unreachable_database_and_bad_settings_exit_2(env, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    assert main(["migrate"]) == 2
    assert "cannot migrate" in capsys.readouterr().err
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("API_KEY", "changethis")
    assert main(["migrate"]) == 2
    assert "API_KEY" in capsys.readouterr().err


def test_python_m_service_serves(env, registry, tmp_path):
    port = free_port()
    environment = {**os.environ, "ARTIFACTS_DIR": str(registry), "API_KEY": API_KEY, "DATABASE_URL": env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"],
        env=environment, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.3)
        # migrated at start: a write and a read work on the fresh database
        stored = httpx.post(f"{base}/interactions", json=[{"user_id": "cli-user", "item_id": 50, "rating": 5}],
                            headers={"X-API-Key": API_KEY})
        assert stored.status_code == 201, stored.text
        body = httpx.post(f"{base}/users/cli-user/recommendations", json={"k": 3}).json()
        assert body["source"] == "fold-in" and len(body["items"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)
