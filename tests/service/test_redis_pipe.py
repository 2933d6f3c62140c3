"""The event loop's Redis connection (``service.cache.redis_pipe``) against the real Redis: the replies redis-py
gives, in order under concurrency, timeouts and lost connections failing every waiting call, NOSCRIPT, MULTI/EXEC,
and the URLs it leaves to redis-py."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest
import redis

from _service_support import REDIS_URL, unavailable
from service.cache import RedisCache
from service.cache.backends import _USER_ENTRY, _USER_ENTRY_LUA
from service.cache.redis_pipe import RedisPipe, RedisPyLoopClient, loop_client
from service.metrics import Metrics


@pytest.fixture
def blocking():
    """redis-py's blocking client on the test database, and a namespace whose keys are deleted after."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL}", exc)
    namespace = f"aerec-pipe-{uuid.uuid4().hex[:8]}"
    yield client, namespace
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def run(pipe_use, timeout_s: float = 1.0, url: str | None = None):
    """``pipe_use(pipe)`` on a pipe of its own loop, closed after."""
    async def main():
        pipe = loop_client(url or REDIS_URL, timeout_s)
        try:
            return await pipe_use(pipe)
        finally:
            await pipe.aclose()
    return asyncio.run(main())


def test_the_script_lookups_reply_as_redis_pys(blocking):
    client, ns = blocking
    script = client.register_script(_USER_ENTRY_LUA)
    client.set(f"{ns}:gen:known", "g1")
    client.set(f"{ns}:rec:x:g1", "[1, 2]")
    client.set(f"{ns}:written:known", "1700000000.5")
    lookups = [  # (keys, args): a known user with an entry and a record, one without, one whose answers ride along
        ([f"{ns}:gen:known", f"{ns}:written:known"], ["fresh", 30_000, f"{ns}:rec:x"]),
        ([f"{ns}:gen:new-{{}}", f"{ns}:written:none"], ["fresh", 30_000, f"{ns}:rec:x"]),
        ([f"{ns}:gen:known", f"{ns}:written:none", f"{ns}:later:{{}}"], ["fresh", 30_000, f"{ns}:rec:y", "[3]", 20_000]),
    ]

    async def pipe_replies(pipe):
        return [await pipe.script(_USER_ENTRY, [key.format("pipe") for key in keys], args) for keys, args in lookups]

    pipe_got = run(pipe_replies)
    redis_py_got = [script(keys=[key.format("py") for key in keys], args=args) for keys, args in lookups]
    assert pipe_got == redis_py_got
    assert pipe_got[0] == ["g1", "[1, 2]", 1, "1700000000.5"] and pipe_got[1][:3] == ["fresh", None, 0]
    assert client.get(f"{ns}:gen:new-pipe") == "fresh" and client.get(f"{ns}:later:pipe") == "[3]"
    assert 15_000 < client.pttl(f"{ns}:later:pipe") <= 20_000


def test_plain_commands_reply_as_redis_pys_on_the_urls_database(blocking):
    client, ns = blocking

    async def commands(pipe):
        return [await pipe.execute("SET", f"{ns}:a", "é", "PX", 30_000), await pipe.execute("GET", f"{ns}:a"),
                await pipe.execute("GET", f"{ns}:missing"), await pipe.execute("SET", f"{ns}:a", "x", "NX")]

    assert run(commands) == ["OK", "é", None, None]
    assert client.get(f"{ns}:a") == "é"  # the URL's database: the blocking client reads it there


def test_many_calls_in_flight_each_get_their_own_reply(blocking):
    client, ns = blocking
    client.mset({f"{ns}:{i}": f"v{i}" for i in range(300)})

    async def concurrent(pipe):
        calls = [pipe.execute("GET", f"{ns}:{i}") if i % 3 else pipe.script(_USER_ENTRY, [f"{ns}:{i}", f"{ns}:w"], [
            "fresh", 30_000, f"{ns}:rec"]) for i in range(300)]
        return await asyncio.gather(*calls)

    replies = run(concurrent)
    assert [r if i % 3 else r[0] for i, r in enumerate(replies)] == [f"v{i}" for i in range(300)]


def test_a_cancelled_call_leaves_the_others_replies_in_order(blocking):
    client, ns = blocking
    client.mset({f"{ns}:a": "1", f"{ns}:b": "2"})

    async def cancelled(pipe):
        await pipe.execute("PING")  # connected
        first = asyncio.ensure_future(pipe.execute("GET", f"{ns}:a"))
        second = asyncio.ensure_future(pipe.execute("GET", f"{ns}:b"))
        first.cancel()
        return await second, await pipe.execute("GET", f"{ns}:a")

    assert run(cancelled) == ("2", "1")


@pytest.fixture
def silent_server():
    """A socket that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


def test_a_server_that_does_not_answer_times_out_every_waiting_call(silent_server):
    async def waits(pipe):
        started = time.perf_counter()
        outcomes = await asyncio.gather(pipe.execute("GET", "a"), pipe.execute("GET", "b"), return_exceptions=True)
        return outcomes, time.perf_counter() - started

    outcomes, waited = run(waits, timeout_s=0.2, url=silent_server)
    assert all(isinstance(outcome, redis.TimeoutError) for outcome in outcomes)
    assert 0.15 < waited < 0.6


def test_through_the_cache_a_silent_server_is_a_counted_miss_and_a_backoff(silent_server):
    metrics = Metrics()
    cache = RedisCache(silent_server, metrics, timeout_s=0.2)

    async def lookups():
        started = time.perf_counter()
        found = await cache.get_async("k"), await cache.get_async("k")  # the second one backing off: no wait
        await cache.aclose()
        return found, time.perf_counter() - started

    found, waited = asyncio.run(lookups())
    assert found == (None, None) and waited < 0.6
    assert cache._down_until > time.monotonic()
    assert metrics.cache_errors.labels("get")._value.get() == 2
    cache.close()


def test_a_connection_killed_by_the_server_is_made_again_at_the_next_call(blocking):
    client, ns = blocking
    client.set(f"{ns}:a", "1")

    async def killed(pipe):
        before = await pipe.execute("CLIENT", "ID")
        waiting = asyncio.ensure_future(pipe.execute("BLPOP", f"{ns}:never", 0))  # waits on the server
        await asyncio.sleep(0.05)
        assert client.client_kill_filter(_id=before) == 1
        with pytest.raises(redis.ConnectionError):
            await waiting  # failed at once by the lost connection, not by the timeout
        return before, await pipe.execute("CLIENT", "ID"), await pipe.execute("GET", f"{ns}:a")

    before, after, value = run(killed, timeout_s=5.0)
    assert after != before and value == "1"


def test_aclose_closes_the_connection(blocking):
    client, _ = blocking

    async def open_then_closed():
        pipe = loop_client(REDIS_URL, 1.0)
        connection_id = str(await pipe.execute("CLIENT", "ID"))
        listed = [{c["id"] for c in client.client_list()}]
        await pipe.aclose()
        await asyncio.sleep(0.05)  # the server sees the close (the pipe still referenced: not closed by its collection)
        listed.append({c["id"] for c in client.client_list()})
        return connection_id, listed

    connection_id, (before, after) = asyncio.run(open_then_closed())
    assert connection_id in before and connection_id not in after


def test_a_flushed_script_is_loaded_again(blocking):
    client, ns = blocking
    client.set(f"{ns}:gen:u", "g")

    async def flushed(pipe):
        keys, args = [f"{ns}:gen:u", f"{ns}:written:u"], ["fresh", 30_000, f"{ns}:rec"]
        first = await pipe.script(_USER_ENTRY, keys, args)
        client.script_flush()  # as a restart of Redis does
        return first, await pipe.script(_USER_ENTRY, keys, args), await pipe.script(_USER_ENTRY, keys, args)

    first, reloaded, again = run(flushed)
    assert first == reloaded == again == ["g", None, 1, None]


def test_a_pipeline_replies_with_a_list_even_of_one_or_none(blocking):
    """``set_later``'s flush may find nothing left to store (a lookup took it): nothing is sent, nothing awaited."""
    client, ns = blocking

    async def pipelines(pipe):
        return (await pipe.pipeline([("SET", f"{ns}:a", "1")]), await pipe.pipeline([]),
                await pipe.pipeline([("GET", f"{ns}:a"), ("GET", f"{ns}:b")]), await pipe.execute("GET", f"{ns}:a"))

    assert run(pipelines) == (["OK"], [], ["1", None], "1")


def test_a_transaction_is_applied_whole_or_not_at_all(blocking):
    client, ns = blocking
    client.set(f"{ns}:token", "t")

    async def transactions(pipe):
        applied = await pipe.transaction([("MSET", f"{ns}:w1", "1", f"{ns}:w2", "2"), ("DEL", f"{ns}:token")])
        with pytest.raises(redis.ResponseError):  # a command Redis refuses to queue: EXEC runs none of them
            await pipe.transaction([("MSET", f"{ns}:w3", "3"), ("DEL",)])
        return applied, await pipe.execute("GET", f"{ns}:w1")  # the connection still in step

    assert run(transactions) == (["OK", 1], "1")
    assert client.mget(f"{ns}:w1", f"{ns}:w2", f"{ns}:token", f"{ns}:w3") == ["1", "2", None, None]


def test_error_replies_raise_and_the_urls_credentials_are_sent(blocking):
    client, ns = blocking
    client.set(f"{ns}:text", "x")

    async def wrong_type(pipe):
        with pytest.raises(redis.ResponseError):
            await pipe.execute("INCR", f"{ns}:text")
        return await pipe.execute("GET", f"{ns}:text")

    assert run(wrong_type) == "x"
    url = REDIS_URL.replace("redis://", "redis://nobody:wrong@", 1)
    with pytest.raises(redis.ResponseError):  # AUTH went first (this test server has no such user)
        run(lambda pipe: pipe.execute("PING"), url=url)


def test_urls_it_does_not_speak_go_to_redis_py():
    pipe = loop_client("redis://user:secret@cache.internal:6380/3", 0.25)
    assert isinstance(pipe, RedisPipe) and (pipe.host, pipe.port, pipe.db) == ("cache.internal", 6380, 3)
    for url in ("unix:///run/redis.sock?db=2", "rediss://cache.internal:6380/0", "redis://cache.internal/0?protocol=3"):
        assert isinstance(loop_client(url, 0.25), RedisPyLoopClient)


def test_the_fallback_client_replies_as_the_pipe(blocking):
    client, ns = blocking
    client.set(f"{ns}:gen:u", "g")

    async def both():
        replies = []
        for pipe in (RedisPipe(*_host_port_db(), timeout_s=1.0), RedisPyLoopClient(REDIS_URL, 1.0)):
            replies.append([await pipe.script(_USER_ENTRY, [f"{ns}:gen:u", f"{ns}:w"], ["f", 1000, f"{ns}:r"]),
                            await pipe.transaction([("MSET", f"{ns}:m", "1"), ("DEL", f"{ns}:nothing")]),
                            await pipe.pipeline([("SET", f"{ns}:p", "1", "PX", 1000), ("GET", f"{ns}:p")])])
            await pipe.aclose()
        return replies

    piped, redis_py = asyncio.run(both())
    assert piped[0] == redis_py[0] and piped[2][1] == redis_py[2][1] == "1"
    assert bool(piped[1][0]) == bool(redis_py[1][0]) and piped[1][1] == redis_py[1][1] == 0


def _host_port_db() -> tuple[str, int, int]:
    options = redis.connection.parse_url(REDIS_URL)
    return options.get("host", "localhost"), options.get("port", 6379), options.get("db", 0)
