"""Pruning on validation F1: hopeless trials stop early, are recorded PRUNED, and free their disk.

Trials here are the tiny study of conftest (about 16 optimizer steps, evaluated every 4),
with parameters enqueued so that which trials are hopeless is known in advance: a learning rate
of 1e-5 or below learns nothing in so few steps on the demo data, 1e-2 reaches F1 ~0.5.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import study_config, trials_of
from optuna.trial import TrialState

from hpsearch.backends.bayes import BayesOptSampler, _Axis
from hpsearch.errors import StudyInterrupted
from hpsearch.opening import data_dir, open_study
from hpsearch.pruners import make_pruner
from hpsearch.recovery import queue_continuation
from hpsearch.study import run
from hpsearch.trainer import prepare
from hpsearch.trial import run_trial

GOOD, BAD = 1e-2, 1e-6

#: Room for both the hopeless and the good learning rates the tests enqueue.
SPACE = {"learning_rate": {"type": "float", "low": 1e-6, "high": 0.3, "log": True},
         "weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}


def _enqueue(cfg, lrs: list[float]) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    study = open_study(cfg, create=True)
    for lr in lrs:
        study.enqueue_trial({"learning_rate": lr, "weight_decay": 0.01})


@pytest.mark.slow
def test_bad_learning_rates_are_pruned_and_recorded(tmp_path, demo_dir):
    # keep: all keeps every finished trial's checkpoints; a pruned trial's go all the same.
    cfg = study_config(tmp_path, demo_dir, pruner={"name": "median", "n_startup_trials": 2},
                       search_space=SPACE, trainer={"eval_every": 4}, n_trials=4, keep="all")
    _enqueue(cfg, [GOOD, 2 * GOOD, BAD, 10 * BAD])
    run(cfg)
    trials = trials_of(cfg)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 2
    # One step scale for every trial: optimizer steps, every eval_every and at the last step.
    eval_steps = sorted(trials[0].intermediate_values)
    assert eval_steps[:-1] == list(range(4, eval_steps[-1], 4))
    for t in trials:
        assert sorted(t.intermediate_values) == eval_steps[: len(t.intermediate_values)]
        ckpts = Path(t.system_attrs["hpsearch:trial_dir"]) / "checkpoints"
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == eval_steps and ckpts.is_dir()
            continue
        # Stopped at the first evaluation, recorded with its last F1 and step, disk freed.
        step = t.user_attrs["pruned_step"]
        assert step == t.last_step == 4
        assert t.value == t.intermediate_values[step] < min(x.value for x in trials[:2])
        assert not ckpts.exists()


@pytest.mark.slow
def test_threshold_prunes_a_trial_below_its_bound(tmp_path, demo_dir):
    pruner = {"name": "threshold", "lower": 0.2, "n_warmup_steps": 8}
    cfg = study_config(tmp_path, demo_dir, pruner=pruner, search_space=SPACE,
                       trainer={"eval_every": 4}, n_trials=2)
    _enqueue(cfg, [BAD, GOOD])
    run(cfg)
    bad, good = trials_of(cfg)
    assert bad.state == TrialState.PRUNED
    # Below the bound from the start, but judged only once the warm-up is over.
    assert sorted(bad.intermediate_values) == [4, 8] and bad.user_attrs["pruned_step"] == 8
    assert max(bad.intermediate_values.values()) < 0.2
    assert good.state == TrialState.COMPLETE and good.value >= 0.2


@pytest.mark.slow
def test_resumed_trial_is_judged_on_its_whole_curve(tmp_path, demo_dir):
    """`wilcoxon` needs `n_startup_steps` evaluations before it may compare a trial at all.

    The bad trial is interrupted after two evaluations and has a single evaluation of its own
    after resuming, which alone can never be judged (three are needed); it is pruned at the
    same step as the uninterrupted run only if the evaluations reported before the interruption
    are part of the decision.
    """
    pruner = {"name": "wilcoxon", "n_startup_steps": 3, "p_threshold": 0.2}

    ref_cfg = study_config(tmp_path / "ref", demo_dir, pruner=pruner, search_space=SPACE,
                           trainer={"eval_every": 4}, n_trials=2)
    _enqueue(ref_cfg, [GOOD, BAD])
    run(ref_cfg)
    good, ref = trials_of(ref_cfg)
    assert ref.state == TrialState.PRUNED, f"precondition: {ref.intermediate_values} vs " \
        f"{good.intermediate_values}"
    assert ref.user_attrs["pruned_step"] == 12  # the third evaluation, the first it may judge

    cfg = study_config(tmp_path / "cut", demo_dir, pruner=pruner, search_space=SPACE,
                       trainer={"eval_every": 4}, n_trials=2)
    _enqueue(cfg, [GOOD, BAD])
    study = open_study(cfg)
    prep = prepare(cfg.trainer, data_dir(cfg), cfg.out / "cache")
    run_trial(study, study.ask(), cfg, prep)
    steps = iter(range(1, 10**6))
    with pytest.raises(StudyInterrupted):  # what the first Ctrl-C does, after step 8
        run_trial(study, study.ask(), cfg, prep, stop=lambda: next(steps) >= 8)
    run(cfg)  # what `hpsearch run` does next: the continuation resumes at step 8

    _, first, cont = trials_of(cfg)
    assert first.system_attrs["hpsearch:fail_reason"] == "interrupted"
    assert sorted(first.intermediate_values) == [4, 8]
    assert cont.system_attrs["hpsearch:retry_of"] == first.number
    assert cont.state == TrialState.PRUNED and cont.user_attrs["pruned_step"] == 12
    assert cont.intermediate_values == ref.intermediate_values  # the history, carried over


def _gp_view(study: optuna.Study, policy: str) -> dict[float, float]:
    """learning_rate -> target, for every finished trial the bayes GP is fitted on."""
    sampler = BayesOptSampler(pruned_trials=policy, seed=0)
    space = sampler.infer_relative_search_space(study, None)
    x, y, _ = sampler._observations(study, SimpleNamespace(number=-1), space)
    axis, col = _Axis(space["learning_rate"]), list(space).index("learning_rate")
    by_x = {round(float(xi), 9): float(yi) for xi, yi in zip(x[:, col], y, strict=True)}
    lrs = [t.params["learning_rate"] for t in study.get_trials()]
    return {lr: by_x[k] for lr in lrs if (k := round(axis.encode(lr), 9)) in by_x}


@pytest.mark.slow
def test_bayes_backend_prunes_and_its_gp_sees_last_f1_or_nothing(tmp_path, demo_dir):
    cfg = study_config(tmp_path, demo_dir, pruner={"name": "median", "n_startup_trials": 1},
                       search_space=SPACE, trainer={"eval_every": 4}, n_trials=4,
                       backend={"name": "bayes", "n_random_init": 2})
    _enqueue(cfg, [GOOD, BAD, 2 * BAD])  # the fourth trial is the GP's own proposal
    run(cfg)
    trials = trials_of(cfg)
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE] + [TrialState.PRUNED] * 2
    assert trials[3].system_attrs["hpsearch:sampled_by"] == "bayes_opt"
    assert trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED)

    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    seen = _gp_view(study, "last_value")
    for t in trials:
        if t.state == TrialState.PRUNED:  # its last reported F1, i.e. the value it was told
            assert seen[t.params["learning_rate"]] == t.intermediate_values[t.last_step]
        else:
            assert seen[t.params["learning_rate"]] == t.value
    hidden = _gp_view(study, "ignore")
    assert set(hidden) == {t.params["learning_rate"] for t in trials
                           if t.state == TrialState.COMPLETE}


PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "patient": optuna.pruners.PatientPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
}


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_name_builds(tmp_path, name):
    extra = {"threshold": {"lower": 0.1}, "patient": {"wrapped": {"name": "median"}}}
    cfg = study_config(tmp_path, tmp_path, pruner={"name": name, **extra.get(name, {})})
    assert isinstance(make_pruner(cfg.pruner), PRUNERS[name])


def _curve_study(pruner) -> optuna.Study:
    """One finished trial evaluated every 15 steps up to 150, as the trainer reports it."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.add_trial(optuna.trial.create_trial(
        value=0.8, intermediate_values={s: 0.8 * s / 150 for s in range(15, 151, 15)}))
    return study


@pytest.mark.parametrize("name", ["hyperband", "successive_halving"])
def test_auto_min_resource_is_the_first_evaluation(tmp_path, name):
    """Rungs start at the first evaluation, not at step 1: one rung judged per evaluation."""
    cfg = study_config(tmp_path, tmp_path, pruner=name)
    study = _curve_study(make_pruner(cfg.pruner))
    asked = [study.ask() for _ in range(12)]
    for i, t in enumerate(asked):
        t.report(0.5 if i % 2 else 0.0, 15)
        t.should_prune()
    rungs = [len([k for k in study._storage.get_trial(t._trial_id).system_attrs
                  if k.startswith("completed_rung_")]) for t in asked]
    # Successive halving judges rung 0 there, for every trial. Hyperband: a trial of the
    # first bracket its first rung, one of a later bracket (first rung at 45, 135) none yet;
    # twelve trials fill more than one bracket.
    if name == "successive_halving":
        assert rungs == [1] * 12
    else:
        assert set(rungs) == {0, 1}, rungs
    # Optuna's own default (min_resource=1) judges rungs at steps 1, 3 and 9 at step 15.
    plain = _curve_study(optuna.pruners.SuccessiveHalvingPruner(1, 3))
    t = plain.ask()
    t.report(0.5, 15)
    t.should_prune()
    assert len([k for k in plain._storage.get_trial(t._trial_id).system_attrs
                if k.startswith("completed_rung_")]) == 3


@pytest.mark.slow
def test_two_workers_prune_the_bad_trials(tmp_path, demo_dir):
    """Each worker's pruner judges against what the others wrote to the shared database."""
    from hpsearch.workers import run_pool

    cfg = study_config(tmp_path, demo_dir, pruner={"name": "median", "n_startup_trials": 1},
                       search_space=SPACE, trainer={"eval_every": 4}, n_trials=4)
    # The good trial runs twice at once, one per worker (identical curves: a tie never prunes);
    # each bad trial starts in the worker that has just finished a good one.
    _enqueue(cfg, [GOOD, GOOD, BAD, 10 * BAD])
    run_pool(cfg, [None, None])
    trials = trials_of(cfg)
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE] * 2
    for t in trials[2:]:
        assert t.state == TrialState.PRUNED and t.user_attrs["pruned_step"] == 4
        assert not (Path(t.system_attrs["hpsearch:trial_dir"]) / "checkpoints").exists()


def test_a_resumed_trial_stays_in_its_hyperband_bracket(tmp_path):
    """Optuna puts a trial in a bracket by its number; a continuation has a new number.

    Judged by another bracket's rungs, a resumed trial would be pruned (or kept) on rules its
    first part never ran under, and that part would leave its old bracket's comparisons.
    """
    cfg = study_config(tmp_path, tmp_path, pruner={
        "name": "hyperband", "min_resource": 15, "max_resource": 150})
    pruner = make_pruner(cfg.pruner)
    study = _curve_study(pruner)
    plain = optuna.pruners.HyperbandPruner(15, 150, 3)
    for p in (pruner, plain):
        p._try_initialization(study)
    moved = 0
    for _ in range(12):
        t = study.ask()
        t.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
        t.report(0.1, 15)
        first = study._storage.get_trial(t._trial_id)
        study.tell(t, state=TrialState.FAIL)  # killed; a later run resumes it, twice
        line = [first]
        for _ in range(2):
            queue_continuation(study, study._storage.get_trial(line[-1]._trial_id))
            cont = study.ask()
            line.append(study._storage.get_trial(cont._trial_id))
            study.tell(cont, state=TrialState.FAIL)
        assert {pruner._get_bracket_id(study, x) for x in line} == {
            pruner._get_bracket_id(study, first)}
        assert line[-1].params == first.params
        moved += len({plain._get_bracket_id(study, x) for x in line}) > 1
    assert moved  # by number alone, some lines would have changed bracket


@pytest.mark.slow
def test_a_searched_batch_size_is_judged_after_the_same_data(tmp_path, demo_dir):
    """Steps in a study file are steps at its own batch size: a trial with half the token
    budget evaluates every 2 x eval_every of its own steps and reports at the study's steps,
    so a median pruner sets a small-batch trial beside the others after as much data."""
    space = {"learning_rate": {"type": "float", "low": 1e-6, "high": 0.3, "log": True},
             "weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
             "max_tokens": {"type": "categorical", "choices": [512, 1024]}}
    cfg = study_config(
        tmp_path, demo_dir, pruner={"name": "median", "n_startup_trials": 1}, n_trials=2,
        trainer={"eval_every": 4, "max_tokens": 1024}, search_space=space)
    cfg.out.mkdir(parents=True, exist_ok=True)
    study = open_study(cfg, create=True)
    for budget in (1024, 512):
        study.enqueue_trial({"learning_rate": GOOD, "weight_decay": 0.01, "max_tokens": budget})
    assert cfg.trainer_for({"max_tokens": 512}).eval_every == 8
    assert cfg.trainer_for({"max_tokens": 2048}).eval_every == 2
    run(cfg)
    full, half = trials_of(cfg)
    assert [t.state for t in (full, half)] == [TrialState.COMPLETE] * 2
    assert half.user_attrs["steps"] > 1.5 * full.user_attrs["steps"]
    grid = sorted(full.intermediate_values)[:-1]  # every 4 steps, then the last step
    reported = sorted(half.intermediate_values)
    assert grid and reported[: len(grid)] == grid  # the same points, after the same data
    assert abs(reported[-1] - full.last_step) <= 2  # the end of one epoch, for both
