"""POST/GET /admin/training against the real service on both backends: a real trainer run (EASE on
the seeded database) starts in its own process, one at a time, publishes, and its version is served;
nothing but checked values reaches its command line."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager

from fastapi.testclient import TestClient

from _service_support import API_KEY, error_body
import registry as artifacts
from service.main import create_app

ADMIN = {"X-API-Key": API_KEY}


@contextmanager
def app_on(backend, registry, runs):
    app = create_app(backend.settings(registry, TRAINING_RUNS_DIR=runs))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_a_training_run_trains_on_the_database_publishes_and_is_served(seeded_backend, tmp_path):
    root, runs = tmp_path / "registry", tmp_path / "runs"
    with app_on(seeded_backend, root, runs) as client:
        assert client.get("/models").json()["version"] is None  # an empty registry: nothing served yet
        assert error_body(client.get("/admin/training", headers=ADMIN))["code"] == "no_training_run"
        started = client.post("/admin/training", json={"models": ["ease", "ease"], "seed": 3}, headers=ADMIN)
        assert started.status_code == 202, started.text
        run = started.json()
        assert run["state"] == "running" and run["models"] == ["ease"] and run["exit_code"] is None
        assert run["command"][1:] == ["-m", "trainer", "train", "--from-db", "--artifacts-dir", str(root.resolve()),
                                      "--models", "ease", "--seed", "3", "--no-progress"]
        assert not any(seeded_backend.database_url in part for part in run["command"])  # by environment, not in ps
        busy = client.post("/admin/training", json={}, headers=ADMIN)  # the trainer is still importing torch
        assert busy.status_code == 409 and error_body(busy)["details"] == {"running": run["id"]}
        assert run["id"] in error_body(busy)["message"]

        done = wait_for(lambda: (r := client.get("/admin/training", headers=ADMIN).json())["state"] != "running" and r,
                        240, "the run to end")
        assert done["state"] == "finished" and done["exit_code"] == 0, done["output_tail"]
        assert done["ended_at"] >= done["started_at"]
        version = artifacts.latest_version(root)
        assert version and any(f"published version {version}" in line for line in done["output_tail"]), done["output_tail"]
        assert (runs / f"{run['id']}.log").read_text().splitlines()[-len(done["output_tail"]):] == done["output_tail"]
        served = wait_for(lambda: (r := client.get("/models").json())["version"] and r, 30, "the watcher")
        assert served["version"] == version and "ease" in [m["name"] for m in served["models"]]
        answer = client.post("/users/1/recommendations", json={"k": 5})
        assert answer.status_code == 200 and answer.json()["model_version"] == version


def test_training_requests_are_checked_before_anything_runs(client):
    cases = [
        ({"models": ["nope"]}, "unknown_model"),
        ({"models": ["ease,multvae --no-gate"]}, "validation_error"),  # not a model name: never split, never passed on
        ({"models": ["--config=/etc/passwd"]}, "validation_error"),
        ({"models": ["ease"], "args": ["--no-gate"]}, "validation_error"),  # no field carries free arguments
        ({"seed": -1}, "validation_error"),
        ({"seed": "1; ls"}, "validation_error"),
    ]
    for body, code in cases:
        response = client.post("/admin/training", json=body, headers=ADMIN)
        assert response.status_code == 422 and error_body(response)["code"] == code, (body, response.text)
    unknown = error_body(client.post("/admin/training", json={"models": ["nope", "ease"]}, headers=ADMIN))
    assert unknown["details"]["unknown"] == ["nope"] and "ease" in unknown["details"]["available"]
    assert client.post("/admin/training", json={"models": ["ease"]}).status_code == 401
    assert client.post("/admin/training", json={"models": ["ease"]}, headers={"X-API-Key": "wrong"}).status_code == 403
    assert client.get("/admin/training").status_code == 401
    assert client.app.state.parts.training_runs.last is None  # none of these started anything


def test_a_run_is_refused_while_another_process_holds_the_registry_lock(empty_backend, tmp_path):
    root = tmp_path / "registry"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from registry import registry_lock; "
         "lock = registry_lock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(60)", str(root)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with app_on(empty_backend, root, tmp_path / "runs") as client:
            response = client.post("/admin/training", json={"models": ["ease"]}, headers=ADMIN)
            assert response.status_code == 409, response.text
            error = error_body(response)
            assert error["code"] == "training_running" and error["details"] == {"running": None}
            assert "registry's lock" in error["message"] and str(tmp_path) not in response.text
            assert client.app.state.parts.training_runs.last is None
    finally:
        holder.kill()
        holder.wait()


def test_a_runs_folder_that_cannot_be_written_answers_503_naming_its_setting_not_its_path(empty_backend, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the runs folder should be")
    with app_on(empty_backend, tmp_path / "registry", blocked) as client:
        response = client.post("/admin/training", json={"models": ["ease"]}, headers=ADMIN)
        assert response.status_code == 503, response.text
        error = error_body(response)
        assert error["code"] == "training_unavailable" and error["details"] == {"setting": "TRAINING_RUNS_DIR"}
        assert "TRAINING_RUNS_DIR" in error["message"] and str(tmp_path) not in response.text
        assert client.app.state.parts.training_runs.last is None


def test_a_registry_that_cannot_be_written_answers_503_naming_its_setting(empty_backend, tmp_path):
    blocked = tmp_path / "registry-file"
    blocked.write_text("a file where the registry should be")
    with app_on(empty_backend, blocked, tmp_path / "runs") as client:
        response = client.post("/admin/training", json={"models": ["ease"]}, headers=ADMIN)
        assert response.status_code == 503, response.text
        assert error_body(response)["details"] == {"setting": "ARTIFACTS_DIR"} and str(tmp_path) not in response.text


def test_only_the_admin_key_opens_training_and_before_the_body_is_read(empty_backend, tmp_path, body_reads):
    app = create_app(empty_backend.settings(tmp_path / "registry", TRAINING_RUNS_DIR=tmp_path / "runs", ENVIRONMENT="staging",
                                            READ_API_KEY="read-key-91c2f0", WRITE_API_KEY="write-key-5b7e13"))
    with TestClient(app, raise_server_exceptions=False) as client:
        for key in ("read-key-91c2f0", "write-key-5b7e13"):
            for response in (client.post("/admin/training", json={"models": ["ease"]}, headers={"X-API-Key": key}),
                             client.get("/admin/training", headers={"X-API-Key": key})):
                assert response.status_code == 403 and error_body(response)["code"] == "insufficient_scope", response.text
        assert "/admin/training" not in body_reads and app.state.parts.training_runs.last is None


def test_stopping_the_service_stops_a_run_still_going(empty_backend, tmp_path):
    import signal

    root = tmp_path / "registry"
    with app_on(empty_backend, root, tmp_path / "runs") as client:
        runs = client.app.state.parts.training_runs
        assert client.post("/admin/training", json={"models": ["ease"]}, headers=ADMIN).status_code == 202
        process = runs._process
    # the lifespan's end terminated it (the trainer was still importing): nothing left running, nothing published
    assert process.poll() == -signal.SIGTERM
    wait_for(lambda: runs.last.exit_code is not None, 5, "the waiting thread")
    assert runs.last.state == "failed" and artifacts.latest_version(root) is None
