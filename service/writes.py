"""Group commit for ``POST /interactions``: the batches of concurrent requests share one transaction.

A small write's cost is mostly fixed: the statements that create users and items and
insert the rows, and the commit's flush to disk. One writer per process writes every batch
that arrived while the previous transaction was being written, in one transaction, then
answers each request with its own counts (``crud.store_interaction_batches``). Nothing
waits on a timer: a lone request is written at once, and under load the groups grow by
themselves. A request is answered only after the commit that holds its rows, as before.

A batch is stored once its transaction commits; if its users' cached lists cannot be
invalidated after that, it is answered 503 ``cache_not_invalidated`` (saying it was stored),
and those users are read uncached meanwhile (``UserLists.invalidate_users``).

A batch with an ``Idempotency-Key`` records its answer in its own transaction; the same key
again (same body) gets that answer and writes nothing, with another body a 422.

If a group's transaction fails because of what one batch holds, each batch is written on
its own again, so only that request fails; if the database is unreachable, every request
of the group gets that error (a 503) without retrying (but for the one new try on a new
connection that any request gets when its pooled connection had been dropped).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Callable

from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.cache import UserLists
from service.errors import DATABASE_UNAVAILABLE, ApiError
from service.impressions import Attribution, ImpressionRecorder, interaction_time
from service.metrics import Metrics
from storage import crud
from storage.session import retry_if_dropped

Outcome = dict[str, int] | BaseException
IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_claim(key: str | None, api_key: str | None, entries: list[BaseModel], ttl_s: float,
                      endpoint: str = "") -> crud.IdempotencyClaim | None:
    """The request's claim on ``key`` (None without one): scoped by the API key used and the endpoint
    (``""``: POST /interactions, as its keys were always stored), bound to the batch as validated (the
    same entries in other JSON spacing or id types are the same body)."""
    if key is None:
        return None
    scope = hashlib.sha256(f"{endpoint}\0{api_key or ''}".encode() if endpoint else (api_key or "").encode()).hexdigest()
    body = json.dumps([e.model_dump() for e in entries], sort_keys=True, separators=(",", ":"))
    return crud.IdempotencyClaim(scope, key, hashlib.sha256(body.encode()).hexdigest(), ttl_s)


def _claimed(batch: crud.InteractionBatch) -> tuple[str, str] | None:
    return None if batch.claim is None else (batch.claim.scope, batch.claim.key)


@dataclass
class _Waiting:
    batch: crud.InteractionBatch
    answer: asyncio.Future


def cache_not_invalidated(counts: dict[str, int]) -> ApiError:
    """The answer to a stored batch whose users' cached lists could not be invalidated (``UserLists.invalidate_users``)."""
    return ApiError(
        503, "cache_not_invalidated",
        "the interactions were stored (a retry stores nothing again), but the cache could not be told: these users' "
        "recommendations are computed afresh, uncached, until it can", {"stored": counts},
    )


def recorded_answer(session_factory: Callable[[], Session], claim: crud.IdempotencyClaim) -> dict[str, int] | None:
    """The answer recorded under the claim's key (None: none yet); a 422 if it was recorded for another body.
    In a worker thread."""
    with session_factory() as session, crud.reads(session) as db:
        recorded = crud.idempotent_answer(db, claim)
    if recorded is None:
        return None
    if recorded[0] != claim.body_sha256:
        raise ApiError(
            422, "idempotency_key_reused", f"the {IDEMPOTENCY_HEADER} header holds a key already used with another "
            "body; a retry must send the same batch, a new batch a new key", {"header": IDEMPOTENCY_HEADER},
        )
    return recorded[1]


class InteractionWriter:
    """Stores interaction batches, writing those that wait together in one transaction."""

    def __init__(self, session_factory: Callable[[], Session], user_lists: UserLists, metrics: Metrics, max_rows: int,
                 recorder: ImpressionRecorder | None = None) -> None:
        self._session_factory = session_factory
        self._user_lists = user_lists
        self._metrics = metrics
        self._recorder = recorder  # stored batches are queued there for attribution to the lists shown
        self.max_rows = max_rows  # most rows in one group (a bigger batch is written alone)
        self._waiting: deque[_Waiting] = deque()
        self._writing: asyncio.Task | None = None

    async def store(self, batch: crud.InteractionBatch) -> dict[str, int]:
        """The batch's counts once it is committed (and its users' cached lists invalidated); with an
        idempotency key already recorded, the recorded answer, and nothing is written."""
        if batch.claim is not None:
            recorded = await run_in_threadpool(retry_if_dropped, lambda: self._recorded(batch.claim))
            if recorded is not None:
                return recorded
        loop = asyncio.get_running_loop()
        waiting = _Waiting(batch, loop.create_future())
        self._waiting.append(waiting)
        if self._writing is None or self._writing.done():
            self._writing = loop.create_task(self._write_waiting())
        # A request that goes away cancels only its answer: the write goes on in the writer's task.
        return await waiting.answer

    async def _write_waiting(self) -> None:
        while self._waiting:
            group = [self._waiting.popleft()]
            rows = len(group[0].batch)
            keys = {_claimed(group[0].batch)}
            while self._waiting and rows + len(self._waiting[0].batch) <= self.max_rows:
                key = _claimed(self._waiting[0].batch)
                if key is not None and key in keys:
                    break  # the same key twice: the second waits for the first's commit, then replays its answer
                keys.add(key)
                rows += len(self._waiting[0].batch)
                group.append(self._waiting.popleft())
            try:
                outcomes = await run_in_threadpool(self._write, [w.batch for w in group])
            except BaseException:  # the writer was cancelled (the loop is closing): nobody waits forever
                for waiting in [*group, *self._waiting]:
                    waiting.answer.cancel()
                self._waiting.clear()
                raise
            for waiting, outcome in zip(group, outcomes):
                if waiting.answer.done():
                    continue
                if isinstance(outcome, BaseException):
                    waiting.answer.set_exception(outcome)
                else:
                    waiting.answer.set_result(outcome)

    def _write(self, batches: list[crud.InteractionBatch]) -> list[Outcome]:
        """In a worker thread: one transaction for all, else (bad data) one per batch."""
        try:
            counts: list[Outcome] = retry_if_dropped(lambda: self._store(batches))
        except DATABASE_UNAVAILABLE as exc:
            return [exc] * len(batches)
        except crud.IdempotencyKeyTaken:
            if len(batches) == 1:  # another transaction recorded the key meanwhile: its answer, or the 422
                try:
                    return [retry_if_dropped(lambda: self._recorded(batches[0].claim))]
                except Exception as exc:
                    return [exc]
            return [outcome for batch in batches for outcome in self._write([batch])]
        except Exception as exc:
            if len(batches) == 1:
                return [exc]
            return [outcome for batch in batches for outcome in self._write([batch])]
        self._metrics.write_group.observe(len(batches))
        self._attribute(batches)
        if not self._user_lists.invalidate_users({u for batch in batches for u in batch.user_ids}):
            return [cache_not_invalidated(c) if isinstance(c, dict) else c for c in counts]
        return counts

    def _recorded(self, claim: crud.IdempotencyClaim) -> dict[str, int] | None:
        return recorded_answer(self._session_factory, claim)

    def _attribute(self, batches: list[crud.InteractionBatch]) -> None:
        """Queue the stored interactions for attribution to the lists recently shown (``service.impressions``)."""
        if self._recorder is None:
            return
        received = datetime.now(UTC)
        rows = [(u, i, r, at) for b in batches for u, i, r, t in zip(b.user_ids, b.item_ids, b.ratings, b.timestamps)
                if (at := interaction_time(t, received)) is not None]
        if rows:
            self._recorder.attribute(Attribution(*map(list, zip(*rows))))

    def _store(self, batches: list[crud.InteractionBatch]) -> list[Outcome]:
        with self._session_factory() as session:  # a session per try: see retry_if_dropped
            return list(crud.store_interaction_batches(session, batches))
