"""Batch sizing that survives GPU out-of-memory errors: halve on OOM, grow back after successes.

Pure logic: torch is never imported here (an OOM is recognised by its class name or message), so
the same code runs, and is tested, on machines without a GPU. ``encode`` is synchronous; call it
from the encode executor, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt
import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def is_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (any class of that name), or a RuntimeError saying "out of memory"."""
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return "out of memory" in str(exc).lower()


class AdaptiveBatch:
    """Runs inputs through ``encode_fn`` in batches of ``size``, starting at ``max_size``.

    An OOM halves the size (down to 1) and retries the same inputs; ``grow_after`` successful
    batches in a row double it again (up to ``max_size``). The size persists between calls, so
    keep one per model and device.
    """

    def __init__(self, max_size: int, grow_after: int = 8) -> None:
        if max_size < 1 or grow_after < 1:
            raise ValueError(f"max_size and grow_after must be at least 1, not {max_size} and {grow_after}")
        self.max_size, self.grow_after = max_size, grow_after
        self.size = max_size
        self._successes = 0

    @overload
    def encode(
        self,
        encode_fn: Callable[[list[T]], npt.NDArray[Any]],
        texts: Sequence[T],
        on_oom: Callable[[], object] | None = None,
    ) -> npt.NDArray[Any]: ...

    @overload
    def encode(
        self,
        encode_fn: Callable[[list[T]], list[R]],
        texts: Sequence[T],
        on_oom: Callable[[], object] | None = None,
    ) -> list[R]: ...

    def encode(
        self,
        encode_fn: Callable[[list[T]], Any],
        texts: Sequence[T],
        on_oom: Callable[[], object] | None = None,
    ) -> Any:
        """Results for ``texts`` in order: one array (``np.concatenate``) when ``encode_fn`` returns
        arrays, else one list. ``on_oom`` runs after each OOM (e.g. ``torch.cuda.empty_cache``).
        An OOM at batch size 1 is raised."""
        if not texts:
            return encode_fn([])
        parts: list[Any] = []
        start = 0
        while start < len(texts):
            batch = list(texts[start : start + self.size])
            try:
                parts.append(encode_fn(batch))
            except Exception as exc:
                if not is_oom(exc):
                    raise
                if on_oom is not None:
                    on_oom()
                if len(batch) == 1:
                    raise
                self._successes = 0
                # From the batch that failed: a short last batch may already be below ``size``.
                self.size = max(1, min(self.size, len(batch)) // 2)
                log.warning("gpu_oom_backoff", batch_size=len(batch), new_batch_size=self.size)
                continue
            start += len(batch)
            self._successes += 1
            if self._successes >= self.grow_after and self.size < self.max_size:
                self.size = min(self.max_size, self.size * 2)
                self._successes = 0
        if all(isinstance(part, np.ndarray) for part in parts):
            return np.concatenate(parts)
        return [item for part in parts for item in part]
