"""Trainer settings from the environment (or a .env file); one object, built on demand."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    DATA_DIR: Path = Path.home() / ".cache" / "aerec" / "data"  # downloaded datasets are cached here
    ARTIFACTS_DIR: Path = Path(".artifacts")  # the model registry the service reads
    KEEP_VERSIONS: int = 5  # published versions kept; older ones are deleted
    DATABASE_URL: str = "sqlite:///./aerec.db"  # for --from-db; the service's database
    GROUPLENS_URL: str = "https://files.grouplens.org/datasets/movielens"
    DOWNLOAD_TIMEOUT_S: float = 20.0


@lru_cache
def get_settings() -> TrainerSettings:
    return TrainerSettings()
