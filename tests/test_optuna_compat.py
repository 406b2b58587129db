"""Each private Optuna name hpsearch relies on still exists in the installed Optuna.

An upgrade that removes one fails here, naming it, instead of deep inside a study run.
"""

from __future__ import annotations

import importlib

import optuna
import pytest

from hpsearch import optuna_compat


def _owner(dotted: str):
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("owner,name", optuna_compat.PRIVATE_NAMES,
                         ids=[f"{o}.{n}" for o, n in optuna_compat.PRIVATE_NAMES])
def test_private_optuna_name_is_still_there(owner, name):
    cls = _owner(owner)
    if name.startswith("_") and not callable(getattr(cls, name, None)):
        # Instance attributes: look for them on a real instance.
        instance = _instance(cls)
        present = hasattr(instance, name)
    else:
        present = hasattr(cls, name)
    assert present, (
        f"optuna {optuna.__version__}: {owner}.{name} is gone; hpsearch uses it in "
        "hpsearch/optuna_compat.py; adapt that module to the new Optuna"
    )


def _instance(cls):
    if issubclass(cls, optuna.pruners.BasePruner):
        return cls()
    study = optuna.create_study()
    if cls is optuna.Study:
        return study
    trial = study.ask()
    if cls is optuna.Trial:
        return trial
    return study.trials[0]  # a FrozenTrial


def test_compat_calls_work_on_a_real_study():
    """The wrappers do what the driver needs: ids, suggestions, uncached reads, storage writes."""
    study = optuna.create_study()
    trial = study.ask()
    value = optuna_compat.suggest(trial, "lr", optuna.distributions.FloatDistribution(
        1e-5, 1e-3, log=True))
    assert 1e-5 <= value <= 1e-3 and trial.params == {"lr": value}
    tid = optuna_compat.trial_id(trial)
    optuna_compat.storage_of(study).set_trial_system_attr(tid, "k", 1)
    (fresh,) = optuna_compat.fresh_trials(study, (optuna.trial.TrialState.RUNNING,))
    assert fresh.system_attrs["k"] == 1 and optuna_compat.trial_id(fresh) == tid


def test_rdb_backend_calls_exist_on_rdb_storage():
    for name in optuna_compat.RDB_BACKEND_CALLS:
        assert callable(getattr(optuna.storages.RDBStorage, name, None)), (
            f"optuna {optuna.__version__}: RDBStorage.{name} is gone; the retrying storage "
            "(hpsearch/storage.py) wraps it: drop or rename it in hpsearch/optuna_compat.py"
        )


def test_hyperband_bracket_follows_the_number_given():
    """A continuation stays in its origin's bracket: the hook Optuna calls is ours."""
    pruner = optuna_compat.AutoMinHyperband(1, 9, 3, lambda s: 1, lambda t: 0)
    study = optuna.create_study(pruner=pruner)
    for _ in range(6):
        study.ask()
    trials = study.get_trials(deepcopy=False)
    brackets = {pruner._get_bracket_id(study, t) for t in trials}
    assert len(brackets) == 1
