"""Synthetic studies for the report, dashboard and notebook tests.

The views only read the study database, so their tests fill one through the Optuna API instead
of training: a 500-trial study takes well under a second to make this way, and every state a
real search produces (completed, pruned, failed with a reason, a resumed continuation) is there.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from pathlib import Path

import optuna
from conftest import study_config
from optuna.trial import TrialState, create_trial

from hpsearch.attrs import A_REASON, A_RETRY_OF
from hpsearch.config import StudyConfig
from hpsearch.opening import open_study
from hpsearch.space import distributions

optuna.logging.set_verbosity(optuna.logging.WARNING)

TYPES = ("LOC", "ORG", "PER")


#: The demo study's search space: wide enough that the synthetic F1 bowl has its top inside.
SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}


def views_settings(tmp_path: Path, name: str = "views", storage: str = "sqlite") -> dict:
    """What a views study gives conftest's study_dict: the demo's search space and pruner,
    outputs under ``tmp_path``, and no TINY trainer, since these studies are never trained.

    ``storage="journal"`` puts the study in Optuna's journal file, which takes new trials about
    fifty times faster than SQLite (no transaction per row): the big studies use it.
    """
    out = tmp_path / "runs" / name
    return {
        "data_dir": "demo",
        "tiny": False,
        "name": name,
        **({"storage": f"journal:{out / 'study.journal'}"} if storage == "journal" else {}),
        "n_trials": 10,
        "output_dir": str(out),
        "backend": "optuna",
        "pruner": "median",
        "search_space": SPACE,
        "trainer": {"device": "cpu"},
    }


def _f1(lr: float, wd: float) -> float:
    """A smooth bowl in log space, best near lr=1e-3, wd=1e-2, like a real learning-rate sweep."""
    return max(0.0, 0.92 - 0.09 * (math.log10(lr) + 3) ** 2 - 0.03 * (math.log10(wd) + 2) ** 2)


#: How far each type's F1 sits from the micro F1: ORG lags, as rarer, longer names do.
TYPE_OFFSET = {"LOC": 0.02, "ORG": -0.12, "PER": 0.04}


def _scores(f1: float, loss: float) -> dict:
    per_type = {}
    for i, t in enumerate(TYPES):
        ft = min(1.0, max(0.0, f1 + TYPE_OFFSET[t]))
        per_type[t] = {"precision": ft + 0.01 * i, "recall": ft - 0.01 * i, "f1-score": ft,
                       "support": 50.0 + 10 * i}
    return {"precision": f1, "recall": f1, "f1": f1, "accuracy": 0.5 + f1 / 2, "loss": loss,
            "per_type": per_type}


def make_synthetic_study(
    tmp_path: Path,
    n: int = 12,
    *,
    states: str = "mixed",
    name: str = "views",
    storage: str = "sqlite",
    seed: int = 0,
    lr_exp: tuple[float, float] = (-5, -1),
) -> tuple[StudyConfig, optuna.Study]:
    """A study on SQLite under ``tmp_path`` with ``n`` finished trials and learning curves.

    ``states``: ``mixed`` (mostly completed, every 4th pruned, every 7th failed, one resumed
    continuation), ``pruned`` (only pruned trials) or ``complete``. ``lr_exp``: the powers of
    ten the learning rates are drawn between; narrower than the space, it leaves part of the
    space without any trial.
    """
    cfg = study_config(tmp_path, **views_settings(tmp_path, name, storage))
    study = open_study(cfg, create=True)
    dists = distributions(cfg.search_space)
    rng = random.Random(seed)
    t0 = dt.datetime(2025, 1, 6, 9, 0, 0)
    trials = []
    for i in range(n):
        lr, wd = 10 ** rng.uniform(*lr_exp), 10 ** rng.uniform(-4, -1)
        final = _f1(lr, wd)
        state = TrialState.COMPLETE
        if states == "pruned" or (states == "mixed" and i % 4 == 3):
            state = TrialState.PRUNED
        elif states == "mixed" and i % 7 == 5:
            state = TrialState.FAIL
        n_steps = {TrialState.COMPLETE: 6, TrialState.PRUNED: 2, TrialState.FAIL: 1}[state]
        curve = {50 * (s + 1): final * (1 - math.exp(-(s + 1) / 2)) for s in range(n_steps)}
        user_attrs: dict = {}
        system_attrs: dict = {}
        if state == TrialState.COMPLETE:
            user_attrs = {"best_step": max(curve), "best_scores": _scores(final, 1 - final)}
        elif state == TrialState.PRUNED:
            user_attrs = {"pruned_step": max(curve)}
        else:
            user_attrs = {"fail_reason": "oom", "error": "OutOfMemoryError: CUDA out of memory"}
            system_attrs = {A_REASON: "oom"}
        if state == TrialState.COMPLETE and i == 8:
            system_attrs = {A_RETRY_OF: 2}
        trial = create_trial(
            state=state,
            value=final if state == TrialState.COMPLETE else None,
            params={"learning_rate": lr, "weight_decay": wd},
            distributions=dists,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
            intermediate_values=curve,
        )
        trial.datetime_start = t0 + dt.timedelta(minutes=3 * i)
        trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=20 + 15 * n_steps)
        trials.append(trial)
    study.add_trials(trials)
    return cfg, study


def write_metrics_logs(cfg: StudyConfig, study: optuna.Study, every: int = 10) -> None:
    """Each trial's metrics.jsonl, where the study lays its folders out, agreeing with the curves
    in the database: a training row every ``every`` steps (a loss falling as the F1 climbs, the
    trial's learning rate warming up then decaying) and an evaluation row per reported value,
    with per-type F1s. The notebook's step-by-step views read these."""
    from hpsearch.plots.curves import trial_folder

    for t in study.get_trials(deepcopy=False):
        if not t.intermediate_values:
            continue
        last, lr = max(t.intermediate_values), t.params["learning_rate"]
        folder = trial_folder(t, cfg)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for step in range(1, last + 1):
            if step % every == 0 or step == 1:
                rate = lr * min(1.0, step / (0.1 * last)) * (1 - 0.9 * step / last)
                rows.append({"step": step, "loss": 2.5 * math.exp(-step / 60) + 0.05,
                             "lr": rate, "grad_norm": None, "tokens_per_s": 1000.0, "epoch": 0})
            if step in t.intermediate_values:
                f1 = t.intermediate_values[step]
                rows.append({"step": step, "epoch": 0, "eval": True, "val_f1": f1,
                             "val_precision": f1, "val_recall": f1, "val_loss": 1 - f1,
                             **{f"val_f1:{k}": min(1.0, max(0.0, f1 + TYPE_OFFSET[k]))
                                for k in TYPES}})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
