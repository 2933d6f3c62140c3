"""Every command in docker-compose.yml, run on this machine the way compose would run it.

There is no Docker engine here, so the test plays compose's part: it reads
docker-compose.yml, interpolates it with a ``.env`` made from ``.env.example`` (as the
README says: copy it, set the secrets), and runs the ``migrate``, ``seed``, ``api`` and
``trainer`` services' commands verbatim, in compose's order, with each service's own
environment. Only what Docker itself provides is mapped to this machine:

* the network: ``postgres:5432`` and ``redis:6379`` become the test servers
  (``TEST_DATABASE_URL`` on a fresh database, ``TEST_REDIS_URL``); the API's port is
  published on a free local port;
* the named volumes: ``artifacts`` and ``datasets`` become temporary folders (ml-100k is
  cached there first, as ``python -m trainer data ml-100k`` does, so nothing is downloaded);
* the image: ``python`` is this interpreter, ``sh`` runs from the repository (the image's
  ``/app``).
The Redis server is shared with other tests, so the one setting added is ``CACHE_NAMESPACE``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from _deploy_support import REPO, Server, base_env, free_port, run, servers, wait_ready

COMPOSE = REPO / "docker-compose.yml"
API_KEY = "compose-test-key-a41c93"
# The .env a user writes from .env.example: the secrets, the demo models to train, fast reloads
# and a short retraining interval so the scheduled trainer's first run happens during the test.
DOTENV = {"API_KEY": API_KEY, "TRAIN_MODELS": "ease,autorec-u", "RELOAD_INTERVAL_S": "1", "RETRAIN_EVERY": "10s",
          "SEED_DATASET": "ml-100k"}

_VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution on every string of a parsed compose file.

    ``${X}``, ``${X:-default}`` (unset or empty), ``${X-default}`` (unset),
    ``${X:?error}`` / ``${X?error}`` (required), ``$X``, and ``$$`` for a literal ``$``.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(1):
            return "$"
        name, operator, argument = match.group(2) or match.group(5), match.group(3), match.group(4)
        current = env.get(name)
        missing = current is None or (operator is not None and operator.startswith(":") and current == "")
        if operator and operator.endswith("?") and missing:
            raise ValueError(f"compose refuses to start: {name}: {argument}")
        if operator and operator.endswith("-") and missing:
            return argument
        return current or ""

    return _VARIABLE.sub(substitute, value)


def dotenv(overrides: dict[str, str]) -> dict[str, str]:
    """``cp .env.example .env`` and edit it: KEY=VALUE lines, comments dropped."""
    env = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    env.update(overrides)
    return env


class HostCompose:
    """The interpolated compose file, with its services' commands and environments mapped to this host."""

    def __init__(self, env: dict[str, str], volumes: dict[str, Path], redis_url: str, namespace: str) -> None:
        self.config = interpolate(yaml.safe_load(COMPOSE.read_text()), env)
        self.volumes = volumes
        self.redis_url = redis_url
        self.namespace = namespace
        self.pg = make_url(os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))

    def service(self, name: str) -> dict:
        return self.config["services"][name]

    def command(self, name: str) -> list[str]:
        command = list(self.service(name)["command"])
        if command[0] == "python":
            command[0] = sys.executable
        return command

    def environment(self, name: str) -> dict[str, str]:
        service = self.service(name)
        env = {key: str(value) for key, value in service["environment"].items()}
        for mount in service.get("volumes", []):
            volume, target = mount.split(":")[:2]
            for key, value in env.items():
                if value == target or value.startswith(target + "/"):
                    env[key] = str(self.volumes[volume]) + value[len(target):]
        database = make_url(env["DATABASE_URL"])
        assert (database.host, database.port) == ("postgres", 5432), database
        env["DATABASE_URL"] = database.set(host=self.pg.host, port=self.pg.port).render_as_string(hide_password=False)
        assert env["REDIS_URL"] == "redis://redis:6379/0", env["REDIS_URL"]
        env["REDIS_URL"] = self.redis_url
        env["CACHE_NAMESPACE"] = self.namespace
        # `python` in scripts (docker/seed.sh) is the image's interpreter: here, this one
        return base_env(**env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def _recommend(base: str, user: str) -> dict:
    # compose runs ENVIRONMENT=production: reads need a key (API_KEY opens every scope)
    response = httpx.post(f"{base}/users/{user}/recommendations", json={"k": 10}, headers={"X-API-Key": API_KEY}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_interpolation_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d}/${EMPTY:-d}/${EMPTY-d}/${UNSET-d}/$SET/$${SET}", env) == "x/d//d/x/${SET}"
    with pytest.raises(ValueError, match="UNSET: set it"):
        interpolate("${UNSET:?set it}", env)
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(yaml.safe_load(COMPOSE.read_text()), {"API_KEY": "k"})


@pytest.mark.slow
def test_compose_services_run_on_the_host(tmp_path, ml100k_cache, fresh_database, redis_url, cache_namespace):
    from sqlalchemy import create_engine, text

    database = make_url(fresh_database)
    env = dotenv({**DOTENV, "POSTGRES_USER": database.username, "POSTGRES_DB": database.database,
                  # trust authentication ignores it; compose requires one
                  "POSTGRES_PASSWORD": database.password or "unused-by-trust-auth"})
    volumes = {"artifacts": tmp_path / "artifacts", "datasets": tmp_path / "datasets", "pgdata": tmp_path / "pgdata"}
    shutil.copytree(ml100k_cache, volumes["datasets"])
    volumes["artifacts"].mkdir()
    compose = HostCompose(env, volumes, redis_url, cache_namespace)
    artifacts = volumes["artifacts"]

    # migrate: the one-shot everything else waits for
    migrated = run(compose.command("migrate"), compose.environment("migrate"), timeout=120)
    assert "database schema is at head" in migrated.stdout

    # seed: load ml-100k into the database, train TRAIN_MODELS, publish
    assert compose.command("seed") == ["sh", "docker/seed.sh"]
    seeded = run(compose.command("seed"), compose.environment("seed"), timeout=400)
    print(seeded.stdout)
    assert "seeded ml-100k: 100,000 new interactions" in seeded.stdout, seeded.stdout
    seed_version = (artifacts / "LATEST").read_text().strip()
    manifest = json.loads((artifacts / seed_version / "manifest.json").read_text())
    assert sorted(manifest["models"]) == ["autorec-u", "bias", "ease", "popularity"]  # baselines beside the models
    assert manifest["source"]["kind"] == "database"
    engine = create_engine(fresh_database)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM interactions")).scalar() == 100_000
    engine.dispose()
    again = run(compose.command("seed"), compose.environment("seed"), timeout=60)  # a restart does nothing
    assert "already published; nothing to do" in again.stdout

    # api and trainer start together once migrate has completed
    api_command = compose.command("api")
    assert api_command[-4:] == ["--host", "0.0.0.0", "--port", "8000"]
    port = free_port()
    api_command[-3], api_command[-1] = "127.0.0.1", str(port)  # compose publishes 8000; here a free local port
    health_url = compose.service("api")["healthcheck"]["test"][-1]
    assert health_url == "http://127.0.0.1:8000/readyz"
    base = f"http://127.0.0.1:{port}"
    with servers() as started:
        api = Server(api_command, compose.environment("api"), tmp_path / "api.log")
        trainer = Server(compose.command("trainer"), compose.environment("trainer"), tmp_path / "trainer.log")
        started += [api, trainer]
        wait_ready(base, api, timeout=180, version=seed_version)
        assert httpx.get(base + health_url.removeprefix("http://127.0.0.1:8000"), timeout=10).status_code == 200
        first = _recommend(base, "1")
        assert first["model_version"] == seed_version and first["model"] == "ease" and first["source"] == "model"
        assert len(first["items"]) == 10
        unkeyed = httpx.post(f"{base}/ratings", json={"user_id": "1", "item_ids": ["1", "50"]}, timeout=30)
        assert unkeyed.status_code == 401, unkeyed.text
        ratings = httpx.post(f"{base}/ratings", json={"user_id": "1", "item_ids": ["1", "50"]},
                             headers={"X-API-Key": API_KEY}, timeout=30)
        assert ratings.status_code == 200, ratings.text

        # the schedule does not train at start (the seed did); its first run comes after RETRAIN_EVERY
        trainer.wait_for_log("schedule: interval[0:00:10]", timeout=120)
        trainer.wait_for_log("run 1: training started", timeout=60)
        trainer.wait_for_log("run 1: published version", timeout=400)
        scheduled_version = (artifacts / "LATEST").read_text().strip()
        assert scheduled_version != seed_version
        assert "gate: " in trainer.log()  # the scheduled run is checked against the seed's version
        deadline = time.monotonic() + 30
        while _recommend(base, "1")["model_version"] != scheduled_version:
            assert time.monotonic() < deadline, f"the API did not swap to {scheduled_version}:\n{api.log()[-3000:]}"
            time.sleep(0.5)
        assert trainer.alive(), trainer.log()[-3000:]  # a schedule keeps running after a run
        # SIGTERM, as `docker compose stop` sends: uvicorn shuts down cleanly, then exits by the signal
        assert api.stop() in (0, -15) and "Application shutdown complete" in api.log(), api.log()[-3000:]
        trainer.stop()
    assert "Traceback" not in api.log() and "Traceback" not in trainer.log(), trainer.log()[-3000:]

