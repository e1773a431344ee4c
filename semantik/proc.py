"""Process plumbing: what every child process Semantik starts does first (die with the process
that started it), handing freed memory back to the system in a long-lived process, and the memory
a process may use (its cgroup's limit, or the machine's RAM)."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent exits, even by SIGKILL: the extraction child (its
    worker), the OCR command (its extraction child), the vector engine and the OpenVINO
    quantization (their server or worker) and an index build (its vector engine) call it first
    thing. ``parent``: the pid the child was started by, when known (a child that is handed it can
    tell it was orphaned before the call)."""
    parent = os.getppid() if parent is None else parent
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os._exit(1)


def release_free_memory() -> int | None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``) and return the
    process's anonymous memory after it, in MB (None where either is unavailable). The vector
    engine calls it after an index build: the build frees hundreds of MB that glibc would otherwise
    keep mapped for the process, counted in its RSS until it exits."""
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return anonymous_memory_mb()


def anonymous_memory_mb() -> int | None:
    """This process's resident anonymous memory (``RssAnon``), in MB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def memory_cgroup(root: Path = Path("/")) -> tuple[Path, Path, str] | None:
    """This process's memory cgroup: its hierarchy's root directory, the cgroup's directory, and the
    name of the limit file there (cgroup v1's memory controller where it is mounted, ``memory.limit_in_bytes``;
    else v2's unified hierarchy, ``memory.max``). None where ``/proc/self/cgroup`` names neither.
    ``root``: where ``/proc`` and ``/sys`` are (tests)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    entries = [fields for fields in (line.split(":", 2) for line in lines) if len(fields) == 3]
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            base = root / "sys/fs/cgroup/memory"
            return base, base / path.lstrip("/"), "memory.limit_in_bytes"
    for hierarchy, controllers, path in entries:
        if hierarchy == "0" and controllers == "":
            base = root / "sys/fs/cgroup"
            return base, base / path.lstrip("/"), "memory.max"
    return None


def memory_limit_mb(root: Path = Path("/")) -> int | None:
    """The memory this process may use, in MB: the lowest limit of its cgroup and the cgroups above
    it (``memory_cgroup``), and at most the machine's RAM; None where neither can be read.
    ``root``: where ``/proc`` and ``/sys`` are (tests)."""
    limits: list[int] = []
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    group = memory_cgroup(root)
    if group is not None:
        base, path, name = group
        while True:  # this cgroup and every one above it, up to the hierarchy's root
            try:
                value = (path / name).read_text().strip()
                if value.isdigit():
                    limits.append(int(value))
            except OSError:
                pass
            if path == base or base not in path.parents:
                break
            path = path.parent
    return min(limits) // 2**20 if limits else None
