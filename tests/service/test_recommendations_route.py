"""The recommendations route (service.api.routes.recommendations): one handler for hits and misses, taken
before FastAPI's routing, with FastAPI's refusals, the route's metrics labels, and one lookup per request."""

from __future__ import annotations

import re

from _service_support import API_KEY, error_body, listed, new_user
from service import serving
from service.api.routes.recommendations import RequestBody, UserIdPath  # module level: the reference route's annotations

ROUTE_LABEL = 'route="/users/{user_id}/recommendations"'


def counter(text: str, name: str, **labels: str) -> float:
    """A Prometheus sample's value (0 if absent) from /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_hit_is_the_misses_json_and_a_miss_is_looked_up_once(client, computed_answers):
    # seen items kept: a stored top-N list (which excludes them) cannot answer, so the miss is scored
    user, body = "3", {"k": 7, "offset": 2, "exclude_seen": False}
    before = client.get("/metrics").text
    first = client.post(f"/users/{user}/recommendations", json=body)
    assert first.status_code == 200 and len(computed_answers) == 1
    assert computed_answers[0] is not None  # a cacheable answer, stored under its key
    middle = client.get("/metrics").text
    # one lookup for the miss
    assert counter(middle, "aerec_cache_misses_total", kind="recommendations") == counter(
        before, "aerec_cache_misses_total", kind="recommendations") + 1

    second = client.post(f"/users/{user}/recommendations", json=body)
    assert second.status_code == 200 and len(computed_answers) == 1  # a hit
    assert listed(second) == listed(first) and second.headers["content-type"] == "application/json"
    after = client.get("/metrics").text
    assert counter(after, "aerec_cache_hits_total", kind="recommendations") == counter(
        middle, "aerec_cache_hits_total", kind="recommendations") + 1
    # labelled as the route labels it: route template, status and model
    model = first.json()["model"]
    labels = dict(method="POST", status="200", model=model)
    assert counter(after, "aerec_http_requests_total", **labels) == counter(middle, "aerec_http_requests_total", **labels) + 1
    assert re.search(r'aerec_http_requests_total\{[^}]*' + re.escape(ROUTE_LABEL), after)


def test_what_the_route_refuses_is_refused_as_before(client, computed_answers):
    client.post("/users/3/recommendations", json={"k": 5})  # cached now
    calls = len(computed_answers)  # 1, or 0 when the user's stored list answered on the event loop
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
    # refused before any lookup: nothing was computed
    assert len(computed_answers) == calls


def test_an_empty_body_and_a_json_body_share_the_default_entry(client, computed_answers):
    user = new_user()  # no stored list (unknown to the models): the first request reaches the route
    first = client.post(f"/users/{user}/recommendations")  # no body: the defaults
    assert first.status_code == 200 and len(computed_answers) == 1
    again = client.post(f"/users/{user}/recommendations", json={"k": 10, "offset": 0})  # the defaults, spelt out
    assert listed(again) == listed(first) and len(computed_answers) == 1


def test_a_write_moves_the_user_past_the_cached_answer(client, auth, computed_answers):
    user = new_user()
    first_write = [{"user_id": user, "item_id": i, "rating": 5} for i in ("50", "172", "181")]
    assert client.post("/interactions", json=first_write, headers=auth).status_code == 201
    first = client.post(f"/users/{user}/recommendations", json={"k": 5})
    assert listed(client.post(f"/users/{user}/recommendations", json={"k": 5})) == listed(first)
    assert len(computed_answers) == 1
    top = first.json()["items"][0]["item_id"]
    assert client.post("/interactions", json=[{"user_id": user, "item_id": top, "rating": 5}], headers=auth).status_code == 201
    after = client.post(f"/users/{user}/recommendations", json={"k": 5})
    assert len(computed_answers) == 2 and top not in [i["item_id"] for i in after.json()["items"]]


def test_a_hit_still_needs_the_key_where_reads_do(tmp_path, registry, computed_answers):
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app

    from storage.migrate import upgrade_to_head
    from storage.session import make_engine

    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}", ARTIFACTS_DIR=registry, API_KEY=API_KEY,
                        READS_REQUIRE_KEY=True)
    engine = make_engine(settings.DATABASE_URL)
    upgrade_to_head(engine)
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        past_the_list = {"k": 3, "offset": 198}  # computed: past the stored top-200 (a first answer within it is not)
        ok = c.post("/users/1/recommendations", json=past_the_list, headers={"X-API-Key": API_KEY})
        assert ok.status_code == 200
        hit = c.post("/users/1/recommendations", json=past_the_list, headers={"X-API-Key": API_KEY})
        assert listed(hit) == listed(ok) and len(computed_answers) == 1
        missing = c.post("/users/1/recommendations", json=past_the_list)
        wrong = c.post("/users/1/recommendations", json=past_the_list, headers={"X-API-Key": API_KEY + "x"})
        assert missing.status_code == 401 and error_body(missing)["code"] == "missing_api_key"
        assert wrong.status_code == 403 and error_body(wrong)["code"] == "invalid_api_key"
        # a repeated header: the first is read
        twice = c.post("/users/1/recommendations", json=past_the_list, headers=[("X-API-Key", "wrong"), ("X-API-Key", API_KEY)])
        assert twice.status_code == 403 and error_body(twice)["code"] == "invalid_api_key"


def test_a_hit_reads_the_key_as_the_route_does(tmp_path, registry, computed_answers):
    """Starlette decodes header bytes as latin-1 before the key is compared, so the UTF-8 bytes
    of a key with non-ASCII letters are refused (403), even with an answer cached for the request."""
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
        parts = app.state.parts
        lookup = serving.RecommendationLookup.of(parts, "1", RecommendationRequest(k=3))
        entry = asyncio.run(lookup())
        assert entry.value is None and parts.cache.backend.set(entry.key, '{"cached": true}', 60)  # an answer is cached
        utf8 = c.post("/users/1/recommendations", json={"k": 3}, headers={"X-API-Key": key.encode("utf-8")})
        assert utf8.status_code == 403 and error_body(utf8)["code"] == "invalid_api_key"
        assert c.post("/users/1/recommendations", json={"k": 3}).status_code == 401
        assert computed_answers == []  # both refused by the key check


def test_a_user_id_the_route_refuses_gets_no_cached_answer(client, computed_answers):
    """"1\n" (a final newline, %0A in the path) fails the id's pattern: even with an answer
    cached under it, the answer is a 422."""
    import asyncio

    from service.schemas import RecommendationRequest

    parts = client.app.state.parts
    lookup = serving.RecommendationLookup.of(parts, "1\n", RecommendationRequest(k=3))
    entry = asyncio.run(lookup()) if parts.cache.backend.name == "memory" else client.portal.call(lookup)
    assert parts.cache.backend.set(entry.key, '{"cached": true}', 60)
    response = client.post("/users/1%0A/recommendations", json={"k": 3})
    assert response.status_code == 422 and error_body(response)["code"] == "validation_error"


REFUSED = [  # (path id, body): refused by the path, the body, or both
    ("1", b'{"k": 0}'), ("1", b'{"k": 5, "colour": "red"}'), ("1", b'[1]'), ("1", b'"k"'), ("1", b'{"k": 5'),
    ("1", b"  "), ("1", b'{"k": 1e400}'), ("1", b'{"exclude_items": [true]}'), ("1", b"\xff\xfe{"),
    ("x" * 256, b'{"k": 3}'), ("x" * 256, b'{"k": 0}'), ("1%0A", b"null"), ("x" * 256, b'{"k": 5'),
]


def test_refusals_are_fastapis_own(client):
    """The route's parse gives each malformed request the status and body that FastAPI's own handling
    of the same signature gives it (a plain FastAPI route with the app's error handlers)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from service.errors import install_error_handlers

    reference = FastAPI()
    install_error_handlers(reference)

    @reference.post("/users/{user_id}/recommendations")
    async def plain(user_id: UserIdPath, body: RequestBody = None) -> dict:
        return {}

    with TestClient(reference) as fastapi_client:
        for user, body in REFUSED:
            path, headers = f"/users/{user}/recommendations", {"content-type": "application/json"}
            ours, theirs = client.post(path, content=body, headers=headers), fastapi_client.post(path, content=body, headers=headers)
            assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), (user, body)
            assert ours.status_code in (400, 422)


def test_chunked_and_large_bodies(client, computed_answers):
    def chunks():
        yield b'{"k": '
        yield b'6, "exclude_seen": false}'

    first = client.post("/users/4/recommendations", content=chunks(), headers={"content-type": "application/json"})
    again = client.post("/users/4/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert first.status_code == 200 and listed(again) == listed(first) and len(computed_answers) == 1  # then a hit
    padded = client.post("/users/4/recommendations", content=b'{"k": 6, "exclude_seen": false}' + b" " * 70_000,
                         headers={"content-type": "application/json"})
    assert listed(padded) == listed(first) and len(computed_answers) == 1
    limit = client.app.state.parts.settings.MAX_BODY_BYTES
    large = client.post("/users/4/recommendations", content=b"[" + b" " * limit + b"]", headers={"content-type": "application/json"})
    assert large.status_code == 413 and error_body(large)["code"] == "payload_too_large"
    assert client.get("/users/4/recommendations").status_code == 405  # other methods: the router's answer


def test_openapi_documents_the_operation(client):
    from service.schemas import ID_MAX_CHARS

    operation = client.get("/openapi.json").json()["paths"]["/users/{user_id}/recommendations"]["post"]
    (parameter,) = operation["parameters"]
    assert parameter["name"] == "user_id" and parameter["schema"]["maxLength"] == ID_MAX_CHARS
    body = operation["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/RecommendationRequest"} in body
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/RecommendationResponse"}
    assert {"401", "415", "422", "429"} <= operation["responses"].keys()
