"""`trainer train --tune`: search spaces, the budget, pruning, what a version records, and reuse by later runs."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_pipeline import write_planted
from errors import UserError
import registry
from trainer.cli import main
from trainer.pipeline import TrainJob, train_all
from trainer.runs import fit_on_split, model_split
from trainer.sources import SourceSpec
from trainer.training import FitResult
from trainer.tune import TUNING_JSON, TUNING_PNG, TuneOptions, check_space, options_from, parse_budget, tune_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def planted(tmp_path) -> Path:
    return write_planted(tmp_path / "planted.csv")


def train(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", "--device", "cpu", "--no-progress", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_model_declares_a_search_space_of_its_own_config_fields_without_importing_optuna():
    from models import REGISTRY

    for name, cls in REGISTRY.items():
        assert cls.search_space, f"{name} declares no search space"
        check_space(name, cls.Config, cls.search_space)  # keys are Config fields, both ends of each range build
    for path in (ROOT / "models").rglob("*.py"):  # the spaces are plain data: models/ stays light
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(m.split(".")[0] == "optuna" for m in imported), path


def test_budget_text_and_the_config_files_tune_table():
    assert [parse_budget(t) for t in ("5m", "300s", "1h", "90", "1.5m")] == [300, 300, 3600, 90, 90]
    for bad in ("5 minutes", "0s", "-3m", "m", "2d"):
        with pytest.raises(UserError, match="--tune-budget"):
            parse_budget(bad)
    assert options_from(False, None, None) is None  # no --tune, no [tune]: no search
    assert options_from(True, None, None) == TuneOptions(600.0)  # the default budget: 10m
    assert options_from(False, "20s", None) == TuneOptions(20.0)  # --tune-budget implies --tune
    assert options_from(False, None, {"budget": "2m", "trials": 5}) == TuneOptions(120.0, 5)  # the table turns it on
    assert options_from(False, None, {"enabled": False, "budget": "2m"}) is None
    assert options_from(True, "30s", {"budget": "2m"}) == TuneOptions(30.0)  # the command line wins
    with pytest.raises(UserError, match=r"\[tune\] trials"):
        options_from(True, None, {"trials": 0})


def _fake_fit(epochs: int, value_of, seconds_per_epoch: float = 0.0):
    """A stand-in for fit_on_split: reports value_of(hyper, epoch) each epoch, as the training loop does."""

    def fit_trial(hyper, on_epoch):
        curve = []
        for epoch in range(1, epochs + 1):
            time.sleep(seconds_per_epoch)
            curve.append(value_of(hyper, epoch))
            on_epoch(epoch, curve[-1])
        return FitResult(SimpleNamespace(), {"valid_value": max(curve), "best_epoch": curve.index(max(curve)) + 1})

    return fit_trial


def test_median_pruning_stops_the_trials_whose_curve_falls_below_the_others():
    # a bad region (x < 0.5) with clearly lower curves: those trials stop at the first epoch past the warm-up
    result = tune_model("multdae", _fake_fit(20, lambda h, e: h["x"] * e / 20), budget_s=60, seed=0, trials=30,
                        space={"x": ("float", 0.0, 1.0)})
    pruned = [t for t in result.trials if t["state"] == "PRUNED"]
    assert pruned and all(t["reason"] == "median" for t in pruned)
    assert all(len(t["curve"]) < 20 for t in pruned) and min(len(t["curve"]) for t in pruned) == 6  # warm-up: 5
    completed = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert result.best_value == max(t["value"] for t in completed) and result.values["x"] > 0.8
    assert result.record()["states"] == {"COMPLETE": len(completed), "PRUNED": len(pruned)}


def test_the_budget_stops_the_running_trial_at_the_next_epoch():
    started = time.perf_counter()
    result = tune_model("multdae", _fake_fit(100, lambda h, e: h["x"], seconds_per_epoch=0.1), budget_s=1.5,
                        seed=0, space={"x": ("float", 0.0, 1.0)})
    elapsed = time.perf_counter() - started
    assert 1.5 <= elapsed < 1.5 + 0.1 + 0.5  # the budget, one epoch, slack
    assert result.trials[-1]["state"] == "PRUNED" and result.trials[-1]["reason"] == "budget"
    assert not result.values and result.best_value is None  # no trial finished: the run keeps the defaults
    assert "no trial completed" in result.summary("multdae")


def test_a_real_search_reports_every_epoch_prunes_and_keeps_the_best_split_model(planted):
    from interactions.files import load_file

    inter, _ = load_file(planted)
    split = model_split("multdae", inter, 0, {})
    fit_trial = lambda hyper, on_epoch: fit_on_split("multdae", split, hyper, seed=0, device="cpu",  # noqa: E731
                                                     progress=False, on_epoch=on_epoch)
    # lr spans a flat region (1e-6: nothing moves in 10 epochs) and a learning one
    result = tune_model("multdae", fit_trial, budget_s=120, seed=0, trials=8, fixed={"epochs": 10, "patience": 10},
                        space={"lr": ("log", 1e-6, 3e-2)})
    trials = result.trials
    assert trials[0]["values"] == {"lr": 1e-3}  # the first trial is the Config's defaults
    assert any(t["state"] == "PRUNED" and t["reason"] == "median" for t in trials), trials
    for t in trials:
        if t["state"] == "COMPLETE":  # the callback saw every epoch's validation value, as the log has it
            assert len(t["curve"]) == 10 and t["value"] == max(t["curve"])
    model, log = result.best_fit
    assert model.config.lr == result.values["lr"] and model.config.epochs == 10
    assert log["valid_value"] == result.best_value


def test_tune_records_the_values_and_the_study_and_the_next_runs_reuse_them(capsys, planted, tmp_path):
    root = tmp_path / "registry"
    started = time.perf_counter()
    code, out, err = train(capsys, "--file", str(planted), "--models", "ease,edlae", "--tune", "--tune-budget", "20s",
                           "--artifacts-dir", str(root))
    elapsed = time.perf_counter() - started
    assert code == 0, err
    tuned_version = registry.latest_version(root)
    manifest = registry.read_manifest(root, tuned_version)
    for name, keys in (("ease", {"lam"}), ("edlae", {"lam", "dropout"})):
        tuned = manifest["models"][name]["tuned"]
        assert set(tuned["values"]) == keys and tuned["trials"] >= 2 and tuned["budget_s"] > 0
        assert tuned["best_value"] == pytest.approx(manifest["models"][name]["valid_metric"]["value"])
        metrics = json.loads((root / tuned_version / name / "metrics.json").read_text())
        assert metrics["tuned"] == tuned and metrics["hyper"]["lam"] == pytest.approx(tuned["values"]["lam"])
        study = json.loads((root / tuned_version / name / TUNING_JSON).read_text())
        assert len(study["trial_list"]) == tuned["trials"] and study["trial_list"][0]["state"] == "COMPLETE"
        assert (root / tuned_version / name / TUNING_PNG).read_bytes()[:4] == b"\x89PNG"
        for file in (TUNING_JSON, TUNING_PNG):  # through the artifacts writer: checksummed
            assert f"{name}/{file}" in manifest[registry.CHECKSUMS_KEY]
        assert f"tune {name}: " in out
    assert elapsed < 20 + 15  # the budget, then the usual fits of two closed-form models (seconds)
    lam, dropout = (manifest["models"]["edlae"]["tuned"]["values"][k] for k in ("lam", "dropout"))

    # a plain run reuses them; --set wins for the key it gives
    code, out, err = train(capsys, "--file", str(planted), "--models", "ease,edlae", "--set", "edlae.dropout=0.5",
                           "--artifacts-dir", str(root))
    assert code == 0, err
    version = registry.latest_version(root)
    manifest = registry.read_manifest(root, version)
    hyper = json.loads((root / version / "edlae" / "metrics.json").read_text())["hyper"]
    assert hyper["lam"] == pytest.approx(lam) and hyper["dropout"] == 0.5 != dropout
    record = manifest["models"]["edlae"]["tuned"]
    assert record["reused_from"] == tuned_version and record["overridden"] == ["dropout"]
    assert f"edlae reuses the tuned values lam={lam:.4g} of version {tuned_version} (--set/--config win for dropout)" in out
    assert manifest["models"]["edlae"]["overrides"] == {"dropout": 0.5}
    assert not (root / version / "edlae" / TUNING_JSON).exists()  # the study stays with the version that ran it

    # the scheduled job (a TrainJob without tune) reuses them too, naming the version that searched them
    report = TrainJob(SourceSpec(file=planted), ("ease",), artifacts_dir=root, device="cpu", progress=False).run()
    assert report.runs["ease"].published.config.lam == pytest.approx(
        registry.read_manifest(root, tuned_version)["models"]["ease"]["tuned"]["values"]["lam"])
    assert report.runs["ease"].tuned["reused_from"] == tuned_version


def test_the_budget_is_shared_and_explicit_values_are_not_searched(planted, tmp_path):
    budget = 12.0
    report = train_all(TrainJob(SourceSpec(file=planted), ["ease", "multdae"],
                                {"multdae": {"epochs": 200, "dims": [100]}}, "cpu", 0, tmp_path / "r", progress=False,
                                tune=TuneOptions(budget)))
    ease, multdae = report.runs["ease"].tuned, report.runs["multdae"].tuned
    assert ease["budget_s"] == pytest.approx(budget / 2, abs=0.5)  # each model: what is left / the models left
    assert ease["seconds"] < ease["budget_s"] and ease["trials"] == 15  # 15 trials per searched parameter
    assert multdae["budget_s"] == pytest.approx(budget - ease["seconds"], abs=0.5)  # the unused time carries over
    assert multdae["seconds"] <= multdae["budget_s"] + 2.0  # stopped at the first epoch past its share
    assert set(multdae["values"]) <= {"dropout"} and multdae["fixed"] == {"epochs": 200, "dims": [100]}
    assert report.runs["multdae"].published.config.dims == (100,)


def test_a_config_files_tune_table_turns_the_search_on_beside_the_models_tables(capsys, planted, tmp_path):
    config = tmp_path / "hparams.toml"
    config.write_text('[tune]\nbudget = "30s"\ntrials = 3\n\n[edlae]\ndropout = 0.5\n')
    root = tmp_path / "registry"
    code, out, err = train(capsys, "--file", str(planted), "--models", "edlae", "--config", str(config),
                           "--artifacts-dir", str(root))
    assert code == 0, err
    entry = registry.read_manifest(root, registry.latest_version(root))["models"]["edlae"]
    assert entry["tuned"]["trials"] == 3 and set(entry["tuned"]["values"]) == {"lam"}  # dropout is given: not searched
    assert entry["tuned"]["fixed"] == {"dropout": 0.5} and entry["overrides"] == {"dropout": 0.5}
    assert entry["tuned"]["budget_s"] == 30.0
