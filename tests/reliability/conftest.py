"""Fixtures of the reliability suite: a published model version and a live service under fault injection.

These tests drive the real processes (``python -m service`` behind uvicorn, over HTTP on
loopback) with the same fault scenarios as ``bench/faults.py``, shorter. PostgreSQL is the
shared server (``TEST_DATABASE_URL``; each run makes and drops a database of its own and
reaches it through a proxy it can cut); Redis is a ``redis-server`` the suite starts on a
free port. Outside CI an unavailable server skips those tests; under ``CI=true`` it fails them.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # for ``bench`` (the fault scenarios are shared with bench/faults.py)

from bench import _common  # noqa: E402

IN_CI = os.environ.get("CI") == "true"
TEST_PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message + " (CI=true: the reliability tests need it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def servers_available() -> None:
    """PostgreSQL reachable (for making a database of our own) and redis-server installed."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    # The admin connection goes to the maintenance database of the server TEST_DATABASE_URL names.
    _common.PG_ADMIN_URL = make_url(TEST_PG_URL).set(database="postgres").render_as_string(hide_password=False)
    engine = create_engine(_common.PG_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means the server is not usable
        unavailable(f"PostgreSQL at {make_url(TEST_PG_URL).render_as_string()} is unreachable: {str(exc).splitlines()[0]}")
    finally:
        engine.dispose()
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")


@pytest.fixture(scope="session")
def registry(tmp_path_factory, ml100k_dir) -> Path:
    """A registry with one version: EASE on ml-100k, published with the trainer's publisher."""
    from bench.faults import publish_ease

    root = tmp_path_factory.mktemp("registry")
    publish_ease(root, ml100k_dir)
    return root


@pytest.fixture(scope="module")
def private_registry(registry, tmp_path_factory) -> Path:
    """A copy of the registry this module's tests may break and swap."""
    root = tmp_path_factory.mktemp("private") / "registry"
    shutil.copytree(registry, root)
    return root
