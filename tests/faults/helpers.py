"""What the fault tests share beside conftest's studies: a copy of the data to damage."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
