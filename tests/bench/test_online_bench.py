"""bench/online.py, its offline half: the held-out split, the click model, power and users needed, re-seeded A/A."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import httpx
import numpy as np
import pytest

from bench._common import REPO, BenchError
from bench.online import (
    CPU_TICK_S, ClickModel, Simulation, _descendants, a_a_bound, api_agrees, bench_credit, by_setting, experiments_api,
    hold_out, impressions_cost, look_ends, paired_difference, paired_ratio, pooled, reseeded_a_a, run_experiment,
    server_labels, service_cpu, throughput_rounds, users_needed_table,
)
from service.experiments.assignment import assign, from_config
from service.experiments.interleaving import credit, team_draft
from service.experiments.stats import ArmCounts, ab_report, interleaving_report


def test_hold_out_takes_a_fifth_of_the_positives_of_users_with_five():
    rows = np.array([[1, item, 5, 0] for item in range(10)]  # 10 positives: 2 held out
                    + [[2, item, 4, 0] for item in range(4)] + [[2, 9, 2, 0]]  # 4 positives: too few, kept
                    + [[3, item, 5 if item < 5 else 1, 0] for item in range(8)])  # 5 positives: 1 held out
    held = hold_out(rows, seed=0)
    assert set(held.positives) == {"1", "3"}
    assert len(held.positives["1"]) == 2 and len(held.positives["3"]) == 1
    assert int(next(iter(held.positives["3"]))) < 5  # only a positive is held out
    assert len(held.kept) == len(rows) - 3
    kept_pairs = {(str(u), str(i)) for u, i, _, _ in held.kept}
    assert not any((user, item) in kept_pairs for user, items in held.positives.items() for item in items)


def test_click_model_probabilities_by_position():
    model = ClickModel(p_positive=0.5, p_other=0.01)
    p = model.probabilities([["x", "y", "z"], ["y"]], [{"y"}, set()], k=3)
    assert p.tolist() == [[0.01, 0.5, 0.01], [0.01, 0.0, 0.0]]  # a short list: nothing to click past its end


def _synthetic_arms(users: int = 200, k: int = 10, seed: int = 0):
    """Arm B's list starts with two of the user's positives; arm A's holds none."""
    rng = np.random.default_rng(seed)
    positives = [{f"p{u}-{j}" for j in range(3)} for u in range(users)]
    lists_a = [[f"o{u}-{j}" for j in range(k)] for u in range(users)]
    lists_b = [[f"p{u}-0", f"p{u}-1"] + [f"o{u}-{j}" for j in rng.permutation(k)[: k - 2]] for u in range(users)]
    return lists_a, lists_b, positives


def test_interleaving_needs_fewer_users_than_ab_on_a_clear_difference():
    lists_a, lists_b, positives = _synthetic_arms()
    simulation = Simulation(lists_a, lists_b, positives, ClickModel(0.3, 0.01), k=10)
    expected = simulation.expected(samples=20_000)
    # A: 10 others at 1% -> 1 - 0.99^10 = 0.0956; B: 2 positives at 30% + 8 others -> 1 - 0.7^2 0.99^8 = 0.5478
    assert expected["ctr_a"] == pytest.approx(1 - 0.99 ** 10)
    assert expected["ctr_b"] == pytest.approx(1 - 0.7 ** 2 * 0.99 ** 8)
    assert expected["win_share_b"] > 0.8
    assert simulation.power("ab", 8, runs=50, seed=0) < simulation.power("ab", 200, runs=50, seed=0)
    table = users_needed_table(simulation, runs=60, seed=0)
    fixed, sequential = table["simulated"]["fixed"], table["simulated"]["sequential"]
    assert fixed["interleaving"] < fixed["ab"] and sequential["interleaving"] < sequential["ab"]
    # the simulated A/B need agrees with the closed form within the search's 5% and the power estimate's noise
    assert fixed["ab"] == pytest.approx(table["formula"]["ab"], rel=0.5)


def test_looks_are_evenly_spaced_and_the_last_sees_every_user():
    assert look_ends(100, 10).tolist() == list(range(10, 101, 10))
    assert look_ends(5, 10).tolist() == [1, 2, 3, 4, 5]  # fewer users than looks: one look per user
    assert look_ends(7, 1).tolist() == [7]


def test_reseeded_a_a_names_few_winners_and_the_bound_is_alpha_plus_two_sigma():
    lists_a, _, positives = _synthetic_arms(users=300)
    rates = reseeded_a_a([str(u) for u in range(300)], lists_a, positives, ClickModel(0.5, 0.05), repeats=40,
                         looks=4, seed=0)
    assert rates["fixed"] <= 0.2 and rates["sequential"] <= 0.2 and rates["repeats"] == 40
    assert a_a_bound(200) == pytest.approx(0.05 + 2 * math.sqrt(0.05 * 0.95 / 200))


def test_api_agrees_compares_impressions_and_clicked_lists_per_arm():
    result = {"arms": [{"name": "a", "impressions": 10, "ctr": {"value": 0.3}},
                       {"name": "b", "impressions": 0, "ctr": {"value": None}}]}
    assert api_agrees(result, {"a": [10, 3], "b": [0, 0]})[0]
    assert not api_agrees(result, {"a": [10, 4], "b": [0, 0]})[0]


def test_help_and_a_bad_argument_in_one_line():
    ok = subprocess.run([sys.executable, str(REPO / "bench" / "online.py"), "--help"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and "--impressions-setting" in ok.stdout
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "online.py"), "--parts", "a,d"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "unknown parts: d" in bad.stderr and "Traceback" not in bad.stderr


class FakeExperimentApi:
    """The experiment API's contract (issue 25) in process, for the bench's client half."""

    def __init__(self, lists: dict[str, dict[str, list[str]]]) -> None:
        self.lists, self.experiment, self.served, self.clicked, self.shown = lists, None, {}, {}, {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, body = request.url.path, json.loads(request.content or b"null")
        if request.method == "POST" and path == "/admin/experiments":
            if not body:
                return httpx.Response(422, json={"error": "invalid_experiment"})
            self.experiment = from_config(body)
            return httpx.Response(201, json={"id": body["id"]})
        if request.method == "POST" and path.endswith("/stop"):
            return httpx.Response(200, json={"status": "stopped"})
        if request.method == "POST" and path.startswith("/users/"):
            user = path.split("/")[2]
            arm = assign(self.experiment, user)
            recommendation_id = uuid.uuid4().hex
            if self.experiment.kind == "interleaving":
                a, b = (self.lists[x.model][user][: body["k"]] for x in self.experiment.arms)
                items, teams = team_draft(a, b, body["k"], recommendation_id)
                self.shown[recommendation_id], name = (items, teams), "interleaved"
            else:
                items, name = self.lists[arm.model][user][: body["k"]], arm.name
            self.served[recommendation_id] = name
            return httpx.Response(200, json={"items": [{"item_id": i} for i in items], "recommendation_id": recommendation_id,
                                             "experiment": {"id": self.experiment.id, "arm": name}})
        if request.method == "POST" and path == "/feedback":
            for event in body:
                self.clicked.setdefault(event["recommendation_id"], set()).add(event["item_id"])
            return httpx.Response(200, json={"received": len(body)})
        if request.method == "GET" and path.startswith("/experiments/") and self.experiment.kind == "interleaving":
            winners = Counter(credit(teams, [items.index(i) for i in self.clicked[r]])
                              for r, (items, teams) in self.shown.items() if r in self.clicked)
            a, b = (x.name for x in self.experiment.arms)
            report = interleaving_report(self.experiment.id, a, b, winners["a"], winners["b"], winners["tie"],
                                         {"interleaved": ArmCounts(len(self.shown))})
            return httpx.Response(200, json=report.to_dict())
        if request.method == "GET" and path.startswith("/experiments/"):
            counts = {arm.name: ArmCounts(sum(a == arm.name for a in self.served.values()),
                                          clicked=sum(self.served[r] == arm.name for r in self.clicked))
                      for arm in self.experiment.arms}
            return httpx.Response(200, json=ab_report(self.experiment.id, counts, "a").to_dict())
        return httpx.Response(404, json={"detail": "Not Found"})


def test_the_api_half_runs_an_experiment_and_checks_the_service_counts_against_its_own():
    users = [str(u) for u in range(60)]
    positives = {u: {f"i{u}-0", f"i{u}-1"} for u in users}
    ease = {u: [f"i{u}-{j}" for j in range(10)] for u in users}
    api = FakeExperimentApi({"ease": ease, "popularity": {u: [f"p{j}" for j in range(10)] for u in users}})
    with httpx.Client(transport=httpx.MockTransport(api), base_url="http://fake") as client:
        assert experiments_api(client) is None  # the empty definition was refused, nothing stored
        definition = {"id": "bench-a-a", "kind": "ab", "seed": 3,
                      "arms": [{"name": "a", "model": "ease", "share": 0.5}, {"name": "b", "model": "popularity",
                                                                               "share": 0.5}]}
        run = run_experiment(client, definition, users, positives, ClickModel(0.9, 0.0), k=10, seed=0)
    agrees, detail = api_agrees(run["result"], run["tally"])
    assert agrees, detail
    assert sum(n for n, _ in run["tally"].values()) == 60 and run["tally"]["b"][1] == 0  # popularity: nothing liked
    assert run["tally"]["a"][1] > 0.8 * run["tally"]["a"][0]  # EASE's lists open with 2 liked items: 1 - 0.1^2 click


def test_a_missing_experiment_api_is_named():
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404, json={"detail": "Not Found"})),
                      base_url="http://fake") as client:
        assert "POST /admin/experiments is not served" in experiments_api(client)


def test_an_answer_outside_the_experiment_is_a_bench_error_naming_it():
    users = ["1", "2"]
    api = FakeExperimentApi({"ease": {u: ["x"] for u in users}})
    bare = lambda request: (httpx.Response(200, json={"items": [{"item_id": "x"}]})  # noqa: E731
                            if request.url.path.startswith("/users/") else api(request))
    definition = {"id": "bench-a-a", "kind": "ab", "arms": [{"name": "a", "model": "ease"}]}
    with httpx.Client(transport=httpx.MockTransport(bare), base_url="http://fake") as client:
        with pytest.raises(BenchError, match="user 1's answer names no experiment arm"):
            run_experiment(client, definition, users, {u: set() for u in users}, ClickModel(), k=1, seed=0)


def test_the_bench_draws_the_interleaved_lists_again_and_credits_them_as_the_service():
    users = [str(u) for u in range(80)]
    positives = {u: {f"e{u}-0", f"e{u}-1"} for u in users}
    lists = {"ease": {u: [f"e{u}-{j}" for j in range(10)] for u in users},
             "popularity": {u: [f"p{j}" for j in range(10)] for u in users}}
    api = FakeExperimentApi(lists)
    definition = {"id": "bench-ease-pop", "kind": "interleaving",
                  "arms": [{"name": "popularity", "model": "popularity"}, {"name": "ease", "model": "ease"}]}
    with httpx.Client(transport=httpx.MockTransport(api), base_url="http://fake") as client:
        run = run_experiment(client, definition, users, positives, ClickModel(0.5, 0.05), k=10, seed=0)
    redrawn, wins = bench_credit(run["served"], {u: (lists["popularity"][u], lists["ease"][u]) for u in users}, 10)
    interleaving = run["result"]["interleaving"]
    assert redrawn == 80 and wins == {key: interleaving[key] for key in ("wins_a", "wins_b", "ties")}
    assert wins["wins_b"] > wins["wins_a"] and run["result"]["winner"] == "ease"


def test_the_impressions_cost_is_the_loop_added_at_one_rate_and_the_writer_at_full_speed_over_the_phase():
    def run(service, main, requests, rest=0.0):
        return {"service": service, "main_thread": main, "requests": requests, "rest": rest}

    # full speed: the writer's 12 us a request over the phase (its rounds saw 10: a flush fell between them, 1 us
    # off); the main thread's 150 vs 140 is not counted
    full_speed = {"on": run([160.0, 160.0], [150.0, 150.0], [3, 1], rest=13.0),
                  "off": run([100.0, 140.0], [100.0, 140.0], [3, 1], rest=1.0)}
    # one rate: the loop's 4 us, pooled (the second round's 8 counts whatever round it fell in)
    paced = {"on": run([0.0, 0.0], [200.0, 208.0], [1, 1]), "off": run([0.0, 0.0], [200.0, 200.0], [1, 1])}
    assert pooled(full_speed["off"], "service") == pytest.approx(110.0)  # (3 * 100 + 140) / 4
    assert impressions_cost(full_speed, paced) == pytest.approx(1 + (4 + 12) / 110)
    paced["on"]["main_thread"] = [190.0, 200.0]  # a loop cheaper with recording on is noise: it counts as 0
    assert impressions_cost(full_speed, paced) == pytest.approx(1 + 12 / 110)
    assert paired_ratio([110.0, 300.0, 99.0], [100.0, 100.0, 100.0]) == pytest.approx(1.1)


def test_the_paired_difference_is_the_mean_of_each_rounds_on_minus_off_and_its_standard_error():
    measured = {"on": {"main_thread": [210.0, 204.0, 212.0]}, "off": {"main_thread": [200.0, 200.0, 200.0]}}
    mean, error = paired_difference(measured["on"], measured["off"], "main_thread")  # 10, 4, 12: sd 4.163, over sqrt(3)
    assert mean == pytest.approx(26 / 3) and error == pytest.approx(math.sqrt(((10 - 26 / 3) ** 2 + (4 - 26 / 3) ** 2
                                                                                   + (12 - 26 / 3) ** 2) / 2 / 3))


def test_each_setting_has_servers_started_first_and_last_and_counts_as_one_server():
    assert server_labels(1) == ["on 1", "off 1"]
    assert server_labels(2) == ["on 1", "off 1", "off 2", "on 2"]
    assert server_labels(3)[4:] == ["on 3", "off 3"]

    def run(requests, rps, cpu, rest=0.0):
        return {"requests": requests, "rps": rps, "rest": rest, **{part: cpu for part in ("main_thread", "process", "service")}}

    measured = {"on 1": run([100, 300], [50.0, 150.0], [200.0, 100.0], rest=6.0), "off 1": run([1, 1], [1.0, 1.0], [1.0, 1.0]),
                "on 2": run([300, 100], [150.0, 50.0], [100.0, 300.0], rest=2.0)}
    merged = by_setting(measured, "on")  # CPU over both servers' requests: (100*200 + 300*100) / 400, (300*100 + 100*300) / 400
    assert merged["requests"] == [400, 400] and merged["rps"] == [100.0, 100.0]
    assert merged["main_thread"] == pytest.approx([125.0, 150.0]) and merged["service"] == pytest.approx([125.0, 150.0])
    assert merged["rest"] == pytest.approx((6.0 * 400 + 2.0 * 400) / 800)  # the phase's, over all the requests
    assert by_setting(measured, "off")["service"] == [1.0, 1.0]


def test_rounds_one_server_after_the_other_or_side_by_side_load_each_at_the_rate_and_read_its_cpu(tmp_path):
    from bench._common import ServerProcess

    with ServerProcess.ceiling(tmp_path / "on.log") as on, ServerProcess.ceiling(tmp_path / "off.log") as off:
        runs = [throughput_rounds({"on": on, "off": off}, ["1", "2"], rounds=3, seconds=0.5, clients=2, rate=60,
                                  side_by_side=together, settle_s=0.1) for together in (False, True)]
    for measured in runs:
        for label in ("on", "off"):  # each round's requests at the rate, both orders of the loads
            assert len(measured[label]["requests"]) == 3 and all(20 <= n <= 31 for n in measured[label]["requests"])
            assert all(cpu >= 0 for cpu in measured[label]["service"])
            # within two ticks of /proc's resolution, whole: ~220 us a request over these ~90 (throughput_rounds)
            assert measured[label]["rest"] * sum(measured[label]["requests"]) / 1e6 >= -2 * CPU_TICK_S - 1e-9


def test_the_service_cpu_counts_the_processes_below_the_server():
    """A writer forked by a fork server is the server's grandchild: its CPU is the service's too."""
    busy = "import time; end = time.process_time() + 0.5\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {busy!r}]); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            cpu = service_cpu(parent.pid)
            if cpu["service"] - cpu["process"] >= 0.5:
                break
            time.sleep(0.1)
        assert cpu["service"] - cpu["process"] >= 0.5 and cpu["main_thread"] <= cpu["process"]
        assert len(_descendants(parent.pid)) == 1
    finally:
        for pid in _descendants(parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()
