"""The cache interface on both backends, TTL/LRU of the in-process one, and a Redis that cannot be reached."""

from __future__ import annotations

import asyncio
import math
import time
import uuid

import pytest
import redis

from _service_support import REDIS_URL, free_port, unavailable
from service.cache import NO_WRITE, Cache, Histories, MemoryCache, RedisCache, Titles, UserLists, list_key
from service.metrics import Metrics


@pytest.fixture(params=["memory", "redis"])
def cache(request):
    metrics, namespace = Metrics(), f"aerec-test-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        yield _composed(MemoryCache(metrics, namespace=namespace, max_entries=100))
        return
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL}", exc)
    backend = RedisCache(REDIS_URL, metrics, namespace=namespace, timeout_s=1.0)
    yield _composed(backend)
    keys = list(backend.client.scan_iter(f"{namespace}:*"))
    if keys:
        backend.client.delete(*keys)
    backend.close()


def _composed(backend) -> Cache:
    return Cache(backend, UserLists(backend), Histories(backend.metrics), Titles())


def test_get_set_delete_and_only_if_absent(cache):
    assert cache.backend.ping()
    assert cache.backend.get("a") is None
    assert cache.backend.set("a", "1", 30)
    assert cache.backend.get("a") == "1"
    assert not cache.backend.set("a", "2", 30, only_if_absent=True) and cache.backend.get("a") == "1"
    cache.backend.set("b", "x", 30)
    assert cache.backend.delete_many(["a", "b", "never-set"])
    assert cache.backend.get("a") is None and cache.backend.get("b") is None


def test_entries_expire(cache):
    cache.backend.set("short", "v", 0.2)
    assert cache.backend.get("short") == "v"
    time.sleep(0.35)
    assert cache.backend.get("short") is None


def test_item_titles_are_fetched_once_per_ttl(cache):
    catalogue = {"1": "Toy Story (1995)", "2": "GoldenEye (1995)"}  # item "3" has no title
    asked: list[list[str]] = []

    def fetch(ids):
        asked.append(list(ids))
        return {i: catalogue[i] for i in ids if i in catalogue}

    assert cache.titles.item_titles(["1", "3"], fetch, ttl_s=0.3) == {"1": "Toy Story (1995)"}
    assert cache.titles.item_titles(["3", "1", "2"], fetch, ttl_s=0.3) == catalogue
    assert asked == [["1", "3"], ["2"]]  # a known id, titled or not, is not asked again
    catalogue["3"] = "Four Rooms (1995)"
    time.sleep(0.4)
    assert cache.titles.item_titles(["3"], fetch, ttl_s=0.3) == {"3": "Four Rooms (1995)"}  # expired: asked again
    assert asked[-1] == ["3"]


def test_invalidating_a_user_changes_their_generation(cache):
    first = cache.users.user_generation("u1", ttl_s=30)
    assert first and cache.users.user_generation("u1", ttl_s=30) == first
    other = cache.users.user_generation("u2", ttl_s=30)
    cache.users.invalidate_users(["u1"])
    renewed = cache.users.user_generation("u1", ttl_s=30)
    assert renewed and renewed != first  # every key built with the old token is unreachable
    assert cache.users.user_generation("u2", ttl_s=30) == other


def test_a_users_entry_follows_their_generation(cache):
    key, value, generation, written_at = cache.users.user_entry("u1", "rec:abc", 30, kind="recommendations")
    assert written_at == NO_WRITE  # no write recorded: a stored list may answer
    assert generation == cache.users.user_generation("u1", 30)  # a token drawn on first use
    assert value is None and key == f"rec:abc:{generation}"
    assert cache.backend.set(key, "[1, 2]", 30)
    assert cache.users.user_entry("u1", "rec:abc", 30, kind="recommendations") == (key, "[1, 2]", generation, NO_WRITE)
    assert cache.users.user_entry("u2", "rec:abc", 30, kind="recommendations").value is None  # another user: another token
    before = time.time()
    cache.users.invalidate_users(["u1"])
    moved, value, moved_generation, written_at = cache.users.user_entry("u1", "rec:abc", 30, kind="recommendations")
    assert value is None and moved != key and moved == f"rec:abc:{moved_generation}"
    assert before <= written_at <= time.time()  # the write's time, read with the entry
    hits = cache.metrics.cache_hits.labels("recommendations")._value.get()
    misses = cache.metrics.cache_misses.labels("recommendations")._value.get()
    assert (hits, misses) == (1, 3)
    assert cache.users.user_entry("u2", "rec:abc", 30, kind="recommendations").written_at == NO_WRITE


@pytest.mark.parametrize("cache", ["redis"], indirect=True)  # the one backend shared across processes
def test_the_users_keys_are_the_ones_every_replica_reads(cache):
    """Replicas of older and newer code share one Redis during a rolling upgrade: a user's token, write record
    and lists stay under these keys, in the namespace."""
    ns = cache.backend.namespace
    key, _, generation, _ = cache.users.user_entry("u1", "rec:abc", 30, kind="recommendations")
    cache.backend.set(key, "[1]", 30)
    assert cache.backend.client.get(f"{ns}:gen:u1") == generation
    assert cache.backend.client.get(f"{ns}:rec:abc:{generation}") == "[1]"
    cache.users.invalidate_users(["u1"])
    assert cache.backend.client.get(f"{ns}:gen:u1") is None
    assert float(cache.backend.client.get(f"{ns}:written:u1")) <= time.time()
    assert cache.backend.client.ttl(f"{ns}:written:u1") == -1  # never expires


def test_the_event_loop_lookups_agree_with_the_blocking_ones(cache):
    """``user_entry_async`` and ``get_async`` (Redis: the loop's connection) see what the blocking calls wrote."""
    key, _, generation, _ = cache.users.user_entry("u1", "rec:abc", 30, kind="recommendations")
    cache.backend.set(key, "[1, 2]", 30)
    cache.backend.set("sim:x", "[3]", 30)

    async def lookups():
        found = [await cache.users.user_entry_async("u1", "rec:abc", 30, kind="recommendations"),
                 await cache.backend.get_async("sim:x", kind="similar"), await cache.backend.get_async("sim:y", kind="similar")]
        fresh_key, fresh, _, _ = await cache.users.user_entry_async("u9", "rec:abc", 30, kind="recommendations")
        assert await cache.backend.set_async(fresh_key, "[4]", 30)
        await cache.backend.aclose()
        return found, fresh_key, fresh

    found, fresh_key, fresh = asyncio.run(lookups())
    assert found == [(key, "[1, 2]", generation, NO_WRITE), "[3]", None]
    # a token drawn by the asyncio lookup is the one the blocking calls see next
    assert fresh is None and fresh_key == f"rec:abc:{cache.users.user_generation('u9', 30)}"
    assert cache.users.user_entry("u9", "rec:abc", 30, kind="recommendations")[:2] == (fresh_key, "[4]")
    assert cache.metrics.cache_hits.labels("similar")._value.get() == 1
    assert cache.metrics.cache_misses.labels("similar")._value.get() == 1


def test_answers_stored_later_go_with_the_next_lookup_or_on_their_own(cache):
    """``set_later``: on Redis the next lookup's script stores the answers in its round trip (no flush has run
    yet, the lookup's own answer is unchanged); with no lookup they are stored within ``LATER_S``."""
    from service.cache import backends

    key, _, generation, _ = cache.users.user_entry("u1", "rec:abc", 30, kind="recommendations")
    cache.backend.set(key, "[1]", 30)

    async def later():
        cache.backend.set_later("rec:first:1", "[2]", 30)
        cache.backend.set_later("rec:first:2", "[3]", 30)
        found = await cache.users.user_entry_async("u1", "rec:abc", 30, kind="recommendations")
        carried = [cache.backend.get("rec:first:1"), cache.backend.get("rec:first:2")]  # before any flush ran
        cache.backend.set_later("rec:alone", "[4]", 30)
        await asyncio.sleep(backends.LATER_S * 5)
        await cache.backend.aclose()
        return found, carried

    found, carried = asyncio.run(later())
    assert found == (key, "[1]", generation, NO_WRITE)
    assert carried == ["[2]", "[3]"]
    assert cache.backend.get("rec:alone") == "[4]"
    if isinstance(cache.backend, RedisCache):  # carried with its own TTL
        assert 25_000 < cache.backend.client.pttl(cache.backend.key("rec:first:1")) <= 30_000


class History(list):
    """Stands for ``crud.History``: the cache only needs its length."""


def test_a_users_history_is_kept_under_their_generation(cache):
    cache.histories.max_rows = 10
    reads: list[str] = []

    def fetch(user: str, rows: int):
        def read() -> History:
            reads.append(user)
            return History(range(rows))
        return read

    g1 = cache.users.user_entry("u1", "rec:a", 30, kind="recommendations").generation
    first = cache.histories.user_history("u1", g1, fetch("u1", 3), ttl_s=30)
    assert cache.histories.user_history("u1", g1, fetch("u1", 3), ttl_s=30) is first  # another list, same token: kept
    assert reads == ["u1"]
    cache.users.invalidate_users(["u1"])  # a write for u1
    g2 = cache.users.user_entry("u1", "rec:b", 30, kind="recommendations").generation
    assert g2 != g1 and cache.histories.user_history("u1", g2, fetch("u1", 4), ttl_s=30) == History(range(4))
    assert reads == ["u1", "u1"]  # the write made it read again
    assert cache.histories.user_history("u1", None, fetch("u1", 4), ttl_s=30) is not None and reads[-1] == "u1"  # cache down: read
    assert len(reads) == 3
    # at most history_rows interactions are kept: u2 (5) and u3 (4) push u1 (4) out, least recently used first
    cache.histories.user_history("u2", "t", fetch("u2", 5), ttl_s=30)
    cache.histories.user_history("u3", "t", fetch("u3", 4), ttl_s=30)
    cache.histories.user_history("u1", g2, fetch("u1", 4), ttl_s=30)
    assert reads[-3:] == ["u2", "u3", "u1"] and cache.histories.rows_held <= 10
    cache.histories.user_history("u1", g2, fetch("u1", 4), ttl_s=30)
    assert reads[-1] == "u1" and len(reads) == 6  # now kept again
    cache.histories.user_history("big", "t", fetch("big", 11), ttl_s=30)  # more than the whole budget: read, not kept
    cache.histories.user_history("big", "t", fetch("big", 11), ttl_s=30)
    assert reads[-2:] == ["big", "big"]
    cache.histories.user_history("u4", "t", fetch("u4", 1), ttl_s=0.01)
    time.sleep(0.02)
    cache.histories.user_history("u4", "t", fetch("u4", 1), ttl_s=0.01)
    assert reads[-2:] == ["u4", "u4"]  # expired
    assert cache.metrics.cache_hits.labels("history")._value.get() == 2


def test_histories_are_not_kept_when_the_budget_is_zero(cache):
    cache.histories.max_rows = 0
    reads = []
    for _ in range(2):
        cache.histories.user_history("u1", "t", lambda: reads.append(1) or History([1]), ttl_s=30)
    assert reads == [1, 1]


def test_keys_depend_on_every_part():
    base = list_key("rec", "v1", "ease", "u", "g", {"k": 10})
    assert base == list_key("rec", "v1", "ease", "u", "g", {"k": 10})
    for changed in (("v2", "ease", "u", "g", {"k": 10}), ("v1", "vae", "u", "g", {"k": 10}),
                    ("v1", "ease", "u", "g2", {"k": 10}), ("v1", "ease", "u", "g", {"k": 11})):
        assert list_key("rec", *changed) != base


def test_memory_cache_evicts_the_least_recently_used():
    cache = MemoryCache(Metrics(), max_entries=3)
    for key in "abc":
        cache.set(key, key, 30)
    cache.get("a")  # a is now the most recent
    cache.set("d", "d", 30)
    assert cache.get("b") is None and cache.get("a") == "a" and cache.get("d") == "d"


def test_unreachable_redis_is_a_counted_miss_and_fails_fast():
    metrics = Metrics()
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", metrics, timeout_s=0.2)
    users = UserLists(cache)
    started = time.perf_counter()
    for _ in range(50):
        assert cache.get("k") is None
        assert cache.set("k", "v", 10) is False
    assert time.perf_counter() - started < 2  # after the first failure Redis is skipped, not retried per call
    assert not cache.ping() and users.user_generation("u", 10) is None
    assert users.user_entry("u", "rec:x", 10, kind="recommendations") == (None, None, None, math.inf)  # no list either

    async def lookups():
        return (await users.user_entry_async("u", "rec:x", 10, kind="recommendations"), await cache.get_async("k"),
                await cache.set_async("k", "v", 10))

    assert asyncio.run(lookups()) == ((None, None, None, math.inf), None, False)  # backing off: no connection attempt
    cache._down_until = 0.0  # the backoff over: the loop's client meets the refused connection itself
    assert asyncio.run(lookups()) == ((None, None, None, math.inf), None, False)
    assert cache._down_until > time.monotonic()  # and backs off again
    errors = sum(s.value for m in metrics.cache_errors.collect() for s in m.samples if s.name.endswith("_total"))
    assert errors >= 100


def test_a_requests_key_fields_are_its_dump_less_the_model():
    """Read from the model's fields, the request's part of its key is what ``model_dump`` gave, in its order (the
    key's JSON keeps a dict's order): the keys a deployment already cached under stay the same."""
    from service.schemas import RecommendationRequest

    for request in (RecommendationRequest(), RecommendationRequest(k=5, offset=3, exclude_seen=False),
                    RecommendationRequest(exclude_items=["b", "a"], candidates=["c"], model="ease"),
                    RecommendationRequest(k=3, explain=True, model="ease"),
                    RecommendationRequest(k=4).model_copy(update={"model": "ease"})):
        dumped = request.model_dump(exclude={"model"} if request.explain else {"model", "explain"})
        assert list(request.key_fields().items()) == list(dumped.items())
        assert list_key("rec", "v1", "ease", "u1", request.key_fields()) == list_key("rec", "v1", "ease", "u1", dumped)


def test_random_pool_hands_each_byte_out_once_and_a_forked_child_none_of_its_parents():
    import os

    from service.random_pool import RandomPool

    pool = RandomPool(block_bytes=64)
    taken = [pool.take(10) for _ in range(50)]  # across several blocks
    assert all(len(t) == 10 for t in taken) and len(set(taken)) == 50
    pool.take(1)
    left = pool._block[pool._at:]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same pool object, copied by the fork, forgot its block
        os.write(write, b"ok" if not pool._block else b"kept")
        os._exit(0)
    os.waitpid(pid, 0)
    assert left and os.read(read, 4) == b"ok"
