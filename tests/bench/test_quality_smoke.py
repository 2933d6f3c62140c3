"""bench/quality.py: published-figure lookup, the PASS/FAIL checks, and short real runs (ml-100k, fake ml-1m)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bench.quality import checks, format_report, main, plan, published_for, run_protocol
from interactions.movielens import read_dataset
from trainer.evaluation import evaluate_baselines


def test_published_figure_prefers_our_dataset_then_names_its_own():
    same = published_for("ml-100k", "rating-random", "autorec-i", "rmse")
    assert (same.dataset, same.value, same.source) == ("ml-100k", 0.901, "d2l")
    assert published_for("ml-1m", "rating-random", "autorec-i", "rmse").value == 0.831
    other = published_for("ml-100k", "strong", "ease", "ndcg@100")
    assert (other.dataset, other.value) == ("ml-20m", 0.420)
    assert published_for("ml-1m", "seed-ranking", "cdae", "recall@100").value == 0.4137
    assert published_for("ml-1m", "temporal", "svae", "recall@10").value == 0.1248
    assert published_for("ml-100k", "strong", "ease", "recall@10") is None  # no such figure: no column entry


def test_plan_puts_each_model_on_its_protocols():
    runs = plan(["rating-random", "strong", "temporal"], ["autorec-i", "ease", "svae", "multvae"])
    assert runs == {
        "rating-random": ["bias", "global-mean", "autorec-i"],
        "strong": ["popularity", "ease", "multvae"],  # svae: its own protocol only
        "temporal": ["popularity", "svae", "multvae"],
    }
    assert plan(["temporal"], ["ease"]) == {}  # EASE is no sequential contender: nothing to run


def _report(means: dict[tuple[str, str, str], float]) -> dict:
    protocols: dict = {}
    for (protocol, model, metric), value in means.items():
        result = protocols.setdefault(protocol, {"results": {}})["results"].setdefault(
            model, {"baseline": model in ("bias", "global-mean", "popularity"), "metrics": {}}
        )
        result["metrics"][metric] = {"mean": value, "std": 0.0}
    return {"dataset": "ml-100k", "protocols": protocols}


def test_checks_pass_fail_and_skip_on_the_means():
    report = _report({
        ("rating-random", "bias", "rmse"): 0.93,
        ("rating-random", "autorec-i", "rmse"): 0.89,  # beats bias, misses 0.885
        ("rating-random", "deeprec", "rmse"): 0.95,  # worse than bias
        ("strong", "popularity", "ndcg@100"): 0.27,
        ("strong", "ease", "ndcg@100"): 0.45,
        ("strong", "cdae", "ndcg@100"): 0.30,  # within 0.05 of popularity
        ("temporal", "popularity", "ndcg@100"): 0.36,
        ("temporal", "svae", "ndcg@100"): 0.40, ("temporal", "multvae", "ndcg@100"): 0.38,
        ("temporal", "svae", "recall@10"): 0.10, ("temporal", "multvae", "recall@10"): 0.12,
    })
    status = {c["check"]: c["status"] for c in checks(report)}
    assert status["rating-random RMSE autorec-i < bias"] == "PASS"
    assert status["rating-random RMSE deeprec < bias"] == "FAIL"
    assert status["rating-random RMSE autorec-i <= 0.885"] == "FAIL"
    assert status["strong NDCG@100 ease >= popularity + 0.05"] == "PASS"
    assert status["strong NDCG@100 cdae >= popularity + 0.05"] == "FAIL"
    assert status["strong NDCG@100 ease >= 0.44"] == "PASS"
    assert status["strong NDCG@100 multvae >= 0.43"] == "SKIP"  # not run
    assert status["temporal ndcg@100 svae > multvae"] == "PASS"
    assert status["temporal NDCG@100 svae >= popularity + 0.05"] == "FAIL"  # 0.40 vs 0.36
    assert status["temporal recall@10 svae > multvae"] == "FAIL"
    assert checks({**report, "dataset": "ml-1m"}) == []  # targets are for ml-100k only


def test_rating_baselines_agree_with_the_evaluation_module(ml100k_dir):
    """The bench's fit-then-score path gives the same figures as ``evaluate_baselines``."""
    interactions = read_dataset("ml-100k", ml100k_dir)
    ours = run_protocol(interactions, "rating-random", ["bias", "global-mean"], [0, 1])
    theirs = evaluate_baselines(interactions, "rating-random", [0, 1])
    for name in ("bias", "global-mean"):
        for metric in ("rmse", "mae"):
            np.testing.assert_allclose(ours[name]["metrics"][metric]["values"], theirs[name][metric], rtol=1e-9)
    assert ours["bias"]["seconds_per_epoch"] is None and len(ours["bias"]["fit_seconds"]["values"]) == 2


def test_ml100k_ease_run_prints_one_table_and_writes_json_and_png(ml100k_dir, tmp_data_dir, tmp_path, capsys):
    out = tmp_path / "out" / "quality.json"
    argv = ["--source", str(ml100k_dir), "--models", "ease", "--seeds", "0,1", "--protocols", "strong"]
    status = main([*argv, "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == (1 if "\nFAIL  " in printed else 0)  # exit 1 exactly when a target is missed
    ease_row = next(line for line in printed.splitlines() if " ease " in line and "ndcg@100" in line)
    assert re.search(r"0\.42 ml-20m \[[a-z]\]", ease_row)  # EASE's ML-20M figure beside ours, with its footnote
    assert "Steck 2019" in printed
    assert "PASS  strong NDCG@100 ease >= popularity + 0.05" in printed
    report = json.loads(out.read_text())
    ease = report["protocols"]["strong"]["results"]["ease"]
    pop = report["protocols"]["strong"]["results"]["popularity"]
    assert len(ease["metrics"]["ndcg@100"]["values"]) == 2 and ease["metrics"]["n"]["values"] == [100.0, 100.0]
    assert ease["metrics"]["ndcg@100"]["mean"] > pop["metrics"]["ndcg@100"]["mean"]
    assert out.with_suffix(".png").stat().st_size > 0



def test_set_overrides_a_models_config_and_is_recorded(ml100k_dir, tmp_data_dir, tmp_path):
    argv = ["--source", str(ml100k_dir), "--models", "ease", "--seeds", "0", "--protocols", "strong"]
    ndcg = {}
    for label, extra in (("default", []), ("lam 5000", ["--set", "ease.lam=5000"])):
        main([*argv, *extra, "--out", str(tmp_path / f"{label}.json")])
        report = json.loads((tmp_path / f"{label}.json").read_text())
        ndcg[label] = report["protocols"]["strong"]["results"]["ease"]["metrics"]["ndcg@100"]["mean"]
    assert report["overrides"] == {"ease": {"lam": 5000.0}}  # typed as the config's field, and kept with the figures
    assert ndcg["lam 5000"] != ndcg["default"]

def test_fake_ml1m_folder_runs_the_ml1m_path(tmp_path: Path):
    """A small log in ml-1m's ``ratings.dat`` layout: 600 + 600 held-out users, ML-1M figures beside ours."""
    rng = np.random.default_rng(0)
    n_users, n_items, per_user = 1_500, 300, 30
    # Each user's 30 distinct items, popular ones likelier (Gumbel top-k of log-popularity)
    keys = np.log(1.0 / np.arange(1, n_items + 1)) + rng.gumbel(size=(n_users, n_items))
    items = np.argpartition(-keys, per_user, axis=1)[:, :per_user].ravel()
    users = np.repeat(np.arange(n_users), per_user)
    ratings = rng.choice([1, 2, 3, 4, 5], size=users.size, p=[0.05, 0.1, 0.25, 0.35, 0.25])
    stamps = 978_300_000 + np.arange(users.size)
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    lines = [f"{u + 1}::{i + 1}::{r}::{t}" for u, i, r, t in zip(users, items, ratings, stamps)]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    interactions = read_dataset("ml-1m", folder)
    results = run_protocol(interactions, "seed-ranking", ["popularity", "ease"], [0])
    report = {"dataset": "ml-1m", "seeds": [0], "protocols": {"seed-ranking": {
        "metrics": ["precision@100", "recall@100", "ndcg@100"], "results": results}}}
    table = format_report(report)
    assert "0.2561 [a]" in table and "ml-20m" not in table  # the seed blog's EASE figure, on ml-1m itself
    strong = run_protocol(interactions, "strong", ["popularity"], [0])
    assert strong["popularity"]["metrics"]["n"]["values"][0] == pytest.approx(600, abs=5)  # ml-1m: 600 test users


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "ease,nope"], "unknown model(s) nope"),
        (["--protocols", "random"], "unknown protocol(s) random"),
        (["--models", "ease", "--protocols", "rating-random"], "none of the models ease runs on rating-random"),
        (["--seeds", "0,x"], "--seeds must be"),
        (["--models", "ease", "--set", "ease.nope=1"], "unknown hyper-parameter ease.nope"),
    ],
)
def test_bad_arguments_are_one_line(ml100k_dir, tmp_data_dir, tmp_path, capsys, args, message):
    assert main(["--source", str(ml100k_dir), "--out", str(tmp_path / "q.json"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
