"""bench/impression_writer.py runs the recorder's real write on a small table (it has no other test)."""

from __future__ import annotations

import re
import subprocess
import sys

from bench._common import REPO


def test_the_writer_bench_stores_every_flush_and_prints_the_cpu_a_row():
    run = subprocess.run([sys.executable, str(REPO / "bench" / "impression_writer.py"), "--users", "7", "--rows", "40",
                          "--preload", "1", "--flushes", "2"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]  # it exits 1 unless all 120 impressions are stored
    figures = re.fullmatch(r"writer CPU a row: mean ([\d.]+) us, median ([\d.]+) us \(min ([\d.]+), max ([\d.]+)\) "
                           r"over 2 flushes of 40 rows, 7 users, transactions of 40 rows, sqlite", run.stdout.strip())
    assert figures is not None, run.stdout
    mean, median, least, most = map(float, figures.groups())
    assert 0 < least <= median <= most and least <= mean <= most
