"""Trial checkpoints that are safe to trust: atomic, checksummed, and free of pickle.

A checkpoint is a folder written under a temporary name and renamed into place, so a process
killed mid-write leaves no half checkpoint behind a valid name. ``manifest.json`` lists the
sha256 of every file; a checkpoint whose files do not match is skipped (with a warning) in
favour of the one before it. Weights are safetensors, optimizer and RNG tensors are loaded with
``torch.load(weights_only=True)`` and the rest is JSON, so a planted file cannot run code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hpsearch.trainer.trial_dir import STEP_PREFIX

log = logging.getLogger(__name__)

KEEP_LAST = 2


class CheckpointError(RuntimeError):
    pass


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]  # JSON: step, epoch, batch, best, history, rng...

    @property
    def step(self) -> int:
        return int(self.state["step"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python and numpy RNG as JSON, torch RNGs as tensors."""
    py = random.getstate()
    npy = np.random.get_state()
    js = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return js, tensors


def set_rng_state(js: dict[str, Any], tensors: dict[str, Any]) -> None:
    py = js["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = js["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save(
    root: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: dict[str, Any],
) -> Path:
    """Write ``root/step-NNNNNNNN`` atomically and keep only the newest ``KEEP_LAST``."""
    return write(root, weights=model.state_dict(), optimizer=optimizer.state_dict(),
                 scaler=scaler.state_dict() if scaler is not None else {}, state=state)


def write(
    root: Path,
    *,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scaler: dict[str, Any],
    state: dict[str, Any],
) -> Path:
    """:func:`save` from state dicts: a fused trial's member has no model or optimizer of its
    own, only its share of the array's, in the solo formats."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{state['step']:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                  tmp / "model.safetensors")
        js, rng = rng_state()
        torch.save({"optimizer": optimizer, "scaler": scaler, "rng": rng}, tmp / "training.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "rng": js}))
        manifest = {f.name: _sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException as e:
        # Asked before the partial files are removed; torch.save says only "unexpected
        # pos ..." when the disk fills under it.
        full = isinstance(e, Exception) and _out_of_space(root)
        shutil.rmtree(tmp, ignore_errors=True)
        if full and not (isinstance(e, OSError) and e.errno == errno.ENOSPC):
            raise OSError(errno.ENOSPC, f"No space left on device writing {final}: {e}") from e
        raise
    for old in list_checkpoints(root)[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _out_of_space(path: Path, margin: int = 1 << 20) -> bool:
    """Less than ``margin`` bytes free where ``path`` lives: a failed write there was ENOSPC."""
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX))


def verify(path: Path) -> dict[str, Any]:
    """The checkpoint's JSON state, or CheckpointError if any file is missing or altered."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e})") from None
    for name, digest in manifest.items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{path}: {name} does not match its checksum")
    return json.loads((path / "state.json").read_text())


def latest(root: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; damaged newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(root)):
        try:
            return Checkpoint(path, verify(path))
        except CheckpointError as e:
            log.warning("skipping damaged checkpoint: %s; trying the previous one", e)
    return None


def read(ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint's weights, and its optimizer, scaler and RNG states."""
    weights = load_file(ckpt.path / "model.safetensors")
    blob = torch.load(ckpt.path / "training.pt", weights_only=True, map_location="cpu")
    return weights, blob


def restore(
    ckpt: Checkpoint,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> None:
    weights, blob = read(ckpt)
    model.load_state_dict(weights)
    optimizer.load_state_dict(blob["optimizer"])
    if scaler is not None and blob["scaler"]:
        scaler.load_state_dict(blob["scaler"])
    set_rng_state(ckpt.state["rng"], blob["rng"])
