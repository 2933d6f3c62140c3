"""Each user's top-N list published with a ranker (``trainer.top_lists``), served to a first request.

The list answers only what scoring would answer (``inference.stored_recommendation``): the
same items, scores, ranks and unknown ids over many users and option combinations; a user
written through the API since is scored (their new item folded in); a swap serves the new
version's lists at once; the lists are checksummed like every other file.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
import uuid

import numpy as np
import pytest

from _service_support import API_KEY, copy_registry, error_body, publish_version
import registry as artifacts
from service import inference
from service.cache import NO_WRITE
from service.model_store import prepare_version
from storage.crud import History

KEY = {"X-API-Key": API_KEY}


def corpus_history(corpus, user_id: str) -> History:
    rows = corpus.rows
    keep = np.asarray(rows["user_id"]) == user_id
    return History(np.asarray(rows["user_id"], dtype=object)[keep], np.asarray(rows["item_id"], dtype=object)[keep],
                   np.asarray(rows["rating"], dtype=np.float64)[keep], np.asarray(rows["timestamp"], dtype=np.int64)[keep])


def test_the_list_answers_exactly_what_scoring_answers(registry, corpus):
    version = prepare_version(registry, artifacts.latest_version(registry))
    served = version.models["ease"]
    assert served.lists is not None and served.lists.items.shape == (len(corpus.user_ids), 200)
    loaded = served.loaded.top_items
    assert isinstance(loaded, np.memmap) and np.shares_memory(served.lists.items, loaded)  # mapped, not copied
    assert version.models["autorec-u"].lists is None  # rating models are scored as before
    rng = np.random.default_rng(0)
    answered = compared = 0
    for user_id in corpus.user_ids[::7]:
        history = corpus_history(corpus, user_id)
        top = inference.recommend(version, served, user_id, history, k=30, offset=0, exclude_seen=True,
                                  exclude_items=[], candidates=None).items
        near = [i for i, _ in top]
        for k, offset, exclude, candidates in itertools.product(
            (1, 10, 50), (0, 5, 190),
            ([], near[:3] + ["no-such-item"], list(rng.choice(corpus.item_ids, 40))),
            (None, near[::2] + list(rng.choice(corpus.item_ids, 100)) + ["nope"], ["nope"]),
        ):
            options = dict(k=k, offset=offset, exclude_seen=True, exclude_items=exclude, candidates=candidates)
            stored = inference.stored_recommendation(served, user_id, NO_WRITE, **options)
            compared += 1
            if stored is None:
                continue
            answered += 1
            scored = inference.recommend(version, served, user_id, history, **options)
            assert (stored.items, stored.source, stored.unknown_items) == (scored.items, scored.source, scored.unknown_items)
        options = dict(k=10, offset=0, exclude_items=[], candidates=None)
        assert inference.stored_recommendation(served, user_id, NO_WRITE, exclude_seen=False, **options) is None
        assert inference.stored_recommendation(served, user_id, 1.0e9, exclude_seen=True, **options) is None  # written
        assert inference.stored_recommendation(served, user_id, float("inf"), exclude_seen=True, **options) is None
    assert answered > compared // 3, (answered, compared)  # most requests are answered from the list


def test_a_lists_json_is_the_models_json_byte_for_byte(registry, corpus):
    """``stored_list_json`` writes what the models write (``serving._recommendation_json`` for an unexplained
    answer): every page the lists answer, titles that need escaping or are missing, and floats of every form."""
    from service.schemas import RecommendedItem, RecommendedList, stored_list_json
    from service.serving import UNEXPLAINED

    def by_models(user_id, items, first_rank, titles, unknown):
        return RecommendedList(
            user_id=user_id, model="ease", model_version="v1", source="model", unknown_items=unknown,
            items=[RecommendedItem(item_id=i, score=s, rank=first_rank + n, title=titles.get(i)) for n, (i, s) in enumerate(items)],
        ).model_dump_json(exclude=UNEXPLAINED)

    version = prepare_version(registry, artifacts.latest_version(registry))
    served = version.models["ease"]
    odd = ['say "hi"\\ \n\t\x01\x1f\x7f', "é 猫 🎬 \u2028", "", "</script>"]
    titles = {i: odd[n % len(odd)] if n % 3 == 0 else corpus.titles.get(i, "t") for n, i in enumerate(corpus.item_ids) if n % 5}
    pages = 0
    for user_id in corpus.user_ids[::5]:
        for k, offset, exclude in itertools.product((1, 10, 40), (0, 7, 150), ([], ["nope", 'x"y'])):
            scored = inference.stored_recommendation(served, user_id, NO_WRITE, k=k, offset=offset, exclude_seen=True,
                                                     exclude_items=exclude, candidates=None)
            if scored is not None:
                pages += 1
                assert stored_list_json(user_id, "ease", "v1", scored, offset + 1, titles) == by_models(
                    user_id, scored.items, offset + 1, titles, scored.unknown_items)
    assert pages > 100
    floats = [0.0, -0.0, 1.0, 0.1, 1e-4, 9.9e-5, 1e-5, 3.2e-7, 5e-324, 1e15, 1e16, 1.5e16, 1e21, 1.7976931348623157e308, -2.5e-8,
              *np.random.default_rng(0).standard_normal(200).astype(np.float32).tolist(), float("inf"), float("nan")]
    items = [(f"i{n}", s) for n, s in enumerate(floats)]
    scored = inference.Scored(items, "model", ["a", "\x00"])
    assert stored_list_json('u"1', "ease", "v1", scored, 1, {}) == by_models('u"1', items, 1, {}, ["a", "\x00"])


def test_a_list_file_in_fortran_order_answers_as_one_in_c_order(registry, corpus):
    """The service reads a list's row through memoryviews, which need C order: a Fortran-ordered file is copied."""
    from dataclasses import replace

    from service.model_store import _stored_lists

    version = prepare_version(registry, artifacts.latest_version(registry))
    served = version.models["ease"]
    loaded = replace(served.loaded, top_items=np.asfortranarray(served.loaded.top_items),
                     top_scores=np.asfortranarray(served.loaded.top_scores))
    fortran = replace(served, lists=_stored_lists(loaded))
    options = dict(k=10, offset=3, exclude_seen=True, exclude_items=[], candidates=None)
    answers = [inference.stored_recommendation(served, u, NO_WRITE, **options) for u in corpus.user_ids[::9]]
    assert any(answers) and answers == [inference.stored_recommendation(fortran, u, NO_WRITE, **options) for u in corpus.user_ids[::9]]


def test_a_sequential_models_list_answers_what_scoring_its_history_in_order_answers(tmp_path, corpus):
    import scipy.sparse as sp
    import torch

    from _service_support import POSITIVE, positive_timestamps
    from trainer.training import fit

    positives = sp.csr_matrix(corpus.X >= POSITIVE, dtype=np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = fit("svae", positives, timestamps=positive_timestamps(corpus), progress=False, epochs=1, seed=0).model
    finally:
        torch.set_num_threads(threads)
    root = tmp_path / "registry"
    publish_version(root, {"svae": model}, corpus)
    version = prepare_version(root, artifacts.latest_version(root))
    served = version.models["svae"]
    assert served.lists is not None
    answered = 0
    torch.set_num_threads(1)  # as the service scores (TORCH_THREADS=1): more threads round the GRU otherwise
    try:
        for user_id in corpus.user_ids[::25]:
            options = dict(k=10, offset=0, exclude_seen=True, exclude_items=[], candidates=None)
            stored = inference.stored_recommendation(served, user_id, NO_WRITE, **options)
            if stored is None:
                continue
            answered += 1
            scored = inference.recommend(version, served, user_id, corpus_history(corpus, user_id), **options)
            assert (stored.items, stored.source) == (scored.items, scored.source)
    finally:
        torch.set_num_threads(threads)
    assert answered >= len(corpus.user_ids[::25]) // 2


def test_a_database_versions_list_serves_writes_older_than_its_data(registry):
    version = prepare_version(registry, artifacts.latest_version(registry))
    served = version.models["ease"]
    from dataclasses import replace

    from service.model_store import StoredLists

    user = served.loaded.user_ids[0]
    options = dict(k=5, offset=0, exclude_seen=True, exclude_items=[], candidates=None)
    from_db = replace(served, lists=StoredLists(served.lists.items, served.lists.scores, valid_before=1000.0))
    assert inference.stored_recommendation(from_db, user, 999.0, **options) is not None  # written before the data was read
    assert inference.stored_recommendation(from_db, user, 1000.0, **options) is None


def first_user_answer(client, user_id: str, **body) -> dict:
    """The answer without its recommendation_id (new on every answer): the list as computed and cached."""
    response = client.post(f"/users/{user_id}/recommendations", json={"k": 10, **body})
    assert response.status_code == 200, response.text
    answer = response.json()
    answer.pop("recommendation_id")
    return answer


def stored_list_hits(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('aerec_cache_hits_total{kind="stored_list"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_first_request_is_answered_from_the_list_and_a_write_folds_in(client, corpus, auth, computed_answers):
    user_id = corpus.user_ids[11]
    offset = int(np.random.default_rng().integers(1, 150))  # a key no other test asked for
    before = stored_list_hits(client)
    first = first_user_answer(client, user_id, offset=offset)
    assert first["source"] == "model" and len(first["items"]) == 10 and first["items"][0]["rank"] == offset + 1
    assert stored_list_hits(client) == before + 1  # from the list
    for _ in range(50):  # the list's answer is stored after it is sent (on Redis, at the loop's next turn): then a hit
        if first_user_answer(client, user_id, offset=offset) == first and stored_list_hits(client) == before + 1:
            break
        before = stored_list_hits(client) - 1
        time.sleep(0.05)
    else:
        raise AssertionError("the list's answer was never cached")
    calls = len(computed_answers)
    same = first_user_answer(client, user_id, offset=offset, exclude_items=["no-such-item"])  # another key
    assert same["items"] == first["items"] and same["unknown_items"] == ["no-such-item"]
    assert len(computed_answers) == calls and stored_list_hits(client) == before + 2  # on the event loop: titles known
    top = first["items"][0]["item_id"]

    written = client.post("/interactions", json=[{"user_id": user_id, "item_id": top, "rating": 5.0}], headers=auth)
    assert written.status_code in (200, 201), written.text
    again = first_user_answer(client, user_id, offset=offset)
    assert stored_list_hits(client) == before + 2  # scored: the history holds a write the list never saw
    assert len(computed_answers) == calls + 1
    assert top not in [i["item_id"] for i in again["items"]]  # the new interaction is seen, so excluded
    assert again["source"] == "model" and again["items"] != first["items"]


def test_the_titles_read_at_start_let_a_users_very_first_request_be_answered_on_the_event_loop(client, corpus,
                                                                                               computed_answers):
    before = stored_list_hits(client)
    answer = first_user_answer(client, corpus.user_ids[23], offset=int(np.random.default_rng().integers(1, 150)))
    assert stored_list_hits(client) == before + 1 and computed_answers == []  # from the list, with no slot and no query
    assert all(item["title"] == corpus.titles[item["item_id"]] for item in answer["items"])


def test_titles_are_read_again_before_they_expire_and_a_changed_title_shows(registry, corpus, own_seeded_backend,
                                                                             computed_answers):
    """The served version's titles are read every CACHE_TTL_S / 2 (service.titles): first requests stay on the event
    loop past the TTL of the titles read at start, and a title changed in the database shows within the TTL."""
    from fastapi.testclient import TestClient
    from sqlalchemy import update

    from service.main import create_app
    from storage.session import make_engine
    from storage.tables import Item

    settings = own_seeded_backend.settings(registry, CACHE_TTL_S=1.0, CACHE_NAMESPACE=f"titles-{uuid.uuid4().hex[:6]}")
    with TestClient(create_app(settings)) as client:
        time.sleep(2.5)  # past the TTL of the titles read at start
        user_id = corpus.user_ids[31]
        answer = first_user_answer(client, user_id, offset=3)
        assert computed_answers == [] and answer["items"][0]["title"] == corpus.titles[answer["items"][0]["item_id"]]
        item_id = answer["items"][0]["item_id"]
        engine = make_engine(own_seeded_backend.database_url)
        try:
            with engine.begin() as connection:
                connection.execute(update(Item).where(Item.external_id == item_id).values(title="Renamed since start"))
        finally:
            engine.dispose()
        started = time.monotonic()
        while first_user_answer(client, user_id, offset=3)["items"][0]["title"] != "Renamed since start":
            assert time.monotonic() - started < 2 * settings.CACHE_TTL_S + 1.0, "the changed title never showed"
            time.sleep(0.1)
        assert computed_answers == []  # every answer from the list on the event loop: no title was ever missing


def test_a_hot_swap_serves_the_new_versions_lists_at_once(tmp_path, registry, trained, corpus, seeded_backend):
    from fastapi.testclient import TestClient

    from service.main import create_app
    from trainer.training import fit

    root = tmp_path / "registry"
    copy_registry(registry, root)
    settings = seeded_backend.settings(root, RELOAD_INTERVAL_S=3600.0, CACHE_NAMESPACE=f"swap-{uuid.uuid4().hex[:6]}")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        user_id = corpus.user_ids[5]
        old = first_user_answer(client, user_id)
        import scipy.sparse as sp

        positives = sp.csr_matrix(corpus.X >= 4.0, dtype=np.float32)
        other = {**trained, "ease": fit("ease", positives, progress=False, lam=2000.0).model}  # other scores and lists
        new = publish_version(root, other, corpus)
        assert client.post("/admin/reload", headers=KEY).json()["version"] == new
        hits = stored_list_hits(client)
        answer = first_user_answer(client, user_id)
        assert answer["model_version"] == new and stored_list_hits(client) == hits + 1
        stored = np.load(root / new / "ease" / "top_items.npy")[corpus.user_ids.index(user_id), :10]
        assert [i["item_id"] for i in answer["items"]] == [corpus.item_ids[c] for c in stored]
        assert [i["score"] for i in answer["items"]] != [i["score"] for i in old["items"]]


def test_the_lists_are_checksummed_and_a_damaged_one_refuses_the_version(tmp_path, registry):
    root = tmp_path / "registry"
    good = copy_registry(registry, root)
    manifest = json.loads((root / good / "manifest.json").read_text())
    for name in ("ease/top_items.npy", "ease/top_scores.npy"):
        assert manifest["files"][name]["bytes"] == (root / good / name).stat().st_size
    assert manifest["models"]["ease"]["top_lists"]["n"] == 200

    broken = artifacts.new_version_name(root)
    shutil.copytree(root / good, root / broken)
    manifest["version"] = broken
    (root / broken / "manifest.json").write_text(json.dumps(manifest))
    path = root / broken / "ease" / "top_items.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one item of one list: still a valid array of known items
    path.write_bytes(bytes(data))
    with pytest.raises(artifacts.ArtifactError, match="ease/top_items.npy does not match its sha256"):
        artifacts.load_version(root, broken)
    os.unlink(path)
    with pytest.raises(artifacts.ArtifactError, match="ease/top_items.npy is missing"):
        artifacts.load_version(root, broken)


def test_the_admin_reload_refuses_a_version_with_a_damaged_list(tmp_path, registry, seeded_backend):
    from fastapi.testclient import TestClient

    from service.main import create_app

    root = tmp_path / "registry"
    good = copy_registry(registry, root)
    settings = seeded_backend.settings(root, RELOAD_INTERVAL_S=3600.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        broken = artifacts.new_version_name(root)
        shutil.copytree(root / good, root / broken)
        manifest = json.loads((root / broken / "manifest.json").read_text())
        manifest["version"] = broken
        (root / broken / "manifest.json").write_text(json.dumps(manifest))
        path = root / broken / "ease" / "top_scores.npy"
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x10
        path.write_bytes(bytes(data))
        (root / "LATEST").write_text(broken + "\n")
        response = client.post("/admin/reload", headers=KEY)
        assert response.status_code == 409 and "ease/top_scores.npy does not match its sha256" in error_body(response)["message"]
        assert first_user_answer(client, corpus_user(registry))["model_version"] == good


def corpus_user(registry) -> str:
    version = artifacts.latest_version(registry)
    return json.loads((registry / version / "ease" / "ids.json").read_text())["users"][0]
