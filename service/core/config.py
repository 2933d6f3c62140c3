"""Service settings, read from the environment (or a ``.env`` file) by pydantic-settings.

Built on demand (``Settings()``) by the app factory and the CLI, never at import time,
so tests can build an app with their own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from rating_scale import RatingScaleSettings

PLACEHOLDER_KEYS = {"", "secret", "password", "apikey", "api-key", "dev-key", "test"}
PLACEHOLDER_PREFIXES = ("change", "replace", "your-", "<")  # changethis, change-me-api-key, <your key>


def is_placeholder(key: str) -> bool:
    key = key.strip().lower()
    return key in PLACEHOLDER_KEYS or key.startswith(PLACEHOLDER_PREFIXES)


class Settings(RatingScaleSettings):  # RATING_SCALE, POSITIVE_THRESHOLD: what POST /interactions accepts
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    ENVIRONMENT: Literal["development", "staging", "production"] = "development"
    DATABASE_URL: str = "sqlite:///./aerec.db"
    REDIS_URL: str | None = None  # None: an in-process TTL/LRU cache
    CACHE_NAMESPACE: str = "aerec"  # prefix of every cache key (several deployments can share one Redis)
    ARTIFACTS_DIR: Path = Path(".artifacts")  # the trainer's model registry
    API_KEY: str = "changethis"  # required for writes and admin; refused as a placeholder outside development
    READS_REQUIRE_KEY: bool = False
    CACHE_TTL_S: float = Field(default=300.0, gt=0)
    CACHE_MAX_ENTRIES: int = Field(default=10_000, ge=1)  # in-process cache only
    # Interactions of recently served users kept in each API process (0: none), so another list
    # for the same user skips the history query; a write for the user makes them read again.
    HISTORY_CACHE_ROWS: int = Field(default=200_000, ge=0)
    REDIS_TIMEOUT_S: float = Field(default=0.25, gt=0)  # connect and socket timeout: a slow cache is a miss
    RELOAD_INTERVAL_S: float = Field(default=5.0, gt=0)  # how often the watcher polls LATEST
    DB_TIMEOUT_S: int = Field(default=5, ge=1)  # connect timeout; a dead database answers 503 after this
    # Connections each API process keeps open. Requests run on up to 40 threads; past the pool,
    # extra connections are opened and closed per request (SQLAlchemy's default pool of 5 did
    # that at 8 concurrent requests: a PostgreSQL connect, or SQLite's PRAGMAs, per request).
    DB_POOL_SIZE: int = Field(default=20, ge=1)
    MAX_BATCH: int = Field(default=1000, ge=1)  # most entries of any list in a request (interactions, item ids, ...)
    MAX_K: int = Field(default=1000, ge=1)  # k + offset of one recommendation list
    MAX_BODY_BYTES: int = Field(default=1_000_000, ge=1024)
    # torch threads per request's scoring. A second one fights the event loop and the other
    # requests' threads for the same cores (on 2 busy cores one EASE score went from 0.6 ms
    # to 8 ms with 2 threads); a large model on many cores may want more.
    TORCH_THREADS: int = Field(default=1, ge=1)
    # Requests whose model work (history query, scoring) runs at once; the others queue on the
    # event loop. Python-bound scoring holds the GIL, so more threads only take turns on it.
    SCORING_CONCURRENCY: int = Field(default=1, ge=1)
    DEFAULT_MODEL: str = "ease"
    DEFAULT_RATING_MODEL: str = "autorec-u"

    @model_validator(mode="after")
    def _refuse_placeholder_key(self) -> Settings:
        if self.ENVIRONMENT != "development" and is_placeholder(self.API_KEY):
            raise ValueError(
                f"API_KEY is empty or a placeholder ({self.API_KEY!r}); set a real secret when ENVIRONMENT={self.ENVIRONMENT}"
            )
        return self
