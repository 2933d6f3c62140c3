"""RecVAE and EDLAE (issue 21, point 5) served like every ranker: published by the trainer's publisher,
loaded, verified, a new user folded in from the history written through the API, similar items.
On SQLite + the in-process cache and on PostgreSQL + Redis."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from _service_support import API_KEY, POSITIVE, new_user, publish_version
from service.main import create_app
from storage.migrate import upgrade_to_head
from storage.session import make_engine

AUTH = {"X-API-Key": API_KEY}
NEW = ("recvae", "edlae")


@pytest.fixture(scope="module")
def models(trained, corpus) -> dict:
    import torch

    from trainer.training import fit

    positives = sp.csr_matrix(corpus.X >= POSITIVE, dtype=np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # small and quick: what matters is that they serve as every ranker does
        return {
            **trained,
            "recvae": fit("recvae", positives, progress=False, epochs=3, hidden=32, latent=8, seed=0, holdout=0).model,
            "edlae": fit("edlae", positives, progress=False).model,
        }
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def served(empty_backend, tmp_path, models, corpus):
    root = tmp_path / "registry"
    publish_version(root, models, corpus)
    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    with TestClient(create_app(empty_backend.settings(root)), raise_server_exceptions=False) as client:
        yield client


def test_a_new_user_is_folded_in_and_gets_the_models_own_top_k(served, models, corpus):
    listed = served.get("/models").json()
    assert set(NEW) <= {m["name"] for m in listed["models"]}
    user = new_user()
    liked = ["50", "181", "100", "258", "1"]
    written = [{"user_id": user, "item_id": i, "rating": 5, "timestamp": 1_000 + n} for n, i in enumerate(liked)]
    assert served.post("/interactions", json=written, headers=AUTH).status_code == 201
    row = sp.csr_matrix((np.ones(len(liked), np.float32), ([0] * len(liked), [corpus.item_ids.index(i) for i in liked])),
                        shape=(1, len(corpus.item_ids)))
    for name in NEW:
        response = served.post(f"/users/{user}/recommendations", json={"model": name, "k": 10})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["source"] == "fold-in" and body["model"] == name
        ids, _ = models[name].recommend(row, k=10, exclude_seen=True)
        assert [item["item_id"] for item in body["items"]] == [corpus.item_ids[i] for i in ids[0]]
        assert not set(liked) & {item["item_id"] for item in body["items"]}
        similar = served.get("/items/181/similar", params={"model": name, "k": 5})
        assert similar.status_code == 200, similar.text
        assert "181" not in {item["item_id"] for item in similar.json()["items"]}
