"""The trainer publishes each rating model with the bias baseline on that model's own training matrix
(the service's cold start, issue 20 point 7); rankers get none."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from interactions.files import load_file
from models.base import TrainData
from models.baselines import fit_baseline
import registry
from trainer.pipeline import TrainJob, train_all
from trainer.sources import SourceSpec

FAST = {"autorec-u": {"epochs": 2, "hidden": 16}}


@pytest.fixture
def ratings_csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame({"user": rng.integers(0, 150, n), "item": 1000 + rng.integers(0, 80, n),
                          "rating": rng.integers(1, 6, n), "timestamp": 1_600_000_000 + np.arange(n)})
    path = tmp_path / "ratings.csv"
    frame.drop_duplicates(["user", "item"]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("refit", [True, False])
def test_a_rating_model_is_published_with_its_bias_baseline(ratings_csv, tmp_path, refit):
    root = tmp_path / "registry"
    report = train_all(TrainJob(SourceSpec(file=ratings_csv), ["autorec-u", "ease"], FAST, "cpu", 0, root,
                                progress=False, refit=refit))
    loaded = registry.load_version(root)
    assert loaded.manifest["models"]["autorec-u"]["cold_start"] == "bias"
    assert "cold_start" not in loaded.manifest["models"]["ease"] and loaded.models["ease"].cold_start is None
    baseline = loaded.models["autorec-u"].cold_start
    if refit:  # the refit saw every rating: so does its baseline
        inter, _ = load_file(ratings_csv)
        expected = fit_baseline("bias", TrainData(inter.matrix("rating"), rating_range=inter.rating_range))
    else:  # the split's model: the same baseline its test fell back on, fitted on the split's train part
        expected = report.runs["autorec-u"].cold_start
    assert baseline.rating_range == expected.rating_range == (1.0, 5.0)
    assert torch.allclose(baseline.mean, expected.mean) and torch.allclose(baseline.item_bias, expected.item_bias)
    assert baseline.n_items == loaded.models["autorec-u"].model.n_items
