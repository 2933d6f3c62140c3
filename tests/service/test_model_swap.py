"""Model versions change under a running service: hot swap with no failed request; a broken version is
refused, the newest older one that loads serves (at start-up too), and it is retried when its files change."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import uuid

import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from _service_support import API_KEY, DAMAGES, copy_registry, error_body, plant_broken_version, publish_version
from service.core.config import Settings
from service.main import create_app
from storage.migrate import upgrade_to_head
from storage.session import make_engine

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def app_on(tmp_path):
    """Build a running app on a private registry and a fresh SQLite database."""
    clients = []

    def build(root, **overrides) -> TestClient:
        database_url = f"sqlite:///{tmp_path / 'swap.db'}"
        upgrade_to_head(make_engine(database_url))
        settings = Settings(**{"DATABASE_URL": database_url, "ARTIFACTS_DIR": root, "API_KEY": API_KEY,
                               "RELOAD_INTERVAL_S": 0.1, **overrides})
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_hot_swap_under_load_fails_no_request(tmp_path, registry, trained, corpus, app_on):
    root = tmp_path / "registry"
    old = copy_registry(registry, root)
    client = app_on(root)
    user = "7"
    results: list[list[tuple[int, str | None]]] = [[], []]
    stop = threading.Event()

    def load(out: list) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            # varying k defeats the cache, so every request is scored by the model it grabbed
            response = client.post(f"/users/{user}/recommendations", json={"k": 1 + n % 20})
            ok = response.status_code == 200 and len(response.json()["items"]) == 1 + n % 20
            out.append((response.status_code if ok else -response.status_code, response.json().get("model_version")))

    threads = [threading.Thread(target=load, args=(out,)) for out in results]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(len(r) >= 5 for r in results))
        new = publish_version(root, trained, corpus)  # the trainer publishes while requests flow
        wait_for(lambda: all(any(v == new for _, v in r) for r in results))
        marks = [len(r) for r in results]
        wait_for(lambda: all(len(r) >= m + 5 for r, m in zip(results, marks)))
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = {s for r in results for s, _ in r}
    assert statuses == {200}, statuses  # zero failed requests
    for r in results:
        versions = [v for _, v in r]
        assert set(versions) == {old, new}
        switch = versions.index(new)
        assert versions[:switch] == [old] * switch and versions[switch:] == [new] * (len(versions) - switch)
    body = client.get("/models").json()
    assert body["version"] == new and body["swaps"] == 2
    assert "aerec_model_swaps_total 2.0" in client.get("/metrics").text


REFUSAL_REASONS = {  # what the refusal names, per damage of plant_broken_version
    "weights": r"ease/weights.safetensors has [\d,]+ bytes, its manifest says [\d,]+",
    "ids": "ease/ids.json has",
    "missing-file": "autorec-u/metrics.json is missing",
    "truncated": r"ease/weights.safetensors has [\d,]+ bytes, its manifest says [\d,]+",
    "bit-flipped": "ease/weights.safetensors does not match its sha256",
    "huge-rows": "ease/weights.safetensors does not match its sha256",
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_broken_version_is_refused_and_the_old_keeps_serving(tmp_path, registry, trained, corpus, app_on, damage):
    root = tmp_path / "registry"
    good = copy_registry(registry, root)
    client = app_on(root, RELOAD_INTERVAL_S=3600.0)  # only the admin endpoint reloads here
    broken = plant_broken_version(root, damage)

    response = client.post("/admin/reload", headers=KEY)
    assert response.status_code == 409, response.text
    error = error_body(response)
    assert error["code"] == "version_refused" and error["details"] == {"serving": good, "requested": broken}
    assert re.search(f"^version {broken} refused: .*{REFUSAL_REASONS[damage]}.*; still serving {good}$",
                     error["message"]), error["message"]
    served = client.post("/users/1/recommendations", json={"k": 3})
    assert served.status_code == 200 and served.json()["model_version"] == good
    models = client.get("/models").json()
    assert models["version"] == good and broken in models["refused"]
    assert models["requested"] == broken and models["fallback"].startswith(f"version {broken} refused: ")
    assert str(root.parent) not in response.text + json.dumps(models)  # the registry's path goes to the log only
    assert client.get("/readyz").status_code == 200
    assert "aerec_model_versions_refused_total 1.0" in client.get("/metrics").text

    fixed = publish_version(root, trained, corpus)  # the next good version is taken
    response = client.post("/admin/reload", headers=KEY)
    assert response.status_code == 200 and response.json() == {
        "version": fixed, "previous": good, "swapped": True, "message": f"now serving version {fixed}"}
    again = client.post("/admin/reload", headers=KEY).json()
    assert again["swapped"] is False and again["version"] == fixed


def test_watcher_refuses_a_broken_version_once_and_keeps_serving(tmp_path, registry, app_on):
    root = tmp_path / "registry"
    good = copy_registry(registry, root)
    client = app_on(root)
    broken = plant_broken_version(root, "weights")
    wait_for(lambda: broken in client.get("/models").json()["refused"])
    time.sleep(0.5)  # several more polls: the refusal is not retried and not recounted
    assert "aerec_model_versions_refused_total 1.0" in client.get("/metrics").text
    assert client.post("/users/1/recommendations", json={}).json()["model_version"] == good


def test_service_without_a_version_is_not_ready_until_one_is_published(tmp_path, trained, corpus, app_on):
    root = tmp_path / "empty-registry"
    root.mkdir()
    client = app_on(root)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and not error_body(ready)["details"]["checks"]["model"]["ok"]
    response = client.post("/users/1/recommendations", json={})
    assert response.status_code == 503 and error_body(response)["code"] == "model_unavailable"
    version = publish_version(root, trained, corpus)
    wait_for(lambda: client.get("/readyz").status_code == 200)
    assert client.post("/users/1/recommendations", json={}).json()["model_version"] == version


def test_requests_keep_the_version_they_started_with(tmp_path, registry, trained, corpus, app_on):
    root = tmp_path / "registry"
    copy_registry(registry, root)
    client = app_on(root, RELOAD_INTERVAL_S=3600.0)
    store = client.app.state.parts.store
    grabbed = store.current
    publish_version(root, trained, corpus)
    assert store.reload().swapped
    assert store.current is not grabbed
    ids, _ = grabbed.models["ease"].model.recommend(sp.csr_matrix((1, 600)), 3)
    assert (ids >= 0).all()  # the old object is intact for whoever still holds it


def test_loading_a_version_sets_the_scoring_threads(registry):
    import torch

    from service.metrics import Metrics
    from service.model_store import ModelStore

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        store = ModelStore(registry, Metrics(), interval_s=60, torch_threads=1)
        assert store.reload().swapped and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_model_work_runs_at_most_scoring_concurrency_at_once():
    """``ScoringSlots.run``: with 2 slots, 6 requests' work runs 2 at a time, and all of it runs."""
    import threading
    import time

    import anyio

    from service.scoring import ScoringSlots

    for slots in (1, 2):
        scoring = ScoringSlots(slots)
        lock, running, most, done = threading.Lock(), [0], [0], []

        def work(n: int) -> int:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.02)  # long enough for the others to pile up if nothing held them back
            with lock:
                running[0] -= 1
            return n

        async def six_requests() -> None:
            async with anyio.create_task_group() as group:
                for n in range(6):
                    group.start_soon(lambda n=n: _append(done, scoring.run(work, n)))

        anyio.run(six_requests)
        assert most[0] == slots and sorted(done) == list(range(6))


async def _append(out: list, awaitable) -> None:
    out.append(await awaitable)


def test_models_are_served_in_float32_with_the_same_scores(registry):
    """EASE solves in float64; the served copy is float32 (half the memory), scoring as before."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from registry import latest_version, load_version
    from service.metrics import Metrics
    from service.model_store import ModelStore

    store = ModelStore(registry, Metrics(), interval_s=60)
    assert store.reload().swapped
    served = store.current.models["ease"].model
    solved = load_version(registry, latest_version(registry)).models["ease"].model
    assert solved.B.dtype == torch.float64 and served.B.dtype == torch.float32
    assert all(p.dtype == torch.float32 for m in store.current.models.values()
               for p in [*m.model.parameters(), *m.model.buffers()] if p.is_floating_point())
    rng = np.random.default_rng(0)
    rows = sp.random(20, served.n_items, density=0.03, format="csr", random_state=rng, dtype=np.float32)
    rows.data[:] = 1.0
    np.testing.assert_allclose(served.scores(rows).numpy(), solved.scores(rows).numpy(), rtol=1e-4, atol=1e-5)


def test_similar_items_read_the_served_weights_in_place(registry):
    """Item vectors are the served model's own weights (EASE's B is 1.6 GB at 20,000 items: no
    second, normalised copy), and give the cosine similarity of the vectors."""
    import numpy as np
    import torch

    from service.metrics import Metrics
    from service.model_store import ItemVectors, ModelStore

    store = ModelStore(registry, Metrics(), interval_s=60)
    assert store.reload().swapped
    ease = store.current.models["ease"]
    vectors = ease.item_vectors.vectors
    assert np.shares_memory(vectors, ease.model.B.numpy()) and not vectors.flags.writeable
    with_vectors = [m for m in store.current.models.values() if m.item_vectors is not None]
    assert len(with_vectors) == len(store.current.models)  # every model of this registry has them
    for served in with_vectors:
        weights = [p.detach().numpy() for p in [*served.model.parameters(), *served.model.buffers()]]
        assert any(np.shares_memory(served.item_vectors.vectors, w) for w in weights), served.name
        reference = torch.nn.functional.normalize(served.model.item_embeddings().double(), dim=1).numpy()
        for col in (0, 7, served.model.n_items - 1):
            np.testing.assert_allclose(served.item_vectors.cosine_to(col), reference @ reference[col], rtol=1e-5, atol=1e-6)

    broken = np.ones((3, 4), dtype=np.float32)
    assert ItemVectors(broken).finite
    broken[2, 1] = np.nan
    assert not ItemVectors(broken).finite
    huge = np.full((2, 3), 3e38, dtype=np.float32)  # finite, though its float32 squares are not
    assert ItemVectors(huge).finite


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_start_up_on_a_damaged_newest_version_serves_the_previous_one(tmp_path, seeded_backend, registry, damage):
    """The outage of issue 20 (a truncated newest version made every read 503, /ratings on an undamaged
    model too): the previous whole version serves, and /models and the metrics say why."""
    root = tmp_path / "registry"
    good = copy_registry(registry, root)
    broken = plant_broken_version(root, damage)
    app = create_app(seeded_backend.settings(root, RELOAD_INTERVAL_S=3600.0, CACHE_NAMESPACE=uuid.uuid4().hex))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
        ratings = client.post("/ratings", json={"user_id": "1", "item_ids": ["1", "2"], "model": "autorec-u"})
        assert ratings.status_code == 200 and ratings.json()["model_version"] == good
        listed = client.post("/users/1/recommendations", json={"k": 3})
        assert listed.status_code == 200 and listed.json()["model_version"] == good
        models = client.get("/models").json()
        assert (models["version"], models["requested"]) == (good, broken)
        assert re.match(f"version {broken} refused: .*{REFUSAL_REASONS[damage]}", models["fallback"])
        assert models["refused"] == {broken: models["fallback"].removeprefix(f"version {broken} refused: ")}
        metrics = client.get("/metrics").text
        assert "aerec_model_fallback 1.0" in metrics and "aerec_model_versions_refused_total 1.0" in metrics
        assert f'aerec_model_version_info{{version="{good}"}} 1.0' in metrics


def test_a_refused_version_is_retried_when_its_files_change(tmp_path, registry, app_on):
    root = tmp_path / "registry"
    good = copy_registry(registry, root)
    client = app_on(root)  # the watcher polls every 0.1 s
    broken = plant_broken_version(root, "truncated")
    wait_for(lambda: broken in client.get("/models").json()["refused"])
    time.sleep(0.5)  # several polls: unchanged files are not tried again
    assert "aerec_model_versions_refused_total 1.0" in client.get("/metrics").text
    assert client.get("/models").json()["version"] == good

    weights = "ease/weights.safetensors"
    shutil.copyfile(root / good / weights, root / broken / weights)  # the operator restores the file
    wait_for(lambda: client.get("/models").json()["version"] == broken)
    models = client.get("/models").json()
    assert models["fallback"] is None and models["refused"] == {} and models["requested"] == broken
    assert client.post("/users/1/recommendations", json={}).json()["model_version"] == broken
    metrics = client.get("/metrics").text
    assert "aerec_model_fallback 0.0" in metrics and "aerec_model_versions_refused_total 1.0" in metrics


def test_fallback_walks_back_to_the_newest_version_that_loads(tmp_path, registry):
    """At start-up, two damaged versions above a good one: each is refused once, the good one serves;
    the watcher's next polls try neither again."""
    from service.metrics import Metrics
    from service.model_store import ModelStore

    root = tmp_path / "registry"
    good = copy_registry(registry, root)
    middle = plant_broken_version(root, "bit-flipped")
    newest = plant_broken_version(root, "truncated")  # a copy of the damaged middle one, truncated
    store = ModelStore(root, Metrics(), interval_s=60)
    outcome = store.reload()
    assert (outcome.version, outcome.previous, outcome.swapped, outcome.refused) == (good, None, True, True)
    assert outcome.message.startswith(f"version {newest} refused: ")
    assert outcome.message.endswith(f"; now serving {good}, the newest older version that loads")
    assert sorted(store.refused) == [middle, newest] and store.fallback.startswith(f"version {newest} refused")
    again = store.reload()
    assert (again.version, again.swapped, again.refused) == (good, False, True)
    assert again.message.endswith(f"; still serving {good}")
    assert store.metrics.registry.get_sample_value("aerec_model_versions_refused_total") == 2


def test_admin_reload_with_a_bad_latest_names_what_is_wrong(tmp_path, registry, app_on):
    root = tmp_path / "registry"
    good = copy_registry(registry, root)
    client = app_on(root, RELOAD_INTERVAL_S=3600.0)
    (root / "LATEST").write_text("not-a-version\n")
    response = client.post("/admin/reload", headers=KEY)
    assert response.status_code == 409
    error = error_body(response)
    assert "None" not in error["message"] and error["details"] == {"serving": good, "requested": None}
    assert re.search(f"LATEST holds 'not-a-version', which is not a version name; still serving {good}$", error["message"])
    models = client.get("/models").json()
    assert models["version"] == good and models["requested"] is None and "not a version name" in models["fallback"]

    missing = "20990101T000000Z-abcdef"
    (root / "LATEST").write_text(missing + "\n")
    error = error_body(client.post("/admin/reload", headers=KEY))
    assert error["message"].startswith(f"version {missing} refused: manifest of version {missing} is missing")
    assert error["details"] == {"serving": good, "requested": missing}


def test_start_up_with_a_bad_latest_serves_the_newest_version_that_loads(tmp_path, registry, trained, corpus):
    from service.metrics import Metrics
    from service.model_store import ModelStore

    root = tmp_path / "registry"
    copy_registry(registry, root)
    newest = publish_version(root, trained, corpus)
    (root / "LATEST").write_text("garbage\n")
    store = ModelStore(root, Metrics(), interval_s=60)
    outcome = store.reload()
    assert (outcome.version, outcome.swapped, outcome.refused, outcome.requested) == (newest, True, True, None)
    assert outcome.message.endswith(f"not a version name; now serving {newest}, the newest version that loads")
    assert not store.reload().swapped  # LATEST still unreadable: reported once, not at every poll
    assert store.metrics.registry.get_sample_value("aerec_model_versions_refused_total") == 1
