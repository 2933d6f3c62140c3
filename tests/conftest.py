"""Fixtures shared by the whole suite.

CI clones the repository with the team's ``shared/`` folder beside it, so the GroupLens
ml-100k copy is at ``<repo>/../shared/data/ml-100k``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ML100K_DIR = REPO.parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The original GroupLens ml-100k folder (read-only)."""
    if not (ML100K_DIR / "u.data").is_file():
        pytest.fail(f"{ML100K_DIR} is missing: clone the repository with shared/ beside it")
    return ML100K_DIR


@pytest.fixture
def tmp_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DATA_DIR for this test; the cached settings are rebuilt around it."""
    from trainer.settings import get_settings

    data_dir = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()
