"""The impression writer's CPU a row: the recorder's whole write of a flush, as a server makes it.

    python bench/impression_writer.py                      # 943 users (ml-100k's), 10,000-row flushes
    python bench/impression_writer.py --batch 5000         # each flush written as transactions of 5,000 rows
    python bench/impression_writer.py --backend postgres   # a fresh database on the shared PostgreSQL (its client CPU)

Impressions queued as a served cache hit queues them (``ImpressionRecorder.served``: one answer text per user,
ten items with titles, no experiment), users in turn; then the writer's ``_write`` of the flush (each answer cut
into its row, the rows linked to their users' chains and inserted, the heads moved, the commit, the pending lists
dropped), timed by the thread's CPU (``thread_time``) over its rows (on PostgreSQL the client's part; the server's
is its own process). The mean over flushes counts the checkpoints that only some flushes run; the median leaves
them out. A table of ``--preload`` flushes first (a server's table is never empty), then ``--flushes`` measured
ones; what is alive before them is frozen out of the collector's sight, as the server does at start. Run it on
two trees in turn (``PYTHONPATH`` picks the tree) to compare them on the same machine. Each measured flush is
written inside ``sys.call_tracing`` (no tracer is set: it only calls), a C function nothing else calls, so that
callgrind can count the writer's instructions alone, which the machine's noise does not move:

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=sys_call_tracing \
        python bench/impression_writer.py --rows 5000 --preload 2 --flushes 2   # Ir / 10,000: a row's
    callgrind_annotate --inclusive=yes callgrind.out.<pid>                     # where they go

bench/RESULTS.md, "What recording impressions costs".
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: the tree it names is measured


def write_queued(recorder, batch: int) -> None:
    """What the writer's thread does with a flush: everything queued drained and written, ``batch`` at a time."""
    while work := recorder._drain(batch):
        recorder._write(work)
    recorder._writing = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--rows", type=int, default=10_000, help="rows a flush")
    parser.add_argument("--batch", type=int, default=0, help="most rows a transaction (0: the whole flush)")
    parser.add_argument("--preload", type=int, default=3, help="flushes written before the measured ones")
    parser.add_argument("--flushes", type=int, default=12)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args(argv)

    from sqlalchemy import func, select

    from bench._common import postgres_database
    from service.experiment_serving import new_recommendation_id
    from service.impressions import ImpressionRecorder
    from service.metrics import Metrics
    from storage.migrate import upgrade_to_head
    from storage.session import make_engine, make_session_factory
    from storage.tables import Impression

    answers = [('{"model":"ease","model_version":"20261206T051452Z-a60d64","items":['
                + ",".join(f'{{"item_id":"{(u * 7 + i) % 1682}","score":0.{u}{i},"rank":{i + 1},'
                           f'"title":"A title of item {(u * 7 + i) % 1682} (1995)"}}' for i in range(10)) + "]}")
               for u in range(args.users)]
    batch = args.batch or args.rows
    with ExitStack() as stack:
        if args.backend == "postgres":
            url = stack.enter_context(postgres_database("aerec_writer"))
        else:
            url = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/impressions.db"
        engine = make_engine(url)
        upgrade_to_head(engine)
        recorder = ImpressionRecorder(make_session_factory(engine), Metrics(), enabled=True, queue_size=args.rows,
                                      batch_size=batch, feedback_window_s=1800)
        gc.collect()
        gc.freeze()
        per_row = []
        for n in range(args.preload + args.flushes):
            for i in range(args.rows):
                user = (i * 37) % args.users  # users in turn, as concurrent clients ask
                recorder.served(new_recommendation_id(), str(user + 1), answers[user])
            started = time.thread_time()
            if n >= args.preload:
                sys.call_tracing(write_queued, (recorder, batch))
                per_row.append((time.thread_time() - started) / args.rows * 1e6)
            else:
                write_queued(recorder, batch)
        with engine.connect() as connection:
            stored = connection.scalar(select(func.count()).select_from(Impression))
        engine.dispose()
    written = (args.preload + args.flushes) * args.rows
    if stored != written:  # a write that failed is logged and dropped, not raised
        print(f"impression_writer: {stored} impressions stored of {written} written", file=sys.stderr)
        return 1
    print(f"writer CPU a row: mean {statistics.fmean(per_row):.2f} us, median {statistics.median(per_row):.2f} us "
          f"(min {min(per_row):.2f}, max {max(per_row):.2f}) over {args.flushes} flushes of {args.rows} rows, "
          f"{args.users} users, transactions of {batch} rows, {args.backend}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
