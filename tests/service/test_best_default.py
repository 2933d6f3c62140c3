"""Issue 21, point 2: the service's default model per task is the version's best-validated one, a baseline
included ("best", the DEFAULT_MODEL / DEFAULT_RATING_MODEL default); a named model still serves; a version
published without the record serves the former defaults. On SQLite + the in-process cache and PostgreSQL + Redis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from _service_support import API_KEY, POSITIVE, new_user, publish_version
from registry import best
from service.errors import ApiError
from service.inference import resolve_model
from service.main import create_app
from service.model_store import prepare_version
from storage.migrate import upgrade_to_head
from storage.session import make_engine

AUTH = {"X-API-Key": API_KEY}
HISTORY = {"1": 5.0, "50": 4.0, "100": 2.0, "181": 5.0, "258": 1.0}
ASKED = ["2", "3", "7", "300", "313"]


@pytest.fixture(scope="module")
def ml100k_csv(tmp_path_factory, ml100k_dir):
    from interactions.movielens import read_dataset

    inter = read_dataset("ml-100k", ml100k_dir)
    path = tmp_path_factory.mktemp("ml100k") / "ml100k.csv"
    pd.DataFrame({"user": np.asarray(inter.user_ids)[inter.users], "item": np.asarray(inter.item_ids)[inter.items],
                  "rating": inter.ratings, "timestamp": inter.timestamps}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def losing_registry(tmp_path_factory, ml100k_csv):
    """ml-100k through the pipeline: EASE, and AutoRec-U after one epoch (it loses to the bias baseline)."""
    import torch

    from trainer.pipeline import TrainJob, train_all
    from trainer.sources import SourceSpec

    root = tmp_path_factory.mktemp("best-registry")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = train_all(TrainJob(SourceSpec(file=ml100k_csv), ["ease", "autorec-u"], {"autorec-u": {"epochs": 1}},
                                    "cpu", 0, root, progress=False))
    finally:
        torch.set_num_threads(threads)
    assert not report.runs["autorec-u"].baseline["beats"], report.summary_lines()
    return root, report


def app_on(backend, root, **settings):
    engine = make_engine(backend.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    return TestClient(create_app(backend.settings(root, **settings)), raise_server_exceptions=False)


def bias_predictions(csv, history: dict[str, float], asked: list[str]) -> np.ndarray:
    """The bias baseline fitted on every rating of the file, for a user with ``history``: what "bias" must serve."""
    from interactions.files import load_file
    from models.base import TrainData
    from models.baselines import fit_baseline

    inter, _ = load_file(csv)
    bias = fit_baseline("bias", TrainData(inter.matrix("rating"), rating_range=inter.rating_range))
    col = {str(item): n for n, item in enumerate(inter.item_ids)}
    row = sp.csr_matrix((list(history.values()), ([0] * len(history), [col[i] for i in history])),
                        shape=(1, inter.n_items), dtype=np.float32)
    return bias.predict(row, np.array([col[i] for i in asked]), pair_rows=np.zeros(len(asked), dtype=np.int64))


def test_a_version_whose_autorec_loses_to_bias_serves_bias_by_default(empty_backend, losing_registry, ml100k_csv):
    root, report = losing_registry
    user = new_user()
    with app_on(empty_backend, root) as client:
        written = client.post("/interactions", headers=AUTH,
                              json=[{"user_id": user, "item_id": i, "rating": r} for i, r in HISTORY.items()])
        assert written.status_code == 201, written.text

        answer = client.post("/ratings", json={"user_id": user, "item_ids": ASKED})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "bias" and body["source"] == "fold-in" and body["model_version"] == report.version
        served = [r["rating"] for r in body["ratings"]]
        assert served == pytest.approx(bias_predictions(ml100k_csv, HISTORY, ASKED).tolist(), rel=1e-5)

        named = client.post("/ratings", json={"user_id": user, "item_ids": ASKED, "model": "autorec-u"}).json()
        assert named["model"] == "autorec-u" and [r["rating"] for r in named["ratings"]] != served
        ranked = client.post(f"/users/{user}/recommendations", json={"k": 5}).json()
        assert ranked["model"] == "ease"  # EASE beats popularity by far more than the margin

        models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"ease", "autorec-u", "bias", "popularity"}
    assert models["bias"]["default_for"] == ["ratings"] and models["bias"]["baseline"] is True
    assert models["bias"]["default_reason"].startswith("no model beats bias by the margin (at least 0.005 below")
    assert models["ease"]["default_for"] == ["recommendations"] and models["ease"]["baseline"] is False
    ease, pop = report.runs["ease"].valid_value, report.baselines["strong"]["popularity"].valid_value
    assert models["ease"]["default_reason"] == f"best validation ndcg@100 {ease:.4f} (popularity {pop:.4f})"
    assert models["autorec-u"]["default_for"] == [] and models["autorec-u"]["default_reason"] is None
    assert models["popularity"]["default_for"] == []


@pytest.fixture(scope="module")
def popular_registry(tmp_path_factory, trained, corpus):
    """The service's test slice with the popularity baseline published beside the models and recorded as the best ranker."""
    from trainer.training import fit

    popularity = fit("popularity", sp.csr_matrix(corpus.X >= POSITIVE, dtype=np.float32), progress=False).model
    root = tmp_path_factory.mktemp("popular-registry")
    record = {"ranking": {"model": "popularity", "reason": "best validation ndcg@100 0.3000 (popularity 0.3000)"}}
    publish_version(root, {**trained, "popularity": popularity}, corpus, extra={best.BEST_KEY: record})
    return root


def test_best_resolves_a_ranker_from_the_record_and_a_named_model_still_serves(seeded_backend, popular_registry):
    with app_on(seeded_backend, popular_registry) as client:
        default = client.post("/users/1/recommendations", json={"k": 10}).json()
        named = client.post("/users/1/recommendations", json={"k": 10, "model": "popularity"}).json()
        asked_best = client.post("/users/1/recommendations", json={"k": 10, "model": "best"}).json()
        ease = client.post("/users/1/recommendations", json={"k": 10, "model": "ease"}).json()
        assert default["model"] == named["model"] == asked_best["model"] == "popularity"
        assert default["items"] == named["items"] and default["source"] == "model"
        assert ease["model"] == "ease" and ease["items"] != default["items"]
        # similar items need item embeddings, which popularity has none of: the first ranker with them
        assert client.get("/items/1/similar", params={"k": 3}).json()["model"] == "ease"
        # no rating record in this version: the former rating default
        assert client.post("/ratings", json={"user_id": "1", "item_ids": ["1"]}).json()["model"] == "autorec-u"
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["popularity"]["default_for"] == ["recommendations"]
    assert models["popularity"]["default_reason"] == "best validation ndcg@100 0.3000 (popularity 0.3000)"
    assert models["autorec-u"]["default_reason"] == "no best model recorded in this version: the former default"

    with app_on(seeded_backend, popular_registry, DEFAULT_MODEL="ease") as client:  # a setting naming a model wins
        assert client.post("/users/1/recommendations", json={"k": 10}).json()["model"] == "ease"
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["ease"]["default_for"] == ["recommendations"] and models["popularity"]["default_for"] == []
    assert models["ease"]["default_reason"] == "the DEFAULT_MODEL setting"


def test_a_version_without_the_record_serves_the_former_defaults(client):
    assert client.post("/users/1/recommendations", json={"k": 3}).json()["model"] == "ease"
    assert client.post("/ratings", json={"user_id": "1", "item_ids": ["1"]}).json()["model"] == "autorec-u"
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["ease"]["default_reason"] == "no best model recorded in this version: the former default"


def test_without_the_former_defaults_best_is_the_tasks_first_model(tmp_path, trained, corpus):
    version = publish_version(tmp_path, {"autorec-i": trained["autorec-i"]}, corpus)
    serving = prepare_version(tmp_path, version)
    assert serving.defaults["rating"] == ("autorec-i", "no best model recorded in this version: its first model of the task")
    assert resolve_model(serving, None, best.BEST, rating=True).name == "autorec-i"
    with pytest.raises(ApiError) as refused:  # no ranker: "best" names none
        resolve_model(serving, None, best.BEST)
    assert refused.value.status == 404
