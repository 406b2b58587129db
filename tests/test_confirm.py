"""confirm: the top settings trained again with other seeds; the winner is what holds up."""

from __future__ import annotations

import json
import signal
import statistics
import time

import pytest
import yaml
from conftest import ONE_EPOCH, cli, spawn_hpsearch, study_config, trials_of, write_study
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch.attrs import A_CONFIRMS, A_SEED, counts_toward_total
from hpsearch.confirm import standings, verdict
from hpsearch.opening import open_study

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage",
                                        "ignore::optuna.exceptions.ExperimentalWarning")

#: Six settings across the demo's learning-rate range, in a fixed order.
POINTS = [{"learning_rate": lr, "weight_decay": 1e-3}
          for lr in (8e-3, 3e-4, 5e-3, 1e-4, 2e-3, 6e-4)]


def _confirming(tmp_path, demo_dir, top_k=2, seeds=2, trainer=None, **over):
    return write_study(tmp_path, demo_dir, n_trials=6, enqueue=POINTS,
                       confirm={"top_k": top_k, "seeds": seeds},
                       trainer=trainer or {**ONE_EPOCH, "max_epochs": 2}, **over)


def _check_confirmed(trials, top_k: int, seeds: int) -> None:
    search = [t for t in trials if A_CONFIRMS not in t.system_attrs]
    confirms = [t for t in trials if A_CONFIRMS in t.system_attrs]
    assert len(search) == 6 and all(t.state == TrialState.COMPLETE for t in search)
    assert sum(counts_toward_total(t) for t in trials) == 6  # n_trials counts the search only
    top = sorted(search, key=lambda t: t.value, reverse=True)[:top_k]
    done = [t for t in confirms if t.state == TrialState.COMPLETE]
    assert sorted((t.system_attrs[A_CONFIRMS], t.system_attrs[A_SEED]) for t in done) == sorted(
        (f.number, s) for f in top for s in range(1, seeds + 1))
    for t in done:  # the finalist's own parameters, a seed of its own
        assert t.params == trials[t.system_attrs[A_CONFIRMS]].params


@pytest.mark.slow
def test_the_top_settings_are_trained_again_and_the_best_mean_wins(tmp_path, demo_dir):
    path = _confirming(tmp_path, demo_dir)
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    trials = trials_of(path)
    assert len(trials) == 10
    _check_confirmed(trials, 2, 2)
    # The winner: the finalist with the best mean over its three runs, exported from its best.
    by = {}
    for t in trials:
        key = t.system_attrs.get(A_CONFIRMS, t.number)
        by.setdefault(key, []).append(t.value)
    finalists = {k: v for k, v in by.items() if len(v) == 3}
    winner = max(finalists, key=lambda k: statistics.fmean(finalists[k]))
    out = json.loads(cli("best", str(path), "--json").stdout)
    assert out["finalists"][0]["number"] == winner
    assert out["finalists"][0]["mean"] == pytest.approx(statistics.fmean(finalists[winner]))
    assert out["finalists"][0]["std"] == pytest.approx(statistics.stdev(finalists[winner]))
    assert sorted(out["finalists"][0]["values"]) == sorted(finalists[winner])
    assert out["value"] == max(finalists[winner])
    exported = json.loads((tmp_path / "out" / "best-model" / "hpsearch-trial.json").read_text())
    assert exported["number"] == out["number"]
    status = cli("status", str(path)).stdout
    assert "finalists (mean over seeds decides)" in status and "confirms #" in status
    page = cli("plot", str(path))
    assert page.exit_code == 0
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    finals = report.split('<section id="finalists">')[1].split("</section>")[0]
    assert f"#{winner}" in finals and 'id="plot-finalists"' in finals

    # Raising top_k runs only what is new: the third finalist's two seeds.
    d = yaml.safe_load(path.read_text())
    d["confirm"]["top_k"] = 3
    path.write_text(yaml.safe_dump(d))
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    assert len(trials_of(path)) == 12
    _check_confirmed(trials_of(path), 3, 2)


@pytest.mark.slow
def test_killed_during_confirmation_the_next_run_ends_with_the_same_trials(tmp_path,
                                                                          demo_dir):
    path = _confirming(tmp_path, demo_dir, trainer={**ONE_EPOCH, "max_epochs": 2,
                                                    "checkpoint_every": 2})
    proc = spawn_hpsearch("run", str(path))
    deadline = time.time() + 180
    while True:  # until a confirmation run is training
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        if (tmp_path / "out" / "trials" / "trial-0006" / "metrics.jsonl").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    trials = trials_of(path)
    _check_confirmed(trials, 2, 2)
    live = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(live) == 10  # the interrupted run's continuation replaced it, nothing more


def _spread_study(tmp_path, demo_dir, values: dict[float, list[float]]):
    """Finalists with the given per-seed values (first: the search run)."""
    cfg = study_config(tmp_path, demo_dir, n_trials=len(values),
                       confirm={"top_k": 2, "seeds": 2})
    study = open_study(cfg, create=True)
    dist = {"learning_rate": FloatDistribution(1e-5, 1e-1, log=True)}
    numbers = {}
    for lr, vals in values.items():
        study.add_trial(create_trial(params={"learning_rate": lr}, distributions=dist,
                                     value=vals[0]))
        numbers[lr] = len(study.trials) - 1
    for lr, vals in values.items():
        for seed, v in enumerate(vals[1:], start=1):
            study.add_trial(create_trial(params={"learning_rate": lr}, distributions=dist,
                                         value=v, system_attrs={A_CONFIRMS: numbers[lr],
                                                                A_SEED: seed}))
    return standings(study.get_trials(), cfg)


def test_a_lead_within_the_seed_spread_is_not_distinguishable(tmp_path, demo_dir):
    close = _spread_study(tmp_path / "a", demo_dir,
                          {1e-3: [0.70, 0.64, 0.73], 3e-3: [0.69, 0.66, 0.70]})
    assert "not distinguishable" in verdict(close)
    clear = _spread_study(tmp_path / "b", demo_dir,
                          {1e-3: [0.80, 0.81, 0.79], 3e-3: [0.60, 0.61, 0.62]})
    said = verdict(clear)
    assert "distinguishable" in said and "not distinguishable" not in said
    assert clear[0].trial.params == {"learning_rate": 1e-3}


def test_select_min_picks_the_best_worst_case(tmp_path, demo_dir):
    cfg = study_config(tmp_path, demo_dir, n_trials=2,
                       confirm={"top_k": 2, "seeds": 2, "select": "min"})
    study = open_study(cfg, create=True)
    dist = {"learning_rate": FloatDistribution(1e-5, 1e-1, log=True)}
    for lr, vals in ((1e-3, [0.90, 0.50, 0.88]), (3e-3, [0.75, 0.74, 0.76])):
        study.add_trial(create_trial(params={"learning_rate": lr}, distributions=dist,
                                     value=vals[0]))
        n = len(study.trials) - 1
        for seed, v in enumerate(vals[1:], start=1):
            study.add_trial(create_trial(params={"learning_rate": lr}, distributions=dist,
                                         value=v, system_attrs={A_CONFIRMS: n, A_SEED: seed}))
    table = standings(study.get_trials(), cfg)
    assert table[0].trial.params == {"learning_rate": 3e-3}  # the mean would pick 1e-3


@pytest.mark.slow
def test_with_fuse_a_finalists_seeds_train_as_members_of_one_array(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=2, enqueue=POINTS[:2],
                       confirm={"top_k": 1, "seeds": 2}, trainer={**ONE_EPOCH, "fuse": 2})
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    trials = trials_of(path)
    confirms = [t for t in trials if A_CONFIRMS in t.system_attrs]
    assert [t.state for t in confirms] == [TrialState.COMPLETE] * 2
    logs = [(tmp_path / "out" / "trials" / f"trial-{t.number:04d}" / "train.log").read_text()
            for t in confirms]
    assert all("fused array of 2" in log for log in logs)
    assert confirms[0].value != confirms[1].value  # each its own seed: its own start


@pytest.mark.slow
@pytest.mark.parametrize("second_lr, distinguishable", [(2.4e-3, False), (1e-2, True)])
def test_the_verdict_on_real_runs_of_the_demo_data(tmp_path, demo_dir, second_lr,
                                                   distinguishable):
    """Two learning rates a hair apart are within their seeds' spread (here: lead 0.7 points,
    spread 1.8); a rate five times larger trails by far more than its seeds move (48.9, 1.5)."""
    points = [{"learning_rate": 2e-3, "weight_decay": 1e-3},
              {"learning_rate": second_lr, "weight_decay": 1e-3}]
    path = write_study(tmp_path, demo_dir, n_trials=2, enqueue=points,
                       confirm={"top_k": 2, "seeds": 2},
                       trainer={"train_limit": 200, "val_limit": 100, "max_epochs": 2})
    assert cli("run", str(path)).exit_code == 0
    out = cli("best", str(path))
    assert out.exit_code == 0, out.output
    said = json.loads(cli("best", str(path), "--json").stdout)["verdict"]
    assert ("not distinguishable" in said) != distinguishable, said
    assert said in out.stdout
