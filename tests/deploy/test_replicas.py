"""Two API replicas (``python -m service --port P``) behind one database, one cache, one registry.

What ``docker compose up --scale api=2`` runs, as two processes on this machine: they
share PostgreSQL (a fresh database), Redis (a namespace of this test) and
``ARTIFACTS_DIR``. A write through one replica is read by the other; a newly published
version is served by both within the watcher interval (plus the time to load it), and
both return the same recommendations, before and after the swap.
"""

from __future__ import annotations

import time

import httpx
import pytest

from _deploy_support import Server, base_env, free_port, run, servers, wait_ready

RELOAD_INTERVAL_S = 1.0
# Loading and checking a version (EASE, 1,682 x 1,682) takes well under a second on an idle
# machine; a shared 2-core machine running the rest of the suite can take a few seconds more.
LOAD_ALLOWANCE_S = 15.0
API_KEY = "replica-test-key-7d1e0b"
USERS = ["1", "2", "3", "4", "5", "6"]


def _publish_ease(root, ml100k_dir, lam: float) -> str:
    """Train EASE on ml-100k (strong protocol, then on everything) and publish it; the version's name."""
    import torch

    from trainer.pipeline import TrainJob, train_all
    from trainer.sources import SourceSpec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the replicas run beside it on a shared 2-core machine
    try:
        report = train_all(TrainJob(SourceSpec(dataset="ml-100k", source=ml100k_dir), ["ease"], {"ease": {"lam": lam}},
                           device="cpu", artifacts_dir=root, gate=False, progress=False))
    finally:
        torch.set_num_threads(threads)
    return report.version


def _histories(ml100k_dir) -> list[dict]:
    """USERS' ml-100k ratings as POST /interactions bodies."""
    import numpy as np

    from interactions.movielens import read_dataset

    inter = read_dataset("ml-100k", ml100k_dir)
    users = np.asarray(inter.user_ids).astype(str)[inter.users]
    items = np.asarray(inter.item_ids).astype(str)[inter.items]
    keep = np.isin(users, USERS)
    return [{"user_id": u, "item_id": i, "rating": float(r), "timestamp": int(t)}
            for u, i, r, t in zip(users[keep], items[keep], inter.ratings[keep], inter.timestamps[keep])]


def _recommend(base: str, user: str, k: int) -> dict:
    """The answer without its ``recommendation_id``: every answer has its own, cached or not."""
    # ENVIRONMENT=production: reads need a key too (API_KEY opens every scope)
    response = httpx.post(f"{base}/users/{user}/recommendations", json={"k": k}, headers={"X-API-Key": API_KEY}, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer.pop("recommendation_id")
    return answer


def _agreeing_lists(bases: list[str], version: str) -> dict[str, list[str]]:
    """Each user's top 10 from both replicas: same version, same items and scores.

    The second replica is asked for k=15 (another cache key), so it computes its list
    itself rather than reading the first one's from the shared cache.
    """
    lists = {}
    for user in USERS:
        first, second = _recommend(bases[0], user, 10), _recommend(bases[1], user, 15)
        assert first["model_version"] == second["model_version"] == version
        assert first["source"] == second["source"] == "model", (first["source"], second["source"])
        top = [item["item_id"] for item in first["items"]]
        assert top == [item["item_id"] for item in second["items"][:10]], user
        assert [i["score"] for i in first["items"]] == pytest.approx([i["score"] for i in second["items"][:10]], rel=1e-5)
        assert _recommend(bases[1], user, 10) == first  # the same request: the same answer, cached or not
        lists[user] = top
    return lists


def _wait_for_version(base: str, version: str, deadline: float) -> float:
    """Poll a user's recommendations until they come from ``version``; when that happened."""
    while time.monotonic() < deadline:
        if _recommend(base, USERS[0], 10)["model_version"] == version:
            return time.monotonic()
        time.sleep(0.1)
    pytest.fail(f"{base} still serves an older version than {version}")


@pytest.mark.slow
def test_two_replicas_serve_the_same_version_and_agree(
    tmp_path, monkeypatch, python, ml100k_dir, ml100k_cache, fresh_database, redis_url, cache_namespace
):
    from trainer.settings import get_settings

    monkeypatch.setenv("DATA_DIR", str(ml100k_cache))
    get_settings.cache_clear()
    root = tmp_path / "artifacts"
    first_version = _publish_ease(root, ml100k_dir, lam=300.0)
    env = base_env(DATABASE_URL=fresh_database, REDIS_URL=redis_url, CACHE_NAMESPACE=cache_namespace,
                   ARTIFACTS_DIR=str(root), RELOAD_INTERVAL_S=str(RELOAD_INTERVAL_S), ENVIRONMENT="production",
                   API_KEY=API_KEY, DATA_DIR=str(ml100k_cache))
    run([python, "-m", "service", "migrate"], env, timeout=120)  # compose's one-shot, before any replica

    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    with servers() as started:
        for port in ports:
            started.append(Server([python, "-m", "service", "--port", str(port)], env, tmp_path / f"api-{port}.log"))
        for base, server in zip(bases, started):
            wait_ready(base, server, timeout=180, version=first_version)

        # written through one replica, read by the other: they share the database
        written = httpx.post(f"{bases[0]}/interactions", json=_histories(ml100k_dir), headers={"X-API-Key": API_KEY},
                             timeout=60)
        assert written.status_code == 201, written.text
        assert written.json()["new_users"] == len(USERS)
        before = _agreeing_lists(bases, first_version)

        second_version = _publish_ease(root, ml100k_dir, lam=20.0)  # moves LATEST
        published = time.monotonic()
        deadline = published + RELOAD_INTERVAL_S + LOAD_ALLOWANCE_S
        delays = [_wait_for_version(base, second_version, deadline) - published for base in bases]
        after = _agreeing_lists(bases, second_version)
        print(f"replicas served {second_version} {delays[0]:.2f}s and {delays[1]:.2f}s after it was published")

        assert second_version != first_version
        assert before != after, "the new version's model (lambda 20, not 300) must change some user's list"
        for server in started:
            assert "serving version " + second_version in server.log()
