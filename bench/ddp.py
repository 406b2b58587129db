"""One trial on 1 and on 2 processes (``devices_per_trial``, gloo on CPU): speed and memory.

The demo study's trainer (one epoch, fp32, one thread a rank) trains the same trial as one
process and as two ranks, each arm in a fresh interpreter so its memory is its own. Printed
per arm: train tokens/s (between the first and the last optimizer step, so start-up and the
final evaluation are not in it), the peak resident memory of rank 0 and the largest of the
other ranks, and the trial's final validation F1 (the same global batch: it must not depend on
the number of ranks). On a CPU with 2 cores the two ranks share the machine with nothing else
to gain: what this shows is the cost of the collectives, not a speed-up; on GPUs the same
command with ``--device cuda`` measures NCCL across the visible devices.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ddp.py [--ranks 1,2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def arm(ranks: int, work: Path, device: str) -> dict:
    """This process trains one trial with ``ranks`` ranks and reports on it."""
    from hpsearch.config import TrainerConfig
    from hpsearch.trainer import prepare, train

    base = yaml.safe_load((REPO / "studies" / "demo.yaml").read_text())["trainer"]
    base.update(data_dir=str(work / "data"), max_epochs=1, progress=False, learning_rate=3e-3,
                devices_per_trial=ranks, device=device)
    cfg = TrainerConfig(**base)
    prep = prepare(cfg, work / "data", work / "cache")
    marks: list[tuple[float, int]] = []
    result = train(cfg, prep, work / f"ranks-{ranks}-{time.time_ns()}",
                   on_step=lambda step, tokens: marks.append((time.perf_counter(), tokens)))
    (t0, k0), (t1, k1) = marks[0], marks[-1]
    return {"ranks": ranks, "tokens_per_s": (k1 - k0) / (t1 - t0), "f1": result.value,
            "rank0_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "other_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            if ranks > 1 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arm", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm is not None:
        print(json.dumps(arm(args.arm, Path(args.work), args.device)))
        return

    from hpsearch.demo_data import generate_demo_data

    work = Path(tempfile.mkdtemp(prefix="hpsearch-ddp-"))
    generate_demo_data(work / "data")
    rows: dict[int, list[dict]] = {}
    for r in range(args.rounds):
        for n in (int(x) for x in args.ranks.split(",")):
            out = subprocess.run(
                [sys.executable, __file__, "--arm", str(n), "--work", str(work),
                 "--device", args.device], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.setdefault(n, []).append(row)
            other = "-" if row["other_rss_mb"] is None else f"{row['other_rss_mb']:.0f}"
            print(f"round {r} ranks={n}  {row['tokens_per_s']:>9,.0f} train tokens/s  "
                  f"rank0 {row['rank0_rss_mb']:.0f} MB  other ranks {other} MB  "
                  f"val f1 {row['f1']:.4f}", flush=True)
    print()
    print(f"{'ranks':>5} {'median tokens/s':>16} {'vs 1':>6} {'f1':>8}")
    one = statistics.median(r["tokens_per_s"] for r in rows[min(rows)])
    for n, rs in rows.items():
        med = statistics.median(r["tokens_per_s"] for r in rs)
        print(f"{n:>5} {med:>16,.0f} {med / one:>6.2f} {rs[-1]['f1']:>8.4f}")


if __name__ == "__main__":
    main()
