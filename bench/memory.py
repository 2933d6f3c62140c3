"""Memory: the API's resident memory with all models loaded, per extra replica, and training's peak.

    python bench/memory.py                                   # ml-100k, every model
    python bench/memory.py --scale synthetic --synthetic-interactions 2000000 --models ease,multvae

1. Training: ``python -m trainer train`` of the models (gradient models for 1 epoch: the
   weights' size does not depend on how long they train) as a child process; its peak
   resident memory is the kernel's ``ru_maxrss`` from ``wait4``.
2. The API (``python -m service``) on an empty registry: the cost of the process itself.
3. The API serving that version, after one request per model (every model scored once):
   RSS, PSS (shared pages split between the processes that map them) and USS (pages
   only this process has) from ``/proc/<pid>/smaps_rollup``.
4. A second API process on the same registry and database, warmed the same way: its USS
   is what each extra replica costs; the shared libraries it maps are counted once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    PYTHON, REPO, BenchError, ServerProcess, add_scale_arguments, machine_info, prepare_data, print_table, pyplot,
    registry_dir, run_cli, save_figure, seed_database, service_env, write_json,
)

MIB = 2**20


def smaps(pid: int) -> dict[str, int]:
    """rss, pss and uss in bytes (Linux ``smaps_rollup``)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def train_with_peak(artifacts: Path, models: str, data_args: list[str], log: Path) -> dict:
    """Train as a child process; its peak RSS from wait4 (the kernel's high-water mark, not a sample)."""
    from models import REGISTRY

    names = list(REGISTRY) if models == "all" else models.split(",")
    quick = [a for n in names if not REGISTRY[n].closed_form for a in ("--set", f"{n}.epochs=1")]
    args = [PYTHON, "-m", "trainer", "train", *data_args, "--models", models, "--artifacts-dir", str(artifacts),
            "--no-progress", "--no-gate", *quick]
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    if proc.returncode != 0:
        raise BenchError(f"training failed (exit {proc.returncode}):\n" + "\n".join(log.read_text().splitlines()[-5:]))
    return {"what": f"training {models} (1 epoch each)", "peak_rss": usage.ru_maxrss * 1024,
            "seconds": time.perf_counter() - started}


def warm(base_url: str, artifacts: Path) -> None:
    """One request per model, so each has scored once (lazy buffers allocated)."""
    models = httpx.get(f"{base_url}/models", timeout=30).json()["models"]
    for model in models:
        if model["task"] == "ranking":
            response = httpx.post(f"{base_url}/users/1/recommendations", json={"k": 100, "model": model["name"]}, timeout=60)
        else:
            response = httpx.post(f"{base_url}/ratings", json={"user_id": "1", "item_ids": ["1", "2"], "model": model["name"]},
                                  timeout=60)
        if response.status_code >= 500:
            raise BenchError(f"warm-up of {model['name']} failed: {response.status_code} {response.text[:200]}")


def measure(label: str, server: ServerProcess) -> dict:
    time.sleep(0.5)
    return {"what": label, **smaps(server.pid)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scale_arguments(parser)
    parser.add_argument("--models", default="all")
    parser.add_argument("--artifacts-dir", type=registry_dir, default=None, help="serve this registry (no training run)")
    args = parser.parse_args(argv)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="aerec-memory-") as tmp:
            workdir = Path(tmp)
            data_args, desc = prepare_data(args, workdir)
            artifacts = args.artifacts_dir
            if artifacts is None:
                artifacts = workdir / "artifacts"
                rows.append(train_with_peak(artifacts, args.models, data_args, workdir / "train.log"))
                print(f"  training peak RSS {rows[-1]['peak_rss'] / MIB:,.0f} MiB", flush=True)
            database_url = f"sqlite:///{workdir / 'memory.db'}"
            if args.scale == "ml-100k":
                print(" ", seed_database(database_url, data_args), flush=True)
            else:
                run_cli(["-m", "service", "migrate"], env={"DATABASE_URL": database_url}, what="migrate")
            empty = workdir / "empty-registry"
            empty.mkdir()
            with ServerProcess.service(service_env(database_url, empty), workdir / "empty.log", ready_path="/healthz") as s:
                rows.append(measure("API, no model loaded", s))
            env = service_env(database_url, artifacts)
            with ServerProcess.service(env, workdir / "api1.log") as first:
                warm(first.base_url, artifacts)
                rows.append(measure("API, all models loaded", first))
                with ServerProcess.service(env, workdir / "api2.log") as second:
                    warm(second.base_url, artifacts)
                    rows.append(measure("second replica", second))
                    rows.append(measure("first replica, beside the second", first))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        for key in ("rss", "pss", "uss", "peak_rss"):
            if key in row:
                row[f"{key}_mib"] = row[key] / MIB
    title = f"memory · {desc} · models: {args.models}"
    print()
    print_table(rows, [("what", "what", ""), ("rss_mib", "RSS MiB", ",.0f"), ("pss_mib", "PSS MiB", ",.0f"),
                       ("uss_mib", "USS MiB", ",.0f"), ("peak_rss_mib", "peak RSS MiB", ",.0f")], title=title)
    replica = next(r for r in rows if r["what"] == "second replica")
    print(f"\neach extra replica costs about {replica['uss_mib']:,.0f} MiB of its own memory (USS); "
          f"{replica['rss_mib']:,.0f} MiB resident counting shared pages")
    name = "memory" if args.scale == "ml-100k" else "memory-synthetic"
    write_json(name, {"bench": "memory", "data": desc, "models": args.models, "machine": machine_info(), "results": rows})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = [r["what"] for r in rows]
    ax.barh(labels, [r.get("rss_mib", r.get("peak_rss_mib", 0)) for r in rows], label="RSS (training: peak)")
    ax.barh(labels, [r.get("uss_mib", 0) for r in rows], label="USS (private)")
    ax.set_xlabel("MiB")
    ax.legend(fontsize="small")
    ax.set_title(title, fontsize="small")
    save_figure(name, fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
