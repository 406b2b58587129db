"""Is the winner real? The top settings trained again with other seeds, and the winner picked
by what holds up.

Fine-tuning F1 moves with the trainer's seed (data order, dropout, the head's initial weights)
as much as with nearby learning rates, so the search's best single trial is often a lucky seed.
With ``confirm: {top_k, seeds}`` the ``top_k`` best search trials (the finalists) are trained
``seeds`` more times each, with trainer seeds ``seed + 1 .. seed + seeds``. Those confirmation
trials are ordinary trials of the study (resumed, fused, reported like any), marked with the
trial they confirm and their seed, and they do not count toward ``n_trials``.

They are queued once the search is over (no search trial left to run), under the study lock,
and only the (finalist, seed) pairs not in the study yet: raising ``top_k`` later runs what is
new. The winner is the finalist whose values over its seeds are best by ``confirm.select``
(the mean, or the worst case), and its model is the best of its seeds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import A_CONFIRMS, A_OVERRIDES, A_SEED, counts_toward_total
from hpsearch.config import StudyConfig


def is_confirmation(t: FrozenTrial) -> bool:
    return A_CONFIRMS in t.system_attrs


def search_done(trials: list[FrozenTrial], n_trials: int) -> bool:
    """Every search trial is in and finished: the finalists can no longer change."""
    searched = [t for t in trials if not is_confirmation(t)]
    if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in searched):
        return False
    return sum(counts_toward_total(t) for t in searched) >= n_trials


def _ordered(trials: list[FrozenTrial], cfg: StudyConfig) -> list[FrozenTrial]:
    return sorted(trials, key=lambda t: t.value, reverse=cfg.direction == "maximize")


def finalists(trials: list[FrozenTrial], cfg: StudyConfig) -> list[FrozenTrial]:
    """The ``top_k`` best completed search trials, best first."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value) and not is_confirmation(t)]
    return _ordered(done, cfg)[:cfg.confirm.top_k] if cfg.confirm else []


def base_seed(cfg: StudyConfig) -> int:
    return cfg.trainer.seed if cfg.trainer.seed is not None else cfg.seed


def queue_confirmations(study: optuna.Study, cfg: StudyConfig) -> int:
    """Queue the (finalist, seed) runs the study does not have yet; how many. Call it under
    the study lock, so that two workers finishing the search together queue them once."""
    if cfg.confirm is None:
        return 0
    trials = study.get_trials(deepcopy=False)
    if not search_done(trials, cfg.n_trials):
        return 0
    have = {(t.system_attrs[A_CONFIRMS], t.system_attrs.get(A_SEED)) for t in trials
            if is_confirmation(t)}
    added = 0
    for f in finalists(trials, cfg):
        for i in range(1, cfg.confirm.seeds + 1):
            seed = base_seed(cfg) + i
            if (f.number, seed) in have:
                continue
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=f.params, distributions=f.distributions,
                system_attrs={"fixed_params": f.params, A_CONFIRMS: f.number, A_SEED: seed,
                              A_OVERRIDES: {"seed": seed}}))
            added += 1
    return added


@dataclass
class Finalist:
    """One finalist setting and what its seeds gave."""

    trial: FrozenTrial  # the search trial
    runs: list[FrozenTrial] = field(default_factory=list)  # it and its completed confirmations

    @property
    def values(self) -> list[float]:
        return [t.value for t in self.runs]

    @property
    def seeds(self) -> list[int | None]:
        return [t.system_attrs.get(A_SEED) for t in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def score(self, select: str, maximize: bool) -> float:
        """What the winner is chosen by: the mean, or the worst of its seeds."""
        if select == "mean":
            return self.mean
        return min(self.values) if maximize else max(self.values)

    def best_run(self, maximize: bool) -> FrozenTrial:
        pick = max if maximize else min
        return pick(self.runs, key=lambda t: t.value)


def standings(trials: list[FrozenTrial], cfg: StudyConfig) -> list[Finalist]:
    """The finalists with their seeds' values, the winner first (empty without ``confirm``)."""
    if cfg.confirm is None:
        return []
    out = []
    for f in finalists(trials, cfg):
        runs = [f] + [t for t in trials if t.system_attrs.get(A_CONFIRMS) == f.number
                      and t.state == TrialState.COMPLETE and t.value is not None]
        out.append(Finalist(f, runs))
    maximize = cfg.direction == "maximize"
    return sorted(out, key=lambda s: s.score(cfg.confirm.select, maximize), reverse=maximize)


def chosen(study: optuna.Study, cfg: StudyConfig) -> FrozenTrial | None:
    """The trial whose model is the study's best: the search's best trial, or with ``confirm``
    the best seed of the winning finalist."""
    trials = study.get_trials(deepcopy=False)
    table = standings(trials, cfg)
    if table:
        return table[0].best_run(cfg.direction == "maximize")
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    return _ordered(done, cfg)[0] if done else None


def verdict(table: list[Finalist]) -> str | None:
    """Whether the winner's lead over the runner-up is more than the seeds move either."""
    if len(table) < 2:
        return None
    first, second = table[0], table[1]
    lead = 100 * abs(first.mean - second.mean)
    spread = 100 * max(first.std, second.std)
    if len(first.values) < 2 or len(second.values) < 2:
        return (f"lead {lead:.1f} points; the seed spread is not known yet (confirmation runs "
                "still to come)")
    word = "distinguishable" if lead > spread else "not distinguishable"
    return f"lead {lead:.1f} points, seed spread {spread:.1f} points: {word}"
