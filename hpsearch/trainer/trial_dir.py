"""The one place that knows what a trial folder holds.

    trials/trial-0007/
        train.log                 what the trial did, in words
        metrics.jsonl             one JSON line per logged step and per evaluation
        checkpoints/step-NNNNNNNN where a killed trial resumes from (see checkpoint.py)
        best/model.safetensors    the best evaluation's weights, for the exported model

The driver decides what to keep (``keep: best|all``) and which folder a continuation adopts;
it does so through these functions, so the layout is written down once. Nothing here imports
torch at module level: the driver and the views tidy folders without loading the trainer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

CHECKPOINTS, BEST, WEIGHTS = "checkpoints", "best", "model.safetensors"
LOG, METRICS = "train.log", "metrics.jsonl"
STEP_PREFIX = "step-"


def trial_dir(out: Path, number: int) -> Path:
    """Trial ``number``'s folder under a study's output folder."""
    return out / "trials" / f"trial-{number:04d}"


def checkpoints(folder: Path) -> Path:
    return folder / CHECKPOINTS


def best_weights(folder: Path) -> Path:
    return folder / BEST / WEIGHTS


def has_checkpoint(folder: str | Path) -> bool:
    ckpts = checkpoints(Path(folder))
    return ckpts.is_dir() and any(p.name.startswith(STEP_PREFIX) for p in ckpts.iterdir())


def drop_checkpoints(folder: Path) -> None:
    """A trial nobody will resume (finished, pruned) needs no checkpoints."""
    shutil.rmtree(checkpoints(folder), ignore_errors=True)


def drop_best(folder: Path) -> None:
    shutil.rmtree(folder / BEST, ignore_errors=True)


def save_best(state_dict: dict[str, Any], folder: Path) -> None:
    """The best evaluation's weights, so the study can hand back a model, not just a number."""
    from safetensors.torch import save_file

    target = best_weights(folder)
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, tmp)
    os.replace(tmp, target)


def adopt_best(old: Path, new: Path) -> None:
    """A continuation takes over its predecessor's best weights: the best evaluation may have
    come before the interruption."""
    src = best_weights(old)
    if not src.exists():
        return
    dst = best_weights(new)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class MetricsLog:
    """metrics.jsonl: one JSON object a line, cut back to the checkpoint on resume."""

    def __init__(self, folder: Path):
        self.path = folder / METRICS

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [
            ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.path)

    def write(self, **row: Any) -> None:
        self.write_rows([row])

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
