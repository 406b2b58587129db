"""Every use of Optuna's private API, in one place, each with the reason no public call serves.

An Optuna upgrade that renames one of these breaks this module and nothing else; the test of
each entry in :data:`PRIVATE_NAMES` (tests/test_optuna_compat.py) then names what is gone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

#: (owner, attribute) of every private name used below; checked by the tests.
PRIVATE_NAMES: list[tuple[str, str]] = [
    ("optuna.Study", "_storage"),
    ("optuna.Study", "_get_trials"),
    ("optuna.Trial", "_trial_id"),
    ("optuna.Trial", "_suggest"),
    ("optuna.trial.FrozenTrial", "_trial_id"),
    ("optuna.pruners.SuccessiveHalvingPruner", "_min_resource"),
    ("optuna.pruners.HyperbandPruner", "_min_resource"),
    ("optuna.pruners.HyperbandPruner", "_try_initialization"),
    ("optuna.pruners.HyperbandPruner", "_get_bracket_id"),
    *(("optuna.storages.RDBStorage", name) for name in (
        "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
        "_get_stale_trial_ids",
    )),
]

#: What Optuna's cached storage calls on its RDB backend directly, besides the public methods:
#: a storage that retries through a database outage must wrap these too.
RDB_BACKEND_CALLS = tuple(name for owner, name in PRIVATE_NAMES
                          if owner == "optuna.storages.RDBStorage")


def storage_of(study: optuna.Study) -> BaseStorage:
    """System attributes and state changes of a trial we do not hold as a Trial object (a
    dead worker's, a child process's) can only be written through the storage."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage key of a trial; the number is per study, the storage wants the id."""
    return trial._trial_id


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """One parameter from a distribution object: the public ``suggest_*`` take its fields
    one by one and would rebuild the same distribution."""
    return trial._suggest(name, dist)


def fresh_trials(study: optuna.Study, states: Container[TrialState]) -> list[FrozenTrial]:
    """The trials as the storage has them now, past the per-process cache: a sampler's
    constant liar must see trials other workers started a moment ago."""
    return study._get_trials(deepcopy=False, states=states, use_cache=False)


class AutoMinSuccessiveHalving(optuna.pruners.SuccessiveHalvingPruner):
    """Successive halving whose minimum resource is learnt from the study (``first_rung``)
    once it can be: Optuna fixes it at construction or guesses it from one trial."""

    def __init__(self, min_resource: int | None, reduction_factor: int, rate: int,
                 first_rung: Callable[[optuna.Study], int | None]) -> None:
        super().__init__(1 if min_resource is None else min_resource, reduction_factor, rate)
        self._min_resource = min_resource
        self._first_rung = first_rung

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self._min_resource is None:
            self._min_resource = self._first_rung(study)
            if self._min_resource is None:
                return False
        return super().prune(study, trial)


class AutoMinHyperband(optuna.pruners.HyperbandPruner):
    """Hyperband with a learnt minimum resource (as above) and a say in a trial's bracket.

    A subclass, not a wrapper: Optuna recognises a HyperbandPruner and shows the sampler only
    the trials of the bracket a new trial falls in. ``bracket_number(trial)`` is the number
    Optuna hashes into a bracket, so a continuation can stay in its predecessor's bracket.
    """

    def __init__(self, min_resource: int | None, max_resource, reduction_factor: int,
                 first_rung: Callable[[optuna.Study], int | None],
                 bracket_number: Callable[[FrozenTrial], int]) -> None:
        super().__init__(1 if min_resource is None else min_resource, max_resource,
                         reduction_factor)
        self._auto_min = min_resource is None
        self._first_rung, self._bracket_number = first_rung, bracket_number

    def _try_initialization(self, study: optuna.Study) -> None:
        if self._auto_min:
            first = self._first_rung(study)
            if first is None:
                return
            self._min_resource, self._auto_min = first, False
        super()._try_initialization(study)

    def _get_bracket_id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        number = self._bracket_number(trial)
        if number != trial.number:  # a shallow stand-in answering that number
            trial = copy.copy(trial)
            trial.number = number
        return super()._get_bracket_id(study, trial)
