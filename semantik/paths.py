"""Paths: the allowed-roots boundary, and file names that are not valid UTF-8."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def is_within(path: Path, roots: Sequence[Path]) -> bool:
    """True when the (already resolved) ``path`` is one of ``roots`` or lies below one."""
    return any(path == root or path.is_relative_to(root) for root in roots)


def storable(path: str) -> tuple[str, bytes | None]:
    """How to store a path found on disk: (text to show and index, raw bytes or None).

    Linux names are bytes; one that is not valid UTF-8 reaches Python with surrogate escapes, which
    neither SQLite nor JSON can hold. It is shown with ``\\xNN`` escapes for the bad bytes, and its
    exact bytes are kept beside it (``files.raw_path``) so it can still be opened."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return raw.decode("utf-8", "backslashreplace"), raw
    return path, None
