"""``explain: true``: each recommended item's reasons (the history items that add most to its score),
on both backends; its caps; and the cache keeping explained and unexplained answers apart."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from _service_support import POSITIVE, error_body, new_user
from service import inference
from service.schemas import EXPLAIN_MAX_HISTORY, EXPLAIN_MAX_HISTORY_SEQUENTIAL, EXPLAIN_MAX_K, EXPLAIN_REASONS

KNOWN_USER = "1"


def recommend(client, user_id, **body):
    response = client.post(f"/users/{user_id}/recommendations", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def training_row(corpus, user_id: str) -> tuple[int, sp.csr_matrix]:
    row = corpus.user_ids.index(user_id)
    return row, sp.csr_matrix(corpus.X[row], dtype=np.float32)


def test_ease_explains_each_item_by_the_history_item_with_the_largest_weight(client, corpus, trained):
    """The acceptance for EASE: every item's first reason is the history item whose weight B[j, i] towards
    it is largest, and the reasons' contributions are those weights, best first."""
    body = recommend(client, KNOWN_USER, k=10, model="ease", explain=True)
    row, x = training_row(corpus, KNOWN_USER)
    history = x.indices[x.data >= POSITIVE]  # what EASE reads: the positives
    B = trained["ease"].B.double().numpy()
    assert body["explanation"] == {"method": "weights", "history_weighed": len(history), "history_total": len(history),
                                   "note": None}
    assert len(body["items"]) == 10
    for item in body["items"]:
        i = corpus.item_ids.index(item["item_id"])
        reasons = item["because"]
        assert len(reasons) == EXPLAIN_REASONS and all(r["title"] for r in reasons)
        weights = B[history, i]
        assert reasons[0]["item_id"] == corpus.item_ids[history[weights.argmax()]]
        expected = sorted(weights, reverse=True)[:EXPLAIN_REASONS]
        np.testing.assert_allclose([r["contribution"] for r in reasons], expected, rtol=1e-5, atol=1e-6)


def removal_drops(model, x: sp.csr_matrix, row: int) -> np.ndarray:
    """[history, items]: each item's score minus its score with one history item removed, one at a time."""
    full = model.scores(x, users=np.array([row]))[0].numpy()
    drops = []
    for j in range(x.nnz):
        keep = np.arange(x.nnz) != j
        less = sp.csr_matrix((x.data[keep], x.indices[keep], [0, int(keep.sum())]), shape=x.shape)
        drops.append(full - model.scores(less, users=np.array([row]))[0].numpy())
    return np.array(drops)


def short_history_user(corpus) -> str:
    """A training user whose whole history is weighed (fewer than EXPLAIN_MAX_HISTORY items)."""
    return next(u for n, u in enumerate(corpus.user_ids) if 20 < corpus.X[n].nnz < EXPLAIN_MAX_HISTORY)


def test_other_models_explain_by_the_largest_score_drop(client, corpus, trained):
    """AutoRec-U (a rating model, ranking here): the first reason of each item is the history item
    whose removal lowers that item's score most, checked one removal at a time."""
    user = short_history_user(corpus)
    body = recommend(client, user, k=3, model="autorec-u", explain=True)
    row, x = training_row(corpus, user)
    assert body["explanation"] == {"method": "removal", "history_weighed": x.nnz, "history_total": x.nnz, "note": None}
    drops = removal_drops(trained["autorec-u"], x, row)
    for item in body["items"]:
        i = corpus.item_ids.index(item["item_id"])
        top = corpus.item_ids.index(item["because"][0]["item_id"])
        assert drops[list(x.indices).index(top), i] >= drops[:, i].max() - 1e-4
        np.testing.assert_allclose(item["because"][0]["contribution"], drops[:, i].max(), atol=1e-4)


def test_late_user_is_explained_by_the_history_posted(client, auth):
    user = new_user()
    posted = ["50", "172", "181", "174"]
    rows = [{"user_id": user, "item_id": i, "rating": 5, "timestamp": 1000 + n} for n, i in enumerate(posted)]
    assert client.post("/interactions", json=rows, headers=auth).status_code == 201
    body = recommend(client, user, k=5, model="ease", explain=True)
    assert body["source"] == "fold-in" and body["explanation"]["history_total"] == len(posted)
    assert all({r["item_id"] for r in item["because"]} <= set(posted) for item in body["items"])


def test_what_cannot_be_explained_says_why(client):
    """AutoRec-I scores by user index (the history moves nothing) and a user with no history gets the
    popularity list: no reasons, and the note says why; nothing is made up."""
    body = recommend(client, KNOWN_USER, k=4, model="autorec-i", explain=True)
    assert all(item["because"] is None for item in body["items"]) and len(body["items"]) == 4
    assert body["explanation"]["method"] == "none" and "do not depend on the history" in body["explanation"]["note"]
    body = recommend(client, new_user(), k=4, explain=True)
    assert body["source"] == "popular" and all(item["because"] is None for item in body["items"])
    assert body["explanation"]["method"] == "none"


def test_only_the_most_recent_history_is_weighed(client, corpus, monkeypatch):
    monkeypatch.setattr(inference, "EXPLAIN_MAX_HISTORY", 5)
    body = recommend(client, KNOWN_USER, k=6, model="autorec-u", explain=True)
    explanation = body["explanation"]
    assert explanation["history_weighed"] == 5 and explanation["history_total"] > 5
    assert "only the 5 most recent" in explanation["note"]
    mine = [(t, i) for u, i, t in zip(corpus.rows["user_id"], corpus.rows["item_id"], corpus.rows["timestamp"]) if u == KNOWN_USER]
    cutoff = sorted(mine, reverse=True)[4][0]
    recent = {i for t, i in mine if t >= cutoff}
    assert all({r["item_id"] for r in item["because"]} <= recent for item in body["items"])


def test_a_sequential_model_weighs_its_most_recent_history_only():
    """SVAE (a removal re-runs the GRU steps after it) weighs the EXPLAIN_MAX_HISTORY_SEQUENTIAL most
    recent items, says so, and its reasons are the drops of removing each of them from the whole row."""
    import torch

    from models.svae import SVAE, SVAEConfig
    from registry import LoadedModel
    from service.model_store import IdIndex, ServingModel
    from storage.crud import History

    n_items, n_history = 120, EXPLAIN_MAX_HISTORY_SEQUENTIAL + 30
    torch.manual_seed(0)
    model = SVAE(SVAEConfig(item_embed_size=16, rnn_size=16, hidden_size=16, latent_size=8, max_len=60), n_items, 1).eval()
    item_ids = [f"i{n}" for n in range(n_items)]
    loaded = LoadedModel("svae", model, ["u"], item_ids, {"u": 0}, {i: n for n, i in enumerate(item_ids)}, {})
    served = ServingModel("svae", loaded, IdIndex(item_ids), IdIndex(["u"]), np.array(item_ids, dtype=object), None, 4.0)
    seen = np.random.default_rng(0).permutation(n_items)[:n_history]  # in time order
    history = History(np.full(n_history, "u", dtype=object), np.array([item_ids[i] for i in seen], dtype=object),
                      np.full(n_history, 5.0), 1000 + np.arange(n_history, dtype=np.int64))
    asked = [item_ids[i] for i in range(n_items) if i not in set(seen)][:4]
    explained = inference.explain(served, "u", history, asked, "fold-in")
    assert (explained.method, explained.history_weighed, explained.history_total) == ("removal", EXPLAIN_MAX_HISTORY_SEQUENTIAL, n_history)
    assert f"only the {EXPLAIN_MAX_HISTORY_SEQUENTIAL} most recent" in explained.note
    rows = inference.history_rows(served, history, ["u"])
    recent = seen[-EXPLAIN_MAX_HISTORY_SEQUENTIAL:]
    drops = model.contributions(rows.X, np.array([item_ids.index(i) for i in asked]), history=recent, timestamps=rows.timestamps)
    for reasons, d in zip(explained.because, drops):
        assert [r[0] for r in reasons] == [item_ids[recent[j]] for j in np.argsort(-d, kind="stable")[:EXPLAIN_REASONS]]
        np.testing.assert_allclose([r[1] for r in reasons], np.sort(d)[::-1][:EXPLAIN_REASONS], rtol=1e-6)


def test_explained_lists_are_capped(client):
    response = client.post(f"/users/{KNOWN_USER}/recommendations", json={"k": EXPLAIN_MAX_K + 1, "explain": True})
    assert response.status_code == 422
    error = error_body(response)
    assert error["code"] == "explain_too_many_items" and str(EXPLAIN_MAX_K) in error["message"]
    assert len(recommend(client, KNOWN_USER, k=EXPLAIN_MAX_K + 1)["items"]) == EXPLAIN_MAX_K + 1  # unexplained: no cap
    assert len(recommend(client, KNOWN_USER, k=EXPLAIN_MAX_K, explain=True)["items"]) == EXPLAIN_MAX_K


def test_cache_keeps_explained_and_unexplained_answers_apart(client, computed_answers):
    """A cached unexplained answer is never served to an explain request, nor the other way round;
    each is a cache hit for its own kind."""
    for user, first in (("2", False), ("3", True)):
        kinds = [first, not first, first, not first]
        bodies = [recommend(client, user, k=8, explain=kind) for kind in kinds]
        for body in bodies:
            body.pop("recommendation_id")  # new on every answer, hit or miss
        for kind, body in zip(kinds, bodies):
            assert all(("because" in item) == kind for item in body["items"])
            assert ("explanation" in body) == kind
            if kind:
                assert all(item["because"] for item in body["items"])
        assert bodies[0] == bodies[2] and bodies[1] == bodies[3]
        assert [i["item_id"] for i in bodies[0]["items"]] == [i["item_id"] for i in bodies[1]["items"]]
    # each kind's first answer is computed (an unexplained one may come from the stored list on the event
    # loop: the titles of its items are known by then); no repeat is computed
    assert 2 <= len(computed_answers) <= 4, "the repeats were hits"


def test_openapi_states_the_caps(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    explain = schema["RecommendationRequest"]["properties"]["explain"]["description"]
    assert f"k <= {EXPLAIN_MAX_K}" in explain and f"{EXPLAIN_MAX_HISTORY} most recent" in explain
    assert f"{EXPLAIN_MAX_HISTORY_SEQUENTIAL} for a sequential model" in explain
    assert "because" in schema["RecommendedItem"]["properties"]


def test_ratings_explain_each_prediction_by_the_largest_rating_drop(client, corpus, trained):
    """POST /ratings with explain: each predicted rating's first reason is the history item whose removal
    lowers that prediction most (before clipping); in a list, only the entries asking are explained."""
    user = short_history_user(corpus)
    row, x = training_row(corpus, user)
    unseen = [corpus.item_ids[i] for i in range(40) if i not in set(x.indices)][:4]
    response = client.post("/ratings", json=[
        {"user_id": user, "item_ids": unseen, "model": "autorec-u", "explain": True},
        {"user_id": user, "item_ids": unseen, "model": "autorec-u"},
        {"user_id": KNOWN_USER, "item_ids": unseen[:2], "model": "autorec-i", "explain": True},
    ])
    assert response.status_code == 200, response.text
    explained, plain, by_index = response.json()
    assert [p["rating"] for p in explained["ratings"]] == [p["rating"] for p in plain["ratings"]]
    assert "explanation" not in plain and all("because" not in p for p in plain["ratings"])
    assert explained["explanation"]["method"] == "removal" and explained["explanation"]["history_weighed"] == x.nnz
    drops = removal_drops(trained["autorec-u"], x, row)
    for predicted in explained["ratings"]:
        i = corpus.item_ids.index(predicted["item_id"])
        reasons = predicted["because"]
        assert len(reasons) == EXPLAIN_REASONS and all(r["title"] for r in reasons)
        top = list(x.indices).index(corpus.item_ids.index(reasons[0]["item_id"]))
        np.testing.assert_allclose(drops[top, i], drops[:, i].max(), atol=1e-4)
    assert by_index["explanation"]["method"] == "none" and all(p["because"] is None for p in by_index["ratings"])
    single = client.post("/ratings", json={"user_id": user, "item_ids": unseen[:1], "model": "autorec-u", "explain": True})
    assert single.status_code == 200 and single.json()["ratings"][0]["because"] == explained["ratings"][0]["because"]


def test_explained_ratings_are_capped(client, corpus):
    items = corpus.item_ids[: EXPLAIN_MAX_K + 1]
    response = client.post("/ratings", json={"user_id": KNOWN_USER, "item_ids": items, "explain": True})
    assert response.status_code == 422 and error_body(response)["code"] == "explain_too_many_items"
    assert client.post("/ratings", json={"user_id": KNOWN_USER, "item_ids": items}).status_code == 200
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert f"at most {EXPLAIN_MAX_K} item_ids" in schema["RatingRequest"]["properties"]["explain"]["description"]
