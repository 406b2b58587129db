"""Child processes that must not outlive the process that started them.

A worker's trial process, a fused array's child and a distributed trial's ranks all train on
their parent's behalf: left running after it died, one would hold a GPU and write into a trial
that another process is about to resume. Torch-free, so a worker can use it before any import of
the trainer.
"""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(parent: int) -> None:
    """Ask the kernel to kill us when our parent dies (Linux); elsewhere check once."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request was in place
        os._exit(1)
