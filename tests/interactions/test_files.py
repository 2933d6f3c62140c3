"""load_file: formats, id maps, duplicates, and one-line errors naming file and row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from errors import DataError
from interactions.files import FileColumns, load_file
from interactions.movielens import read_dataset
from rating_scale import RatingScale


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def rows_of(interactions) -> list[tuple]:
    """(user id, item id, rating[, timestamp]) per row, in stored order."""
    columns = [interactions.user_ids[interactions.users], interactions.item_ids[interactions.items]]
    columns.append(interactions.ratings)
    if interactions.timestamps is not None:
        columns.append(interactions.timestamps)
    return [tuple(v.item() if hasattr(v, "item") else v for v in row) for row in zip(*columns)]


def test_csv_with_string_ids_and_iso_timestamps(tmp_path: Path) -> None:
    text = (
        "user,item,rating,timestamp\n"
        "alice,tt01,4,2021-03-04T05:06:07Z\nbob,tt02,2.5,1600000000\nalice,tt02,5,2021-03-04\n"
    )
    data, report = load_file(write(tmp_path / "log.csv", text))
    assert rows_of(data) == [
        ("alice", "tt01", 4.0, 1614834367), ("bob", "tt02", 2.5, 1600000000), ("alice", "tt02", 5.0, 1614816000)
    ]
    assert data.user_index == {"alice": 0, "bob": 1} and data.item_index == {"tt01": 0, "tt02": 1}
    assert str(data.rating_scale) == "2.5:5:0.5" and report.scale_inferred  # inferred when not declared
    assert (report.rows, report.duplicates_dropped, report.separator, report.header) == (3, 0, ",", True)


def test_headerless_tsv_reads_like_the_dataset_reader(ml100k_dir: Path) -> None:
    data, report = load_file(ml100k_dir / "u.data", rating_scale=RatingScale.parse("1:5:1"))
    reference = read_dataset("ml-100k", ml100k_dir)
    assert (report.separator, report.header) == ("\t", False)
    for field in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(data, field), getattr(reference, field))


def test_parquet_with_integer_ids_and_custom_columns(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame({"uid": [10, 2, 10], "mid": [7, 7, 8], "stars": [1.0, 3.0, 5.0], "ts": [3, 2, 1]}).to_parquet(path)
    data, report = load_file(path, FileColumns(user="uid", item="mid", rating="stars", timestamp="ts"))
    assert data.user_ids.tolist() == ["2", "10"]  # numeric order
    assert rows_of(data) == [("10", "7", 1.0, 3), ("2", "7", 3.0, 2), ("10", "8", 5.0, 1)]
    assert report.separator is None


def test_separators_are_sniffed_or_given(tmp_path: Path) -> None:
    for name, text, sep in [
        ("a.txt", "user;item;rating\n1;2;3\n", None),
        ("b.dat", "1::2::3::4\n5::6::1::8\n", None),
        ("c.csv", "user|item|rating\n1|2|3\n", None),
        ("d.txt", "user item rating\n1 2 3\n", " "),
    ]:
        data, report = load_file(write(tmp_path / name, text), FileColumns(sep=sep), rating_scale=RatingScale.parse("1:5:1"))
        assert rows_of(data)[0][:3] == ("1", "2", 3.0), name


def test_no_rating_column_means_implicit_ones(tmp_path: Path) -> None:
    data, report = load_file(write(tmp_path / "clicks.csv", "user,item\nu1,i1\nu2,i1\n"))
    assert data.ratings.tolist() == [1.0, 1.0] and data.timestamps is None and data.rating_range == (0.0, 1.0)
    assert data.rating_scale.implicit and report.implicit and "implicit 1.0" in " ".join(report.notes())


def test_an_implicit_scale_reads_every_row_as_a_positive_whatever_its_rating(tmp_path: Path) -> None:
    path = write(tmp_path / "rated.csv", "user,item,rating\nu1,i1,1\nu2,i1,5\n")
    data, report = load_file(path, rating_scale=RatingScale.parse("implicit"))
    assert data.ratings.tolist() == [1.0, 1.0] and data.rating_scale.implicit
    assert "rating column 'rating': every row counts as an implicit 1.0" in " ".join(report.notes())


def test_movielens_latest_columns_are_recognised_and_half_stars_inferred(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"
                                           "2,31,0.5,1260759182\n2,10,5.0,1260759185\n")
    data, report = load_file(path)
    assert report.columns == {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
    assert rows_of(data)[0] == ("1", "31", 2.5, 1260759144)
    assert str(data.rating_scale) == "0.5:5:0.5" and data.rating_scale.positive == 4.0
    assert "rating scale 0.5:5:0.5, positives >= 4 (inferred from ratings.csv" in report.scale_note()
    named, _ = load_file(path, FileColumns(user="userId", item="movieId"))  # the same, named
    np.testing.assert_array_equal(named.ratings, data.ratings)


@pytest.mark.parametrize(("header", "columns"), [
    ("user_id,item_id,rating", {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": None}),
    ("UserID;ItemId;Score;TS", {"user": "UserID", "item": "ItemId", "rating": "Score", "timestamp": "TS"}),
    ("uid\tproduct_id", {"user": "uid", "item": "product_id", "rating": None, "timestamp": None}),
])
def test_common_column_names_are_recognised(tmp_path: Path, header: str, columns: dict) -> None:
    sep = ";" if ";" in header else "\t" if "\t" in header else ","
    fields = ["7", "9", "4", "100"][: header.count(sep) + 1]
    _, report = load_file(write(tmp_path / "log.txt", f"{header}\n{sep.join(fields)}\n"))
    assert report.columns == columns


def test_a_declared_scale_refuses_the_ratings_off_it_naming_how_many_and_the_first(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user,item,rating\n1,2,4\n1,3,4.5\n2,3,5\n2,4,7\n")
    with pytest.raises(DataError) as failure:
        load_file(path, rating_scale=RatingScale.parse("1:5:1"))
    assert str(failure.value) == (f"{path}: 2 ratings are off the rating scale 1:5:1 (allowed: one of 1, 2, 3, 4, 5), "
                                  "e.g. row 2: rating 4.5")
    data, report = load_file(path, rating_scale=RatingScale.parse("0:10:0.5", 6))
    assert data.rating_scale.positive == 6 and not report.scale_inferred


def test_duplicates_keep_the_latest_by_timestamp_or_the_last_in_file(tmp_path: Path) -> None:
    text = "user,item,rating,timestamp\na,x,1,300\na,x,2,100\nb,y,3,5\na,x,4,200\nb,y,5,5\n"
    timed = write(tmp_path / "timed.csv", text)
    data, report = load_file(timed)
    assert rows_of(data) == [("a", "x", 1.0, 300), ("b", "y", 5.0, 5)]  # b,y tie on time: the later row
    assert report.duplicates_dropped == 3
    assert "duplicates dropped: 3 repeated (user, item) rows, kept the latest by timestamp" in report.notes()

    untimed = write(tmp_path / "untimed.csv", "user,item,rating\na,x,1\na,x,2\nb,x,3\n")
    data, report = load_file(untimed)
    assert rows_of(data) == [("a", "x", 2.0), ("b", "x", 3.0)] and report.duplicates_dropped == 1


BAD_FILES = [
    ("missing.csv", "person,movieId\n1,2\n", {}, r"no user column \(columns found: person, movieId; recognised"),
    ("absent.csv", "userId,movieId\n1,2\n", {"columns": FileColumns(user="customer")},
     r"no user column 'customer' \(columns found: userId, movieId\)"),
    ("twice.csv", "user,user_id,item\n1,2,3\n", {}, r"columns 'user' and 'user_id' could both hold the users"),
    ("one_for_two.csv", "a,b\n1,2\n", {"columns": FileColumns(user="a", item="a")}, r"one column cannot hold two roles"),
    ("empty.csv", "", {}, r"the file is empty"),
    ("blank.csv", "\n\n", {}, r"the file is empty"),
    ("header_only.csv", "user,item,rating\n", {}, r"the file has no data rows"),
    ("text.csv", "user,item,rating\n1,2,3\n1,3,good\n", {}, r"row 2: rating 'good' is not a number"),
    ("nan.csv", "user,item,rating\n1,2,3\n1,3,3\n2,3,nan\n", {}, r"row 3: rating 'nan' is not a number"),
    ("hole.csv", "user,item,rating,timestamp\n1,2,3,4\n1,3,,4\n", {}, r"row 2: empty 'rating' value"),
    ("no_time.csv", "user,item,rating,timestamp\n1,2,3,4\n1,3,4,\n", {}, r"row 2: empty 'timestamp' value"),
    ("range.csv", "user,item,rating\n1,2,3\n1,3,6\n", {"rating_scale": RatingScale.parse("1:5:1")},
     r"1 rating is off the rating scale 1:5:1 \(allowed: one of 1, 2, 3, 4, 5\), e.g. row 2: rating 6$"),
    ("negative.csv", "user,item,rating\n1,2,-1\n", {}, r"row 1: rating -1 is negative \(declare a scale"),
    ("infinite.csv", "user,item,rating\n1,2,3\n1,4,inf\n", {}, r"row 2: rating inf is not finite"),
    ("when.csv", "user,item,rating,timestamp\n1,2,3,100\n1,3,3,noon\n", {}, r"row 2: timestamp 'noon' is neither"),
    ("short.csv", "user,item,rating,timestamp\n1,2,3,100\n1,3\n", {}, r"row 2: truncated row: 2 of 4 fields \(no rat"),
    ("long.csv", "user,item,rating\n1,2,3\n1,3,4,5\n", {}, r"row 2: 4 fields, expected 3"),
    ("noid.csv", "user,item,rating\n1,2,3\n,3,4\n", {}, r"row 2: empty 'user' value"),
]


@pytest.mark.parametrize(("name", "text", "kwargs", "expected"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files_give_one_line_naming_file_and_row(tmp_path: Path, name: str, text: str, kwargs: dict, expected: str):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError, match=expected) as failure:
        load_file(path, **kwargs)
    message = str(failure.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_the_first_bad_row_is_found_deep_in_a_large_file(tmp_path: Path) -> None:
    n = 300_000
    frame = pd.DataFrame({"user": np.arange(n) % 5000, "item": np.arange(n) // 5000, "rating": 3.0, "timestamp": 10})
    frame["rating"] = frame["rating"].astype(object)
    frame.loc[250_000, "rating"] = "three"
    frame.loc[260_000, "rating"] = -2.0
    path = tmp_path / "large.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 250001: rating 'three' is not a number"):
        load_file(path)

    lines = path.read_text().splitlines(keepends=True)
    lines[200_001] = "7,8\n"  # data row 200,001 loses two fields
    lines.insert(100, "\n")  # a blank line is skipped, not counted as a row
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"row 200001: truncated row: 2 of 4 fields \(no rating, timestamp\)"):
        load_file(path)


def test_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_file(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_file(write(tmp_path / "fake.parquet", "user,item\n1,2\n"))
