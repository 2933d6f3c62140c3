"""MovieLens readers, get_dataset's sources and verification, and the synthetic generator."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from errors import DataError, UserError
from interactions.datasets import MARKER, dataset_origin, get_dataset
from interactions.files import load_file
from interactions.movielens import read_dataset
from trainer import synthetic
from trainer.settings import get_settings


def use_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()


def dead_url() -> str:
    """A local port nobody listens on: connection refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def zip_folder(folder: Path, archive: Path, prefix: str) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name in ("u.data", "u.item", "README", "ratings.csv", "movies.csv"):
                zf.write(path, f"{prefix}/{path.name}")
    return archive


def assert_is_ml100k(interactions, ml100k_dir: Path) -> None:
    raw = pd.read_csv(ml100k_dir / "u.data", sep="\t", header=None).to_numpy()
    assert (interactions.n_users, interactions.n_items, len(interactions)) == (943, 1682, 100_000)
    np.testing.assert_array_equal(interactions.user_ids[interactions.users].astype(np.int64), raw[:, 0])
    np.testing.assert_array_equal(interactions.item_ids[interactions.items].astype(np.int64), raw[:, 1])
    np.testing.assert_array_equal(interactions.ratings, raw[:, 2])
    np.testing.assert_array_equal(interactions.timestamps, raw[:, 3])


# --- readers -------------------------------------------------------------------------


def test_ml100k_reader_gives_the_published_shape_ids_and_titles(ml100k_dir: Path) -> None:
    data = read_dataset("ml-100k", ml100k_dir)
    assert_is_ml100k(data, ml100k_dir)
    assert data.user_ids[data.users[0]] == "196" and data.item_ids[data.items[0]] == "242"
    assert data.user_ids[:3].tolist() == ["1", "2", "3"]  # numeric order, not "1", "10", "100"
    assert data.timestamps.dtype == np.int64 and data.rating_range == (1.0, 5.0)
    assert data.item_titles["1"] == "Toy Story (1995)"
    assert data.item_titles["1128"] == "Heidi Fleiss: Hollywood Madam (1995)"  # trailing blank stripped
    assert len(data.item_titles) == 1682


def test_dat_and_csv_layouts_half_stars_and_titles_with_separators(tmp_path: Path) -> None:
    dat = tmp_path / "ml-10m"
    dat.mkdir()
    (dat / "ratings.dat").write_text("1::122::4.5::838985046\n1::185::5::838983525\n7::122::0.5::838983421\n")
    movies = "122::Boomerang: Part One (1992)::Comedy|Romance\n185::Net, The (1995)::Action\n"
    (dat / "movies.dat").write_bytes(movies.encode("latin-1"))
    data = read_dataset("ml-10m", dat)
    assert (data.n_users, data.n_items, len(data)) == (2, 2, 3)
    assert data.ratings.tolist() == [4.5, 5.0, 0.5] and data.rating_range == (0.5, 5.0)
    assert data.item_titles["122"] == "Boomerang: Part One (1992)"

    csv = tmp_path / "ml-20m"
    csv.mkdir()
    (csv / "ratings.csv").write_text("userId,movieId,rating,timestamp\n10,2,3.5,1112486027\n2,29,4.0,1112484676\n")
    (csv / "movies.csv").write_text('movieId,title,genres\n2,"American President, The (1995)",Comedy\n')
    data = read_dataset("ml-20m", csv)
    assert data.user_ids.tolist() == ["2", "10"]
    assert data.user_ids[data.users].tolist() == ["10", "2"] and data.ratings.tolist() == [3.5, 4.0]
    assert data.item_titles["2"] == "American President, The (1995)"


def test_a_bad_row_in_a_dataset_file_is_named(tmp_path: Path, ml100k_dir: Path) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    lines = (ml100k_dir / "u.data").read_text().splitlines(keepends=True)
    lines[4] = "166\t346\n"
    (folder / "u.data").write_text("".join(lines))
    with pytest.raises(DataError, match=r"u\.data: row 5: truncated row: 2 of 4 fields"):
        read_dataset("ml-100k", folder)
    lines[4] = "166\t346\t9\t886397596\n"
    (folder / "u.data").write_text("".join(lines))
    with pytest.raises(DataError, match=r"1 rating is off the rating scale 1:5:1 .*, e.g. row 5: rating 9$"):
        read_dataset("ml-100k", folder)


# --- get_dataset -------------------------------------------------------------------------


def test_local_folder_source_is_verified_cached_and_reused(tmp_data_dir: Path, ml100k_dir: Path, monkeypatch) -> None:
    data = get_dataset("ml-100k", source=ml100k_dir, progress=False)
    assert_is_ml100k(data, ml100k_dir)
    cached = tmp_data_dir / "ml-100k"
    assert {p.name for p in cached.iterdir()} == {"u.data", "u.item", "README", MARKER}
    assert dataset_origin("ml-100k") == f"local folder {ml100k_dir}"

    use_env(monkeypatch, GROUPLENS_URL=dead_url())  # a cache hit must not touch the network
    again = get_dataset("ml-100k", progress=False)
    np.testing.assert_array_equal(again.users, data.users)
    assert again.item_titles == data.item_titles


def test_zip_archive_source(tmp_data_dir: Path, ml100k_dir: Path, tmp_path: Path) -> None:
    archive = zip_folder(ml100k_dir, tmp_path / "ml-100k.zip", "ml-100k")
    data = get_dataset("ml-100k", source=archive, progress=False)
    assert_is_ml100k(data, ml100k_dir)
    assert dataset_origin("ml-100k") == f"zip archive {archive}"


def test_a_corrupted_file_fails_the_checksum_and_is_not_cached(tmp_data_dir: Path, ml100k_dir: Path, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ml100k_dir, copy)
    raw = bytearray((copy / "u.data").read_bytes())
    raw[8] = ord("5") if raw[8] != ord("5") else ord("4")  # first row's rating: same size, other bytes
    (copy / "u.data").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"u\.data sha256 .* is not the GroupLens file's 06416e597f82"):
        get_dataset("ml-100k", source=copy, progress=False)
    assert not (tmp_data_dir / "ml-100k").exists()
    assert not [p for p in tmp_data_dir.iterdir() if p.is_dir()]  # no temporary folder left behind


def test_a_source_with_the_wrong_shape_is_rejected(tmp_data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n2::661::3::978302109\n")
    expected = r"has 2 users, 2 items, 2 ratings; ml-1m has 6,040 users, 3,706 items, 1,000,209 ratings"
    with pytest.raises(DataError, match=expected):
        get_dataset("ml-1m", source=tmp_path, progress=False)


def test_unknown_name_and_missing_source_are_user_errors(tmp_data_dir: Path, tmp_path: Path) -> None:
    known = "ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest-small"
    with pytest.raises(UserError, match=f"unknown dataset 'ml-5m'; known: {known}"):
        get_dataset("ml-5m")
    with pytest.raises(UserError, match="does not exist"):
        get_dataset("ml-100k", source=tmp_path / "nowhere", progress=False)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def mirror(tmp_path: Path):
    """A local GroupLens-style web server: (folder it serves, its URL)."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_download_checks_the_md5_sidecar(tmp_data_dir: Path, ml100k_dir: Path, mirror, monkeypatch) -> None:
    root, url = mirror
    archive = zip_folder(ml100k_dir, root / "ml-100k.zip", "ml-100k")
    (root / "ml-100k.zip.md5").write_text(f"MD5 (ml-100k.zip) = {hashlib.md5(archive.read_bytes()).hexdigest()}\n")
    use_env(monkeypatch, GROUPLENS_URL=url)
    assert_is_ml100k(get_dataset("ml-100k", progress=False), ml100k_dir)
    assert dataset_origin("ml-100k") == f"GroupLens download {url}/ml-100k.zip (md5 matches GroupLens' .md5)"

    small = root / "small"
    small.mkdir()
    (small / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n")
    zip_folder(small, root / "ml-latest-small.zip", "ml-latest-small")
    (root / "ml-latest-small.zip.md5").write_text("0123456789abcdef0123456789abcdef  ml-latest-small.zip\n")
    with pytest.raises(DataError, match="differs from the published 0123456789abcdef.*: damaged download"):
        get_dataset("ml-latest-small", progress=False)
    (root / "ml-latest-small.zip.md5").unlink()  # no sidecar published: content checks only
    assert len(get_dataset("ml-latest-small", progress=False)) == 2
    assert dataset_origin("ml-latest-small").endswith("(no .md5 published; content checks only)")


def test_recbole_wheel_fallback_rebuilds_u_data_byte_for_byte(tmp_data_dir: Path, ml100k_dir: Path, monkeypatch):
    # GroupLens unreachable and a cached copy that no longer verifies: the wheel on PyPI is the way left.
    get_dataset("ml-100k", source=ml100k_dir, progress=False)
    with open(tmp_data_dir / "ml-100k" / "u.data", "a") as fh:
        fh.write("1\t1\t1\t1\n")
    use_env(monkeypatch, GROUPLENS_URL=dead_url())

    data = get_dataset("ml-100k", progress=False)
    assert_is_ml100k(data, ml100k_dir)
    assert dataset_origin("ml-100k").startswith("recbole==1.2.1 wheel from PyPI")
    assert (tmp_data_dir / "ml-100k" / "u.data").read_bytes() == (ml100k_dir / "u.data").read_bytes()
    original = read_dataset("ml-100k", ml100k_dir).item_titles
    differing = {k for k in original if original[k] != data.item_titles[k]}
    assert differing == {"1412"}  # RecBole dropped the "(V)" of "Land Before Time III ... (1995) (V)"


def test_nothing_reachable_says_what_was_tried_and_how_to_point_at_a_copy(tmp_data_dir: Path, monkeypatch) -> None:
    grouplens = dead_url()
    use_env(monkeypatch, GROUPLENS_URL=grouplens, PIP_INDEX_URL=f"{dead_url()}/simple", PIP_RETRIES="0",
            PIP_NO_CACHE_DIR="1", PIP_CONFIG_FILE="/dev/null", PIP_FIND_LINKS="")
    with pytest.raises(DataError) as failure:
        get_dataset("ml-100k", progress=False)
    message = str(failure.value)
    assert "\n" not in message
    assert f"{grouplens}/ml-100k.zip" in message and "recbole==1.2.1 wheel from PyPI (" in message
    assert "python -m trainer data ml-100k --source PATH" in message


# --- synthetic -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_log():
    return synthetic.generate(n_users=5_000, n_items=2_000, n_interactions=400_000, seed=7)


def test_synthetic_shape_unique_pairs_and_time_order(synthetic_log) -> None:
    log = synthetic_log
    assert (log.n_users, log.n_items, len(log)) == (5_000, 2_000, 400_000)
    pairs = log.users.astype(np.int64) * log.n_items + log.items
    assert np.unique(pairs).size == len(log)
    per_user = np.bincount(log.users, minlength=log.n_users)
    assert per_user.min() >= 20 and per_user.max() <= log.n_items // 2
    same_user = np.diff(log.users) == 0
    assert np.all(np.diff(log.users) >= 0) and np.all(np.diff(log.timestamps)[same_user] > 0)
    assert set(np.unique(log.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0} and 3.0 < log.ratings.mean() < 4.0


def test_synthetic_popularity_and_activity_are_long_tailed(synthetic_log) -> None:
    log = synthetic_log
    item_counts = np.sort(np.bincount(log.items, minlength=log.n_items))[::-1]
    top_tenth_share = item_counts[: log.n_items // 10].sum() / len(log)
    assert top_tenth_share > 0.4  # uniform popularity would give 0.1
    assert item_counts[0] > 50 * np.median(item_counts)
    user_counts = np.bincount(log.users)
    assert user_counts.mean() > 1.5 * np.median(user_counts) and user_counts.max() > 10 * np.median(user_counts)
    # popular items are rated higher (the item-bias structure)
    counts = np.bincount(log.items, minlength=log.n_items)
    mean_by_item = np.bincount(log.items, weights=log.ratings, minlength=log.n_items) / np.maximum(1, counts)
    by_popularity = np.argsort(-counts)
    popular, middling = by_popularity[:200], by_popularity[800:1600]
    assert mean_by_item[popular].mean() > mean_by_item[middling].mean()


def test_synthetic_is_deterministic_per_seed_and_round_trips_through_parquet(synthetic_log, tmp_path: Path) -> None:
    again = synthetic.generate(n_users=5_000, n_items=2_000, n_interactions=400_000, seed=7)
    for field in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(again, field), getattr(synthetic_log, field))
    other = synthetic.generate(n_users=5_000, n_items=2_000, n_interactions=400_000, seed=8)
    assert not np.array_equal(other.items, synthetic_log.items)

    path = synthetic.write_parquet(synthetic_log, tmp_path / "log.parquet")
    loaded, report = load_file(path)
    assert report.duplicates_dropped == 0 and len(loaded) == len(synthetic_log)
    np.testing.assert_array_equal(loaded.user_ids[loaded.users], synthetic_log.user_ids[synthetic_log.users])
    np.testing.assert_array_equal(loaded.item_ids[loaded.items], synthetic_log.item_ids[synthetic_log.items])
    np.testing.assert_array_equal(loaded.timestamps, synthetic_log.timestamps)


def test_synthetic_refuses_impossible_sizes() -> None:
    with pytest.raises(UserError, match="do not fit"):
        synthetic.generate(n_users=10, n_items=10, n_interactions=60)
    with pytest.raises(UserError, match="one interaction per user"):
        synthetic.generate(n_users=10, n_items=10, n_interactions=5)


def test_synthetic_dense_catalogue_regression() -> None:
    # many users asking for a large share of a small catalogue: a sampling round can come back empty
    log = synthetic.generate(n_users=1500, n_items=300, n_interactions=60000, seed=0)
    assert len(log) == 60000
    assert len(np.unique(log.users.astype(np.int64) * log.n_items + log.items)) == 60000
