"""Feedback (issue 25): POST /feedback checked against the list served, interactions attributed to recent
lists, and impressions recorded off the request path (bounded, counted drops, flushed on a clean shutdown);
on SQLite + the in-process cache and PostgreSQL + Redis."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from _service_support import API_KEY, error_body, new_user
from service import impressions
from service.impressions import ImpressionRecorder, ServedAnswer
from service.main import create_app
from service.metrics import Metrics
from storage.crud import impression_rows, online
from storage.crud.online import as_utc, epoch_ns
from storage.session import make_engine, make_session_factory
from storage.tables import Feedback, Impression

KEY = {"X-API-Key": API_KEY}


def show(client, user: str, items: list[str], *, at: datetime | None = None, flush: bool = True, **fields) -> str:
    """Record a served list through the app's recorder, as the recommendation route does; its recommendation_id."""
    rid = uuid.uuid4().hex
    record = online.ImpressionRecord(rid, user, "ease", "v1", items, len(items), at or datetime.now(UTC), **fields)
    assert client.app.state.parts.recorder.record(record)
    if flush:
        assert client.app.state.parts.recorder.flush()
    return rid


def rows(database_url: str, table, *where) -> list:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(table).where(*where)))
    finally:
        engine.dispose()


def feedback_of(client, rid: str) -> list[tuple]:
    found = rows(client.backend.database_url, Feedback, Feedback.recommendation_id == rid)
    return sorted((f.item_id, f.kind, f.value, f.position, f.source) for f in found)


def post(client, body, headers=None):
    return client.post("/feedback", json=body, headers={**KEY, **(headers or {})})


def test_an_event_and_a_batch_are_stored_once_with_the_rank_of_the_item(empty_client):
    rid = show(empty_client, new_user(), ["50", "100", "181"])
    one = post(empty_client, {"recommendation_id": rid, "item_id": 100, "kind": "click"})
    assert one.status_code == 201, one.text
    assert one.json() == {"received": 1, "stored": 1, "duplicates": 0}
    batch = [{"recommendation_id": rid, "item_id": "100", "kind": "click"},
             {"recommendation_id": rid, "item_id": "181", "kind": "rating", "value": 4},
             {"recommendation_id": rid, "item_id": "50", "kind": "purchase"}]
    assert post(empty_client, batch).json() == {"received": 3, "stored": 2, "duplicates": 1}
    assert post(empty_client, batch).json() == {"received": 3, "stored": 0, "duplicates": 3}  # a retried batch
    assert feedback_of(empty_client, rid) == [("100", "click", None, 2, "feedback"), ("181", "rating", 4.0, 3, "feedback"),
                                              ("50", "purchase", None, 1, "feedback")]


def test_an_unknown_list_is_a_404_and_an_item_not_shown_a_422_naming_it(empty_client):
    rid = show(empty_client, new_user(), ["50", "100"])
    stranger = uuid.uuid4().hex
    unknown = post(empty_client, [{"recommendation_id": rid, "item_id": "50", "kind": "click"},
                                  {"recommendation_id": stranger, "item_id": "50", "kind": "click"}])
    assert unknown.status_code == 404
    assert error_body(unknown)["code"] == "unknown_recommendation"
    assert error_body(unknown)["details"] == {"recommendation_ids": [stranger], "entries": [1]}
    not_shown = post(empty_client, [{"recommendation_id": rid, "item_id": "50", "kind": "click"},
                                    {"recommendation_id": rid, "item_id": "7", "kind": "click"}])
    assert not_shown.status_code == 422
    error = error_body(not_shown)
    assert error["code"] == "item_not_recommended" and "'7'" in error["message"]
    assert error["details"] == {"loc": ["body", 1, "item_id"], "item_id": "7", "recommendation_id": rid}
    assert feedback_of(empty_client, rid) == []  # all or nothing
    for bad, field in (({"kind": "rating"}, "value"), ({"kind": "rating", "value": 9}, "value"),
                       ({"kind": "click", "value": 1}, "value"), ({"kind": "view"}, "kind")):
        answer = post(empty_client, {"recommendation_id": rid, "item_id": "50", **bad})
        assert answer.status_code == 422, bad
        assert error_body(answer)["details"][0]["loc"][-1] == field, answer.text
    malformed = post(empty_client, {"recommendation_id": "not-an-id", "item_id": "50", "kind": "click"})
    assert malformed.status_code == 422 and "recommendation_id" in error_body(malformed)["message"]
    assert empty_client.post("/feedback", json={"recommendation_id": rid, "item_id": "50", "kind": "click"}).status_code == 401


def test_feedback_on_a_list_not_yet_written_is_checked_from_memory(empty_client):
    rid = show(empty_client, new_user(), ["50", "100"], flush=False)  # may still be queued: either way it is known
    assert post(empty_client, {"recommendation_id": rid, "item_id": "100", "kind": "click"}).status_code == 201


def test_the_idempotency_key_returns_the_first_answer(empty_client):
    rid = show(empty_client, new_user(), ["50", "100"])
    body = [{"recommendation_id": rid, "item_id": "50", "kind": "click"}]
    key = {"Idempotency-Key": f"fb-{uuid.uuid4().hex}"}
    first, again = post(empty_client, body, key), post(empty_client, body, key)
    assert first.json() == again.json() == {"received": 1, "stored": 1, "duplicates": 0}  # not "duplicates: 1"
    other = post(empty_client, [{"recommendation_id": rid, "item_id": "100", "kind": "click"}], key)
    assert other.status_code == 422 and error_body(other)["code"] == "idempotency_key_reused"
    # the same key on /interactions is another endpoint's: no clash
    interactions = empty_client.post("/interactions", json=[{"user_id": new_user(), "item_id": "50"}], headers={**KEY, **key})
    assert interactions.status_code == 201


def test_an_interaction_soon_after_a_list_with_its_item_counts_as_feedback(empty_client):
    user, other = new_user(), new_user()
    old = show(empty_client, user, ["1", "2"], at=datetime.now(UTC) - timedelta(hours=2))  # outside the 1800 s window
    recent = show(empty_client, user, ["50", "100", "181"])
    posted = empty_client.post("/interactions", json=[
        {"user_id": user, "item_id": "100"},  # a click on the recent list's 2nd item
        {"user_id": user, "item_id": "181", "rating": 5},  # a rating, its value kept
        {"user_id": user, "item_id": "2"},  # only on the old list: too late to count
        {"user_id": user, "item_id": "300"},  # never shown
        {"user_id": other, "item_id": "50"},  # shown to someone else
    ], headers=KEY)
    assert posted.status_code == 201, posted.text
    assert empty_client.app.state.parts.recorder.flush()
    assert feedback_of(empty_client, recent) == [("100", "click", None, 2, "interaction"), ("181", "rating", 5.0, 3, "interaction")]
    assert feedback_of(empty_client, old) == []
    # the same click posted to /feedback afterwards is the one already stored
    again = post(empty_client, {"recommendation_id": recent, "item_id": "100", "kind": "click"})
    assert again.json() == {"received": 1, "stored": 0, "duplicates": 1}


def test_an_interaction_dated_before_the_list_is_not_its_feedback(empty_client):
    user = new_user()
    rid = show(empty_client, user, ["50"])
    earlier = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp())
    empty_client.post("/interactions", json=[{"user_id": user, "item_id": "50", "timestamp": earlier}], headers=KEY)
    assert empty_client.app.state.parts.recorder.flush()
    assert feedback_of(empty_client, rid) == []


def _count(database_url: str, table, *where) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(table).where(*where))
    finally:
        engine.dispose()


def test_a_clean_shutdown_writes_every_queued_impression_and_feedback(empty_backend, registry):
    from storage.migrate import upgrade_to_head

    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    user = new_user()
    app = create_app(empty_backend.settings(registry, IMPRESSION_BATCH=7))
    with TestClient(app, raise_server_exceptions=False) as client:
        ids = [show(client, user, ["50", str(n)], flush=False) for n in range(200)]
        # interactions queue behind the impressions: attributed once those are written
        assert client.post("/interactions", json=[{"user_id": user, "item_id": "50"}], headers=KEY).status_code == 201
    # the lifespan has ended: nothing may be left in the queue
    assert _count(empty_backend.database_url, Impression, Impression.user_id == user) == 200
    newest = rows(empty_backend.database_url, Feedback, Feedback.recommendation_id.in_(ids))
    assert len(newest) == 1 and newest[0].source == "interaction"


def test_a_full_queue_drops_and_counts_and_recording_can_be_turned_off(empty_backend, registry):
    from storage.migrate import upgrade_to_head

    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    metrics = Metrics()
    recorder = ImpressionRecorder(make_session_factory(engine), metrics, enabled=True, queue_size=3, batch_size=10,
                                  feedback_window_s=60)
    user = new_user()
    records = [online.ImpressionRecord(uuid.uuid4().hex, user, "ease", "v1", ["1"], 1, datetime.now(UTC)) for _ in range(5)]
    accepted = [recorder.record(r) for r in records]  # the writer is not started: nothing drains
    assert accepted == [True, True, True, False, False]
    assert metrics.registry.get_sample_value("aerec_impressions_dropped_total", {"kind": "impression", "reason": "queue_full"}) == 2
    recorder.start()
    recorder.close()
    assert _count(empty_backend.database_url, Impression, Impression.user_id == user) == 3
    engine.dispose()

    off = create_app(empty_backend.settings(registry, IMPRESSIONS_ENABLED=False))
    with TestClient(off) as client:
        assert not client.app.state.parts.recorder.record(records[0])
        assert not client.app.state.parts.recorder.served(uuid.uuid4().hex, user, "{}") and client.app.state.parts.recorder.queued == 0


def test_an_interaction_dated_past_the_calendar_is_stored_and_not_attributed(empty_client):
    user = new_user()
    rid = show(empty_client, user, ["50"])
    far = empty_client.post("/interactions", json=[{"user_id": user, "item_id": "50", "timestamp": 281_687_974_660}],
                            headers={**KEY, "Idempotency-Key": uuid.uuid4().hex})
    assert far.status_code == 201, far.text  # year 10896: no list was shown then
    assert empty_client.app.state.parts.recorder.flush()
    assert feedback_of(empty_client, rid) == []


def test_a_served_answer_is_cut_into_the_row_a_parse_gives_and_stored_once(empty_backend):
    from service.schemas import RecommendedList
    from storage.migrate import upgrade_to_head

    items = [{"item_id": i, "score": 1.0 - n / 10, "rank": n + 1, "title": 'a "model":"x" title'}
             for n, i in enumerate(['1', 'quo"te', 'back\\slash', 'ünï', '"item_id":"7"'])]
    plain = RecommendedList(user_id='u"1', model="ease", model_version="v1", source="model", items=items,
                            unknown_items=['"item_id":"9"']).model_dump_json(exclude_none=True)
    explained = RecommendedList(user_id="u1", model="ease", model_version="v1", source="model", unknown_items=[],
                                items=[{**items[0], "because": [{"item_id": "8", "contribution": 0.5}]}]).model_dump_json()
    at = datetime.now(UTC)
    impressions.shown_memo.clear()
    for answer in (plain, explained):  # cut, and the explained one parsed: the same row as the record from its parts
        ids = [i["item_id"] for i in json.loads(answer)["items"]]
        for again in (False, True):  # the second time from the memo of answers seen
            assert (answer in impressions.shown_memo) is again
            served = ServedAnswer(uuid.uuid4().hex, "u1", answer, epoch_ns(at), "exp", "a")
            record = online.ImpressionRecord(served.recommendation_id, "u1", "ease", "v1", ids, len(ids), at, "exp", "a")
            row, expected = served.row(), record.row()
            assert row[:7] + row[8:] == expected[:7] + expected[8:] and json.loads(row[7]) == ids
    long = RecommendedList(user_id="u1", model="ease", model_version="v1", source="model", unknown_items=[],
                           items=[{**items[0], "title": "t" * impressions.SHOWN_MEMO_CHARS}]).model_dump_json()
    assert impressions.shown(long) == ("ease", "v1", json.dumps(["1"]), 1) and long not in impressions.shown_memo

    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    user = new_user()
    rows = [ServedAnswer(uuid.uuid4().hex, user, plain, epoch_ns(at)).row() for _ in range(3)]
    with make_session_factory(engine)() as session:
        assert impression_rows.store_impressions(session, rows) == 3
        assert impression_rows.store_impressions(session, rows) == 0  # a batch written again adds nothing
        shown = online.shown_lists(session, [rows[0][0]])[rows[0][0]]
        assert shown.items == [i["item_id"] for i in items] and as_utc(shown.created_at) == at
        assert online.recent_lists(session, [user], at)[user][0].items == shown.items  # the time compares as stored
    engine.dispose()


def test_a_time_is_written_as_isoformat_writes_it():
    """The writer formats each second once: the same text as SQLAlchemy's SQLite DateTime, at every edge, from a
    time in nanoseconds that gives its datetime back."""
    from datetime import timezone

    from storage.crud.impression_rows import _time_text

    odd = timezone(timedelta(hours=5, minutes=30, microseconds=7))
    moments = [datetime.now(UTC), datetime(1960, 5, 1, 3, 4, 5, 999_999, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC),
               datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), datetime(2026, 1, 1, 23, 59, 59, 999_999, tzinfo=odd)]
    for moment in moments + [m + timedelta(microseconds=1) for m in moments[:2]]:
        assert _time_text(epoch_ns(moment)) == moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        assert online.from_epoch_ns(epoch_ns(moment)) == moment


def test_a_batch_of_plain_and_experiment_rows_is_stored_column_for_column(empty_backend):
    """Lists outside an experiment go to the database by a statement of their own (constants for the experiment's
    columns), PostgreSQL's by COPY text built by the writer: every kind of row in one batch, texts that would end a
    COPY field or row among them, reads back as it was given, the plain ones past a full statement."""
    from storage.migrate import upgrade_to_head

    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    at = datetime.now(UTC)
    user = new_user()

    def row(n: int, experiment_id=None, arm=None, shadow=False, teams=None, suffix=None, item="x") -> online.ImpressionRow:
        return (uuid.uuid4().hex, f"{user}-{n % 7 if suffix is None else suffix}", experiment_id, arm, shadow, "ease", "v1",
                json.dumps([str(n), item]), teams, 2, epoch_ns(at + timedelta(microseconds=n)))

    # what PostgreSQL's COPY text would read as a NULL, a field's or a row's end, or an escape, unless escaped
    hostile = [row(604, suffix="\\N"), row(605, suffix="a\tb\nc\rd\\"), row(606, item='back\\slash "\\N"\t'),
               row(607, "exp\\", "a\tb", teams=json.dumps(["a\\", "b"]), suffix="\\"), row(608, suffix="ünï 😀"),
               row(609, suffix="a\tb")]
    batch = [row(n) for n in range(600)] + [row(600, "exp", "a"), row(601, "exp", "b", shadow=True),
                                            row(602, "exp", "c", teams=json.dumps(["a", "b"])), row(603, shadow=True), *hostile]
    with make_session_factory(engine)() as session:
        assert impression_rows.store_impressions(session, batch) == len(batch)
        stored = {i.recommendation_id: i for i in session.scalars(select(Impression).where(Impression.user_id.like(f"{user}-%")))}
    assert len(stored) == len(batch)
    for given in batch:
        got = stored[given[0]]
        assert (got.user_id, got.experiment_id, got.arm, got.shadow, got.model, got.version, got.items, got.teams, got.k,
                epoch_ns(got.created_at)) == (*given[1:7], json.loads(given[7]), given[8] and json.loads(given[8]), *given[9:])
    engine.dispose()


def _chained_row(user: str, at: datetime, seconds: float, shadow: bool = False) -> online.ImpressionRow:
    return (uuid.uuid4().hex, user, None, None, shadow, "ease", "v1", json.dumps([str(seconds)]), None, 1,
            epoch_ns(at + timedelta(seconds=seconds)))


def _expected_recent(rows: list[online.ImpressionRow], since: datetime) -> dict[str, list[str]]:
    """``recent_lists`` by brute force: each user's served rows created at or after ``since``, newest first."""
    found: dict[str, list[online.ImpressionRow]] = {}
    for row in rows:
        if not row[4] and row[-1] >= epoch_ns(since):
            found.setdefault(row[1], []).append(row)
    return {user: [r[0] for r in sorted(rs, key=lambda r: (-r[-1], r[0]))] for user, rs in found.items()}


def test_recent_lists_walk_each_users_chain_back_to_exactly_the_time_asked(empty_backend):
    """Each user's impressions are a chain from their newest written; rows older than their user's head (another
    replica's late batch, a clock set back), shadows and a batch written again with one new row (twice) among
    them: for every time asked, each user's lists are exactly those created since then, newest first."""
    from storage.migrate import upgrade_to_head

    engines = [make_engine(empty_backend.database_url) for _ in range(2)]  # two replicas
    upgrade_to_head(engines[0])
    at = datetime(2026, 12, 6, 12, tzinfo=UTC)
    u, v = new_user(), new_user()
    batches = [[_chained_row(u, at, 10), _chained_row(v, at, 11), _chained_row(u, at, 12)],
               [_chained_row(u, at, 5), _chained_row(u, at, 20, shadow=True), _chained_row(u, at, 8)],
               [_chained_row(v, at, 3), _chained_row(u, at, 30), _chained_row(u, at, 4)]]
    new = _chained_row(u, at, 25)
    again = batches[2] + [new, new]  # written again with one new row, twice
    stored = [row for batch in batches for row in batch] + [new]
    with make_session_factory(engines[0])() as session:
        for batch in batches:
            assert impression_rows.store_impressions(session, batch) == len(batch)
    with make_session_factory(engines[1])() as session:
        assert impression_rows.store_impressions(session, again) == 1  # the new row once, linked past the rest
        for seconds in sorted({-1, 31} | {int(r[-1] // 1e9 - at.timestamp()) + d for r in stored for d in (0, 0.5)}):
            since = at + timedelta(seconds=seconds)
            found = online.recent_lists(session, [u, v], since)
            assert {user: [s.recommendation_id for s in lists] for user, lists in found.items()} == _expected_recent(stored, since)
    for engine in engines:
        engine.dispose()


def test_writers_in_parallel_without_the_process_lock_keep_every_chain_whole(empty_backend, monkeypatch):
    """Two replicas' writers at once on the same users: the database's own lock (SQLite's BEGIN IMMEDIATE,
    PostgreSQL's advisory lock) keeps a head from being read by one while the other moves it."""
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import nullcontext

    from storage.migrate import upgrade_to_head

    monkeypatch.setattr(impression_rows, "one_writer", lambda session: nullcontext())  # only the database's lock left
    engines = [make_engine(empty_backend.database_url) for _ in range(2)]
    upgrade_to_head(engines[0])
    at = datetime.now(UTC)
    users = [new_user() for _ in range(3)]
    batches = [[_chained_row(users[(b + n) % 3], at, b + n / 100) for n in range(30)] for b in range(24)]

    def write(replica: int) -> int:
        with make_session_factory(engines[replica])() as session:
            return sum(impression_rows.store_impressions(session, b) for b in batches[replica::2])

    with ThreadPoolExecutor(2) as pool:
        assert sum(pool.map(write, range(2))) == 24 * 30
    with make_session_factory(engines[0])() as session:
        found = online.recent_lists(session, users, at - timedelta(seconds=1))
    every = [row for batch in batches for row in batch]
    assert {user: [s.recommendation_id for s in lists] for user, lists in found.items()} == _expected_recent(every, at - timedelta(seconds=1))
    for engine in engines:
        engine.dispose()


def test_a_batch_with_a_row_the_database_refuses_stores_none_of_its_rows(empty_backend):
    """A statement stops at the bad row keeping the rows before it (SQLite's OR FAIL, no statement journal): the
    batch's rollback must undo those and every earlier statement's, so a retry finds nothing half-written."""
    import sqlite3

    import psycopg
    import pytest
    from sqlalchemy.exc import IntegrityError

    from storage.migrate import upgrade_to_head

    engine = make_engine(empty_backend.database_url)
    upgrade_to_head(engine)
    at = datetime.now(UTC)
    user = new_user()
    batch = [(uuid.uuid4().hex, user, None, None, False, "ease", "v1", json.dumps([str(n)]), None, 1, epoch_ns(at)) for n in range(700)]
    batch[650] = (*batch[650][:5], None, *batch[650][6:])  # no model: NOT NULL, in the second statement, past its first row
    with make_session_factory(engine)() as session:
        with pytest.raises((IntegrityError, sqlite3.IntegrityError, psycopg.IntegrityError)):  # the driver's own, unwrapped
            impression_rows.store_impressions(session, batch)
        assert session.scalar(select(func.count()).select_from(Impression).where(Impression.user_id == user)) == 0
        good = batch[:650] + batch[651:]
        assert impression_rows.store_impressions(session, good) == len(good)  # the session is usable again
    engine.dispose()
