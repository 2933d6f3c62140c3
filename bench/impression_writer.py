"""The impression writer's CPU a row on SQLite: ``store_impressions`` alone, batches as a server's flush makes them.

    python bench/impression_writer.py                      # 943 users (ml-100k's), 10,000-row flushes
    python bench/impression_writer.py --cap 5000           # each flush split into transactions of 5,000 rows

Rows as a served cache hit makes them (``ServedAnswer.row``: ten item ids, no experiment), users in turn, a
flush's times 300 us apart; a table of ``--preload`` flushes first (a server's table is never empty), then
``--flushes`` measured ones. The writer thread's CPU (``thread_time``: the sort and the values built in Python,
SQLite's inserts and commit) over the rows. Run it on two trees in turn (``PYTHONPATH`` picks the tree) to
compare them on the same machine; bench/RESULTS.md, "What recording impressions costs".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: the tree it names is measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--rows", type=int, default=10_000, help="rows a flush")
    parser.add_argument("--cap", type=int, default=0, help="most rows a transaction (0: the whole flush)")
    parser.add_argument("--preload", type=int, default=4, help="flushes written before the measured ones")
    parser.add_argument("--flushes", type=int, default=8)
    args = parser.parse_args(argv)

    from service.experiment_serving import new_recommendation_id
    from service.impressions import ServedAnswer
    from storage.crud.impression_rows import store_impressions
    from storage.migrate import upgrade_to_head
    from storage.session import make_engine, make_session_factory

    answer = ('{"model":"ease","model_version":"v1","items":['
              + ",".join(f'{{"item_id":"{i}","score":0.5,"rank":{i + 1}}}' for i in range(10)) + "]}")

    def flush() -> list:
        now = datetime.now(UTC)
        return [ServedAnswer(new_recommendation_id(), str(1 + n % args.users), answer, now + timedelta(microseconds=300 * n)).row()
                for n in range(args.rows)]

    with tempfile.TemporaryDirectory() as workdir:
        engine = make_engine(f"sqlite:///{workdir}/impressions.db")
        upgrade_to_head(engine)
        sessions = make_session_factory(engine)
        cap = args.cap or args.rows
        per_row = []
        for n in range(args.preload + args.flushes):
            rows = flush()
            started = time.thread_time()
            for start in range(0, len(rows), cap):
                with sessions() as session:
                    store_impressions(session, rows[start : start + cap])
            if n >= args.preload:
                per_row.append((time.thread_time() - started) / len(rows) * 1e6)
        engine.dispose()
    print(f"writer CPU a row: median {statistics.median(per_row):.2f} us (min {min(per_row):.2f}, max {max(per_row):.2f}) "
          f"over {args.flushes} flushes of {args.rows} rows, {args.users} users, transactions of {cap} rows", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
