"""End to end: a MovieLens-latest ``ratings.csv`` (userId,movieId,rating,timestamp; half stars) trains as is,
by named columns and by recognised names, and the service seeds and serves it, on both backends."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from _service_support import API_KEY, new_user
import registry
from service.cli import main
from service.main import create_app
from trainer.cli import main as trainer_main

SCALE_NOTE = "rating scale 0.5:5:0.5, positives >= 4 (inferred from ratings.csv; --rating-scale declares it)"


@pytest.fixture(scope="module")
def ratings_csv(tmp_path_factory, ml100k_dir) -> Path:
    """ml-100k's first 300 users in the MovieLens-latest layout, half of their stars moved down half a star (0.5-5)."""
    frame = pd.read_csv(ml100k_dir / "u.data", sep="\t", names=["userId", "movieId", "rating", "timestamp"])
    frame = frame[frame["userId"] <= 300]
    frame["rating"] = frame["rating"] - 0.5 * ((frame["userId"] + frame["movieId"]) % 2)
    path = tmp_path_factory.mktemp("latest") / "ratings.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def registry_and_runs(ratings_csv, tmp_path_factory):
    """Trained as the README says, columns named (``python -m trainer``); then again with no column options
    (recognised names), in process to spare a second start of torch."""
    root = tmp_path_factory.mktemp("registry")
    train = ["train", "--file", str(ratings_csv), "--models", "ease", "--device", "cpu", "--no-progress",
             "--artifacts-dir", str(root)]
    env = {k: v for k, v in os.environ.items() if k not in ("RATING_SCALE", "POSITIVE_THRESHOLD")}
    named = subprocess.run([sys.executable, "-m", "trainer", *train, "--user-col", "userId", "--item-col", "movieId"],
                           cwd=ratings_csv.parent, env=env, capture_output=True, text=True, timeout=300)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = trainer_main(train)
    return root, named, subprocess.CompletedProcess(train, code, out.getvalue(), err.getvalue())


def test_trains_and_publishes_with_named_columns_and_with_recognised_names(registry_and_runs, ratings_csv):
    root, named, recognised = registry_and_runs
    for run in (named, recognised):
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        lines = run.stdout.strip().splitlines()
        assert lines[0] == (f"data: {ratings_csv} (columns: user=userId, item=movieId, rating=rating, "
                            f"timestamp=timestamp), {SCALE_NOTE}")
        assert lines[1].startswith("ease ") and lines[-1].startswith("published version ")
    assert len(registry.list_versions(root)) == 2
    manifest = registry.load_version(root).manifest
    assert manifest["rating_scale"]["scale"] == "0.5:5:0.5" and manifest["positive_threshold"] == 4.0
    frame = pd.read_csv(ratings_csv)
    assert manifest["source"]["n_users"] == 300 and manifest["source"]["n_interactions"] == len(frame)


def test_the_service_seeds_and_serves_it(registry_and_runs, ratings_csv, empty_backend, tmp_path, monkeypatch):
    root = registry_and_runs[0]
    monkeypatch.setenv("DATABASE_URL", empty_backend.database_url)
    monkeypatch.setenv("RATING_SCALE", "0.5:5:0.5")
    monkeypatch.delenv("POSITIVE_THRESHOLD", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["seed", "--file", str(ratings_csv), "--user-col", "userId", "--item-col", "movieId"]) == 0

    settings = empty_backend.settings(root, RATING_SCALE="0.5:5:0.5")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/models").json()["version"] == registry.latest_version(root)
        seen = set(pd.read_csv(ratings_csv).query("userId == 1")["movieId"].astype(str))
        body = client.post("/users/1/recommendations", json={"k": 10}).json()
        assert body["source"] == "model" and len(body["items"]) == 10
        assert not seen & {item["item_id"] for item in body["items"]}
        newcomer = new_user()
        history = [{"user_id": newcomer, "item_id": item, "rating": 4.5} for item in ("50", "172", "181")]
        assert client.post("/interactions", json=history, headers={"X-API-Key": API_KEY}).status_code == 201
        assert client.post(f"/users/{newcomer}/recommendations", json={"k": 5}).json()["source"] == "fold-in"
