"""``log=True`` parameters must be spread uniformly over decades, whichever sampler draws them.

A learning rate in [1e-6, 1e-2] drawn uniformly on the linear scale lands above 1e-3 about 90 %
of the time, so a sampler that ignores ``log=True`` silently never tries small rates.
"""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest
from scipy import stats

from hpsearch.backends.bayes import BayesOptSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

LOW, HIGH, N = 1e-6, 1e-2, 500


def draw(sampler: optuna.samplers.BaseSampler, log: bool = True) -> np.ndarray:
    study = optuna.create_study(sampler=sampler)
    values = []
    for _ in range(N):
        trial = study.ask()
        values.append(trial.suggest_float("learning_rate", LOW, HIGH, log=log))
        study.tell(trial, 0.0)  # constant objective: nothing to learn, only the prior shows
    return np.asarray(values)


def qmc_sampler() -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=0, scramble=True)


SAMPLERS = {
    "random": lambda: optuna.samplers.RandomSampler(seed=0),
    "qmc": qmc_sampler,
    # n_random_init above N keeps every draw in the warm-up phase: no GP is ever fitted.
    "bayes": lambda: BayesOptSampler(seed=0, n_random_init=N + 1),
}


@pytest.fixture(scope="module", params=list(SAMPLERS))
def samples(request) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QMC warns about non-power-of-two sample counts
        return draw(SAMPLERS[request.param]())


def test_log10_of_samples_is_uniform(samples):
    assert np.all((samples >= LOW) & (samples <= HIGH))
    lo, hi = np.log10(LOW), np.log10(HIGH)
    assert stats.kstest(np.log10(samples), "uniform", args=(lo, hi - lo)).pvalue > 0.01


def test_control_raw_samples_are_not_linear_uniform(samples):
    # Must fail: proves the KS test above can tell the two scales apart at this N.
    assert stats.kstest(samples, "uniform", args=(LOW, HIGH - LOW)).pvalue < 1e-6


def test_control_linear_param_fails_the_log_test():
    # A sampler that ignored log=True would look like this and must be caught.
    samples = draw(optuna.samplers.RandomSampler(seed=0), log=False)
    lo, hi = np.log10(LOW), np.log10(HIGH)
    assert stats.kstest(np.log10(samples), "uniform", args=(lo, hi - lo)).pvalue < 1e-6


def test_bayes_warm_up_never_fits_a_gp(monkeypatch):
    def no_gp(*args, **kwargs):
        raise AssertionError("GP fitted during the random phase")

    monkeypatch.setattr(BayesOptSampler, "_suggest", no_gp)
    study = optuna.create_study(sampler=BayesOptSampler(seed=0, n_random_init=N + 1))
    study.optimize(lambda t: t.suggest_float("learning_rate", LOW, HIGH, log=True), n_trials=50)
    tags = {t.system_attrs["hpsearch:sampled_by"] for t in study.trials}
    assert tags == {"bayes_opt:random_init"}
