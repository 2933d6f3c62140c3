"""Where the test suite finds PostgreSQL and Redis, and what it does when one is missing.

Shared by the service and deployment tests. Under ``CI=true`` a test that needs an
unreachable server fails; elsewhere it is skipped.
"""

from __future__ import annotations

import os
import socket

import pytest

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI") == "true"


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is unreachable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if IN_CI:
        pytest.fail(message + " (CI=true: these tests need it)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
