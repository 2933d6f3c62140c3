"""Impressions and the feedback interactions earn, written off the request path.

A recommendation answer puts its impression on a bounded queue (``record``: no I/O, no wait)
and one background thread writes what waits, in batches, each in one transaction of its own
session. When the queue is full the impression is dropped and counted
(``aerec_impressions_dropped_total{reason="queue_full"}``): serving never waits for the
database. A stored interaction batch queues its attribution the same way (``attribute``): the
writer turns each interaction with an item that a list shown to that user in the last
``FEEDBACK_WINDOW_S`` held into feedback (source "interaction"), after the impressions queued
before it are written. ``close`` (the app's clean shutdown) writes everything queued first.

A list is kept in memory from ``record`` until it is written (``pending``), so feedback on it
that arrives before the writer has stored it is still checked against it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Callable, NamedTuple, Sequence

from pydantic import TypeAdapter
from sqlalchemy.orm import Session
from typing_extensions import TypedDict

from service.metrics import Metrics
from storage.crud import impression_rows, online
from storage.crud.online import as_utc, from_epoch_ns
from storage.session import retry_if_dropped

log = logging.getLogger("service.impressions")

WRITE_TRIES = 3  # a batch the database refused this often is dropped (counted) so later ones are not held up
RETRY_PAUSE_S = 0.5


class _ShownItem(TypedDict):
    item_id: str


class _ShownList(TypedDict):
    model: str
    model_version: str
    items: list[_ShownItem]


_SHOWN = TypeAdapter(_ShownList)  # an answer the cuts below do not fit, parsed (in Rust, the rest skipped)
# Cut from the answer's JSON text, never parsed: an unescaped quote only ever delimits, so these match keys alone
_HEAD = re.compile(r'"model":"([^"\\]*)","model_version":"([^"\\]*)"')
_ITEM_ID = re.compile(r'"item_id":("(?:[^"\\]|\\.)*")')  # each id as its JSON literal: joined, the ids' JSON list


class ServedAnswer(NamedTuple):
    """A recommendation answer as the route sent it (without its id): a tuple of what the request already has,
    cut into its impression's row by the writer."""

    recommendation_id: str
    user_id: str
    answer_json: str
    created_ns: int  # time.time_ns(): the cheapest clock read on the request side (a datetime is built when needed)
    experiment_id: str | None = None
    arm: str | None = None
    teams: list[str] | None = None  # interleaving: the arm that contributed each item
    shadow: bool = False

    def row(self) -> online.ImpressionRow:
        """The impression's row: the answer's model, version and item ids (``shown``), and what the request knew."""
        model, version, items, k = shown(self.answer_json)
        return (self.recommendation_id, self.user_id, self.experiment_id, self.arm, self.shadow, model, version, items,
                None if self.teams is None else json.dumps(self.teams), k, self.created_ns)

    @property
    def created_at(self) -> datetime:
        return from_epoch_ns(self.created_ns)


shown_memo: dict[str, tuple[str, str, str, int]] = {}
SHOWN_MEMO_ENTRIES = 2048  # answers remembered, each of at most SHOWN_MEMO_CHARS: 8M characters at most
SHOWN_MEMO_CHARS = 4096


def shown(answer_json: str) -> tuple[str, str, str, int]:
    """An answer's model, version, the JSON list of its item ids and their number: cut from its text, an
    explained answer (whose reasons name items too) parsed. A cache hit serves the same text again and again, so
    each text is cut once (bench/online.py --parts c; bench/RESULTS.md, "What recording impressions costs")."""
    known = shown_memo.get(answer_json)
    if known is not None:
        return known
    head = _HEAD.search(answer_json)
    if head is not None and '"because":' not in answer_json:
        model, version = head.groups()
        ids = _ITEM_ID.findall(answer_json)
        cut = (model, version, f"[{','.join(ids)}]", len(ids))
    else:
        body = _SHOWN.validate_json(answer_json)
        cut = (body["model"], body["model_version"], json.dumps([item["item_id"] for item in body["items"]]), len(body["items"]))
    if len(answer_json) <= SHOWN_MEMO_CHARS:
        if len(shown_memo) >= SHOWN_MEMO_ENTRIES:
            shown_memo.clear()  # the hot answers come back within a moment
        shown_memo[answer_json] = cut
    return cut


Queued = online.ImpressionRecord | ServedAnswer


@dataclass(frozen=True)
class Attribution:
    """Stored interactions to match against the lists recently shown to their users."""

    user_ids: Sequence[str]
    item_ids: Sequence[str]
    ratings: Sequence[float | None]
    at: Sequence[datetime]  # each interaction's time: its timestamp, else when it was posted


def interaction_time(timestamp: int | None, received: datetime) -> datetime | None:
    """When an interaction happened: its timestamp, else when it was posted; None past the calendar's end
    (year 9999: no list was shown then)."""
    if timestamp is None:
        return received
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, ValueError, OSError):
        return None


class ImpressionRecorder:
    """The bounded queue of impressions and attributions, and the one thread that writes them."""

    def __init__(self, session_factory: Callable[[], Session], metrics: Metrics, *, enabled: bool, queue_size: int,
                 batch_size: int, feedback_window_s: float, linger_s: float = 0.25) -> None:
        self._session_factory = session_factory
        self._metrics = metrics
        self.enabled = enabled
        self.batch_size = batch_size
        self.linger_s = linger_s  # how often the writer looks at the queue
        self.window = timedelta(seconds=feedback_window_s)
        # a deque, not a queue.Queue: append and popleft are atomic under the GIL, so the request side and the
        # writer never meet on a lock (a Queue's mutex, taken by both, handed the GIL back and forth)
        self._queue: deque[Queued | Attribution] = deque()
        self.queue_size = queue_size
        self._writing = 0  # items taken by the writer and not yet written
        self._pending: dict[str, Queued] = {}  # queued, not yet written (dict ops are atomic)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # write now: a flush, the close
        self._closing = threading.Event()

    # ---- the request side: never blocks ----------------------------------------------------
    def served(self, recommendation_id: str, user_id: str, answer_json: str, experiment_id: str | None = None,
               arm: str | None = None, *, teams: list[str] | None = None, shadow: bool = False) -> bool:
        """Queue the impression of an answer just served (stamped now); nothing is built when recording is off."""
        return self.enabled and self.record(ServedAnswer(recommendation_id, user_id, answer_json, time.time_ns(),
                                                         experiment_id, arm, teams, shadow))

    def record(self, impression: Queued) -> bool:
        """Queue an impression; False when recording is off or the queue is full (then counted as dropped)."""
        if not self.enabled:
            return False
        self._pending[impression.recommendation_id] = impression
        if not self._put(impression):
            self._pending.pop(impression.recommendation_id, None)
            return False
        return True

    def attribute(self, attribution: Attribution) -> bool:
        """Queue stored interactions for attribution to recent lists; False when off or the queue is full."""
        return self.enabled and self._put(attribution)

    def _put(self, work: Queued | Attribution) -> bool:
        if len(self._queue) >= self.queue_size:
            kind = "attribution" if isinstance(work, Attribution) else "impression"
            self._metrics.impressions_dropped.labels(kind, "queue_full").inc()
            return False
        self._queue.append(work)
        return True

    def pending(self, recommendation_id: str) -> online.ShownList | None:
        """A list recorded here and not yet written, as the database will hold it."""
        queued = self._pending.get(recommendation_id)
        if queued is None or queued.shadow:
            return None
        row = queued.row()  # feedback on a list not yet written: the one list concerned is cut and parsed
        return online.ShownList(queued.recommendation_id, queued.user_id, json.loads(row[7]), queued.teams,
                                queued.experiment_id, queued.arm, queued.created_at)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ---- the writer ------------------------------------------------------------------------
    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._closing.clear()
            self._thread = threading.Thread(target=self._run, name="impression-writer", daemon=True)
            self._thread.start()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write everything queued so far now (or drop it, counted); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._writing:
            self._wake.set()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop the writer (the app's clean shutdown)."""
        if self._thread is None:
            return
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("the impression writer did not finish within %.0f s; %d queued items are lost", timeout_s, self.queued)
        self._thread = None

    def _run(self) -> None:
        """Every ``linger_s`` (or when woken), write what waits, ``batch_size`` at a time. The writer never
        blocks on the queue: a getter waiting there is woken by every put, and those wake-ups take the GIL from
        the requests (bench/online.py --parts c; bench/RESULTS.md, "What recording impressions costs")."""
        while True:
            self._wake.wait(self.linger_s)
            self._wake.clear()
            closing = self._closing.is_set()
            waiting = len(self._queue)  # only these: what arrives while they are written waits for the next turn
            while waiting > 0 and (batch := self._drain(min(waiting, self.batch_size))):
                waiting -= len(batch)
                try:
                    self._write(batch)
                finally:
                    self._writing = 0
            if closing and not self._queue:
                return

    def _drain(self, most: int) -> list[Queued | Attribution]:
        batch: list[Queued | Attribution] = []
        self._writing = most  # before the first popleft: a flush never sees an item neither queued nor writing
        while len(batch) < most:
            try:
                batch.append(self._queue.popleft())
            except IndexError:
                break
        return batch

    def _write(self, work: list[Queued | Attribution]) -> None:
        attributions = [w for w in work if w.__class__ is Attribution]
        queued = [w for w in work if w.__class__ is not Attribution] if attributions else work
        if queued:
            rows = [w.row() for w in queued]
            if self._tried(lambda: self._store_impressions(rows), "impression", len(rows)):
                self._count_impressions(rows)
            forget = self._pending.pop
            for row in rows:  # a row's id by index: a named field or attribute is a lookup more, a row each
                forget(row[0], None)
        if attributions:  # after this batch's impressions: a list queued before the interaction is there to match
            self._tried(lambda: self._store_attributed(attributions), "attribution", len(attributions))

    def _count_impressions(self, rows: list[online.ImpressionRow]) -> None:
        """The per-arm impression counters, each raised once per batch."""
        per_arm = Counter((row[2], row[3] or "", "shadow" if row[4] else "served") for row in rows if row[2] is not None)
        for labels, n in per_arm.items():
            self._metrics.experiment_impressions.labels(*labels).inc(n)

    def _tried(self, write: Callable[[], None], kind: str, size: int) -> bool:
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                retry_if_dropped(write)
                return True
            except Exception as exc:  # noqa: BLE001 - any failure: retried, then dropped and counted, never kills the writer
                log.warning("writing %d %s records failed (try %d of %d): %s", size, kind, attempt, WRITE_TRIES,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                if attempt < WRITE_TRIES:
                    time.sleep(RETRY_PAUSE_S * attempt)
        self._metrics.impressions_dropped.labels(kind, "write_failed").inc(size)
        return False

    def _store_impressions(self, rows: list[online.ImpressionRow]) -> None:
        with self._session_factory() as session:
            impression_rows.store_impressions(session, rows)

    def _store_attributed(self, attributions: list[Attribution]) -> None:
        events = [(u, i, r, as_utc(t)) for a in attributions for u, i, r, t in zip(a.user_ids, a.item_ids, a.ratings, a.at)]
        with self._session_factory() as session:
            lists = online.recent_lists(session, [u for u, *_ in events], min(t for *_, t in events) - self.window)
            records, shown_by_id = {}, {}
            for user_id, item_id, rating, at in events:
                shown = self._latest_showing(lists.get(user_id, []), item_id, at)
                if shown is None:
                    continue
                position = shown.position(item_id)
                kind = "click" if rating is None or math.isnan(rating) else "rating"
                shown_by_id[shown.recommendation_id] = shown
                records[(shown.recommendation_id, item_id, kind)] = online.FeedbackRecord(
                    shown.recommendation_id, item_id, kind, None if kind == "click" else float(rating), position,
                    shown.team(position), "interaction", at)
            if records:
                stored = online.store_feedback(session, list(records.values()))
                count_feedback(self._metrics, shown_by_id, stored.inserted)

    def _latest_showing(self, lists: list[online.ShownList], item_id: str, at: datetime) -> online.ShownList | None:
        """The newest list shown before ``at`` and within the window that held the item (the lists come newest first)."""
        for shown in lists:
            created = as_utc(shown.created_at)
            if created <= at and at - created <= self.window and shown.position(item_id) is not None:
                return shown
        return None


def count_feedback(metrics: Metrics, shown_by_id: dict[str, online.ShownList], inserted: list[online.FeedbackRecord]) -> None:
    """The per-arm feedback counters, for events stored for the first time on experiments' lists."""
    for record in inserted:
        shown = shown_by_id.get(record.recommendation_id)
        if shown is not None and shown.experiment_id is not None:
            metrics.experiment_feedback.labels(shown.experiment_id, record.team or shown.arm or "", record.kind).inc()
