"""`python -m trainer data ...` end to end.

The main paths run in a subprocess exactly as a user types them; the rest call the same
``trainer.cli.main`` in-process (a subprocess pays several seconds of imports each).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from interactions.files import load_file
from trainer.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(tmp_path: Path):
    """Run the CLI with an empty DATA_DIR and GroupLens unreachable; returns the CompletedProcess."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "GROUPLENS_URL": dead}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "trainer", "data", *map(str, args)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )

    return run


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_ml100k_from_a_local_folder(run, ml100k_dir: Path, tmp_path: Path) -> None:
    done = run("ml-100k", "--source", ml100k_dir)
    assert done.returncode == 0, done.stderr
    assert "943 users, 1,682 items, 100,000 ratings (density 6.30%)" in done.stdout
    assert "34,174" in done.stdout  # the 4-star row of the histogram
    assert f"from: local folder {ml100k_dir}" in done.stdout
    assert (tmp_path / "data" / "ml-100k" / "u.data").is_file()


def in_process(capsys: pytest.CaptureFixture, *args: object) -> subprocess.CompletedProcess:
    code = main(["data", *map(str, args)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_ml100k_from_a_corrupted_copy_is_refused(tmp_data_dir: Path, capsys, ml100k_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ml100k_dir, copy)
    (copy / "u.data").write_bytes((copy / "u.data").read_bytes().replace(b"196\t242\t3", b"196\t242\t4", 1))
    done = in_process(capsys, "ml-100k", "--source", copy)
    assert_one_line_error(done, "u.data sha256", "is not the GroupLens file's")


def test_unknown_dataset_lists_the_known_ones(capsys) -> None:
    done = in_process(capsys, "ml-5m")
    assert_one_line_error(done, "unknown dataset 'ml-5m'", "ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest-small")


def test_file_reports_shape_and_duplicates(capsys, tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text("user\titem\trating\ttimestamp\nann\tx\t4\t10\nann\tx\t5\t20\nbob\ty\t3\t30\n")
    done = in_process(capsys, "file", path)
    assert done.returncode == 0, done.stderr
    assert "log: 2 users, 2 items, 2 ratings" in done.stdout
    assert "duplicates dropped: 1 repeated (user, item) rows, kept the latest by timestamp" in done.stdout


def test_file_takes_the_column_separator_and_scale_options(capsys, tmp_path: Path) -> None:
    path = tmp_path / "export.txt"
    path.write_text("who\twhat\tstars\twhen\nann\tx\t4.5\t10\nbob\ty\t3\t30\n")
    done = in_process(capsys, "file", path, "--user-col", "who", "--item-col", "what", "--rating-col", "stars",
                      "--timestamp-col", "when", "--sep", "tab", "--rating-scale", "0.5:5:0.5", "--positive-threshold", 3.5)
    assert done.returncode == 0, done.stderr
    assert "columns: user=who, item=what, rating=stars, timestamp=when" in done.stdout
    assert "rating scale 0.5:5:0.5, positives >= 3.5 (declared)" in done.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--rating-scale", "1:5:1"), "2 ratings are off the rating scale 1:5:1 (allowed: one of 1, 2, 3, 4, 5), "
                                      "e.g. row 1: rating 4.5"),
        (("--rating-scale", "1:5:0"), "--rating-scale: rating scale '1:5:0': STEP must be positive"),
        (("--positive-threshold", "4"), "--positive-threshold goes with --rating-scale"),
        (("--rating-scale", "1:5:1", "--positive-threshold", "6"), "positive threshold 6.0 is not on the rating scale"),
        (("--user-col", "customer"), "no user column 'customer' (columns found: userId, movieId, rating)"),
    ],
    ids=["off-scale", "bad-scale", "threshold-alone", "threshold-off-scale", "absent-column"],
)
def test_file_options_that_do_not_fit_are_one_line(capsys, tmp_path: Path, args: tuple, fragment: str) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating\n1,2,4.5\n1,3,5\n2,3,0.5\n")
    assert_one_line_error(in_process(capsys, "file", path, *args), fragment)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("user,item,rating,timestamp\n1,2,3,4\n1,3,5,6\n1,4\n", "row 3: truncated row: 2 of 4 fields"),
        ("user,item,rating,timestamp\n1,2,3,4\n1,3,five,6\n", "row 2: rating 'five' is not a number"),
    ],
    ids=["truncated", "text-rating"],
)
def test_a_bad_file_is_one_line_and_exit_2(run, tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    assert_one_line_error(run("file", path), str(path), fragment)


def test_synthetic_writes_parquet(capsys, tmp_path: Path) -> None:
    out = tmp_path / "syn.parquet"
    done = in_process(capsys, "synthetic", "--users", 300, "--items", 200, "--interactions", 9000, "--seed", 3,
                      "--out", out)
    assert done.returncode == 0, done.stderr
    assert "300 users, 200 items, 9,000 ratings" in done.stdout and f"wrote {out}" in done.stdout
    loaded, report = load_file(out)
    assert (loaded.n_users, len(loaded), report.duplicates_dropped) == (300, 9000, 0)
