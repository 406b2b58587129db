"""Study throughput with 1, 2, 4 workers, and what the orchestrator costs per trial.

Each point is a real ``hpsearch run STUDY --workers N`` (or ``--gpus 0 --trials-per-gpu N``) on
a fresh study in a work folder; the numbers come from the study database afterwards:

* trials/hour over the command's whole wall time (start-up included: imports, data) and over
  the steady part, first trial start to last trial end;
* on CUDA, aggregate tokens/s: all trials' training tokens over the span from the first
  trial's start to the last one's end (model loads included, so it is the study's rate); the
  ratio column divides it by the one-trial figure. The sum of the trials' own tokens/s is
  printed beside it;
* orchestrator overhead per trial: on each worker, the time between one trial's end and the
  next one's end, minus the next one's training time (``train_seconds``, evaluation included).
  That covers tidying the previous trial, claiming under the study lock, forking the trial
  process, opening the storage and building the model; the model build is timed on its own
  so the rest can be read off;
* trial process start: forking a worker that has torch and transformers loaded, against
  starting a fresh interpreter that imports them (why trials are forked).

CPU (this is what runs on a laptop or CI box; trials shortened with --max-epochs/--train-limit):

    OMP_NUM_THREADS=1 .venv/bin/python bench/scaling.py --workers 1,2,4 --trials 8

GPU: aggregate training tokens/s of 1, 2, 4 and 8 concurrent trials of the MSRA bert-base
study on one GPU (``--gpus 0 --trials-per-gpu N``, N trials of --max-steps steps each):

    HPSEARCH_MODEL=/models/bert-base-chinese .venv/bin/python bench/scaling.py --device cuda

Where no pretrained weights can be read, ``--scratch-base`` trains bert-base's shape from
scratch on the same data (``--data`` points at it), and ``--fast-path off`` measures the plain
loop that several trials per GPU are meant to keep busy.

On CUDA the last line is ``x4=R``: aggregate tokens/s of 4 concurrent trials over 1.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
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
from hpsearch.opening import data_dir  # noqa: E402


def derived_study(base: Path, out: Path, n_trials: int, trainer: dict) -> Path:
    """The base study with its own name, folder and SQLite file, and shortened trials."""
    data = yaml.safe_load(base.read_text())
    data.update(name=f"scaling-{out.name}", n_trials=n_trials, output_dir=str(out),
                storage=f"sqlite:///{out / 'study.db'}", timeout=None)
    data["trainer"] = {**data["trainer"], **trainer}
    if data["trainer"].get("data_dir") == "demo":
        # One generated data set for every point; its cache is per output folder.
        data["trainer"]["data_dir"] = str(out.parent / "demo-data")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_point(study: Path, args: list[str]) -> tuple[float, list]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(study), *args],
                       capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"hpsearch run failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    import optuna

    cfg = load_study(study)
    trials = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url).get_trials()
    return wall, trials


def overheads(trials) -> list[float]:
    """Per worker, end-to-end time of each trial after its first, minus its training time."""
    by_worker: dict[str, list] = {}
    for t in trials:
        by_worker.setdefault(t.system_attrs.get("hpsearch:worker", "?"), []).append(t)
    out = []
    for ts in by_worker.values():
        ts.sort(key=lambda t: t.datetime_complete)
        for prev, t in zip(ts, ts[1:], strict=False):
            gap = (t.datetime_complete - prev.datetime_complete).total_seconds()
            out.append(gap - float(t.user_attrs.get("train_seconds", 0.0)))
    return out


def model_build_seconds(study: Path) -> float:
    """Building the study's model once, in a process that has already imported everything."""
    from hpsearch.trainer import prepare
    from hpsearch.trainer.modeling import build_model

    cfg = load_study(study)
    prep = prepare(cfg.trainer, data_dir(cfg), cfg.out / "cache")
    build_model(cfg.trainer, prep.tokenizer, prep.labels)  # warm: lazy imports, first alloc
    t0 = time.perf_counter()
    build_model(cfg.trainer, prep.tokenizer, prep.labels)
    return time.perf_counter() - t0


def _noop() -> None:
    pass


def process_start_seconds() -> tuple[float, float]:
    """(fork of a loaded process, fresh interpreter importing the trainer and BERT)."""
    from hpsearch.workers import preload

    preload(load_study(REPO / "studies" / "demo.yaml"))
    ctx = mp.get_context("fork")
    t0 = time.perf_counter()
    for _ in range(10):
        p = ctx.Process(target=_noop)
        p.start()
        p.join()
    fork = (time.perf_counter() - t0) / 10
    t0 = time.perf_counter()
    code = "import hpsearch.trainer, transformers; transformers.BertForTokenClassification"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return fork, time.perf_counter() - t0


def cpu(args: argparse.Namespace, work: Path) -> None:
    from hpsearch.demo_data import generate_demo_data

    generate_demo_data(work / "demo-data")
    trainer = {"max_epochs": args.max_epochs, "train_limit": args.train_limit}
    fork, fresh = process_start_seconds()
    print(f"trial process start: fork {fork * 1000:.1f} ms, fresh interpreter {fresh:.2f} s")
    print(f"{'workers':>7} {'trials':>6} {'wall_s':>7} {'trials/h':>9} {'steady/h':>9} "
          f"{'train_s':>8} {'overhead_s':>10} {'max_s':>6}")
    build = None
    for n in args.workers:
        study = derived_study(args.study, work / f"w{n}", args.trials, trainer)
        wall, trials = run_point(study, ["--workers", str(n)])
        done = [t for t in trials if t.datetime_complete is not None]
        span = (max(t.datetime_complete for t in done)
                - min(t.datetime_start for t in done)).total_seconds()
        train = sum(float(t.user_attrs.get("train_seconds", 0)) for t in done) / len(done)
        over = overheads(done)
        mean = sum(over) / len(over) if over else float("nan")
        print(f"{n:>7} {len(done):>6} {wall:>7.1f} {3600 * len(done) / wall:>9.0f} "
              f"{3600 * len(done) / span:>9.0f} {train:>8.2f} {mean:>10.2f} "
              f"{max(over, default=float('nan')):>6.2f}", flush=True)
        if build is None:
            build = model_build_seconds(study)
    print(f"model build (in overhead_s): {build:.3f} s")


def cuda(args: argparse.Namespace, work: Path) -> None:
    trainer = {"max_steps": args.max_steps, "eval_every": args.max_steps, "device": "cuda",
               "early_stopping": None, "val_limit": 200, "fast_path": args.fast_path}
    if args.scratch_base:  # no pretrained weights on the machine: bert-base's shape from scratch
        trainer["model"] = "scratch"
        trainer["scratch"] = {"hidden_size": 768, "num_hidden_layers": 12,
                              "num_attention_heads": 12, "intermediate_size": 3072,
                              "vocab_size": 21128}
    if args.data:
        trainer["data_dir"] = str(Path(args.data).resolve())
    if args.train_limit:
        trainer["train_limit"] = args.train_limit
    print(f"{'concurrent':>10} {'tokens':>12} {'span_s':>7} {'agg_tok/s':>10} "
          f"{'sum_trial_tok/s':>15} {'ratio':>6}")
    base = None
    results = {}
    for n in args.concurrent:
        study = derived_study(args.study, work / f"c{n}", n, trainer)
        _, trials = run_point(study, ["--gpus", args.gpu, "--trials-per-gpu", str(n)])
        done = [t for t in trials if t.state.name == "COMPLETE"]
        if len(done) != n:
            sys.exit(f"{n} concurrent: only {len(done)} trials completed")
        tokens = sum(t.user_attrs["tokens_per_second"] * t.user_attrs["train_seconds"]
                     for t in done)
        span = (max(t.datetime_complete for t in done)
                - min(t.datetime_start for t in done)).total_seconds()
        agg = tokens / span
        per = sum(t.user_attrs["tokens_per_second"] for t in done)
        base = base or agg
        results[n] = agg / base
        print(f"{n:>10} {tokens:>12,.0f} {span:>7.1f} {agg:>10,.0f} {per:>15,.0f} "
              f"{agg / base:>6.2f}", flush=True)
    print(json.dumps({"aggregate_ratio_over_1": results}))
    if 4 in results:
        print(f"x4={results[4]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--study", type=Path, default=None,
                    help="default: studies/demo.yaml (cpu), studies/msra-bert.yaml (cuda)")
    ap.add_argument("--workers", default="1,2,4", help="cpu: worker counts")
    ap.add_argument("--trials", type=int, default=8, help="cpu: trials per point")
    ap.add_argument("--max-epochs", type=int, default=1, help="cpu: epochs per trial")
    ap.add_argument("--train-limit", type=int, default=None,
                    help="training sentences per trial (cpu default 1000)")
    ap.add_argument("--concurrent", default="1,2,4,8", help="cuda: trials at once on one GPU")
    ap.add_argument("--max-steps", type=int, default=300, help="cuda: steps per trial")
    ap.add_argument("--gpu", default="0", help="cuda: the GPU id")
    ap.add_argument("--scratch-base", action="store_true",
                    help="cuda: a bert-base config from scratch instead of the study's model")
    ap.add_argument("--fast-path", choices=["auto", "on", "off"], default="auto",
                    help="cuda: the trainer's fast path (each trial process compiles its "
                    "shapes; inductor's cache on disk serves the later ones)")
    ap.add_argument("--data", help="cuda: the data folder (default: the study's)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp one)")
    args = ap.parse_args()
    args.workers = [int(x) for x in args.workers.split(",")]
    args.concurrent = [int(x) for x in args.concurrent.split(",")]
    if args.study is None:
        args.study = REPO / "studies" / ("demo.yaml" if args.device == "cpu" else "msra-bert.yaml")
    if args.device == "cpu" and args.train_limit is None:
        args.train_limit = 1000
    work = args.out or Path(tempfile.mkdtemp(prefix="hpsearch-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"scaling: {args.study.name}, device {args.device}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, work folder {work}")
    (cpu if args.device == "cpu" else cuda)(args, work)


if __name__ == "__main__":
    main()
