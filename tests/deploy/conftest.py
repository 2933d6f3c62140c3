"""Fixtures for the deployment tests: the interpreter, a cached ml-100k, Redis and a fresh PostgreSQL database."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from _deploy_support import PG_URL, REDIS_URL, base_env, run, unavailable


@pytest.fixture(scope="session")
def python() -> str:
    """The interpreter running the tests: /work/venv locally, .venv in CI; it stands for `python`."""
    return sys.executable


@pytest.fixture(scope="session")
def ml100k_cache(tmp_path_factory, ml100k_dir, python) -> Path:
    """A DATA_DIR holding ml-100k, cached by `python -m trainer data ml-100k --source ...` (no network later)."""
    data_dir = tmp_path_factory.mktemp("data")
    run([python, "-m", "trainer", "data", "ml-100k", "--source", str(ml100k_dir), "--data-dir", str(data_dir), "-q"],
        base_env(DATA_DIR=str(data_dir)), timeout=180)
    return data_dir


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means the server is not usable
        unavailable(f"Redis at {REDIS_URL}", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def cache_namespace(redis_url) -> Iterator[str]:
    """A Redis key prefix of this test's own, deleted afterwards (the server is shared)."""
    import redis

    namespace = f"aerec-deploy-{uuid.uuid4().hex[:8]}"
    yield namespace
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    keys = list(client.scan_iter(f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own on TEST_DATABASE_URL's server, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"aerec_compose_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # a generated identifier, not user input
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        unavailable(f"PostgreSQL at {make_url(PG_URL).render_as_string()}", exc)
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
