"""Scheduled retraining: triggers, repeated runs, surviving a failed run, skipping while locked."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger

from test_cli_train import declare, fill_database, store
from test_pipeline import planted_frame, write_planted
from errors import UserError
import registry
from trainer.pipeline import TrainJob
from trainer.schedule import NEXT_RUN_FILE, make_trigger, parse_every, run_once, run_schedule
from trainer.sources import SourceSpec

REPO = Path(__file__).resolve().parents[2]


def test_parse_every_and_triggers():
    assert parse_every("6h") == timedelta(hours=6)
    assert parse_every("30m") == timedelta(minutes=30)
    assert parse_every("1.5s") == timedelta(seconds=1.5)
    assert parse_every("90") == timedelta(seconds=90)
    assert parse_every("1d") == timedelta(days=1)
    for bad in ("", "0s", "-1h", "6 hours", "h"):
        with pytest.raises(UserError, match="--every"):
            parse_every(bad)
    assert isinstance(make_trigger(None, "0 3 * * *"), CronTrigger)
    with pytest.raises(UserError, match="not a cron expression"):
        make_trigger(None, "every day")
    with pytest.raises(UserError, match="exactly one"):
        make_trigger("1h", "0 3 * * *")
    with pytest.raises(UserError, match="exactly one"):
        make_trigger(None, None)


class _Outcomes(logging.Handler):
    """Collects the scheduler's log lines; signals the first failed run."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.failed = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        if " failed" in line:
            self.failed.set()


def test_schedule_survives_a_failed_run_and_runs_again(tmp_path):
    data, root = tmp_path / "data.csv", tmp_path / "registry"
    data.write_text("user,item,rating\nu1,i1,not-a-number\n")  # the first run fails on this file
    job = TrainJob(source=SourceSpec(file=data), models=("ease",), artifacts_dir=root, device="cpu", progress=False)
    handler = _Outcomes()
    logger = logging.getLogger("trainer.schedule")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    outcomes: dict = {}
    runner = threading.Thread(
        target=lambda: outcomes.update(run_schedule(job, make_trigger("1s", None), max_runs=3, run_now=True))
    )
    try:
        runner.start()
        assert handler.failed.wait(60), handler.lines
        write_planted(data)  # fix the data: a later run must publish
        runner.join(120)
        assert not runner.is_alive(), handler.lines
    finally:
        logger.removeHandler(handler)
    assert outcomes["failed"] >= 1 and outcomes["published"] >= 1, handler.lines
    assert sum(outcomes.values()) == 3
    assert any("run 1 failed" in line and "not-a-number" in line for line in handler.lines), handler.lines
    assert any("published version" in line for line in handler.lines)
    assert registry.latest_version(root) is not None


def test_the_schedule_records_its_next_run_in_the_registry_until_it_stops(tmp_path):
    import json
    import time

    root = tmp_path / "registry"
    job = TrainJob(source=SourceSpec(file=write_planted(tmp_path / "d.csv")), models=("ease",), artifacts_dir=root,
                   device="cpu", progress=False)
    seen: dict[str, dict] = {}

    class Records(logging.Handler):  # reads the record as each line is logged: at start, and as run 1 starts
        def emit(self, record: logging.LogRecord) -> None:
            line = record.getMessage()
            for moment in ("schedule:", "run 1: training started"):
                if line.startswith(moment):
                    seen[moment] = json.loads((root / NEXT_RUN_FILE).read_text())

    handler = Records()
    logger = logging.getLogger("trainer.schedule")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        began = time.time()
        assert run_schedule(job, make_trigger("1h", None), max_runs=1, run_now=True)["published"] == 1
    finally:
        logger.removeHandler(handler)
    assert began - 1 <= seen["schedule:"]["next_run"] <= time.time()  # --run-now: the first run is due now
    after = seen["run 1: training started"]
    assert began + 3600 - 1 <= after["next_run"] <= time.time() + 3600  # as run 1 starts, the next is an hour on
    assert after["trigger"] == str(make_trigger("1h", None)) and after["pid"] == os.getpid()
    assert not (root / NEXT_RUN_FILE).exists()  # stopped: no schedule any more


def test_a_time_skipped_while_a_run_goes_moves_the_recorded_next_run(tmp_path):
    import json
    import time

    root = tmp_path / "registry"

    class SlowJob:  # a run longer than the interval: the scheduler skips the times due meanwhile
        artifacts_dir = root

        def run(self):
            time.sleep(2.5)
            raise UserError("done sleeping")

    seen: dict[str, float] = {}

    class Records(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            line = record.getMessage()
            for moment in ("run 1: training started", "run 1 failed"):
                if line.startswith(moment):
                    seen[moment] = json.loads((root / NEXT_RUN_FILE).read_text())["next_run"]

    handler = Records()
    logger = logging.getLogger("trainer.schedule")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run_schedule(SlowJob(), make_trigger("1s", None), max_runs=1, run_now=True)
    finally:
        logger.removeHandler(handler)
    # at run 1's start the next was a second away; the skips at +1 s and +2 s moved it on
    assert seen["run 1 failed"] >= seen["run 1: training started"] + 1.5, seen


def test_a_run_is_skipped_while_another_process_trains(tmp_path, caplog):
    root = tmp_path / "registry"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from registry import registry_lock; "
         "lock = registry_lock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(60)", str(root)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        job = TrainJob(source=SourceSpec(file=write_planted(tmp_path / "d.csv")), models=("ease",),
                       artifacts_dir=root, device="cpu", progress=False)
        with caplog.at_level(logging.INFO, logger="trainer.schedule"):
            assert run_once(job, 7) == "skipped"
        assert "run 7 skipped: another training is running" in caplog.text
        assert registry.latest_version(root) is None
    finally:
        holder.kill()
        holder.wait()


def test_schedule_command_runs_twice_on_an_interval(tmp_path):
    root = tmp_path / "registry"
    data = tmp_path / "export.txt"  # columns of other names, ';'-separated: the file options read it
    planted_frame().set_axis(["who", "what", "stars", "when"], axis=1).to_csv(data, sep=";", index=False)
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "schedule", "--every", "1s", "--max-runs", "2", "--file", str(data),
         "--user-col", "who", "--item-col", "what", "--rating-col", "stars", "--timestamp-col", "when", "--sep", ";",
         "--rating-scale", "1:5:1", "--models", "ease", "--device", "cpu", "--artifacts-dir", str(root)],
        capture_output=True, text=True, timeout=240, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert "run 1: published version" in result.stderr and "run 2: published version" in result.stderr
    assert f"run 1: data: {data} (columns: user=who, item=what, rating=stars, timestamp=when), rating scale 1:5:1, " \
           "positives >= 4 (declared)" in result.stderr
    assert len(registry.list_versions(root)) == 2
    assert "Traceback" not in result.stderr


def test_a_scheduled_run_on_poisoned_data_fails_and_the_published_version_stays(tmp_path, caplog):
    url, root = f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "registry"
    fill_database(url, planted_frame(), unrated=False)
    declare(url, "1:5:1")
    job = TrainJob(source=SourceSpec(database_url=url), models=("ease",), artifacts_dir=root, device="cpu",
                   progress=False)
    assert run_once(job, 1) == "published"
    published = registry.latest_version(root)
    store(url, [("mallory", "1000", 1000.0)])  # written straight into the database, past the API
    with caplog.at_level(logging.INFO, logger="trainer.schedule"):
        assert run_once(job, 2) == "failed"
    assert "run 2 failed: the database sqlite:///" in caplog.text
    assert "1 rating is off the rating scale 1:5:1" in caplog.text and "user 'mallory', item '1000'" in caplog.text
    assert registry.latest_version(root) == published
