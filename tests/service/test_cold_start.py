"""Cold start (issue 20, point 7): a rating model rates a user with no usable history by the bias baseline
published beside it, never by its answer to an empty row; one rule says model / fold-in / cold for both
endpoints. On SQLite + the in-process cache and on PostgreSQL + Redis."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from _service_support import API_KEY, bias_baseline, new_user, publish_version
import registry
from service import inference
from service.main import create_app
from service.model_store import prepare_version
from storage.crud import History
from storage.migrate import upgrade_to_head
from storage.session import make_engine

AUTH = {"X-API-Key": API_KEY}
RATING_MODELS = ("deeprec", "autorec-u", "autorec-i")
ITEMS = ["1", "50", "100", "181", "258", "300"]


@pytest.fixture(scope="module")
def models(trained, corpus) -> dict:
    import torch

    from trainer.training import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # small and quick: what matters is how it answers an empty row (no history: no b_u, no signal)
        deeprec = fit("deeprec", corpus.X, progress=False, epochs=5, layers=(32,), seed=0, holdout=0).model
    finally:
        torch.set_num_threads(threads)
    return {**trained, "deeprec": deeprec}


@pytest.fixture(scope="module")
def cold_registry(tmp_path_factory, models, corpus):
    root = tmp_path_factory.mktemp("cold-registry")
    publish_version(root, models, corpus)
    return root


@pytest.fixture
def cold_client(empty_backend, cold_registry):
    """An app serving the version with DeepRec, on an empty database whose scale takes a 0 (a stored 0 is no rating)."""
    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    with TestClient(create_app(empty_backend.settings(cold_registry, RATING_SCALE="0:5:1")),
                    raise_server_exceptions=False) as client:
        yield client


def baseline_ratings(corpus, model, items) -> np.ndarray:
    """Global mean + item bias of the bias baseline fitted on the model's training matrix, clipped to its scale."""
    baseline = bias_baseline(corpus.X, model)
    cols = np.array([corpus.item_ids.index(i) for i in items])
    return np.clip(float(baseline.mean) + baseline.item_bias.numpy()[cols], *model.rating_range)


def rate(client, user, model, items=ITEMS) -> dict:
    response = client.post("/ratings", json={"user_id": user, "item_ids": items, "model": model})
    assert response.status_code == 200, response.text
    return response.json()


def recommend(client, user, model) -> dict:
    response = client.post(f"/users/{user}/recommendations", json={"k": 5, "model": model})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", RATING_MODELS)
def test_a_user_with_no_history_is_rated_by_the_bias_baseline(cold_client, models, corpus, name):
    body = rate(cold_client, new_user(), name)
    assert body["source"] == "cold-start" and [r["item_id"] for r in body["ratings"]] == ITEMS
    got = np.array([r["rating"] for r in body["ratings"]])
    np.testing.assert_allclose(got, baseline_ratings(corpus, models[name], ITEMS), atol=1e-5)
    assert len(set(got.round(4))) > 1  # item biases, not one constant
    if name != "autorec-i":  # not the model's answer to an empty row (DeepRec's: μ + b_i + g(0))
        cols = np.array([corpus.item_ids.index(i) for i in ITEMS])
        empty_row = models[name].predict(sp.csr_matrix((1, len(corpus.item_ids)), dtype=np.float32), cols,
                                         pair_rows=np.zeros(len(cols), dtype=np.int64))
        assert not np.allclose(got, empty_row, atol=1e-3)
    assert recommend(cold_client, new_user(), name)["source"] == "popular"


def test_deeprec_answers_an_empty_row_from_its_bias_model(models, corpus):
    """Centred on the bias model, DeepRec reads an empty row as μ + b_i + g(0), near the item biases (centred
    on the row's mean it read 0 + g(0), 1.0 for almost every item): the baseline still answers it (above)."""
    n, model = len(corpus.item_ids), models["deeprec"]
    empty_row = model.predict(sp.csr_matrix((1, n), dtype=np.float32), np.arange(n), pair_rows=np.zeros(n, int))
    biases = (model.offset.mean + model.offset.item_bias).numpy().clip(*model.rating_range)
    assert np.abs(empty_row - biases).mean() < 0.1 and (empty_row == 1.0).mean() < 0.05


@pytest.mark.parametrize("only", ["unknown-item", "rating-0"])
def test_a_history_the_model_cannot_read_is_cold_on_both_endpoints(cold_client, models, corpus, only):
    """A user whose only stored interaction gives the rating models an empty row (an item they do not
    know, a stored 0): the popularity list and the baseline, on every rating model."""
    user = new_user()
    item, rating = {"unknown-item": (f"new-{user}", 4), "rating-0": ("50", 0)}[only]
    stored = cold_client.post("/interactions", json=[{"user_id": user, "item_id": item, "rating": rating}], headers=AUTH)
    assert stored.status_code == 201, stored.text
    for name in RATING_MODELS:
        assert recommend(cold_client, user, name)["source"] == "popular", name
        body = rate(cold_client, user, name)
        assert body["source"] == "cold-start", name
        np.testing.assert_allclose([r["rating"] for r in body["ratings"]], baseline_ratings(corpus, models[name], ITEMS),
                                   atol=1e-5)


def test_a_real_history_is_folded_in_on_both_endpoints(cold_client, models, corpus):
    user = new_user()
    rated = {"50": 5, "181": 4, "100": 2}
    history = [{"user_id": user, "item_id": i, "rating": r, "timestamp": 1_000 + n} for n, (i, r) in enumerate(rated.items())]
    assert cold_client.post("/interactions", json=history, headers=AUTH).status_code == 201
    row = sp.csr_matrix(([float(v) for v in rated.values()], ([0] * len(rated), [corpus.item_ids.index(i) for i in rated])),
                        shape=(1, len(corpus.item_ids)), dtype=np.float32)
    cols = np.array([corpus.item_ids.index(i) for i in ITEMS])
    for name in ("deeprec", "autorec-u"):
        assert recommend(cold_client, user, name)["source"] == "fold-in", name
        body = rate(cold_client, user, name)
        assert body["source"] == "fold-in", name
        expected = models[name].predict(row, cols, pair_rows=np.zeros(len(cols), dtype=np.int64))
        np.testing.assert_allclose([r["rating"] for r in body["ratings"]], expected, atol=1e-5)
    # I-AutoRec scores only its training users: a new user it could read is refused on both, as before
    assert cold_client.post(f"/users/{user}/recommendations", json={"model": "autorec-i"}).status_code == 404
    assert cold_client.post("/ratings", json={"user_id": user, "item_ids": ["1"], "model": "autorec-i"}).status_code == 404


def test_a_click_alone_is_folded_in_as_the_top_rating(cold_client, models, corpus):
    """Implicit feedback trains a rating model as the top of the scale (interactions.rows), so a user whose
    one stored interaction is a click is scored on that row, not as a user with none."""
    user = new_user()
    assert cold_client.post("/interactions", json=[{"user_id": user, "item_id": "50"}], headers=AUTH).status_code == 201
    cols = np.array([corpus.item_ids.index(i) for i in ITEMS])
    for name in ("deeprec", "autorec-u"):
        top = models[name].rating_range[1]
        row = sp.csr_matrix(([top], ([0], [corpus.item_ids.index("50")])), shape=(1, len(corpus.item_ids)), dtype=np.float32)
        assert recommend(cold_client, user, name)["source"] == "fold-in", name
        body = rate(cold_client, user, name)
        assert body["source"] == "fold-in", name
        expected = models[name].predict(row, cols, pair_rows=np.zeros(len(cols), dtype=np.int64))
        np.testing.assert_allclose([r["rating"] for r in body["ratings"]], expected, atol=1e-5)


def test_one_rule_decides_the_source():
    class Served:
        def __init__(self, can_fold_in):
            self.can_fold_in = can_fold_in

    table = {(known, has_input): (inference.user_source(Served(True), known, has_input),
                                  inference.user_source(Served(False), known, has_input))
             for known in (True, False) for has_input in (True, False)}
    assert table == {
        (True, True): ("model", "model"),
        (True, False): (inference.COLD, "model"),  # a training user whose stored history the model cannot read
        (False, True): ("fold-in", inference.STRANGER),
        (False, False): (inference.COLD, inference.COLD),
    }


def test_the_baseline_is_published_checked_and_loaded(cold_registry, models, corpus):
    version = registry.latest_version(cold_registry)
    manifest = registry.read_manifest(cold_registry, version)
    for name in RATING_MODELS:
        assert manifest["models"][name]["cold_start"] == "bias"
        assert f"{name}/{registry.COLD_START_DIR}/weights.safetensors" in manifest[registry.CHECKSUMS_KEY]
    assert "cold_start" not in manifest["models"]["ease"]
    served = prepare_version(cold_registry, version)
    assert served.models["ease"].cold_start is None
    cols = np.array([corpus.item_ids.index(i) for i in ITEMS])
    np.testing.assert_allclose(served.models["deeprec"].cold_ratings(cols),
                               baseline_ratings(corpus, models["deeprec"], ITEMS), atol=1e-5)


def test_a_damaged_baseline_refuses_the_version(tmp_path, cold_registry):
    import shutil

    version = registry.latest_version(cold_registry)
    shutil.copytree(cold_registry / version, tmp_path / version)
    weights = tmp_path / version / "deeprec" / registry.COLD_START_DIR / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x04
    weights.write_bytes(bytes(data))
    with pytest.raises(registry.ArtifactError, match="sha256"):
        registry.load_version(tmp_path, version)


def test_a_version_from_before_rates_cold_users_at_the_middle_of_the_scale(tmp_path, models, corpus, caplog):
    """No baseline and no saved mean: the middle of the scale, said once in the log, not the model's empty row."""
    version = publish_version(tmp_path, {n: models[n] for n in ("deeprec", "autorec-u")}, corpus, cold_start=False)
    with caplog.at_level(logging.WARNING, logger="service.model_store"):
        served = prepare_version(tmp_path, version)
    [line] = [r.getMessage() for r in caplog.records if "no cold-start baseline" in r.getMessage()]
    assert "autorec-u, deeprec" in line  # one line for the version
    deeprec = served.models["deeprec"]
    query = inference.RatingQuery(new_user(), ITEMS[:3], deeprec)
    empty = History(np.array([], dtype=object), np.array([], dtype=object), np.array([]), np.array([], dtype=np.int64))
    [rated] = inference.predict_ratings([query], empty)
    assert rated.source == "cold-start" and [r for _, r in rated.ratings] == [3.0, 3.0, 3.0]
