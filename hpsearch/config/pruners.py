"""A study's pruner, one model per Optuna pruner, with defaults for a per-eval F1."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from hpsearch.config.base import Strict


class NoPruner(Strict):
    name: Literal["none"]


class _RankPruner(Strict):
    """Pruners that compare a trial with the others at the same step."""

    n_startup_trials: int = Field(default=3, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, ge=1)
    n_min_trials: int = Field(default=1, ge=1)


class MedianPruner(_RankPruner):
    name: Literal["median"]


class PercentilePruner(_RankPruner):
    name: Literal["percentile"]
    percentile: float = Field(default=25.0, ge=0, le=100)


class SuccessiveHalvingPruner(Strict):
    name: Literal["successive_halving"]
    min_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=3, ge=2)
    min_early_stopping_rate: int = Field(default=0, ge=0)


class HyperbandPruner(Strict):
    name: Literal["hyperband"]
    min_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    max_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=3, ge=2)


class ThresholdPruner(Strict):
    name: Literal["threshold"]
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_bound(self) -> ThresholdPruner:
        if self.lower is None and self.upper is None:
            raise ValueError("give lower and/or upper")
        return self


class WilcoxonPruner(Strict):
    name: Literal["wilcoxon"]
    p_threshold: float = Field(default=0.1, gt=0, lt=1)
    n_startup_steps: int = Field(default=2, ge=0)


_InnerPruner = Annotated[
    NoPruner
    | MedianPruner
    | PercentilePruner
    | SuccessiveHalvingPruner
    | HyperbandPruner
    | ThresholdPruner
    | WilcoxonPruner,
    Field(discriminator="name"),
]


class PatientPruner(Strict):
    name: Literal["patient"]
    wrapped: _InnerPruner | None = None
    patience: int = Field(default=2, ge=0)
    min_delta: float = Field(default=0.0, ge=0)


Pruner = Annotated[_InnerPruner | PatientPruner, Field(discriminator="name")]
