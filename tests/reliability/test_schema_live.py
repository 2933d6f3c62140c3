"""Schemathesis against the live server's own OpenAPI document, over real HTTP: the answers match the schema.

The service tests fuzz the app in-process for 5xx and the error body. Here the running
``python -m service`` (default settings: SQLite + in-process cache) is fuzzed with valid
and invalid requests, and every answer is checked against the schema it publishes: no
5xx, only documented status codes, documented content types and headers, and bodies that
validate against the response schemas.

Two mismatches between the schema and the behaviour are pinned as known defects (the
tests at the bottom): reads are documented as needing the API key although by default
they do not, and the schema does not state the ``MAX_K`` limit that requests are held to.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks as openapi_checks

from bench._common import API_KEY, ServerProcess, service_env

EXAMPLES = 15  # per operation and generation mode: ~200 requests in all
CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]
READS = [("post", "/users/1/recommendations", {"k": 5}), ("post", "/ratings", {"user_id": "1", "item_ids": ["1"]}),
         ("get", "/items/50/similar", None), ("get", "/models", None)]


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("schema")
    env = service_env(f"sqlite:///{workdir / 'schema.db'}", registry)
    with ServerProcess.service(env, workdir / "service.log") as server:
        yield server


@pytest.fixture(scope="module")
def openapi(server) -> dict:
    return httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()


def test_every_answer_matches_the_published_schema(server):
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    violations: dict[tuple[str, str], str] = {}
    requests = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode), headers=st.sampled_from([{}, {"X-API-Key": API_KEY}]))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def run(case, headers):
                nonlocal requests
                requests += 1
                response = case.call(headers=headers, timeout=30)
                for check in CHECKS:
                    try:
                        case.validate_response(response, checks=[check], headers=headers)
                    except AssertionError as failure:  # schemathesis' failures are AssertionErrors
                        violations.setdefault((operation.label, check.__name__), str(failure)[:1500])

            try:
                run()
            except Unsatisfiable:  # an operation without inputs has no invalid variant to generate
                assert mode is GenerationMode.NEGATIVE
    assert requests > 100
    assert not violations, "\n\n".join(f"{op} [{check}]:\n{text}" for (op, check), text in violations.items())


def _needs_key(openapi: dict, method: str, path_template: str) -> bool:
    security = openapi["paths"][path_template][method].get("security", openapi.get("security", []))
    return bool(security) and {} not in security  # an empty requirement object means "or no key at all"


def test_reads_are_documented_as_they_behave(server, openapi):
    templates = {"/users/1/recommendations": "/users/{user_id}/recommendations", "/items/50/similar": "/items/{item_id}/similar"}
    for method, path, body in READS:
        answered = httpx.request(method, f"{server.base_url}{path}", json=body, timeout=10).status_code
        documented = _needs_key(openapi, method, templates.get(path, path))
        assert documented == (answered in (401, 403)), f"{method.upper()} {path}: documented key {documented}, answered {answered}"


def test_the_k_limit_is_in_the_schema(openapi):
    body = openapi["components"]["schemas"]["RecommendationRequest"]["properties"]
    similar = {p["name"]: p for p in openapi["paths"]["/items/{item_id}/similar"]["get"]["parameters"]}
    assert body["k"].get("maximum") == 1000 and similar["k"]["schema"].get("maximum") == 1000
