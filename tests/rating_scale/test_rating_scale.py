"""The declared rating scale: its syntax, which ratings it allows, its positive threshold, its settings."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rating_scale import RatingScale, RatingScaleSettings


@pytest.mark.parametrize(("text", "shown", "values", "positive"), [
    ("1:5:1", "1:5:1", (1, 2, 3, 4, 5), 4),
    (" 0.5 : 5 : 0.5 ", "0.5:5:0.5", tuple(np.arange(1, 11) / 2), 4),  # 3/4 up is 3.875: raised to the next value
    ("1:10:1", "1:10:1", tuple(range(1, 11)), 8),
    ("-1:1:2", "-1:1:2", (-1, 1), 1),  # thumbs down / up
    ("1:5", "1:5", None, 4),
    ("IMPLICIT", "implicit", None, 1),
])
def test_a_scale_parses_prints_and_has_its_default_positive_threshold(text, shown, values, positive):
    scale = RatingScale.parse(text)
    assert str(scale) == shown and RatingScale.parse(str(scale)) == scale
    assert scale.values == (None if values is None else tuple(float(v) for v in values))
    assert scale.positive == positive


@pytest.mark.parametrize(("text", "problem"), [
    ("", "is not 'LOW:HIGH:STEP'"), ("five", "is not"), ("1:5:1:1", "is not"), ("1:nan", "is not"),
    ("1:inf:1", "is not"), ("5:1", r"LOW \(5\) must be below HIGH \(1\)"), ("1:1", "must be below"),
    ("1:5:0", "STEP must be positive"), ("1:5:-1", "STEP must be positive"), ("1:5:3", "whole steps"),
])
def test_a_malformed_scale_is_refused_naming_the_problem(text, problem):
    with pytest.raises(ValueError, match=problem):
        RatingScale.parse(text)


def test_a_declared_positive_threshold_must_be_on_the_scale():
    assert RatingScale.parse("0.5:5:0.5", 3.5).positive == 3.5
    for bad in (0.0, 5.5, float("nan")):
        with pytest.raises(ValueError, match="is not on the rating scale 1:5:1"):
            RatingScale.parse("1:5:1", bad)
    with pytest.raises(ValueError, match="no positive threshold"):
        RatingScale.parse("implicit", 1.0)


def test_allows_only_the_declared_values():
    stars = RatingScale.parse("1:5:1")
    assert stars.allows([1, 5, 4.0, 1000, -3, 0, 4.5, 5.000001, np.nan, np.inf]).tolist() == [
        True, True, True, False, False, False, False, False, False, False]
    tenths = RatingScale.parse("0:1:0.1")
    assert tenths.allows(np.float32([0.3, 0.7, 1.0])).all()  # float32 0.3 is 0.30000001: still on the grid
    assert not tenths.allows([0.35, 1.1]).any()
    assert RatingScale.parse("1:5").allows([1, 2.37, 5]).all() and not RatingScale.parse("1:5").allows([0.99]).any()
    assert not RatingScale.parse("implicit").allows([0, 1]).any()


def test_the_refusal_names_how_many_and_the_first():
    scale = RatingScale.parse("1:5:1")
    assert scale.refusal(np.array([4, 5, 3]), "db", str) is None
    line = scale.refusal(np.array([4, 1000, 3, -3]), "db", lambda n: f"row {n + 1}")
    assert line == "db: 2 ratings are off the rating scale 1:5:1 (allowed: one of 1, 2, 3, 4, 5), e.g. row 2"


def test_allowed_values_are_listed_or_summarised():
    assert RatingScale.parse("0:100:1").allowed == "0 to 100 in steps of 1"
    assert RatingScale.parse("1:5").allowed == "a number from 1 to 5"
    assert "leave the rating out" in RatingScale.parse("implicit").allowed


@pytest.mark.parametrize(("ratings", "inferred"), [
    ([1, 2, 5, 3], "1:5:1"), ([0.5, 5, 3.5], "0.5:5:0.5"), ([1.25, 3.7], "1.25:3.7"), ([4, 4], "implicit"),
])
def test_infer_from_the_ratings_of_a_file_that_declares_none(ratings, inferred):
    assert str(RatingScale.infer(np.array(ratings))) == inferred


def test_json_schema_lists_the_values_or_bounds():
    assert RatingScale.parse("1:5:1").json_schema()["anyOf"][0] == {"enum": [1.0, 2.0, 3.0, 4.0, 5.0]}
    assert RatingScale.parse("1:5").json_schema()["anyOf"][0] == {"type": "number", "minimum": 1.0, "maximum": 5.0}
    assert RatingScale.parse("implicit").json_schema()["type"] == "null"


def test_settings_parse_once_and_refuse_a_bad_declaration(monkeypatch):
    monkeypatch.setenv("RATING_SCALE", "0.5:5:0.5")
    monkeypatch.setenv("POSITIVE_THRESHOLD", "3.5")
    settings = RatingScaleSettings()
    assert settings.rating_scale == RatingScale.parse("0.5:5:0.5", 3.5)
    assert RatingScaleSettings(RATING_SCALE="1:5:1", POSITIVE_THRESHOLD=None).rating_scale.positive == 4
    monkeypatch.setenv("POSITIVE_THRESHOLD", "")  # what docker compose passes when .env sets none
    assert RatingScaleSettings().rating_scale.positive == 4
    with pytest.raises(ValidationError, match="RATING_SCALE"):
        RatingScaleSettings(RATING_SCALE="1-5")
    with pytest.raises(ValidationError, match="POSITIVE_THRESHOLD: positive threshold 6.0 is not on"):
        RatingScaleSettings(RATING_SCALE="1:5:1", POSITIVE_THRESHOLD=6)
