"""Gradient checkpointing and accumulation on CPU: train tokens/s and peak memory, side by side.

A BERT big enough for its activations to dominate (hidden 256, 4 layers, 4 heads, intermediate
1024, windows of 128 sub-words) trains from scratch on the demo data with every 8 sentences
joined into one (so windows are near 128 wide), 32 windows an update (``batch_size: 32``, the
global batch), fp32, dropout 0, on one thread. Four arms: gradient_accumulation_steps 1 and 4
(the same global batch, 8 windows a forward pass), each with and without
gradient_checkpointing.

Each run is a fresh process, so its peak resident set size (``ru_maxrss``) is its own: it is
read after every optimizer step (the evaluation after the last step is not in it), beside the
process's RSS just before ``train`` starts (data read, torch loaded); the difference is what
training adds: weights, AdamW state, gradients and the activations kept for the backward. Each
arm runs twice a round, with glibc's malloc as it comes and with a fixed mmap threshold (see
MALLOCS): the first gives the speed and the memory a machine sees, the second the memory the
tensors need. Throughput is measured between the first and the last optimizer step. Arms
alternate round by round; the table gives the medians, and each arm's loss at its last step
(the same trial four ways).

    OMP_NUM_THREADS=1 .venv/bin/python bench/accumulation.py [--rounds 2] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARMS = {  # name: (gradient_accumulation_steps, gradient_checkpointing)
    "A=1": (1, False),
    "A=1 ckpt": (1, True),
    "A=4": (4, False),
    "A=4 ckpt": (4, True),
}
JOIN = 8  # demo sentences per bench sentence
#: How each arm's run is repeated. glibc keeps freed blocks in its heap once its mmap
#: threshold has risen (it does on the first large free), so by default a process's peak RSS is
#: the most its heap ever held, fragments included: what the machine sees, but a blurred view
#: of what the tensors need. A fixed threshold maps every block over 128 KiB on its own and
#: unmaps it when freed, so RSS follows the live tensors, at the cost of page faults: that
#: run's memory is reported, its speed is not.
MALLOCS = {"default": {}, "fixed": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def trainer(data: Path, steps: int, accumulation: int, checkpointing: bool) -> dict:
    return {
        "model": "scratch",
        "scratch": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "intermediate_size": 1024, "vocab_size": 2000,
                    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "data_dir": str(data), "max_length": 128, "batch_size": 32,
        "max_epochs": 10, "max_steps": steps, "eval_batch_tokens": 2048,
        "learning_rate": 1e-3, "precision": "fp32", "device": "cpu", "num_threads": 1,
        "progress": False, "monitor_every": 0, "seed": 0,
        "gradient_accumulation_steps": accumulation, "gradient_checkpointing": checkpointing,
    }


def long_sentences(demo: Path, out: Path) -> Path:
    """The demo data with every ``JOIN`` sentences of a split joined into one."""
    for split in ("train", "val", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for name in ("sentences.txt", "tags.txt"):
            lines = (demo / split / name).read_text(encoding="utf-8").splitlines()
            joined = [" ".join(lines[i:i + JOIN]) for i in range(0, len(lines), JOIN)]
            (out / split / name).write_text("\n".join(joined) + "\n", encoding="utf-8")
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def training_mb(row: dict) -> float:
    return row["peak_mb"] - row["before_mb"]


def child(data: Path, cache: Path, out: Path, steps: int, arm: str) -> None:
    """One run in this fresh process; its figures as one JSON line."""
    from hpsearch.config import TrainerConfig
    from hpsearch.trainer import prepare, train

    cfg = TrainerConfig(**trainer(data, steps, *ARMS[arm]))
    prep = prepare(cfg, data, cache)
    before = rss_mb()
    marks: list[tuple[float, int, float]] = []

    def on_step(step: int, tokens: int) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        marks.append((time.perf_counter(), tokens, peak))

    train(cfg, prep, out, on_step=on_step)
    (t0, k0, _), (t1, k1, peak) = marks[0], marks[-1]
    loss = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line][-1]["loss"]
    print(json.dumps({"tokens_per_s": (k1 - k0) / (t1 - t0), "peak_mb": peak,
                      "before_mb": before, "loss": loss, "steps": len(marks)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="optimizer updates a run")
    ap.add_argument("--child", nargs=4, metavar=("DATA", "CACHE", "OUT", "ARM"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        data, cache, out, arm = args.child
        child(Path(data), Path(cache), Path(out), args.steps, arm)
        return

    from hpsearch.config import TrainerConfig
    from hpsearch.demo_data import generate_demo_data
    from hpsearch.trainer import prepare

    work = Path(tempfile.mkdtemp(prefix="hpsearch-accumulation-"))
    data = long_sentences(Path(generate_demo_data(work / "demo")), work / "data")
    cfg = TrainerConfig(**trainer(data, args.steps, 1, False))
    prep = prepare(cfg, data, work / "cache")  # the tokenizer and features, made once
    lengths = prep.train.lengths
    print(f"{len(lengths)} training windows, mean {lengths.mean():.0f} and max {lengths.max()} "
          f"sub-words; 32 windows an update, {args.steps} updates a run", flush=True)

    got: dict[tuple[str, str], list[dict]] = {(a, m): [] for a in ARMS for m in MALLOCS}
    for r in range(args.rounds):
        for arm in ARMS:
            for malloc, env in MALLOCS.items():
                out = subprocess.run(
                    [sys.executable, __file__, "--steps", str(args.steps), "--child",
                     str(data), str(work / "cache"),
                     str(work / f"r{r}-{arm.replace(' ', '-')}-{malloc}"), arm],
                    capture_output=True, text=True, check=True, env={**os.environ, **env})
                row = json.loads(out.stdout.strip().splitlines()[-1])
                got[arm, malloc].append(row)
                print(f"round {r} {arm:<9} malloc {malloc:<7} {row['tokens_per_s']:>6,.0f} "
                      f"train tokens/s  peak RSS {row['peak_mb']:>5.0f} MB = "
                      f"{row['before_mb']:.0f} before training + {training_mb(row):>4.0f}  "
                      f"last loss {row['loss']:.7f}", flush=True)

    def med(arm: str, malloc: str, of) -> float:
        return statistics.median(of(x) for x in got[arm, malloc])

    print()
    print("tokens/s: default malloc; training MB: peak RSS minus RSS before training, "
          "medians of the rounds")
    print(f"{'arm':<9} {'tokens/s':>8} {'vs A=1':>7} {'MB default':>11} {'vs A=1':>7} "
          f"{'MB fixed':>9} {'vs A=1':>7} {'last loss':>10}")
    tps0 = med("A=1", "default", lambda x: x["tokens_per_s"])
    mb0 = {m: med("A=1", m, training_mb) for m in MALLOCS}
    for arm in ARMS:
        tps = med(arm, "default", lambda x: x["tokens_per_s"])
        mb = {m: med(arm, m, training_mb) for m in MALLOCS}
        losses = {x["loss"] for m in MALLOCS for x in got[arm, m]}
        print(f"{arm:<9} {tps:>8,.0f} {tps / tps0:>7.3f} {mb['default']:>11.0f} "
              f"{mb['default'] / mb0['default']:>7.3f} {mb['fixed']:>9.0f} "
              f"{mb['fixed'] / mb0['fixed']:>7.3f} {'/'.join(f'{v:.7f}' for v in losses):>10}")


if __name__ == "__main__":
    main()
