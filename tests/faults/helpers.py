"""What the fault tests share beside conftest's studies: the CLI run in-process, a data copy."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from hpsearch.cli import main

#: Trainer settings of a fault test's study: one epoch on 120 sentences, a second or two a trial.
ONE_EPOCH = {"train_limit": 120, "val_limit": 40, "max_epochs": 1}


def cli(*args: str):
    """The real command line, in this process: exit code, stdout and stderr kept apart."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
