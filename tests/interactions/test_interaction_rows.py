"""The one rule by which stored interactions become model rows (``interactions.rows``)."""

from __future__ import annotations

import numpy as np

from interactions.rows import implicit_as_rating, is_positive, keep_latest_pairs
from rating_scale import RatingScale


def test_a_positive_is_a_rating_at_the_threshold_or_above_or_implicit_feedback():
    ratings = np.array([np.nan, 3.0, 4.0, 5.0, 0.0])
    assert is_positive(ratings, 4.0).tolist() == [True, False, True, True, False]


def test_implicit_feedback_trains_as_the_top_of_the_scale_and_everything_as_one_on_an_implicit_scale():
    ratings = np.array([np.nan, 2.0, 4.5])
    assert implicit_as_rating(ratings, RatingScale.parse("0.5:5:0.5")).tolist() == [5.0, 2.0, 4.5]
    assert implicit_as_rating(ratings, RatingScale.parse("implicit")).tolist() == [1.0, 1.0, 1.0]
    stars = RatingScale.parse("1:5:1")  # so implicit feedback is a positive on both sides of the rule
    assert is_positive(implicit_as_rating(ratings[:1], stars), stars.positive).all()


def test_the_latest_interaction_of_a_pair_is_kept_and_ties_go_to_the_last_given():
    users, items = np.array([0, 0, 1, 0, 1]), np.array([3, 3, 2, 3, 2])
    keep, dropped = keep_latest_pairs(users, items, np.array([10, 30, 5, 20, 5]))
    assert keep.tolist() == [1, 4] and dropped == 3
    keep, dropped = keep_latest_pairs(users, items, None)
    assert keep.tolist() == [3, 4] and dropped == 3
