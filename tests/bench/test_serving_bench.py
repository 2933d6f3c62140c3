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
