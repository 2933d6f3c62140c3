"""Settings: placeholder API keys are refused outside development; nothing is built at import time."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.core.config import Settings


@pytest.mark.parametrize("key", ["", "changethis", "change-me-api-key", "  Secret "])
def test_placeholder_key_is_refused_outside_development(key):
    with pytest.raises(ValidationError, match="API_KEY"):
        Settings(ENVIRONMENT="production", API_KEY=key)
    assert Settings(ENVIRONMENT="development", API_KEY=key).API_KEY == key  # a laptop may keep it


def test_a_real_key_is_accepted_in_production():
    assert Settings(ENVIRONMENT="production", API_KEY="9c1f-real-secret-77ab").ENVIRONMENT == "production"


def test_defaults_are_the_embedded_setup(monkeypatch):
    for name in ("DATABASE_URL", "REDIS_URL", "DEFAULT_MODEL", "DEFAULT_RATING_MODEL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.DATABASE_URL == "sqlite:///./aerec.db" and settings.REDIS_URL is None
    assert (settings.DEFAULT_MODEL, settings.DEFAULT_RATING_MODEL) == ("best", "best")  # the version's best per task


def test_apps_do_not_share_state(tmp_path):
    from service.main import create_app

    first = create_app(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}", ARTIFACTS_DIR=tmp_path))
    second = create_app(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", ARTIFACTS_DIR=tmp_path))
    assert first.state.parts.engine is not second.state.parts.engine
    assert first.state.parts.metrics.registry is not second.state.parts.metrics.registry


def test_the_app_keeps_db_pool_size_connections(tmp_path):
    from service.main import create_app

    app = create_app(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}", ARTIFACTS_DIR=tmp_path, DB_POOL_SIZE=12))
    assert app.state.parts.engine.pool.size() == 12
    assert create_app(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'q.db'}", ARTIFACTS_DIR=tmp_path)).state.parts.engine.pool.size() == 20


def test_scoring_concurrency_sets_the_scoring_slots(tmp_path):
    from service.main import create_app

    app = create_app(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}", ARTIFACTS_DIR=tmp_path, SCORING_CONCURRENCY=3))
    assert app.state.parts.scoring.limiter.total_tokens == 3
    assert create_app(Settings(DATABASE_URL=f"sqlite:///{tmp_path / 't.db'}", ARTIFACTS_DIR=tmp_path)).state.parts.scoring.limiter.total_tokens == 1
    with pytest.raises(ValidationError, match="SCORING_CONCURRENCY"):
        Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'u.db'}", ARTIFACTS_DIR=tmp_path, SCORING_CONCURRENCY=0)


def test_scoring_device_is_the_gpu_when_there_is_one_and_the_store_loads_onto_it(tmp_path):
    import torch

    from service.main import create_app

    here = "cuda" if torch.cuda.is_available() else "cpu"
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'd.db'}", ARTIFACTS_DIR=tmp_path)
    assert settings.SCORING_DEVICE == "auto" and settings.scoring_device == here
    assert create_app(settings).state.parts.store.device == here
    assert Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'e.db'}", SCORING_DEVICE="cpu").scoring_device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValidationError, match="SCORING_DEVICE=cuda but torch sees no CUDA GPU"):
            Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'f.db'}", SCORING_DEVICE="cuda")


@pytest.mark.parametrize("name", ["WRITE_API_KEY", "READ_API_KEY"])
def test_narrower_keys_are_optional_but_never_placeholders_outside_development(name):
    real = "9c1f-real-secret-77ab"
    assert getattr(Settings(ENVIRONMENT="production", API_KEY=real, **{name: ""}), name) is None  # empty: unset
    with pytest.raises(ValidationError, match=name):
        Settings(ENVIRONMENT="production", API_KEY=real, **{name: "change-me"})
    with pytest.raises(ValidationError, match="must all differ"):
        Settings(ENVIRONMENT="production", API_KEY=real, **{name: real})  # the same key would open two scopes


def test_reads_need_a_key_outside_development_unless_set():
    real = "9c1f-real-secret-77ab"
    assert Settings(ENVIRONMENT="development").READS_REQUIRE_KEY is False
    assert Settings(ENVIRONMENT="staging", API_KEY=real).READS_REQUIRE_KEY is True
    assert Settings(ENVIRONMENT="production", API_KEY=real).READS_REQUIRE_KEY is True
    assert Settings(ENVIRONMENT="production", API_KEY=real, READS_REQUIRE_KEY=False).READS_REQUIRE_KEY is False
    assert Settings(ENVIRONMENT="development", READS_REQUIRE_KEY=True).READS_REQUIRE_KEY is True


def test_rate_limits_are_off_in_development_and_on_elsewhere():
    from service.core.config import DEFAULT_RATE_LIMITS

    dev = Settings(ENVIRONMENT="development", RATE_LIMIT="")
    assert (dev.RATE_LIMIT, dev.RATE_LIMIT_PER_KEY) == ("off", "off")
    prod = Settings(ENVIRONMENT="production", API_KEY="9c1f-real-secret-77ab")
    assert (prod.RATE_LIMIT, prod.RATE_LIMIT_PER_KEY) == (DEFAULT_RATE_LIMITS["RATE_LIMIT"], DEFAULT_RATE_LIMITS["RATE_LIMIT_PER_KEY"])
    assert Settings(ENVIRONMENT="development", RATE_LIMIT="5/second;100/minute").RATE_LIMIT == "5/second;100/minute"
    with pytest.raises(ValidationError, match="RATE_LIMIT_PER_KEY='lots'"):
        Settings(RATE_LIMIT_PER_KEY="lots")


def test_fastapis_native_telemetry_is_off_unless_otel_enabled(tmp_path, monkeypatch):
    from service.main import create_app

    monkeypatch.delenv("OTEL_ENABLED", raising=False)
    url = f"sqlite:///{tmp_path / 't.db'}"
    off = create_app(Settings(DATABASE_URL=url, ARTIFACTS_DIR=tmp_path))._telemetry  # what FastAPI was given
    on = create_app(Settings(DATABASE_URL=url, ARTIFACTS_DIR=tmp_path, OTEL_ENABLED=True))._telemetry
    assert (off["tracing"], off["metrics"], off["logs"]) == (False, False, False)
    assert (on["tracing"], on["metrics"], on["logs"]) == (True, True, True)
