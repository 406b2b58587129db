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

import optuna
from optuna.trial import TrialState

from hpsearch import config as c
from hpsearch.attrs import origin_of
from hpsearch.optuna_compat import AutoMinHyperband, AutoMinSuccessiveHalving


def _first_eval_step(study: optuna.Study) -> int | None:
    """The step of the first report of the finished trials (None until one has finished)."""
    firsts = [
        min(t.intermediate_values)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.intermediate_values
    ]
    return max(1, min(firsts)) if firsts else None


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
        return AutoMinSuccessiveHalving(None if auto else p.min_resource, p.reduction_factor,
                                        p.min_early_stopping_rate, _first_eval_step)
    if isinstance(p, c.HyperbandPruner):
        auto = p.min_resource == "auto"
        # A continuation stays in the bracket of the trial it continues: a resumed trial has a
        # new number, and would otherwise be judged mid-curve by another bracket's rungs.
        return AutoMinHyperband(None if auto else p.min_resource, p.max_resource,
                                p.reduction_factor, _first_eval_step, origin_of)
    if isinstance(p, c.ThresholdPruner):
        return P.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps,
                                 interval_steps=p.interval_steps)
    if isinstance(p, c.WilcoxonPruner):
        return P.WilcoxonPruner(p_threshold=p.p_threshold, n_startup_steps=p.n_startup_steps)
    if isinstance(p, c.PatientPruner):
        inner = make_pruner(p.wrapped) if p.wrapped is not None else None
        return P.PatientPruner(inner, patience=p.patience, min_delta=p.min_delta)
    raise TypeError(f"unknown pruner config {p!r}")
