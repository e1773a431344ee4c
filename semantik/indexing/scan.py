"""Find the files a job indexes: include/exclude globs, a size limit, symlinks kept inside the roots."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from semantik.domain import FileStatus, ScannedFile
from semantik.indexing.extract import format_key
from semantik.paths import is_within


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    # A pattern matches the path relative to the job directory or the bare file name:
    # "*.pdf" takes every PDF at any depth, "reports/*" everything under reports/.
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in patterns)


def folder_entry(path: Path) -> str:
    """How a folder that cannot be listed is named among the job's files: with a trailing separator."""
    return str(path).rstrip(os.sep) + os.sep


def file_kind(mode: int) -> str:
    """What a stat mode says a path is, for reasons shown to a person."""
    kinds = ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
             (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"))  # fmt: skip
    return next((name for check, name in kinds if check(mode)), "special file")


class _Entry(NamedTuple):
    path: Path  # as found under the job directory
    target: Path | None  # what it resolves to, when that is a regular file inside the roots
    status: FileStatus | None = None  # set when the entry is accounted for without being read
    reason: str | None = None
    info: os.stat_result | None = None  # the target's stat, for regular files


def _walk(directory: Path, recursive: bool, roots: Sequence[Path]) -> Iterator[_Entry]:
    """Every regular file under ``directory`` (with its resolved target), and with a status and a
    reason: links that dangle or leave the roots, special files (FIFOs, devices, sockets: never
    read), and folders below ``directory`` that cannot be listed.

    Raises OSError when ``directory`` itself cannot be listed.
    """
    seen_dirs: set[Path] = set()
    stack = [directory]
    while stack:
        current = stack.pop()
        real_dir = current.resolve()
        if real_dir in seen_dirs:  # a symlink loop or a second link to the same folder
            continue
        seen_dirs.add(real_dir)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            if current == directory:
                raise
            # Its files are unknown, so the folder itself is accounted for, as one failed entry.
            yield _Entry(current, None, FileStatus.FAILED, f"cannot list folder: {exc.strerror or exc}")
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    target = path.resolve(strict=True)
                    info = target.stat()
                else:
                    target, info = path, entry.stat()
                mode = info.st_mode
            except (OSError, RuntimeError) as exc:
                if entry.is_symlink():
                    yield _Entry(path, None, FileStatus.SKIPPED, "broken symlink")
                else:  # gone since the folder was listed, or not ours to look at
                    yield _Entry(path, None, FileStatus.FAILED, f"cannot stat: {getattr(exc, 'strerror', exc)}")
                continue
            if not is_within(target, roots):
                yield _Entry(path, None, FileStatus.SKIPPED, "symlink leads outside the allowed roots")
            elif stat.S_ISDIR(mode):
                if recursive:
                    stack.append(path)
            elif stat.S_ISREG(mode):
                yield _Entry(path, target, info=info)
            else:
                yield _Entry(path, None, FileStatus.SKIPPED, f"not a regular file ({file_kind(mode)})")


def scan_directory(
    directory: Path,
    *,
    recursive: bool,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    allowed_roots: Sequence[Path],
    max_file_size_bytes: int,
) -> list[ScannedFile]:
    """Every candidate file under ``directory``; files that cannot be indexed come back already
    ``skipped`` or ``failed`` with the reason, and so does a folder that cannot be listed (named by
    ``folder_entry``), so each one is accounted for. Raises OSError when ``directory`` cannot be listed."""
    found: list[ScannedFile] = []
    for path, target, status, reason, info in _walk(directory, recursive, allowed_roots):
        relative = path.relative_to(directory).as_posix()
        if exclude and _matches(relative, exclude):
            continue
        if status == FileStatus.FAILED:  # an unlistable folder, whatever the include globs say
            found.append(ScannedFile(folder_entry(path), 0, 0.0, status, reason))
            continue
        suffix = path.suffix.lower()
        if include is None:
            if format_key(path.name) is None:
                continue
        elif not _matches(relative, include):
            continue
        if target is None or info is None:
            found.append(ScannedFile(str(path), 0, 0.0, status or FileStatus.SKIPPED, reason))
            continue
        status, error = FileStatus.PENDING, None
        if format_key(target.name) is None:  # a symlink's target decides
            status, error = FileStatus.SKIPPED, f"unsupported file type {suffix or '(none)'!r}"
        elif info.st_size > max_file_size_bytes:
            status, error = FileStatus.SKIPPED, f"larger than the {max_file_size_bytes // (1024 * 1024)} MB limit"
        found.append(
            ScannedFile(
                str(path),
                info.st_size,
                info.st_mtime,
                status,
                error,
                mtime_ns=info.st_mtime_ns,
                ctime_ns=info.st_ctime_ns,
                inode=info.st_ino,
            )
        )
    return found
