"""The one setting the database layer reads on its own: ``DATABASE_URL``, from the environment (or a .env file).

For ``alembic upgrade head`` run by hand (``migrations/env.py``); the service and the trainer read
the same variable in their own settings.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./aerec.db"


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    DATABASE_URL: str = DEFAULT_DATABASE_URL
