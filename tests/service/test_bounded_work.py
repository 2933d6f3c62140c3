"""Bounded work per request and per client (issue 20: finding 3, Deliver 5): the caps of POST /ratings,
refused before validation and scoring, and the per-client rate limits, on the in-process counts
and on Redis's, cache hits included."""

from __future__ import annotations

import socket
import uuid
from contextlib import contextmanager

import pytest

from _service_support import API_KEY, error_body
from service import inference

AMPLIFICATION = [{"user_id": u, "item_ids": list(range(1, 1001))} for u in range(1, 181)]  # issue 20, finding 3


@pytest.fixture
def scoring_calls(monkeypatch):
    calls = []
    original = inference.predict_ratings

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "predict_ratings", counted)
    return calls


def test_the_amplification_request_is_refused_unread(client, scoring_calls, body_reads):
    """Finding 3's 886 KB body declares more bytes than any body within the caps: refused before it is read."""
    refused = client.post("/ratings", json=AMPLIFICATION)
    error = error_body(refused)
    assert refused.status_code == 413 and error["code"] == "payload_too_large", refused.text
    assert "MAX_RATING_PAIRS" in error["message"] and error["details"]["max_bytes"] < len(refused.request.content)
    assert body_reads == [] and scoring_calls == []


def test_ratings_past_the_caps_are_refused_before_validation_and_scoring(client, scoring_calls):
    settings = client.app.state.parts.settings
    pairs = client.post("/ratings", json=[{"user_id": u, "item_ids": list(range(1, 501))} for u in (1, 2, 3)])
    error = error_body(pairs)
    assert pairs.status_code == 413 and error["code"] == "too_many_pairs", pairs.text
    assert error["details"] == {"pairs": 1500, "max_pairs": settings.MAX_RATING_PAIRS} and "MAX_RATING_PAIRS" in error["message"]
    users = client.post("/ratings", json=[{"user_id": u, "item_ids": [1]} for u in range(settings.MAX_RATING_USERS + 1)])
    assert users.status_code == 413 and error_body(users)["details"]["max_users"] == settings.MAX_RATING_USERS
    # an invalid body past the cap gets the cap's 413, not validation's 422: it was never validated
    invalid = client.post("/ratings", json={"user_id": True, "item_ids": [True] * (settings.MAX_RATING_PAIRS + 1)})
    assert invalid.status_code == 413 and error_body(invalid)["code"] == "too_many_pairs"
    assert scoring_calls == []
    # at the caps: answered
    at_caps = [{"user_id": str(u), "item_ids": [str(i) for i in range(1, 11)]} for u in range(1, settings.MAX_RATING_USERS + 1)]
    answered = client.post("/ratings", json=at_caps)
    assert answered.status_code == 200 and len(answered.json()) == settings.MAX_RATING_USERS, answered.text
    assert scoring_calls == [1]
    # the length bound never refuses a body within the caps: ids of 255 characters, as long as ids go
    longest = [{"user_id": f"{u:0>255}", "item_ids": [f"{u}-{i:0>250}" for i in range(10)]} for u in range(settings.MAX_RATING_USERS)]
    assert client.post("/ratings", json=longest).status_code == 200


@contextmanager
def limited_app(backend, registry, **overrides):
    """An app on the backend whose rate-limit counts are its own (a namespace of their own)."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    namespace = f"{backend.namespace}:rl{uuid.uuid4().hex[:8]}"  # under the backend's: removed with it
    settings = backend.settings(registry, CACHE_NAMESPACE=namespace, **overrides)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_client_past_its_limit_gets_429_with_retry_after_cache_hits_included(seeded_backend, registry, computed_answers):
    with limited_app(seeded_backend, registry, RATE_LIMIT="3/minute") as client:
        past_the_list = {"k": 5, "offset": 196}  # computed once: past the stored top-200 (within it, none is)
        answers = [client.post("/users/2/recommendations", json=past_the_list) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200] and len(computed_answers) == 1  # two were cache hits
        refused = client.post("/users/2/recommendations", json=past_the_list)
        assert refused.status_code == 429, refused.text
        error = error_body(refused)
        assert error["code"] == "rate_limited" and error["details"]["limits"] == ["3 per 1 minute"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60 and error["details"]["retry_after_s"] == int(refused.headers["Retry-After"])
        assert len(computed_answers) == 1  # refused before the route
        assert client.post("/ratings", json={"user_id": 1, "item_ids": [1]}).status_code == 429  # every route
        for probe in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes are never limited
            assert all(client.get(probe).status_code == 200 for _ in range(4)), probe


def test_a_key_is_a_client_of_its_own_and_a_wrong_key_counts_against_the_address(seeded_backend, registry):
    with limited_app(seeded_backend, registry, RATE_LIMIT="2/minute", RATE_LIMIT_PER_KEY="3/minute") as client:
        keyed = {"X-API-Key": API_KEY}
        assert client.get("/models").status_code == 200
        assert client.get("/models", headers={"X-API-Key": "guess-1"}).status_code == 200  # development: reads open
        assert client.get("/models", headers={"X-API-Key": "guess-2"}).status_code == 429  # the address's third
        assert [client.get("/models", headers=keyed).status_code for _ in range(4)] == [200, 200, 200, 429]
        assert error_body(client.get("/models", headers=keyed))["details"]["client"] == "key"


def test_replicas_share_the_counts_where_redis_is_set(seeded_backend, registry):
    from fastapi.testclient import TestClient

    from service.main import create_app

    settings = seeded_backend.settings(registry, CACHE_NAMESPACE=f"{seeded_backend.namespace}:rl{uuid.uuid4().hex[:8]}",
                                       RATE_LIMIT="4/minute")
    with TestClient(create_app(settings), raise_server_exceptions=False) as first, \
            TestClient(create_app(settings), raise_server_exceptions=False) as second:
        statuses = [(first if n % 2 else second).get("/models").status_code for n in range(5)]
    # two processes: one count in Redis; in process, each its own (3 and 2 requests, both within 4)
    assert statuses == ([200, 200, 200, 200, 429] if seeded_backend.redis_url else [200] * 5)


def test_the_limits_let_requests_through_when_redis_is_down(tmp_path, registry):
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app

    with socket.socket() as s:  # a port nobody listens on: Redis refuses every connection
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", ARTIFACTS_DIR=registry, API_KEY=API_KEY,
                        REDIS_URL=dead, RATE_LIMIT="1/minute")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert [client.get("/models").status_code for _ in range(3)] == [200, 200, 200]
        assert 'aerec_cache_errors_total{operation="rate_limit"}' in client.get("/metrics").text
