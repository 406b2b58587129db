"""The study driver: ask for parameters, run a real trainer, tell the result, until n_trials.

``n_trials`` is a total for the study, not "this many more": a second ``hpsearch run`` of a
finished study starts nothing, and raising ``n_trials`` by two runs exactly two more. A trial
whose process died is found by the next run and continued from its last checkpoint
(recovery.py). Any number of processes may run the same study at once (workers.py): each
claims its next trial under the study's lock (trial.py), so ``n_trials`` holds exactly.

Where a trial's life is written down:
    born          trial.claim_trial     (sampler asked under the study lock)
    trained       trial.run_trial  ->  trainer/loop.train
    checkpointed  trainer/checkpoint.py, in the folder trainer/trial_dir.py lays out
    pruned        trainer/state.judge reports, pruners.py decides
    recorded      trial.record_failure / trial.run_trial, then export.tidy
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from hpsearch.attrs import A_CONFIG, A_DATA, A_MODEL, DISK_FULL, n_counted
from hpsearch.config import ConfigError, StudyConfig, study_fingerprint
from hpsearch.confirm import chosen
from hpsearch.errors import DiskFull
from hpsearch.export import tidy
from hpsearch.opening import data_dir, open_study, study_exists
from hpsearch.preflight import preflight
from hpsearch.recovery import recover_interrupted
from hpsearch.space import distributions
from hpsearch.storage import study_lock
from hpsearch.trial import (
    StopRequest,
    TrialOutcome,
    claim_trial,
    disk_full_message,
    more_work,
    run_trial,
)

# hpsearch runs its own heartbeat thread around ask/tell (see recovery.Heartbeat).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


# ----------------------------------------------------------------------------- opening


def check_unchanged(study: optuna.Study, cfg: StudyConfig, allow_changes: bool) -> None:
    """Refuse to mix trials of two different searches under one study name.

    Different means another study file (its searched space, trainer or objective), other data
    (a content hash of every file read) or another model (its config and weights): trials of
    each are not comparable. ``allow_changes`` accepts the new ones and records them; each
    trial carries its own (provenance.py), so the mix stays visible.
    """
    from hpsearch import provenance

    new = study_fingerprint(cfg)
    old_json = study.user_attrs.get(A_CONFIG)
    diffs = [] if old_json is None else _diff(json.loads(old_json), new)
    inputs = provenance.study_inputs(cfg, fresh=True)
    provenance.software()  # now, so forked workers and trial processes inherit it
    old_inputs = {part: _loads(study.user_attrs.get(key)) for part, key in _INPUT_ATTRS}
    changed = provenance.input_changes(old_inputs, inputs)
    # A study that never ran a trial has nothing to mix: its file was fixed before it started.
    if (diffs or changed) and not allow_changes and study.get_trials(deepcopy=False):
        what = " and ".join([*["settings"] * bool(diffs), *["data"] * ("data" in changed),
                             *["model"] * ("model" in changed)])
        raise ConfigError(
            f"study '{cfg.name}' was run with other {what}; changed: "
            f"{'; '.join([*diffs, *changed.values()])} "
            "(use --allow-changes to continue anyway, or give the study a new name)"
        )
    _set_if_changed(study, A_CONFIG, new)
    for part, key in _INPUT_ATTRS:
        # An unknown one (a hub model not downloaded yet) keeps the last one known.
        if (inputs[part] or {}).get("fingerprint" if part == "data" else "hash"):
            _set_if_changed(study, key, inputs[part])


_INPUT_ATTRS = (("data", A_DATA), ("model", A_MODEL))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _set_if_changed(study: optuna.Study, key: str, value: Any) -> None:
    text = json.dumps(value, sort_keys=True)
    if study.user_attrs.get(key) != text:
        study.set_user_attr(key, text)


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def start_study(cfg: StudyConfig, *, allow_changes: bool = False,
                create: bool = True) -> optuna.Study:
    """Open (or create) the study for running, after checking the settings did not change.

    A study about to be created first checks its model and data, so that a typo there is one
    line with nothing written (preflight.py).
    """
    from hpsearch import reporting

    reporting.check(cfg)  # report_to names a package that is not installed: one line
    if create and not study_exists(cfg):
        preflight(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    study = open_study(cfg, create=create)
    check_unchanged(study, cfg, allow_changes)
    for k, v in (("backend", cfg.backend.name), ("pruner", cfg.pruner.name),
                 ("metric", cfg.metric)):
        if study.user_attrs.get(k) != v:
            study.set_user_attr(k, v)
    space = json.dumps({k: repr(d) for k, d in distributions(cfg.search_space).items()})
    if study.user_attrs.get("search_space") != space:
        study.set_user_attr("search_space", space)
    if cfg.enqueue:
        enqueue(study, cfg, cfg.enqueue, "study file")
    return study


def enqueue(study: optuna.Study, cfg: StudyConfig, points: list[dict[str, Any]],
            source: str) -> int:
    """Queue points to be evaluated before the sampler proposes any; returns how many were new.

    They are ordinary trials once they run (they count toward ``n_trials``), marked
    ``enqueued`` with where they came from. A point already in the study is not queued again,
    so a study file's ``enqueue:`` is read on every run but evaluated once.
    """
    with study_lock(cfg.storage_url, cfg.name):
        before = len(study.get_trials(deepcopy=False))
        for point in points:
            study.enqueue_trial(point, user_attrs={"enqueued": source}, skip_if_exists=True)
        return len(study.get_trials(deepcopy=False)) - before


# ----------------------------------------------------------------------------- the run


@dataclass
class RunSummary:
    ran: list[TrialOutcome]
    recovered: list[int]
    total: int
    n_trials: int
    best_value: float | None
    best_params: dict[str, Any] | None
    best_number: int | None


def run(
    cfg: StudyConfig,
    *,
    allow_changes: bool = False,
    on_trial: Callable[[TrialOutcome, optuna.Study], None] | None = None,
    on_recovered: Callable[[list[int]], None] | None = None,
) -> RunSummary:
    """Run the study up to ``cfg.n_trials`` trials in total; safe to call again after a stop.

    ``on_recovered`` hears the numbers of dead trials queued to resume as they are found,
    before their continuations run.
    """
    heard = on_recovered or (lambda numbers: None)
    study = start_study(cfg, allow_changes=allow_changes)
    with study_lock(cfg.storage_url, cfg.name):
        recovered = recover_interrupted(study)
    if recovered:
        heard(recovered)

    from hpsearch.trainer import prepare

    ran: list[TrialOutcome] = []
    deadline = time.time() + cfg.timeout if cfg.timeout else None
    with StopRequest() as stop:
        # Fused: arrays until the study needs nothing more (the search, then the finalists'
        # confirmation runs, which are queued only once the search is over).
        while cfg.trainer.fuse > 1 and more_work(study, cfg) and not stop():
            from hpsearch.fused import run_fused

            if deadline is not None and time.time() >= deadline:
                break
            prep = prepare(cfg.trainer, data_dir(cfg), cfg.out / "cache")
            feed = run_fused(study, cfg, prep, stop, on_trial=on_trial, deadline=deadline,
                             on_recovered=heard)
            ran, recovered = ran + feed.outcomes, recovered + feed.recovered
            if feed.disk_full is not None:
                raise DiskFull(disk_full_message(feed.disk_full, cfg))
            if not feed.outcomes:
                break  # nothing could be claimed: whatever is left is another process's
        while more_work(study, cfg) and not stop():
            if deadline is not None and time.time() >= deadline:
                break
            # After the count check: a finished study touches no data. Once per trial, so each
            # trial logs what its data cost: the first builds or reads the cache, the rest
            # find it in memory.
            prep = prepare(cfg.trainer, data_dir(cfg), cfg.out / "cache")
            trial, more = claim_trial(study, cfg)
            recovered += more
            if more:
                heard(more)
            if trial is None:
                break
            outcome = run_trial(study, trial, cfg, prep, stop)
            ran.append(outcome)
            if on_trial is not None:
                on_trial(outcome, study)
            if outcome.reason == DISK_FULL:  # every next trial would fail the same way
                raise DiskFull(disk_full_message(outcome, cfg))
            tidy(study, cfg)
    return summarize(study, cfg, ran, recovered)


def summarize(study, cfg, ran, recovered) -> RunSummary:
    """The study as a run leaves it. With the trials it ``ran`` (a run's end, here or in the
    worker pool) the best model also goes to the study's MLflow run (hpsearch/reporting/)."""
    if ran:
        from hpsearch import reporting

        reporting.study_end(cfg, study)
    best = chosen(study, cfg)
    return RunSummary(
        ran=ran,
        recovered=recovered,
        total=n_counted(study),
        n_trials=cfg.n_trials,
        best_value=best.value if best else None,
        best_params=best.params if best else None,
        best_number=best.number if best else None,
    )
