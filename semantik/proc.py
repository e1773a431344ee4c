"""What every child process Semantik starts does first: die with the process that started it."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent exits, even by SIGKILL: the extraction child (its
    worker), the OCR command (its extraction child), the vector engine and the OpenVINO
    quantization (their server or worker) call it first thing. ``parent``: the pid the child was
    started by, when known (a child that is handed it can tell it was orphaned before the call)."""
    parent = os.getppid() if parent is None else parent
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os._exit(1)
