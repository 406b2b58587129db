"""Many workers, one study: exact trial counts on SQLite, journal and a real PostgreSQL server;
a killed worker's trial resumed by a survivor; concurrent asks that never propose one point twice.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path

import pg
import pytest
from conftest import cli, hpsearch, spawn_hpsearch, study_config, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.attrs import (
    A_DIR,
    A_REASON,
    A_RETRY_OF,
    A_WORKER,
    INTERRUPTED,
)
from hpsearch.config import load_study
from hpsearch.opening import open_study
from hpsearch.space import suggest
from hpsearch.study import start_study
from hpsearch.trainer.checkpoint import list_checkpoints
from hpsearch.trial import claim_trial
from hpsearch.workers import gpu_slots

# Claims outside Study.optimize: Optuna's heartbeat warning is expected and says nothing here.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def _race(n: int, claim) -> list:
    """``claim()`` in n threads released together; every claim's result, none lost: a thread
    that raised fails the test with its exception instead of leaving a result out."""
    barrier = threading.Barrier(n)
    results, errors = [], []

    def run() -> None:
        barrier.wait()
        try:
            results.append(claim())
        except BaseException as e:  # noqa: BLE001  (handed to the test below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a claim hung"
    if errors:
        raise errors[0]
    assert len(results) == n
    return results


def _assert_exact(trials, n: int) -> None:
    """n finished trials, numbered 0..n-1, nothing lost, nothing run twice."""
    assert [t.number for t in trials] == list(range(n))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(points) == n  # no two trials with the same parameters
    dirs = {t.system_attrs[A_DIR] for t in trials}
    assert len(dirs) == n and all(Path(d, "metrics.jsonl").exists() for d in dirs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_four_workers_run_exactly_n_trials(kind, tmp_path, demo_dir, request):
    env = {}
    storage = None
    if kind == "journal":
        storage = f"journal:{tmp_path / 'study.journal'}"
    elif kind == "postgresql":
        server = request.getfixturevalue("pg_server")
        # The password comes from the environment and must never be printed.
        env = {"HP_TEST_PG_PASSWORD": pg.PASSWORD}
        storage = server.url(password="${HP_TEST_PG_PASSWORD}")
    # A trial of a few tenths of a second: what is measured here is the orchestration.
    path = write_study(tmp_path, demo_dir, name=f"four-{kind}", n_trials=16, storage=storage,
                       trainer={"train_limit": 40, "val_limit": 20, "max_epochs": 1})
    # Two GPU ids, two workers each: the pinning is visible to the trials even on CPU.
    r = hpsearch("run", str(path), "--gpus", "0,1", "--trials-per-gpu", "2", env=env)
    assert r.returncode == 0, r.stderr
    assert "4 worker(s) on GPUs 0,1" in r.stdout and "16/16 trials" in r.stdout
    assert pg.PASSWORD not in r.stdout + r.stderr
    if kind == "postgresql":
        assert f"{pg.USER}:***@127.0.0.1" in r.stdout

    trials = trials_of(path, env=env)
    _assert_exact(trials, 16)
    workers = {t.system_attrs[A_WORKER] for t in trials}
    assert len(workers) == 4  # every worker process took trials
    seen = {t.system_attrs[A_WORKER]: t.system_attrs["hpsearch:cuda_visible_devices"]
            for t in trials}
    assert sorted(seen.values()) == ["0", "0", "1", "1"]

    if kind == "postgresql":  # as a second machine would join: nothing left to run
        again = hpsearch("worker", str(path), "--workers", "2", env=env)
        assert again.returncode == 0, again.stderr
        assert "nothing to do: 16/16" in again.stdout
        assert len(trials_of(path, env=env)) == 16


@pytest.mark.slow
def test_ctrl_c_checkpoints_every_running_trial_and_the_next_run_resumes(tmp_path, demo_dir):
    # Long enough that neither trial can finish before both have checkpointed: ~150 steps of a
    # few milliseconds, where the second worker may start its trial half a second after the
    # first (one epoch, 25 steps, was over before the second one began on a quiet machine).
    slow = {"train_limit": 300, "max_tokens": 256, "max_epochs": 6, "checkpoint_every": 3,
            "val_limit": 20}
    path = write_study(tmp_path, demo_dir, name="ctrl-c", n_trials=2, trainer=slow)
    proc = spawn_hpsearch("run", str(path), "--workers", "2")
    dirs = [tmp_path / "out" / "trials" / f"trial-{i:04d}" / "checkpoints" for i in (0, 1)]
    deadline = time.time() + 120
    while not all(list_checkpoints(d) for d in dirs):
        assert time.time() < deadline, "the trials did not checkpoint in time"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the foreground process
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    assert all(t.system_attrs[A_REASON] == INTERRUPTED for t in trials[:2])
    stopped = {t.number: int(list_checkpoints(dirs[t.number])[-1].name.split("-")[1])
               for t in trials[:2]}

    r = cli("run", str(path))  # in this process: what the next run finds is the point
    assert r.exit_code == 0, r.stderr
    trials = trials_of(path)
    assert len(trials) == 4 and [t.state for t in trials[2:]] == [TrialState.COMPLETE] * 2
    for cont in trials[2:]:
        old = trials[cont.system_attrs[A_RETRY_OF]]
        assert cont.params == old.params
        assert cont.user_attrs["resumed_from_step"] == stopped[old.number]


def test_concurrent_asks_with_bayes_see_each_other(tmp_path, demo_dir, monkeypatch):
    """Six workers ask at the same instant after the GP warm-up: each GP fit counts the
    trials asked before it as pending (constant liar), and no two points coincide."""
    from hpsearch.backends.bayes import BayesOptSampler

    cfg = study_config(tmp_path, demo_dir, name="bayes-par", n_trials=20,
                       backend={"name": "bayes", "n_random_init": 3})
    study = start_study(cfg)
    for lr in (1e-4, 1e-3, 1e-2):  # finished trials: the GP has something to fit
        study.enqueue_trial({"learning_rate": lr, "weight_decay": 1e-2})
        t = study.ask()
        suggest(t, cfg.search_space)
        study.tell(t, -abs(math.log10(lr) + 2.5))

    pending_seen: list[int] = []
    observations = BayesOptSampler._observations

    def spy(self, *args):
        x, y, pending = observations(self, *args)
        pending_seen.append(len(pending))
        return x, y, pending

    monkeypatch.setattr(BayesOptSampler, "_observations", spy)
    owns = [open_study(cfg) for _ in range(6)]  # a study object per worker, as processes have
    claimed = _race(6, lambda: claim_trial(owns.pop(), cfg)[0])
    assert all(t is not None for t in claimed)
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 6
    assert all(t.system_attrs["hpsearch:sampled_by"] == "bayes_opt" for t in running)
    assert sorted(pending_seen) == list(range(6))  # the k-th asker saw the k-1 before it
    points = sorted((t.params["learning_rate"], t.params["weight_decay"]) for t in running)
    for a, b in zip(points, points[1:], strict=False):
        assert max(abs(a[0] / b[0] - 1), abs(a[1] / b[1] - 1)) > 1e-3, points


def test_claims_stop_at_n_trials_whoever_asks(tmp_path, demo_dir):
    """Eight simultaneous claims on a study of three: three trials, five told there is none."""
    cfg = study_config(tmp_path, demo_dir, name="race", n_trials=3)
    start_study(cfg)
    owns = [open_study(cfg) for _ in range(8)]
    got = _race(8, lambda: claim_trial(owns.pop(), cfg)[0])
    assert sum(t is not None for t in got) == 3
    assert len(trials_of(cfg)) == 3


@pytest.mark.slow
def test_gpu_slots_cycle_the_gpus_and_a_bad_list_or_missing_study_exits_2(tmp_path, demo_dir):
    assert gpu_slots(["0", "1"], None, 2) == ["0", "1", "0", "1"]
    assert gpu_slots(["3"], 3, 1) == ["3", "3", "3"]
    assert gpu_slots([], 2, 1) == [None, None]
    path = write_study(tmp_path, demo_dir)
    r = cli("run", str(path), "--gpus", "0,,1")
    assert r.exit_code == 2 and r.stderr.startswith("error: --gpus")
    r = cli("worker", str(path))
    assert r.exit_code == 2 and "no study named 't'" in r.stderr


@pytest.mark.slow
def test_a_worker_joins_a_study_another_process_runs_and_trains_its_share(tmp_path, demo_dir):
    """`hpsearch worker` on a second terminal (or machine) beside `hpsearch run`: both take
    trials from the one study, and together they stop at exactly n_trials."""
    path = write_study(tmp_path, demo_dir, n_trials=6,  # about a second a trial
                       trainer={"train_limit": 300, "val_limit": 20, "max_epochs": 2,
                                "max_tokens": 128})
    start_study(load_study(path))  # as `run` creates it; `worker` only joins one that exists
    first = spawn_hpsearch("run", str(path))
    joined = spawn_hpsearch("worker", str(path))
    out, err = first.communicate(timeout=300)
    j_out, j_err = joined.communicate(timeout=300)
    assert first.returncode == 0 and joined.returncode == 0, err + j_err
    trials = trials_of(path)
    _assert_exact(trials, 6)
    by: dict[str, list[int]] = {}
    for t in trials:
        by.setdefault(t.system_attrs[A_WORKER].split()[0], []).append(t.number)
    assert len(by) == 2, (by, j_out)  # the run and the worker each trained some
