"""A study's backend: an Optuna sampler, or Bayesian optimisation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from hpsearch.config.base import Strict


class OptunaBackend(Strict):
    """Optuna's own samplers; `tpe` is the default because it copes with pruned trials well."""

    name: Literal["optuna"] = "optuna"
    sampler: Literal["tpe", "random", "gp", "cmaes", "qmc"] = "tpe"
    n_startup_trials: int | None = Field(default=None, ge=0)
    multivariate: bool = True


class BayesBackend(Strict):
    """The bayesian-optimization package's GP, seen by Optuna as a sampler."""

    name: Literal["bayes"]
    acquisition: Literal["ucb", "ei", "poi"] = "ucb"
    kappa: float = Field(default=2.576, gt=0)
    xi: float = Field(default=0.01, ge=0)
    exploration_decay: float | None = Field(default=None, gt=0, le=1)
    exploration_decay_delay: int | None = Field(default=None, ge=0)
    n_random_init: int = Field(default=5, ge=1)
    pruned_trials: Literal["last_value", "ignore"] = "last_value"
    constant_liar: bool = True


Backend = Annotated[OptunaBackend | BayesBackend, Field(discriminator="name")]
