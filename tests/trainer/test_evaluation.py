"""Evaluation functions on hand-worked cases, the baselines' ml-100k figures, and the baselines command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

import models.scoring

from errors import UserError
from models.base import ModelInputError, TrainData
from models.baselines import Popularity, fit_baseline
from trainer.evaluation import baseline_report, evaluate_ranking, evaluate_rating, format_table, summarise
from trainer.metrics import rmse
from trainer.protocols import HeldOut

from tests.trainer._ml100k import ml100k


def popularity_on(counts: list[int]) -> Popularity:
    """A popularity model whose item i was interacted with counts[i] times."""
    rows = [u for i, c in enumerate(counts) for u in range(c)]
    cols = [i for i, c in enumerate(counts) for _ in range(c)]
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(max(counts), len(counts)))
    return fit_baseline("popularity", TrainData(X, rating_range=(0.0, 1.0)))


def binary(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items), dtype=np.float32)
    for u, items in enumerate(rows):
        dense[u, items] = 1.0
    return sp.csr_matrix(dense)


# ---- ranking ------------------------------------------------------------------------------
def test_evaluate_ranking_hand_worked():
    model = popularity_on([3, 5, 1, 4, 2])  # ranking: 1, 3, 0, 4, 2
    held = HeldOut(
        inputs=binary([[1], [3], [0]], 5),
        targets=binary([[0], [1, 2], []], 5),  # the third user has no targets: not evaluated
        users=np.array([10, 11, 12]),
        train_rows=np.full(3, -1),
    )
    report = evaluate_ranking(model, held, ks=(1, 2))
    # user 0 sees [3, 0]: target 0 at rank 2; user 1 sees [1, 0]: target 1 at rank 1
    assert report["n"] == 2
    assert report["recall@2"] == pytest.approx((1.0 + 0.5) / 2)
    assert report["precision@2"] == pytest.approx((0.5 + 0.5) / 2)
    assert report["ndcg@2"] == pytest.approx(((1 / math.log2(3)) / 1 + 1 / (1 + 1 / math.log2(3))) / 2)
    assert report["recall@1"] == pytest.approx((0.0 + 1.0) / 2)
    assert report["mrr"] == pytest.approx((0.5 + 1.0) / 2)
    assert report["coverage@2"] == pytest.approx(3 / 5)  # items 3, 0, 1


def test_evaluate_ranking_excludes_the_fold_in_items():
    model = popularity_on([5, 4, 3, 2, 1, 1])
    inputs = binary([[0, 1], [0, 2, 4]], 6)
    held = HeldOut(inputs, binary([[0, 3], [1]], 6), np.arange(2), np.full(2, -1))
    # item 0 is both input and target for user 0: it must be excluded, so user 0 can only find item 3
    report = evaluate_ranking(model, held, ks=(4,))
    assert report["recall@4"] == pytest.approx((0.5 + 1.0) / 2)


class KnownUsersOnly(Popularity):
    """Popularity that, like a model with per-user parameters, refuses users it was not trained on."""

    can_fold_in = False


def test_users_the_model_trained_on_are_passed_and_others_refused():
    base = popularity_on([3, 1, 2])
    model = KnownUsersOnly(base.config, n_items=3, n_users=3)
    model.load_state_dict(base.state_dict())
    inputs, targets = binary([[0], [1]], 3), binary([[2], [0]], 3)
    known = evaluate_ranking(model, HeldOut(inputs, targets, np.arange(2), np.array([0, 2])), ks=(1,))
    assert known["recall@1"] == pytest.approx(1.0)
    with pytest.raises(ModelInputError, match="cannot fold in new users: it was not trained on user index -1"):
        evaluate_ranking(model, HeldOut(inputs, targets, np.arange(2), np.array([0, -1])), ks=(1,))


def test_evaluate_ranking_blocks_give_the_same_report(monkeypatch):
    split_model = popularity_on([9, 1, 8, 2, 7, 3, 6, 4, 5, 1])
    rng = np.random.default_rng(0)
    dense_in = (rng.random((50, 10)) < 0.2).astype(np.float32)
    dense_t = ((rng.random((50, 10)) < 0.3) & (dense_in == 0)).astype(np.float32)
    held = HeldOut(sp.csr_matrix(dense_in), sp.csr_matrix(dense_t), np.arange(50), np.full(50, -1))
    whole = evaluate_ranking(split_model, held, ks=(3, 5))
    monkeypatch.setattr(models.scoring, "SCORE_BATCH_ROWS", 7)  # the model scores the 50 rows in blocks of 7
    assert evaluate_ranking(split_model, held, ks=(3, 5)) == whole


# ---- ratings ------------------------------------------------------------------------------
def rating_data() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(1)
    dense = np.where(rng.random((40, 12)) < 0.5, rng.integers(1, 6, (40, 12)), 0).astype(np.float32)
    dense[:, 11] = 0  # item 11 is never rated in train
    dense[39] = 0  # user 39 rates nothing in train
    held = np.zeros_like(dense)
    held[0, 11], held[39, 3], held[39, 11] = 4.0, 2.0, 5.0  # unknown item / user / both
    rated = np.argwhere(dense[:30] > 0)[::3]
    held[rated[:, 0], rated[:, 1]] = dense[rated[:, 0], rated[:, 1]]
    dense[rated[:, 0], rated[:, 1]] = 0  # held-out ratings are not in train
    return sp.csr_matrix(dense), sp.csr_matrix(held)


def test_evaluate_rating_uses_the_fallback_for_unknown_users_and_items():
    train, targets = rating_data()
    data = TrainData(train, rating_range=(1.0, 5.0))
    model, fallback = fit_baseline("global-mean", data), fit_baseline("bias", data)
    coo = targets.tocoo()
    users, items, actual = coo.row, coo.col, coo.data.astype(np.float64)
    unknown = (users == 39) | (items == 11)
    expected = np.full(actual.size, float(model.mean))
    expected[unknown] = fallback.predict(train[users[unknown]], items[unknown])
    result = evaluate_rating(model, train, targets, fallback=fallback)
    assert result["n"] == actual.size and result["n_fallback"] == 3 == unknown.sum()
    assert result["rmse"] == pytest.approx(math.sqrt(np.mean((expected - actual) ** 2)))
    assert result["mae"] == pytest.approx(np.mean(np.abs(expected - actual)))


def test_evaluate_rating_agrees_with_pairwise_predict():
    train, targets = rating_data()
    model = fit_baseline("bias", TrainData(train, rating_range=(1.0, 5.0)), reg_items=0.5, reg_users=0.5)
    coo = targets.tocoo()
    pairwise = model.predict(train[coo.row], coo.col, users=coo.row)  # the shared, clipped predict
    result = evaluate_rating(model, train, targets, fallback=None, batch_rows=4)
    assert result["n_fallback"] == 0
    assert result["rmse"] == pytest.approx(rmse(pairwise, coo.data), rel=1e-6)


def test_evaluate_rating_refuses_rankers_and_empty_targets():
    train, targets = rating_data()
    ranker = fit_baseline("popularity", TrainData(train))
    with pytest.raises(ModelInputError, match="does not predict ratings"):
        evaluate_rating(ranker, train, targets)
    model = fit_baseline("global-mean", TrainData(train))
    with pytest.raises(UserError, match="no ratings"):
        evaluate_rating(model, train, sp.csr_matrix(train.shape, dtype=np.float32))
    with pytest.raises(ModelInputError, match="shape"):
        evaluate_rating(model, train, targets[:5])


# ---- the baselines on ml-100k (5 seeds each, about a second) ----------------------------------
def test_ml100k_baseline_figures(ml100k_dir):
    rating = baseline_report(ml100k(ml100k_dir), "rating-random", range(5))["results"]
    bias, mean = rating["bias"]["rmse"]["mean"], rating["global-mean"]["rmse"]["mean"]
    assert 0.92 < bias < 0.96 and 1.10 < mean < 1.15 and bias < mean
    assert rating["bias"]["mae"]["mean"] < rating["global-mean"]["mae"]["mean"]
    ranking = baseline_report(ml100k(ml100k_dir), "strong", range(5))["results"]["popularity"]
    assert 0.24 < ranking["ndcg@100"]["mean"] < 0.30
    assert ranking["recall@20"]["mean"] < ranking["recall@50"]["mean"]
    assert ranking["n"]["values"] == [100.0] * 5


def test_summarise_and_table():
    summary = summarise({"bias": {"rmse": [1.0, 2.0, 3.0]}})
    assert summary["bias"]["rmse"]["mean"] == 2.0 and summary["bias"]["rmse"]["std"] == pytest.approx(1.0)
    table = format_table(summary, ["rmse"])
    assert table.splitlines()[0].split() == ["baseline", "rmse"]
    assert "2.0000 ± 1.0000" in table


# ---- the command line -------------------------------------------------------------------------
def test_baselines_command_prints_and_writes_json(ml100k_dir, tmp_data_dir, tmp_path, capsys):
    from trainer.cli import main

    out = tmp_path / "out" / "strong.json"
    argv = ["baselines", "--dataset", "ml-100k", "--source", str(ml100k_dir), "--protocol", "strong", "--seeds", "0,1"]
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "popularity" in printed and "ndcg@100" in printed
    report = json.loads(out.read_text())
    assert report["protocol"] == "strong" and report["seeds"] == [0, 1]
    assert len(report["results"]["popularity"]["ndcg@100"]["values"]) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0,x"], "--seeds must be"),
        (["--protocol", "random"], "unknown protocol 'random'"),
        (["--dataset", "ml-7k"], "unknown dataset"),
    ],
)
def test_baselines_command_bad_input_is_one_line(ml100k_dir, tmp_data_dir, capsys, args, message):
    from trainer.cli import main

    argv = ["baselines", "--dataset", "ml-100k", "--source", str(ml100k_dir), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
