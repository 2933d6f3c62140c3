"""Where public datasets are cached and fetched from, read from the environment (or a .env file).

The trainer's settings extend these; ``python -m service seed`` reads them on their own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from errors import invalid_settings


class DatasetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    DATA_DIR: Path = Path.home() / ".cache" / "aerec" / "data"  # downloaded datasets are cached here
    GROUPLENS_URL: str = "https://files.grouplens.org/datasets/movielens"
    DOWNLOAD_TIMEOUT_S: float = 20.0


def dataset_settings() -> DatasetSettings:
    """Read afresh on each call (once per dataset fetched): a test or a caller that sets the environment is heard."""
    try:
        return DatasetSettings()
    except ValidationError as exc:
        raise invalid_settings(exc) from None
