"""How much the trainer's seed alone moves a trial's F1: one setting trained with several seeds.

The same study settings and parameters, trainer seeds 0..N-1 (data order, dropout masks and the
classifier head's initial weights change with it, nothing else). Prints each seed's best
validation F1, their mean, standard deviation and range, in F1 points. This spread is what a
search's best single trial may owe to luck, and what ``confirm:`` measures per finalist.

    .venv/bin/python bench/seeds.py studies/demo.yaml --set learning_rate=2e-3 --seeds 5
    make minilm && .venv/bin/python bench/seeds.py studies/conll03-minilm.yaml \\
        --set learning_rate=1e-4 --set weight_decay=0.01 --set train_limit=1500 \\
        --set max_epochs=1 --set precision=fp32 --seeds 3
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

from hpsearch.config import load_study  # noqa: E402
from hpsearch.opening import data_dir  # noqa: E402
from hpsearch.trainer import prepare, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="a trainer field or searched parameter, e.g. learning_rate=2e-3")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    cfg = load_study(args.study)
    params = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.sets)}
    work = Path(tempfile.mkdtemp(prefix="hpsearch-seeds-"))
    values = []
    for seed in range(args.seeds):
        tcfg = cfg.trainer_for({**params, "seed": seed, "progress": False})
        prep = prepare(tcfg, data_dir(cfg), work / "cache")
        t0 = time.perf_counter()
        r = train(tcfg, prep, work / f"seed-{seed}")
        values.append(r.value)
        print(f"seed {seed}: best val f1 {r.value:.4f} at step {r.best_step} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    pts = [100 * v for v in values]
    print(f"mean {statistics.fmean(pts):.2f} points, std "
          f"{statistics.stdev(pts) if len(pts) > 1 else 0.0:.2f}, range "
          f"{max(pts) - min(pts):.2f} over {len(pts)} seeds")


if __name__ == "__main__":
    main()
