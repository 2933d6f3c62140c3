"""Team-draft interleaving (Radlinski, Kurup & Joachims, CIKM 2008) and its click credit.

Two rankings A and B are merged as two teams picking players: while the list is shorter
than k, the team with fewer picks so far picks next (on a tie a fair coin says which team
picks first), and a team's pick is its highest-ranked item not already in the list, so an
item both rankings hold is shown once, credited to the team that picked it. When one
ranking runs out the other keeps picking. The clicks on a shown list then credit the teams:
the team whose items drew more clicks wins that impression, equal counts are a tie. Under
the null (A and B rank equally well) each team is equally likely to win an impression, which
``stats.interleaving_test`` tests with a sign test on the wins.

The coins are drawn from a keyed hash of the seed (the recommendation id) and the round, so
the same recommendation id interleaves to the same list in every process.
"""

from __future__ import annotations

import hashlib
from itertools import count
from typing import Hashable, Iterable, Iterator, Literal, Sequence

Team = Literal["a", "b"]


def coin_flips(seed: str | int) -> Iterator[bool]:
    """True: team A picks first in that round. One keyed hash per round, the same everywhere."""
    for round_number in count():
        yield hashlib.blake2b(f"{seed}|{round_number}".encode(), digest_size=1).digest()[0] & 1 == 1


def team_draft(list_a: Sequence[Hashable], list_b: Sequence[Hashable], k: int, rng_seed: str | int,
               coins: Iterable[bool] | None = None) -> tuple[list[Hashable], list[Team]]:
    """The interleaved list of at most ``k`` items and, for each, the team that contributed it.

    ``coins`` overrides the coin sequence drawn from ``rng_seed`` (tests write one out by hand)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    flips = iter(coins) if coins is not None else coin_flips(rng_seed)
    items: list[Hashable] = []
    teams: list[Team] = []
    shown: set[Hashable] = set()
    rankings = {"a": list_a, "b": list_b}
    cursor = {"a": 0, "b": 0}
    picks = {"a": 0, "b": 0}

    def next_item(team: Team) -> Hashable | None:
        ranking = rankings[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in shown:
            cursor[team] += 1  # already shown, picked by either team
        return ranking[cursor[team]] if cursor[team] < len(ranking) else None

    while len(items) < k:
        if picks["a"] == picks["b"]:
            team: Team = "a" if next(flips) else "b"
        else:
            team = "a" if picks["a"] < picks["b"] else "b"
        item = next_item(team)
        if item is None:  # this ranking ran out: the other team picks
            team = "b" if team == "a" else "a"
            item = next_item(team)
            if item is None:
                break
        items.append(item)
        teams.append(team)
        shown.add(item)
        picks[team] += 1
    return items, teams


def credit(teams: Sequence[Team], clicked_positions: Iterable[int]) -> Literal["a", "b", "tie"]:
    """The winner of one interleaved impression: the team whose items drew more clicks
    (positions count from 0; a position clicked twice counts once)."""
    clicks = {"a": 0, "b": 0}
    for position in set(clicked_positions):
        if not 0 <= position < len(teams):
            raise ValueError(f"clicked position {position} is outside the shown list of {len(teams)} items")
        clicks[teams[position]] += 1
    if clicks["a"] == clicks["b"]:
        return "tie"
    return "a" if clicks["a"] > clicks["b"] else "b"
