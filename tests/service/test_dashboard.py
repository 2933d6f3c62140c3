"""The dashboard's pages and the data behind them, on both backends (``client``): each page answers
HTML, shows what the API answers, and its aggregates match the seeded corpus counted in numpy."""

from __future__ import annotations

import html as html_text
import json
import math
import os
import re
import shutil
import time
from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient

from _service_support import API_KEY
from models import REGISTRY
from registry import latest_version
from service import dashboard, svg
from service import traffic as traffic_page
from service.core.config import Settings
from service.main import create_app
from storage import crud

PAGES = ["/dashboard", "/dashboard/models/ease", "/dashboard/models/autorec-u", "/dashboard/data", "/dashboard/traffic",
         "/dashboard/users", "/dashboard/users?user_id=1&items=1,2,50", "/dashboard/items", "/dashboard/items?q=toy&item_id=1"]


def listed(html: str) -> dict[str, list[str]]:
    """Item ids per model card of a page, in the order shown."""
    cards = re.split(r'<div class="card" data-model="', html)[1:]
    return {card.split('"', 1)[0]: re.findall(r'<li data-item-id="([^"]+)"', card) for card in cards}


@pytest.mark.parametrize("path", PAGES)
def test_every_page_answers_html(client, path):
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "<nav" in response.text and "</html>" in response.text
    assert "<script" not in response.text  # server-rendered: no script, nothing fetched from elsewhere
    assert not re.search(r'(src|href)="https?://', response.text)


def test_root_redirects_to_the_dashboard_and_pages_stay_out_of_the_api_document(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/dashboard"
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p == "/" or p.startswith("/dashboard")]


def test_overview_shows_the_served_version_models_defaults_and_health(client, registry):
    html = client.get("/dashboard").text
    version = latest_version(registry)
    assert f'data-testid="version">{version}<' in html
    for name in ("ease", "autorec-u", "autorec-i"):
        assert f'href="/dashboard/models/{name}"' in html
    assert html.count('class="ok">up<') == 3  # database, cache, model store
    assert "no gate (first version of this model)" in html  # one version published: no gate ran


def test_overview_data_puts_the_previous_versions_metrics_beside(client, registry, tmp_path):
    from _service_support import copy_registry
    import registry as artifacts
    from service.metrics import Metrics
    from service.model_store import ModelStore

    root = tmp_path / "registry"
    older = copy_registry(registry, root)
    newer = artifacts.new_version_name(root)
    shutil.copytree(root / older, root / newer)
    for version, ndcg in ((older, 0.4), (newer, 0.5)):  # the manifest is not among its own checksums
        manifest = json.loads((root / version / "manifest.json").read_text())
        manifest["version"] = version
        manifest["models"]["ease"]["metrics"] = {"ndcg@10": ndcg}
        manifest["models"]["ease"]["protocol"] = "strong"
        manifest["baselines"] = {"strong": {"popularity": {"valid": {"ndcg@100": 0.2}, "test": {"ndcg@10": ndcg / 2}}}}
        (root / version / "manifest.json").write_text(json.dumps(manifest))
    (root / "LATEST").write_text(newer + "\n")
    store = ModelStore(root, Metrics(), 60)
    assert store.reload().version == newer
    settings = client.app.state.parts.settings.model_copy(update={"ARTIFACTS_DIR": root})
    page = dashboard.overview(client.app.state.parts.session_factory(), client.app.state.parts.cache, store, settings)
    assert page["previous"] == older and [r["version"] for r in page["runs"]] == [newer, older]
    ease = next(m for m in page["models"] if m["name"] == "ease")
    assert ease["metrics"] == {"ndcg@10": 0.5} and ease["previous"] == {"ndcg@10": 0.4}
    assert ease["default_for"] == ["recommendations"] and page["metric_names"] == ["ndcg@10"]
    assert ease["baselines"] == {"popularity": {"ndcg@10": 0.25}}  # the trainer's record of its split's baseline
    assert page["defaults"]["recommendations"] == "ease"  # what "best" resolved to, not the setting's word


def test_learning_curve_draws_loss_and_metric_and_marks_the_kept_epoch():
    metrics = {"curve": [{"epoch": e, "loss": 1 / e, "ndcg@100": 0.1 * e if e < 4 else 0.3} for e in range(1, 7)], "best_epoch": 3}
    chart = str(dashboard.learning_curve(metrics, "ndcg@100"))
    assert chart.startswith("<svg") and chart.count("<polyline") == 2
    assert "validation ndcg@100" in chart and "training loss" in chart and "kept epoch 3" in chart
    marker = re.search(r'<line class="marker" x1="([\d.]+)"', chart)
    x = float(marker.group(1))  # epoch 3 of 1..6: two fifths of the way across the plot
    assert math.isclose(x, svg.LEFT + (svg.WIDTH - svg.LEFT - svg.RIGHT) * 2 / 5, abs_tol=0.1)
    assert dashboard.learning_curve({"curve": []}, None) is None


def test_model_page_shows_the_recorded_curve_and_an_unknown_model_is_a_404_page(client):
    html = client.get("/dashboard/models/autorec-u").text
    assert "<svg" in html and "training loss" in html  # the fixture trains 20 epochs and records the curve
    response = client.get("/dashboard/models/nope")
    assert response.status_code == 404 and "unknown_model" in response.text and "<nav" in response.text


def test_data_aggregates_match_the_stored_rows(client):
    # the stored rows, read plainly and counted in numpy (other tests of this session write to this database too)
    from sqlalchemy import select

    from storage.tables import Interaction

    with crud.reads(client.app.state.parts.session_factory()) as db:
        stored = db.execute(select(Interaction.user_id, Interaction.item_id, Interaction.rating, Interaction.timestamp)).all()
        counts = crud.counts(db)
        histogram = crud.rating_histogram(db)
        width, over_time = crud.interactions_over_time(db, buckets=10)
        popularity = crud.item_interaction_counts(db)
    users, items, ratings, stamps = (list(c) for c in zip(*stored))
    assert counts["interactions"] == len(stored) and counts["users"] >= len(set(users)) and counts["items"] >= len(set(items))
    assert histogram == sorted(Counter(ratings).items(), key=lambda p: (p[0] is not None, p[0] or 0))
    stamps = np.asarray(stamps)
    assert len(over_time) <= 10 and over_time[0][0] == stamps.min()
    expected = np.bincount((stamps - stamps.min()) // width)
    assert [n for _, n in over_time] == [int(n) for n in expected if n]
    assert popularity == sorted(Counter(items).values(), reverse=True)
    html = client.get("/dashboard/data").text
    assert f'data-testid="interactions">{counts["interactions"]}<' in html and html.count("<svg") == 3
    assert f'data-testid="items">{counts["items"]}<' in html and f'data-testid="users">{counts["users"]}<' in html


def test_users_page_shows_the_apis_lists_and_ratings_and_the_history(client):
    html = client.get("/dashboard/users", params={"user_id": "1", "items": "1, 2 50"}).text
    api = client.post("/users/1/recommendations", json={"k": 10, "model": "ease"}).json()
    assert listed(html) == {"ease": [i["item_id"] for i in api["items"]]}  # every ranker of the version: EASE here
    explained = client.post("/users/1/recommendations", json={"k": 10, "model": "ease", "explain": True}).json()
    why = [html_text.unescape(w) for w in re.findall(r'<span class="muted" data-testid="why">because of ([^<]+)</span>', html)]
    assert why == ["; ".join(r["title"] for r in i["because"] if r["contribution"] > 0) for i in explained["items"]]
    assert len(why) == 10, "every item of EASE's list says why"
    for model in ("autorec-u", "autorec-i"):
        predicted = client.post("/ratings", json={"user_id": "1", "item_ids": ["1", "2", "50"], "model": model}).json()
        cells = re.findall(rf'<td class="num" data-model="{model}">([^<]+)</td>', html)
        assert cells == [f"{r['rating']:.2f}" for r in predicted["ratings"]]
    with crud.reads(client.app.state.parts.session_factory()) as db:
        history = crud.user_history(db, "1")  # as stored now: other tests of the session may write for user 1
    n = len(history)
    assert (f"{n} interactions; the latest {dashboard.HISTORY_ROWS}" if n > dashboard.HISTORY_ROWS else f"{n} interactions.") in html
    assert dashboard.when(int(history.timestamps.max())) in html.split('id="history"')[1]


def test_users_page_says_why_a_list_is_missing(client):
    html = client.get("/dashboard/users", params={"user_id": "nobody-here"}).text
    assert "No interactions stored for this user." in html
    assert listed(html)["ease"]  # a stranger gets the popular items from EASE, as from the API


def test_items_page_searches_titles_and_ids_and_shows_similar_items_per_model(client, corpus):
    html = client.get("/dashboard/items", params={"q": "toy story"}).text
    assert 'href="/dashboard/items?item_id=1"' in html  # Toy Story (1995) is item 1 of ml-100k
    with crud.reads(client.app.state.parts.session_factory()) as db:
        assert crud.search_items(db, "1")[0][0] == "1"  # an exact id comes first
        assert crud.search_items(db, "100%") == []  # "%" is a character, not a wildcard
    html = client.get("/dashboard/items", params={"item_id": "1"}).text
    assert "Items similar to Toy Story (1995)" in html
    api = client.get("/items/1/similar", params={"model": "ease", "k": 10}).json()
    lists = listed(html)
    assert lists["ease"] == [i["item_id"] for i in api["items"]]
    assert set(lists) == {"ease", "autorec-u", "autorec-i"}


def test_traffic_counts_the_apis_requests_per_route_and_model_and_says_whose(client):
    metrics = client.app.state.parts.metrics
    before = {(r["route"], r["model"]): r["requests"] for r in traffic_page.traffic(metrics, time.time())["rows"]}
    for _ in range(3):
        client.get("/items/1/similar", params={"model": "ease"})
    client.get("/dashboard")
    page = traffic_page.traffic(metrics, time.time())
    row = next(r for r in page["rows"] if r["route"] == "/items/{item_id}/similar" and r["model"] == "ease")
    assert row["requests"] == before.get(("/items/{item_id}/similar", "ease"), 0) + 3
    assert row["in_window"] >= 3 and math.isclose(row["per_second"], row["in_window"] / page["window_s"])
    assert 0 < row["p50"] <= row["p95"] <= row["p99"]
    assert not [r for r in page["rows"] if r["route"].startswith("/dashboard")]
    assert any(c["kind"] == "similar" and c["hits"] >= 2 for c in page["cache"])
    html = client.get("/dashboard/traffic").text
    assert "/items/{item_id}/similar" in html and f'http-equiv="refresh" content="{traffic_page.REFRESH_S}"' in html
    source = re.search(r'data-testid="traffic-source">(.*?)</p>', html, re.S).group(1)
    assert "This process" in source and f"pid {os.getpid()}" in source  # one replica's view, and it says so


def test_traffic_rates_are_over_a_recent_window_between_two_readings():
    from service.metrics import Metrics

    metrics = Metrics()
    t = metrics.started

    def similar(n: int, status: str = "200", seconds: float = 0.004) -> None:
        for _ in range(n):
            metrics.requests.labels("GET", "/items/{item_id}/similar", status, "ease").inc()
            metrics.latency.labels("GET", "/items/{item_id}/similar", "ease").observe(seconds)

    def row(page: dict) -> dict:
        return next(r for r in page["rows"] if r["route"] == "/items/{item_id}/similar")

    similar(5)
    first = traffic_page.traffic(metrics, t + 10)  # no reading before: since the process started
    assert first["from_start"] and math.isclose(row(first)["per_second"], 0.5) and row(first)["in_window"] == 5
    similar(3, seconds=0.4)
    similar(1, status="503", seconds=0.4)
    second = traffic_page.traffic(metrics, t + 40)  # from the reading at t + 10
    assert not second["from_start"] and math.isclose(second["window_s"], 30)
    assert row(second)["in_window"] == 4 and row(second)["requests"] == 9 and math.isclose(row(second)["per_second"], 4 / 30)
    assert math.isclose(row(second)["server_errors"], 0.25) and row(second)["client_errors"] == 0
    assert 0.25 < row(second)["p50"] <= 0.5  # only the window's slow requests, not the 5 fast ones before it
    traffic_page.traffic(metrics, t + 40.5)  # under MIN_GAP_S after the last: not kept
    similar(6)
    third = traffic_page.traffic(metrics, t + 100)  # the reading at t + 40 is now WINDOW_S old: the window starts there
    assert math.isclose(third["window_s"], 60) and row(third)["in_window"] == 6 and math.isclose(row(third)["per_second"], 0.1)
    assert row(third)["server_errors"] == 0 and row(third)["p99"] <= 0.005
    quiet = traffic_page.traffic(metrics, t + 200)
    assert row(quiet)["in_window"] == 0 and row(quiet)["p50"] is None and row(quiet)["server_errors"] is None


def test_quantiles_interpolate_within_buckets():
    buckets = [(0.01, 0.0), (0.1, 50.0), (1.0, 100.0), (math.inf, 100.0)]
    assert math.isclose(traffic_page._quantile(buckets, 0.5), 0.1)
    assert math.isclose(traffic_page._quantile(buckets, 0.25), 0.055)
    assert math.isclose(traffic_page._quantile(buckets, 0.75), 0.55)
    assert traffic_page._quantile([(math.inf, 0.0)], 0.5) is None


def test_pages_need_the_read_key_where_reads_do(seeded_backend, registry):
    app = create_app(seeded_backend.settings(registry, ENVIRONMENT="staging", READS_REQUIRE_KEY=True,
                                             READ_API_KEY="read-key-7d1e0b", WRITE_API_KEY="write-key-2a9c44"))
    with TestClient(app) as browser:
        response = browser.get("/dashboard/data")
        assert response.status_code == 401 and 'name="key"' in response.text and "Interactions" not in response.text
        form = browser.get("/dashboard/users", params={"user_id": "1"}).text
        assert 'name="next" value="/dashboard/users?user_id=1"' in form  # the key form leads back to the lookup
        assert browser.post("/dashboard/key", data={"key": "wrong", "next": "/dashboard/data"}).status_code == 403
        kept = browser.post("/dashboard/key", data={"key": "read-key-7d1e0b", "next": "/dashboard/data"}, follow_redirects=False)
        assert kept.status_code == 303 and kept.headers["location"] == "/dashboard/data"
        cookie = kept.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/dashboard" in cookie
        assert browser.get("/dashboard/data").status_code == 200  # the cookie now
        off_site = browser.post("/dashboard/key", data={"key": API_KEY, "next": "https://elsewhere.example/"}, follow_redirects=False)
        assert off_site.headers["location"] == "/dashboard"
    with TestClient(app) as script:
        assert script.get("/dashboard", headers={"X-API-Key": "write-key-2a9c44"}).status_code == 200


def test_items_page_says_how_often_each_ranker_recommends_the_item(client, registry):
    from trainer import top_lists

    version = latest_version(registry)
    served = client.app.state.parts.store.current.models["ease"]
    stored = np.load(registry / version / "ease" / top_lists.ITEMS_FILE)  # the published file, read plainly
    with_lists = stored[stored[:, 0] >= 0]
    rows = dashboard.how_often_recommended(client.app.state.parts.store, "50")
    assert [r["model"] for r in rows] == ["ease"]  # the rankers only: AutoRec-U and -I rate
    col = served.item_index.get("50")
    expected_k = int(sum(col in user[:dashboard.LIST_K] for user in with_lists))
    expected_n = int(sum(col in user for user in with_lists))
    assert rows[0] == {"model": "ease", "k": dashboard.LIST_K, "error": None, "top_k": expected_k, "top_n": expected_n,
                       "users": len(with_lists), "n": stored.shape[1]}
    assert 0 < expected_k <= expected_n
    counted = dashboard._list_counts[(version, "ease")]
    in_top_k, in_top_n = counted[0], counted[1]
    assert in_top_k.sum() == (with_lists[:, :dashboard.LIST_K] >= 0).sum() and in_top_n.sum() == (with_lists >= 0).sum()
    dashboard.how_often_recommended(client.app.state.parts.store, "1")
    assert dashboard._list_counts[(version, "ease")] is counted  # once per version, not per request
    assert dashboard.how_often_recommended(client.app.state.parts.store, "no-such-item")[0]["error"] == "not in this model's items"
    html = client.get("/dashboard/items", params={"item_id": "50"}).text
    assert f'<td class="num" data-testid="top-k">{expected_k}</td>' in html and f'data-testid="top-n">{expected_n}<' in html


def test_next_scheduled_run_is_read_from_the_schedules_record(tmp_path):
    from datetime import UTC, datetime

    from trainer import schedule

    assert dashboard.NEXT_RUN_FILE == schedule.NEXT_RUN_FILE  # the writer's name and the reader's copy
    settings = Settings(ARTIFACTS_DIR=tmp_path)
    now = time.time()
    assert dashboard.next_run(settings, now)["due"] is None and "no schedule" in dashboard.next_run(settings, now)["text"]
    trigger = schedule.make_trigger(None, "0 3 * * *")
    due = datetime.fromtimestamp(now + 3600, UTC)
    schedule.record_next_run(tmp_path, due, trigger)
    shown = dashboard.next_run(settings, now)
    assert shown["due"] == due.timestamp() and not shown["overdue"]
    assert shown["text"] == f"{dashboard.when(due.timestamp())} UTC ({trigger})"
    late = dashboard.next_run(settings, now + 7200)  # a record an hour past due: the scheduler stopped without removing it
    assert late["overdue"] and f"pid {os.getpid()}" in late["text"]
    (tmp_path / schedule.NEXT_RUN_FILE).write_text("{not json")
    assert "unreadable" in dashboard.next_run(settings, now)["text"]
    schedule.record_next_run(tmp_path, None, trigger)
    assert not (tmp_path / schedule.NEXT_RUN_FILE).exists() and dashboard.next_run(settings, now)["due"] is None


def _admin_browser(client) -> TestClient:
    """A browser of its own (its own cookies) on the session's app, holding the admin key in the dashboard's cookie."""
    browser = TestClient(client.app, raise_server_exceptions=False)
    kept = browser.post("/dashboard/key", data={"key": API_KEY, "next": "/dashboard"}, follow_redirects=False)
    assert kept.status_code == 303
    return browser


def _token(html: str) -> str:
    return re.search(r'name="token" value="([0-9a-f]{64})"', html).group(1)


def test_admin_actions_show_only_with_the_admin_key(client):
    html = client.get("/dashboard").text  # development: no key needed to read, and none given
    assert 'id="admin-actions"' not in html and "/dashboard/admin/" not in html
    browser = _admin_browser(client)
    page = browser.get("/dashboard")
    session = page.cookies.get("aerec_dashboard_session")  # set with the first admin page, HttpOnly and SameSite=Strict
    assert session and "samesite=strict" in page.headers["set-cookie"].lower() and "httponly" in page.headers["set-cookie"].lower()
    assert 'id="admin-actions"' in page.text and 'action="/dashboard/admin/reload"' in page.text
    assert re.findall(r'name="models" value="([^"]+)"', page.text) == sorted(REGISTRY)
    assert _token(page.text) == _token(browser.get("/dashboard").text)  # the same session, the same token
    other = _admin_browser(client)
    assert _token(other.get("/dashboard").text) != _token(page.text)  # bound to each browser's session
    header_only = TestClient(client.app).get("/dashboard", headers={"X-API-Key": API_KEY})
    assert 'id="admin-actions"' in header_only.text  # the key by header (a proxy that adds it) shows them too


def test_admin_forms_reload_through_the_admin_api_and_refuse_cross_site_posts(client):
    browser = _admin_browser(client)
    token = _token(browser.get("/dashboard").text)
    reader = TestClient(client.app)  # the same session cookie, without the admin key
    reader.cookies.set("aerec_dashboard_session", browser.cookies.get("aerec_dashboard_session"), path="/dashboard")
    done = browser.post("/dashboard/admin/reload", data={"token": token})
    served = client.get("/models").json()["version"]
    assert done.status_code == 200 and f"version {served} is already served" in done.text  # POST /admin/reload's own answer
    assert 'data-testid="admin-result"' in done.text
    refused = {
        "no token": browser.post("/dashboard/admin/reload", data={}),
        "a wrong token": browser.post("/dashboard/admin/reload", data={"token": "0" * 64}),
        "the browser says cross-site": browser.post("/dashboard/admin/reload", data={"token": token},
                                                    headers={"Sec-Fetch-Site": "cross-site"}),
        # the admin key by header but no session cookie: a proxy adding the key does not open the forms to other sites
        "no session": TestClient(client.app).post("/dashboard/admin/reload", data={"token": token}, headers={"X-API-Key": API_KEY}),
        "no admin key": reader.post("/dashboard/admin/reload", data={"token": token}),
    }
    for why, response in refused.items():
        assert response.status_code == 403 and "<nav" in response.text, why
    planted = TestClient(client.app).post("/dashboard/key", data={"key": API_KEY}, headers={"Sec-Fetch-Site": "cross-site"},
                                          follow_redirects=False)
    assert planted.status_code == 403 and "set-cookie" not in planted.headers  # another site sets no key in this browser


def test_the_training_form_goes_through_the_admin_api_with_checked_values(client, monkeypatch, tmp_path):
    from service.training_runs import TrainingRun

    runs = client.app.state.parts.training_runs
    started = []

    def recorded(models, seed):  # the real start is tested in test_admin_training; here what reaches it
        started.append((models, seed))
        (tmp_path / "form-run.log").write_text("loading the database\nfitting ease <&>\n")
        runs.last = TrainingRun("form-run", models, seed, [], tmp_path / "form-run.log", 0, time.time())
        return runs.last

    monkeypatch.setattr(runs, "start", recorded)
    monkeypatch.setattr(runs, "last", None)
    browser = _admin_browser(client)
    token = _token(browser.get("/dashboard").text)
    response = browser.post("/dashboard/admin/training", data={"token": token, "models": ["ease", "multvae"], "seed": "4"})
    assert response.status_code == 202 and "training run form-run started (ease, multvae)" in response.text
    assert started == [(("ease", "multvae"), 4)]
    overview = browser.get("/dashboard").text  # the run's state and its output's last lines, escaped
    shown = re.search(r'<dl class="pairs" data-testid="training">(.*?)</pre>', overview, re.S).group(1)
    assert "form-run" in shown and "running" in shown and "ease, multvae · seed 4" in shown
    assert "fitting ease &lt;&amp;&gt;" in shown
    assert "data-testid=\"training\"" not in client.get("/dashboard").text  # not without the admin key
    bad = browser.post("/dashboard/admin/training", data={"token": token, "models": ["ease", "rm -rf"]})
    assert bad.status_code == 422 and "validation_error" in bad.text
    unknown = browser.post("/dashboard/admin/training", data={"token": token, "models": ["nope"]})
    assert unknown.status_code == 422 and "unknown_model" in unknown.text
    assert browser.post("/dashboard/admin/training", data={"token": token, "seed": "x"}).status_code == 422
    assert started == [(("ease", "multvae"), 4)]
