"""How long ``hpsearch plot`` takes on a big study: the report must stay under 5 s at 500 trials.

Builds a synthetic study (completed, pruned and failed trials with learning curves) in a
temporary folder, on SQLite (the default storage) and on Optuna's journal file, and times
``write_report`` on each: opening the storage, reading every trial, all figures, the HTML.

    .venv/bin/python bench/plot_speed.py [--trials 500] [--storage sqlite|journal|both]

Filling SQLite with 500 trials takes a while (one transaction per row); the timing that matters
starts after that.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from views_helpers import make_synthetic_study  # noqa: E402

from hpsearch import plots  # noqa: E402

LIMIT_S = 5.0


def time_report(n: int, storage: str, repeat: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg, _ = make_synthetic_study(Path(tmp), n, storage=storage)
        print(f"  {storage}: built {n} trials in {time.perf_counter() - t0:.1f} s", flush=True)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            path = plots.write_report(cfg)
            times.append(time.perf_counter() - t0)
        size = path.stat().st_size / 1e6
    print(f"  {storage}: report {size:.1f} MB; seconds per run: "
          + ", ".join(f"{t:.2f}" for t in times))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--storage", choices=("sqlite", "journal", "both"), default="both")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    storages = ("sqlite", "journal") if args.storage == "both" else (args.storage,)
    worst = 0.0
    for storage in storages:
        times = time_report(args.trials, storage, args.repeat)
        print(f"{storage}: {args.trials} trials, write_report median "
              f"{statistics.median(times):.2f} s, max {max(times):.2f} s")
        worst = max(worst, max(times))
    ok = worst < LIMIT_S
    print(f"{'OK' if ok else 'TOO SLOW'}: slowest run {worst:.2f} s (limit {LIMIT_S:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
