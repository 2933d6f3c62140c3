"""Service fixtures: one trained artifact version, and apps on both storage/cache backends.

``backend`` is parametrized: SQLite + the in-process cache, and PostgreSQL + Redis (from
``TEST_DATABASE_URL`` / ``TEST_REDIS_URL``). PostgreSQL tests run in a schema of their
own and Redis keys under a namespace of their own, both removed afterwards, so tests
never touch other data on the shared servers. Outside CI an unreachable server skips
those tests; under ``CI=true`` it fails them.
"""

from __future__ import annotations

import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from _service_support import API_KEY, PG_URL, REDIS_URL, Corpus, make_corpus, publish_version, train_models, unavailable
from service.core.config import Settings
from storage.migrate import upgrade_to_head
from storage.session import make_engine

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)



@dataclass
class Backend:
    name: str
    database_url: str
    redis_url: str | None
    namespace: str

    def settings(self, artifacts_dir: Path, **overrides) -> Settings:
        values = dict(
            ENVIRONMENT="development", DATABASE_URL=self.database_url, REDIS_URL=self.redis_url,
            CACHE_NAMESPACE=self.namespace, ARTIFACTS_DIR=artifacts_dir, API_KEY=API_KEY,
            RELOAD_INTERVAL_S=0.2, DB_TIMEOUT_S=3,
        )
        values.update(overrides)
        return Settings(**values)


@pytest.fixture(scope="session")
def corpus(ml100k_dir) -> Corpus:
    from interactions.movielens import read_dataset

    return make_corpus(read_dataset("ml-100k", ml100k_dir))


@pytest.fixture(scope="session")
def fits(corpus):
    return train_models(corpus)


@pytest.fixture(scope="session")
def trained(fits):
    return {name: fit.model for name, fit in fits.items()}


@pytest.fixture(scope="session")
def registry(tmp_path_factory, fits, corpus) -> Path:
    """An artifact registry with one published version (treat as read-only; copy it to change it)."""
    root = tmp_path_factory.mktemp("registry")
    publish_version(root, fits, corpus)  # with their logs: the recorded curves and times
    return root


def _postgres_schema_url(schema: str) -> str:
    url = make_url(PG_URL)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@contextmanager
def fresh_backend(kind: str, folder: Path):
    """An empty database (SQLite file, or a PostgreSQL schema of its own) and cache namespace, removed after."""
    if kind == "sqlite":
        yield Backend("sqlite", f"sqlite:///{folder / f'aerec-{uuid.uuid4().hex[:6]}.db'}", None, f"t{uuid.uuid4().hex[:8]}")
        return
    import redis

    schema = f"svc_test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(PG_URL, timeout_s=3)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))  # a generated identifier, not user input
    except Exception as exc:  # noqa: BLE001 - any connection failure means the server is not usable
        admin.dispose()
        unavailable(f"PostgreSQL at {make_url(PG_URL).render_as_string()}", exc)
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        unavailable(f"Redis at {REDIS_URL}", exc)
    namespace = f"aerec-test-{uuid.uuid4().hex[:8]}"
    try:
        yield Backend("postgres", _postgres_schema_url(schema), REDIS_URL, namespace)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        keys = list(client.scan_iter(f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


BACKENDS = dict(params=["sqlite", "postgres"], ids=["sqlite-memory", "postgres-redis"])


@pytest.fixture(scope="session", **BACKENDS)
def backend(request, tmp_path_factory):
    with fresh_backend(request.param, tmp_path_factory.mktemp("db")) as fresh:
        yield fresh


@pytest.fixture(**BACKENDS)
def empty_client(request, tmp_path, registry):
    """A running app on a database of its own, empty but migrated (for tests that write at random)."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    with fresh_backend(request.param, tmp_path) as fresh:
        engine = make_engine(fresh.database_url)
        upgrade_to_head(engine)
        engine.dispose()
        app = create_app(fresh.settings(registry))
        with TestClient(app, raise_server_exceptions=False) as test_client:
            test_client.backend = fresh
            yield test_client


@pytest.fixture(**BACKENDS)
def empty_backend(request, tmp_path) -> Backend:
    """A database of its own (not migrated) and cache namespace on each backend, for tests that build the app."""
    with fresh_backend(request.param, tmp_path) as fresh:
        yield fresh


def seed_database(database_url: str, corpus: Corpus) -> None:
    from storage import crud
    from storage.session import make_session_factory

    engine = make_engine(database_url)
    try:
        upgrade_to_head(engine)
        with make_session_factory(engine)() as session:
            rows = corpus.rows
            titles = {i: {"title": corpus.titles[i]} for i in set(rows["item_id"]) if i in corpus.titles}
            crud.store_interactions(session, rows["user_id"], rows["item_id"], rows["rating"], rows["timestamp"], titles)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def seeded_backend(backend, corpus) -> Backend:
    """The backend's database at head, holding the training users' histories."""
    seed_database(backend.database_url, corpus)
    return backend


@pytest.fixture(scope="module", **BACKENDS)
def own_seeded_backend(request, tmp_path_factory, corpus) -> Backend:
    """A database of the module's own on each backend, holding the training users' histories and nothing
    else (a module that counts the stored rows; the session's ``seeded_backend`` takes other tests' writes)."""
    with fresh_backend(request.param, tmp_path_factory.mktemp("db")) as fresh:
        seed_database(fresh.database_url, corpus)
        yield fresh


@pytest.fixture(scope="session")
def client(seeded_backend, registry):
    """A running app (lifespan entered) on the backend, serving the registry's version."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    app = create_app(seeded_backend.settings(registry))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.backend = seeded_backend
        yield test_client


@pytest.fixture(autouse=True)
def client_knows_the_experiments(request):
    """A test on the session's app starts with it knowing the database's experiments: an experiment another app
    on the same database stopped reaches its watcher only within EXPERIMENTS_REFRESH_S (its answers would carry it)."""
    if "client" in request.fixturenames:
        request.getfixturevalue("client").app.state.parts.experiments.refresh(force=True)


@pytest.fixture
def auth() -> dict[str, str]:
    return {"X-API-Key": API_KEY}


@pytest.fixture
def computed_answers(monkeypatch):
    """The recommendation answers computed in a scoring slot (``serving.computed_recommendation``): a cache
    hit and a stored list answered on the event loop are not; each as the key it was looked up under."""
    from service import serving

    calls = []
    original = serving.computed_recommendation

    async def counted(session, parts, lookup, request, entry):
        calls.append(entry.key)
        return await original(session, parts, lookup, request, entry)

    monkeypatch.setattr(serving, "computed_recommendation", counted)
    return calls


@pytest.fixture
def body_reads(monkeypatch):
    """The paths of the requests whose body the app read (Starlette's ``Request.body``)."""
    from starlette.requests import Request

    reads = []
    original = Request.body

    async def counted(self):
        reads.append(self.url.path)
        return await original(self)

    monkeypatch.setattr(Request, "body", counted)
    return reads
