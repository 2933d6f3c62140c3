"""Service settings, read from the environment (or a ``.env`` file) by pydantic-settings.

Built on demand (``Settings()``) by the app factory and the CLI, never at import time,
so tests can build an app with their own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from limits import parse_many
from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from rating_scale import RatingScaleSettings
from storage.settings import DEFAULT_DATABASE_URL

PLACEHOLDER_KEYS = {"", "secret", "password", "apikey", "api-key", "dev-key", "test"}
PLACEHOLDER_PREFIXES = ("change", "replace", "your-", "<")  # changethis, change-me-api-key, <your key>


# Outside development: generous for a client, a bound for one that loops (a key may serve many users)
DEFAULT_RATE_LIMITS = {"RATE_LIMIT": "50/second;1000/minute", "RATE_LIMIT_PER_KEY": "1000/second"}


def is_placeholder(key: str) -> bool:
    key = key.strip().lower()
    return key in PLACEHOLDER_KEYS or key.startswith(PLACEHOLDER_PREFIXES)


class Settings(RatingScaleSettings):  # RATING_SCALE, POSITIVE_THRESHOLD: what POST /interactions accepts
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    ENVIRONMENT: Literal["development", "staging", "production"] = "development"
    DATABASE_URL: str = DEFAULT_DATABASE_URL
    REDIS_URL: str | None = None  # None: an in-process TTL/LRU cache
    CACHE_NAMESPACE: str = "aerec"  # prefix of every cache key (several deployments can share one Redis)
    ARTIFACTS_DIR: Path = Path(".artifacts")  # the trainer's model registry
    TRAINING_RUNS_DIR: Path = Path(".training-runs")  # output of the runs POST /admin/training starts
    # Keys by scope, each opening its own scope and the narrower ones (service.api.deps): API_KEY is
    # the admin key; WRITE_API_KEY and READ_API_KEY, when set, are keys for clients that need less.
    API_KEY: str = "changethis"  # refused as a placeholder outside development
    WRITE_API_KEY: str | None = None
    READ_API_KEY: str | None = None
    READS_REQUIRE_KEY: bool | None = None  # None: outside development only
    METRICS_REQUIRE_KEY: bool = False  # /metrics with any key (a scraper can be given READ_API_KEY)
    # FastAPI's native OpenTelemetry (traces, metrics, logs to the global providers): its check costs every request
    # even with no provider set (bench/RESULTS.md, "Cache-hit CPU"); Prometheus' /metrics is on regardless
    OTEL_ENABLED: bool = False
    # Requests per client in the notation of `limits` ("50/second;1000/minute"), or "off". A client
    # is an address (requests without a valid key) or a key; None: off in development.
    RATE_LIMIT: str | None = None
    RATE_LIMIT_PER_KEY: str | None = None
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
    IDEMPOTENCY_TTL_S: float = Field(default=86_400.0, gt=0)  # how long a POST /interactions Idempotency-Key is remembered
    # Online evaluation (service.impressions, service.experiment_registry): every list served is recorded
    # off the request path through a bounded queue (full: dropped and counted, never waited on).
    IMPRESSIONS_ENABLED: bool = True
    # room for a flush interval of the fastest cache hits (bench/RESULTS.md, "Figures moved out")
    IMPRESSION_QUEUE_SIZE: int = Field(default=60_000, ge=1)
    # most queued records one transaction writes: a flush's worth up to 5,000 req/s, so each user's index page is written
    # once a flush (SQLite's write lock held ~0.1 s; bench/RESULTS.md, "What recording impressions costs")
    IMPRESSION_BATCH: int = Field(default=15_000, ge=1)
    # how often the writer stores what is queued: rarer is cheaper per row, each user's index page written once per
    # batch whatever its rows (bench/RESULTS.md, "What recording impressions costs"); a crash loses at most the queue
    IMPRESSION_FLUSH_S: float = Field(default=3.0, gt=0)
    FEEDBACK_WINDOW_S: float = Field(default=1800.0, gt=0)  # an interaction this soon after a list showing its item is feedback
    EXPERIMENTS_FILE: Path | None = None  # TOML or JSON experiments created at start (those whose id is new)
    EXPERIMENTS_REFRESH_S: float = Field(default=5.0, gt=0)  # how often a replica checks for started or stopped experiments
    MAX_BATCH: int = Field(default=1000, ge=1)  # most entries of any list in a request (interactions, item ids, ...)
    MAX_K: int = Field(default=1000, ge=1)  # k + offset of one recommendation list
    # One POST /ratings: users scored and (user, item) pairs, summed over its users (the work grows with both)
    MAX_RATING_USERS: int = Field(default=100, ge=1)
    MAX_RATING_PAIRS: int = Field(default=1000, ge=1)
    MAX_BODY_BYTES: int = Field(default=1_000_000, ge=1024)
    MAX_HEADER_BYTES: int = Field(default=16_384, ge=1024)  # request line and headers, when `python -m service` serves
    # torch threads per request's scoring. A second one fights the event loop and the other requests'
    # threads for the same cores (bench/RESULTS.md, "Figures moved out"); a large model on many cores may want more.
    TORCH_THREADS: int = Field(default=1, ge=1)
    # Requests whose model work (history query, scoring) runs at once; the others queue on the
    # event loop. Python-bound scoring holds the GIL, so more threads only take turns on it.
    SCORING_CONCURRENCY: int = Field(default=1, ge=1)
    # Where the models score: "auto" is the GPU when torch sees one; recommend() masks seen items and
    # takes the top k on the same device (models.base), so only ids and scores come back.
    SCORING_DEVICE: Literal["auto", "cpu", "cuda"] = "auto"
    # A model name, or "best": the served version's best-validated model of the task (registry/best.py),
    # a baseline included; a version published without that record serves ease / autorec-u.
    DEFAULT_MODEL: str = "best"
    DEFAULT_RATING_MODEL: str = "best"

    @field_validator("WRITE_API_KEY", "READ_API_KEY", "RATE_LIMIT", "RATE_LIMIT_PER_KEY", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None  # `READ_API_KEY=` in a .env, or compose's ${READ_API_KEY:-}

    @model_validator(mode="after")
    def _check_keys_and_defaults(self) -> Settings:
        keys = {"API_KEY": self.API_KEY, "WRITE_API_KEY": self.WRITE_API_KEY, "READ_API_KEY": self.READ_API_KEY}
        keys = {name: key for name, key in keys.items() if key is not None}
        for name, key in keys.items():
            if self.ENVIRONMENT != "development" and is_placeholder(key):
                raise ValueError(
                    f"{name} is empty or a placeholder ({key!r}); set a real secret when ENVIRONMENT={self.ENVIRONMENT}"
                )
        if len(set(keys.values())) < len(keys):
            raise ValueError(f"{', '.join(keys)} must all differ: a key opens one scope")
        if self.READS_REQUIRE_KEY is None:
            self.READS_REQUIRE_KEY = self.ENVIRONMENT != "development"
        for name in ("RATE_LIMIT", "RATE_LIMIT_PER_KEY"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, "off" if self.ENVIRONMENT == "development" else DEFAULT_RATE_LIMITS[name])
            elif value != "off":
                try:
                    parse_many(value)
                except ValueError:
                    raise ValueError(f"{name}={value!r} is not a rate limit such as '50/second;1000/minute', nor 'off'") from None
        if self.SCORING_DEVICE == "cuda":
            import torch  # only when a GPU is asked for: the other commands need not load torch

            if not torch.cuda.is_available():
                raise ValueError("SCORING_DEVICE=cuda but torch sees no CUDA GPU here (use auto or cpu)")
        return self

    @property
    def scoring_device(self) -> str:
        """SCORING_DEVICE with "auto" resolved: "cuda" when torch sees a GPU, else "cpu"."""
        if self.SCORING_DEVICE != "auto":
            return self.SCORING_DEVICE
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
