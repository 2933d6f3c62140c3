"""Writes that can be retried (issue 20, point 6), on SQLite + the in-process cache and PostgreSQL + Redis.

One row per (user, item): a batch posted again stores nothing twice, the last entry of a pair
wins, a re-rating replaces the older one; serving and the trainer read that one row. A write
whose users' cached lists cannot be invalidated is answered 503 ``cache_not_invalidated`` and
no stale list is served after it.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager

import pytest
import redis
from fastapi.testclient import TestClient

from _service_support import API_KEY, REDIS_URL, error_body, new_user
from service.cache import CacheUnavailable
from service.main import create_app
from storage import crud
from storage.migrate import upgrade_to_head
from storage.session import make_engine, make_session_factory

KEY = {"X-API-Key": API_KEY}


def post(client, rows, headers=None):
    return client.post("/interactions", json=rows, headers={**KEY, **(headers or {})})


def stored(client, user: str) -> dict[str, tuple[float | None, int]]:
    engine = make_engine(client.backend.database_url)
    try:
        with make_session_factory(engine)() as session:
            history = crud.user_history(session, user)
    finally:
        engine.dispose()
    return {i: (None if r != r else r, t)  # NaN (implicit) as None, which equals itself
            for i, r, t in zip(history.item_ids.tolist(), history.ratings.tolist(), history.timestamps.tolist())}


def recommended(client, user: str, **body) -> list[str]:
    response = client.post(f"/users/{user}/recommendations", json={"k": 10, **body})
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def test_a_batch_posted_again_without_timestamps_is_stored_once(empty_client):
    user = new_user()
    batch = [{"user_id": user, "item_id": "50", "rating": 4}, {"user_id": user, "item_id": "100", "rating": 5}]
    first = post(empty_client, batch)
    again = post(empty_client, batch)
    assert first.status_code == again.status_code == 201
    assert first.json()["inserted"] == 2 and again.json()["inserted"] == 0
    assert again.json()["updated"] + again.json()["unchanged"] == 2  # the same ratings at a later "now", or the same second
    assert set(stored(empty_client, user)) == {"50", "100"}  # one row each, not two


def test_the_last_entry_of_a_batch_wins_and_is_served(empty_client):
    both, five, one = new_user(), new_user(), new_user()
    answer = post(empty_client, [{"user_id": both, "item_id": "50", "rating": 1}, {"user_id": both, "item_id": "50", "rating": 5}])
    assert answer.json() | {"new_items": 0} == {"received": 2, "inserted": 1, "updated": 0, "unchanged": 1, "duplicates": 1,
                                               "new_users": 1, "new_items": 0}
    assert stored(empty_client, both)["50"][0] == 5.0
    post(empty_client, [{"user_id": five, "item_id": "50", "rating": 5}])
    post(empty_client, [{"user_id": one, "item_id": "50", "rating": 1}])
    # served from the 5: the same list and predicted ratings as a user who only gave the 5
    assert recommended(empty_client, both) == recommended(empty_client, five) != recommended(empty_client, one)
    ratings = {u: empty_client.post("/ratings", json={"user_id": u, "item_ids": ["1", "100", "172"]}).json()["ratings"]
               for u in (both, five)}
    assert ratings[both] == ratings[five]


def test_a_re_rating_replaces_the_older_one_and_an_older_entry_does_not(empty_client):
    user = new_user()
    at = 1_700_000_000
    assert post(empty_client, [{"user_id": user, "item_id": "50", "rating": 1, "timestamp": at}]).json()["inserted"] == 1
    same_second = post(empty_client, [{"user_id": user, "item_id": "50", "rating": 5, "timestamp": at}]).json()
    assert (same_second["inserted"], same_second["updated"], same_second["unchanged"]) == (0, 1, 0)
    assert stored(empty_client, user) == {"50": (5.0, at)}
    older = post(empty_client, [{"user_id": user, "item_id": "50", "rating": 2, "timestamp": at - 10}]).json()
    assert (older["updated"], older["unchanged"]) == (0, 1) and stored(empty_client, user) == {"50": (5.0, at)}
    # without timestamps, in the same second or not: the later post replaces the earlier
    post(empty_client, [{"user_id": user, "item_id": "100", "rating": 2}])
    post(empty_client, [{"user_id": user, "item_id": "100", "rating": 4}])
    assert stored(empty_client, user)["100"][0] == 4.0


def test_serving_and_the_trainers_from_db_read_the_same_latest_rating(empty_client):
    from trainer.sources import read_database

    user = new_user()
    post(empty_client, [{"user_id": user, "item_id": "50", "rating": 5, "timestamp": 100},
                        {"user_id": user, "item_id": "100", "rating": 4, "timestamp": 100}])
    post(empty_client, [{"user_id": user, "item_id": "50", "rating": 1, "timestamp": 200}])  # re-rated lower
    inter, _ = read_database(empty_client.backend.database_url)
    mine = [(str(inter.item_ids[i]), float(r)) for u, i, r in zip(inter.users, inter.items, inter.ratings)
            if str(inter.user_ids[u]) == user]
    assert sorted(mine) == [("100", 4.0), ("50", 1.0)]
    assert {i: r for i, (r, _) in stored(empty_client, user).items()} == {"100": 4.0, "50": 1.0}
    # serving folds in from the same row: the same list as a user who gave the 1 from the start
    twin = new_user()
    post(empty_client, [{"user_id": twin, "item_id": "50", "rating": 1}, {"user_id": twin, "item_id": "100", "rating": 4}])
    assert recommended(empty_client, user) == recommended(empty_client, twin)


# ---- a failed invalidation ---------------------------------------------------------------------
@contextmanager
def refusing_deletes(client):
    """``refuse(True/False)``: the cache refuses DEL. Redis: a user of its own whose ACL drops ``del``
    (what a Redis that refuses the command really answers); in process: a delete that raises."""
    cache = client.app.state.parts.cache.backend
    if cache.name == "memory":
        real = cache._delete_many

        def refuse(on: bool) -> None:
            def refused(keys):
                raise CacheUnavailable("refused")
            cache._delete_many = refused if on else real

        yield refuse
        return
    admin = redis.Redis.from_url(REDIS_URL)
    name = client.acl_user

    def refuse(on: bool) -> None:
        admin.execute_command("ACL", "SETUSER", name, "-del" if on else "+del")
        cache._down_until = 0.0  # past the client's backoff after a failure, so the next read asks Redis

    try:
        yield refuse
    finally:
        admin.execute_command("ACL", "SETUSER", name, "+del")
        admin.close()


@pytest.fixture
def acl_client(empty_backend, registry):
    """An app on each backend; on Redis it connects as an ACL user of its own, so a test can take DEL away."""
    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    name, url = None, None
    if empty_backend.redis_url:
        name = f"aerec-test-{uuid.uuid4().hex[:8]}"
        admin = redis.Redis.from_url(REDIS_URL)
        admin.execute_command("ACL", "SETUSER", name, "on", "nopass", "~*", "&*", "+@all")
        host, port, db = (admin.connection_pool.connection_kwargs.get(k) for k in ("host", "port", "db"))
        url = f"redis://{name}:x@{host}:{port}/{db or 0}"
    try:
        app = create_app(empty_backend.settings(registry, REDIS_URL=url))
        with TestClient(app, raise_server_exceptions=False) as client:
            client.backend, client.acl_user = empty_backend, name
            yield client
    finally:
        if name:
            admin.execute_command("ACL", "DELUSER", name)
            admin.close()


def _counter(client, series: str) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(series))


def test_a_failed_invalidation_is_retried_counted_503_and_no_stale_list_is_served(acl_client):
    client, user = acl_client, new_user()
    hits = 'aerec_cache_hits_total{kind="recommendations"}'
    post(client, [{"user_id": user, "item_id": "50", "rating": 5, "timestamp": 1}])
    before = recommended(client, user)
    assert recommended(client, user) == before and _counter(client, hits) == 1  # cached
    with refusing_deletes(client) as refuse:
        refuse(True)
        top = before[0]
        answer = post(client, [{"user_id": user, "item_id": top, "rating": 5, "timestamp": 2}])
        assert answer.status_code == 503
        error = error_body(answer)
        assert error["code"] == "cache_not_invalidated" and "stored" in error["message"]
        assert error["details"]["stored"]["inserted"] == 1 and top in stored(client, user)  # the data IS stored
        assert _counter(client, 'aerec_cache_invalidation_failures_total{outcome="retried"}') == 2
        assert _counter(client, 'aerec_cache_invalidation_failures_total{outcome="gave_up"}') == 1
        # the list cached before the write is never served again, not even once the cache answers reads
        refuse(True)
        after = recommended(client, user)
        assert top not in after and after != before and recommended(client, user) == after
        assert _counter(client, hits) == 1  # computed afresh each time, uncached
        ratings = client.post("/ratings", json={"user_id": user, "item_ids": [top]})
        assert ratings.status_code == 200
        refuse(False)  # deletes work again: the background retry confirms the invalidation (no read needed,
        deadline = time.monotonic() + 5  # other replicas read the same tokens), and caching resumes
        while client.app.state.parts.cache.users._unconfirmed:
            assert time.monotonic() < deadline, "the failed invalidation was not retried in the background"
            time.sleep(0.05)
        assert recommended(client, user) == after and recommended(client, user) == after
        assert _counter(client, hits) == 2
        retry = post(client, [{"user_id": user, "item_id": top, "rating": 5, "timestamp": 2}])
        assert retry.status_code == 201 and retry.json()["unchanged"] == 1  # a retry changes nothing


# ---- Idempotency-Key -------------------------------------------------------------------------------
def test_a_retried_batch_with_its_idempotency_key_is_a_no_op_with_the_same_answer(empty_client):
    user, key = new_user(), {"Idempotency-Key": f"batch-{uuid.uuid4().hex}"}
    batch = [{"user_id": user, "item_id": "50", "rating": 4}, {"user_id": user, "item_id": "100"}]  # no timestamps
    first = post(empty_client, batch, key)
    rows = stored(empty_client, user)
    time.sleep(1.05)  # a write now would move the timestamps on
    again = post(empty_client, batch, key)
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    assert first.json()["inserted"] == 2 and stored(empty_client, user) == rows  # nothing written again
    # the same entries in another JSON form are the same body; a new key is a new write
    same = [{"item_id": 50, "user_id": user, "rating": 4.0}, {"user_id": user, "item_id": 100, "rating": None}]
    assert post(empty_client, same, key).json() == first.json()
    fresh = post(empty_client, batch, {"Idempotency-Key": f"other-{uuid.uuid4().hex}"}).json()
    assert fresh["inserted"] == 0 and fresh["updated"] == 2


def test_an_idempotency_key_reused_for_another_body_is_a_422_naming_the_header(empty_client):
    user, key = new_user(), {"Idempotency-Key": f"batch-{uuid.uuid4().hex}"}
    assert post(empty_client, [{"user_id": user, "item_id": "50", "rating": 4}], key).status_code == 201
    reused = post(empty_client, [{"user_id": user, "item_id": "50", "rating": 5}], key)
    assert reused.status_code == 422
    error = error_body(reused)
    assert error["code"] == "idempotency_key_reused" and "Idempotency-Key" in error["message"]
    assert stored(empty_client, user)["50"][0] == 4.0  # nothing of the second body was written


def test_an_idempotency_key_is_bounded_and_scoped_by_the_api_key(empty_client, registry):
    too_long = post(empty_client, [{"user_id": new_user(), "item_id": "50"}], {"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 422 and "Idempotency-Key" in error_body(too_long)["message"]
    # another write key may use the same key string for its own batch
    app = create_app(empty_client.backend.settings(registry, WRITE_API_KEY="writer-key-7d1e0b"))
    key = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        a, b = new_user(), new_user()
        assert client.post("/interactions", json=[{"user_id": a, "item_id": "50"}], headers={**KEY, **key}).status_code == 201
        other = client.post("/interactions", json=[{"user_id": b, "item_id": "50"}],
                            headers={"X-API-Key": "writer-key-7d1e0b", **key})
        assert other.status_code == 201 and other.json()["new_users"] == 1


def test_an_expired_idempotency_key_is_a_new_write(empty_client, registry):
    app = create_app(empty_client.backend.settings(registry, IDEMPOTENCY_TTL_S=1))
    user, key = new_user(), {"Idempotency-Key": f"batch-{uuid.uuid4().hex}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        batch = [{"user_id": user, "item_id": "50", "rating": 4}]
        assert post(client, batch, key).json()["inserted"] == 1
        time.sleep(2.1)
        assert post(client, [{"user_id": user, "item_id": "50", "rating": 5}], key).json()["updated"] == 1
