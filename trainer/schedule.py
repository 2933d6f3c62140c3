"""Retrain periodically: APScheduler runs one ``TrainJob`` on an interval or a cron expression.

* One run at a time in this process (``max_instances=1``; a run still going when the next
  is due makes APScheduler skip that one, ``coalesce`` folds missed runs into one), and
  across processes: every run takes ``ARTIFACTS_DIR/.lock`` without waiting, so a second
  trainer sharing the folder logs "another training is running" and skips.
* A failed run (bad data, NaN, a refusing quality gate, any exception) is logged and the
  schedule goes on: the next run still happens.
* When the next run is due is written to ``ARTIFACTS_DIR/NEXT_RUN_FILE`` each time it changes
  (removed when the schedule stops): the service's dashboard reads it, since only this
  process knows its trigger.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from errors import UserError
from trainer.pipeline import TrainingBusy, TrainJob

log = logging.getLogger("trainer.schedule")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
NEXT_RUN_FILE = "SCHEDULE.json"  # in the registry; service.dashboard reads it (its copy of the name is tested equal)


def parse_every(text: str) -> timedelta:
    """"6h", "30m", "90s", "1d", "1.5h" or a number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--every {text!r}: expected a positive duration such as 90s, 30m, 6h or 1d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


def make_trigger(every: str | None, cron: str | None) -> IntervalTrigger | CronTrigger:
    if (every is None) == (cron is None):
        raise UserError("give exactly one of --every (e.g. 6h) or --cron (e.g. \"0 3 * * *\")")
    if every is not None:
        return IntervalTrigger(seconds=parse_every(every).total_seconds())
    try:
        return CronTrigger.from_crontab(cron)
    except ValueError as exc:
        raise UserError(f"--cron {cron!r} is not a cron expression (minute hour day month weekday): {exc}") from None


def run_once(job: TrainJob, number: int) -> str:
    """One scheduled run; never raises. Returns "published", "skipped" or "failed"."""
    log.info("run %d: training started", number)
    try:
        report = job.run()
    except TrainingBusy as exc:
        log.warning("run %d skipped: %s", number, exc)
        return "skipped"
    except UserError as exc:
        log.error("run %d failed: %s", number, exc)
        return "failed"
    except Exception as exc:  # a bug must not end the schedule either; the traceback goes to the log
        log.exception("run %d failed with an unexpected %s: %s", number, type(exc).__name__, exc)
        return "failed"
    for line in report.summary_lines():
        log.info("run %d: %s", number, line)
    return "published"


def record_next_run(root: Path, next_run: datetime | None, trigger: Any) -> None:
    """Write when the next run is due (atomically: a reader never sees half a file); None removes the record."""
    path = Path(root) / NEXT_RUN_FILE
    if next_run is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"next_run": next_run.timestamp(), "trigger": str(trigger), "pid": os.getpid()}
    tmp = path.with_name(f".{NEXT_RUN_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, path)


def run_schedule(
    job: TrainJob, trigger: Any, *, max_runs: int | None = None, run_now: bool = False
) -> dict[str, int]:
    """Block, running ``job`` on ``trigger`` until interrupted or ``max_runs`` runs are done; count outcomes."""
    if max_runs is not None and max_runs < 1:
        raise UserError(f"--max-runs must be at least 1, got {max_runs}")
    scheduler = BlockingScheduler(job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None})
    outcomes = {"published": 0, "skipped": 0, "failed": 0}

    def scheduled_run() -> None:
        number = sum(outcomes.values()) + 1
        record_next()
        outcomes[run_once(job, number)] += 1
        if max_runs is not None and sum(outcomes.values()) >= max_runs:
            log.info("done: %d run(s) as asked by --max-runs", max_runs)
            scheduler.shutdown(wait=False)

    def record_next(_event: Any = None) -> None:
        scheduled = scheduler.get_job("train")  # already moved to its next time: the scheduler does so before running it
        record_next_run(job.artifacts_dir, scheduled.next_run_time if scheduled else None, trigger)

    # a time skipped because the last run still goes moves the next one too: recorded, or it would look overdue
    scheduler.add_listener(record_next, EVENT_JOB_MAX_INSTANCES)
    first = datetime.now(trigger.timezone) if run_now else None
    scheduler.add_job(scheduled_run, trigger, id="train", name="train", **({"next_run_time": first} if first else {}))
    record_next_run(job.artifacts_dir, first or trigger.get_next_fire_time(None, datetime.now(trigger.timezone)), trigger)
    log.info("schedule: %s; artifacts in %s (Ctrl+C stops)", trigger, job.artifacts_dir)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("schedule stopped")
    finally:
        record_next_run(job.artifacts_dir, None, trigger)  # no schedule any more: the dashboard says so
    return outcomes
