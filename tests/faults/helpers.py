"""What every fault test needs: a tiny study, the CLI run in-process, and the study's trials."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
from click.testing import CliRunner
from conftest import write_study

from hpsearch.cli import main
from hpsearch.config import load_study

#: One epoch on a slice of the demo data: a trial takes a second or two.
TINY = {"train_limit": 120, "val_limit": 40, "max_epochs": 1}


def tiny_study(tmp_path: Path, data_dir: Path, **over) -> Path:
    trainer = {**TINY, **over.pop("trainer", {})}
    return write_study(tmp_path, data_dir, trainer=trainer, **over)


def cli(*args: str):
    """The real command line, in this process: exit code, stdout and stderr kept apart."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    cfg = load_study(path)
    return optuna.load_study(study_name=cfg.name, storage=cfg.storage_url).get_trials()


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
