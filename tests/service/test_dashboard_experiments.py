"""The dashboard's Experiments pages (issue 25): the list, and one experiment's report showing the numbers
``GET /experiments/{id}`` answers, on SQLite + the in-process cache and PostgreSQL + Redis."""

from __future__ import annotations

import html as html_text
import re
import uuid

from fastapi.testclient import TestClient

from _service_support import API_KEY
from service.main import create_app

KEY = {"X-API-Key": API_KEY}
USERS = [str(u) for u in range(1, 25)]  # users the models know, their histories seeded


def start(client, **definition) -> str:
    body = {"id": f"exp-{uuid.uuid4().hex[:8]}", "kind": "ab", "seed": 5,
            "arms": [{"name": "ease", "model": "ease", "share": 0.5}, {"name": "autorec", "model": "autorec-u", "share": 0.5}],
            **definition}
    created = client.post("/admin/experiments", json=body, headers=KEY)
    assert created.status_code == 201, created.text
    return body["id"]


def serve_and_click(client, experiment_id: str) -> None:
    """Serve each user a list and click the first item of every third list, rate the second of every fourth."""
    for n, user in enumerate(USERS):
        answer = client.post(f"/users/{user}/recommendations", json={"k": 5})
        assert answer.status_code == 200 and answer.json()["experiment"]["id"] == experiment_id, answer.text
        rid, items = answer.json()["recommendation_id"], [i["item_id"] for i in answer.json()["items"]]
        events = ([{"recommendation_id": rid, "item_id": items[0], "kind": "click"}] if n % 3 == 0 else []) + \
                 ([{"recommendation_id": rid, "item_id": items[1], "kind": "rating", "value": 4}] if n % 4 == 0 else [])
        if events:
            assert client.post("/feedback", json=events, headers=KEY).status_code == 201
    assert client.app.state.parts.recorder.flush()


def cell(page: str, arm: str, metric: str) -> str:
    row = page.split(f'<tr data-arm="{arm}">', 1)[1].split("</tr>", 1)[0]
    inner = row.split(f'data-metric="{metric}">', 1)[1].split("</td>", 1)[0]
    return " ".join(re.sub(r"<[^>]+>", "", inner).split())


def shown(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def test_an_ab_experiment_page_shows_the_api_report(client):
    experiment_id = start(client)
    try:
        before = client.get(f"/dashboard/experiments/{experiment_id}")  # nothing served yet: no value, no interval
        assert before.status_code == 200 and before.text.count("no impressions") == 2 * 5
        serve_and_click(client, experiment_id)
        listing = client.get("/dashboard/experiments")
        assert listing.status_code == 200 and f'href="/dashboard/experiments/{experiment_id}"' in listing.text
        row = listing.text.split(f'<tr data-experiment="{experiment_id}">', 1)[1].split("</tr>", 1)[0]
        assert "ab" in row and "ease: ease latest, 50 %" in row and "autorec: autorec-u latest, 50 %" in row and ">running<" in row
        report = client.get(f"/experiments/{experiment_id}").json()
        page = client.get(f"/dashboard/experiments/{experiment_id}")
        assert page.status_code == 200 and "<script" not in page.text
        text = html_text.unescape(page.text)
        assert sum(a["impressions"] for a in report["arms"]) == len(USERS)
        for arm in report["arms"]:
            assert f'<td class="num">{arm["impressions"]}</td><td class="num">{arm["clicks"]}</td>' in page.text
            for metric in ("ctr", "hit_rate", "mrr", "gain", "conversion"):
                e = arm[metric]
                expected = shown(e["value"]) + (f" [{shown(e['low'])}, {shown(e['high'])}]" if e["low"] is not None else "")
                assert html_text.unescape(cell(page.text, arm["name"], metric)) == expected, (arm["name"], metric)
        [comparison] = report["comparisons"]
        challenger = text.split(f'<tr data-challenger="{comparison["challenger"]}">', 1)[1].split("</tr>", 1)[0]
        for value in (comparison["difference"], comparison["sequential_p_value"], comparison["p_value"],
                      comparison["minimum_detectable_effect"]):
            assert shown(value) in challenger
        assert f'data-testid="decision" class="">{report["decision"]}<' in page.text
        assert page.text.count('<svg class="chart"') == 5  # one interval chart per metric
    finally:
        client.post(f"/admin/experiments/{experiment_id}/stop", headers=KEY)
    stopped = client.get("/dashboard/experiments").text.split(f'<tr data-experiment="{experiment_id}">', 1)[1].split("</tr>", 1)[0]
    assert ">stopped<" in stopped


def test_an_interleaving_experiment_page_shows_wins_and_ties(client):
    experiment_id = start(client, kind="interleaving", arms=[{"name": "ease", "model": "ease"}, {"name": "autorec", "model": "autorec-u"}])
    try:
        serve_and_click(client, experiment_id)
        report = client.get(f"/experiments/{experiment_id}").json()
        page = client.get(f"/dashboard/experiments/{experiment_id}").text
    finally:
        client.post(f"/admin/experiments/{experiment_id}/stop", headers=KEY)
    result = report["interleaving"]
    assert result["wins_a"] + result["wins_b"] + result["ties"] > 0
    for testid, key in (("wins-a", "wins_a"), ("wins-b", "wins_b"), ("ties", "ties")):
        assert f'data-testid="{testid}">{result[key]}<' in page
    assert shown(result["sequential_p_value"]) in page and shown(result["p_value"]) in page


def test_an_unknown_experiment_is_a_404_page(client):
    page = client.get("/dashboard/experiments/no-such-experiment")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "unknown_experiment" in page.text and "no-such-experiment" in page.text
    assert client.get("/experiments/no-such-experiment").status_code == 404  # the same answer as the API's


def test_experiment_pages_need_the_read_key_like_the_others(seeded_backend, registry):
    app = create_app(seeded_backend.settings(registry, ENVIRONMENT="staging", READS_REQUIRE_KEY=True,
                                             READ_API_KEY="read-key-7d1e0b", WRITE_API_KEY="write-key-2a9c44"))
    with TestClient(app) as browser:
        other = browser.get("/dashboard/data")
        for path in ("/dashboard/experiments", "/dashboard/experiments/no-such-experiment"):
            refused = browser.get(path)
            assert refused.status_code == other.status_code == 401 and 'name="key"' in refused.text
            assert f'name="next" value="{path}"' in refused.text
        assert browser.get("/dashboard/experiments", headers={"X-API-Key": "read-key-7d1e0b"}).status_code == 200
