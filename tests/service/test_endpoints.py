"""Every endpoint, against SQLite + the in-process cache and PostgreSQL + Redis (the ``client`` fixture)."""

from __future__ import annotations

import gc
import json
import math
import uuid

import numpy as np
import scipy.sparse as sp
import torch
from fastapi.testclient import TestClient

from _service_support import API_KEY, POSITIVE, copy_registry, error_body
from _service_support import new_user
from registry import latest_version
from service.main import create_app

KNOWN_USER = "1"
AUTH = {"X-API-Key": API_KEY}


def seen_items(corpus, user_id: str) -> set[str]:
    return {i for u, i in zip(corpus.rows["user_id"], corpus.rows["item_id"]) if u == user_id}


def recommend(client, user_id, **body):
    response = client.post(f"/users/{user_id}/recommendations", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer.pop("recommendation_id")) == 32  # new on every answer; the rest is the list
    return answer


def item_list(body) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def test_known_user_is_scored_by_the_model(client, corpus, registry, trained):
    body = recommend(client, KNOWN_USER, k=10)
    assert body["source"] == "model" and body["model"] == "ease"
    assert body["model_version"] == latest_version(registry)
    assert [i["rank"] for i in body["items"]] == list(range(1, 11))
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert not set(item_list(body)) & seen_items(corpus, KNOWN_USER)
    assert all(i["title"] for i in body["items"])  # titles come from the seeded items table
    # The same list as the model itself gives for this user's training row (ids mapped back).
    row = corpus.user_ids.index(KNOWN_USER)
    positives = sp.csr_matrix(corpus.X[row] >= POSITIVE, dtype=np.float32)
    seen = corpus.X[row].indices
    ids, _ = trained["ease"].recommend(positives, 10, exclude=seen)
    assert item_list(body) == [corpus.item_ids[i] for i in ids[0]]


def test_exclude_seen_false_may_return_seen_items(client, corpus):
    body = recommend(client, KNOWN_USER, k=50, exclude_seen=False)
    assert set(item_list(body)) & seen_items(corpus, KNOWN_USER)


def test_offset_pages_through_the_same_ranking(client):
    first = recommend(client, KNOWN_USER, k=10)
    page = recommend(client, KNOWN_USER, k=5, offset=5)
    assert item_list(page) == item_list(first)[5:]
    assert [i["rank"] for i in page["items"]] == [6, 7, 8, 9, 10]


def test_candidates_and_exclusions_with_unknown_ids_reported(client):
    top = item_list(recommend(client, KNOWN_USER, k=20))
    candidates = top[5:15] + ["no-such-item"]
    body = recommend(client, KNOWN_USER, k=5, candidates=candidates, exclude_items=[top[5], "ghost"])
    assert set(item_list(body)) <= set(top[6:15])
    assert item_list(body) == top[6:11]
    assert body["unknown_items"] == ["ghost", "no-such-item"]
    nothing = recommend(client, KNOWN_USER, k=5, candidates=["no-such-item"])
    assert nothing["items"] == [] and nothing["unknown_items"] == ["no-such-item"]


def test_user_with_no_history_gets_the_popularity_list(client, registry):
    body = recommend(client, new_user(), k=7)
    assert body["source"] == "popular"
    popular = json.loads((registry / latest_version(registry) / "popularity.json").read_text())
    assert item_list(body) == popular["items"][:7]
    assert [i["score"] for i in body["items"]] == [float(c) for c in popular["counts"][:7]]


def test_user_posted_after_training_is_folded_in(client, corpus, auth):
    """A late user's real history, posted through the API: personalised, not the popularity list."""
    late = corpus.late_rows
    lists = []
    for late_id in sorted(set(late["user_id"]))[:2]:
        user = new_user()
        rows = [
            {"user_id": user, "item_id": i, "rating": r, "timestamp": t}
            for u, i, r, t in zip(late["user_id"], late["item_id"], late["rating"], late["timestamp"])
            if u == late_id
        ]
        stored = client.post("/interactions", json=rows, headers=auth)
        assert stored.status_code == 201, stored.text
        assert stored.json()["new_users"] == 1 and stored.json()["inserted"] == len(rows)
        body = recommend(client, user, k=10)
        assert body["source"] == "fold-in" and body["user_id"] == user
        popular = recommend(client, new_user(), k=10 + len(rows))  # the popularity list, long enough
        seen = {r["item_id"] for r in rows}
        popular_unseen = [i for i in item_list(popular) if i not in seen][:10]
        assert item_list(body) != popular_unseen
        assert not set(item_list(body)) & seen
        lists.append(item_list(body))
    assert lists[0] != lists[1]  # two users' histories give two different lists


def test_posting_interactions_invalidates_the_users_cached_list(client, corpus, auth):
    user = new_user()
    history = [{"user_id": user, "item_id": i, "rating": 5, "timestamp": 1_000 + n} for n, i in enumerate(["50", "172", "181"])]
    assert client.post("/interactions", json=history, headers=auth).status_code == 201
    before = recommend(client, user, k=5)
    assert recommend(client, user, k=5) == before  # served again (from the cache)
    top = before["items"][0]["item_id"]
    more = [{"user_id": user, "item_id": top, "rating": 5, "timestamp": 2_000}]
    assert client.post("/interactions", json=more, headers=auth).status_code == 201
    after = recommend(client, user, k=5)
    assert top not in item_list(after)  # the new interaction is seen, so it is excluded


def _metric(client, series: str) -> float:
    text = client.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


def test_a_users_history_serves_their_other_lists_until_they_write(client, auth):
    """Another page of the same user's list reads no history again; after a write for the user
    the next list reads it again, and sees the new interaction."""
    user = new_user()
    history = [{"user_id": user, "item_id": i, "rating": 5, "timestamp": 1_000 + n} for n, i in enumerate(["50", "181"])]
    assert client.post("/interactions", json=history, headers=auth).status_code == 201

    def reads() -> tuple[float, float]:
        return (_metric(client, 'aerec_cache_misses_total{kind="history"}'),
                _metric(client, 'aerec_cache_hits_total{kind="history"}'))

    misses, hits = reads()
    first = recommend(client, user, k=5)
    assert reads() == (misses + 1, hits)
    second = recommend(client, user, k=5, offset=5)  # another list: not cached, its history is
    assert reads() == (misses + 1, hits + 1)
    assert [i["rank"] for i in second["items"]] == [6, 7, 8, 9, 10]
    top = first["items"][0]["item_id"]
    more = [{"user_id": user, "item_id": top, "rating": 5, "timestamp": 2_000}]
    assert client.post("/interactions", json=more, headers=auth).status_code == 201
    recommend(client, user, k=5, offset=5)
    assert reads() == (misses + 2, hits + 1)  # read again after the write
    assert top not in item_list(recommend(client, user, k=10))  # ... and the new interaction counts


def test_repeated_request_is_a_cache_hit(client):
    def hits() -> float:
        text = client.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('aerec_cache_hits_total{kind="recommendations"}'))

    user = "2"
    recommend(client, user, k=3, offset=1)
    before = hits()
    recommend(client, user, k=3, offset=1)
    assert hits() == before + 1


def test_the_running_app_hides_its_startup_objects_from_the_collector_and_collects_young_ones_less_often(client):
    from service.main import YOUNG_COLLECTION_EVERY

    assert gc.get_freeze_count() > 10_000  # the libraries and the model version, frozen at startup
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY > 700


def test_model_that_cannot_fold_in_refuses_late_users(client, auth):
    user = new_user()
    client.post("/interactions", json=[{"user_id": user, "item_id": "50", "rating": 4}], headers=auth)
    response = client.post(f"/users/{user}/recommendations", json={"model": "autorec-i"})
    assert response.status_code == 404 and error_body(response)["code"] == "unknown_user"
    response = client.post("/ratings", json={"user_id": user, "item_ids": ["50"], "model": "autorec-i"})
    assert response.status_code == 404 and error_body(response)["code"] == "unknown_user"
    known = recommend(client, KNOWN_USER, k=5, model="autorec-i")
    assert known["source"] == "model" and len(known["items"]) == 5


def test_ratings_single_and_batch(client, corpus, trained):
    one = client.post("/ratings", json={"user_id": 1, "item_ids": [1, "2", "not-an-item"]})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model"] == "autorec-u" and body["source"] == "model"
    assert [r["item_id"] for r in body["ratings"]] == ["1", "2"] and body["unknown_items"] == ["not-an-item"]
    # Same numbers as the model predicts from the user's stored row.
    row = corpus.X[corpus.user_ids.index("1")]
    cols = np.array([corpus.item_ids.index("1"), corpus.item_ids.index("2")])
    expected = trained["autorec-u"].predict(sp.vstack([row, row]), cols)
    assert np.allclose([r["rating"] for r in body["ratings"]], expected, atol=1e-5)

    many = client.post("/ratings", json=[
        {"user_id": "3", "item_ids": ["50", "100"]},
        {"user_id": "3", "item_ids": ["50"], "model": "autorec-i"},
        {"user_id": new_user(), "item_ids": ["50"]},
    ])
    assert many.status_code == 200, many.text
    bodies = many.json()
    assert [b["model"] for b in bodies] == ["autorec-u", "autorec-i", "autorec-u"]
    assert [b["source"] for b in bodies] == ["model", "model", "cold-start"]
    for b in bodies:
        assert all(1.0 <= r["rating"] <= 5.0 for r in b["ratings"])  # clipped to the rating range


def test_a_single_ratings_request_keeps_the_users_history_until_they_write(client, auth, corpus, trained):
    """Ratings for one user read the history once under the user's generation, as lists do;
    a write for the user makes the next request read it again, and the prediction follows it."""
    user = new_user()
    rated = {"50": 5, "181": 4}
    history = [{"user_id": user, "item_id": i, "rating": r, "timestamp": 1_000 + n} for n, (i, r) in enumerate(rated.items())]
    assert client.post("/interactions", json=history, headers=auth).status_code == 201

    def reads() -> tuple[float, float]:
        return (_metric(client, 'aerec_cache_misses_total{kind="history"}'),
                _metric(client, 'aerec_cache_hits_total{kind="history"}'))

    def predicted() -> list[float]:
        response = client.post("/ratings", json={"user_id": user, "item_ids": ["1", "2"]})
        assert response.status_code == 200, response.text
        return [r["rating"] for r in response.json()["ratings"]]

    def expected() -> np.ndarray:  # the model's prediction from the row the user has now
        row = sp.csr_matrix(([float(v) for v in rated.values()], ([0] * len(rated), [corpus.item_ids.index(i) for i in rated])),
                            shape=(1, len(corpus.item_ids)))
        return trained["autorec-u"].predict(sp.vstack([row, row]), np.array([corpus.item_ids.index("1"), corpus.item_ids.index("2")]))

    misses, hits = reads()
    first = predicted()
    assert reads() == (misses + 1, hits)
    assert predicted() == first and reads() == (misses + 1, hits + 1)
    np.testing.assert_allclose(first, expected(), atol=1e-5)
    rated["100"] = 1
    assert client.post("/interactions", json=[{"user_id": user, "item_id": "100", "rating": 1, "timestamp": 2_000}],
                       headers=auth).status_code == 201
    after = predicted()
    assert reads() == (misses + 2, hits + 1)  # read again after the write ...
    np.testing.assert_allclose(after, expected(), atol=1e-5)  # ... and the new rating counts
    assert after != first


def test_ratings_from_a_ranking_model_are_refused(client):
    response = client.post("/ratings", json={"user_id": 1, "item_ids": [1], "model": "ease"})
    assert response.status_code == 422
    assert error_body(response)["code"] == "not_a_rating_model"


def test_interactions_are_idempotent_and_create_users_and_items(client, auth):
    user, item = new_user(), f"item-{new_user()}"
    batch = [
        {"user_id": user, "item_id": item, "timestamp": 1_600_000_000},
        {"user_id": user, "item_id": 50, "rating": 4, "timestamp": 1_600_000_001},
    ]
    first = client.post("/interactions", json=batch, headers=auth).json()
    assert first == {"received": 2, "inserted": 2, "updated": 0, "unchanged": 0, "duplicates": 0, "new_users": 1, "new_items": 1}
    again = client.post("/interactions", json=batch, headers=auth).json()
    assert again == {"received": 2, "inserted": 0, "updated": 0, "unchanged": 2, "duplicates": 2, "new_users": 0, "new_items": 0}
    # The new item is unknown to the model: ignored for scoring, the known one still folds in.
    body = recommend(client, user, k=5)
    assert body["source"] == "fold-in" and item not in item_list(body) and "50" not in item_list(body)


def test_writes_need_the_api_key(client):
    batch = [{"user_id": "1", "item_id": "1"}]
    missing = client.post("/interactions", json=batch)
    assert missing.status_code == 401 and error_body(missing)["code"] == "missing_api_key"
    wrong = client.post("/interactions", json=batch, headers={"X-API-Key": API_KEY + "x"})
    assert wrong.status_code == 403 and error_body(wrong)["code"] == "invalid_api_key"
    assert client.post("/admin/reload").status_code == 401


def test_similar_items_are_the_nearest_embeddings(client, corpus, trained):
    response = client.get("/items/50/similar", params={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "ease" and len(body["items"]) == 5 and "50" not in item_list(body)
    vectors = trained["ease"].item_embeddings().numpy()
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = vectors @ vectors[corpus.item_ids.index("50")]
    similarity[corpus.item_ids.index("50")] = -np.inf
    expected = [corpus.item_ids[i] for i in np.argsort(-similarity)[:5]]
    assert item_list(body) == expected
    other = client.get("/items/50/similar", params={"k": 3, "model": "autorec-u"})
    assert other.status_code == 200 and other.json()["model"] == "autorec-u" and len(other.json()["items"]) == 3
    unknown = client.get("/items/no-such-item/similar")
    assert unknown.status_code == 404 and error_body(unknown)["code"] == "unknown_item"


def test_no_non_finite_score_leaves_the_api(tmp_path, seeded_backend, registry):
    """A served model whose output is NaN for some input (the rows of item 50 in AutoRec-U's decoder,
    which its ratings and similar items read in place, and in EASE's B): the requests that meet it
    are a 503, never a null score; the others are answered."""
    copy_registry(registry, tmp_path / "registry")
    settings = seeded_backend.settings(tmp_path / "registry", RELOAD_INTERVAL_S=3600.0, CACHE_NAMESPACE=uuid.uuid4().hex)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        version = client.app.state.parts.store.current
        with torch.no_grad():
            version.models["autorec-u"].model.decoder.weight[version.models["autorec-u"].item_index.get("50")] = math.nan
            version.models["ease"].model.B[version.models["ease"].item_index.get("50")] = math.nan
        with_50, without_50 = new_user(), new_user()
        client.post("/interactions", json=[{"user_id": with_50, "item_id": 50, "rating": 5},
                                           {"user_id": without_50, "item_id": 51, "rating": 5}], headers=AUTH)
        for response in (client.post("/ratings", json={"user_id": KNOWN_USER, "item_ids": [51, 50], "model": "autorec-u"}),
                         client.get("/items/50/similar", params={"k": 4, "model": "autorec-u"}),
                         client.get("/items/51/similar", params={"k": 599, "model": "autorec-u"}),
                         client.post(f"/users/{with_50}/recommendations", json={"k": 5})):
            assert response.status_code == 503 and error_body(response)["code"] == "model_fault", response.text
        for response in (client.post("/ratings", json={"user_id": KNOWN_USER, "item_ids": [51, 52], "model": "autorec-u"}),
                         client.get("/items/51/similar", params={"k": 4, "model": "autorec-u"}),
                         client.post(f"/users/{without_50}/recommendations", json={"k": 5})):
            assert response.status_code == 200, response.text
            body = response.json()
            scores = [r["rating"] for r in body["ratings"]] if "ratings" in body else [i["score"] for i in body["items"]]
            assert len(scores) in (2, 4, 5) and all(isinstance(s, float) and math.isfinite(s) for s in scores), body


def test_models_lists_the_served_version(client, registry):
    body = client.get("/models").json()
    assert body["version"] == latest_version(registry) and body["swaps"] == 1
    assert body["requested"] == body["version"] and body["fallback"] is None and body["refused"] == {}
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"ease", "autorec-u", "autorec-i"}
    assert models["ease"]["default_for"] == ["recommendations"] and models["autorec-u"]["default_for"] == ["ratings"]
    assert models["autorec-i"]["can_fold_in"] is False and models["ease"]["n_items"] == 600


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert all(c["ok"] for c in checks.values()) and set(checks) == {"model", "database", "cache"}
    assert ("redis" if client.backend.redis_url else "memory") in checks["cache"]["detail"]


def test_metrics_count_requests_per_route_and_model(client, registry):
    recommend(client, KNOWN_USER, k=4, model="autorec-u")
    text = client.get("/metrics").text
    assert 'route="/users/{user_id}/recommendations"' in text and 'model="autorec-u"' in text
    assert 'aerec_http_request_duration_seconds_bucket{' in text
    assert f'aerec_model_version_info{{version="{latest_version(registry)}"}} 1.0' in text
    assert "aerec_model_swaps_total 1.0" in text
    assert "aerec_cache_misses_total{" in text
    assert "aerec_cache_errors_total{" not in text  # the cache never failed


def test_reads_can_require_the_key(tmp_path, registry):
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app

    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}", ARTIFACTS_DIR=registry, API_KEY=API_KEY,
                        READS_REQUIRE_KEY=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.post("/users/1/recommendations", json={}).status_code == 401
        assert c.get("/models").status_code == 401
        assert c.get("/models", headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open
        # and the OpenAPI document says so: reads name the key, probes do not
        paths = c.get("/openapi.json").json()["paths"]
        assert paths["/users/{user_id}/recommendations"]["post"]["security"] == [{"ApiKeyForReads": []}]
        assert paths["/models"]["get"]["security"] == [{"ApiKeyForReads": []}]
        assert "security" not in paths["/healthz"]["get"]
