"""Vectors in Qdrant: a Qdrant server by URL, or qdrant-client's embedded mode under the data dir.

Embedded mode allows one process per storage path, and its "async" client runs every call inline
on the event loop (an on-disk upsert commits SQLite once per point, ~1.4 ms each). So embedded calls
go to the synchronous client in one dedicated thread instead: same calls, the loop stays free.
The embedded store opens on first use, so a server that only queues jobs never holds the lock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import AsyncQdrantClient, QdrantClient, models

from semantik.errors import Unavailable

# uuid5 namespace for point ids: the same (collection, content, chunk) always maps to the same point.
POINT_NAMESPACE = uuid.UUID("5c1e4f3a-7d2b-4c8e-9f60-2b1d8e7a9c11")
UPSERT_BATCH = 256
# Qdrant collection backing Semantik collection NAME; the prefix keeps a shared Qdrant server tidy.
QDRANT_COLLECTION_PREFIX = "semantik_"


def point_id(collection: str, sha256: str, chunk_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{collection}:{sha256}:{chunk_index}"))


def qdrant_name(collection: str) -> str:
    return QDRANT_COLLECTION_PREFIX + collection


@dataclass(frozen=True)
class Hit:
    score: float
    payload: dict[str, Any]


class VectorStore:
    def __init__(self, *, url: str | None, api_key: str | None, path: Path) -> None:
        self._url, self._api_key, self._path = url, api_key, path
        self._async: AsyncQdrantClient | None = None
        self._sync: QdrantClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._open_lock = asyncio.Lock()
        self._known: set[str] = set()

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async with self._open_lock:
            if self._async is None and self._sync is None:
                if self._url is not None:
                    self._async = AsyncQdrantClient(url=self._url, api_key=self._api_key, timeout=30)
                else:
                    await self._open_embedded()
        if self._async is not None:
            return await getattr(self._async, method)(*args, **kwargs)
        assert self._sync is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(getattr(self._sync, method), *args, **kwargs))

    async def _open_embedded(self) -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semantik-qdrant")
        self._path.mkdir(parents=True, exist_ok=True)
        try:
            client = await asyncio.get_running_loop().run_in_executor(
                executor, partial(QdrantClient, path=str(self._path))
            )
        except RuntimeError as exc:
            executor.shutdown(wait=False)
            if "already accessed" in str(exc):
                raise Unavailable(
                    f"the embedded vector store {self._path} is held by another process; only one process can"
                    " open it. Run `semantik up` alone, or share a Qdrant server via SEMANTIK_QDRANT_URL.",
                    code="vector_store_busy",
                ) from exc
            raise
        self._sync, self._executor = client, executor

    async def close(self) -> None:
        async with self._open_lock:
            if self._async is not None:
                await self._async.close()
                self._async = None
            if self._sync is not None and self._executor is not None:
                sync, self._sync = self._sync, None
                await asyncio.get_running_loop().run_in_executor(self._executor, sync.close)
                self._executor.shutdown(wait=True)
                self._executor = None
            self._known.clear()

    async def ensure_collection(self, collection: str, dim: int) -> None:
        name = qdrant_name(collection)
        if name in self._known:
            return
        if not await self._call("collection_exists", name):
            try:
                await self._call(
                    "create_collection",
                    name,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                )
            except Exception:
                # Another worker may have created it between our check and create.
                if not await self._call("collection_exists", name):
                    raise
            if self._url is not None:
                await self._call(
                    "create_payload_index",
                    name,
                    field_name="sha256",
                    field_schema=models.PayloadSchemaType.KEYWORD,
                )
        self._known.add(name)

    async def upsert_file(
        self,
        collection: str,
        *,
        sha256: str,
        path: str,
        job_id: str,
        texts: Sequence[str],
        vectors: npt.NDArray[np.float32],
    ) -> None:
        """Write every chunk of one file; ids are deterministic, so a repeat overwrites, never duplicates."""
        points = [
            models.PointStruct(
                id=point_id(collection, sha256, index),
                vector=vectors[index].tolist(),
                payload={
                    "path": path,
                    "chunk_index": index,
                    "text": text,
                    "job_id": job_id,
                    "sha256": sha256,
                },
            )
            for index, text in enumerate(texts)
        ]
        for start in range(0, len(points), UPSERT_BATCH):
            await self._call("upsert", qdrant_name(collection), points=points[start : start + UPSERT_BATCH], wait=True)

    async def delete_contents(self, collection: str, hashes: Sequence[str]) -> None:
        """Remove the points of file contents that are no longer current."""
        if not hashes:
            return
        selector = models.FilterSelector(
            filter=models.Filter(must=[models.FieldCondition(key="sha256", match=models.MatchAny(any=list(hashes)))])
        )
        await self._call("delete", qdrant_name(collection), points_selector=selector, wait=True)

    async def search(self, collection: str, vector: npt.NDArray[np.float32], k: int) -> list[Hit]:
        name = qdrant_name(collection)
        if name not in self._known and not await self._call("collection_exists", name):
            return []  # the collection exists but nothing has been indexed into it yet
        response = await self._call("query_points", name, query=vector.tolist(), limit=k, with_payload=True)
        return [Hit(score=float(p.score), payload=dict(p.payload or {})) for p in response.points]

    async def count(self, collection: str) -> int:
        """How many points the collection holds (0 before anything was indexed into it)."""
        name = qdrant_name(collection)
        if not await self._call("collection_exists", name):
            return 0
        result = await self._call("count", name, exact=True)
        return int(result.count)
