"""The event loop's Redis client: one connection per loop, shared by every request in flight, its commands
written at once and its replies matched to them in order (auto-pipelining), hiredis packing the commands and
parsing the replies.

Why not redis-py's asyncio client: every cached request makes one such call, and through it ``RedisCache`` spent
125-137 us of the loop's CPU a lookup (the EVALSHA), 97-106 us a GET, 107-118 us a lookup with 8 in flight; on
this connection 22-27, 18-21 and 15-17 us, and a hit through the real server 0.56x the server's CPU
(bench/RESULTS.md, "The event loop's Redis connection"). The blocking clients (workers, threads) stay redis-py's;
so does the loop's for a URL this client does not speak (a unix socket, TLS, options in the query string):
``loop_client`` chooses.

Errors are redis-py's exceptions, so callers treat both clients alike: a call not answered within the timeout
raises ``redis.TimeoutError``, a lost connection ``redis.ConnectionError``; either closes the connection and
fails every call still waiting on it (their replies' order can no longer be trusted), and the next call connects
again. An error reply raises ``redis.ResponseError`` (``NoScriptError`` for NOSCRIPT).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any, Awaitable, Callable, Iterable, Sequence

import hiredis
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import NoScriptError

Command = Sequence[Any]  # ("SET", key, value, "PX", 100): str, bytes, int or float each
_SPOKEN = {"host", "port", "db", "username", "password"}  # what ``parse_url`` may give that this client honours


class LuaScript:
    """A Lua script, run by its SHA1 (EVALSHA) and loaded again when the server has lost it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()  # what SCRIPT LOAD answers, as redis-py's Script computes


def _error(reply: hiredis.ReplyError) -> redis.ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else redis.ResponseError(message)


def _raise_errors(replies: list) -> list:
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise _error(reply)
    return replies


class _Connection(asyncio.Protocol):
    """One TCP connection: what it sent and awaits, in order, each with its deadline."""

    def __init__(self, timeout_s: float, on_broken: Callable[[_Connection], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(encoding="utf-8")  # str replies, as redis-py's decode_responses=True
        # (future, deadline, how many replies it takes as a list: None for one reply as it is)
        self._waiting: deque[tuple[asyncio.Future, float, int | None]] = deque()
        self._batch: list = []  # the replies so far of the batch at the head of ``_waiting``
        self._timeout_s = timeout_s
        self._on_broken = on_broken
        self._transport: asyncio.Transport | None = None
        self._watch: asyncio.TimerHandle | None = None  # at the oldest call's deadline; later ones wait behind it

    def connection_made(self, transport) -> None:
        self._transport = transport

    def send(self, packed: bytes, replies: int | None = None) -> asyncio.Future:
        """Write ``packed``: one command, whose reply the future gets, or ``replies`` commands, the list of theirs."""
        future = self._loop.create_future()
        deadline = self._loop.time() + self._timeout_s
        self._waiting.append((future, deadline, replies))
        self._transport.write(packed)
        if self._watch is None:
            self._watch = self._loop.call_at(deadline, self._check_deadline)
        return future

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future, _, replies = self._waiting[0]
                if replies is not None:
                    self._batch.append(reply)
                    if len(self._batch) < replies:
                        continue
                    reply, self._batch = self._batch, []
                self._waiting.popleft()
                if future.done():  # its caller was cancelled
                    continue
                if reply.__class__ is hiredis.ReplyError:
                    future.set_exception(_error(reply))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # a reply nothing was sent for, or not RESP at all
            self.fail(redis.ConnectionError(f"unreadable reply from Redis: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis.ConnectionError("Redis closed the connection" + (f": {exc!r}" if exc else "")))

    def _check_deadline(self) -> None:
        self._watch = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if deadline <= self._loop.time():
            self.fail(redis.TimeoutError(f"no reply from Redis within {self._timeout_s} s"))
        else:
            self._watch = self._loop.call_at(deadline, self._check_deadline)

    def fail(self, error: redis.RedisError) -> None:
        """Close the connection and fail every call waiting on it."""
        self._on_broken(self)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._transport is not None:
            self._transport.abort()
        waiting, self._waiting, self._batch = self._waiting, deque(), []
        for future, _, _ in waiting:
            if not future.done():
                future.set_exception(type(error)(*error.args))  # one each: a raised exception gathers its traceback


class RedisPipe:
    """Commands on one pipelined connection of the running loop, connected at the first call."""

    def __init__(self, host: str, port: int, db: int = 0, username: str | None = None, password: str | None = None,
                 timeout_s: float = 0.25, connect_timeout_s: float = 0.25) -> None:
        self.host, self.port, self.db = host, port, db
        self._hello: list[Command] = []  # sent first on each connection, as redis-py's connections do
        if username or password:
            self._hello.append(("AUTH", *([username] if username else []), password or ""))
        if db:
            self._hello.append(("SELECT", db))
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task | None = None  # shared by the calls that come while it connects

    def execute(self, *command: Any) -> Awaitable[Any]:
        """One command's reply."""
        connection = self._connection
        if connection is not None:  # the path of every call but a connection's first
            return connection.send(hiredis.pack_command(command))
        return self._send_connected(hiredis.pack_command(command), None)

    async def pipeline(self, commands: Iterable[Command]) -> list:
        """Several commands in one write; their replies, the first error reply raised."""
        commands = list(commands)
        if not commands:  # nothing to send, no reply to wait for
            return []
        return _raise_errors(await self._batch(commands))

    async def transaction(self, commands: Iterable[Command]) -> list:
        """MULTI, ``commands``, EXEC in one write: applied all or none; the commands' replies."""
        commands = [("MULTI",), *commands, ("EXEC",)]
        replies = _raise_errors(await self._batch(commands))  # a command refused when queued aborts EXEC
        if replies[-1] is None:
            raise redis.ResponseError("EXEC was aborted")
        return _raise_errors(replies[-1])

    async def script(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """EVALSHA; if the server has lost the script (a restart, SCRIPT FLUSH), loaded again and run once more."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except NoScriptError:
            loaded, reply = await self._batch([("SCRIPT", "LOAD", script.text), command])
            return _raise_errors([loaded, reply])[1]

    def _batch(self, commands: list[Command]) -> Awaitable[list]:
        """The replies of ``commands`` (one at least), as a list."""
        packed = b"".join(map(hiredis.pack_command, commands))
        if self._connection is not None:
            return self._connection.send(packed, len(commands))
        return self._send_connected(packed, len(commands))

    async def _send_connected(self, packed: bytes, replies: int | None) -> Any:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(lambda task: task.cancelled() or task.exception())  # read if none waits
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)  # a caller cancelled leaves the connection to the others
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        if self._connection is None:  # broken again since
            raise redis.ConnectionError("the connection to Redis was lost")
        return await self._connection.send(packed, replies)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self.timeout_s, self._broken), self.host, self.port)
        except TimeoutError as exc:
            raise redis.TimeoutError(f"no connection to Redis at {self.host}:{self.port} "
                                     f"within {self.connect_timeout_s} s") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"no connection to Redis at {self.host}:{self.port}: {exc}") from exc
        for command in self._hello:  # one or two: in turn, not worth a batch
            try:
                await connection.send(hiredis.pack_command(command))
            except redis.RedisError:
                connection.fail(redis.ConnectionError("the connection's AUTH or SELECT failed"))
                raise
        self._connection = connection

    def _broken(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.fail(redis.ConnectionError("the client was closed"))


def redis_py_options(timeout_s: float) -> dict[str, Any]:
    """redis-py's clients, blocking and asyncio alike: ``timeout_s`` to connect and to answer, replies as str. No
    retries either (a ``retry`` of its kind): a failure is a miss at once."""
    return dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False,
                health_check_interval=30, decode_responses=True)


class RedisPyLoopClient:
    """``RedisPipe``'s calls on redis-py's asyncio client, for the URLs ``RedisPipe`` does not speak."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.client = redis.asyncio.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 0), **redis_py_options(timeout_s))
        self._scripts: dict[str, Any] = {}

    def execute(self, *command: Any) -> Awaitable[Any]:
        return self.client.execute_command(*command)

    async def pipeline(self, commands: Iterable[Command]) -> list:
        return await self._run(commands, transaction=False)

    async def transaction(self, commands: Iterable[Command]) -> list:
        return await self._run(commands, transaction=True)

    async def _run(self, commands: Iterable[Command], transaction: bool) -> list:
        pipe = self.client.pipeline(transaction=transaction)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()

    async def script(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        registered = self._scripts.get(script.sha)
        if registered is None:
            registered = self._scripts[script.sha] = self.client.register_script(script.text)
        return await registered(keys=keys, args=args)

    async def aclose(self) -> None:
        await self.client.aclose()


def loop_client(url: str, timeout_s: float) -> RedisPipe | RedisPyLoopClient:
    """The running loop's client for ``url`` (``timeout_s`` to connect and to answer): ``RedisPipe`` for
    redis:// host URLs, redis-py's for the rest."""
    options = parse_url(url)
    if not options.keys() <= _SPOKEN:  # a unix socket, TLS (their connection class), options in the query string
        return RedisPyLoopClient(url, timeout_s)
    return RedisPipe(options.get("host", "localhost"), options.get("port", 6379), options.get("db", 0),
                     options.get("username"), options.get("password"), timeout_s, timeout_s)
