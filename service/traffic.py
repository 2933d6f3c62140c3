"""What the dashboard's Traffic page shows: this process's request metrics over a recent window.

The window is the difference between this scrape of the registry and one kept from about
``WINDOW_S`` ago (since the process started on the first view); across replicas the totals
live in Prometheus, which scrapes every process's ``/metrics``.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client.samples import Sample

from service.dashboard import when
from service.metrics import Metrics


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile from cumulative histogram buckets [(upper bound, count)], linear within a bucket
    (what Prometheus's histogram_quantile does); None without observations."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # past the last finite bound: the bound is all that is known
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 0)
        lower, below = upper, count
    return lower


@dataclass
class Reading:
    """One scrape of the registry: per (method, route, model) requests, 5xx, 4xx and latency buckets; cache lookups per kind."""

    requests: dict[tuple[str, str, str], dict[str, float]]
    buckets: dict[tuple[str, str, str], list[tuple[float, float]]]
    hits: dict[str, float]
    misses: dict[str, float]

    @classmethod
    def scrape(cls, metrics: Metrics) -> Reading:
        reading = cls({}, {}, {}, {})
        for family in metrics.registry.collect():
            for sample in family.samples:
                reading._add(sample)
        for key in reading.buckets:
            reading.buckets[key].sort()
        return reading

    def _add(self, sample: Sample) -> None:
        labels = sample.labels
        if sample.name == "aerec_http_requests_total":
            row = self.requests.setdefault((labels["method"], labels["route"], labels["model"]),
                                           {"requests": 0.0, "server_errors": 0.0, "client_errors": 0.0})
            row["requests"] += sample.value
            status = int(labels["status"]) if labels["status"].isdigit() else 500
            if status >= 500:
                row["server_errors"] += sample.value
            elif status >= 400:
                row["client_errors"] += sample.value
        elif sample.name == "aerec_http_request_duration_seconds_bucket":
            self.buckets.setdefault((labels["method"], labels["route"], labels["model"]), []).append((float(labels["le"]), sample.value))
        elif sample.name == "aerec_cache_hits_total":
            self.hits[labels["kind"]] = sample.value
        elif sample.name == "aerec_cache_misses_total":
            self.misses[labels["kind"]] = sample.value


NO_READING = Reading({}, {}, {}, {})  # the registry as the process started: every counter at 0
WINDOW_S = 60.0  # the rates are over about the last minute (the page refreshes itself every REFRESH_S)
REFRESH_S = 10
MIN_GAP_S = 1.0  # readings closer than this are not kept: a page asked in a loop keeps a few, not thousands
_readings_lock = threading.Lock()
_readings: weakref.WeakKeyDictionary[Metrics, deque[tuple[float, Reading]]] = weakref.WeakKeyDictionary()


def _baseline(metrics: Metrics, now: float, reading: Reading) -> tuple[float, Reading]:
    """The reading the window starts from: the newest kept one at least WINDOW_S old, else the oldest kept
    (the process's start, 0 everywhere, when none is); ``reading`` is kept for the next views."""
    with _readings_lock:
        kept = _readings.setdefault(metrics, deque())
        while len(kept) >= 2 and kept[1][0] <= now - WINDOW_S:
            kept.popleft()
        baseline = kept[0] if kept else (metrics.started, NO_READING)
        if not kept or now - kept[-1][0] >= MIN_GAP_S:
            kept.append((now, reading))
    return baseline


def traffic(metrics: Metrics, now: float) -> dict[str, Any]:
    """Requests per route and model from this process's registry, over a recent window (between this
    scrape and one kept from about WINDOW_S ago; since the process started on the first view): rate,
    latency percentiles, errors (5xx, and 4xx apart), and the cache's hit rate per kind."""
    current = Reading.scrape(metrics)
    since, before = _baseline(metrics, now, current)
    window = max(now - since, 1e-9)
    table = []
    for key, row in sorted(current.requests.items()):
        if key[1].startswith("/dashboard") or key[1] == "/":
            continue  # the dashboard's own pages are not the API's traffic
        was = before.requests.get(key, {})
        delta = {k: v - was.get(k, 0.0) for k, v in row.items()}
        earlier = dict(before.buckets.get(key, []))
        b = [(upper, count - earlier.get(upper, 0.0)) for upper, count in current.buckets.get(key, [])]
        table.append({
            "method": key[0], "route": key[1], "model": key[2] or "-", "requests": int(row["requests"]),
            "in_window": int(delta["requests"]), "per_second": delta["requests"] / window,
            "server_errors": delta["server_errors"] / delta["requests"] if delta["requests"] else None,
            "client_errors": delta["client_errors"] / delta["requests"] if delta["requests"] else None,
            **{f"p{int(q * 100)}": _quantile(b, q) for q in (0.5, 0.95, 0.99)},
        })
    cache = []
    for kind in sorted(set(current.hits) | set(current.misses)):
        hits = current.hits.get(kind, 0.0) - before.hits.get(kind, 0.0)
        misses = current.misses.get(kind, 0.0) - before.misses.get(kind, 0.0)
        cache.append({"kind": kind, "hits": int(hits), "misses": int(misses),
                      "hit_rate": hits / (hits + misses) if hits + misses else None})
    return {"rows": table, "cache": cache, "window_s": window, "from_start": since == metrics.started,
            "started": when(metrics.started), "pid": os.getpid(), "refresh_s": REFRESH_S}
