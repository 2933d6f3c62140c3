"""Faults and hostile clients under concurrent load against the real service process (the scenarios of
``bench/faults.py``, short; their speed targets are the bench's, not asserted here).

The service tests check each failure in-process, one request at a time; here 8 clients
keep a uvicorn process busy over HTTP while the fault happens, and every answer is counted.
"""

from __future__ import annotations

import pytest

from bench.faults import (
    artifact_faults, fault_rig, oversized_headers, poisoning, postgres_outage, ratings_amplification, redis_outage,
    send_head, startup_on_damaged_version,
)

SECONDS = 4.0
CLIENTS = 8


@pytest.fixture(scope="module")
def rig(servers_available, private_registry, tmp_path_factory):
    """One service for the scenarios: each leaves it healthy (Redis back, database back, a good version)."""
    with fault_rig(tmp_path_factory.mktemp("faults"), private_registry) as rig:
        yield rig


def test_redis_killed_and_restarted_mid_run_fails_no_request(rig):
    result = redis_outage(rig, seconds=SECONDS, concurrency=CLIENTS)
    assert result["passed"], result["detail"] + f"\nfirst failures: {result['load']['failures']}"
    assert result["cache_errors"] > 0  # the outage really happened under the service
    assert [step for step, _ in result["steps"]] == ["redis killed", "redis restarted"]


def test_postgres_restart_mid_run_loses_no_acknowledged_write(rig):
    result = postgres_outage(rig, seconds=SECONDS, concurrency=CLIENTS)
    assert result["passed"], result["detail"] + f"\nunexpected: {result['unexpected']} {result['load']['failures']}"
    assert result["lost"] == 0 and result["acknowledged"] > 0 and result["answered_503"] > 0


def test_broken_versions_are_refused_and_a_hot_swap_fails_no_request(rig):
    result = artifact_faults(rig, seconds=SECONDS, concurrency=CLIENTS)
    assert result["passed"], result["detail"] + f"\nchecks: {result['checks']}"
    assert result["swap"] in result["versions_seen"]
    lines = {line["fault"]: line for line in result["lines"]}
    assert {"truncated-weights, under load", "bit-flipped-weights, under load"} <= set(lines)
    assert all(line["passed"] for line in lines.values()), lines


def test_the_ratings_amplification_request_is_refused_under_load(rig):
    """Finding 3: the 886 KB POST /ratings of 180 users x 1,000 items gets its 413 (never scored: the
    service tests count that) while uncached recommendations go on without a failure."""
    result = ratings_amplification(rig, seconds=2, concurrency=4)
    attack = result["attack"]
    assert attack["requests"] > 0 and attack["statuses"] == {"413": attack["requests"]}, result["detail"]
    assert result["quiet"]["failed"] == 0 and result["load"]["failed"] == 0, result["detail"]


def test_a_1mb_header_gets_431_and_other_clients_go_on(rig):
    """Finding 4: the request head is bounded by the server (MAX_HEADER_BYTES), not read to its end."""
    assert send_head(rig.server.port, 1 << 20)[0] == 431
    assert send_head(rig.server.port, 8 << 10)[0] == 200  # a large header within the bound is served
    result = oversized_headers(rig, seconds=2, concurrency=4)
    assert result["statuses"] and set(result["statuses"]) == {431}, result["detail"]
    assert result["quiet"]["failed"] == 0 and result["load"]["failed"] == 0, result["detail"]


def test_a_truncated_or_bit_flipped_newest_version_at_start_up_serves_the_previous_one(rig):
    result = startup_on_damaged_version(rig, seconds=SECONDS, concurrency=CLIENTS)
    assert result["passed"], result["lines"]
    assert [line["fault"] for line in result["lines"]] == [
        "truncated-weights newest version, at start-up", "bit-flipped-weights newest version, at start-up"]
    assert result["load"]["requests"] > 0 and result["load"]["failed"] == 0


def test_poisoned_ratings_are_refused_by_the_api_and_the_trainer_and_the_version_keeps_serving(rig):
    result = poisoning(rig, seconds=SECONDS, concurrency=CLIENTS)
    assert result["passed"], result["detail"] + f"\nrefusals: {result['refusals']}\ntrainer: {result['trainer']}"
    assert [r["status"] for r in result["refusals"]] == [422] * 4
    assert "e.g. user 'm" in result["trainer"]["failed"] and "item '50', rating 1000;" in result["trainer"]["failed"]
