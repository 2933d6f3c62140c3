"""Experiments through the API (issue 25): created, checked, listed, stopped, shared by replicas through the
database, read from a config file, and their per-arm results computed from SQL aggregates on hand-worked
cases; on SQLite + the in-process cache and PostgreSQL + Redis."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from _service_support import API_KEY, error_body, new_user
from service.main import create_app
from storage.crud import online
from storage.migrate import upgrade_to_head
from storage.session import make_engine

KEY = {"X-API-Key": API_KEY}


def experiment(**fields) -> dict:
    return {"id": f"exp-{uuid.uuid4().hex[:8]}", "kind": "ab", "seed": 7,
            "arms": [{"name": "control", "model": "ease", "share": 0.5}, {"name": "challenger", "model": "autorec-u", "share": 0.5}],
            **fields}


def create(client, body):
    return client.post("/admin/experiments", json=body, headers=KEY)


def stop_all(client) -> None:
    for listed in client.get("/admin/experiments", headers=KEY).json():
        if listed["status"] == "running":
            client.post(f"/admin/experiments/{listed['id']}/stop", headers=KEY)


def test_an_experiment_is_created_listed_and_stopped(empty_client):
    body = experiment()
    created = create(empty_client, body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "running" and created.json()["definition"]["arms"][1]["model"] == "autorec-u"
    assert empty_client.app.state.parts.experiments.running.id == body["id"]  # this replica knows at once
    assert create(empty_client, body).status_code == 409
    running = create(empty_client, experiment())
    assert running.status_code == 409 and error_body(running)["code"] == "experiment_running"
    assert [e["id"] for e in empty_client.get("/admin/experiments", headers=KEY).json()] == [body["id"]]
    stopped = empty_client.post(f"/admin/experiments/{body['id']}/stop", headers=KEY)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped" and stopped.json()["stopped_at"]
    assert empty_client.app.state.parts.experiments.running is None
    again = create(empty_client, body)
    assert again.status_code == 409 and error_body(again)["code"] == "experiment_exists"  # ids are never reused
    assert empty_client.post("/admin/experiments/nope/stop", headers=KEY).status_code == 404
    assert empty_client.post("/admin/experiments", json=experiment()).status_code == 401


@pytest.mark.parametrize("change, code, field", [
    ({"arms": [{"name": "a", "model": "ease", "share": 0.5}, {"name": "b", "model": "nope", "share": 0.5}]}, "unknown_model", "arms.1.model"),
    ({"arms": [{"name": "a", "model": "ease", "share": 0.5}, {"name": "b", "model": "autorec-i", "share": 0.4}]}, "invalid_experiment", "arms.share"),
    ({"arms": [{"name": "a", "model": "ease", "version": "20990101T000000Z-000000", "share": 1.0}]}, "unknown_version", "arms.0.version"),
    ({"arms": [{"name": "a", "model": "ease", "version": "../registry", "share": 1.0}]}, "unknown_version", "arms.0.version"),
    ({"holdout": 0.1}, "invalid_experiment", "holdout"),  # the served version has no popularity list model
    ({"id": "Not A Slug"}, "invalid_experiment", "id"),
    ({"kind": "interleaving", "arms": [{"name": "a", "model": "ease"}]}, "invalid_experiment", "arms"),
    ({"shadow": True, "kind": "interleaving"}, "invalid_experiment", "shadow"),
])
def test_a_bad_definition_is_a_422_naming_the_field(empty_client, change, code, field):
    answer = create(empty_client, experiment(**change))
    assert answer.status_code == 422, answer.text
    error = error_body(answer)
    assert error["code"] == code and error["details"]["field"] == field, error
    assert empty_client.get("/admin/experiments", headers=KEY).json() == []


def test_a_body_that_is_not_an_experiment_is_a_422_naming_the_field(empty_client):
    answer = create(empty_client, {**experiment(), "arms": [{"name": "a", "model": "ease", "weight": 1}]})
    assert answer.status_code == 422 and error_body(answer)["details"][0]["loc"][-1] == "weight"
    assert empty_client.get("/experiments/nope").status_code == 404


def _impression(rid, exp_id, arm, items, teams=None, shadow=False):
    return online.ImpressionRecord(rid, new_user(), "ease", "v1", items, len(items), datetime.now(UTC),
                                   experiment_id=exp_id, arm=arm, shadow=shadow, teams=teams)


def _post_feedback(client, events):
    answer = client.post("/feedback", json=[{"recommendation_id": r, "item_id": i, "kind": k, **({"value": v} if v else {})}
                                            for r, i, k, v in events], headers=KEY)
    assert answer.status_code == 201, answer.text


def test_ab_results_on_a_hand_worked_case(empty_client):
    body = experiment()
    assert create(empty_client, body).status_code == 201
    recorder = empty_client.app.state.parts.recorder
    ids = [uuid.uuid4().hex for _ in range(7)]
    for rid in ids[:4]:
        recorder.record(_impression(rid, body["id"], "control", ["1", "2", "3"]))
    for rid in ids[4:6]:
        recorder.record(_impression(rid, body["id"], "challenger", ["1", "2", "3"]))
    recorder.record(_impression(ids[6], body["id"], "challenger", ["1", "2", "3"], shadow=True))
    assert recorder.flush()
    _post_feedback(empty_client, [
        (ids[0], "1", "click", None),
        (ids[1], "3", "click", None), (ids[1], "2", "rating", 4),  # best rank 2; gain 4 / log2(3)
        (ids[2], "1", "purchase", None),
        (ids[4], "2", "dismiss", None),  # not an engagement
    ])
    report = empty_client.get(f"/experiments/{body['id']}").json()
    assert report["status"] == "running" and report["kind"] == "ab" and report["decision"] == "no decision"
    arms = {a["name"]: a for a in report["arms"]}
    control, challenger = arms["control"], arms["challenger"]
    assert control["impressions"] == 4 and control["clicks"] == 4
    assert control["ctr"]["value"] == pytest.approx(3 / 4) and control["conversion"]["value"] == pytest.approx(1 / 4)
    assert control["mrr"]["value"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert control["gain"]["value"] == pytest.approx(4 / math.log2(3) / 4)
    assert control["ctr"]["low"] < 0.75 < control["ctr"]["high"]
    assert challenger["impressions"] == 2 and challenger["clicks"] == 0 and challenger["ctr"]["value"] == 0
    assert report["shadow_impressions"] == {"challenger": 1}
    [comparison] = report["comparisons"]
    assert comparison["control"] == "control" and comparison["challenger"] == "challenger"
    assert comparison["difference"] == pytest.approx(-0.75) and 0 < comparison["p_value"] < 1
    assert comparison["minimum_detectable_effect"] > 0
    first_look = comparison["sequential_p_value"]
    # the always-valid p-value never rises from one look to the next
    assert empty_client.get(f"/experiments/{body['id']}").json()["comparisons"][0]["sequential_p_value"] <= first_look
    stop_all(empty_client)


def test_interleaving_credit_on_a_hand_worked_case(empty_client):
    body = experiment(kind="interleaving")
    assert create(empty_client, body).status_code == 201
    recorder = empty_client.app.state.parts.recorder
    teams = ["control", "challenger", "control", "challenger"]
    ids = [uuid.uuid4().hex for _ in range(4)]
    for rid in ids:
        recorder.record(_impression(rid, body["id"], None, ["1", "2", "3", "4"], teams=teams))
    assert recorder.flush()
    _post_feedback(empty_client, [
        (ids[0], "1", "click", None),  # control wins
        (ids[1], "2", "click", None), (ids[1], "4", "purchase", None),  # challenger wins
        (ids[2], "3", "click", None), (ids[2], "4", "click", None),  # a tie
    ])  # ids[3]: no click
    report = empty_client.get(f"/experiments/{body['id']}").json()
    result = report["interleaving"]
    assert (result["arm_a"], result["arm_b"]) == ("control", "challenger")
    assert (result["wins_a"], result["wins_b"], result["ties"]) == (1, 1, 1)
    assert result["p_value"] == pytest.approx(1.0) and report["decision"] == "no decision"
    assert {a["name"]: a["impressions"] for a in report["arms"]} == {"interleaved": 4}
    stop_all(empty_client)


def test_replicas_learn_of_an_experiment_through_the_database(empty_backend, registry):
    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    settings = empty_backend.settings(registry, EXPERIMENTS_REFRESH_S=0.1)
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        body = experiment()
        assert create(one, body).status_code == 201
        deadline = time.monotonic() + 5
        while two.app.state.parts.experiments.running is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert two.app.state.parts.experiments.running.id == body["id"]
        one.post(f"/admin/experiments/{body['id']}/stop", headers=KEY)
        deadline = time.monotonic() + 5
        while two.app.state.parts.experiments.running is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert two.app.state.parts.experiments.running is None


def test_experiments_are_read_from_a_file_at_start(empty_backend, registry, tmp_path):
    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    toml = tmp_path / "experiments.toml"
    toml.write_text('[[experiments]]\nid = "from-file"\nkind = "ab"\nseed = 3\n\n'
                    '[[experiments.arms]]\nname = "a"\nmodel = "ease"\n\n[[experiments.arms]]\nname = "b"\nmodel = "autorec-u"\n')
    with TestClient(create_app(empty_backend.settings(registry, EXPERIMENTS_FILE=toml))) as client:
        assert client.app.state.parts.experiments.running.id == "from-file"
        assert [a.share for a in client.app.state.parts.experiments.running.arms] == [0.5, 0.5]
    # started again with the same file: the experiment exists, nothing changes
    with TestClient(create_app(empty_backend.settings(registry, EXPERIMENTS_FILE=toml))) as client:
        assert [e["id"] for e in client.get("/admin/experiments", headers=KEY).json()] == ["from-file"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "bad", "kind": "ab", "arms": [{"name": "a", "model": "nope"}]}]))
    before = set(threading.enumerate())
    with pytest.raises(ValueError, match="nope"):
        with TestClient(create_app(empty_backend.settings(registry, EXPERIMENTS_FILE=bad))):
            pass
    # the failed start stopped the watchers and the writer it had started (left running, they outlived the tests)
    assert {t.name for t in set(threading.enumerate()) - before} & {"model-watcher", "titles-keeper", "impression-writer"} == set()
