"""The same N trials three ways: one after another, as K processes, and fused K at a time.

Every arm is a real ``hpsearch run`` of a fresh study in a work folder whose first N trials are
the same enqueued parameters (the study's seed, so the same initial weights and batches):

* ``solo``: one process, one trial after another (``fuse: 1``);
* ``procs-K``: K worker processes, each training one trial at a time (``--workers K``, or
  ``--gpus 0 --trials-per-gpu K`` on a GPU);
* ``fused-K``: one process training K trials as one batched model (``--fuse K``).

For each arm it prints, from the study database afterwards: aggregate train tokens/s (all
trials' training tokens over the span from the first trial's start to the last one's end),
the wall time per trial (the command's wall time over N), start-up seconds (from launching
the command to the end of the first training step of any trial), and peak memory (the
largest process's resident set; on CUDA the trials' peak allocated GPU memory). With
dropout 0 it checks that every fused trial ends with the F1 of the same trial run alone
(within 0.3 points), and ends with ``fused_ratio=X``: fused-4 aggregate tokens/s over solo.

CPU (the demo study's tiny BERT, one thread per process, 2 cores):

    OMP_NUM_THREADS=1 .venv/bin/python bench/fused.py

GPU (a bert-base shape on MSRA, bf16, 32 sentences a step per member):

    .venv/bin/python bench/fused.py --device cuda --study studies/msra-bert.yaml \\
        --scratch-base --data ../shared/data/msra --batch-size 32 --max-steps 200 \\
        --val-limit 200 --ks 1,2,4,8,16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpsearch.config import load_study  # noqa: E402
from hpsearch.opening import open_study  # noqa: E402
from hpsearch.study import start_study  # noqa: E402


def arm_study(base: Path, out: Path, params: list[dict], args) -> Path:
    """The base study in its own folder, its first trials the given parameters."""
    data = yaml.safe_load(base.read_text())
    trainer = data["trainer"]
    trainer.update(progress=False, num_threads=1, fuse=1)
    if args.device != "cpu":
        trainer.update(device=args.device)
    if args.data:
        trainer["data_dir"] = str(Path(args.data).resolve())
    for key in ("max_epochs", "train_limit", "val_limit", "max_steps", "batch_size"):
        if getattr(args, key) is not None:
            trainer[key] = getattr(args, key)
    if args.max_steps:
        trainer.update(eval_every=args.max_steps, early_stopping=None)
    if args.scratch_base:  # no pretrained weights on the machine: bert-base's shape
        trainer["model"] = "scratch"
        trainer["scratch"] = {"hidden_size": 768, "num_hidden_layers": 12,
                              "num_attention_heads": 12, "intermediate_size": 3072,
                              "vocab_size": 21128}
    if args.dropout0:
        trainer["dropout"] = 0.0
        scratch = trainer.setdefault("scratch", {})
        if trainer.get("model", "scratch") == "scratch":
            scratch["attention_probs_dropout_prob"] = 0.0
    data.update(name=f"fused-bench-{out.name}", n_trials=len(params), output_dir=str(out),
                storage=None, pruner="none")
    out.mkdir(parents=True)
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    study = start_study(load_study(path))
    for p in params:
        study.enqueue_trial(p)
    return path


def run_arm(name: str, study: Path, extra: list[str], timeout: float) -> dict:
    """One ``hpsearch run``, measured: wall time, and its largest process's peak RSS."""
    code = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(r.returncode)")
    launched = time.time()
    r = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "hpsearch", "run",
                        str(study), *extra], capture_output=True, text=True, timeout=timeout,
                       cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - launched
    if r.returncode != 0:
        raise SystemExit(f"{name}: hpsearch run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    peak_kib = int(r.stderr.strip().splitlines()[-1])
    trials = open_study(load_study(study)).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if len(done) != len(trials):
        raise SystemExit(f"{name}: {len(trials) - len(done)} trials did not complete")
    starts = [t.datetime_start.timestamp() for t in done]
    ends = [t.datetime_complete.timestamp() for t in done]
    tokens = sum(t.user_attrs["tokens_per_second"] * t.user_attrs["train_seconds"]
                 for t in done)
    first = min(t.user_attrs.get("first_step_at") or ends[0] for t in done)
    gpu = [t.user_attrs.get("peak_gpu_bytes") for t in done if t.user_attrs.get("peak_gpu_bytes")]
    return {
        "arm": name, "trials": len(done), "wall_s": wall,
        "tokens_per_s": tokens / max(max(ends) - min(starts), 1e-9),
        "wall_per_trial_s": wall / len(done), "startup_s": first - launched,
        "peak_rss_mib": peak_kib / 1024, "peak_gpu_mib": max(gpu) / 2**20 if gpu else None,
        "f1": {json.dumps(t.params, sort_keys=True): t.value for t in done},
    }


def spread(cfg, n: int) -> list[dict]:
    """N fixed points over the study's learning-rate and weight-decay ranges (log-spaced,
    weight decay cycling through three values): a study, not a lucky pair."""
    def at(name: str, frac: float) -> float:
        p = cfg.search_space[name]
        lo, hi = math.log10(p.low), math.log10(p.high)
        return 10 ** (lo + (hi - lo) * frac)

    return [{"learning_rate": at("learning_rate", 0.15 + 0.7 * i / max(1, n - 1)),
             "weight_decay": at("weight_decay", (i % 3) / 2)} for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, default=REPO / "studies" / "demo.yaml")
    ap.add_argument("--data", help="data folder (default: the study's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--trials", type=int, default=8, help="N: trials per arm")
    ap.add_argument("--ks", default="1,2,4,8", help="K values for the procs and fused arms")
    ap.add_argument("--max-epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--val-limit", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="sentences a step per member (default: the study's token budget)")
    ap.add_argument("--scratch-base", action="store_true",
                    help="bert-base's shape from scratch instead of the study's model")
    ap.add_argument("--no-procs", action="store_true", help="skip the K-process arms")
    ap.add_argument("--keep-dropout", dest="dropout0", action="store_false",
                    help="train with the study's dropout (no F1 equivalence check then)")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per arm")
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ks = [int(k) for k in args.ks.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="hpsearch-fused-"))
    params = spread(load_study(args.study, check_paths=False), args.trials)
    print(f"fused bench: {args.trials} trials per arm, {args.study.name}, device "
          f"{args.device}, work folder {work}", flush=True)
    arms = [("solo", [])]
    if not args.no_procs:
        pool = (lambda k: ["--gpus", "0", "--trials-per-gpu", str(k)]) if args.device != "cpu" \
            else (lambda k: ["--workers", str(k)])
        arms += [(f"procs-{k}", pool(k)) for k in ks if k > 1]
    arms += [(f"fused-{k}", ["--fuse", str(k)]) for k in ks]
    rows = []
    print(f"{'arm':<10} {'tokens/s':>10} {'s/trial':>8} {'start-up s':>10} {'peak RSS MiB':>12}"
          f" {'peak GPU MiB':>12}", flush=True)
    for name, extra in arms:
        row = run_arm(name, arm_study(args.study, work / name, params, args), extra,
                      args.timeout)
        rows.append(row)
        gpu = "-" if row["peak_gpu_mib"] is None else f"{row['peak_gpu_mib']:.0f}"
        print(f"{name:<10} {row['tokens_per_s']:>10,.0f} {row['wall_per_trial_s']:>8.2f} "
              f"{row['startup_s']:>10.1f} {row['peak_rss_mib']:>12.0f} {gpu:>12}", flush=True)
    by = {r["arm"]: r for r in rows}
    solo = by["solo"]
    if args.dropout0:
        worst = 0.0
        for r in rows:
            if r["arm"].startswith("fused-"):
                gaps = [r["f1"][p] - v for p, v in solo["f1"].items()]
                worst = max(worst, *map(abs, gaps))
                print(f"F1 {r['arm']} - solo, trial by trial: "
                      + " ".join(f"{g:+.4f}" for g in gaps))
        verdict = "OK" if worst <= 0.003 else "DIFFERENT"
        print(f"equivalence: largest |F1 fused - F1 solo| over every fused trial = {worst:.4f}"
              f" ({verdict}, bound 0.003)")
    json.dump(rows, open(work / "fused-bench.json", "w"), indent=1)
    print(f"rows: {work / 'fused-bench.json'}")
    ref = by.get("fused-4") or by[f"fused-{max(ks)}"]
    print(f"fused_ratio={ref['tokens_per_s'] / solo['tokens_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
