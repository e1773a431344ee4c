"""The resources one process shares between its server and its in-process worker."""

from __future__ import annotations

import asyncio

import structlog

from semantik.chunk import Chunker
from semantik.db import Database
from semantik.embed import Embedder, default_model_path, model_dimension
from semantik.jobs import JobStore
from semantik.lifecycle import Lifecycle
from semantik.settings import Settings
from semantik.vectors import VectorStore

log = structlog.get_logger(__name__)


class Runtime:
    """Database, job store, vector store and (loaded on first use) the model and its chunker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.db_path)
        self.jobs = JobStore(self.db)
        self.lifecycle = Lifecycle(self.db)
        self.vectors = VectorStore(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            path=settings.qdrant_path,
        )
        self.model_path = settings.model_path or default_model_path()
        self.model_dim = model_dimension(self.model_path)
        self.model_name = "all-MiniLM-L6-v2" if settings.model_path is None else self.model_path.name
        self._embedder: Embedder | None = None
        self._chunker: Chunker | None = None
        self._model_lock = asyncio.Lock()

    async def open(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.db.open()

    async def close(self) -> None:
        await self.vectors.close()
        await self.db.close()
        if self._embedder is not None:
            self._embedder.close()

    async def embedder(self) -> Embedder:
        """The model, loaded in a thread on first use (seconds), then shared."""
        async with self._model_lock:
            if self._embedder is None:
                s = self.settings
                self._embedder = await asyncio.to_thread(
                    Embedder,
                    self.model_path,
                    device=s.embed_device,
                    dtype=s.embed_dtype,
                    batch_size=s.embed_batch_size,
                )
        return self._embedder

    async def chunker(self) -> Chunker:
        embedder = await self.embedder()
        if self._chunker is None:
            s = self.settings
            self._chunker = Chunker(
                embedder.tokenizer,
                max_seq_length=embedder.max_seq_length,
                chunk_size=s.chunk_size_tokens,
                overlap=s.chunk_overlap_tokens,
            )
        return self._chunker
