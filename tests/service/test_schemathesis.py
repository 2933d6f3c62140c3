"""Property-based fuzzing of the live OpenAPI schema (schemathesis): no input makes a 5xx.

Valid (positive) and invalid (negative) requests are generated for every operation, with
and without the API key, against the running app on both backends (on a database of its own, since valid
writes land in it); every answer is below 500, and every error carries the one error body.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from _service_support import API_KEY
from service.training_runs import TrainingRun

EXAMPLES = 25  # per operation and generation mode; bounded so a run stays well under a minute


def _check(case, headers):
    response = case.call(headers=headers)
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message", "details"} == set(body["error"]), response.text


def test_no_generated_request_causes_a_server_error(empty_client, tmp_path):
    runs = empty_client.app.state.parts.training_runs

    def recorded(models, seed):  # the request is checked for real; no trainer process per generated case
        runs.last = TrainingRun("fuzz", models, seed, [], tmp_path / "none.log", 0, 0.0, 0.0, 0)
        return runs.last

    runs.start = recorded
    schema = schemathesis.openapi.from_asgi("/openapi.json", empty_client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 16  # every route is in the schema, so every route is fuzzed
    headers = st.sampled_from([{}, {"X-API-Key": API_KEY}])
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode), headers=headers)
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def run(case, headers):
                _check(case, headers)

            try:
                run()
            except Unsatisfiable:
                # GET /healthz and friends take no input at all: there is nothing invalid to send
                assert mode is GenerationMode.NEGATIVE, operation.label
