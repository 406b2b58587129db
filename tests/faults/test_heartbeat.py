"""A trial whose machine died: its heartbeat goes silent, and any run takes it over.

From this machine a trial of another host cannot be asked about its processes; only its
heartbeat tells. Its folder is on that host's disk (an ``output_dir`` that is not shared), so its
continuation starts again from step 0, with the same parameters.
"""

from __future__ import annotations

import socket
import time

import pytest
from conftest import ONE_EPOCH, cli, study_config, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.attrs import (
    A_BEAT,
    A_DIR,
    A_HOST,
    A_PID,
    A_REASON,
    A_RETRY_OF,
    A_WORKER_PID,
    INTERRUPTED,
    counts_toward_total,
)
from hpsearch.opening import open_study
from hpsearch.optuna_compat import storage_of, trial_id
from hpsearch.space import suggest
from hpsearch.storage import GRACE_PERIOD

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage",
                                        "ignore::optuna.exceptions.ExperimentalWarning")


def test_a_silent_trial_of_another_host_is_taken_over_from_step_0(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=2, trainer=ONE_EPOCH)
    cfg = study_config(tmp_path, demo_dir, n_trials=2, trainer=ONE_EPOCH)
    study = open_study(cfg, create=True)
    gone = study.ask()
    params = suggest(gone, cfg.search_space)
    storage = storage_of(study)
    for key, value in ((A_HOST, "elsewhere-" + socket.gethostname()), (A_PID, 4242),
                       (A_WORKER_PID, 4242), (A_BEAT, time.time() - GRACE_PERIOD - 30),
                       (A_DIR, "/nonexistent/gpu-node-7/trials/trial-0000")):
        storage.set_trial_system_attr(trial_id(gone), key, value)

    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    trials = trials_of(path)
    old = trials[gone.number]
    assert old.state == TrialState.FAIL and old.system_attrs[A_REASON] == INTERRUPTED
    (cont,) = [t for t in trials if t.system_attrs.get(A_RETRY_OF) == gone.number]
    assert cont.state == TrialState.COMPLETE and cont.params == params
    assert cont.user_attrs.get("resumed_from_step") is None  # nothing to resume from: step 0
    counted = [t for t in trials if counts_toward_total(t)]
    assert len(counted) == 2 and all(t.state == TrialState.COMPLETE for t in counted)
