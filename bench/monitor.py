"""What the health signals cost: train tokens/s with ``monitor_every`` on and off, side by side.

The demo study's trainer (tiny BERT, CPU, one thread) trains the same trial with the monitor off
(``monitor_every: 0``), at its default (10) and, for scale, at every step (1). Arms alternate
round by round, so a slower minute of the machine hits all of them alike. Throughput is
measured between the first and the last optimizer step of each run (one epoch, its only
evaluation after the last step), so set-up and evaluation are not in it. The last line is
``monitor_cost=X%``: how much slower the default schedule trains than no monitor, from the
medians of the rounds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/monitor.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpsearch.config import TrainerConfig  # noqa: E402
from hpsearch.demo_data import generate_demo_data  # noqa: E402
from hpsearch.trainer import prepare, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--arms", default="0,10,1", help="monitor_every values to compare")
    args = ap.parse_args()
    arms = [int(a) for a in args.arms.split(",")]

    work = Path(tempfile.mkdtemp(prefix="hpsearch-monitor-"))
    data = Path(generate_demo_data(work / "data"))
    base = yaml.safe_load((REPO / "studies" / "demo.yaml").read_text())["trainer"]
    base.update(data_dir=str(data), max_epochs=1, progress=False, learning_rate=3e-3)
    prep = prepare(TrainerConfig(**base), data, work / "cache")

    rates: dict[int, list[float]] = {a: [] for a in arms}
    for r in range(args.rounds):
        for a in arms:
            marks: list[tuple[float, int]] = []
            result = train(TrainerConfig(**{**base, "monitor_every": a}), prep,
                           work / f"r{r}-m{a}",
                           on_step=lambda step, tokens, marks=marks: marks.append(
                               (time.perf_counter(), tokens)))
            (t0, k0), (t1, k1) = marks[0], marks[-1]
            rates[a].append((k1 - k0) / (t1 - t0))
            print(f"round {r} monitor_every={a:<3d} {rates[a][-1]:>10,.0f} train tokens/s "
                  f"({result.steps} steps, val f1 {result.value:.4f})", flush=True)
    print()
    print(f"{'monitor_every':>14} {'median tokens/s':>16} {'vs off':>8}")
    off = statistics.median(rates[arms[0]])
    for a in arms:
        med = statistics.median(rates[a])
        print(f"{a:>14d} {med:>16,.0f} {med / off:>8.3f}")
    default = 10 if 10 in rates else arms[1]
    print(f"monitor_cost={100 * (1 - statistics.median(rates[default]) / off):.1f}%")


if __name__ == "__main__":
    main()
