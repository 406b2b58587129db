"""Keeping what a finished study needs, and handing back its best model as a plain HF folder.

``keep: best`` (the default) deletes checkpoints of finished trials and the best weights of
every trial but the best; ``keep: none`` deletes the best trial's too once they are exported;
``keep: all`` deletes nothing. A folder a continuation has yet to
adopt is never touched. The best trial's weights become ``<output_dir>/best-model``, loadable
with ``AutoModelForTokenClassification.from_pretrained`` and no hpsearch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import A_DIR, A_FROM, A_RETRY_OF, taken_over
from hpsearch.config import StudyConfig
from hpsearch.confirm import chosen, standings
from hpsearch.opening import data_dir
from hpsearch.storage import file_lock
from hpsearch.trainer.trial_dir import best_weights, drop_best, drop_checkpoints


def tidy(study: optuna.Study, cfg: StudyConfig) -> None:
    """Drop what no later step needs; export the best trial's model.

    Workers sharing the output folder tidy one at a time, so that one does not delete the
    weights another is exporting, nor two write the same temporary folder.
    """
    with file_lock(cfg.out / ".tidy.lock"):
        _tidy(study, cfg)


def _tidy(study: optuna.Study, cfg: StudyConfig) -> None:
    trials = study.get_trials(deepcopy=False)
    best = chosen(study, cfg)
    # Best weights kept: the best trial's; with confirm, every run that may yet be the winner's
    # (a trial in the final top_k was in the top_k when it finished, so none is lost).
    keep_best = {best.number} if best is not None else set()
    if cfg.confirm is not None:
        keep_best |= {t.number for f in standings(trials, cfg) for t in f.runs}
    # Folders whose checkpoints (and best weights) a continuation has yet to adopt: a queued
    # one names it as its folder, a claimed one too until it starts, a started one as A_FROM.
    wanted = {t.system_attrs.get(A_DIR) for t in trials
              if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    wanted |= {t.system_attrs.get(A_FROM) for t in trials if t.state == TrialState.RUNNING}
    continued = {t.system_attrs.get(A_RETRY_OF) for t in trials}
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or A_DIR not in t.system_attrs:
            continue
        if t.system_attrs[A_DIR] in wanted:
            continue
        if taken_over(t) and t.number not in continued:
            continue  # interrupted a moment ago: its continuation is being queued
        d = Path(t.system_attrs[A_DIR])
        if cfg.keep != "all":
            drop_checkpoints(d)
        if cfg.keep != "all" and t.number not in keep_best:
            drop_best(d)
    if best is not None and export_best(cfg, best) is not None and cfg.keep == "none":
        drop_best(Path(best.system_attrs.get(A_DIR, "")))  # best-model/ holds it now


def export_best(cfg: StudyConfig, best: FrozenTrial) -> Path | None:
    """``<output_dir>/best-model``, replaced atomically when a better trial appears."""
    weights = best_weights(Path(best.system_attrs.get(A_DIR, "")))
    target = cfg.out / "best-model"
    marker = target / "hpsearch-trial.json"
    if marker.exists() and json.loads(marker.read_text()).get("number") == best.number:
        return target
    if not weights.exists():
        return None
    from hpsearch.trainer import prepare

    tcfg = cfg.trainer_for(best.params)
    prep = prepare(tcfg, data_dir(cfg), cfg.out / "cache")
    return export_model(tcfg, prep, weights, target,
                        {"number": best.number, "value": best.value, "params": best.params})


def export_model(tcfg, prep, weights: Path, target: Path, about: dict) -> Path:
    """Weights of a trial folder as a folder ``AutoModelForTokenClassification`` and
    ``AutoTokenizer`` load with no hpsearch: config with the labels, weights, tokenizer, and
    ``hpsearch-trial.json`` saying where it came from. Replaces ``target`` atomically."""
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    from hpsearch.trainer.modeling import build_model

    model = build_model(tcfg, prep.tokenizer, prep.labels)
    model.load_state_dict(load_file(weights))
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_logging.disable_progress_bar()  # a one-shard bar per export is noise in the trial lines
    model.save_pretrained(tmp)
    prep.tokenizer.save_pretrained(tmp)
    (tmp / "hpsearch-trial.json").write_text(json.dumps(about))
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target
