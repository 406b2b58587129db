"""The search space as written in a study file: float, int and categorical parameters."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from hpsearch.config.base import Strict


class FloatParam(Strict):
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be < high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"low ({self.low:g}) must be > 0 when log: true")
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log: true")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be > 0")
        return self


class IntParam(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"low ({self.low}) must be > 0 when log: true")
        if self.log and self.step != 1:
            raise ValueError("step cannot be combined with log: true")
        if self.step <= 0:
            raise ValueError("step must be > 0")
        return self


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[bool | int | float | str] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
