"""The two settings that declare a deployment's scale, read from the environment (pydantic-settings)."""

from __future__ import annotations

from functools import cached_property

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings

from rating_scale.scale import DEFAULT, RatingScale


class RatingScaleSettings(BaseSettings):
    """The two settings that declare a deployment's scale; the service's and the trainer's settings extend it."""

    RATING_SCALE: str = DEFAULT  # what POST /interactions accepts, and what --from-db trains on
    POSITIVE_THRESHOLD: float | None = None  # None: 3/4 of the way up the scale (4 on 1:5:1)

    @field_validator("RATING_SCALE")
    @classmethod
    def _scale_parses(cls, text: str) -> str:
        return str(RatingScale.parse(text))

    @field_validator("POSITIVE_THRESHOLD", mode="before")
    @classmethod
    def _empty_threshold_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value  # compose passes "" when .env has none

    @model_validator(mode="after")
    def _threshold_on_scale(self) -> RatingScaleSettings:
        try:
            RatingScale.parse(self.RATING_SCALE, self.POSITIVE_THRESHOLD)
        except ValueError as exc:
            raise ValueError(f"POSITIVE_THRESHOLD: {exc}") from None
        return self

    @cached_property
    def rating_scale(self) -> RatingScale:
        return RatingScale.parse(self.RATING_SCALE, self.POSITIVE_THRESHOLD)
