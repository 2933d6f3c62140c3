"""Online evaluation through the real API: A/A false positives, EASE against popularity by A/B and interleaving, impressions' cost.

    python bench/online.py                         # all of (a), (b), (c) on ml-100k, SQLite + in-process cache
    python bench/online.py --parts a,b --users 400 # fewer simulated users, no throughput run

Simulated users are the ml-100k users with >= 5 positives (ratings >= 4); 20% of each one's
positives (at least one) are held out at random. The rest is the world the service knows: EASE
is trained on it (``python -m trainer train --file``, with the popularity baseline) and the
database is seeded with it, so a held-out positive is neither seen nor learnt. A user clicks a
shown item with ``--p-positive`` when it is one of their held-out positives, ``--p-other``
otherwise (each item independently).

What goes through the API, and what does not:

* lists: every user's EASE and popularity top-k, asked of the running service by name
  (``"model"`` in the request: outside any experiment);
* (a) A/A: one A/A experiment (two arms serving EASE) defined with ``POST /admin/experiments``,
  every user asks for a list once, its simulated clicks go to ``POST /feedback``, and
  ``GET /experiments/{id}`` must count what the bench counted. The 200 repetitions re-seed the
  assignment (``assign`` with seeds 0..199) over those logged lists with fresh clicks, offline:
  200 experiments through the API would be 200 x the users' requests;
* (b) users needed: power simulated on the API's lists (``Simulation``), A/B (half the users on
  each arm) against team-draft interleaving (each user sees both), under the fixed rules (z-test,
  sign test, read once) and the sequential ones (mixture SPRTs, read 10 times); then one
  interleaving experiment ease against popularity through the API, every user once;
* (c) the recommendation path (cache hits) at 8 clients on ``--pairs`` servers with impression
  recording on and as many off (``--impressions-setting``; started on, off, off, on: ``server_labels``),
  SQLite + in-process cache or PostgreSQL + Redis (``--backend``), one after the other in turned
  order each round, as fast as the clients go and at half that rate; each setting's servers count
  as one (``by_setting``). The verdict is the service CPU (every thread, any process below the
  server) recording adds to a request, over a request's CPU without it (``impressions_cost``). Then
  every server at once, sharing that rate (``throughput_rounds(..., side_by_side=True)``), printed
  beside it with what two servers alike differ by.

The experiment API (issue 25) is probed first: where it is missing, the parts that need it print
SKIP with the reason, and the parts on the lists still run.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    API_KEY, ML100K, REDIS_URL, BenchError, Request, ServerProcess, machine_info, postgres_database, redis_namespace,
    run_load, run_loads, seed_database, service_env, train_registry, verdict, write_json,
)
from service.core.config import Settings  # noqa: E402
from service.experiments.assignment import Arm, Experiment, assign  # noqa: E402
from service.experiments.interleaving import credit, team_draft  # noqa: E402
from service.experiments.stats import (  # noqa: E402
    ALPHA, POWER, ArmCounts, Rule, ab_report, sign_msprt, sign_test, two_proportion_msprt, two_proportion_test,
    users_needed_ab, users_needed_interleaving,
)

PARTS = ("a", "b", "c")
AUTH = {"X-API-Key": API_KEY}
INTERLEAVINGS_PER_USER = 16  # coin sequences drawn per user: the simulation samples among them
THROUGHPUT_MARGIN = 0.05
PACED_SHARE = 0.5  # (c) the paced rounds' offered rate, a share of the 8-client req/s without recording
FLUSH_S = Settings.model_fields["IMPRESSION_FLUSH_S"].default  # (c) how often the servers' writers flush (their default)
SEQUENTIAL_LOOKS = 10  # (b) how often the sequential rule is read in each simulated experiment
Design = Literal["ab", "interleaving"]


# ---- the simulated users ----------------------------------------------------------------
@dataclass(frozen=True)
class HeldOut:
    kept: np.ndarray  # rows (user, item, rating, timestamp) the service knows
    positives: dict[str, set[str]]  # user -> held-out positive items


def hold_out(rows: np.ndarray, seed: int, share: float = 0.2, threshold: float = 4.0) -> HeldOut:
    """Per user with >= 5 positives, ``share`` of them (at least one) held out at random."""
    rng = np.random.default_rng(seed)
    drop = np.zeros(len(rows), dtype=bool)
    positives: dict[str, set[str]] = {}
    order = np.argsort(rows[:, 0], kind="stable")
    users, starts = np.unique(rows[order, 0], return_index=True)
    for user, rows_of_user in zip(users, np.split(order, starts[1:])):
        liked = rows_of_user[rows[rows_of_user, 2] >= threshold]
        if len(liked) < 5:
            continue
        held = rng.choice(liked, size=max(1, int(share * len(liked))), replace=False)
        drop[held] = True
        positives[str(user)] = {str(item) for item in rows[held, 1]}
    return HeldOut(rows[~drop], positives)


def read_ml100k() -> np.ndarray:
    if ML100K is None:
        from interactions.datasets import get_dataset

        data = get_dataset("ml-100k", progress=False)
        return np.column_stack([data.user_ids[data.users], data.item_ids[data.items], data.ratings,
                                data.timestamps]).astype(np.int64)
    return np.loadtxt(ML100K / "u.data", dtype=np.int64)


def write_interactions(rows: np.ndarray, path: Path) -> Path:
    path.write_text("user_id,item_id,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    return path


@dataclass(frozen=True)
class ClickModel:
    p_positive: float = 0.5
    p_other: float = 0.01

    def probabilities(self, lists: Sequence[Sequence[str]], positives: Sequence[set[str]], k: int) -> np.ndarray:
        """(users, k) click probability of each shown position; 0 past a short list."""
        p = np.zeros((len(lists), k))
        for row, (items, liked) in enumerate(zip(lists, positives)):
            p[row, : len(items)] = [self.p_positive if item in liked else self.p_other for item in items[:k]]
        return p

    def clicks(self, rng: np.random.Generator, items: Sequence[str], liked: set[str]) -> list[int]:
        """Positions a user clicks in one shown list."""
        p = self.probabilities([items], [liked], len(items))[0]
        return np.flatnonzero(rng.random(len(items)) < p).tolist()


# ---- the statistics on the lists: power and users needed --------------------------------
class Simulation:
    """Two arms' lists for the same users, and how often each design finds the difference."""

    def __init__(self, lists_a: Sequence[Sequence[str]], lists_b: Sequence[Sequence[str]],
                 positives: Sequence[set[str]], clicks: ClickModel, k: int, seed: int = 0) -> None:
        self.k, self.users = k, len(positives)
        p_a, p_b = clicks.probabilities(lists_a, positives, k), clicks.probabilities(lists_b, positives, k)
        self.ctr_a = 1 - np.prod(1 - p_a, axis=1)  # chance that a user clicks something in the list
        self.ctr_b = 1 - np.prod(1 - p_b, axis=1)
        drafts = [[team_draft(list(a)[:k], list(b)[:k], k, f"{seed}-{user}-{r}") for r in range(INTERLEAVINGS_PER_USER)]
                  for user, (a, b) in enumerate(zip(lists_a, lists_b))]
        self.p_mixed = np.zeros((self.users, INTERLEAVINGS_PER_USER, k))
        self.team_b = np.zeros((self.users, INTERLEAVINGS_PER_USER, k), dtype=bool)
        for user, user_drafts in enumerate(drafts):
            for r, (items, teams) in enumerate(user_drafts):
                self.p_mixed[user, r] = clicks.probabilities([items], [positives[user]], k)[0]
                self.team_b[user, r, : len(teams)] = [t == "b" for t in teams]

    def rejects(self, design: Design, n_users: int, rng: np.random.Generator, rule: Rule = "fixed",
                looks: int = SEQUENTIAL_LOOKS, alpha: float = ALPHA) -> bool:
        """One simulated experiment of ``n_users`` users (drawn with replacement): does its test reject?
        The fixed rule is read once at the end, the sequential one at ``looks`` evenly spaced looks."""
        users = rng.integers(self.users, size=n_users)
        ends = look_ends(n_users, 1 if rule == "fixed" else looks) - 1
        if design == "ab":
            on_b = rng.random(n_users) < 0.5
            clicked = rng.random(n_users) < np.where(on_b, self.ctr_b[users], self.ctr_a[users])
            n_b, x_b, x_a = (np.cumsum(v)[ends] for v in (on_b, clicked & on_b, clicked & ~on_b))
            tallies = [(int(x_a[i]), int(ends[i] + 1 - n_b[i]), int(x_b[i]), int(n_b[i])) for i in range(len(ends))]
            if rule == "fixed":
                return two_proportion_test(*tallies[-1])[1] < alpha
            p = 1.0
            for tally in tallies:
                p = two_proportion_msprt(*tally, previous=p)
            return p < alpha
        draft = rng.integers(INTERLEAVINGS_PER_USER, size=n_users)
        clicks = rng.random((n_users, self.k)) < self.p_mixed[users, draft]
        on_b = self.team_b[users, draft]
        wins_b, wins_a = (clicks & on_b).sum(axis=1), (clicks & ~on_b).sum(axis=1)
        won_a, won_b = np.cumsum(wins_a > wins_b)[ends], np.cumsum(wins_b > wins_a)[ends]
        if rule == "fixed":
            return sign_test(int(won_a[-1]), int(won_b[-1])) < alpha
        p = 1.0
        for a, b in zip(won_a, won_b):
            p = sign_msprt(int(a), int(b), previous=p)
        return p < alpha

    def power(self, design: Design, n_users: int, runs: int, seed: int, rule: Rule = "fixed") -> float:
        rng = np.random.default_rng(seed)  # the same seed at every n: common random numbers, a smoother curve
        return float(np.mean([self.rejects(design, n_users, rng, rule) for _ in range(runs)]))

    def users_needed(self, design: Design, runs: int = 200, seed: int = 0, rule: Rule = "fixed",
                     target: float = POWER, most: int = 1_000_000) -> int:
        """Fewest users (both arms together for A/B) whose simulated power reaches ``target``, within 5%."""
        high = 8
        while self.power(design, high, runs, seed, rule) < target:
            high *= 2
            if high > most:
                return most
        low = high // 2
        while high - low > max(2, high // 20):
            middle = (low + high) // 2
            low, high = (low, middle) if self.power(design, middle, runs, seed, rule) >= target else (middle, high)
        return high

    def expected(self, samples: int = 200_000, seed: int = 1) -> dict[str, float]:
        """CTRs of both arms, the share of decisive interleaved lists and B's win share among them."""
        rng = np.random.default_rng(seed)
        users = rng.integers(self.users, size=samples)
        draft = rng.integers(INTERLEAVINGS_PER_USER, size=samples)
        clicks = rng.random((samples, self.k)) < self.p_mixed[users, draft]
        on_b = self.team_b[users, draft]
        wins_b, wins_a = (clicks & on_b).sum(axis=1), (clicks & ~on_b).sum(axis=1)
        decisive = wins_a != wins_b
        return {"ctr_a": float(self.ctr_a.mean()), "ctr_b": float(self.ctr_b.mean()),
                "decisive_share": float(decisive.mean()),
                "win_share_b": float((wins_b > wins_a).sum() / max(1, decisive.sum()))}


def look_ends(n_users: int, looks: int) -> np.ndarray:
    """How many users each of ``looks`` evenly spaced looks has seen (the last sees them all)."""
    return np.unique(np.maximum(1, np.round(np.linspace(n_users / looks, n_users, looks)).astype(int)))


def users_needed_table(simulation: Simulation, runs: int, seed: int) -> dict[str, Any]:
    """(b): users needed by each design under each rule (simulated), and by the fixed rules' closed forms."""
    expected = simulation.expected(seed=seed + 1)
    simulated = {}
    for rule in ("fixed", "sequential"):
        ab = simulation.users_needed("ab", runs, seed, rule)
        interleaving = simulation.users_needed("interleaving", runs, seed, rule)
        simulated[rule] = {"ab": ab, "interleaving": interleaving, "ratio": ab / interleaving}
    return {
        "simulated": simulated,
        "formula": {"ab": 2 * users_needed_ab(expected["ctr_a"], expected["ctr_b"]),
                    "interleaving": users_needed_interleaving(expected["win_share_b"], expected["decisive_share"])},
        "expected": expected, "runs_per_point": runs,
    }


def reseeded_a_a(user_ids: Sequence[str], lists: Sequence[Sequence[str]], positives: Sequence[set[str]],
                 clicks: ClickModel, repeats: int, looks: int, seed: int) -> dict[str, float]:
    """(a): share of ``repeats`` A/A experiments over the same logged lists that name a winner.

    Experiment r assigns the users with seed r (``assign``), each list gets fresh clicks; the
    fixed rule is read once at the end, the sequential rule at ``looks`` evenly spaced looks."""
    k = max(len(items) for items in lists)
    ctr = 1 - np.prod(1 - clicks.probabilities(lists, positives, k), axis=1)
    rng = np.random.default_rng(seed)
    fixed = sequential = 0
    for repeat in range(repeats):
        experiment = Experiment("a-a", "ab", (Arm("a", "ease", None, 0.5), Arm("b", "ease", None, 0.5)), seed=repeat)
        on_b = np.array([assign(experiment, user).name == "b" for user in user_ids])
        clicked = rng.random(len(user_ids)) < ctr
        previous: dict[str, float] = {}
        for look in range(1, looks + 1):
            seen = slice(0, len(user_ids) * look // looks)
            report = ab_report("a-a", _counts(on_b[seen], clicked[seen]), "a", previous_p_values=previous)
            previous = {c.challenger: c.sequential_p_value for c in report.comparisons}
        sequential += report.winner is not None
        fixed += ab_report("a-a", _counts(on_b, clicked), "a", rule="fixed").winner is not None
    return {"fixed": fixed / repeats, "sequential": sequential / repeats, "repeats": repeats, "looks": looks}


def _counts(on_b: np.ndarray, clicked: np.ndarray) -> dict[str, ArmCounts]:
    return {"a": ArmCounts(int((~on_b).sum()), clicked=int(clicked[~on_b].sum())),
            "b": ArmCounts(int(on_b.sum()), clicked=int(clicked[on_b].sum()))}


def a_a_bound(repeats: int, alpha: float = ALPHA) -> float:
    """alpha plus two binomial sigmas over ``repeats`` runs: the noise a true alpha-level test shows."""
    return alpha + 2 * math.sqrt(alpha * (1 - alpha) / repeats)


# ---- the API ----------------------------------------------------------------------------
def api_lists(client: httpx.Client, users: Sequence[str], model: str, k: int) -> list[list[str]]:
    """Each user's top-k from ``model`` named in the request (outside any experiment)."""
    lists = []
    for user in users:
        answer = client.post(f"/users/{user}/recommendations", json={"k": k, "model": model})
        if answer.status_code != 200:
            raise BenchError(f"{model} list of user {user}: {answer.status_code} {answer.text[:200]}")
        lists.append([item["item_id"] for item in answer.json()["items"]])
    return lists


def experiments_api(client: httpx.Client) -> str | None:
    """None when the experiment API is served; otherwise why the parts that need it are skipped.

    An empty definition is refused by a served route (422) and never stored."""
    probe = client.post("/admin/experiments", json={}, headers=AUTH)
    if probe.status_code in (404, 405):
        return "POST /admin/experiments is not served (the experiment API of issue 25 has not landed)"
    return None if probe.status_code == 422 else f"POST /admin/experiments answered {probe.status_code} to {{}}"


def run_experiment(client: httpx.Client, definition: dict[str, Any], users: Sequence[str],
                   positives: dict[str, set[str]], clicks: ClickModel, k: int, seed: int) -> dict[str, Any]:
    """Define ``definition``, ask each user's list once, post their clicks, read the result, stop it."""
    created = client.post("/admin/experiments", json=definition, headers=AUTH)
    if created.status_code != 201:
        raise BenchError(f"POST /admin/experiments: {created.status_code} {created.text[:300]}")
    rng = np.random.default_rng(seed)
    tally: dict[str, list[int]] = {}  # arm -> [impressions, lists clicked]
    served = []
    try:
        for user in users:
            answer = client.post(f"/users/{user}/recommendations", json={"k": k})
            if answer.status_code != 200:
                raise BenchError(f"list of user {user}: {answer.status_code} {answer.text[:200]}")
            body = answer.json()
            items = [item["item_id"] for item in body["items"]]
            arm = (body.get("experiment") or {}).get("arm")
            if arm is None:
                raise BenchError(f"user {user}'s answer names no experiment arm: {str(body)[:200]}")
            clicked = clicks.clicks(rng, items, positives[user])
            counts = tally.setdefault(arm, [0, 0])
            counts[0] += 1
            counts[1] += bool(clicked)
            served.append({"user": user, "arm": arm, "recommendation_id": body["recommendation_id"], "items": items,
                           "clicked": clicked})
            if clicked:
                feedback = [{"recommendation_id": body["recommendation_id"], "item_id": items[p], "kind": "click"}
                            for p in clicked]
                posted = client.post("/feedback", json=feedback, headers=AUTH)
                if posted.status_code >= 300:
                    raise BenchError(f"POST /feedback: {posted.status_code} {posted.text[:200]}")
        result = _settled_result(client, definition["id"], len(users))
    finally:
        client.post(f"/admin/experiments/{definition['id']}/stop", headers=AUTH)
    return {"result": result, "tally": tally, "served": served}


def _settled_result(client: httpx.Client, experiment_id: str, impressions: int, wait_s: float = 15) -> dict[str, Any]:
    """GET /experiments/{id} once every impression is counted (they are written off the request path)."""
    deadline = time.monotonic() + wait_s
    while True:
        answer = client.get(f"/experiments/{experiment_id}")
        if answer.status_code != 200:
            raise BenchError(f"GET /experiments/{experiment_id}: {answer.status_code} {answer.text[:200]}")
        result = answer.json()
        if sum(arm["impressions"] for arm in result["arms"]) >= impressions or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def api_agrees(result: dict[str, Any], tally: dict[str, list[int]]) -> tuple[bool, str]:
    """Do the experiment's per-arm impressions and clicked lists match what the bench counted?"""
    theirs = {arm["name"]: [arm["impressions"], round((arm["ctr"]["value"] or 0) * arm["impressions"])]
              for arm in result["arms"]}
    return theirs == tally, f"service {theirs}, bench {tally}"


CPU_TICK_S = 1 / os.sysconf("SC_CLK_TCK")  # ``/proc`` counts CPU in these (10 ms): a reading's resolution


def _stat_cpu(path: str) -> float:
    """User + system CPU seconds from a ``/proc`` stat file (fields 14 and 15), in whole ``CPU_TICK_S``."""
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * CPU_TICK_S


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a writer process may be a fork server's child), as ``/proc`` lists them now."""
    found, todo = [], [pid]
    while todo:
        tasks = Path(f"/proc/{todo.pop()}/task")
        try:
            children = [int(c) for task in tasks.iterdir() for c in (task / "children").read_text().split()]
        except OSError:  # ended meanwhile
            continue
        found += children
        todo += children
    return found


def service_cpu(pid: int) -> dict[str, float]:
    """CPU seconds a server has used: its main thread (the event loop: the recommendation path), the whole process
    (its other threads too), and with every process below it (a writer process, if any; living ones read directly)."""
    process = _stat_cpu(f"/proc/{pid}/stat")
    below = 0.0
    for child in _descendants(pid):
        try:
            below += _stat_cpu(f"/proc/{child}/stat")
        except OSError:  # ended between the two reads
            pass
    return {"main_thread": _stat_cpu(f"/proc/{pid}/task/{pid}/stat"), "process": process, "service": process + below}


CPU_PARTS = ("main_thread", "process", "service")


def throughput_rounds(servers: dict[str, ServerProcess], users: Sequence[str], rounds: int, seconds: float,
                      clients: int, rate: float | None = None, *, side_by_side: bool = False,
                      settle_s: float = 0.0) -> dict[str, dict[str, Any]]:
    """Per server, each round's req/s and the server's CPU us per request (``service_cpu``'s three parts), one
    after the other in an order turned every round (a, b, c; c, b, a; ...) so that the machine's drift falls on
    all alike; as fast as the clients go, or at ``rate`` requests a second (open loop, the clients bounding what
    is in flight).

    ``side_by_side``: every server loaded at the same time, at ``rate`` each: the machine's drift within a round
    falls on all alike, and what one server's writer does to the machine (its caches, the other vCPU) falls on
    all, so the difference is what recording does inside its own server. The order still turns every round:
    with two servers alike, the first-listed load read 2% more CPU than the second.

    ``rest``: each server's CPU outside its main thread (the impression writer's) over the whole phase, from
    ``settle_s`` after what came before to ``settle_s`` after the last round, over the phase's requests. It is a
    difference of four readings in whole ticks, the process's and its main thread's taken one after the other:
    within two ``CPU_TICK_S`` over the phase's requests (a phase's 10^5 requests: 0.2 ns; a test's 90: 220 us). A writer
    flushes on its own clock, so a round's own reading misses the rows flushed after it, while other servers are
    loaded: with rounds as long as the flush interval, servers alike, all recording, read three times apart there
    (bench/RESULTS.md, "What recording impressions costs")."""
    def ask(i: int) -> Request:
        return Request("POST", f"/users/{users[i % len(users)]}/recommendations", {"k": 10})

    measured: dict[str, dict[str, Any]] = {label: {"rps": [], "requests": [], **{part: [] for part in CPU_PARTS}}
                                           for label in servers}
    time.sleep(settle_s)
    first = {label: service_cpu(server.pid) for label, server in servers.items()}
    for round_number in range(rounds):
        labels = list(servers) if round_number % 2 == 0 else list(servers)[::-1]
        for together in [labels] if side_by_side else [[label] for label in labels]:
            before = {label: service_cpu(servers[label].pid) for label in together}
            results = run_loads([{"base_url": servers[label].base_url, "make_request": ask, "concurrency": clients,
                                  "scenario": f"impressions {label}", "seconds": seconds, "warmup_s": 0, "rate": rate}
                                 for label in together])
            after = {label: service_cpu(servers[label].pid) for label in together}
            for label, result in zip(together, results):
                if result.failed:
                    raise BenchError(f"{label}: {result.failed} failed requests: {result.failures[:3]}")
                measured[label]["rps"].append(result.rps)
                measured[label]["requests"].append(result.requests)
                for part in CPU_PARTS:
                    measured[label][part].append((after[label][part] - before[label][part]) / result.requests * 1e6)
    time.sleep(settle_s)
    for label, server in servers.items():
        last = service_cpu(server.pid)
        rest = (last["service"] - last["main_thread"]) - (first[label]["service"] - first[label]["main_thread"])
        measured[label]["rest"] = rest / sum(measured[label]["requests"]) * 1e6
    return measured


def paired_difference(first: dict[str, list[float]], second: dict[str, list[float]], part: str) -> tuple[float, float]:
    """The mean over rounds of ``first`` - ``second`` CPU us a request (``part``), and its standard error."""
    differences = np.subtract(first[part], second[part])
    return float(differences.mean()), float(differences.std(ddof=1) / math.sqrt(len(differences)))


def server_labels(pairs: int) -> list[str]:
    """(c)'s servers in the order they start: on, off, then off, on, and so on. Two servers started alike read
    up to 6.5 us a request apart, round after round (bench/RESULTS.md, "What recording impressions costs"):
    each setting gets several processes, the first and last started among them."""
    return [f"{setting} {pair}" for pair in range(1, pairs + 1) for setting in (("on", "off") if pair % 2 else ("off", "on"))]


def setting_of(label: str) -> str:
    """A server's setting, "on" or "off", from its label (``server_labels``)."""
    return label.split()[0]


def by_setting(measured: dict[str, dict[str, Any]], setting: str) -> dict[str, Any]:
    """The servers of one setting (``server_labels``) as one server: each round's requests summed, its CPU a
    request over them all, its req/s their mean; the phase's ``rest`` over all their requests."""
    servers = [m for label, m in measured.items() if setting_of(label) == setting]
    requests = np.sum([m["requests"] for m in servers], axis=0)
    merged = {"requests": requests.tolist(), "rps": np.mean([m["rps"] for m in servers], axis=0).tolist()}
    for part in CPU_PARTS:
        merged[part] = (np.sum([np.multiply(m[part], m["requests"]) for m in servers], axis=0) / requests).tolist()
    merged["rest"] = float(sum(m["rest"] * sum(m["requests"]) for m in servers) / requests.sum())
    return merged


def warm_up(servers: dict[str, ServerProcess], users: Sequence[str], clients: int) -> None:
    """Every user asked once of each server: the rounds measure cache hits, the steady state."""
    for server in servers.values():
        run_load(server.base_url, lambda i: Request("POST", f"/users/{users[i % len(users)]}/recommendations", {"k": 10}),
                 scenario="warm-up", concurrency=clients, seconds=60, max_requests=len(users), warmup_s=0)


def paired_ratio(on: Sequence[float], off: Sequence[float]) -> float:
    """The median over rounds of on / off, each round's two runs side by side in time: the drift of a shared
    machine (tens of percent between rounds) cancels within a pair."""
    return float(np.median(np.divide(on, off)))


def pooled(measured: dict[str, list[float]], part: str) -> float:
    """CPU us per request over all rounds together: the writer wakes every few seconds, so one round holds a
    batch and the next may not, and a median of rounds would miss its work; the total does not."""
    return float(np.dot(measured[part], measured["requests"]) / np.sum(measured["requests"]))


def impressions_cost(full_speed: dict[str, dict[str, list[float]]], paced: dict[str, dict[str, list[float]]]) -> float:
    """What recording adds to a request's CPU, as a share of a request's CPU without it at full speed (pooled).

    The event loop's part is measured at one offered rate: as fast as the clients go, a slowed server answers
    fewer requests per wake-up of its loop and spends more on each, which would count a cost twice. The rest
    (the writer thread, any process below the server) is measured at full speed over the whole phase
    (``throughput_rounds``' ``rest``): a batch's fixed costs spread over the rows of the 8-client rate, not of a
    slower one, and every row's flush counted, whenever it ran. The loop's part is floored at zero: recording
    adds work to it, so a reading below zero is the shared machine's noise (a few us), not a saving."""
    loop = max(0.0, pooled(paced["on"], "main_thread") - pooled(paced["off"], "main_thread"))
    return 1 + (loop + full_speed["on"]["rest"] - full_speed["off"]["rest"]) / pooled(full_speed["off"], "service")


# ---- the run ----------------------------------------------------------------------------
def skipped(name: str, reason: str) -> dict[str, Any]:
    print(f"SKIP  {name}: {reason}", flush=True)
    return {"target": name, "passed": None, "detail": reason}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="which of a, b, c to run")
    parser.add_argument("--users", type=int, default=0, help="simulated users (0: every ml-100k user with >= 5 positives)")
    parser.add_argument("--k", type=int, default=10, help="list length")
    parser.add_argument("--p-positive", type=float, default=0.5, help="click chance of a shown held-out positive")
    parser.add_argument("--p-other", type=float, default=0.01, help="click chance of any other shown item")
    parser.add_argument("--repeats", type=int, default=200, help="(a) A/A experiments (re-seeded)")
    parser.add_argument("--looks", type=int, default=10, help="(a) looks at the sequential rule in each")
    parser.add_argument("--runs", type=int, default=200, help="(b) simulated experiments per power point")
    parser.add_argument("--rounds", type=int, default=12, help="(c) alternating throughput rounds, each way of loading")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="(c) seconds per round and setting (a multiple of IMPRESSION_FLUSH_S: a batch a round)")
    parser.add_argument("--clients", type=int, default=8, help="(c) concurrent clients")
    parser.add_argument("--pairs", type=int, default=2, help="(c) servers with recording on, and as many off")
    parser.add_argument("--rate", type=float, default=0, help="(c) req/s of the paced rounds (0: half the 8-client req/s)")
    parser.add_argument("--backend", choices=("embedded", "postgres"), default="embedded",
                        help="(c) SQLite + in-process cache, or PostgreSQL (BENCH_PG_URL) + Redis (BENCH_REDIS_URL)")
    parser.add_argument("--impressions-setting", default="IMPRESSIONS_ENABLED",
                        help="(c) the service setting that turns impression recording on and off")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(set(parts) - set(PARTS)))} (known: a, b, c)")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if not (0 <= args.p_other < args.p_positive <= 1):
        parser.error("need 0 <= --p-other < --p-positive <= 1")
    clicks = ClickModel(args.p_positive, args.p_other)
    started = time.perf_counter()
    verdicts: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="aerec-online-") as tmp:
            workdir = Path(tmp)
            held = hold_out(read_ml100k(), args.seed)
            users = sorted(held.positives, key=int)
            if args.users:
                users = [str(u) for u in np.random.default_rng(args.seed).choice(users, size=min(args.users, len(users)),
                                                                                  replace=False)]
            known = write_interactions(held.kept, workdir / "known.csv")
            print(f"{len(users)} simulated users, {sum(len(held.positives[u]) for u in users):,} held-out positives; "
                  f"the service knows {len(held.kept):,} interactions", flush=True)
            artifacts = workdir / "artifacts"
            print("version", train_registry(artifacts, "ease", ["--file", str(known)]), flush=True)
            database = f"sqlite:///{workdir / 'online.db'}"
            print(" ", seed_database(database, ["--file", str(known)]), flush=True)
            env = service_env(database, artifacts, CACHE_NAMESPACE="online", DEFAULT_MODEL="ease")
            with ServerProcess.service(env, workdir / "service.log") as server, \
                    httpx.Client(base_url=server.base_url, timeout=30) as client:
                lists = {m: api_lists(client, users, m, args.k) for m in ("ease", "popularity")}
                print(f"lists through the API: {len(users)} users x 2 models", flush=True)
                missing = experiments_api(client)
                liked = [held.positives[u] for u in users]
                if "a" in parts:
                    results["a"] = part_a(client, users, lists["ease"], held.positives, clicks, args, missing, verdicts)
                if "b" in parts:
                    results["b"] = part_b(client, users, lists, held.positives, liked, clicks, args, missing, verdicts)
            if "c" in parts:
                results["c"] = part_c(env, workdir, known, users, args, missing, verdicts)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json("online", {
        "bench": "online", "data": "ml-100k, 20% of each user's positives held out", "users": len(users),
        "click_model": {"p_positive": clicks.p_positive, "p_other": clicks.p_other}, "k": args.k,
        "machine": machine_info(), "wall_seconds": round(time.perf_counter() - started, 1),
        "results": results, "targets": verdicts,
    })
    return 0


def part_a(client, users, ease_lists, positives, clicks, args, missing, verdicts) -> dict[str, Any]:
    print("\n== (a) A/A", flush=True)
    rates = reseeded_a_a(users, ease_lists, [positives[u] for u in users], clicks, args.repeats, args.looks, args.seed)
    bound = a_a_bound(args.repeats)
    print(f"  {args.repeats} A/A experiments re-seeded over {len(users)} lists the API served (EASE, clicks simulated):"
          f" fixed rule {rates['fixed']:.1%}, sequential rule peeked {args.looks}x {rates['sequential']:.1%}", flush=True)
    verdicts.append(verdict("(a) A/A fixed-horizon winners", rates["fixed"] <= bound,
                            f"{rates['fixed']:.1%} of {args.repeats} (target <= {bound:.1%}: 5% + 2 sigma)"))
    verdicts.append(verdict(f"(a) A/A sequential winners, {args.looks} looks", rates["sequential"] <= bound,
                            f"{rates['sequential']:.1%} of {args.repeats} (target <= {bound:.1%})"))
    out: dict[str, Any] = {"reseeded": rates}
    if missing:
        verdicts.append(skipped("(a) A/A experiment through the API", missing))
        return out
    definition = {"id": f"bench-a-a-{uuid.uuid4().hex[:6]}", "kind": "ab", "seed": args.seed,
                  "arms": [{"name": "a", "model": "ease", "version": None, "share": 0.5},
                           {"name": "b", "model": "ease", "version": None, "share": 0.5}]}
    try:
        run = run_experiment(client, definition, users, positives, clicks, args.k, args.seed)
    except BenchError as exc:  # the integration's failure is this part's verdict; the other parts still run
        verdicts.append(verdict("(a) A/A experiment through the API", False, str(exc)))
        return out
    agrees, detail = api_agrees(run["result"], run["tally"])
    verdicts.append(verdict("(a) A/A through the API: GET /experiments counts what was served and clicked", agrees,
                            detail))
    verdicts.append(verdict("(a) A/A through the API: no winner", run["result"].get("winner") is None,
                            f"decision {run['result'].get('decision')!r}, winner {run['result'].get('winner')!r}"))
    out["api"] = run["result"]
    return out


def part_b(client, users, lists, positives, liked, clicks, args, missing, verdicts) -> dict[str, Any]:
    print("\n== (b) EASE against popularity: users needed", flush=True)
    simulation = Simulation(lists["popularity"], lists["ease"], liked, clicks, args.k, args.seed)
    table = users_needed_table(simulation, args.runs, args.seed)
    formula, expected = table["formula"], table["expected"]
    print(f"  CTR popularity {expected['ctr_a']:.3f}, EASE {expected['ctr_b']:.3f}; interleaved: "
          f"{expected['decisive_share']:.1%} of lists decisive, EASE wins {expected['win_share_b']:.1%} of them", flush=True)
    for rule, sim in table["simulated"].items():
        extra = (f" (formulas {formula['ab']:,.0f} and {formula['interleaving']:,.0f})" if rule == "fixed"
                 else f" (looked at {SEQUENTIAL_LOOKS} times)")
        print(f"  users for power {POWER:.0%} at alpha {ALPHA}, {rule} rule: A/B {sim['ab']:,}, interleaving "
              f"{sim['interleaving']:,}, ratio {sim['ratio']:.1f}x{extra}", flush=True)
    verdicts.append(verdict("(b) EASE better than popularity", expected["ctr_b"] > expected["ctr_a"]
                            and expected["win_share_b"] > 0.5,
                            f"CTR {expected['ctr_b']:.3f} vs {expected['ctr_a']:.3f}, interleaved win share "
                            f"{expected['win_share_b']:.1%}"))
    for rule, sim in table["simulated"].items():
        verdicts.append(verdict(f"(b) interleaving needs several times fewer users than A/B, {rule} rule",
                                sim["ratio"] >= 3, f"A/B {sim['ab']:,} users, interleaving {sim['interleaving']:,}: "
                                f"{sim['ratio']:.1f}x (target >= 3x)"))
    if missing:
        verdicts.append(skipped("(b) interleaving experiment through the API", missing))
        return table
    definition = {"id": f"bench-ease-pop-{uuid.uuid4().hex[:6]}", "kind": "interleaving", "seed": args.seed,
                  "arms": [{"name": "popularity", "model": "popularity", "version": None, "share": 0.5},
                           {"name": "ease", "model": "ease", "version": None, "share": 0.5}]}
    try:
        run = run_experiment(client, definition, users, positives, clicks, args.k, args.seed + 1)
    except BenchError as exc:
        verdicts.append(verdict("(b) interleaving experiment through the API", False, str(exc)))
        return table
    result = run["result"]
    redrawn, wins = bench_credit(run["served"], dict(zip(users, zip(lists["popularity"], lists["ease"]))), args.k)
    theirs = {key: (result.get("interleaving") or {}).get(key) for key in ("wins_a", "wins_b", "ties")}
    verdicts.append(verdict("(b) the service's interleaved lists and credit are the bench's",
                            redrawn == len(run["served"]) and theirs == wins,
                            f"{redrawn}/{len(run['served'])} lists equal to team_draft(popularity, ease, k, "
                            f"recommendation_id); wins and ties: service {theirs}, bench {wins}"))
    verdicts.append(verdict(f"(b) interleaving through the API names EASE after {len(users)} users",
                            result.get("winner") == "ease",
                            f"decision {result.get('decision')!r}, winner {result.get('winner')!r}, "
                            f"interleaving {result.get('interleaving')}"))
    table["api"] = {"result": result, "lists_equal_to_team_draft": redrawn, "bench_credit": wins}
    return table


def bench_credit(served: Sequence[dict[str, Any]], lists: dict[str, tuple[list[str], list[str]]],
                 k: int) -> tuple[int, dict[str, int]]:
    """How many served lists the bench draws again from the two arms' lists and the recommendation id,
    and the wins and ties (clicked lists only: an unclicked one says nothing) its own ``credit`` gives."""
    redrawn, wins = 0, {"wins_a": 0, "wins_b": 0, "ties": 0}
    for shown in served:
        items, teams = team_draft(*lists[shown["user"]], k, shown["recommendation_id"])
        redrawn += items == shown["items"]
        if shown["clicked"]:
            winner = credit(teams, shown["clicked"])
            wins["ties" if winner == "tie" else f"wins_{winner}"] += 1
    return redrawn, wins


def part_c(env, workdir, known, users, args, missing, verdicts) -> dict[str, Any]:
    print(f"\n== (c) impressions' cost at {args.clients} clients", flush=True)
    if missing:
        verdicts.append(skipped("(c) impressions cost", missing))
        return {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for label in server_labels(args.pairs):  # a database (and cache) each: one server's writes never slow another
            name = label.replace(" ", "-")
            if args.backend == "postgres":
                database = stack.enter_context(postgres_database("aerec_online"))
                store = {"REDIS_URL": REDIS_URL, "CACHE_NAMESPACE": stack.enter_context(redis_namespace(REDIS_URL))}
            else:
                database, store = f"sqlite:///{workdir / f'impressions-{name}.db'}", {}
            seed_database(database, ["--file", str(known)])
            servers[label] = stack.enter_context(ServerProcess.service(
                {**env, **store, "DATABASE_URL": database, args.impressions_setting: str(setting_of(label) == "on").lower()},
                workdir / f"service-{name}.log"))
        answer = httpx.post(f"{servers['on 1'].base_url}/users/{users[0]}/recommendations", json={"k": 10}, timeout=30)
        if "recommendation_id" not in answer.json():  # no id, no impression: there would be nothing to measure
            verdicts.append(verdict("(c) impressions recorded", False, f"an answer with impressions on carries no "
                                    f"recommendation_id: {answer.text[:160]}"))
            return {}
        warm_up(servers, users, args.clients)
        settle_s = FLUSH_S + 1  # every row of a phase written before its last reading, none of the one before
        phases = {"full_speed": throughput_rounds(servers, users, args.rounds, args.seconds, args.clients, settle_s=settle_s)}
        rate = args.rate or round(PACED_SHARE * float(np.median(by_setting(phases["full_speed"], "off")["rps"])))
        phases["paced"] = throughput_rounds(servers, users, args.rounds, args.seconds, args.clients, rate=rate,
                                            settle_s=settle_s)
        # every server at once, the paced rate shared (the same load on the machine): not in the verdict, it shows
        # how much of the event loop's part is recording's inside its server (bench/RESULTS.md)
        shared_rate = rate / len(servers)
        phases["side_by_side"] = throughput_rounds(servers, users, args.rounds, args.seconds, args.clients,
                                                   rate=shared_rate, side_by_side=True, settle_s=settle_s)
    settings = {phase: {s: by_setting(measured, s) for s in ("on", "off")} for phase, measured in phases.items()}
    closed, paced = settings["full_speed"], settings["paced"]
    for name, phase in (("as fast as the clients go", "full_speed"), (f"at {rate:.0f} req/s", "paced"),
                        (f"side by side at {shared_rate:.0f} req/s each", "side_by_side")):
        measured = settings[phase]
        print(f"  {name} ({args.pairs} servers a setting, as one):", flush=True)
        for label in ("on", "off"):
            print(f"    impressions {label:>3}: req/s {[round(r) for r in measured[label]['rps']]}, service CPU us/request "
                  f"{[round(c) for c in measured[label]['service']]}, of it the main thread "
                  f"{[round(c) for c in measured[label]['main_thread']]}", flush=True)
        ratios = {part: pooled(measured["on"], part) / pooled(measured["off"], part) for part in CPU_PARTS}
        (loop, loop_error), (service, service_error) = (paired_difference(measured["on"], measured["off"], p)
                                                        for p in ("main_thread", "service"))
        print(f"    on - off, mean of paired rounds: main thread {loop:+.1f} +- {loop_error:.1f} us, with the processes "
              f"below it {service:+.1f} +- {service_error:.1f} us (+- one standard error)", flush=True)
        print(f"    outside the main thread over the phase, its last flush in: on {measured['on']['rest']:.1f} us, off "
              f"{measured['off']['rest']:.1f} us a request", flush=True)
        if args.pairs > 1:  # the resolution: servers alike, each round
            alike = []
            for s in ("off", "on"):
                mean, error = paired_difference(phases[phase][f"{s} 1"], phases[phase][f"{s} 2"], "main_thread")
                alike.append(f"{s} 1 - {s} 2 {mean:+.1f} +- {error:.1f} us")
            print(f"    servers alike, main thread: {', '.join(alike)}", flush=True)
        print(f"    on / off, all rounds pooled: main thread {ratios['main_thread']:.1%}, server process "
              f"{ratios['process']:.1%}, with the processes below it {ratios['service']:.1%}; req/s "
              f"{paired_ratio(measured['on']['rps'], measured['off']['rps']):.1%} (median of paired rounds)", flush=True)
    full_speed = pooled(closed["off"], "service")
    added = impressions_cost(closed, paced) - 1
    # CPU per request, not req/s, decides: on shared cores one round's req/s moves by tens of percent. It counts the
    # whole service (every thread, any process below the server): work moved elsewhere still costs
    verdicts.append(verdict(f"(c) impressions cost < {THROUGHPUT_MARGIN:.0%} of throughput at {args.clients} clients "
                            f"({args.backend})", added <= THROUGHPUT_MARGIN,
                            f"recording adds {added * full_speed:.1f} us of service CPU a request ({args.rounds} paired "
                            f"rounds pooled, {args.pairs} servers a setting; the event loop's part at {rate:.0f} req/s): "
                            f"{added:.1%} of a request's "
                            f"{full_speed:.0f} us without it at {args.clients} clients; at full speed, on / off: CPU "
                            f"{pooled(closed['on'], 'service') / full_speed:.1%}, req/s "
                            f"{paired_ratio(closed['on']['rps'], closed['off']['rps']):.1%}"))
    return {**settings, "servers": phases, "rate": rate, "added_share": added, "backend": args.backend}

if __name__ == "__main__":
    sys.exit(main())
