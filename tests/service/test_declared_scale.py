"""The declared rating scale in the service: what ``POST /interactions`` accepts, what ``migrate`` stores with
the data for the trainer, what ``seed`` loads. On SQLite + in-process cache and on PostgreSQL + Redis."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from _service_support import error_body, new_user
from rating_scale import RatingScale
from service.cli import main
from service.main import create_app
from storage.migrate import upgrade_to_head
from storage.session import make_engine
from storage.tables import DeclaredRatingScale, Interaction, Item, User

STARS = "a rating is one of 1, 2, 3, 4, 5 (rating scale 1:5:1), or null for implicit feedback"


def stored_ratings(url: str) -> dict[tuple[str, str], float | None]:
    """(user, item) -> rating of every stored interaction (None: implicit feedback)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(User.external_id, Item.external_id, Interaction.rating)
                .join(User, User.id == Interaction.user_id).join(Item, Item.id == Interaction.item_id)
            ).all()
    finally:
        engine.dispose()
    return {(u, i): None if r is None or math.isnan(r) else r for u, i, r in rows}


def stored_scale(url: str) -> tuple[str, float | None] | None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(select(DeclaredRatingScale.scale, DeclaredRatingScale.positive_threshold)).first()
    finally:
        engine.dispose()
    return None if row is None else tuple(row)


@contextmanager
def app_on(backend, registry: Path, **settings):
    engine = make_engine(backend.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    with TestClient(create_app(backend.settings(registry, **settings)), raise_server_exceptions=False) as client:
        yield client


def test_ratings_off_the_scale_strings_and_booleans_are_refused_naming_the_allowed_values(empty_client, auth):
    user = new_user()
    for bad in (1000, -3, 0, 4.5, 1e300, "5", True, [5]):
        batch = [{"user_id": user, "item_id": 50, "rating": 5}, {"user_id": user, "item_id": 172, "rating": bad}]
        response = empty_client.post("/interactions", json=batch, headers=auth)
        assert response.status_code == 422, (bad, response.text)
        error = error_body(response)
        assert error["code"] == "validation_error", error
        assert error["message"].startswith("invalid request: body.1.rating: ") and error["message"].endswith(STARS), error
        assert error["details"][0]["loc"] == ["body", 1, "rating"]
    both = [{"user_id": user, "item_id": 50, "rating": 1000}, {"user_id": user, "item_id": 172, "rating": -3}]
    error = error_body(empty_client.post("/interactions", json=both, headers=auth))
    assert error["message"] == f"invalid request: body.0.rating: 1000 is not on the rating scale 1:5:1; {STARS}"
    assert [d["loc"] for d in error["details"]] == [["body", 0, "rating"], ["body", 1, "rating"]]
    assert stored_ratings(empty_client.backend.database_url) == {}  # all or nothing: the good entries are not stored

    good = [{"user_id": user, "item_id": 50, "rating": 1}, {"user_id": user, "item_id": 172, "rating": 5.0},
            {"user_id": user, "item_id": 181}]
    assert empty_client.post("/interactions", json=good, headers=auth).status_code == 201
    assert stored_ratings(empty_client.backend.database_url) == {(user, "50"): 1.0, (user, "172"): 5.0, (user, "181"): None}


@pytest.mark.parametrize(("scale", "accepted", "refused", "hint"), [
    ("0.5:5:0.5", (0.5, 4.5, 5, None), (4.25, 0, 5.5),
     "a rating is one of 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5 (rating scale 0.5:5:0.5), or null for implicit feedback"),
    ("implicit", (None,), (1, 5), "this deployment's rating scale is implicit: leave the rating out"),
], ids=["half-stars", "implicit"])
def test_the_deployments_scale_decides_what_a_write_may_carry(empty_backend, registry, auth, scale, accepted, refused, hint):
    with app_on(empty_backend, registry, RATING_SCALE=scale) as client:
        rating_schema = client.get("/openapi.json").json()["components"]["schemas"]["InteractionIn"]["properties"]["rating"]
        assert rating_schema == RatingScale.parse(scale).json_schema()
        user = new_user()
        for n, rating in enumerate(accepted):
            entry = {"user_id": user, "item_id": str(n + 1)} | ({} if rating is None else {"rating": rating})
            assert client.post("/interactions", json=[entry], headers=auth).status_code == 201, rating
        for rating in refused:
            response = client.post("/interactions", json=[{"user_id": user, "item_id": "9", "rating": rating}], headers=auth)
            assert response.status_code == 422 and error_body(response)["message"].endswith(hint), response.text
    assert sorted(stored_ratings(empty_backend.database_url).values(), key=str) == sorted(accepted, key=str)


def test_the_service_and_trainer_settings_read_the_same_declaration(monkeypatch):
    from service.core.config import Settings
    from trainer.settings import TrainerSettings

    monkeypatch.setenv("RATING_SCALE", "0.5:5:0.5")
    monkeypatch.setenv("POSITIVE_THRESHOLD", "")  # what compose passes when .env sets none: unset
    assert Settings().rating_scale == TrainerSettings().rating_scale == RatingScale.parse("0.5:5:0.5")
    monkeypatch.setenv("POSITIVE_THRESHOLD", "3.5")
    assert Settings().rating_scale.positive == TrainerSettings().rating_scale.positive == 3.5


@pytest.fixture
def cli_env(empty_backend, tmp_path, monkeypatch):
    """``python -m service`` (in process) on the backend's database, with no stray .env."""
    monkeypatch.setenv("DATABASE_URL", empty_backend.database_url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RATING_SCALE", raising=False)
    monkeypatch.delenv("POSITIVE_THRESHOLD", raising=False)
    monkeypatch.chdir(tmp_path)
    from trainer.settings import get_settings

    get_settings.cache_clear()
    yield empty_backend.database_url
    get_settings.cache_clear()


def test_migrate_stores_the_scale_with_the_data_and_says_when_it_changes(cli_env, monkeypatch, capsys):
    from trainer.sources import read_database

    assert main(["migrate"]) == 0
    assert stored_scale(cli_env) == ("1:5:1", 4.0)
    monkeypatch.setenv("RATING_SCALE", "0.5:5:0.5")
    monkeypatch.setenv("POSITIVE_THRESHOLD", "3.5")
    assert main(["migrate"]) == 0
    assert stored_scale(cli_env) == ("0.5:5:0.5", 3.5)
    err = capsys.readouterr().err
    assert ("the rating scale stored with the data changed from 1:5:1, positives >= 4 to 0.5:5:0.5, positives >= 3.5"
            in err)
    assert main(["migrate"]) == 0 and "changed" not in capsys.readouterr().err  # the same declaration again

    monkeypatch.setenv("RATING_SCALE", "implicit")
    monkeypatch.delenv("POSITIVE_THRESHOLD")
    log = Path("clicks.csv")
    log.write_text("user,item\na,1\n")
    assert main(["seed", "--file", str(log)]) == 0  # seeding migrates first
    assert stored_scale(cli_env) == ("implicit", None)
    monkeypatch.setenv("RATING_SCALE", "1:10:1")
    from trainer.settings import get_settings

    get_settings.cache_clear()
    inter, origin = read_database(cli_env)  # the trainer reads what the data says, not its own setting
    assert inter.rating_scale.implicit and origin == "stored with the data"


def write_latest(path: Path) -> Path:
    """A MovieLens-latest ratings.csv (userId,movieId,rating,timestamp) with half stars."""
    pd.DataFrame({"userId": [1, 1, 2, 2], "movieId": [31, 1029, 31, 10], "rating": [2.5, 3.0, 0.5, 5.0],
                  "timestamp": [1260759144, 1260759179, 1260759182, 1260759185]}).to_csv(path, index=False)
    return path


def test_seed_a_movielens_latest_file_on_a_half_star_scale(cli_env, monkeypatch, capsys):
    ratings = write_latest(Path("ratings.csv"))
    assert main(["seed", "--file", str(ratings)]) == 2  # the default scale is 1:5:1
    assert capsys.readouterr().err.strip() == (
        f"error: {ratings}: 2 ratings are off the rating scale 1:5:1 (allowed: one of 1, 2, 3, 4, 5), "
        "e.g. row 1: rating 2.5")
    assert stored_ratings(cli_env) == {}
    monkeypatch.setenv("RATING_SCALE", "0.5:5:0.5")
    assert main(["seed", "--file", str(ratings), "--user-col", "userId", "--item-col", "movieId"]) == 0
    assert "columns: user=userId, item=movieId, rating=rating, timestamp=timestamp" in capsys.readouterr().err
    assert stored_ratings(cli_env) == {("1", "31"): 2.5, ("1", "1029"): 3.0, ("2", "31"): 0.5, ("2", "10"): 5.0}


def test_seed_a_dataset_checks_it_against_the_deployments_scale(cli_env, ml100k_dir, monkeypatch, capsys):
    monkeypatch.setenv("RATING_SCALE", "2:5:1")
    assert main(["seed", "--dataset", "ml-100k", "--source", str(ml100k_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ml-100k: 6,110 ratings are off the rating scale 2:5:1 (allowed: one of 2, 3, 4, 5), "
                          "e.g. user ") and err.endswith("rating 1; RATING_SCALE=1:5:1 would take them"), err
    assert stored_ratings(cli_env) == {}
    monkeypatch.setenv("RATING_SCALE", "implicit")
    assert main(["seed", "--dataset", "ml-100k", "--source", str(ml100k_dir)]) == 0
    stored = stored_ratings(cli_env)
    assert len(stored) == 100_000 and set(stored.values()) == {None}  # clicks: the stars are left out


def test_column_options_go_with_a_file(cli_env, capsys):
    assert main(["seed", "--dataset", "ml-100k", "--user-col", "userId"]) == 2
    assert "--user-col, --item-col, --rating-col, --timestamp-col and --sep go with --file" in capsys.readouterr().err
