"""The pure scoring helpers of ``service.inference``: histories to model rows, worked by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models import REGISTRY, build_config
from registry import LoadedModel
from service.errors import ApiError
from service.inference import RatingQuery, history_rows, predict_ratings, similar_items
from service.model_store import IdIndex, ItemVectors, ServingModel
from storage.crud import History

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


def test_rating_rows_keep_each_items_latest_rating_and_read_a_click_as_the_top_rating():
    rows = history_rows(served("autorec-i"), LOG, ["u2", "u1"])  # rows follow the order asked for
    # b: 5 at t=30 beats 2 at t=20; the click on c is a 5, the top of the model's range, as the trainer reads it
    assert rows.X.toarray().tolist() == [[0, 0, 0, 1], [4, 5, 5, 0]]
    assert rows.seen.toarray().tolist() == [[0, 0, 0, 1], [1, 1, 1, 0]]
    assert rows.timestamps.toarray().tolist() == [[0, 0, 0, 5], [10, 30, 40, 0]]


def test_a_folded_in_rating_row_is_the_row_the_trainer_builds_from_the_same_log():
    """The same stored interactions, through the trainer's reading (interactions.rows.implicit_as_rating on the
    scale) and through serving's fold-in, give one row: a click trains and scores as the top rating."""
    from interactions.rows import implicit_as_rating
    from rating_scale import RatingScale

    scale = RatingScale.parse("1:5:1")
    mine = history(("u1", "a", 2.0, 10), ("u1", "c", None, 20), ("u1", "d", 4.0, 30))
    trained = np.zeros(len(ITEMS))
    trained[[ITEMS.index(i) for i in mine.item_ids]] = implicit_as_rating(mine.ratings, scale)
    model = served("autorec-i")
    assert model.model.rating_range == scale.range
    assert history_rows(model, mine, ["u1"]).X.toarray().tolist() == [trained.tolist()]


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


def test_a_request_that_meets_a_non_finite_score_is_a_503():
    """A model whose output is NaN for some input (here: item b's decoder row, which is also its
    embedding): requests that would carry it are refused, the others are answered."""
    model = served("autorec-u")
    model = dataclasses.replace(model, item_vectors=ItemVectors(model.model.item_embeddings().numpy()))
    with torch.no_grad():
        model.model.decoder.weight[1] = float("nan")
    fine = predict_ratings([RatingQuery("u1", ["a", "c"], model)], LOG)
    assert len(fine[0].ratings) == 2 and np.isfinite([r for _, r in fine[0].ratings]).all()
    nearest = similar_items(model, "a", 2)  # b's NaN similarity sorts last: not among the 2 nearest
    assert "b" not in [i for i, _ in nearest] and np.isfinite([s for _, s in nearest]).all()
    for call in (lambda: predict_ratings([RatingQuery("u1", ["a", "b"], model)], LOG),
                 lambda: similar_items(model, "b", 2), lambda: similar_items(model, "a", 3)):
        with pytest.raises(ApiError) as refused:
            call()
        assert (refused.value.status, refused.value.code) == (503, "model_fault")
        assert refused.value.details == {"model": "autorec-u"}


def test_the_latest_rating_decides_even_when_an_older_one_was_a_positive():
    """The rule the trainer keeps (interactions.rows): a re-rating below the threshold is no positive,
    the older 5 never stands in for it; on equal timestamps the later row wins."""
    log = history(("u1", "b", 5.0, 20), ("u1", "b", 2.0, 30), ("u1", "a", 1.0, 40), ("u1", "a", 5.0, 40))
    rows = history_rows(served("ease", positive_threshold=4.0), log, ["u1"])
    assert rows.X.toarray().tolist() == [[1, 0, 0, 0]] and rows.seen.toarray().tolist() == [[1, 1, 0, 0]]
    ratings = history_rows(served("autorec-i"), log, ["u1"])
    assert ratings.X.toarray().tolist() == [[5, 2, 0, 0]]


def test_serving_storage_and_the_trainer_import_one_row_rule():
    from interactions import files, rows
    from service import inference
    from storage import export
    from storage.crud import writing
    from trainer import protocols, sources

    assert (files.keep_latest_pairs is writing.keep_latest_pairs is export.keep_latest_pairs
            is inference.keep_latest_pairs is rows.keep_latest_pairs)
    assert inference.is_positive is protocols.is_positive is sources.is_positive is rows.is_positive
