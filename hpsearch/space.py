"""The search space as Optuna distributions: the one description both backends sample from."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpsearch.config import CategoricalParam, FloatParam, IntParam
from hpsearch.optuna_compat import suggest as suggest_one


def distribution(param: FloatParam | IntParam | CategoricalParam) -> BaseDistribution:
    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, IntParam):
        return IntDistribution(param.low, param.high, log=param.log, step=param.step)
    return CategoricalDistribution(param.choices)


def distributions(space: dict[str, Any]) -> dict[str, BaseDistribution]:
    return {name: distribution(p) for name, p in space.items()}


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """Ask the study's sampler for every declared parameter (log ones are drawn in log space)."""
    return {name: suggest_one(trial, name, dist) for name, dist in distributions(space).items()}
