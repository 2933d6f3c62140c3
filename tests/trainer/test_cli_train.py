"""`python -m trainer train`: sources (file, SQLite, PostgreSQL), overrides, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from test_pipeline import planted_frame, write_planted
import registry
from trainer.cli import main

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def train(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", "--device", "cpu", "--no-progress", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def planted(tmp_path) -> Path:
    return write_planted(tmp_path / "planted.csv")


def test_train_from_a_file_prints_a_summary_per_model(capsys, planted, tmp_path):
    root = tmp_path / "registry"
    code, out, err = train(capsys, "--file", str(planted), "--models", "ease,multdae", "--set", "multdae.epochs=2",
                           "--artifacts-dir", str(root))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"data: {planted} (columns: user=user, ") and "rating scale 1:5:1" in lines[0]
    assert lines[1].startswith("ease ") and "ndcg@100" in lines[1] and "epochs 0/0" in lines[1]
    assert re.search(r"\|\s+[\d.]+s \(cpu [\d.]+s\)  \|  top-N lists [\d.]+s$", lines[1]), lines[1]  # lists' time too
    assert lines[2].startswith("multdae ") and "epochs 2/2" in lines[2]
    assert lines[-1].startswith(f"published version {registry.latest_version(root)}")


def test_no_progress_prints_each_models_line_once(capsys, planted, tmp_path):
    code, out, err = train(capsys, "--file", str(planted), "--models", "ease", "--artifacts-dir", str(tmp_path / "r"))
    assert code == 0, err
    # the model, its task's baseline on the same split, the default it leads to
    assert [line.split()[0] for line in out.strip().splitlines()] == ["data:", "ease", "popularity", "default", "published"]
    assert "ease " not in err  # the running lines are progress: --no-progress leaves them out


def test_overrides_from_toml_yaml_and_set_reach_the_model(capsys, planted, tmp_path):
    toml = tmp_path / "hp.toml"
    toml.write_text("[ease]\nlam = 50\n\n[multdae]\nepochs = 1\ndims = [32]\n")
    root = tmp_path / "registry"
    code, _, err = train(capsys, "--file", str(planted), "--models", "ease,multdae", "--config", str(toml),
                         "--set", "ease.lam=7.5", "--artifacts-dir", str(root))
    assert code == 0, err
    folder = root / registry.latest_version(root)
    assert json.loads((folder / "ease" / "metrics.json").read_text())["hyper"]["lam"] == 7.5  # --set wins
    hyper = json.loads((folder / "multdae" / "metrics.json").read_text())["hyper"]
    assert hyper["dims"] == [32] and hyper["epochs"] == 1

    yaml_file = tmp_path / "hp.yaml"
    yaml_file.write_text("ease:\n  lam: 20\n")
    code, _, err = train(capsys, "--file", str(planted), "--models", "ease", "--config", str(yaml_file),
                         "--artifacts-dir", str(root), "--no-gate")
    assert code == 0, err
    folder = root / registry.latest_version(root)
    assert json.loads((folder / "ease" / "metrics.json").read_text())["hyper"]["lam"] == 20.0


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "ease.lambda=3"], ["unknown hyper-parameter ease.lambda", "lam"]),
        (["--set", "ease=3"], ["expected model.key=value"]),
        (["--set", "multdae.epochs=0.5", "--models", "multdae"], ["multdae.epochs must be an integer"]),
        (["--set", "multvae.total_anneal_steps=1.5"], ["multvae.total_anneal_steps must be an integer"]),  # a size rule's
        (["--set", "deeprec.weight_decay=true"], ["deeprec.weight_decay must be a number"]),
        (["--set", "nope.x=1"], ["unknown model 'nope'"]),
        (["--models", "ease,nope"], ["unknown model 'nope'", "known models"]),
        (["--device", "tpu"], ["--device must be auto, cpu or cuda"]),
        (["--keep", "0"], ["--keep must be at least 1"]),
    ],
)
def test_bad_options_are_one_line_errors(capsys, planted, tmp_path, args, fragments):
    root = tmp_path / "registry"
    code, _, err = train(capsys, "--file", str(planted), "--models", "ease", *args, "--artifacts-dir", str(root))
    assert_one_line_error(code, err, *fragments)
    assert registry.latest_version(root) is None


def test_unknown_key_in_a_config_file(capsys, planted, tmp_path):
    bad = tmp_path / "hp.toml"
    bad.write_text("[ease]\nlamda = 3\n")
    code, _, err = train(capsys, "--file", str(planted), "--config", str(bad), "--artifacts-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "unknown hyper-parameter ease.lamda")


def test_a_value_the_models_config_refuses_stops_before_any_model_trains(capsys, planted, tmp_path):
    root = tmp_path / "registry"
    code, out, err = train(capsys, "--file", str(planted), "--models", "multdae,ease", "--set", "multdae.epochs=2",
                           "--set", "ease.dtype=float8", "--artifacts-dir", str(root))
    assert_one_line_error(code, err, "hyper-parameters of ease", "dtype", "'float8'")
    assert out == ""  # Mult-DAE, first in line, did not train for nothing
    assert registry.latest_version(root) is None


def test_missing_sources_are_one_line_errors(capsys, tmp_path):
    root = tmp_path / "registry"
    code, _, err = train(capsys, "--file", str(tmp_path / "missing.csv"), "--artifacts-dir", str(root))
    assert_one_line_error(code, err, "missing.csv")
    code, _, err = train(capsys, "--dataset", "ml-0k", "--artifacts-dir", str(root))
    assert_one_line_error(code, err, "ml-0k")
    code, _, err = train(capsys, "--artifacts-dir", str(root))
    assert_one_line_error(code, err, "choose exactly one data source")
    assert registry.latest_version(root) is None


def test_train_and_schedule_take_the_same_declared_options():
    import typer.main

    from trainer.cli import app
    from trainer.commands.options import with_train_options

    group = typer.main.get_command(app)
    options = {name: {p.name: (p.opts, p.default, p.help) for p in group.commands[name].params}
               for name in ("train", "schedule")}
    schedule_own = {"every", "cron", "run_now", "max_runs"}
    fixed_in_schedule = {"tune", "tune_budget", "progress"}  # a search on a timer, bars in a log: neither
    assert {k: v for k, v in options["schedule"].items() if k not in schedule_own} == {
        k: v for k, v in options["train"].items() if k not in fixed_in_schedule}
    with pytest.raises(TypeError, match=r"not training options: \['tunes'\]"):
        with_train_options(tunes=False)


def test_nan_in_training_exits_2_and_publishes_nothing(capsys, planted, tmp_path):
    root = tmp_path / "registry"
    code, _, err = train(capsys, "--file", str(planted), "--models", "autorec-u", "--set", "autorec-u.lr=1e30",
                         "--set", "autorec-u.epochs=2", "--set", "autorec-u.hidden=8", "--artifacts-dir", str(root))
    assert_one_line_error(code, err, "autorec-u", "non-finite")
    assert registry.latest_version(root) is None and not list(root.glob(".tmp-*"))


def test_gate_refusal_exits_2_naming_model_and_figures(capsys, planted, tmp_path):
    root = tmp_path / "registry"
    base = ["--file", str(planted), "--models", "multdae", "--set", "multdae.epochs=3", "--artifacts-dir", str(root)]
    assert train(capsys, *base)[0] == 0
    published = registry.latest_version(root)
    code, _, err = train(capsys, *base, "--set", "multdae.lr=1e-12")
    assert_one_line_error(code, err, "multdae: validation ndcg@100", "REFUSED", f"{published} stays published")
    assert registry.latest_version(root) == published
    code, _, err = train(capsys, *base, "--set", "multdae.lr=1e-12", "--gate-tolerance", "0.99")
    assert code == 0, err


# ---- --from-db ------------------------------------------------------------------------------


def fill_database(url: str, frame: pd.DataFrame, unrated: bool = True) -> None:
    """Migrate with the service's Alembic scripts, then store ``frame`` through the service's ORM.

    ``unrated``: also store a user and an item with no interaction (the trainer must not train on them)."""
    from storage.migrate import upgrade_to_head
    from storage.session import make_engine
    from storage.tables import Interaction, Item, User

    engine = make_engine(url)
    try:
        upgrade_to_head(engine)
        with Session(engine) as session:
            users = {u: User(external_id=u) for u in frame["user"].astype(str).unique()}
            items = {i: Item(external_id=i, title=f"title {i}") for i in frame["item"].astype(str).unique()}
            lonely = [User(external_id="never-rated"), Item(external_id="never-rated")] if unrated else []
            session.add_all([*users.values(), *items.values(), *lonely])
            session.flush()
            session.add_all(
                Interaction(user_id=users[str(r.user)].id, item_id=items[str(r.item)].id, rating=float(r.rating),
                            timestamp=int(r.timestamp))
                for r in frame.itertuples()
            )
            session.commit()
    finally:
        engine.dispose()


def check_trained_on_exactly(root: Path, frame: pd.DataFrame) -> None:
    loaded = registry.load_version(root)
    assert loaded.manifest["source"]["kind"] == "database"
    assert loaded.manifest["source"]["n_interactions"] == len(frame)
    for entry in loaded.models.values():
        assert sorted(entry.user_ids) == sorted(frame["user"].astype(str).unique())
        assert sorted(entry.item_ids) == sorted(frame["item"].astype(str).unique())
    counts = frame["item"].astype(str).value_counts()
    assert dict(zip(loaded.popular_items, loaded.popular_counts)) == counts.to_dict()


def test_from_db_sqlite_trains_on_exactly_the_stored_rows(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    root = tmp_path / "registry"
    fill_database(url, planted_frame().iloc[:0])
    code, _, err = train(capsys, "--from-db", "--database-url", url, "--models", "ease", "--artifacts-dir", str(root))
    assert_one_line_error(code, err, "no interactions")

    frame = planted_frame()
    fill_database(url, frame, unrated=False)
    code, _, err = train(capsys, "--from-db", "--database-url", url, "--models", "ease,autorec-u",
                         "--set", "autorec-u.epochs=1", "--set", "autorec-u.hidden=8", "--artifacts-dir", str(root))
    assert code == 0, err
    check_trained_on_exactly(root, frame)


def test_from_db_unmigrated_database_is_a_one_line_error(capsys, tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    code, _, err = train(capsys, "--from-db", "--database-url", url, "--artifacts-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "cannot read interactions", "migrate")


@pytest.fixture
def postgres_url():
    """A fresh database on the test server (dropped afterwards), so concurrent suites never share rows."""
    server = make_url(TEST_DATABASE_URL)
    try:
        admin = create_engine(server, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        connection = admin.connect()
    except OperationalError as exc:
        message = f"PostgreSQL at {server.render_as_string(hide_password=True)} is unreachable: {exc.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    name = f"aerec_trainer_{uuid.uuid4().hex[:10]}"
    connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.close()
        admin.dispose()


def test_from_db_postgresql_trains_on_exactly_the_stored_rows(capsys, tmp_path, postgres_url):
    frame = planted_frame(seed=3)
    fill_database(postgres_url, frame)
    root = tmp_path / "registry"
    code, _, err = train(capsys, "--from-db", "--database-url", postgres_url, "--models", "ease,autorec-u",
                         "--set", "autorec-u.epochs=1", "--set", "autorec-u.hidden=8", "--artifacts-dir", str(root))
    assert code == 0, err
    check_trained_on_exactly(root, frame)


# ---- the rating scale stored with the data --------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'service.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def declare(url: str, scale: str, positive: float | None = None) -> None:
    """What ``python -m service migrate`` stores for RATING_SCALE / POSITIVE_THRESHOLD."""
    from rating_scale import RatingScale
    from storage import crud
    from storage.session import make_engine

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            crud.record_rating_scale(session, RatingScale.parse(scale, positive))
    finally:
        engine.dispose()


def store(url: str, rows: list[tuple[str, str, float | None]]) -> None:
    from storage import crud
    from storage.session import make_engine

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            users, items, ratings = map(list, zip(*rows))
            crud.store_interactions(session, users, items, ratings, [1_700_000_000] * len(rows))
    finally:
        engine.dispose()


def test_from_db_refuses_stored_ratings_off_the_scale_and_the_published_version_stays(capsys, tmp_path, database_url):
    root = tmp_path / "registry"
    fill_database(database_url, planted_frame(), unrated=False)
    declare(database_url, "1:5:1")
    args = ("--from-db", "--database-url", database_url, "--models", "ease", "--artifacts-dir", str(root))
    code, out, err = train(capsys, *args)
    assert code == 0, err
    assert out.splitlines()[0] == "data: database, rating scale 1:5:1, positives >= 4 (stored with the data)"
    published = registry.latest_version(root)

    store(database_url, [("mallory", "1000", 1000.0)])  # stored first: the example the error gives
    store(database_url, [("mallory", "1001", -3.0), ("mallory", "1002", 5.0)])
    code, _, err = train(capsys, *args)
    assert_one_line_error(code, err, "2 ratings are off the rating scale 1:5:1 (allowed: one of 1, 2, 3, 4, 5), "
                                     "e.g. user 'mallory', item '1000', rating 1000; nothing was trained")
    assert registry.latest_version(root) == published


def test_from_db_trains_on_the_stored_scale_not_the_ratings_min_and_max(capsys, tmp_path, database_url, monkeypatch):
    from trainer.settings import get_settings

    frame = planted_frame()
    frame["rating"] = frame["rating"].clip(2, 4)  # the data spans 2-4; the scale says 0.5-5
    fill_database(database_url, frame, unrated=False)
    store(database_url, [("u0", "9999", None)])  # implicit feedback: a positive at the top of the scale
    monkeypatch.setenv("RATING_SCALE", "1:10:1")  # the trainer's own setting yields to the stored declaration
    get_settings.cache_clear()
    declare(database_url, "0.5:5:0.5", positive=3.5)
    root = tmp_path / "registry"
    code, out, err = train(capsys, "--from-db", "--database-url", database_url, "--models", "ease,autorec-u",
                           "--set", "autorec-u.epochs=1", "--artifacts-dir", str(root))
    get_settings.cache_clear()
    assert code == 0, err
    assert out.splitlines()[0] == "data: database, rating scale 0.5:5:0.5, positives >= 3.5 (stored with the data)"
    manifest = registry.load_version(root).manifest
    assert manifest["rating_scale"]["scale"] == "0.5:5:0.5" and manifest["positive_threshold"] == 3.5
    assert manifest["source"]["rating_range"] == [0.5, 5.0]
    assert registry.load_version(root).models["autorec-u"].model.rating_range == (0.5, 5.0)


def test_from_db_without_a_stored_scale_uses_the_rating_scale_setting(capsys, tmp_path, monkeypatch):
    from trainer.settings import get_settings
    from trainer.sources import read_database

    url = f"sqlite:///{tmp_path / 'service.db'}"
    fill_database(url, planted_frame().iloc[:20], unrated=False)
    store(url, [("u0", "9999", None)])
    monkeypatch.setenv("RATING_SCALE", "0:10:1")
    get_settings.cache_clear()
    try:
        inter, origin = read_database(url)
    finally:
        get_settings.cache_clear()
    assert str(inter.rating_scale) == "0:10:1" and inter.rating_scale.positive == 8
    assert origin == "the RATING_SCALE setting: the database stores none"
    assert inter.ratings[inter.item_index["9999"] == inter.items].tolist() == [10.0]  # implicit: the top of the scale
