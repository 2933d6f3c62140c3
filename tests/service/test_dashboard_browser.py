"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright)
against a live ``python -m service`` serving the test version (SQLite, and PostgreSQL + Redis), at
1280 and 390 px wide.

It enters the read key through the key form, loads every page, looks a user up and an item, checks
the lists in the DOM against the API's answers, then enters the admin key the same way: the admin
actions appear (absent before) and a reload goes through the page. It saves a screenshot of each
page under bench/out/dashboard/. Under CI=true a missing browser fails the test; elsewhere it skips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from _test_servers import IN_CI
from bench._common import API_KEY, ServerProcess, service_env

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "bench" / "out" / "dashboard"
READ_KEY = "dashboard-read-key-5e21"
WIDTHS = {"wide": (1280, 900), "narrow": (390, 844)}


def _browser_missing(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why} (CI=true: the dashboard's browser test must run; scripts/bootstrap.sh dev installs both)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def playwright_chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _browser_missing("playwright is not installed")
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        _browser_missing(f"no chromium at {CHROMIUM}")
    with sync_playwright() as p:
        # --no-sandbox: the tests may run as root (a container), where Chromium's sandbox refuses to start
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
                                    args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def live_service(tmp_path_factory, registry, own_seeded_backend):
    """``python -m service`` on a database of its own seeded with the corpus (SQLite + the in-process cache,
    PostgreSQL + Redis), reads keyed (the key form is tested)."""
    backend = own_seeded_backend
    env = service_env(backend.database_url, registry, backend.redis_url, CACHE_NAMESPACE=backend.namespace,
                      READS_REQUIRE_KEY="true", READ_API_KEY=READ_KEY)
    with ServerProcess.service(env, tmp_path_factory.mktemp("live") / "service.log") as server:
        yield server


def _api(server, method: str, path: str, **kwargs) -> dict:
    response = httpx.request(method, server.base_url + path, headers={"X-API-Key": READ_KEY}, timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def _dom_list(page, model: str) -> list[str]:
    return page.locator(f'.card[data-model="{model}"] li').evaluate_all("items => items.map(li => li.dataset.itemId)")


def _check_layout(page, width: int) -> None:
    # nothing wider than the window (wide tables scroll inside their own box), every control labelled
    assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{page.url} scrolls sideways at {width} px"
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input:not([type=hidden]), select, textarea')].filter(e => e.labels.length === 0).map(e => e.name)"
    )
    assert unlabelled == [], f"{page.url}: controls without a label: {unlabelled}"


@pytest.mark.parametrize("size", list(WIDTHS))
def test_every_page_in_chromium_with_the_apis_lists(playwright_chromium, live_service, corpus, size):
    width, height = WIDTHS[size]
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = playwright_chromium.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    offline = []
    page.on("request", lambda r: offline.append(r.url) if not r.url.startswith(live_service.base_url) else None)
    base = live_service.base_url

    def shot(name: str) -> None:
        _check_layout(page, width)
        page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)

    # The read key, entered in the form the dashboard answers without one
    assert page.goto(base + "/").status == 401
    page.get_by_label("API key").fill(READ_KEY)
    page.get_by_role("button", name="Open the dashboard").click()
    page.wait_for_url(base + "/dashboard")
    assert page.locator("h1").inner_text() == "Overview"
    served = _api(live_service, "GET", "/models")
    assert page.get_by_test_id("version").inner_text() == served["version"]
    shot("overview")

    page.get_by_role("link", name="autorec-u", exact=True).click()
    assert page.locator("svg.chart polyline").count() >= 1 and "training loss" in page.locator("svg.chart").inner_html()
    shot("model")

    for name in ("Data", "Traffic"):
        page.get_by_role("navigation").get_by_role("link", name=name).click()
        assert page.locator("h1").inner_text() == name
        if name == "Data":
            assert page.get_by_test_id("interactions").inner_text() == str(len(corpus.rows["user_id"]))
            assert page.locator("svg.chart").count() == 3
        if name == "Traffic":  # the API's GET /models above is counted; the pages ask nothing more of it (no favicon)
            assert "GET /models" in page.content() and "unmatched" not in page.content()
        shot(name.lower())

    # A user looked up: every ranker's list in the DOM is the API's answer, as are the predicted ratings
    page.get_by_role("navigation").get_by_role("link", name="Users").click()
    page.get_by_label("User id").fill("1")
    page.get_by_label("Items to rate").fill("1, 2, 50")
    page.get_by_role("button", name="Look up").click()
    page.wait_for_url("**/dashboard/users?user_id=1*")
    for model in [m["name"] for m in served["models"] if m["task"] == "ranking"]:
        api = _api(live_service, "POST", "/users/1/recommendations", json={"k": 10, "model": model})
        assert _dom_list(page, model) == [i["item_id"] for i in api["items"]]
    for model in [m["name"] for m in served["models"] if m["task"] == "rating"]:
        api = _api(live_service, "POST", "/ratings", json={"user_id": "1", "item_ids": ["1", "2", "50"], "model": model})
        cells = page.locator(f'td[data-model="{model}"]').all_inner_texts()
        assert cells == [f"{r['rating']:.2f}" for r in api["ratings"]]
    assert page.locator("#history ~ div table tbody tr").count() > 0
    shot("users")

    # An item searched by title, then its similar items per model, each the API's answer
    page.get_by_role("navigation").get_by_role("link", name="Items").click()
    page.get_by_label("Title or id").fill("toy story")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="Toy Story (1995)").click()
    page.wait_for_url("**/dashboard/items?item_id=1")
    api = _api(live_service, "GET", "/items/1/similar", params={"model": "ease", "k": 10})
    assert _dom_list(page, "ease") == [i["item_id"] for i in api["items"]]
    often = page.locator('#recommended ~ div tr[data-model="ease"]')
    assert int(often.get_by_test_id("top-k").inner_text()) <= int(often.get_by_test_id("top-n").inner_text())
    shot("items")

    # An experiment started through the admin API: its row in the list, then its report, one interval chart per metric
    experiment_id = f"browser-{size}"
    arms = [{"name": "ease", "model": "ease", "share": 0.5}, {"name": "autorec", "model": "autorec-u", "share": 0.5}]
    created = httpx.post(base + "/admin/experiments", json={"id": experiment_id, "kind": "ab", "arms": arms},
                         headers={"X-API-Key": API_KEY}, timeout=30)
    assert created.status_code == 201, created.text
    try:
        for user in ("1", "2", "3", "4"):
            assert _api(live_service, "POST", f"/users/{user}/recommendations", json={"k": 5})["experiment"]["id"] == experiment_id
        page.get_by_role("navigation").get_by_role("link", name="Experiments").click()
        assert page.locator("h1").inner_text() == "Experiments"
        shot("experiments")
        page.get_by_role("link", name=experiment_id, exact=True).click()
        page.wait_for_url(f"**/dashboard/experiments/{experiment_id}")
        assert page.locator("tr[data-arm]").count() == 2 and page.locator("svg.chart").count() == 5
        assert page.get_by_test_id("decision").inner_text() == _api(live_service, "GET", f"/experiments/{experiment_id}")["decision"]
        shot("experiment")
    finally:
        httpx.post(base + f"/admin/experiments/{experiment_id}/stop", headers={"X-API-Key": API_KEY}, timeout=30)

    # The admin actions: none with the read key; the admin key, entered in the same form, shows them
    page.get_by_role("navigation").get_by_role("link", name="Overview").click()
    assert page.locator("#admin-actions").count() == 0 and page.locator('form[action^="/dashboard/admin"]').count() == 0
    assert page.get_by_test_id("next-run").inner_text().startswith("no schedule")
    page.get_by_role("navigation").get_by_role("link", name="Key").click()
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Open the dashboard").click()
    page.wait_for_url(base + "/dashboard")
    assert page.locator("#admin-actions").is_visible()
    assert page.get_by_label("ease", exact=True).is_visible() and page.get_by_label("Seed").input_value() == "0"
    shot("overview-admin")
    page.get_by_role("button", name="Reload the version LATEST names").click()  # a same-origin form POST, token and all
    page.wait_for_url(base + "/dashboard/admin/reload")
    assert page.get_by_test_id("admin-result").inner_text() == f"version {served['version']} is already served"
    shot("admin-reload")

    assert offline == [], f"the pages fetched from elsewhere: {offline}"
    context.close()

