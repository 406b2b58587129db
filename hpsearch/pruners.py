"""study.yaml's `pruner:` as an Optuna pruner; defaults suit a maximised F1 reported per eval."""

from __future__ import annotations

import optuna

from hpsearch import config as c


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
        return P.SuccessiveHalvingPruner(p.min_resource, p.reduction_factor,
                                         p.min_early_stopping_rate)
    if isinstance(p, c.HyperbandPruner):
        return P.HyperbandPruner(p.min_resource, p.max_resource, p.reduction_factor)
    if isinstance(p, c.ThresholdPruner):
        return P.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps,
                                 interval_steps=p.interval_steps)
    if isinstance(p, c.WilcoxonPruner):
        return P.WilcoxonPruner(p_threshold=p.p_threshold, n_startup_steps=p.n_startup_steps)
    if isinstance(p, c.PatientPruner):
        inner = make_pruner(p.wrapped) if p.wrapped is not None else None
        return P.PatientPruner(inner, patience=p.patience, min_delta=p.min_delta)
    raise TypeError(f"unknown pruner config {p!r}")
