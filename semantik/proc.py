"""Process plumbing: how Semantik starts a child process of its own code (``module_command``), what
every such child does first (die with the process that started it), handing freed memory and cached
file pages back to the system in a long-lived process, and the memory a process may use (its
cgroup's limit, or the machine's RAM)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import stat
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_MADV_PAGEOUT = 21


def module_command(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``python -m module args`` on this very code: this
    interpreter, this package (a checkout first on the module path; an installed one where it is
    installed), and ``-P``, so that the current folder does not come first: a folder holding a
    package called ``semantik`` (another checkout, a user's files) must not replace the code a
    child runs."""
    package_parent = str(Path(__file__).resolve().parents[1])
    # Installed (not a checkout): the child finds it where this interpreter installs packages, and
    # that folder put first would put every installed package before the standard library.
    installed = {str(Path(sysconfig.get_path(kind)).resolve()) for kind in ("purelib", "platlib")}
    first = [] if package_parent in installed else [package_parent]
    python_path = os.pathsep.join(filter(None, [*first, os.environ.get("PYTHONPATH")]))
    return [sys.executable, "-P", "-m", module, *args], {**os.environ, "PYTHONPATH": python_path}


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


def drop_cached_pages(directory: Path) -> int:
    """Ask the kernel to reclaim the cached pages of the files directly in ``directory``: each file
    is synced (a dirty page cannot be dropped), then the pages this process maps are paged out
    (``madvise(MADV_PAGEOUT)``, Linux 5.4 and later) and the rest dropped
    (``posix_fadvise(POSIX_FADV_DONTNEED)``). Nothing changes but what is in memory: the next read
    of a page reads it from disk again. The vector engine calls it for the write-ahead logs of
    shards that take few writes, which Edge reads whole when it opens a shard and which would
    otherwise stay cached beside what searches need (60 MB a shard). Returns how many files were
    advised; 0 where the calls are unavailable."""
    try:
        entries = [entry for entry in os.scandir(directory) if entry.is_file(follow_symlinks=False)]
    except OSError:
        return 0
    opened: list[tuple[str, int]] = []
    try:
        for entry in entries:
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            opened.append((os.path.realpath(entry.path), fd))
            with contextlib.suppress(OSError):
                os.fdatasync(fd)
        names = {name for name, _ in opened}
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[5].rstrip("\n") in names:
                        start, end = (int(x, 16) for x in fields[0].split("-"))
                        libc.madvise(start, end - start, _MADV_PAGEOUT)  # EINVAL before Linux 5.4: ignored
        except (OSError, AttributeError):
            pass
        advised = 0
        for _, fd in opened:
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                advised += 1
        return advised
    finally:
        for _, fd in opened:
            os.close(fd)


def prefetch_files(paths: Iterable[Path]) -> int:
    """Start reading the regular files among ``paths`` into the page cache
    (``posix_fadvise(POSIX_FADV_WILLNEED)``: the kernel reads them in the background, the call
    does not wait for the reads) and return how many bytes were asked for. Links are not followed;
    a file that cannot be opened is skipped."""
    asked = 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_size:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                asked += info.st_size
        except (OSError, AttributeError):
            pass
        finally:
            os.close(fd)
    return asked


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


def _cgroup_limits(root: Path) -> Iterable[tuple[Path, int]]:
    """This process's memory cgroup and every one above it, up to the hierarchy's root, that has a
    limit: its directory and the limit in bytes (``memory_cgroup``)."""
    group = memory_cgroup(root)
    if group is None:
        return
    base, path, name = group
    while True:
        try:
            value = (path / name).read_text().strip()
            if value.isdigit():
                yield path, int(value)
        except OSError:
            pass
        if path == base or base not in path.parents:
            return
        path = path.parent


def _meminfo_bytes(root: Path, field: str) -> int | None:
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_limit_mb(root: Path = Path("/")) -> int | None:
    """The memory this process may use, in MB: the lowest limit of its cgroup and the cgroups above
    it (``memory_cgroup``), and at most the machine's RAM; None where neither can be read.
    ``root``: where ``/proc`` and ``/sys`` are (tests)."""
    limits = [limit for _, limit in _cgroup_limits(root)]
    ram = _meminfo_bytes(root, "MemTotal")
    if ram is not None:
        limits.append(ram)
    return min(limits) // 2**20 if limits else None


def memory_available_mb(root: Path = Path("/")) -> int | None:
    """The memory a process started now beside this one could take, in MB: the machine's
    ``MemAvailable``, and under each cgroup of ``memory_limit_mb`` with a limit, that limit less the
    anonymous memory its processes hold (cgroup v2's ``anon``, v1's ``total_rss``; cached file pages
    are given back under pressure, so they count as available). None where nothing can be read."""
    available: list[int] = []
    for path, limit in _cgroup_limits(root):
        try:
            stat_lines = (path / "memory.stat").read_text().splitlines()
        except OSError:
            continue
        held = {k: v for k, _, v in (line.partition(" ") for line in stat_lines) if k in ("anon", "total_rss")}
        value = held.get("anon", held.get("total_rss", ""))
        if value.isdigit():
            available.append(max(0, limit - int(value)))
    machine = _meminfo_bytes(root, "MemAvailable")
    if machine is not None:
        available.append(machine)
    return min(available) // 2**20 if available else None
