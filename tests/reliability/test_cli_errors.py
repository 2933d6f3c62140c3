"""A table of malformed files, arguments and settings, each with the error line it must give.

Every case exits with code 2 and no traceback. A user mistake prints exactly one line,
``error: ...``, naming what is wrong; a usage mistake caught by the argument parser prints
click's usage hint and ends with its ``Error: ...`` line. Cases here complement the
trainer's and service's own CLI tests (hyper-parameter keys, bad rows of a file, ...):
malformed config files, unusable sources and database URLs, unwritable outputs, settings
refused at start, and secrets that must not be echoed back. The last two tests run the
real entry points (``python -m trainer``, ``python -m service``) as processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-not-for-logs"


@dataclass(frozen=True)
class Case:
    id: str
    program: str  # "trainer" or "service"
    argv: tuple[str, ...]  # "{tmp}" is replaced by the test's folder of prepared files
    fragments: tuple[str, ...]  # each must be in the error line
    env: dict[str, str] = field(default_factory=dict)
    usage: bool = False  # a parser (click) usage error rather than the program's own one-line error
    bug: str | None = None  # a known defect: the case is expected to fail until it is fixed


def files(tmp: Path) -> None:
    (tmp / "ok.csv").write_text("user,item,rating\n1,2,3\n1,3,4\n2,3,5\n")
    (tmp / "bad.csv").write_text("user,item,rating\n1,2,3\n1,3,good\n")
    (tmp / "half.csv").write_text("userId,movieId,rating\n1,2,3\n1,3,4.5\n")
    (tmp / "fake.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (tmp / "broken.toml").write_text("[ease\nlam = 3\n")
    (tmp / "broken.yaml").write_text("ease: [lam: 3\n")
    (tmp / "list.yaml").write_text("- ease\n- lam\n")
    (tmp / "tune-typo.toml").write_text("[tune]\nbudgt = \"1m\"\n")
    (tmp / "not-a.zip").write_bytes(b"PK\x03\x04 truncated archive")
    (tmp / "a-file").write_text("not a folder\n")
    (tmp / "no-ml100k").mkdir()


TRAIN = ("train", "--artifacts-dir", "{tmp}/registry", "--no-progress")
CASES = [
    # ---- trainer: files and folders
    Case("file-is-a-folder", "trainer", (*TRAIN, "--file", "{tmp}/no-ml100k"), ("{tmp}/no-ml100k", "is a folder")),
    Case("file-fake-parquet", "trainer", (*TRAIN, "--file", "{tmp}/fake.parquet"), ("fake.parquet", "not a readable Parquet file")),
    Case("config-bad-toml", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--config", "{tmp}/broken.toml"),
         ("broken.toml is not valid", "line 1")),
    Case("config-bad-yaml", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--config", "{tmp}/broken.yaml"),
         ("broken.yaml is not valid",)),
    Case("config-yaml-not-a-table", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--config", "{tmp}/list.yaml"),
         ("list.yaml must map each model name to a table",)),
    Case("source-without-the-files", "trainer", (*TRAIN, "--dataset", "ml-100k", "--source", "{tmp}/no-ml100k"),
         ("no-ml100k", "no u.data")),
    Case("source-not-a-zip", "trainer", (*TRAIN, "--dataset", "ml-100k", "--source", "{tmp}/not-a.zip"),
         ("not-a.zip", "neither a folder nor a .zip")),
    Case("artifacts-dir-is-a-file", "trainer", ("train", "--file", "{tmp}/ok.csv", "--artifacts-dir", "{tmp}/a-file"),
         ("a-file", "is a file")),
    Case("models-empty", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--models", ""), ("--models is empty",)),
    Case("precision-unknown", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--precision", "fp16"),
         ("--precision must be fp32 or bf16", "fp16")),
    # ---- trainer: how to read a file, rating scales
    Case("column-options-without-a-file", "trainer", (*TRAIN, "--dataset", "ml-100k", "--user-col", "userId"),
         ("--user-col, --item-col", "use them with --file",)),
    Case("rating-scale-malformed", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--rating-scale", "5:1"),
         ("--rating-scale: rating scale '5:1': LOW (5) must be below HIGH (1)",)),
    Case("file-off-the-declared-scale", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--rating-scale", "1:4:1"),
         ("ok.csv: 1 rating is off the rating scale 1:4:1 (allowed: one of 1, 2, 3, 4), e.g. row 3: rating 5",)),
    Case("settings-rating-scale-malformed-trainer", "trainer", (*TRAIN, "--from-db"),
         ("invalid settings: RATING_SCALE", "rating scale 'stars' is not"), env={"RATING_SCALE": "stars"}),
    # ---- trainer: databases
    Case("database-url-unparsable", "trainer", (*TRAIN, "--from-db", "--database-url", "not a url"),
         ("not a usable database URL",)),
    Case("database-unreachable-password-hidden", "trainer",
         (*TRAIN, "--from-db", "--database-url", f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x"),
         ("cannot read interactions from", "u:***@127.0.0.1:1")),
    # ---- trainer: hyper-parameter search
    Case("tune-budget-not-a-duration", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--tune", "--tune-budget", "5 minutes"),
         ("--tune-budget '5 minutes'", "300s, 5m or 1h")),
    Case("tune-budget-zero", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--tune-budget", "0s"), ("--tune-budget '0s'",)),
    Case("config-tune-table-typo", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--config", "{tmp}/tune-typo.toml"),
         ("[tune] table: budgt", "known: enabled, budget, trials")),
    # ---- trainer: synthetic data
    Case("synthetic-fewer-interactions-than-users", "trainer", ("data", "synthetic", "--users", "100", "--interactions", "10"),
         ("one interaction per user",)),
    Case("synthetic-out-unwritable", "trainer",
         ("data", "synthetic", "--users", "10", "--items", "10", "--interactions", "20", "--out", "{tmp}/a-file/x.parquet"),
         ("cannot write", "a-file/x.parquet")),
    # ---- trainer: usage
    Case("seed-not-an-integer", "trainer", (*TRAIN, "--file", "{tmp}/ok.csv", "--seed", "abc"), ("'--seed'",), usage=True),
    Case("unknown-command", "trainer", ("tain",), ("No such command 'tain'",), usage=True),
    # ---- service: seed
    Case("seed-dataset-and-file", "service", ("seed", "--dataset", "ml-100k", "--file", "{tmp}/ok.csv"),
         ("give exactly one of --dataset NAME or --file PATH",)),
    Case("seed-missing-file", "service", ("seed", "--file", "{tmp}/missing.csv"), ("missing.csv: no such file",)),
    Case("seed-bad-row", "service", ("seed", "--file", "{tmp}/bad.csv"), ("bad.csv: row 2: rating 'good' is not a number",)),
    Case("seed-file-off-the-scale", "service", ("seed", "--file", "{tmp}/half.csv"),
         ("half.csv: 1 rating is off the rating scale 1:5:1", "e.g. row 2: rating 4.5")),
    Case("seed-unknown-dataset", "service", ("seed", "--dataset", "ml-0k"), ("unknown dataset 'ml-0k'", "ml-100k")),
    Case("seed-source-without-the-files", "service", ("seed", "--dataset", "ml-100k", "--source", "{tmp}/no-ml100k"),
         ("no u.data",)),
    # ---- service: settings and databases
    Case("settings-negative-ttl", "service", ("migrate",), ("invalid settings: CACHE_TTL_S",), env={"CACHE_TTL_S": "-1"}),
    Case("settings-placeholder-key-in-production", "service", ("migrate",), ("API_KEY is empty or a placeholder",),
         env={"ENVIRONMENT": "production", "API_KEY": "changethis"}),
    Case("settings-rating-scale-malformed", "service", ("migrate",), ("invalid settings: RATING_SCALE", "'1-5'"),
         env={"RATING_SCALE": "1-5"}),
    Case("settings-positive-threshold-off-the-scale", "service", ("migrate",),
         ("POSITIVE_THRESHOLD: positive threshold 9.0 is not on the rating scale 1:5:1",), env={"POSITIVE_THRESHOLD": "9"}),
    Case("migrate-unreachable-password-hidden", "service", ("migrate",), ("cannot migrate", "postgres:***@127.0.0.1:1"),
         env={"DATABASE_URL": f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:1/x"}),
    Case("migrate-sqlite-unopenable", "service", ("migrate",), ("cannot migrate", "sqlite:////no/such/folder"),
         env={"DATABASE_URL": "sqlite:////no/such/folder/aerec.db"}),
    Case("migrate-unknown-database-kind", "service", ("migrate",), ("nonsense",), env={"DATABASE_URL": "nonsense://x"}),
    Case("serve-port-out-of-range", "service", ("--port", "70000"), ("--port", "65535"), usage=True),
]


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=f"known bug: {case.bug}")] if case.bug else []
        yield pytest.param(case, id=case.id, marks=marks)


def check_error(code: int, out: str, err: str, case: Case, tmp: Path) -> None:
    assert code == 2, f"exit {code}\n{err[-1500:]}"
    assert "Traceback" not in err + out, err[-1500:]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines, "no error message"
    if case.usage:
        assert lines[-1].startswith("Error: "), lines
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in case.fragments:
        assert fragment.replace("{tmp}", str(tmp)) in lines[-1], lines[-1]
    assert PASSWORD not in err + out  # a password in a database URL is never echoed


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input_gives_its_one_error_line(case: Case, tmp_path, tmp_data_dir, monkeypatch, capsys):
    files(tmp_path)
    monkeypatch.chdir(tmp_path)  # no stray .env file is read
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "registry"))
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    if case.program == "trainer":
        from trainer.cli import main
    else:
        from service.cli import main
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in case.argv])
    captured = capsys.readouterr()
    check_error(code, captured.out, captured.err, case, tmp_path)
    assert not (tmp_path / "registry" / "LATEST").exists()  # nothing was published


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("config-bad-toml", "seed-bad-row")], ids=lambda c: c.id)
def test_the_real_entry_points_exit_2_with_one_line(case: Case, tmp_path):
    files(tmp_path)
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in case.argv]
    done = subprocess.run([sys.executable, "-m", case.program, *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    check_error(done.returncode, done.stdout, done.stderr, case, tmp_path)


@pytest.mark.parametrize("program", ["trainer", "service"])
@pytest.mark.parametrize("raised, code, line", [(KeyboardInterrupt(), 130, "error: interrupted"),
                                                ("abort", 1, "error: aborted")])
def test_an_interrupt_or_an_abort_ends_either_cli_with_one_line(program, raised, code, line, monkeypatch, capsys):
    import importlib

    import click

    cli = importlib.import_module(f"{program}.cli")

    def interrupted(*args, **kwargs):
        raise click.exceptions.Abort() if raised == "abort" else raised

    monkeypatch.setattr(cli, "app", interrupted)
    assert cli.main(["--help"]) == code
    assert capsys.readouterr().err.strip() == line
