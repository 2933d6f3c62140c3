"""train_all end to end on small planted data: what gets published, the quality gate, errors, the lock."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from errors import DataError, TrainingError, UserError
from interactions.files import load_file
import registry
from trainer.gate import GateRefused
from trainer.pipeline import TrainingBusy, TrainJob, train_all
from trainer.sources import SourceSpec, positive_threshold, snapshot

FAST = {  # few epochs, small layers: these tests check the plumbing, not the models' quality
    "autorec-u": {"epochs": 2, "hidden": 16},
    "multdae": {"epochs": 3},
    "svae": {"epochs": 1, "item_embed_size": 16, "rnn_size": 16, "hidden_size": 16, "latent_size": 8},
}


def planted_frame(n_users: int = 240, n_items: int = 120, n_groups: int = 4, seed: int = 0) -> pd.DataFrame:
    """Users in groups, each liking (4-5 stars) items of its own group and disliking (1-3) a few others."""
    rng = np.random.default_rng(seed)
    item_group = np.arange(n_items) % n_groups
    rows = []
    for u in range(n_users):
        liked = rng.choice(np.flatnonzero(item_group == u % n_groups), 12, replace=False)
        disliked = rng.choice(np.flatnonzero(item_group != u % n_groups), 6, replace=False)
        ratings = np.concatenate([rng.integers(4, 6, liked.size), rng.integers(1, 4, disliked.size)])
        order = rng.permutation(liked.size + disliked.size)
        for t, (item, rating) in enumerate(zip(np.concatenate([liked, disliked])[order], ratings[order])):
            rows.append((f"u{u}", 1000 + int(item), int(rating), 1_600_000_000 + 1000 * u + 10 * t))
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def write_planted(path: Path, **kwargs) -> Path:
    planted_frame(**kwargs).to_csv(path, index=False)
    return path


@pytest.fixture
def planted(tmp_path) -> Path:
    return write_planted(tmp_path / "planted.csv")


def run(source: Path, root: Path, models, overrides=None, **kwargs):
    return train_all(TrainJob(SourceSpec(file=source), models, overrides or FAST, "cpu", 0, root, progress=False,
                              **kwargs))


def test_publishes_each_protocol_with_ids_metrics_curve_and_manifest(planted, tmp_path):
    root = tmp_path / "registry"
    report = run(planted, root, ["ease", "autorec-u", "multdae", "svae"])

    version = registry.latest_version(root)
    assert report.version == version
    loaded = registry.load_version(root)
    frame = pd.read_csv(planted)
    inter, _ = load_file(planted)
    manifest = loaded.manifest
    assert manifest["source"]["kind"] == "file"
    assert manifest["source"]["n_interactions"] == len(frame)
    assert manifest["source"]["sha256"] == snapshot(inter)["sha256"]
    assert manifest["code_version"]
    assert manifest["positive_threshold"] == positive_threshold(inter) == 4.0  # the service folds in users with it
    assert manifest["rating_scale"] == {"scale": "1:5:1", "low": 1.0, "high": 5.0, "step": 1.0,
                                        "positive_threshold": 4.0, "implicit": False}  # inferred from the file
    # each task's baseline is published beside its models (tests/trainer/test_best.py)
    assert set(manifest["models"]) == {"ease", "autorec-u", "multdae", "svae", "bias", "popularity"}

    protocols = {"ease": "strong", "multdae": "strong", "svae": "temporal", "autorec-u": "rating-random"}
    for name in report.runs:
        entry, info = loaded.models[name], manifest["models"][name]
        assert info["protocol"] == protocols[name] == entry.metrics["protocol"]
        # The refit covers every user and item of the source, as strings.
        assert sorted(entry.user_ids) == sorted(frame["user"].astype(str).unique())
        assert sorted(entry.item_ids) == sorted(frame["item"].astype(str).unique())
        assert entry.model.n_users == frame["user"].nunique()
        assert set(entry.metrics) >= {"train", "valid", "test", "curve", "timings", "protocol", "seed", "heldout"}
        assert info["valid_metric"]["value"] == entry.metrics["valid"][info["valid_metric"]["name"]]
        assert info["fit_seconds"] > 0
        png = (root / version / name / "learning_curve.png").read_bytes()
        assert png.startswith(b"\x89PNG")
    assert set(manifest["models"]["autorec-u"]["metrics"]) == {"rmse", "mae"}
    assert set(manifest["models"]["ease"]["metrics"]) == {"recall@20", "recall@50", "ndcg@100"}
    assert manifest["models"]["multdae"]["epochs"] == loaded.models["multdae"].metrics["best_epoch"]
    assert len(loaded.models["multdae"].metrics["curve"]) == 3

    counts = frame["item"].astype(str).value_counts()
    assert loaded.popular_counts == sorted(loaded.popular_counts, reverse=True)
    assert loaded.popular_counts[0] == counts.iloc[0]
    assert dict(zip(loaded.popular_items, loaded.popular_counts)) == counts.to_dict()
    lines = report.summary_lines()  # the data, a line per model, then the baselines' and the defaults' lines
    assert [line.split()[0] for line in lines[1:5]] == ["ease", "autorec-u", "multdae", "svae"]
    assert lines[-1].startswith("published version ")
    assert report.summary_lines()[0] == (f"data: {planted} (columns: user=user, item=item, rating=rating, "
                                         "timestamp=timestamp), rating scale 1:5:1, positives >= 4 "
                                         "(inferred from planted.csv; --rating-scale declares it)")


def test_second_run_moves_latest_passes_gate_and_retention_applies(planted, tmp_path):
    root = tmp_path / "registry"
    first = run(planted, root, ["ease"]).version
    second = run(planted, root, ["ease"], keep=1)
    assert second.version > first
    assert registry.latest_version(root) == second.version
    assert registry.list_versions(root) == [second.version]
    gate = second.runs["ease"].gate
    assert gate.passed and gate.basis.startswith("same held-out set") and gate.new == gate.old


def test_gate_refuses_a_broken_model_and_keeps_the_published_version(planted, tmp_path):
    root = tmp_path / "registry"
    good = run(planted, root, ["multdae"]).version
    broken = {"multdae": {"epochs": 3, "lr": 1e-12}}  # no learning: the random initial network
    with pytest.raises(GateRefused, match=r"multdae: validation ndcg@100 0\.\d+ against 0\.\d+ .*REFUSED") as refused:
        run(planted, root, ["multdae"], broken)
    assert good in str(refused.value)
    assert registry.latest_version(root) == good
    assert registry.list_versions(root) == [good]
    assert not list(root.glob(".tmp-*"))
    forced = run(planted, root, ["multdae"], broken, gate=False)
    assert registry.latest_version(root) == forced.version != good


def test_gate_after_data_growth_compares_on_users_the_published_model_never_saw(tmp_path):
    root = tmp_path / "registry"
    full = planted_frame(n_users=600)
    first_users = {f"u{u}" for u in range(300)}
    early = tmp_path / "early.csv"
    full[full["user"].isin(first_users)].to_csv(early, index=False)
    grown = tmp_path / "grown.csv"
    full.to_csv(grown, index=False)

    run(early, root, ["multdae"])
    before = registry.latest_version(root)
    with pytest.raises(GateRefused, match=r"both on the same \d+ held-out users, \d+ targets version .* never trained on"):
        run(grown, root, ["multdae"], {"multdae": {"epochs": 3, "lr": 1e-12}})
    assert registry.latest_version(root) == before

    report = run(grown, root, ["multdae"], {"multdae": {"epochs": 6}})
    gate = report.runs["multdae"].gate
    assert gate.passed and "never trained on" in gate.basis
    held_out = report.runs["multdae"].fingerprint["n_valid_users"]
    n_users = int(re.search(r"the same (\d+) held-out users", gate.basis).group(1))
    assert n_users < held_out  # the old model trained on every pair of the first 300 users: only new ones count


def test_a_run_that_produces_nan_publishes_nothing(planted, tmp_path):
    root = tmp_path / "registry"
    first = run(planted, root, ["ease"]).version
    with pytest.raises(TrainingError, match="non-finite"):
        run(planted, root, ["autorec-u"], {"autorec-u": {"epochs": 2, "hidden": 8, "lr": 1e30}})
    assert registry.list_versions(root) == [first]
    assert registry.latest_version(root) == first


def test_models_not_retrained_are_carried_over(planted, tmp_path):
    root = tmp_path / "registry"
    first = run(planted, root, ["ease"]).version
    second = run(planted, root, ["multdae"])
    assert second.carried == ["ease"]
    loaded = registry.load_version(root)
    assert set(loaded.models) == {"ease", "multdae", "popularity"}  # popularity: solved again with multdae
    assert loaded.manifest["models"]["ease"]["carried_from"] == first
    old = (root / first / "ease" / "weights.safetensors").read_bytes()
    assert (root / second.version / "ease" / "weights.safetensors").read_bytes() == old


def test_bad_sources_and_names_fail_before_training(tmp_path):
    root = tmp_path / "registry"
    with pytest.raises(DataError, match="no such file"):
        run(tmp_path / "missing.csv", root, ["ease"])
    with pytest.raises(UserError, match="unknown model 'nope'"):
        run(tmp_path / "missing.csv", root, ["ease", "nope"])
    with pytest.raises(UserError, match="unknown hyper-parameter ease.lambda"):
        run(tmp_path / "missing.csv", root, ["ease"], {"ease": {"lambda": 1.0}})
    with pytest.raises(UserError, match="exactly one data source"):
        SourceSpec(file=tmp_path / "a.csv", dataset="ml-100k")
    implicit = tmp_path / "clicks.csv"
    planted_frame()[["user", "item"]].to_csv(implicit, index=False)
    with pytest.raises(UserError, match="autorec-u predicts ratings"):
        run(implicit, root, ["autorec-u"])
    assert registry.latest_version(root) is None


_LOCK_HOLDER = """
import sys, time
from registry import registry_lock
lock = registry_lock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_held_by_another_process_skips_the_run(planted, tmp_path):
    root = tmp_path / "registry"
    holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(TrainingBusy, match="another training is running"):
            run(planted, root, ["ease"])
        assert time.monotonic() - started < 5  # does not wait for the lock
        assert registry.latest_version(root) is None
    finally:
        holder.kill()
        holder.wait()
    assert run(planted, root, ["ease"]).version == registry.latest_version(root)  # released with its holder


def test_metrics_json_records_split_seed_and_heldout_hashes(planted, tmp_path):
    root = tmp_path / "registry"
    version = run(planted, root, ["ease"]).version
    metrics = json.loads((root / version / "ease" / "metrics.json").read_text())
    assert metrics["seed"] == 0 and metrics["heldout"]["seed"] == 0
    assert len(metrics["heldout"]["valid_users_sha256"]) == 64
    assert metrics["heldout"]["n_valid_users"] == 24  # 10% of 240 eligible users (protocols: strong)
    other = train_all(TrainJob(SourceSpec(file=planted), ["ease"], {}, "cpu", 1, tmp_path / "other", progress=False))
    assert other.runs["ease"].fingerprint["valid_users_sha256"] != metrics["heldout"]["valid_users_sha256"]


def test_no_refit_publishes_the_split_models_weights_and_their_ids(planted, tmp_path):
    root = tmp_path / "registry"
    report = run(planted, root, ["ease", "autorec-u"], refit=False)
    loaded = registry.load_version(root)
    for name in ("ease", "autorec-u"):
        assert report.runs[name].published is report.runs[name].split_model
        assert loaded.manifest["models"][name]["refit"] is False
    inter, _ = load_file(planted)
    # strong: the 240 - 2 x 24 training users only; rating-random: the split spans every user
    assert len(loaded.models["ease"].user_ids) == 240 - 2 * 24
    assert set(loaded.models["ease"].user_ids) < set(inter.user_ids.tolist())
    assert loaded.models["autorec-u"].user_ids == inter.user_ids.tolist()


def test_the_training_precision_reaches_the_published_metrics(planted, tmp_path):
    root = tmp_path / "registry"
    version = run(planted, root, ["multdae", "autorec-u"], precision="bf16").version
    recorded = {name: json.loads((root / version / name / "metrics.json").read_text())["precision"]
                for name in ("multdae", "autorec-u")}
    assert recorded == {"multdae": "bf16", "autorec-u": "bf16"}  # every gradient model allows it
    with pytest.raises(UserError, match="--precision must be fp32 or bf16"):
        run(planted, tmp_path / "other", ["multdae"], precision="fp16")
