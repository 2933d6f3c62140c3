"""Faults under concurrent load against the real service process (the scenarios of ``bench/faults.py``, short).

The service tests check each failure in-process, one request at a time; here 8 clients
keep a uvicorn process busy over HTTP while the fault happens, and every answer is counted.
"""

from __future__ import annotations

import pytest

from bench.faults import artifact_faults, fault_rig, postgres_outage, redis_outage, startup_on_damaged_version

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


def test_a_truncated_or_bit_flipped_newest_version_at_start_up_serves_the_previous_one(rig):
    result = startup_on_damaged_version(rig, seconds=SECONDS, concurrency=CLIENTS)
    assert result["passed"], result["lines"]
    assert [line["fault"] for line in result["lines"]] == [
        "truncated-weights newest version, at start-up", "bit-flipped-weights newest version, at start-up"]
    assert result["load"]["requests"] > 0 and result["load"]["failed"] == 0
