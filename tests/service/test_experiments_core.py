"""service/experiments: sticky assignment, team-draft interleaving and the statistics, on hand-worked cases."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tomllib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from service.experiments.assignment import HOLDOUT, Arm, Experiment, assign, from_config
from service.experiments.interleaving import credit, team_draft
from service.experiments.stats import (
    ArmCounts, ab_report, interleaving_report, mean_interval, minimum_detectable_effect, msprt_p_value, sign_msprt,
    sign_test, two_proportion_msprt, two_proportion_test, users_needed_ab, users_needed_interleaving, wilson,
)

ROOT = Path(__file__).resolve().parents[2]


def three_arms(**kwargs) -> Experiment:
    arms = (Arm("control", "ease", None, 0.5), Arm("vae", "multvae", "v2", 0.3), Arm("dae", "multdae", None, 0.2))
    return Experiment("home-page", "ab", arms, **{"seed": 7, **kwargs})


# ---- assignment -------------------------------------------------------------------------
def test_a_user_stays_in_one_arm_and_a_new_seed_reshuffles():
    experiment = three_arms()
    first = [assign(experiment, f"u{i}").name for i in range(1000)]
    assert first == [assign(experiment, f"u{i}").name for i in range(1000)]
    reseeded = [assign(three_arms(seed=8), f"u{i}").name for i in range(1000)]
    assert 0.4 < np.mean([a != b for a, b in zip(first, reseeded)]) < 0.8  # independent draws: 1 - (.25+.09+.04)


_ASSIGN_SCRIPT = """
import json, sys
from service.experiments.assignment import Arm, Experiment, assign
arms = (Arm("control", "ease", None, 0.5), Arm("vae", "multvae", "v2", 0.3), Arm("dae", "multdae", None, 0.2))
experiment = Experiment("home-page", "ab", arms, seed=7, holdout=0.1)
print(json.dumps([assign(experiment, f"u{i}").name for i in range(1000)]))
"""


def test_assignment_is_the_same_in_other_processes():
    runs = []
    for hash_seed in ("1", "2"):  # a salted hash() would differ between these two
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-c", _ASSIGN_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=120, check=True)
        runs.append(json.loads(proc.stdout))
    here = [assign(three_arms(holdout=0.1), f"u{i}").name for i in range(1000)]
    assert runs[0] == runs[1] == here
    assert set(here) == {"control", "vae", "dae", HOLDOUT}


def test_shares_hold_within_sampling_error_over_100000_users():
    n = 100_000
    counts = Counter(assign(three_arms(holdout=0.1), str(i)).name for i in range(n))
    # the holdout comes off the top, the arms split the rest by their shares
    expected = {HOLDOUT: 0.1, "control": 0.9 * 0.5, "vae": 0.9 * 0.3, "dae": 0.9 * 0.2}
    for name, share in expected.items():
        sigma = math.sqrt(n * share * (1 - share))
        assert abs(counts[name] - n * share) < 4 * sigma, (name, counts[name], n * share)


@pytest.mark.parametrize("change, message", [
    (dict(id="Home Page"), "must be a slug"),
    (dict(kind="mab"), "kind 'mab' must be one of ab, interleaving"),
    (dict(arms=(Arm("a", "ease", None, 0.5), Arm("b", "multvae", None, 0.4))), "sum to 1, they sum to 0.9"),
    (dict(arms=(Arm("a", "ease", None, 0.5), Arm("a", "multvae", None, 0.5))), "unique, repeated: a"),
    (dict(kind="interleaving"), "exactly 2 arms, got 3"),
    (dict(holdout=1.0), "holdout 1.0 must be a share in [0, 1)"),
    (dict(arms=(Arm("holdout", "ease", None, 1.0),), holdout=0.1), "'holdout' is reserved"),
    (dict(arms=(Arm("a", "", None, 1.0),)), "arm a needs a model name"),
    (dict(arms=(Arm("a", "ease", None, 0.0), Arm("b", "ease", None, 1.0))), "share 0.0 must be in (0, 1]"),
    (dict(seed="7"), "seed '7' must be an integer"),
    (dict(shadow="false"), "shadow 'false' must be true or false"),
    (dict(arms=()), "at least one arm"),
    (dict(started_at=datetime(2026, 12, 5, 10)), "must be a time with a time zone"),
    (dict(started_at=datetime(2026, 12, 5, 10, tzinfo=timezone.utc), stopped_at=datetime(2026, 12, 4, tzinfo=timezone.utc)),
     "stopped_at 2026-12-04T00:00:00+00:00 is before started_at"),
])
def test_a_bad_definition_is_refused_naming_what_is_wrong(change, message):
    fields = {"id": "home-page", "kind": "ab", "arms": three_arms().arms, "seed": 7, **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        Experiment(**fields)


def test_shares_that_sum_to_one_within_rounding_are_accepted():
    thirds = tuple(Arm(name, "ease", None, 1 / 3) for name in ("a", "b", "c"))
    experiment = Experiment("thirds", "ab", thirds)
    assert {assign(experiment, str(i)).name for i in range(300)} == {"a", "b", "c"}


def test_from_config_reads_toml_and_round_trips():
    section = tomllib.loads("""
        [experiment]
        id = "rankers-2026-12"
        kind = "interleaving"
        seed = 3
        holdout = 0.05
        started_at = 2026-12-05T10:00:00Z
        arms = [{name = "ease", model = "ease"}, {name = "vae", model = "multvae", version = "20261201T000000Z-ab12cd"}]
    """)["experiment"]
    experiment = from_config(section)
    assert experiment.kind == "interleaving" and experiment.holdout == 0.05
    assert [a.share for a in experiment.arms] == [0.5, 0.5]  # no shares given: equal
    assert experiment.arms[1].version == "20261201T000000Z-ab12cd" and experiment.arms[0].version is None
    assert from_config(json.loads(json.dumps(experiment.to_config()))) == experiment
    assert experiment.holdout_arm == Arm(HOLDOUT, "popularity", None, 0.05)


@pytest.mark.parametrize("section, message", [
    ({"id": "x", "kind": "ab", "arms": [{"name": "a", "model": "ease"}], "sead": 1}, "unknown keys sead"),
    ({"id": "x", "kind": "ab"}, "missing arms"),
    ({"id": "x", "kind": "ab", "arms": [{"name": "a", "model": "ease", "weight": 1}]}, "arm keys weight are unknown"),
    ({"id": "x", "kind": "ab", "arms": [{"name": "a", "model": "ease", "share": 0.5}, {"name": "b", "model": "ease"}]},
     "every arm a share or none"),
    ({"id": "x", "kind": "ab", "arms": [{"name": "a", "model": "ease"}], "started_at": "yesterday"},
     "started_at 'yesterday' is not an ISO 8601 time"),
])
def test_from_config_refuses_unknown_or_missing_keys(section, message):
    with pytest.raises(ValueError, match=message):
        from_config(section)


# ---- interleaving -----------------------------------------------------------------------
def test_team_draft_on_a_hand_worked_case():
    # coin True: A picks first in that round. Worked out by hand:
    #   round 1 (coin A): A takes 1, B takes 2          -> [1, 2]
    #   round 2 (coin B): B takes 5 (2 is shown), A takes 3 (2 is shown)   -> [1, 2, 5, 3]
    #   round 3 (coin A): A takes 4, B takes 6 (1 is shown)                -> [1, 2, 5, 3, 4, 6]
    items, teams = team_draft([1, 2, 3, 4], [2, 5, 1, 6], 6, "unused", coins=[True, False, True])
    assert items == [1, 2, 5, 3, 4, 6]
    assert teams == ["a", "b", "b", "a", "a", "b"]


def test_team_draft_goes_on_from_the_other_list_when_one_runs_out():
    # A has 2 items: after A:1 B:3 A:2 B:4, A has none left, so B picks 5
    items, teams = team_draft([1, 2], [3, 4, 5, 6], 5, "unused", coins=[True, True, True])
    assert items == [1, 3, 2, 4, 5] and teams == ["a", "b", "a", "b", "b"]
    assert team_draft([1, 2], [2, 1], 10, "r")[0] in ([1, 2], [2, 1])  # both exhausted: as long as the union


def test_team_draft_is_reproducible_from_the_recommendation_id_and_fair_over_many():
    a, b = list(range(10)), list(range(10, 20))
    assert team_draft(a, b, 10, "rec-42") == team_draft(a, b, 10, "rec-42")
    first = Counter(team_draft(a, b, 10, f"rec-{i}")[1][0] for i in range(4000))
    assert abs(first["a"] - 2000) < 4 * math.sqrt(1000)  # the first pick's coin is fair


@pytest.mark.parametrize("clicked, winner", [({1, 2}, "b"), ({0, 1}, "tie"), ([0, 3, 5], "a"), ([], "tie"),
                                             ([3, 3, 1], "tie")])
def test_credit_on_hand_worked_cases(clicked, winner):
    assert credit(["a", "b", "b", "a", "a", "b"], clicked) == winner


def test_credit_refuses_a_position_outside_the_list():
    with pytest.raises(ValueError, match="position 6 is outside the shown list of 6 items"):
        credit(["a", "b", "b", "a", "a", "b"], [6])


# ---- statistics on hand-worked cases ----------------------------------------------------
def test_wilson_interval_by_hand():
    # 8 of 20, z = 1.959964: centre (0.4 + 0.096036) / 1.192073 = 0.416112,
    # half 1.959964 sqrt(0.012 + 0.0024009) / 1.192073 = 0.197306
    estimate = wilson(8, 20)
    assert estimate.value == 0.4 and estimate.n == 20
    assert estimate.low == pytest.approx(0.218806, abs=1e-6) and estimate.high == pytest.approx(0.613418, abs=1e-6)
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == pytest.approx(1.0)  # exactly 1 in exact arithmetic
    assert wilson(0, 0).value is None


def test_mean_interval_by_hand_and_against_scipy():
    values = np.array([1.0, 0.5, 0.0, 0.25])  # reciprocal ranks of four lists
    # mean 0.4375, s^2 = (1.3125 - 4 * 0.4375^2) / 3 = 0.182292, half = 3.182446 * 0.426956 / 2 = 0.679383
    estimate = mean_interval(4, values.sum(), (values ** 2).sum())
    assert estimate.value == 0.4375
    assert (estimate.low, estimate.high) == pytest.approx((-0.241883, 1.116883), abs=1e-6)
    low, high = st.t.interval(0.95, 3, loc=values.mean(), scale=st.sem(values))
    assert (estimate.low, estimate.high) == pytest.approx((low, high))


def test_two_proportion_test_and_mde_by_hand():
    # 50/1000 vs 70/1000: pooled 0.06, sd sqrt(0.06 * 0.94 * 0.002) = 0.010621, z = 0.02 / 0.010621 = 1.88311
    z, p = two_proportion_test(50, 1000, 70, 1000)
    assert z == pytest.approx(1.88311, abs=1e-5) and p == pytest.approx(0.05968, abs=1e-5)
    # the same test as a 2x2 chi-square without continuity correction: chi2 = z^2
    chi2, p_chi2, _, _ = st.chi2_contingency([[50, 950], [70, 930]], correction=False)
    assert chi2 == pytest.approx(z * z) and p == pytest.approx(p_chi2)
    # MDE: (1.959964 + 0.841621) * 0.0106207 = 0.029755
    assert minimum_detectable_effect(50, 1000, 70, 1000) == pytest.approx(0.029755, abs=1e-6)
    assert two_proportion_test(0, 0, 3, 10) == (0.0, 1.0)
    assert minimum_detectable_effect(0, 500, 0, 500) is None  # no click yet: no variance to size an effect by


def test_msprt_p_value_by_hand():
    # d = 0.02, V = 0.0001128, tau = 0.02: sqrt(V / (V + tau^2)) = 0.469009,
    # exp(tau^2 d^2 / (2 V (V + tau^2))) = exp(1.383034) = 3.98698; Lambda = 1.869927, p = 1 / Lambda
    assert msprt_p_value(0.02, 0.0001128, 0.02) == pytest.approx(0.534780, abs=1e-6)
    assert msprt_p_value(0.02, 0.0001128, 0.02, previous=0.3) == 0.3  # it never rises
    assert msprt_p_value(0.0, 0.0001128, 0.02) == 1.0  # no difference: Lambda < 1, capped


def test_the_sequential_tests_of_two_proportions_and_of_a_win_share():
    # 50/1000 vs 70/1000: d = 0.02 and the pooled V = 0.0001128 of the hand-worked case above
    assert two_proportion_msprt(50, 1000, 70, 1000, mixture_sd=0.02) == pytest.approx(0.534780, abs=1e-6)
    # 12 of 15 decisive wins: d = 0.3, V = 1 / 60, tau = 0.1: sqrt(V / (V + tau^2)) = 0.790569,
    # exp(tau^2 d^2 / (2 V (V + tau^2))) = exp(1.0125) = 2.752474; p = 1 / 2.176021 = 0.459554
    assert sign_msprt(3, 12, mixture_sd=0.1) == pytest.approx(0.459554, abs=1e-6)
    assert two_proportion_msprt(0, 0, 5, 10, previous=0.4) == 0.4 and sign_msprt(0, 0) == 1.0


def test_sign_test_by_hand():
    # 12 of 15 decisive wins: P(X >= 12) = (455 + 105 + 15 + 1) / 2^15 = 0.017578, two-sided 0.035156
    assert sign_test(3, 12) == pytest.approx(2 * 576 / 32768)
    assert sign_test(0, 0) == 1.0


def test_sample_sizes_and_that_interleaving_needs_fewer():
    # Fleiss: p 0.10 vs 0.12 needs 3,841 lists per arm at alpha 0.05, power 0.8
    assert users_needed_ab(0.10, 0.12) == pytest.approx(3840.6, abs=0.5)
    # a 60% win share among 40% decisive lists: ((0.98 + 0.8416 * 0.4899) / 0.1)^2 / 0.4
    assert users_needed_interleaving(0.6, 0.4) == pytest.approx(((0.979982 + 0.841621 * math.sqrt(0.24)) / 0.1) ** 2 / 0.4)
    assert users_needed_ab(0.1, 0.1) == math.inf


def test_ab_report_names_the_winner_and_serialises_to_json():
    counts = {"control": ArmCounts(5000, clicked=500, hits=450, conversions=50, clicks=700,
                                   reciprocal_rank_sum=260.0, reciprocal_rank_squares=190.0, gain_sum=900.0,
                                   gain_squares=2500.0),
              "vae": ArmCounts(5000, clicked=650, hits=600, conversions=70, clicks=900),
              HOLDOUT: ArmCounts(500, clicked=20)}
    report = ab_report("home-page", counts, control="control")
    assert report.decision == "winner" and report.winner == "vae"
    by_arm = {c.challenger: c for c in report.comparisons}
    assert not by_arm[HOLDOUT].in_decision and by_arm["vae"].alpha == 0.05  # the holdout takes no share of alpha
    assert by_arm["vae"].sequential_p_value >= by_arm["vae"].p_value  # the price of looking any time
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["arms"][0]["ctr"]["value"] == 0.1
    even = ab_report("home-page", {"control": ArmCounts(1000, clicked=100), "vae": ArmCounts(1000, clicked=104)},
                     control="control")
    assert even.decision == "no decision" and even.winner is None
    with pytest.raises(ValueError, match="control arm 'ease'"):
        ab_report("home-page", counts, control="ease")


def test_interleaving_report_by_the_sign_test():
    fixed = interleaving_report("rankers", "ease", "vae", wins_a=3, wins_b=12, ties=40, rule="fixed")
    assert fixed.winner == "vae" and fixed.interleaving.p_value == pytest.approx(0.035156, abs=1e-6)
    assert fixed.interleaving.win_share_b.value == 0.8
    sequential = interleaving_report("rankers", "ease", "vae", wins_a=3, wins_b=12, ties=40)
    assert sequential.decision == "no decision"  # 15 decisive lists are too few to stop early on
    json.dumps(sequential.to_dict(), allow_nan=False)


# ---- A/A: the tests' false positive rates -----------------------------------------------
def test_a_a_false_positive_rates_fixed_and_sequential_under_ten_peeks():
    rng = np.random.default_rng(2026)
    runs, looks, per_look, rate = 2000, 10, 300, 0.1
    clicks = rng.binomial(per_look, rate, size=(runs, 2, looks)).cumsum(axis=2)  # cumulative clicks per arm, per look
    seen = per_look * np.arange(1, looks + 1)
    fixed_final = np.mean([two_proportion_test(c[0, -1], seen[-1], c[1, -1], seen[-1])[1] < 0.05 for c in clicks])
    fixed_peeking, sequential = 0, 0
    for c in clicks:
        p_seq, rejected_fixed = 1.0, False
        for look in range(looks):
            n = seen[look]
            z, p = two_proportion_test(c[0, look], n, c[1, look], n)
            rejected_fixed |= p < 0.05
            pooled = (c[0, look] + c[1, look]) / (2 * n)
            p_seq = msprt_p_value((c[1, look] - c[0, look]) / n, pooled * (1 - pooled) * 2 / n, 0.02, p_seq)
        fixed_peeking += rejected_fixed
        sequential += p_seq < 0.05
    noise = 4 * math.sqrt(0.05 * 0.95 / runs)  # 4 binomial sigmas of a 5% rate over 2,000 runs
    assert abs(fixed_final - 0.05) < noise  # one planned look: 5%
    assert fixed_peeking / runs > 0.05 + noise  # ten looks at the fixed test: inflated, hence the sequential rule
    assert sequential / runs < 0.05 + noise
