"""Group commit of interaction batches (``crud.store_interaction_batches``, ``service.writes``), on both databases."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from service.cache import MemoryCache, UserLists
from service.metrics import Metrics
from service.writes import InteractionWriter
from storage import crud
from storage.session import make_engine, make_session_factory


def _batch(rows: list[tuple[str, str, int]]) -> crud.InteractionBatch:
    return crud.InteractionBatch([u for u, _, _ in rows], [i for _, i, _ in rows], [4.0] * len(rows), [t for _, _, t in rows])


def _counts(received: int, inserted: int, new_users: int, new_items: int, updated: int = 0) -> dict[str, int]:
    return {"received": received, "inserted": inserted, "updated": updated, "unchanged": received - inserted - updated,
            "duplicates": received - inserted, "new_users": new_users, "new_items": new_items}


def test_batches_in_one_transaction_get_the_counts_they_would_get_one_after_another(seeded_backend):
    engine = make_engine(seeded_backend.database_url)
    commits = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    a, b, x = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("ua", "ub", "ix"))
    batches = [
        _batch([(a, "50", 1), (a, x, 2)]),  # new user a, new item x: both rows new
        _batch([(a, "50", 1), (b, x, 3), (b, x, 3), (a, "100", 5)]),  # new user b; a repeat from the first batch
        _batch([(b, x, 3)]),  # only what the second batch brought
    ]
    try:
        with make_session_factory(engine)() as session:
            results = crud.store_interaction_batches(session, batches)
            assert len(commits) == 1
            assert results == [_counts(2, 2, 1, 1), _counts(4, 2, 1, 0), _counts(1, 0, 0, 0)]
            stored = crud.user_histories(session, [a, b])
            assert sorted(zip(stored.user_ids, stored.item_ids, stored.timestamps)) == sorted(
                [(a, "50", 1), (a, x, 2), (b, x, 3), (a, "100", 5)]
            )
            # the same batches again, one transaction each: all already there
            assert [crud.store_interaction_batches(session, [batch])[0] for batch in batches] == [
                _counts(2, 0, 0, 0), _counts(4, 0, 0, 0), _counts(1, 0, 0, 0)
            ]
    finally:
        engine.dispose()


def _writer(database_url: str) -> tuple[InteractionWriter, Metrics, object]:
    engine = make_engine(database_url)
    metrics = Metrics()
    writer = InteractionWriter(make_session_factory(engine), UserLists(MemoryCache(metrics, namespace="t", max_entries=10)),
                               metrics, max_rows=100)
    return writer, metrics, engine


def _groups(metrics: Metrics) -> tuple[float, float]:
    """(transactions, batches written by them)."""
    get = metrics.registry.get_sample_value
    return get("aerec_interaction_batches_per_commit_count"), get("aerec_interaction_batches_per_commit_sum")


def test_concurrent_requests_share_one_commit_and_each_gets_its_own_answer(seeded_backend):
    writer, metrics, engine = _writer(seeded_backend.database_url)
    user = f"g-{uuid.uuid4().hex[:8]}"
    batches = [_batch([(user, "50", n), (user, "100", 7)]) for n in range(6)]  # (user, 100, 7) is in all six
    batches.append(_batch([(user, "50", 2)]))  # older than what the batches before it left: no effect

    async def main():
        return await asyncio.gather(*(writer.store(b) for b in batches))

    try:
        results = asyncio.run(main())
        assert _groups(metrics) == (1, 7)  # all seven waited while none was being written: one transaction
        assert results[0] == _counts(2, 2, 1, 0)
        assert results[1:6] == [_counts(2, 0, 0, 0, updated=1)] * 5  # each re-rates (user, 50) later
        assert results[6] == _counts(1, 0, 0, 0)
        with make_session_factory(engine)() as session:
            history = crud.user_history(session, user)
            assert sorted(zip(history.item_ids.tolist(), history.timestamps.tolist())) == [("100", 7), ("50", 5)]
    finally:
        engine.dispose()


def test_a_bad_batch_fails_alone_and_the_others_are_stored(seeded_backend):
    writer, metrics, engine = _writer(seeded_backend.database_url)
    good, bad, other = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("good", "bad", "other"))
    batches = [_batch([(good, "50", 1)]), _batch([(bad, "50", "not a time")]), _batch([(other, "50", 1)])]

    async def main():
        return await asyncio.gather(*(writer.store(b) for b in batches), return_exceptions=True)

    try:
        first, failed, last = asyncio.run(main())
        assert first == last == _counts(1, 1, 1, 0)
        assert isinstance(failed, ValueError)
        assert _groups(metrics) == (2, 2)  # the group failed, then each batch alone: two stored
        with make_session_factory(engine)() as session:
            assert len(crud.user_histories(session, [good, bad, other]).user_ids) == 2
            assert len(crud.user_history(session, bad)) == 0
    finally:
        engine.dispose()


def test_an_unreachable_database_fails_the_group_without_retrying_each(tmp_path):
    writer, metrics, engine = _writer(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    sessions = []
    factory = writer._session_factory
    writer._session_factory = lambda: sessions.append(1) or factory()

    async def main():
        return await asyncio.gather(*(writer.store(_batch([(f"u{n}", "1", n)])) for n in range(3)),
                                    return_exceptions=True)

    try:
        results = asyncio.run(main())
        assert all(isinstance(r, OperationalError) for r in results)
        assert len(sessions) == 1 and _groups(metrics) == (0, 0)
    finally:
        engine.dispose()


def test_a_request_that_goes_away_does_not_cancel_the_write(seeded_backend):
    writer, _, engine = _writer(seeded_backend.database_url)
    user = f"c-{uuid.uuid4().hex[:8]}"

    async def main():
        request = asyncio.create_task(writer.store(_batch([(user, "50", 1)])))
        await asyncio.sleep(0)  # queued, and the write started
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await writer._writing  # the write goes on and commits

    try:
        asyncio.run(main())
        with make_session_factory(engine)() as session:
            assert crud.user_history(session, user).item_ids.tolist() == ["50"]
    finally:
        engine.dispose()


def test_concurrent_requests_with_one_idempotency_key_write_once_and_get_one_answer(seeded_backend):
    writer, metrics, engine = _writer(seeded_backend.database_url)
    user = f"k-{uuid.uuid4().hex[:8]}"
    claim = crud.IdempotencyClaim("scope", f"key-{uuid.uuid4().hex}", "sha-of-the-body", 60)
    batch = crud.InteractionBatch([user], ["50"], [4.0], [None], claim)

    async def main():
        return await asyncio.gather(*(writer.store(batch) for _ in range(3)))

    try:
        results = asyncio.run(main())
        assert results == [_counts(1, 1, 1, 0)] * 3  # the first's answer, replayed to the others
        assert _groups(metrics)[1] == 1  # never grouped together: one batch written, the others waited and replayed
        with make_session_factory(engine)() as session:
            assert len(crud.user_history(session, user)) == 1
    finally:
        engine.dispose()
