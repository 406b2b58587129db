"""Which RUNNING trials are dead (on this machine the processes say it, elsewhere the
heartbeat), and that a dead trial's checkpoints stay until its continuation has them."""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
import time

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import A_BEAT, A_HOST, A_PID, A_WORKER_PID
from hpsearch.recovery import is_dead
from hpsearch.storage import GRACE_PERIOD


def _running(**attrs) -> FrozenTrial:
    return FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, values=None,
        datetime_start=datetime.datetime.now(), datetime_complete=None,
        params={"learning_rate": 1e-4},
        distributions={"learning_rate": FloatDistribution(1e-5, 1e-3, log=True)},
        user_attrs={}, system_attrs=attrs, intermediate_values={}, trial_id=1,
    )


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_live_worker_owns_its_crashed_trial_even_with_a_late_heartbeat():
    """The worker records the crash as "crashed"; nobody else may call it interrupted first,
    and a slow trial whose heartbeat lagged under load is not run a second time."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as worker:
        try:
            late = time.time() - 10 * GRACE_PERIOD
            t = _running(**{A_HOST: socket.gethostname(), A_PID: _dead_pid(),
                            A_WORKER_PID: worker.pid, A_BEAT: late})
            assert not is_dead(t)
            t.system_attrs[A_PID] = worker.pid  # the trial process itself, alive and late
            t.system_attrs[A_WORKER_PID] = worker.pid
            assert not is_dead(t)
        finally:
            worker.kill()


def test_trial_is_dead_when_its_processes_are_gone_whatever_the_heartbeat():
    t = _running(**{A_HOST: socket.gethostname(), A_PID: _dead_pid(), A_WORKER_PID: _dead_pid(),
                    A_BEAT: time.time()})
    assert is_dead(t)


def test_on_another_machine_only_the_heartbeat_tells():
    t = _running(**{A_HOST: "elsewhere-" + socket.gethostname(), A_PID: _dead_pid(),
                    A_BEAT: time.time()})
    assert not is_dead(t)  # its pid means nothing here
    t.system_attrs[A_BEAT] = time.time() - GRACE_PERIOD - 5
    assert is_dead(t)


def test_finished_trials_are_never_dead():
    t = _running(**{A_HOST: socket.gethostname(), A_PID: _dead_pid()})
    t.state = TrialState.COMPLETE
    assert not is_dead(t)


def test_tidy_keeps_an_interrupted_trials_checkpoints_until_its_continuation_has_them(
        tmp_path, demo_dir):
    """Between a trial being marked interrupted and its continuation being queued, and between
    the continuation's claim and its start, another worker finishing a trial tidies the study:
    the checkpoints the continuation resumes from must still be there."""
    import optuna
    from conftest import study_config

    from hpsearch.attrs import A_DIR, A_REASON, INTERRUPTED
    from hpsearch.export import tidy
    from hpsearch.opening import open_study
    from hpsearch.optuna_compat import storage_of, trial_id
    from hpsearch.recovery import queue_continuation
    from hpsearch.trainer.trial_dir import checkpoints, has_checkpoint, trial_dir

    cfg = study_config(tmp_path, demo_dir)
    study = open_study(cfg, create=True)
    old = study.ask({"learning_rate": FloatDistribution(1e-5, 1e-3, log=True)})
    folder = trial_dir(cfg.out, old.number)
    (checkpoints(folder) / "step-00000003").mkdir(parents=True)
    storage = storage_of(study)
    storage.set_trial_system_attr(trial_id(old), A_DIR, str(folder))
    storage.set_trial_system_attr(trial_id(old), A_REASON, INTERRUPTED)
    study.tell(old, state=TrialState.FAIL)

    tidy(study, cfg)  # marked interrupted, continuation not queued yet
    assert has_checkpoint(folder)
    queue_continuation(study, study.trials[0])
    tidy(study, cfg)  # queued
    assert has_checkpoint(folder)
    study.sampler = optuna.samplers.RandomSampler(seed=0)
    cont = study.ask()  # claimed, not started
    tidy(study, cfg)
    assert has_checkpoint(folder)
    study.tell(cont, 0.5)  # it finished (with a checkpoint of its own): the old one can go
    tidy(study, cfg)
    assert not has_checkpoint(folder)


pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                                        "ignore:Heartbeat of storage")
