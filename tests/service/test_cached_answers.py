"""Cache hits of the recommendations route are answered before the routing (service.cached_answers):
the same JSON and metrics as the route's, and nothing the route would refuse."""

from __future__ import annotations

import re

from _service_support import API_KEY, error_body, new_user
from service import serving

ROUTE_LABEL = 'route="/users/{user_id}/recommendations"'


def counter(text: str, name: str, **labels: str) -> float:
    """A Prometheus sample's value (0 if absent) from /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_hit_skips_the_route_with_the_same_json_and_a_miss_is_looked_up_once(client, route_calls):
    # seen items kept: a stored top-N list (which excludes them) cannot answer, so the miss reaches the route
    user, body = "3", {"k": 7, "offset": 2, "exclude_seen": False}
    before = client.get("/metrics").text
    first = client.post(f"/users/{user}/recommendations", json=body)
    assert first.status_code == 200 and len(route_calls) == 1
    assert route_calls[0] is not None  # the miss's lookup, made before the routing, handed to the route
    middle = client.get("/metrics").text
    # one lookup for the miss, not one before the routing and another in the route
    assert counter(middle, "aerec_cache_misses_total", kind="recommendations") == counter(
        before, "aerec_cache_misses_total", kind="recommendations") + 1

    second = client.post(f"/users/{user}/recommendations", json=body)
    assert second.status_code == 200 and len(route_calls) == 1  # answered before the routing
    assert second.content == first.content and second.headers["content-type"] == "application/json"
    after = client.get("/metrics").text
    assert counter(after, "aerec_cache_hits_total", kind="recommendations") == counter(
        middle, "aerec_cache_hits_total", kind="recommendations") + 1
    # labelled as the route labels it: route template, status and model
    model = first.json()["model"]
    labels = dict(method="POST", status="200", model=model)
    assert counter(after, "aerec_http_requests_total", **labels) == counter(middle, "aerec_http_requests_total", **labels) + 1
    assert re.search(r'aerec_http_requests_total\{[^}]*' + re.escape(ROUTE_LABEL), after)


def test_what_the_route_refuses_is_refused_as_before(client, route_calls):
    client.post("/users/3/recommendations", json={"k": 5})  # cached now
    calls = len(route_calls)  # 1, or 0 when the user's stored list answered before the routing
    bad = [
        ({"k": 0}, 422, "validation_error"),
        ({"k": 5, "colour": "red"}, 422, "validation_error"),  # a misspelt field
        ({"k": 5, "model": "no-such-model"}, 404, "unknown_model"),
        ({"k": 10_000}, 422, "k_too_large"),
    ]
    for body, status, code in bad:
        response = client.post("/users/3/recommendations", json=body)
        assert response.status_code == status and error_body(response)["code"] == code, (body, response.text)
    broken = client.post("/users/3/recommendations", content=b'{"k": 5', headers={"content-type": "application/json"})
    assert broken.status_code in (400, 422) and "error" in broken.json()
    # the model and k refusals came from the route's serving code; the others from FastAPI's
    # validation before it, with the service's error body: none was answered before the routing
    assert len(route_calls) == calls + 2


def test_an_empty_body_and_a_json_body_share_the_default_entry(client, route_calls):
    user = new_user()  # no stored list (unknown to the models): the first request reaches the route
    first = client.post(f"/users/{user}/recommendations")  # no body: the defaults
    assert first.status_code == 200 and len(route_calls) == 1
    again = client.post(f"/users/{user}/recommendations", json={"k": 10, "offset": 0})  # the defaults, spelt out
    assert again.content == first.content and len(route_calls) == 1


def test_a_write_moves_the_user_past_the_cached_answer(client, auth, route_calls):
    user = new_user()
    first_write = [{"user_id": user, "item_id": i, "rating": 5} for i in ("50", "172", "181")]
    assert client.post("/interactions", json=first_write, headers=auth).status_code == 201
    first = client.post(f"/users/{user}/recommendations", json={"k": 5})
    assert client.post(f"/users/{user}/recommendations", json={"k": 5}).content == first.content
    assert len(route_calls) == 1
    top = first.json()["items"][0]["item_id"]
    assert client.post("/interactions", json=[{"user_id": user, "item_id": top, "rating": 5}], headers=auth).status_code == 201
    after = client.post(f"/users/{user}/recommendations", json={"k": 5})
    assert len(route_calls) == 2 and top not in [i["item_id"] for i in after.json()["items"]]


def test_a_hit_still_needs_the_key_where_reads_do(tmp_path, registry, route_calls):
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app

    from service.db.migrate import upgrade_to_head
    from service.db.session import make_engine

    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}", ARTIFACTS_DIR=registry, API_KEY=API_KEY,
                        READS_REQUIRE_KEY=True)
    engine = make_engine(settings.DATABASE_URL)
    upgrade_to_head(engine)
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        ok = c.post("/users/1/recommendations", json={"k": 3}, headers={"X-API-Key": API_KEY})
        assert ok.status_code == 200
        hit = c.post("/users/1/recommendations", json={"k": 3}, headers={"X-API-Key": API_KEY})
        assert hit.content == ok.content and len(route_calls) == 1
        missing = c.post("/users/1/recommendations", json={"k": 3})
        wrong = c.post("/users/1/recommendations", json={"k": 3}, headers={"X-API-Key": API_KEY + "x"})
        assert missing.status_code == 401 and error_body(missing)["code"] == "missing_api_key"
        assert wrong.status_code == 403 and error_body(wrong)["code"] == "invalid_api_key"
        # a repeated header: the route reads the first, and so must the answer before the routing
        twice = c.post("/users/1/recommendations", json={"k": 3}, headers=[("X-API-Key", "wrong"), ("X-API-Key", API_KEY)])
        assert twice.status_code == 403 and error_body(twice)["code"] == "invalid_api_key"


def test_a_hit_reads_the_key_as_the_route_does(tmp_path, registry, route_calls):
    """Starlette decodes header bytes as latin-1 before the route compares the key, so the
    UTF-8 bytes of a key with non-ASCII letters are refused by the route (403): a cached
    answer to the same request must be refused the same way, not compared as raw bytes."""
    import asyncio

    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app
    from service.schemas import RecommendationRequest

    key = "clé-" + API_KEY
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}", ARTIFACTS_DIR=registry, API_KEY=key,
                        READS_REQUIRE_KEY=True)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        state = app.state
        lookup = serving.recommendation_lookup(state.cache, state.store, settings, "1", RecommendationRequest(k=3))
        entry = asyncio.run(lookup())
        assert entry.value is None and state.cache.set(entry.key, '{"cached": true}', 60)  # an answer is cached
        utf8 = c.post("/users/1/recommendations", json={"k": 3}, headers={"X-API-Key": key.encode("utf-8")})
        assert utf8.status_code == 403 and error_body(utf8)["code"] == "invalid_api_key"
        assert c.post("/users/1/recommendations", json={"k": 3}).status_code == 401
        assert route_calls == []  # both refused by the route's own key check


def test_a_user_id_the_route_refuses_gets_no_cached_answer(client, route_calls):
    """"1\n" (a final newline, %0A in the path) fails the route's id pattern: even with an
    answer cached under it, the answer is the route's 422."""
    import asyncio

    from service.schemas import RecommendationRequest

    state = client.app.state
    lookup = serving.recommendation_lookup(state.cache, state.store, state.settings, "1\n", RecommendationRequest(k=3))
    entry = asyncio.run(lookup()) if state.cache.backend == "memory" else client.portal.call(lookup)
    assert state.cache.set(entry.key, '{"cached": true}', 60)
    response = client.post("/users/1%0A/recommendations", json={"k": 3})
    assert response.status_code == 422 and error_body(response)["code"] == "validation_error"
