"""Every class of malformed request gets a 4xx with the error body, never a 500 (both backends)."""

from __future__ import annotations

import json

import pytest

from _service_support import API_KEY, error_body

KEY = {"X-API-Key": API_KEY}
JSON = {"content-type": "application/json"}

CASES = [
    # (id, method, path, request kwargs, expected status, expected code)
    ("k-not-int", "post", "/users/1/recommendations", {"json": {"k": "ten"}}, 422, "validation_error"),
    ("k-zero", "post", "/users/1/recommendations", {"json": {"k": 0}}, 422, "validation_error"),
    ("k-negative", "post", "/users/1/recommendations", {"json": {"k": -3}}, 422, "validation_error"),
    ("k-huge", "post", "/users/1/recommendations", {"json": {"k": 10**9}}, 422, "k_too_large"),
    ("k-plus-offset-huge", "post", "/users/1/recommendations", {"json": {"k": 10, "offset": 10**6}}, 422, "k_too_large"),
    ("offset-negative", "post", "/users/1/recommendations", {"json": {"offset": -1}}, 422, "validation_error"),
    ("unknown-field", "post", "/users/1/recommendations", {"json": {"kk": 3}}, 422, "validation_error"),
    ("exclude-not-list", "post", "/users/1/recommendations", {"json": {"exclude_items": "50"}}, 422, "validation_error"),
    ("id-float", "post", "/users/1/recommendations", {"json": {"candidates": [1.5]}}, 422, "validation_error"),
    ("id-bool", "post", "/ratings", {"json": {"user_id": True, "item_ids": [1]}}, 422, "validation_error"),
    ("id-too-long", "post", "/ratings", {"json": {"user_id": "u" * 256, "item_ids": [1]}}, 422, "validation_error"),
    ("id-control-char", "post", "/ratings", {"json": {"user_id": "a\u0000b", "item_ids": [1]}}, 422, "validation_error"),
    ("path-id-control-char", "post", "/users/a%00b/recommendations", {"json": {}}, 422, "validation_error"),
    ("unknown-model", "post", "/users/1/recommendations", {"json": {"model": "nope"}}, 404, "unknown_model"),
    ("bad-model-name", "post", "/users/1/recommendations", {"json": {"model": "../etc"}}, 422, "validation_error"),
    ("body-is-list", "post", "/users/1/recommendations", {"json": [1, 2]}, 422, "validation_error"),
    ("bad-json", "post", "/users/1/recommendations", {"content": b'{"k": 5,', "headers": JSON}, 400, "invalid_json"),
    ("bad-json-ratings", "post", "/ratings", {"content": b"[{]", "headers": JSON}, 400, "invalid_json"),
    ("ratings-no-items", "post", "/ratings", {"json": {"user_id": 1, "item_ids": []}}, 422, "validation_error"),
    ("ratings-missing-user", "post", "/ratings", {"json": {"item_ids": [1]}}, 422, "validation_error"),
    ("ratings-unknown-model", "post", "/ratings", {"json": {"user_id": 1, "item_ids": [1], "model": "x"}}, 404, "unknown_model"),
    ("ratings-too-many-pairs", "post", "/ratings", {"json": {"user_id": 1, "item_ids": list(range(1001))}}, 413, "too_many_pairs"),
    ("interactions-empty", "post", "/interactions", {"json": [], "headers": KEY}, 422, "validation_error"),
    ("interactions-not-list", "post", "/interactions", {"json": {"user_id": 1, "item_id": 2}, "headers": KEY}, 422, "validation_error"),
    ("interactions-null-item", "post", "/interactions", {"json": [{"user_id": 1, "item_id": None}], "headers": KEY}, 422, "validation_error"),
    ("interactions-nan-rating", "post", "/interactions",
     {"content": b'[{"user_id": 1, "item_id": 2, "rating": NaN}]', "headers": {**KEY, **JSON}}, 422, "validation_error"),
    ("interactions-negative-ts", "post", "/interactions", {"json": [{"user_id": 1, "item_id": 2, "timestamp": -5}], "headers": KEY}, 422, "validation_error"),
    ("interactions-oversized-batch", "post", "/interactions",
     {"json": [{"user_id": "u", "item_id": str(i)} for i in range(1001)], "headers": KEY}, 413, "batch_too_large"),
    ("body-over-limit", "post", "/interactions",
     {"content": b"[" + b" " * 1_100_000 + b"]", "headers": {**KEY, **JSON}}, 413, "payload_too_large"),
    ("similar-k-zero", "get", "/items/50/similar?k=0", {}, 422, "validation_error"),
    ("similar-k-text", "get", "/items/50/similar?k=abc", {}, 422, "validation_error"),
    ("similar-k-huge", "get", "/items/50/similar?k=100000", {}, 422, "k_too_large"),
    ("similar-unknown-model", "get", "/items/50/similar?model=zzz", {}, 404, "unknown_model"),
    ("wrong-method", "get", "/interactions", {}, 405, "method_not_allowed"),
    ("unknown-route", "get", "/nowhere", {}, 404, "not_found"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_gets_a_4xx_error_body(client, case):
    _, method, path, kwargs, status, code = case
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert error_body(response)["code"] == code


def test_chunked_body_over_the_limit_is_refused(client):
    def chunks():
        for _ in range(40):
            yield b" " * 50_000  # no Content-Length: the limit is enforced while reading

    response = client.post("/interactions", content=chunks(), headers={**KEY, **JSON})
    assert response.status_code == 413 and error_body(response)["code"] == "payload_too_large"


def test_validation_errors_say_where(client):
    response = client.post("/users/1/recommendations", content=json.dumps({"k": "x"}), headers=JSON)
    error = error_body(response)
    assert "body.k" in error["message"] and error["details"][0]["loc"] == ["body", "k"]
