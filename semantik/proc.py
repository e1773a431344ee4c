"""Process plumbing: what every child process Semantik starts does first (die with the process
that started it), and handing freed memory back to the system in a long-lived process."""

from __future__ import annotations

import ctypes
import os
import signal

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


_MADV_WILLNEED = 3
_MADV_POPULATE_READ = 22  # Linux 5.14+


def populate_mappings(directory: str, names: tuple[str, ...]) -> int:
    """Map in now the pages of this process's file mappings under ``directory`` whose file name is
    one of ``names`` (``MADV_POPULATE_READ``; where the kernel lacks it, ``MADV_WILLNEED`` reads
    them ahead). Returns the bytes asked for. The vector engine calls it for a shard it just
    opened: an index search touches vectors all over the file, and each first touch of a page is a
    fault (searches ran 3-4x slower until most pages had been touched)."""
    prefix = directory.rstrip("/") + "/"
    ranges: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6:
                    path = fields[5].rstrip("\n")
                    if path.startswith(prefix) and path.rsplit("/", 1)[-1] in names:
                        start, end = (int(x, 16) for x in fields[0].split("-"))
                        ranges.append((start, end - start))
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start, length in ranges:
        if libc.madvise(start, length, _MADV_POPULATE_READ) != 0:
            libc.madvise(start, length, _MADV_WILLNEED)
    return sum(length for _, length in ranges)
