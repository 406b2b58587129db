"""study.yaml's `pruner:` as an Optuna pruner; defaults suit a maximised F1 reported per eval.

The trainer reports validation F1 at every evaluation with the optimizer step as Optuna's
``step``, so every resource and warm-up below is counted in optimizer steps. Two consequences
shape the defaults:

* Steps are sparse (one report every ``eval_every`` steps), so a step-based minimum resource of
  1 (Optuna's default for Hyperband) would put the first rungs of every bracket before the first
  evaluation and judge them all on one value. ``min_resource: auto`` is instead the step of the
  first evaluation of a finished trial: the first rung is the first point where trials can be
  compared at all.
* Early F1 is often exactly 0 for every trial (the model predicts only ``O``); median and
  percentile pruning prune only a trial *below* the others, so a tie at 0 does not prune, and a
  few finished trials (``n_startup_trials``) are needed before any verdict.
"""

from __future__ import annotations

import copy

import optuna
from optuna.trial import TrialState

from hpsearch import config as c

#: The number of the first trial of a line of continuations: a continuation carries it on, so
#: anything keyed by trial number (Hyperband's bracket) keeps treating the line as one trial.
A_ORIGIN = "hpsearch:origin"


def origin_of(trial: optuna.trial.FrozenTrial) -> int:
    return int(trial.system_attrs.get(A_ORIGIN, trial.number))


def _first_eval_step(study: optuna.Study) -> int | None:
    """The step of the first report of the finished trials (None until one has finished)."""
    firsts = [
        min(t.intermediate_values)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.intermediate_values
    ]
    return max(1, min(firsts)) if firsts else None


class _SuccessiveHalving(optuna.pruners.SuccessiveHalvingPruner):
    """Successive halving whose ``auto`` minimum resource is the first evaluation's step."""

    def __init__(self, min_resource: int | None, reduction_factor: int, rate: int) -> None:
        super().__init__(1 if min_resource is None else min_resource, reduction_factor, rate)
        self._min_resource = min_resource

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if self._min_resource is None:
            self._min_resource = _first_eval_step(study)
            if self._min_resource is None:
                return False
        return super().prune(study, trial)


class _Hyperband(optuna.pruners.HyperbandPruner):
    """Hyperband whose ``auto`` minimum resource is the first evaluation's step.

    A subclass, not a wrapper: Optuna recognises a HyperbandPruner and shows the sampler only
    the trials of the bracket a new trial falls in.
    """

    def __init__(self, min_resource: int | None, max_resource, reduction_factor: int) -> None:
        super().__init__(1 if min_resource is None else min_resource, max_resource,
                         reduction_factor)
        self._auto_min = min_resource is None

    def _try_initialization(self, study: optuna.Study) -> None:
        if self._auto_min:
            first = _first_eval_step(study)
            if first is None:
                return
            self._min_resource, self._auto_min = first, False
        super()._try_initialization(study)

    def _get_bracket_id(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
        """The bracket of the trial a continuation continues, not of its own new number.

        Optuna hashes the trial number into a bracket; a resumed trial has a new number, so
        it would otherwise be judged mid-curve by another bracket's rungs, and its first part
        would drop out of the bracket it was in.
        """
        origin = origin_of(trial)
        if origin != trial.number:  # a shallow stand-in answering the origin's number
            trial = copy.copy(trial)
            trial.number = origin
        return super()._get_bracket_id(study, trial)


def make_pruner(p) -> optuna.pruners.BasePruner:
    P = optuna.pruners
    if isinstance(p, c.NoPruner):
        return P.NopPruner()
    if isinstance(p, c.MedianPruner):
        return P.MedianPruner(p.n_startup_trials, p.n_warmup_steps, p.interval_steps,
                              n_min_trials=p.n_min_trials)
    if isinstance(p, c.PercentilePruner):
        return P.PercentilePruner(p.percentile, p.n_startup_trials, p.n_warmup_steps,
                                  p.interval_steps, n_min_trials=p.n_min_trials)
    if isinstance(p, c.SuccessiveHalvingPruner):
        auto = p.min_resource == "auto"
        return _SuccessiveHalving(None if auto else p.min_resource, p.reduction_factor,
                                  p.min_early_stopping_rate)
    if isinstance(p, c.HyperbandPruner):
        auto = p.min_resource == "auto"
        return _Hyperband(None if auto else p.min_resource, p.max_resource, p.reduction_factor)
    if isinstance(p, c.ThresholdPruner):
        return P.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps,
                                 interval_steps=p.interval_steps)
    if isinstance(p, c.WilcoxonPruner):
        return P.WilcoxonPruner(p_threshold=p.p_threshold, n_startup_steps=p.n_startup_steps)
    if isinstance(p, c.PatientPruner):
        inner = make_pruner(p.wrapped) if p.wrapped is not None else None
        return P.PatientPruner(inner, patience=p.patience, min_delta=p.min_delta)
    raise TypeError(f"unknown pruner config {p!r}")
