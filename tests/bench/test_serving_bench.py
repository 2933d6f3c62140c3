"""bench/serving.py: the service-side p99 read from the service's own Prometheus histogram."""

from __future__ import annotations

from prometheus_client import generate_latest

from bench.serving import histogram_from_text, server_p99_bound_ms
from service.metrics import Metrics

ROUTE = "/users/{user_id}/recommendations"


def test_server_p99_comes_from_the_requests_between_two_snapshots():
    metrics = Metrics()
    for _ in range(10):  # before the run: slow requests that must not count
        metrics.latency.labels("POST", ROUTE, "ease").observe(0.2)
    before = histogram_from_text(generate_latest(metrics.registry).decode(), ROUTE)
    for seconds in [0.0008] * 150 + [0.004] * 48 + [0.02] * 2:  # 200 requests: 99% of them under 5 ms
        metrics.latency.labels("POST", ROUTE, "ease").observe(seconds)
    metrics.latency.labels("POST", "/ratings", "autorec-u").observe(3.0)  # another route is left out
    after = histogram_from_text(generate_latest(metrics.registry).decode(), ROUTE)
    assert after[float("inf")] == 210 and after[0.001] == 150
    assert server_p99_bound_ms(before, after) == 5.0  # 198 of 200 by the 5 ms edge
    assert server_p99_bound_ms(after, after) is None  # no request in between


def test_requests_of_several_models_add_up():
    metrics = Metrics()
    metrics.latency.labels("POST", ROUTE, "ease").observe(0.0005)
    metrics.latency.labels("POST", ROUTE, "multvae").observe(0.03)
    counts = histogram_from_text(generate_latest(metrics.registry).decode(), ROUTE)
    assert counts[0.001] == 1 and counts[0.05] == 2 and server_p99_bound_ms({}, counts) == 50.0


def test_each_row_is_compared_with_the_ceiling_of_as_many_replicas():
    from bench.serving import ceilings, targets

    def row(backend, scenario, replicas, rps):
        return {"backend": backend, "scenario": scenario, "replicas": replicas, "concurrency": 8, "rps": rps,
                "p99_ms": 10.0, "failed": 0, "server_p99_ms": None}

    rows = [row("ceiling (before)", "ceiling", 1, 1200.0), row("ceiling (before) x2", "ceiling", 2, 1500.0),
            row("postgres", "rec-miss", 1, 250.0), row("postgres x2", "rec-miss", 2, 480.0),
            row("ceiling (after)", "ceiling", 1, 800.0), row("ceiling (after) x2", "ceiling", 2, 1500.0)]
    assert ceilings(rows) == {(1, 8): 1000.0, (2, 8): 1500.0}  # the mean of the runs before and after
    verdicts = {v["target"]: v for v in targets(rows)}
    assert not verdicts["postgres rec-miss @8 throughput"]["passed"]  # 25% of one process's ceiling
    assert verdicts["postgres x2 rec-miss @8 throughput"]["passed"]  # 32% of two processes' ceiling
    assert "32% of the ceiling" in verdicts["postgres x2 rec-miss @8 throughput"]["detail"]


def test_load_over_replicas_keeps_each_client_on_one_of_them(tmp_path):
    from bench._common import Request, ServerProcess, free_port, run_load

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the client kept on it fails every time
    with ServerProcess.ceiling(tmp_path / "ceiling.log") as live:
        result = run_load([live.base_url, dead], lambda i: Request("POST", "/users/1/recommendations", {"k": 10}),
                          scenario="spread", concurrency=2, seconds=0.5, warmup_s=0)
    assert result.statuses.get("200", 0) > 0 and result.statuses.get("ConnectError", 0) > 0


def test_loads_side_by_side_each_keep_to_their_server_and_rate(tmp_path):
    """``run_loads``: two paced loads at once, one per server, each answered in full and near its own rate."""
    from bench._common import Request, ServerProcess, run_loads

    with ServerProcess.ceiling(tmp_path / "a.log") as a, ServerProcess.ceiling(tmp_path / "b.log") as b:
        ask = lambda i: Request("POST", "/users/1/recommendations", {"k": 10})  # noqa: E731
        results = run_loads([{"base_url": a.base_url, "make_request": ask, "scenario": "a", "concurrency": 2,
                              "seconds": 1.0, "warmup_s": 0, "rate": 50},
                             {"base_url": b.base_url, "make_request": ask, "scenario": "b", "concurrency": 2,
                              "seconds": 1.0, "warmup_s": 0, "rate": 100}])
    assert [r.scenario for r in results] == ["a", "b"] and not any(r.failed for r in results)
    assert 40 <= results[0].requests <= 51 and 85 <= results[1].requests <= 101  # each at its own rate, at once


def _canned_server(answers: list[bytes], delay_s: float = 0.0):
    """A one-connection-at-a-time asyncio server answering each request with the next canned bytes."""
    import asyncio

    requests: list[bytes] = []

    async def handle(reader, writer):
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
            requests.append(head + await reader.readexactly(length))
            await asyncio.sleep(delay_s)
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"connection: close" in answer.lower():
                break
        writer.close()

    return handle, requests


def test_http_connection_reads_lengths_chunks_and_reconnects_after_close():
    import asyncio

    from bench._common import HttpConnection, Request

    answers = [
        b'HTTP/1.1 200 OK\r\ncontent-length: 12\r\ncontent-type: application/json\r\n\r\n{"a": [1,2]}',
        b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ]
    handle, seen = _canned_server(answers)

    async def run():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = HttpConnection(f"http://127.0.0.1:{port}", timeout_s=5)
        out = [await connection.request(Request("POST", "/x", {"k": 1}, {"X-API-Key": "s"})),
               await connection.request(Request("GET", "/y")),
               await connection.request(Request("POST", "/z", [1])),
               await connection.request(Request("GET", "/again"))]  # on a new connection: the last was closed
        connection.close()
        server.close()
        return out

    assert asyncio.run(run()) == [(200, b'{"a": [1,2]}'), (201, b"abcdefg"), (503, b"no"), (200, b"")]
    first = seen[0].decode()
    assert first.startswith("POST /x HTTP/1.1\r\n") and "content-length: 8\r\n" in first and first.endswith('\r\n\r\n{"k": 1}')
    assert "content-type: application/json" in first and "X-API-Key: s" in first
    assert seen[1].startswith(b"GET /y HTTP/1.1\r\n") and b"content-type" not in seen[1] and seen[3].startswith(b"GET /again ")


def test_http_connection_names_timeouts_and_refusals():
    import asyncio

    from bench._common import HttpConnection, Request, TransportError, free_port

    handle, _ = _canned_server([b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"], delay_s=1.0)

    async def run():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        slow = HttpConnection(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout_s=0.2)
        kinds = []
        for connection in (slow, HttpConnection(f"http://127.0.0.1:{free_port()}", timeout_s=1)):
            try:
                await connection.request(Request("GET", "/"))
            except TransportError as exc:
                kinds.append(exc.kind)
        server.close()
        return kinds

    assert asyncio.run(run()) == ["ReadTimeout", "ConnectError"]


def test_first_requests_ask_within_the_stored_lists_and_misses_past_them():
    from bench.serving import request_makers, targets

    makers = request_makers([f"u{n}" for n in range(3)], ["i1"], stored=200)
    firsts = [makers["rec-first"](n) for n in range(3 * 190)]
    assert len({(r.path, r.json["offset"]) for r in firsts}) == len(firsts)  # a new cache key each
    assert all(r.json["offset"] + r.json["k"] <= 200 for r in firsts)  # the list can answer each
    assert all(makers["rec-miss"](n).json["offset"] >= 200 for n in range(10))  # the model scores each
    rows = [{"backend": b, "scenario": s, "replicas": 1, "concurrency": 8, "rps": rps, "p99_ms": 10.0, "failed": 0,
             "server_p99_ms": None} for b, s, rps in (("ceiling", "ceiling", 1000.0), ("postgres", "rec-first", 650.0))]
    assert {v["target"]: v["passed"] for v in targets(rows)}["postgres rec-first @8 throughput"]  # 65% >= 60%
