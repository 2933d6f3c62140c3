"""Scoped keys: what each key opens, reads keyed outside development, the key checked before the
body is read, one media type rule for the route and the answers before the routing, and error
bodies without paths or exception texts (issue 20: findings 2 and 11, Deliver 4 and 10)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from _service_support import API_KEY, error_body

WRITE_KEY = "write-key-5b8e1d"
READ_KEY = "read-key-0c7a92"
KEYS = {"admin": API_KEY, "write": WRITE_KEY, "read": READ_KEY}


@contextmanager
def app_client(tmp_path, registry, **overrides):
    """A running app on an empty, migrated SQLite database, with these settings."""
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app
    from storage.migrate import upgrade_to_head
    from storage.session import make_engine

    settings = Settings(**{"DATABASE_URL": f"sqlite:///{tmp_path / 'access.db'}", "ARTIFACTS_DIR": registry,
                           "API_KEY": API_KEY, **overrides})
    engine = make_engine(settings.DATABASE_URL)
    upgrade_to_head(engine)
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def read(client, key: str | None):
    return client.post("/users/1/recommendations", json={"k": 3}, headers={"X-API-Key": key} if key else {})


def write(client, key: str | None):
    return client.post("/interactions", json=[{"user_id": "access-user", "item_id": "50", "rating": 5}],
                       headers={"X-API-Key": key} if key else {})


def admin(client, key: str | None):
    return client.post("/admin/reload", headers={"X-API-Key": key} if key else {})


# (key, reads, writes, admin): each key opens its own scope and the narrower ones
SCOPES = [
    ("admin", 200, 201, 200),
    ("write", 200, 201, 403),
    ("read", 200, 403, 403),
]


@pytest.fixture
def production(tmp_path, registry):
    with app_client(tmp_path, registry, ENVIRONMENT="production", WRITE_API_KEY=WRITE_KEY, READ_API_KEY=READ_KEY) as client:
        yield client


@pytest.mark.parametrize("scope", SCOPES, ids=[s[0] for s in SCOPES])
def test_each_key_opens_its_scope_and_the_narrower_ones(production, scope):
    name, reads, writes, administers = scope
    key = KEYS[name]
    assert read(production, key).status_code == reads
    assert production.get("/models", headers={"X-API-Key": key}).status_code == reads
    assert write(production, key).status_code == writes
    assert admin(production, key).status_code == administers
    for refused in [r for r, status in ((write(production, key), writes), (admin(production, key), administers)) if status == 403]:
        error = error_body(refused)
        assert error["code"] == "insufficient_scope" and error["details"]["key_scope"] == name, error


def test_reads_need_a_key_outside_development(production):
    for response in (read(production, None), production.get("/models"), production.get("/items/50/similar"),
                     production.post("/ratings", json={"user_id": 1, "item_ids": [1]})):
        assert response.status_code == 401 and error_body(response)["code"] == "missing_api_key", response.text
    wrong = read(production, READ_KEY + "x")
    assert wrong.status_code == 403 and error_body(wrong)["code"] == "invalid_api_key"
    for probe in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes stay open unless METRICS_REQUIRE_KEY
        assert production.get(probe).status_code == 200, probe


def test_api_key_alone_opens_everything_as_before(tmp_path, registry):
    with app_client(tmp_path, registry, ENVIRONMENT="production") as client:
        assert read(client, API_KEY).status_code == 200 and read(client, None).status_code == 401
        assert write(client, API_KEY).status_code == 201 and write(client, None).status_code == 401
        assert admin(client, API_KEY).status_code == 200


def test_development_keeps_reads_open_unless_told(tmp_path, registry):
    with app_client(tmp_path, registry) as client:
        assert read(client, None).status_code == 200 and write(client, None).status_code == 401
    with app_client(tmp_path, registry, READS_REQUIRE_KEY=True) as client:
        assert read(client, None).status_code == 401


def test_metrics_can_be_keyed(tmp_path, registry):
    with app_client(tmp_path, registry, METRICS_REQUIRE_KEY=True, READ_API_KEY=READ_KEY) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "nope"}).status_code == 403
        assert client.get("/metrics", headers={"X-API-Key": READ_KEY}).status_code == 200
        assert read(client, None).status_code == 200  # reads stay open in development
        security = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]["security"]
        assert security == [{"ApiKeyForMetrics": []}]


def test_an_unkeyed_write_is_refused_before_its_body_is_read(client, body_reads):
    """A body that is not even JSON, or not JSON at all, is answered 401 without a key, not 400 or 415:
    nothing of it was parsed."""
    for content, media_type in ((b"[{" + b" " * 500_000, "application/json"), (b"user=1", "text/plain")):
        response = client.post("/interactions", content=content, headers={"content-type": media_type})
        assert response.status_code == 401 and error_body(response)["code"] == "missing_api_key", response.text
        wrong = client.post("/interactions", content=content, headers={"content-type": media_type, "X-API-Key": "nope"})
        assert wrong.status_code == 403 and error_body(wrong)["code"] == "invalid_api_key", wrong.text
    assert body_reads == []
    keyed = client.post("/interactions", content=b"[{", headers={"content-type": "application/json", "X-API-Key": API_KEY})
    assert keyed.status_code == 400 and error_body(keyed)["code"] == "invalid_json"  # with the key it is read


MEDIA_TYPES = [
    # (Content-Type, body, status of the route and of a cached answer alike)
    ("application/json", b'{"k": 4}', 200),
    ("application/json; charset=utf-8", b'{"k": 4}', 200),
    ("Application/JSON", b'{"k": 4}', 200),
    ("application/vnd.aerec+json", b'{"k": 4}', 200),
    ("application/jsonfoo", b'{"k": 4}', 415),
    ("application/json-patch", b'{"k": 4}', 415),
    ("application/x/y+json", b'{"k": 4}', 415),  # not JSON to FastAPI's reading of the type (one "/" only)
    ("text/plain", b'{"k": 4}', 415),
    (None, b'{"k": 4}', 415),
    ("application/json", b"  ", 400),  # whitespace is a body: not valid JSON
]


@pytest.mark.parametrize("case", MEDIA_TYPES, ids=[f"{c[0]}-{c[2]}" for c in MEDIA_TYPES])
def test_hits_and_misses_take_the_same_media_types(client, computed_answers, case):
    media_type, body, status = case
    user = "7"
    assert client.post(f"/users/{user}/recommendations", json={"k": 4}).status_code == 200  # cached now
    calls = len(computed_answers)
    headers = {"content-type": media_type} if media_type else {}
    answer = client.post(f"/users/{user}/recommendations", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    if status == 200:
        assert len(computed_answers) == calls  # answered from the cache
    else:
        assert error_body(answer)["code"] == {415: "unsupported_media_type", 400: "invalid_json"}[status]


def test_error_bodies_carry_no_paths_or_exception_texts(tmp_path):
    """No version published: the 503s say so, and where the artifacts are and why they did not load
    stays in the log."""
    artifacts = tmp_path / "secret-artifacts-folder"
    artifacts.mkdir()
    (artifacts / "LATEST").write_text("v-broken\n")  # names a version that is not there: a load error
    with app_client(tmp_path, artifacts) as client:
        answers = [client.post("/users/1/recommendations", json={"k": 3}), client.get("/readyz"),
                   client.get("/items/1/similar"), client.post("/ratings", json={"user_id": 1, "item_ids": [1]})]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert "secret-artifacts-folder" not in answer.text and str(tmp_path) not in answer.text, answer.text
            assert "Error" not in answer.text and "v-broken" not in answer.text, answer.text  # no exception text
