"""The resources one process shares between its server and its in-process worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import structlog

from semantik.inference.embedder import Embedder, default_model_path, model_dimension
from semantik.settings import Settings
from semantik.store.contents import Contents
from semantik.store.db import Database, make_private_dir
from semantik.store.jobs import JobStore
from semantik.store.lifecycle import Lifecycle
from semantik.store.sources import Sources
from semantik.store.vectors import VectorStore

log = structlog.get_logger(__name__)


class Closable(Protocol):
    def close(self) -> None: ...


_K = TypeVar("_K", bound=Closable)


class Runtime:
    """Database, job store, vector store and (loaded on first use) the model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.db_path)
        self.jobs = JobStore(self.db)
        self.lifecycle = Lifecycle(self.db)
        self.vectors = VectorStore.from_settings(settings)
        self.sources = Sources(self.db)
        self.contents = Contents(self.db, self.vectors, self.sources)
        self.model_path = settings.model_path or default_model_path()
        self.model_dim = model_dimension(self.model_path)
        self.model_name = "all-MiniLM-L6-v2" if settings.model_path is None else self.model_path.name
        self._embedders: dict[str, Embedder] = {}
        self._model_lock = asyncio.Lock()
        self._kept: dict[str, Any] = {}
        self._closed = False

    async def open(self) -> None:
        # Only this user may enter it: it holds every indexed chunk's text (SQLite, Qdrant).
        make_private_dir(self.settings.data_dir, tighten=True)
        await self.db.open()

    async def close(self) -> None:
        self._closed = True
        try:
            for kept in reversed(list(self._kept.values())):
                with contextlib.suppress(Exception):  # the rest is closed all the same
                    kept.close()
            self._kept.clear()
        finally:
            await self.vectors.close()
            await self.db.close()
            for embedder in self._embedders.values():
                embedder.close()

    def keep(self, key: str, make: Callable[[], _K]) -> _K:
        """What ``make`` returns, made once per runtime under ``key`` and closed with it: how the
        layers above keep their own shared resources here (indexing's extraction processes)."""
        if key not in self._kept:
            if self._closed:
                raise RuntimeError("the runtime is closed")
            self._kept[key] = make()
        kept: _K = self._kept[key]
        return kept

    async def embedder(self, device: str | None = None) -> Embedder:
        """The model on ``device`` (default SEMANTIK_EMBED_DEVICE), loaded in a thread on first use
        (seconds; about a minute the first time on a machine, for the export and auto's measurement),
        then shared."""
        device = device or self.settings.embed_device
        async with self._model_lock:
            if device not in self._embedders:
                s = self.settings
                self._embedders[device] = await asyncio.to_thread(
                    Embedder,
                    self.model_path,
                    device=device,
                    dtype=s.embed_dtype,
                    batch_size=s.embed_batch_size,
                    backend=s.embed_backend,
                    cache_dir=s.effective_model_cache_dir,
                )
        return self._embedders[device]

    def device_for(self, gpu_index: int | None) -> str:
        """The torch device for a leased GPU (``cuda:N``; never via CUDA_VISIBLE_DEVICES, which is
        read once when CUDA starts), or the CPU default without a lease."""
        return self.settings.embed_device if gpu_index is None else f"cuda:{gpu_index}"
