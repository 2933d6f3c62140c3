"""The rating scale a deployment declares: which ratings are valid, and from which one a rating is a positive.

One declaration per deployment (settings ``RATING_SCALE`` and ``POSITIVE_THRESHOLD``), parsed
and checked here once. The service refuses writes off it; the trainer trains on it (the range
rating models clip to, the positives rankers learn from) and refuses stored rows off it. This
package imports neither: it is the layer below both.

A scale is written as
  ``LOW:HIGH:STEP``  the values LOW, LOW+STEP, ..., HIGH (``1:5:1`` stars, ``0.5:5:0.5`` half stars)
  ``LOW:HIGH``       any number from LOW to HIGH
  ``implicit``       no rating values at all: every interaction (a click, a view) is a positive
The positive threshold defaults to 3/4 of the way up the scale, raised to the next allowed
value: 4 on ``1:5:1`` and on ``0.5:5:0.5`` (the ``strong`` protocol's "ratings >= 4").
"""

from __future__ import annotations

from typing import Any

from rating_scale.scale import DEFAULT, IMPLICIT, SYNTAX, RatingScale

__all__ = ["DEFAULT", "IMPLICIT", "SYNTAX", "RatingScale"]  # and RatingScaleSettings, below


def __getattr__(name: str) -> Any:
    # RatingScaleSettings needs pydantic; loaded on first use so the trainer's training path
    # (trainer.fit, bench/gpu.py) imports without it, as on a GPU machine that lacks it
    if name == "RatingScaleSettings":
        from rating_scale.settings import RatingScaleSettings

        return RatingScaleSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
