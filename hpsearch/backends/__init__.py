"""Samplers: Optuna's own, or the bayesian-optimization package behind Optuna's interface.

Both kinds are Optuna samplers, so every backend writes the same study database and pruning,
resume, plots and the dashboard work the same whatever proposed the parameters.
"""

from __future__ import annotations

import optuna

from hpsearch.config import BayesBackend, OptunaBackend, StudyConfig

__all__ = ["BayesOptSampler", "make_sampler"]


def __getattr__(name: str):
    # bayes_opt pulls in scikit-learn and SciPy (over a second): only studies that use it pay.
    if name == "BayesOptSampler":
        from hpsearch.backends.bayes import BayesOptSampler

        return BayesOptSampler
    raise AttributeError(name)


def make_sampler(cfg: StudyConfig) -> optuna.samplers.BaseSampler:
    b = cfg.backend
    if isinstance(b, BayesBackend):
        from hpsearch.backends.bayes import BayesOptSampler

        return BayesOptSampler(
            acquisition=b.acquisition,
            kappa=b.kappa,
            xi=b.xi,
            exploration_decay=b.exploration_decay,
            exploration_decay_delay=b.exploration_decay_delay,
            n_random_init=b.n_random_init,
            pruned_trials=b.pruned_trials,
            constant_liar=b.constant_liar,
            seed=cfg.seed,
        )
    assert isinstance(b, OptunaBackend)
    startup = {} if b.n_startup_trials is None else {"n_startup_trials": b.n_startup_trials}
    s = optuna.samplers
    if b.sampler == "tpe":
        # constant_liar keeps parallel workers from proposing the same point.
        return s.TPESampler(seed=cfg.seed, multivariate=b.multivariate, constant_liar=True,
                            **startup)
    if b.sampler == "random":
        return s.RandomSampler(seed=cfg.seed)
    if b.sampler == "gp":
        return s.GPSampler(seed=cfg.seed, **startup)
    if b.sampler == "cmaes":
        return s.CmaEsSampler(seed=cfg.seed, consider_pruned_trials=True, **startup)
    return s.QMCSampler(seed=cfg.seed, scramble=True)
