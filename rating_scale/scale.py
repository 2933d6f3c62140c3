"""``RatingScale``: a declared scale parsed and checked (the package docstring says what a scale is)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import numpy as np

IMPLICIT = "implicit"
DEFAULT = "1:5:1"
SYNTAX = "'LOW:HIGH:STEP' (e.g. 1:5:1, 0.5:5:0.5), 'LOW:HIGH' (any number between) or 'implicit'"
_ON_STEP = 1e-6  # of a step: ratings stored as float32 (0.3 is 0.30000001) are still on a 0.1 grid
_LISTED = 12  # scales with more values than this are described by their ends and step


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class RatingScale:
    """Valid ratings and the positive threshold. Implicit scales have no valid rating value; their
    interactions count 1.0 on a (0, 1) range, as clicks do for the ranking models."""

    low: float
    high: float
    step: float | None  # None: any number from low to high
    positive: float  # ratings >= this are a ranker's positives
    implicit: bool = False

    @classmethod
    def parse(cls, text: str, positive: float | None = None) -> RatingScale:
        """The scale ``text`` declares (syntax in the module docstring); ``ValueError`` naming the problem."""
        text = str(text).strip()
        if text.lower() == IMPLICIT:
            if positive is not None:
                raise ValueError("an implicit rating scale has no positive threshold: every interaction is a positive")
            return cls(0.0, 1.0, None, 1.0, implicit=True)
        parts = text.split(":")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3) or not all(map(math.isfinite, numbers)):
            raise ValueError(f"rating scale {text!r} is not {SYNTAX}")
        low, high, step = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None
        if low >= high:
            raise ValueError(f"rating scale {text!r}: LOW ({_number(low)}) must be below HIGH ({_number(high)})")
        if step is not None:
            steps = (high - low) / step if step > 0 else -1.0
            if steps < 1 or abs(steps - round(steps)) > _ON_STEP:
                raise ValueError(f"rating scale {text!r}: STEP must be positive and divide HIGH - LOW into whole steps")
        scale = cls(low, high, step, 0.0)
        if positive is None:
            return cls(low, high, step, scale._at_or_above(low + 0.75 * (high - low)))
        if not (math.isfinite(positive) and low <= positive <= high):
            raise ValueError(f"positive threshold {positive!r} is not on the rating scale {scale}")
        return cls(low, high, step, float(positive))

    @classmethod
    def infer(cls, ratings: np.ndarray) -> RatingScale:
        """The scale a set of ratings suggests: their min to max, stepped by 1 or 0.5 when every value is.
        Only for data that declares none (a user's file); all-equal ratings say nothing: implicit."""
        values = np.unique(np.asarray(ratings, dtype=np.float64))
        if len(values) < 2:
            return cls.parse(IMPLICIT)
        low, high = float(values[0]), float(values[-1])
        for step in (1.0, 0.5):
            scale = f"{_number(low)}:{_number(high)}:{_number(step)}"
            try:
                candidate = cls.parse(scale)
            except ValueError:  # HIGH - LOW is not a whole number of these steps
                continue
            if candidate.allows(values).all():
                return candidate
        return cls.parse(f"{_number(low)}:{_number(high)}")

    def __str__(self) -> str:
        if self.implicit:
            return IMPLICIT
        ends = f"{_number(self.low)}:{_number(self.high)}"
        return ends if self.step is None else f"{ends}:{_number(self.step)}"

    @property
    def summary(self) -> str:
        """The scale and its positives, for one line of output: "1:5:1, positives >= 4"."""
        if self.implicit:
            return f"{IMPLICIT} (every interaction is a positive)"
        return f"{self}, positives >= {_number(self.positive)}"

    @property
    def range(self) -> tuple[float, float]:
        """(lowest, highest): what rating models clip their predictions to."""
        return (self.low, self.high)

    @cached_property
    def values(self) -> tuple[float, ...] | None:
        """Every allowed value of a stepped scale with few of them, else None."""
        if self.step is None or self.implicit:
            return None
        count = int(round((self.high - self.low) / self.step)) + 1
        if count > 1000:
            return None
        return tuple(float(v) for v in np.round(self.low + self.step * np.arange(count), 12))

    def allows(self, ratings: Any) -> np.ndarray:
        """Which ``ratings`` are on the scale (a bool array of their shape); none is on an implicit one."""
        values = np.asarray(ratings, dtype=np.float64)
        if self.implicit:
            return np.zeros(values.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            slack = _ON_STEP * (self.step or (self.high - self.low))
            ok = np.isfinite(values) & (values >= self.low - slack) & (values <= self.high + slack)
            if self.step is not None:
                steps = (values - self.low) / self.step
                ok &= np.abs(steps - np.round(steps)) <= _ON_STEP
        return ok

    @property
    def allowed(self) -> str:
        """What a rating may be, in words, for error messages."""
        if self.implicit:
            return "no rating value (the scale is implicit: leave the rating out)"
        if self.values is not None and len(self.values) <= _LISTED:
            return "one of " + ", ".join(map(_number, self.values))
        if self.step is not None:
            return f"{_number(self.low)} to {_number(self.high)} in steps of {_number(self.step)}"
        return f"a number from {_number(self.low)} to {_number(self.high)}"

    def refusal(self, ratings: np.ndarray, where: str, example: Callable[[int], str]) -> str | None:
        """One line naming how many ``ratings`` are off the scale and the first of them (``example(index)``
        words it); None when every rating is on the scale."""
        off = ~self.allows(ratings)
        if not off.any():
            return None
        count = int(off.sum())
        return (f"{where}: {count:,} rating{'s are' if count > 1 else ' is'} off the rating scale {self} "
                f"(allowed: {self.allowed}), e.g. {example(int(np.argmax(off)))}")

    def as_dict(self) -> dict[str, Any]:
        """What a version's manifest records."""
        return {"scale": str(self), "low": self.low, "high": self.high, "step": self.step,
                "positive_threshold": self.positive, "implicit": self.implicit}

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of one rating on this scale, or null (implicit feedback)."""
        if self.implicit:
            return {"type": "null", "description": f"Always null: the rating scale is {IMPLICIT}."}
        number: dict[str, Any] = {"type": "number", "minimum": self.low, "maximum": self.high}
        if self.values is not None:
            number = {"enum": list(self.values)}
        return {"anyOf": [number, {"type": "null"}],
                "description": f"On the rating scale {self} ({self.allowed}); null: implicit feedback."}

    def _at_or_above(self, value: float) -> float:
        if self.step is None:
            return float(value)
        steps = math.ceil((value - self.low) / self.step - _ON_STEP)
        return float(round(self.low + steps * self.step, 12))
