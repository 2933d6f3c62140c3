"""A recommendation answer inside online evaluation: its ``recommendation_id``, the experiment's arm, the impression.

Every answer gets a new ``recommendation_id`` (a UUIDv7's hex), spliced into the JSON the cache keeps
without it, so a cache hit stays a stored string plus a few bytes; the impression is queued as a
tuple of the answer's JSON as it is and what the request knows, cut into its row by the writer, off
the request path (``service.impressions``).

When an experiment runs and the request names no model, the user's arm (``assign``: a sticky
seeded hash) decides: A/B serves that arm's model (at its version); interleaving computes both
arms' lists and serves their team-draft mix, each item credited to the arm that picked it; a
shadow experiment serves the first arm and scores the others after the answer is sent, recorded
as shadow impressions. A held-out user gets the popularity list. A request that names a model is
outside the experiment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from service.experiment_registry import ExperimentRegistry
from service.experiments.assignment import Arm, Experiment, assign
from service.experiments.interleaving import team_draft
from service.impressions import ImpressionRecorder
from service.model_store import ModelStore, ServingVersion
from service.random_pool import random_bytes
from service.schemas import Answer, RecommendationRequest

log = logging.getLogger("service.experiments")

# (the store whose version serves, the request) -> the answer: ``serving.recommendations`` bound to the request's user
Compute = Callable[[Any, RecommendationRequest], Awaitable[Answer]]


@dataclass(frozen=True)
class PinnedStore:
    """A ``ModelStore`` as ``serving`` uses it (``current``), serving an arm's pinned version: its answers are
    cached under that version's name; its scoring takes the same slots (``ServiceParts.scoring``)."""

    store: ModelStore
    current: ServingVersion


def new_recommendation_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: its millisecond prefix makes each id sort after the earlier ones, so
    the impressions' primary key grows at one end (a random uuid4 dirtied an index page per row stored)."""
    value = (time.time_ns() // 1_000_000 & (1 << 48) - 1) << 80 | int.from_bytes(random_bytes(10))
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    return f"{value & ~(0x3 << 62) | 0x2 << 62:032x}"  # variant 10 (RFC 9562)


def with_id(answer_json: str, recommendation_id: str, experiment: Experiment | None = None, arm: str | None = None) -> str:
    """The answer with its ``recommendation_id`` (and ``experiment``) first: a splice, not a parse (ids and
    arm names are slugs: nothing to escape)."""
    head = f'{{"recommendation_id":"{recommendation_id}",'
    if experiment is not None:
        head += f'"experiment":{{"id":"{experiment.id}","arm":"{arm}"}},'
    return head + answer_json[1:]


class ExperimentServing:
    """What the recommendation route calls: the answer of the request, its arm's or the mix, recorded."""

    def __init__(self, recorder: ImpressionRecorder, experiments: ExperimentRegistry, store: ModelStore) -> None:
        self.recorder = recorder
        self.experiments = experiments
        self.store = store
        self._shadow_tasks: set[asyncio.Task] = set()  # references until done: the loop keeps weak ones

    async def recommend(self, user_id: str, request: RecommendationRequest, compute: Compute) -> Answer:
        recommendation_id = new_recommendation_id()
        experiment = self.experiments.running if request.model is None else None
        if experiment is None:
            answer = await compute(self.store, request)
            self.recorder.served(recommendation_id, user_id, answer.json)
            return Answer(answer.model, with_id(answer.json, recommendation_id))
        arm = assign(experiment, user_id)
        if experiment.kind == "interleaving" and arm.name in {a.name for a in experiment.arms}:
            return await self._interleaved(experiment, user_id, request, compute, recommendation_id)
        shadows: tuple[Arm, ...] = ()
        if experiment.shadow and arm in experiment.arms:  # everyone outside the holdout sees the first arm's list
            arm, shadows = experiment.arms[0], experiment.arms[1:]
        answer = await self._arm_answer(arm, request, compute)
        self.recorder.served(recommendation_id, user_id, answer.json, experiment.id, arm.name)
        for shadow in shadows:
            self._score_in_shadow(experiment, shadow, user_id, request, compute)
        return Answer(answer.model, with_id(answer.json, recommendation_id, experiment, arm.name))

    async def _arm_answer(self, arm: Arm, request: RecommendationRequest, compute: Compute) -> Answer:
        return await compute(self._store_of(arm), request.model_copy(update={"model": arm.model}))

    def _store_of(self, arm: Arm) -> Any:
        current = self.store.current
        if arm.version is None or current is None or arm.version == current.version:
            return self.store
        return PinnedStore(self.store, self.experiments.pinned_version(arm.version))

    async def _interleaved(self, experiment: Experiment, user_id: str, request: RecommendationRequest, compute: Compute,
                           recommendation_id: str) -> Answer:
        """Both arms' lists mixed by team draft (coins seeded by the recommendation id); each item keeps its
        entry (score, title) from the list that contributed it and takes its rank in the mix."""
        arm_a, arm_b = experiment.arms
        answers = await asyncio.gather(self._arm_answer(arm_a, request, compute), self._arm_answer(arm_b, request, compute))
        parsed = [json.loads(answer.json) for answer in answers]
        entries = [{item["item_id"]: item for item in body["items"]} for body in parsed]
        items, teams = team_draft([i["item_id"] for i in parsed[0]["items"]], [i["item_id"] for i in parsed[1]["items"]],
                                  request.k, recommendation_id)
        names = {"a": arm_a.name, "b": arm_b.name}
        mixed = [{**entries[0 if team == "a" else 1][item], "rank": request.offset + n + 1}
                 for n, (item, team) in enumerate(zip(items, teams))]
        body = {**parsed[0], "model": f"{parsed[0]['model']}+{parsed[1]['model']}", "items": mixed,
                "unknown_items": sorted(set(parsed[0]["unknown_items"]) | set(parsed[1]["unknown_items"]))}
        answer_json = json.dumps(body, separators=(",", ":"))
        self.recorder.served(recommendation_id, user_id, answer_json, experiment.id, teams=[names[team] for team in teams])
        return Answer(body["model"], with_id(answer_json, recommendation_id, experiment, "interleaved"))

    def _score_in_shadow(self, experiment: Experiment, arm: Arm, user_id: str, request: RecommendationRequest,
                         compute: Compute) -> None:
        async def scored() -> None:
            try:
                answer = await self._arm_answer(arm, request, compute)
            except Exception as exc:  # noqa: BLE001 - a shadow failure never reaches a client: logged
                log.warning("shadow scoring of arm %s (experiment %s) failed: %s", arm.name, experiment.id, exc)
                return
            self.recorder.served(new_recommendation_id(), user_id, answer.json, experiment.id, arm.name, shadow=True)

        task = asyncio.get_running_loop().create_task(scored())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)
