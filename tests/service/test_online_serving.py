"""Recommendations inside online evaluation (issue 25): every answer's recommendation_id and impression, the
experiment's arm by sticky assignment (A/B), team-draft mixes (interleaving), shadow scoring, pinned versions
and explicitly named models outside the experiment; on SQLite + the in-process cache and PostgreSQL + Redis."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from contextlib import contextmanager

from fastapi.testclient import TestClient
from sqlalchemy import select

from _service_support import API_KEY, copy_registry
import registry as artifacts
from service.experiments.assignment import assign
from service.main import create_app
from storage.migrate import upgrade_to_head
from storage.session import make_engine, make_session_factory
from storage.tables import Feedback, Impression

KEY = {"X-API-Key": API_KEY}
TRAINED_USERS = [str(u) for u in range(1, 41)]  # users the models know, their histories seeded


def recommend(client, user: str, **body) -> dict:
    response = client.post(f"/users/{user}/recommendations", json={"k": 5, **body})
    assert response.status_code == 200, response.text
    return response.json()


def impressions(client, *where) -> list[Impression]:
    assert client.app.state.parts.recorder.flush()
    engine = make_engine(client.backend.database_url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(Impression).where(*where)))
    finally:
        engine.dispose()


@contextmanager
def running(client, **definition):
    body = {"id": f"exp-{uuid.uuid4().hex[:8]}", "kind": "ab", "seed": 11,
            "arms": [{"name": "ease", "model": "ease"}, {"name": "autorec", "model": "autorec-u"}], **definition}
    created = client.post("/admin/experiments", json=body, headers=KEY)
    assert created.status_code == 201, created.text
    try:
        yield client.app.state.parts.experiments.running
    finally:
        client.post(f"/admin/experiments/{body['id']}/stop", headers=KEY)


def test_every_answer_hits_too_has_its_own_id_and_impression(client):
    first, hit = recommend(client, "7"), recommend(client, "7")  # the second is a cache hit
    for answer in (first, hit):
        assert re.fullmatch(r"[0-9a-f]{32}", answer["recommendation_id"]) and "experiment" not in answer
    assert first["recommendation_id"] != hit["recommendation_id"]
    assert {uuid.UUID(a["recommendation_id"]).version for a in (first, hit)} == {7}  # time-ordered: the key grows at one end
    assert first["recommendation_id"][:12] <= hit["recommendation_id"][:12]  # the millisecond prefix
    assert {k: v for k, v in first.items() if k != "recommendation_id"} == {k: v for k, v in hit.items() if k != "recommendation_id"}
    [stored] = impressions(client, Impression.recommendation_id == hit["recommendation_id"])
    assert stored.items == [i["item_id"] for i in hit["items"]] and stored.k == 5 and stored.user_id == "7"
    assert (stored.model, stored.version, stored.experiment_id, stored.teams) == (hit["model"], hit["model_version"], None, None)
    clicked = client.post("/feedback", json={"recommendation_id": hit["recommendation_id"], "item_id": hit["items"][1]["item_id"],
                                             "kind": "click"}, headers=KEY)
    assert clicked.status_code == 201 and clicked.json()["stored"] == 1


def test_ab_serves_each_user_their_arm_and_a_named_model_is_outside(client):
    with running(client) as experiment:
        arms = {a.name: a.model for a in experiment.arms}
        seen = {}
        for user in TRAINED_USERS:
            answer = recommend(client, user)
            expected = assign(experiment, user).name
            assert answer["experiment"] == {"id": experiment.id, "arm": expected}
            assert answer["model"] == arms[expected]
            again = recommend(client, user)
            assert again["experiment"]["arm"] == expected  # sticky
            seen |= {answer["recommendation_id"]: expected, again["recommendation_id"]: expected}
        assert set(seen.values()) == {"ease", "autorec"}
        stored = {i.recommendation_id: i.arm for i in impressions(client, Impression.experiment_id == experiment.id)}
        assert stored == seen
        named = recommend(client, "3", model="autorec-u")
        assert "experiment" not in named
        [outside] = impressions(client, Impression.recommendation_id == named["recommendation_id"])
        assert outside.experiment_id is None


def test_a_replica_serves_a_user_the_same_arm(client, registry):
    with running(client) as experiment:
        with TestClient(create_app(client.backend.settings(registry))) as replica:
            for user in TRAINED_USERS[:10]:
                assert recommend(replica, user)["experiment"] == recommend(client, user)["experiment"]


def test_interleaving_mixes_both_lists_and_credits_the_arm_that_picked(client):
    with running(client, kind="interleaving") as experiment:
        user = "12"
        lists = {m: [i["item_id"] for i in recommend(client, user, model=m)["items"]] for m in ("ease", "autorec-u")}
        answer = recommend(client, user)
        assert answer["experiment"] == {"id": experiment.id, "arm": "interleaved"}
        items = [i["item_id"] for i in answer["items"]]
        assert len(items) == len(set(items)) == 5 and [i["rank"] for i in answer["items"]] == [1, 2, 3, 4, 5]
        [stored] = impressions(client, Impression.recommendation_id == answer["recommendation_id"])
        assert stored.items == items and stored.arm is None and len(stored.teams) == 5
        for item, team in zip(items, stored.teams):
            assert item in lists["ease" if team == "ease" else "autorec-u"]
        # each arm picks its best remaining item in turn: the first two picks are the two lists' heads
        assert {items[0], items[1]} <= {lists["ease"][0], lists["autorec-u"][0], lists["ease"][1], lists["autorec-u"][1]}
        clicked = client.post("/feedback", json={"recommendation_id": answer["recommendation_id"], "item_id": items[0],
                                                 "kind": "click"}, headers=KEY)
        assert clicked.status_code == 201
        report = client.get(f"/experiments/{experiment.id}").json()
        wins = report["interleaving"]
        assert wins[f"wins_{'a' if stored.teams[0] == 'ease' else 'b'}"] == 1


def test_shadow_arms_score_the_request_unserved(client):
    with running(client, shadow=True) as experiment:
        answer = recommend(client, "21")
        assert answer["experiment"] == {"id": experiment.id, "arm": "ease"} and answer["model"] == "ease"
        rows = impressions(client, Impression.experiment_id == experiment.id, Impression.user_id == "21")
        for _ in range(50):  # the shadow list is scored after the answer: give it a moment
            if len(rows) == 2:
                break
            time.sleep(0.05)
            rows = impressions(client, Impression.experiment_id == experiment.id, Impression.user_id == "21")
        assert sorted((r.arm, r.shadow, r.model) for r in rows) == [("autorec", True, "autorec-u"), ("ease", False, "ease")]
        shadow = next(r for r in rows if r.shadow)
        missing = client.post("/feedback", json={"recommendation_id": shadow.recommendation_id, "item_id": shadow.items[0],
                                                 "kind": "click"}, headers=KEY)
        assert missing.status_code == 404  # a shadow list was never shown
        assert client.get(f"/experiments/{experiment.id}").json()["shadow_impressions"] == {"autorec": 1}


def test_an_arm_pinned_to_another_version_is_served_by_it(tmp_path, registry, own_seeded_backend):
    root = tmp_path / "registry"
    served = copy_registry(registry, root)
    other = artifacts.new_version_name(root)
    shutil.copytree(root / served, root / other)
    manifest = json.loads((root / other / "manifest.json").read_text())
    (root / other / "manifest.json").write_text(json.dumps({**manifest, "version": other}))
    with TestClient(create_app(own_seeded_backend.settings(root))) as client:
        client.backend = own_seeded_backend
        pinned = [{"name": "now", "model": "ease"}, {"name": "pinned", "model": "ease", "version": other}]
        with running(client, arms=pinned) as experiment:
            for user in TRAINED_USERS[:12]:
                answer = recommend(client, user)
                arm = assign(experiment, user).name
                assert answer["experiment"]["arm"] == arm
                assert answer["model_version"] == (other if arm == "pinned" else served)


def test_the_schema_documents_the_id_and_the_experiment(client):
    response = client.get("/openapi.json").json()["components"]["schemas"]["RecommendationResponse"]
    assert {"recommendation_id", "experiment"} <= set(response["properties"])
    assert "recommendation_id" in response["required"]


def test_held_out_users_get_the_popularity_list(tmp_path, trained, corpus, own_seeded_backend):
    import numpy as np
    import scipy.sparse as sp

    from _service_support import POSITIVE, publish_version
    from models.base import TrainData
    from models.baselines import fit_baseline

    popularity = fit_baseline("popularity", TrainData(sp.csr_matrix(corpus.X >= POSITIVE, dtype=np.float32)))
    popularity.training_log = {"fit_seconds": 0.0, "curve": []}
    root = tmp_path / "registry"
    publish_version(root, {"ease": trained["ease"], "popularity": popularity}, corpus, lists=False)
    with TestClient(create_app(own_seeded_backend.settings(root))) as client:
        client.backend = own_seeded_backend
        with running(client, holdout=0.3, arms=[{"name": "ease", "model": "ease"}]) as experiment:
            arms = {}
            for user in TRAINED_USERS:
                answer = recommend(client, user)
                arms[user] = answer["experiment"]["arm"]
                assert answer["model"] == ("popularity" if arms[user] == "holdout" else "ease")
                assert arms[user] == assign(experiment, user).name
            assert set(arms.values()) == {"ease", "holdout"}
            assert client.app.state.parts.recorder.flush()
            report = client.get(f"/experiments/{experiment.id}").json()
            counts = {a["name"]: a["impressions"] for a in report["arms"]}
            assert counts == {"ease": sum(a == "ease" for a in arms.values()), "holdout": sum(a == "holdout" for a in arms.values())}
            assert [c["in_decision"] for c in report["comparisons"]] == [False]  # the holdout never wins the experiment
