"""Bring a database to the newest schema with Alembic, from code (CLI ``migrate``, app tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

REPO_ROOT = Path(__file__).resolve().parents[1]


def migrations_root() -> Path:
    """The folder holding ``alembic.ini`` and ``migrations/``: the checkout, else the working directory
    (an image that installs the package and copies ``migrations/`` beside it)."""
    for root in (REPO_ROOT, Path.cwd()):
        if (root / "migrations" / "env.py").is_file():
            return root
    raise FileNotFoundError(f"no migrations/ folder in {REPO_ROOT} or {Path.cwd()}; run from the project folder")


def alembic_config(database_url: str | None = None) -> Config:
    root = migrations_root()
    ini = root / "alembic.ini"
    config = Config(str(ini)) if ini.is_file() else Config()
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["skip_logging"] = True  # keep the caller's logging setup
    if database_url:
        # ConfigParser interpolates "%": escape it so passwords with % survive
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(engine: Engine) -> None:
    """``alembic upgrade head`` on ``engine``'s database (same migrations on PostgreSQL and SQLite)."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
