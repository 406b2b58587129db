"""Optuna sampler backed by ``bayes_opt`` (the "bayes" backend).

Why an Optuna sampler and not ``BayesianOptimization.maximize``: the study database, pruning,
resume and the plots all come from Optuna. Wrapping bayes_opt as a sampler keeps one study
format for every backend; bayes_opt only decides *where* to evaluate next.

Design:

* Stateless ask/tell. Every ``sample_relative`` call rebuilds a ``BayesianOptimization`` from
  the trials in storage, ``register()``-s them and asks ``suggest()`` for one point. Nothing
  lives in the sampler between trials, so a resumed study, a second worker process or a
  restarted one all see the same model as a sampler that never stopped. Refitting a small GP
  is cheap next to training an NER model.
* Search-space mapping. The GP sees every parameter on the unit interval: ``log=True``
  parameters as log10(value), others linearly, then scaled to [0, 1]. Log parameters need the
  log10 view because learning rates spread over decades would otherwise be squeezed against
  the upper bound; the scaling matters because bayes_opt's Matern kernel has a single length
  scale, which cannot fit a batch size in [8, 512] and a log10 learning rate in [-6, -1] at
  once. Ints (and stepped floats) get their bounds widened by half a step so every grid value
  owns an equally wide slice, and the suggestion is rounded back to the grid.
* Warm-up. Until ``n_random_init`` trials are registered the point is drawn by us, uniformly
  in that unit (log10) space, from a RandomState seeded by (seed, trial number). This keeps
  the warm-up reproducible and log-uniform without paying for a GP fit.
* Pruned trials. By default a pruned trial is registered with its last reported intermediate
  value. That value is pessimistic (the run stopped before converging), which is what we want:
  if pruned trials were hidden from the GP it would keep proposing the region that got pruned,
  and the pruner would keep killing those trials. ``pruned_trials="ignore"`` hides them, for
  objectives whose intermediate values are not comparable to final ones.
* Parallel workers. Running trials are registered with a "constant liar" value (the worst
  target seen so far) so that workers asking at the same time are pushed to different points.
  The sampled params are also written to a system attr, so a running trial is visible to the
  others before it has called every ``suggest_*``.
* bayes_opt maximises; for ``direction="minimize"`` targets are negated.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import optuna
from bayes_opt import BayesianOptimization
from bayes_opt.acquisition import (
    AcquisitionFunction,
    ExpectedImprovement,
    ProbabilityOfImprovement,
    UpperConfidenceBound,
)
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from threadpoolctl import threadpool_limits

from hpsearch.optuna_compat import fresh_trials, storage_of
from hpsearch.optuna_compat import trial_id as compat_trial_id

__all__ = ["BayesOptSampler"]

_logger = optuna.logging.get_logger(__name__)

SAMPLED_BY_KEY = "hpsearch:sampled_by"
ACQUISITION_KEY = "hpsearch:acquisition"
RELATIVE_PARAMS_KEY = "hpsearch:relative_params"
SAMPLED_BY_GP = "bayes_opt"
SAMPLED_BY_RANDOM_INIT = "bayes_opt:random_init"
SAMPLED_BY_FALLBACK = "bayes_opt:random_fallback"

_ACQUISITIONS = ("ucb", "ei", "poi")
_PRUNED_POLICIES = ("last_value", "ignore")
# Shrinks the half-step widening so a point on the outer bound still rounds to low/high.
_WIDEN = 1.0 - 1e-6


class _Axis:
    """One parameter's map between Optuna values and the GP's [0, 1] coordinate."""

    def __init__(self, dist: FloatDistribution | IntDistribution) -> None:
        self.dist = dist
        half = 0.5 * dist.step * _WIDEN if dist.step is not None else 0.0
        lo, hi = dist.low - half, dist.high + half
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if dist.log else (lo, hi)

    def encode(self, value: float) -> float:
        t = math.log10(value) if self.dist.log else float(value)
        return min(max((t - self.lo) / (self.hi - self.lo), 0.0), 1.0)

    def decode(self, u: float) -> int | float:
        dist = self.dist
        t = self.lo + min(max(float(u), 0.0), 1.0) * (self.hi - self.lo)
        value = 10.0**t if dist.log else t
        if dist.step is not None:
            value = dist.low + round((value - dist.low) / dist.step) * dist.step
        value = min(max(value, dist.low), dist.high)
        return int(round(value)) if isinstance(dist, IntDistribution) else float(value)


class BayesOptSampler(BaseSampler):
    """Gaussian-process sampler that delegates the modelling to ``bayes_opt``.

    Exists so that the "bayes" backend produces an ordinary Optuna study (see module docstring).
    Categorical params, and numeric params not yet seen in every finished trial, fall back to a
    seeded ``RandomSampler``: bayes_opt's categorical support is experimental and a GP cannot
    learn from a param that finished trials do not share.
    """

    def __init__(
        self,
        *,
        acquisition: str = "ucb",
        kappa: float = 2.576,
        xi: float = 0.01,
        exploration_decay: float | None = None,
        exploration_decay_delay: int | None = None,
        n_random_init: int = 5,
        pruned_trials: str = "last_value",
        constant_liar: bool = True,
        seed: int | None = None,
    ) -> None:
        if acquisition not in _ACQUISITIONS:
            raise ValueError(f"acquisition must be one of {_ACQUISITIONS}, got {acquisition!r}")
        if pruned_trials not in _PRUNED_POLICIES:
            raise ValueError(
                f"pruned_trials must be one of {_PRUNED_POLICIES}, got {pruned_trials!r}"
            )
        if n_random_init < 0:
            raise ValueError(f"n_random_init must be >= 0, got {n_random_init}")
        self._acquisition = acquisition
        self._kappa = kappa
        self._xi = xi
        self._exploration_decay = exploration_decay
        self._exploration_decay_delay = exploration_decay_delay
        self._n_random_init = n_random_init
        self._pruned_trials = pruned_trials
        self._constant_liar = constant_liar
        self._seed = _fresh_seed() if seed is None else seed
        # Pruned trials are part of the model unless ignored, so they also shape the space.
        self._search_space = IntersectionSearchSpace(include_pruned=pruned_trials != "ignore")
        self._make_acquisition(0)  # fail on bad kappa/xi/decay now, not at trial 6

    def reseed_rng(self) -> None:
        # Called for n_jobs > 1 copies: without a new derivation seed every copy would draw the
        # same warm-up points and the same acquisition restarts.
        self._seed = _fresh_seed()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        # Only numeric ranges are modelled: a single-valued param carries no information.
        return {
            name: dist
            for name, dist in self._search_space.calculate(study).items()
            if isinstance(dist, (FloatDistribution, IntDistribution)) and dist.low < dist.high
        }

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        # Seeded by (seed, trial number, parameter), not one stream: the first trials of a study
        # are drawn before any has finished, often by several processes (workers, a fused
        # array's K claims) that each built this sampler afresh; one stream per process would
        # give them all the same point.
        seed = np.random.SeedSequence(
            [self._seed, trial.number, zlib.crc32(param_name.encode())]).generate_state(1)[0]
        return RandomSampler(seed=int(seed)).sample_independent(
            study, trial, param_name, param_distribution)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._raise_error_if_multi_objective(study)
        storage, trial_id = storage_of(study), compat_trial_id(trial)
        storage.set_trial_system_attr(trial_id, ACQUISITION_KEY, self._acquisition)
        if not search_space:
            # Nothing finished yet (or nothing numeric): every param comes from RandomSampler.
            storage.set_trial_system_attr(trial_id, SAMPLED_BY_KEY, SAMPLED_BY_RANDOM_INIT)
            return {}

        x, y, pending = self._observations(study, trial, search_space)
        rng = self._rng(trial)
        u = rng.uniform(size=len(search_space))  # drawn first so the fallback is seeded too
        sampled_by = SAMPLED_BY_RANDOM_INIT
        if len(y) > 0 and len(y) >= self._n_random_init:
            try:
                u = self._suggest(list(search_space), x, y, pending, rng)
                sampled_by = SAMPLED_BY_GP
            except Exception as exc:  # a broken GP must never take the study down
                _logger.warning(
                    f"bayes_opt failed on trial {trial.number} ({exc!r}); "
                    "using a random point instead."
                )
                sampled_by = SAMPLED_BY_FALLBACK

        params = {
            name: _Axis(dist).decode(ui)
            for (name, dist), ui in zip(search_space.items(), u, strict=True)
        }
        storage.set_trial_system_attr(trial_id, SAMPLED_BY_KEY, sampled_by)
        storage.set_trial_system_attr(trial_id, RELATIVE_PARAMS_KEY, params)
        return params

    def _observations(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(x, y, pending)``: what the GP is fitted on, in its own coordinates.

        ``x`` holds finished trials on [0, 1], ``y`` their targets with the sign bayes_opt
        maximises, ``pending`` the running trials (other than ``trial``) that will receive the
        constant-liar value. Kept separate from ``sample_relative`` so that which trials the
        model sees can be checked directly.
        """
        axes = {name: _Axis(dist) for name, dist in search_space.items()}
        sign = -1.0 if study.direction == StudyDirection.MINIMIZE else 1.0
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        xs: list[list[float]] = []
        ys: list[float] = []
        pending: list[list[float]] = []
        for t in fresh_trials(study, states):
            if t.number == trial.number:
                continue
            if t.state == TrialState.RUNNING:
                params = {**t.system_attrs.get(RELATIVE_PARAMS_KEY, {}), **t.params}
                if self._constant_liar and axes.keys() <= params.keys():
                    pending.append([axes[n].encode(params[n]) for n in axes])
                continue
            if any(t.distributions.get(n) != d for n, d in search_space.items()):
                continue
            value = self._target(t)
            if value is None or not math.isfinite(value):
                continue
            xs.append([axes[n].encode(t.params[n]) for n in axes])
            ys.append(sign * value)
        dim = len(axes)
        return (
            np.asarray(xs, dtype=float).reshape(-1, dim),
            np.asarray(ys, dtype=float),
            np.asarray(pending, dtype=float).reshape(-1, dim),
        )

    def _target(self, t: FrozenTrial) -> float | None:
        if t.state == TrialState.COMPLETE:
            return t.value
        if self._pruned_trials == "last_value" and t.intermediate_values:
            return t.intermediate_values[max(t.intermediate_values)]
        return None

    def _suggest(
        self,
        names: list[str],
        x: np.ndarray,
        y: np.ndarray,
        pending: np.ndarray,
        rng: np.random.RandomState,
    ) -> np.ndarray:
        optimizer = BayesianOptimization(
            f=None,
            pbounds={name: (0.0, 1.0) for name in names},
            acquisition_function=self._make_acquisition(len(y) - self._n_random_init),
            random_state=rng,
            verbose=0,
            allow_duplicate_points=True,
        )
        # Repeated points (ints, re-runs) are averaged rather than registered twice: bayes_opt
        # prints a line per duplicate, and the mean is what the GP would estimate anyway.
        rows: dict[tuple[float, ...], list[float]] = {}
        for xi, yi in zip(x, y, strict=True):
            rows.setdefault(tuple(xi), []).append(float(yi))
        lie = float(np.min(y))
        for xi in pending:
            rows.setdefault(tuple(xi), [lie])
        for key, targets in rows.items():
            optimizer.register(
                params=dict(zip(names, key, strict=True)), target=float(np.mean(targets))
            )
        # The GP has tens of rows: threaded BLAS only adds contention with the trainer (and on a
        # busy 2-core box made each suggestion ~4x slower).
        with threadpool_limits(limits=1):
            suggestion = optimizer.suggest()
        return np.clip([float(suggestion[name]) for name in names], 0.0, 1.0)

    def _make_acquisition(self, n_previous_steps: int) -> AcquisitionFunction:
        """Build the acquisition as if it had already made ``n_previous_steps`` suggestions.

        bayes_opt decays kappa/xi inside the object after each ``suggest()``; since we rebuild
        it per trial, the decay is replayed here so ``exploration_decay`` still means something.
        """
        decay = dict(
            exploration_decay=self._exploration_decay,
            exploration_decay_delay=self._exploration_decay_delay,
        )
        # No random_state here: bayes_opt 3 deprecates it on acquisitions (it is ignored).
        acq: AcquisitionFunction
        if self._acquisition == "ucb":
            acq = UpperConfidenceBound(kappa=self._kappa, **decay)
        elif self._acquisition == "ei":
            acq = ExpectedImprovement(xi=self._xi, **decay)
        else:
            acq = ProbabilityOfImprovement(xi=self._xi, **decay)
        if self._exploration_decay is not None:
            for i in range(1, n_previous_steps + 1):
                acq.i = i
                acq.decay_exploration()
        return acq

    def _rng(self, trial: FrozenTrial) -> np.random.RandomState:
        # Derived per trial, not advanced per call, so a trial's point does not depend on how
        # many other trials this process happened to sample (resume, several workers).
        state = np.random.SeedSequence([self._seed, trial.number]).generate_state(4)
        return np.random.RandomState(state)


def _fresh_seed() -> int:
    return int(np.random.SeedSequence().generate_state(1)[0])
