"""Trainer settings from the environment (or a .env file); one object, built on demand.

``RATING_SCALE`` and ``POSITIVE_THRESHOLD`` are the deployment's (``rating_scale``): ``--from-db``
trains on them when the database stores no scale of its own.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from errors import invalid_settings
from interactions.settings import DatasetSettings
from rating_scale import RatingScaleSettings
from storage.settings import DEFAULT_DATABASE_URL


class TrainerSettings(RatingScaleSettings, DatasetSettings):  # DATA_DIR, GROUPLENS_URL, DOWNLOAD_TIMEOUT_S
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    ARTIFACTS_DIR: Path = Path(".artifacts")  # the model registry the service reads
    KEEP_VERSIONS: int = 5  # published versions kept; older ones are deleted
    DATABASE_URL: str = DEFAULT_DATABASE_URL  # for --from-db; the service's database
    # each user's top-N of every refit ranker, published for the service's first requests (0: none)
    TOP_LIST_SIZE: int = Field(default=200, ge=0)


@lru_cache
def get_settings() -> TrainerSettings:
    try:
        return TrainerSettings()
    except ValidationError as exc:
        raise invalid_settings(exc) from None
