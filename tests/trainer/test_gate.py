"""The champion-challenger gate on ml-100k (issue 20): the published model is scored again on the new run's
held-out users and targets, less the pairs it trained on; a different declared scale, threshold or protocol
refuses; a change of data alone never does."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rating_scale import RatingScale
import registry as artifacts
from tests.trainer._ml100k import ml100k
from trainer import runs
from trainer.gate import MIN_FAIR_USERS, GateRefused
from trainer.pipeline import TrainJob, train_all
from trainer.sources import SourceSpec

EASE = {"ease": {}}  # closed form: a second on ml-100k, and the same model for the same data


def frame(ml100k_dir: Path) -> pd.DataFrame:
    inter = ml100k(ml100k_dir)
    return pd.DataFrame({
        "user": np.asarray(inter.user_ids)[inter.users], "item": np.asarray(inter.item_ids)[inter.items],
        "rating": inter.ratings.astype(int), "timestamp": inter.timestamps,
    })


def poisoned(clean: pd.DataFrame, n_users: int, n_items: int = 10) -> pd.DataFrame:
    """``n_users`` made-up users who all gave 5 stars to the same ``n_items`` obscure items: trivially predictable."""
    counts = clean["item"].value_counts()
    items = counts[counts == 1].index[:n_items]  # rated once each: the clean data ties them to no other item
    rows = [(f"poison{u}", item, 5, 1_000_000_000 + u) for u in range(n_users) for item in items]
    return pd.concat([clean, pd.DataFrame(rows, columns=clean.columns)], ignore_index=True)


def train(data: pd.DataFrame | Path, root: Path, tmp_path: Path, scale: RatingScale | None = None, **kwargs):
    path = data if isinstance(data, Path) else tmp_path / f"data-{len(list(tmp_path.glob('data-*.csv')))}.csv"
    if not isinstance(data, Path):
        data.to_csv(path, index=False)
    return train_all(TrainJob(SourceSpec(file=path, rating_scale=scale), ["ease"], EASE, "cpu", 0, root, progress=False,
                              **kwargs))


@pytest.fixture(scope="module")
def clean_registry(ml100k_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A registry with one version of EASE on clean ml-100k, and that CSV; each test copies it."""
    folder = tmp_path_factory.mktemp("clean")
    path = folder / "ml-100k.csv"
    frame(ml100k_dir).to_csv(path, index=False)
    train(path, folder / "registry", folder)
    return folder / "registry", path


@pytest.fixture
def registry(clean_registry, tmp_path) -> Path:
    root = tmp_path / "registry"
    shutil.copytree(clean_registry[0], root)
    return root


def recorded(root: Path, version: str) -> float:
    return artifacts.load_version(root, version).models["ease"].metrics["valid"]["ndcg@100"]


def test_each_version_publishes_the_pairs_each_model_trained_on(clean_registry, ml100k_dir):
    root, _ = clean_registry
    loaded = artifacts.load_version(root)
    entry = loaded.models["ease"]
    assert f"ease/{artifacts.TRAINED_PAIRS_FILE}" in loaded.manifest[artifacts.CHECKSUMS_KEY]  # verified on load
    pairs = artifacts.read_trained_pairs(entry)
    inter = ml100k(ml100k_dir)
    positives = inter.ratings >= 4  # the refit trains a ranker on the positives of every interaction
    assert pairs.nnz == positives.sum()
    users = pd.Index(entry.user_ids).get_indexer(np.asarray(inter.user_ids)[inter.users[positives]].astype(str))
    items = pd.Index(entry.item_ids).get_indexer(np.asarray(inter.item_ids)[inter.items[positives]].astype(str))
    assert np.asarray(pairs[users, items]).all()


def test_damaged_trained_pairs_refuse_the_version_like_any_other_file(registry):
    path = registry / artifacts.latest_version(registry) / "ease" / artifacts.TRAINED_PAIRS_FILE
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(artifacts.ArtifactError, match=f"ease/{artifacts.TRAINED_PAIRS_FILE} does not match its sha256"):
        artifacts.load_version(registry)


def test_poisoned_data_is_judged_on_the_same_targets_and_cannot_raise_its_own_bar(registry, clean_registry, tmp_path):
    clean_version = artifacts.latest_version(registry)
    clean = pd.read_csv(clean_registry[1])

    # 400 made-up users: about 30 of them among the 100 held out, every one scored ~1 by a model trained on the rest
    report = train(poisoned(clean, 400), registry, tmp_path)
    gate, run = report.runs["ease"].gate, report.runs["ease"]
    n = int(re.search(r"both on the same (\d+) held-out users", gate.basis).group(1))
    assert MIN_FAIR_USERS <= n < run.fingerprint["n_valid_users"]  # the clean held-out users' targets were trained on
    assert run.valid_value > recorded(registry, clean_version) * 1.1  # its own set flatters it...
    assert gate.new != run.valid_value and gate.old != recorded(registry, clean_version)  # ...the gate does not use it
    assert f"{gate.new:.4f} against {gate.old:.4f} published" in gate.message

    # Clean data again (the rows deleted): the poisoned version's record would refuse it; it is no bar.
    again = train(clean_registry[1], registry, tmp_path).runs["ease"].gate
    assert again.passed and again.old is None and again.basis == "not comparable: 0 users"
    assert "only 0 held-out users have targets version" in again.message


def test_more_real_users_alone_pass_on_the_users_the_published_model_never_trained_on(ml100k_dir, tmp_path):
    root = tmp_path / "registry"
    data = frame(ml100k_dir)
    cutoff = data["timestamp"].quantile(0.7)  # the first 70% of the ratings in time: fewer users, fewer ratings
    first = train(data[data["timestamp"] <= cutoff], root, tmp_path).version
    gate = train(data, root, tmp_path).runs["ease"].gate
    assert gate.passed, gate.message
    n = int(re.search(r"both on the same (\d+) held-out users", gate.basis).group(1))
    assert n >= MIN_FAIR_USERS and first in gate.basis


@pytest.mark.parametrize("declared, reason", [
    (RatingScale.parse("1:5:1", positive=3), r"positive threshold 4\.0 there, 3\.0 here"),
    (RatingScale.parse("0:5:1"), r"rating scale 1:5:1 there, 0:5:1 here"),
])
def test_a_different_declared_scale_or_threshold_refuses_naming_both(registry, clean_registry, tmp_path, declared, reason):
    before = artifacts.latest_version(registry)
    with pytest.raises(GateRefused, match=rf"ease: not comparable with version {before} \({reason}\): REFUSED"):
        train(clean_registry[1], registry, tmp_path, scale=declared)
    assert artifacts.latest_version(registry) == before
    forced = train(clean_registry[1], registry, tmp_path, scale=declared, gate=False)  # --no-gate still forces
    assert artifacts.latest_version(registry) == forced.version != before


def test_a_different_protocol_refuses_naming_both(registry, clean_registry, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "protocol_for", lambda cls: "temporal")
    with pytest.raises(GateRefused, match="protocol strong there, temporal here"):
        train(clean_registry[1], registry, tmp_path)


def test_identical_data_compares_the_recorded_figure_on_the_same_held_out_set(registry, clean_registry, tmp_path):
    before = artifacts.latest_version(registry)
    gate = train(clean_registry[1], registry, tmp_path).runs["ease"].gate
    assert gate.passed and gate.basis == f"same held-out set as version {before}"
    assert gate.old == recorded(registry, before) and gate.new == gate.old  # same data, seed and closed form


def test_a_version_without_trained_pairs_is_gated_by_the_rule_before_them(registry, clean_registry, tmp_path):
    version = artifacts.latest_version(registry)
    (registry / version / "ease" / artifacts.TRAINED_PAIRS_FILE).unlink()
    manifest_path = registry / version / artifacts.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    del manifest[artifacts.CHECKSUMS_KEY][f"ease/{artifacts.TRAINED_PAIRS_FILE}"]
    manifest_path.write_text(json.dumps(manifest))
    assert artifacts.load_version(registry).models["ease"].trained_pairs_file is None

    # 30 made-up users: too few held out to score on, so the old rule's recorded figure, said so
    gate = train(poisoned(pd.read_csv(clean_registry[1]), 30), registry, tmp_path).runs["ease"].gate
    assert gate.basis == (f"recorded figure of version {version} on its own held-out users; "
                          f"version {version} has no {artifacts.TRAINED_PAIRS_FILE}, the rule before it")
    assert gate.old == recorded(registry, version)


RATING = {"autorec-u": {"epochs": 3, "hidden": 16}, "autorec-i": {"epochs": 2, "hidden": 16}}


def train_rating(data: pd.DataFrame, root: Path, tmp_path: Path, model: str, **hyper):
    path = tmp_path / f"data-{len(list(tmp_path.glob('data-*.csv')))}.csv"
    data.to_csv(path, index=False)
    return train_all(TrainJob(SourceSpec(file=path), [model], {model: {**RATING[model], **hyper}}, "cpu", 0, root,
                              progress=False)).runs[model]


def test_a_rating_model_is_judged_on_the_validation_ratings_the_published_one_never_trained_on(ml100k_dir, tmp_path):
    root = tmp_path / "registry"
    data = frame(ml100k_dir)
    early = data[data["timestamp"] <= data["timestamp"].quantile(0.7)]
    train_rating(early, root, tmp_path, "autorec-u")
    version = artifacts.latest_version(root)
    with pytest.raises(GateRefused, match=r"rmse \d\.\d+ against \d\.\d+ published .* both on the same \d+ held-out "
                                          r"users, \d+ targets version .* never trained on\): REFUSED") as refused:
        # no learning, and no bias model under it: worse on the same ratings
        train_rating(data, root, tmp_path, "autorec-u", lr=1e-12, center="none")
    assert int(re.search(r"(\d+) targets", str(refused.value)).group(1)) > 0
    assert artifacts.latest_version(root) == version


def test_a_model_that_cannot_fold_in_users_keeps_its_recorded_figure(ml100k_dir, tmp_path):
    root = tmp_path / "registry"
    data = frame(ml100k_dir)
    first = train_rating(data[data["timestamp"] <= data["timestamp"].quantile(0.7)], root, tmp_path, "autorec-i")
    version = artifacts.latest_version(root)
    gate = train_rating(data, root, tmp_path, "autorec-i").gate
    assert gate.basis == f"recorded figure of version {version} on its own held-out users: it cannot fold in users"
    assert gate.old == first.valid_value
