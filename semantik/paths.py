"""The allowed-roots boundary: which paths jobs may read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def is_within(path: Path, roots: Sequence[Path]) -> bool:
    """True when the (already resolved) ``path`` is one of ``roots`` or lies below one."""
    return any(path == root or path.is_relative_to(root) for root in roots)
