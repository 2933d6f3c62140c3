"""Issue 21, points 1 and 2 on the trainer's side: every run fits its tasks' baselines on the models' split,
prints them beside the models, records them in the version, marks a model under its baseline by the margin
(``registry.best.MARGINS``) and records the best-validated model per task, a baseline included."""

from __future__ import annotations

import pytest

from test_pipeline import planted, run  # noqa: F401 (planted is a fixture)
import registry
from registry import best

BAD_AUTOREC = {"autorec-u": {"epochs": 1, "hidden": 16}}  # one epoch: far from the bias baseline


def test_margin_rule_per_task():
    # rating: RMSE at least 0.005 under bias
    assert best.required("rating", 0.94) == pytest.approx(0.935)
    assert best.beats("rating", 0.9349, 0.94) and not best.beats("rating", 0.9351, 0.94)
    # ranking: NDCG@100 at least 1.1x popularity
    assert best.beats("ranking", 0.2861, 0.26) and not best.beats("ranking", 0.2859, 0.26)


def test_choose_takes_the_best_qualified_model_else_the_baseline():
    record = best.choose("rating", "rating-random", "rmse", {"autorec-u": 0.93, "autorec-i": 0.90, "deeprec": 0.939}, 0.94)
    assert record["model"] == "autorec-i" and record["value"] == 0.90 and record["baseline"] == "bias"
    assert record["reason"] == "best validation rmse 0.9000 (bias 0.9400)"
    record = best.choose("ranking", "strong", "ndcg@100", {"ease": 0.28, "multdae": 0.27}, 0.26)
    assert record["model"] == "popularity" and record["value"] == 0.26  # 0.28 < 1.1 x 0.26: none qualifies
    assert record["reason"].startswith("no model beats popularity by the margin")
    assert best.choose("ranking", "strong", "ndcg@100", {"ease": 0.45, "multdae": 0.43}, 0.26)["model"] == "ease"


def test_default_model_reads_the_record_else_the_former_defaults():
    tasks = {"autorec-i": "rating", "autorec-u": "rating", "bias": "rating", "multdae": "ranking", "ease": "ranking"}
    recorded = {best.BEST_KEY: {"rating": {"model": "bias", "reason": "r"}, "ranking": {"model": "multdae", "reason": "k"}}}
    assert best.default_model(recorded, "rating", tasks) == ("bias", "r")
    assert best.default_model(recorded, "ranking", tasks) == ("multdae", "k")
    assert best.default_model({}, "rating", tasks)[0] == "autorec-u"  # published before the record
    assert best.default_model({}, "ranking", tasks)[0] == "ease"
    assert best.default_model({}, "rating", {"autorec-i": "rating", "deeprec": "rating"})[0] == "autorec-i"
    assert best.default_model({}, "ranking", {"autorec-i": "rating"})[0] is None
    # a record naming a model the version does not serve is not trusted
    assert best.default_model({best.BEST_KEY: {"ranking": {"model": "gone"}}}, "ranking", tasks)[0] == "ease"


def test_run_prints_records_and_publishes_baselines_beside_the_models(planted, tmp_path):  # noqa: F811
    root = tmp_path / "registry"
    report = run(planted, root, ["ease", "autorec-u"], BAD_AUTOREC)
    lines = report.summary_lines()
    text = "\n".join(lines)

    # printed: each model against its baseline, each baseline on the models' split, one line per model under it
    autorec = next(line for line in lines if line.startswith("autorec-u "))
    ease = next(line for line in lines if line.startswith("ease "))
    assert "BELOW bias" in autorec and "beats popularity" in ease
    for name, protocol in (("bias", "rating-random"), ("global-mean", "rating-random"), ("popularity", "strong")):
        assert any(line.startswith(name) and protocol in line and line.endswith("baseline") for line in lines), text
    under = [line for line in lines if line.startswith("autorec-u does not beat bias by the margin")]
    assert len(under) == 1 and "never the default" in under[0]
    assert "default rating model: bias (no model beats bias by the margin" in text
    assert "default ranking model: ease (best validation ndcg@100" in text

    # recorded: the baselines' figures per protocol, the margin's verdict per model, the best per task
    manifest = registry.read_manifest(root, report.version)
    recorded = manifest[best.BASELINES_KEY]
    assert set(recorded) == {"rating-random", "strong"}
    assert set(recorded["rating-random"]) == {"global-mean", "bias"} and set(recorded["strong"]) == {"popularity"}
    bias_valid = recorded["rating-random"]["bias"]["valid"]["rmse"]
    assert bias_valid == report.baselines["rating-random"]["bias"].valid_value
    assert set(recorded["strong"]["popularity"]["test"]) >= {"recall@20", "recall@50", "ndcg@100"}
    assert manifest["models"]["autorec-u"]["vs_baseline"]["beats"] is False
    assert manifest["models"]["autorec-u"]["vs_baseline"]["required"] == pytest.approx(bias_valid - 0.005)
    assert manifest["models"]["ease"]["vs_baseline"]["beats"] is True
    assert manifest[best.BEST_KEY]["rating"]["model"] == "bias"
    assert manifest[best.BEST_KEY]["rating"]["value"] == bias_valid
    assert manifest[best.BEST_KEY]["ranking"]["model"] == "ease"
    assert manifest[best.BEST_KEY]["ranking"]["value"] == report.runs["ease"].valid_value

    # published: bias and popularity are models of the version, loaded as any other
    loaded = registry.load_version(root)
    assert set(loaded.models) == {"ease", "autorec-u", "bias", "popularity"}
    assert loaded.models["bias"].model.task == "rating" and loaded.models["popularity"].model.task == "ranking"
    assert loaded.manifest["models"]["bias"]["baseline"] is True
    assert loaded.models["bias"].metrics["valid"]["rmse"] == bias_valid
    assert loaded.models["bias"].cold_start is not None  # a user with no history gets its own empty-row answer
    assert len(loaded.models["bias"].user_ids) == len(loaded.models["autorec-u"].user_ids)


def test_a_run_of_one_task_keeps_the_other_tasks_record_and_baseline(planted, tmp_path):  # noqa: F811
    root = tmp_path / "registry"
    first = run(planted, root, ["ease", "autorec-u"], BAD_AUTOREC)
    second = run(planted, root, ["ease"], gate=False)
    assert sorted(second.carried) == ["autorec-u", "bias"]  # popularity is solved again with ease
    manifest = registry.read_manifest(root, second.version)
    assert manifest[best.BEST_KEY]["rating"] == registry.read_manifest(root, first.version)[best.BEST_KEY]["rating"]
    assert manifest["models"]["popularity"].get("carried_from") is None
    assert manifest["models"]["bias"]["carried_from"] == first.version
