"""The pure scoring helpers of ``service.inference``: histories to model rows, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from models import REGISTRY, build_config
from service.crud import History
from service.inference import history_rows
from service.model_store import IdIndex, ServingModel
from trainer.artifacts import LoadedModel

ITEMS = ["a", "b", "c", "d"]
USERS = ["u1", "u2"]


def served(name: str, positive_threshold: float | None = None) -> ServingModel:
    cls = REGISTRY[name]
    model = cls(build_config(cls.Config, {}), n_items=len(ITEMS), n_users=len(USERS))
    loaded = LoadedModel(
        name, model, USERS, ITEMS, {u: i for i, u in enumerate(USERS)}, {it: i for i, it in enumerate(ITEMS)}, {}
    )
    return ServingModel(name, loaded, IdIndex(ITEMS), IdIndex(USERS), np.asarray(ITEMS, dtype=object), None,
                        positive_threshold)


def history(*rows: tuple[str, str, float | None, int]) -> History:
    users, items, ratings, times = zip(*rows)
    return History(np.array(users, dtype=object), np.array(items, dtype=object),
                   np.array([np.nan if r is None else r for r in ratings]), np.array(times, dtype=np.int64))


# u1: rated b twice (2 then, later, 5), a once, clicked c (no rating), and an item no model knows.
# u2: rated d 1 star. A user not asked for ("u9") must not leak into the rows.
LOG = history(
    ("u1", "b", 5.0, 30), ("u2", "d", 1.0, 5), ("u1", "a", 4.0, 10), ("u1", "b", 2.0, 20),
    ("u1", "c", None, 40), ("u1", "zz", 3.0, 50), ("u9", "a", 5.0, 1),
)


def test_rating_rows_keep_each_items_latest_rating_and_skip_clicks():
    rows = history_rows(served("autorec-i"), LOG, ["u2", "u1"])  # rows follow the order asked for
    assert rows.X.toarray().tolist() == [[0, 0, 0, 1], [4, 5, 0, 0]]  # b: 5 at t=30 beats 2 at t=20
    assert rows.seen.toarray().tolist() == [[0, 0, 0, 1], [1, 1, 1, 0]]  # the click on c is still seen
    assert rows.timestamps.toarray().tolist() == [[0, 0, 0, 5], [10, 30, 0, 0]]


def test_ranking_rows_are_binary_and_apply_the_positive_threshold():
    rows = history_rows(served("ease", positive_threshold=4.0), LOG, ["u1", "u2"])
    # a (4) and b (latest 5) are positives, c (a click) is implicit feedback, d (1 star) is not
    assert rows.X.toarray().tolist() == [[1, 1, 1, 0], [0, 0, 0, 0]]
    assert rows.seen.toarray().tolist() == [[1, 1, 1, 0], [0, 0, 0, 1]]  # d is excluded as seen all the same
    everything = history_rows(served("ease"), LOG, ["u1", "u2"])  # no threshold: every interaction counts
    assert everything.X.toarray().tolist() == [[1, 1, 1, 0], [0, 0, 0, 1]]


def test_a_rating_model_reads_the_latest_rating_even_when_lower():
    # b was rated 5 at t=30 and re-rated 1 at t=60: the model reconstructs the 1
    rerated = history(("u1", "b", 5.0, 30), ("u1", "b", 1.0, 60), ("u1", "a", 5.0, 10))
    rows = history_rows(served("autorec-i"), rerated, ["u1"])
    assert rows.X.toarray().tolist() == [[5, 1, 0, 0]]


def test_an_empty_history_gives_empty_rows_of_the_right_shape():
    rows = history_rows(served("ease"), history(("u9", "a", 5.0, 1)), ["u1", "u2"])
    assert rows.X.shape == (2, 4) and rows.X.nnz == 0 and rows.seen.nnz == 0


@pytest.mark.parametrize("ids, expected", [
    (["c", "a", "zz", "c"], [2, 0, -1, 2]),
    ([], []),
    (np.array(["d", "b"], dtype=object), [3, 1]),
])
def test_id_index_maps_whole_arrays_and_marks_unknown_ids(ids, expected):
    index = IdIndex(ITEMS)
    assert index.get_indexer(ids).tolist() == expected
    assert index.get("b") == 1 and index.get("nope") == -1


def test_id_index_reports_duplicate_ids():
    assert IdIndex(ITEMS).is_unique and not IdIndex(["a", "b", "a"]).is_unique
