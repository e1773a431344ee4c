"""Vectors: a Qdrant server by URL, or the embedded engine (Qdrant Edge) under the data dir.

Every chunk is one point: a dense vector from the model, a BM25 sparse vector from its text, and
its payload: path (and ``paths``, every path the content is at), chunk index, text, job id, sha256,
file type, ``dirs`` (the folders above its paths), ``mtime`` (the file's, when indexed), and where
the chunk is in its document when the format says: ``page``, ``slide``, ``sheet``, ``heading``.
A search is dense, keyword (BM25) or hybrid (both, fused by reciprocal rank fusion); each hit says
which retrievers found it. Both engines run the same plan (``hybrid.py``): the embedded one in its
own process (``engine.py``, ``edge.py``), the server through qdrant-client (``server.py``).

The embedded engine starts on first use, so a server that only queues jobs never holds the store;
on its first start it moves a store written by qdrant-client's local mode into it (``migrate.py``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from semantik.store import hybrid
from semantik.store.engine import EngineProcess
from semantik.store.hybrid import DEFAULT_CANDIDATES, Retriever, SearchMode, plan_search, retrievers_of
from semantik.store.hybrid import file_type as _file_type

if TYPE_CHECKING:
    from semantik.settings import Settings
    from semantik.store.server import ServerBackend

log = structlog.get_logger(__name__)

__all__ = ["FilePoints", "Hit", "SearchMode", "VectorStore", "point_id", "qdrant_name"]

# A writer to the embedded engine waits while this many sealed shards wait for an index build (see
# ``collection.py``): a job writes far slower than builds go (hundreds of chunks a second against
# thousands), but a migration or a bulk load of many workers could outrun them.
WRITE_BACKLOG_MAX = 1
BACKLOG_POLL_S = 0.5

# uuid5 namespace for point ids: the same (collection, content, chunk) always maps to the same point.
POINT_NAMESPACE = uuid.UUID("5c1e4f3a-7d2b-4c8e-9f60-2b1d8e7a9c11")
# Qdrant collection backing Semantik collection NAME; the prefix keeps a shared Qdrant server tidy.
QDRANT_COLLECTION_PREFIX = "semantik_"


@dataclass(frozen=True)
class FilePoints:
    """One file's chunks as points: texts and their vectors (one row each), and what every payload
    says about the file."""

    sha256: str
    path: str
    job_id: str
    texts: Sequence[str]
    vectors: npt.NDArray[np.float32]
    file_type: str | None = None  # from the path's extension when None
    locations: Sequence[Mapping[str, Any]] | None = None  # per chunk (page, sheet ...)
    mtime: float | None = None

    def payloads(self) -> list[dict[str, Any]]:
        common: dict[str, Any] = {
            "job_id": self.job_id,
            "sha256": self.sha256,
            "file_type": _file_type(self.path) if self.file_type is None else self.file_type,
            "dirs": hybrid.folders_of([self.path]),
        }
        if self.mtime is not None:
            common["mtime"] = self.mtime
        locations = self.locations
        return [
            {"path": self.path, "chunk_index": index, "text": text, **common, **(locations[index] if locations else {})}
            for index, text in enumerate(self.texts)
        ]


def point_id(collection: str, sha256: str, chunk_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{collection}:{sha256}:{chunk_index}"))


def qdrant_name(collection: str) -> str:
    return QDRANT_COLLECTION_PREFIX + collection


@dataclass(frozen=True)
class Hit:
    score: float
    payload: dict[str, Any]
    id: str = ""
    # Retriever ("dense", "keyword"; "identifier" when it holds an identifier-like query term) ->
    # its 0-based rank in that retriever's candidates.
    ranks: Mapping[str, int] = field(default_factory=dict)

    @property
    def retrievers(self) -> tuple[str, ...]:
        """Which retrievers found it: ("dense",), ("keyword",) or ("dense", "keyword")."""
        return retrievers_of(self.ranks)

    @property
    def exact(self) -> bool:
        """It holds every token of an identifier-like term of the query (hybrid searches)."""
        return Retriever.IDENTIFIER in self.ranks


class VectorStore:
    def __init__(
        self,
        *,
        url: str | None,
        api_key: str | None,
        path: Path,
        legacy_path: Path | None = None,
        rrf_k: int = 60,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> None:
        """``path``: the embedded store's directory (one Edge shard per collection); ``legacy_path``:
        where qdrant-client's local mode kept vectors before, migrated on first open."""
        self._url, self._api_key, self._path, self._legacy = url, api_key, path, legacy_path
        self.rrf_k, self.candidates = rrf_k, candidates
        self._server: ServerBackend | None = None
        self._engine: EngineProcess | None = None
        self._open_lock = asyncio.Lock()
        self._known: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorStore:
        return cls(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            path=settings.vectors_path,
            legacy_path=settings.qdrant_path,
            rrf_k=settings.search_rrf_k,
        )

    @property
    def embedded(self) -> bool:
        return self._url is None

    async def start(self) -> None:
        """Start the embedded engine (or the server's client) now rather than on first use."""
        await self._backend()

    async def _backend(self) -> ServerBackend | EngineProcess:
        async with self._open_lock:
            if self._server is None and self._engine is None:
                if self._url is not None:
                    from semantik.store.server import ServerBackend

                    self._server = ServerBackend(self._url, self._api_key)
                else:
                    engine = EngineProcess(self._path, legacy=self._legacy)
                    await engine.start()
                    self._engine = engine
            if self._server is not None:
                return self._server
            assert self._engine is not None
            return self._engine

    async def _engine_call(self, op: str, **kwargs: Any) -> Any:
        backend = await self._backend()
        assert isinstance(backend, EngineProcess)
        try:
            return await backend.call(op, **kwargs)
        except Exception as exc:
            if getattr(exc, "code", None) == "vector_engine_stopped":
                await self._forget(backend)
            raise

    async def _forget(self, engine: EngineProcess) -> None:
        """A dead engine: the next call starts a fresh one."""
        async with self._open_lock:
            if self._engine is engine:
                self._engine = None
                self._known.clear()
        await engine.close()

    async def close(self) -> None:
        async with self._open_lock:
            if self._server is not None:
                await self._server.close()
                self._server = None
            if self._engine is not None:
                engine, self._engine = self._engine, None
                await engine.close()
            self._known.clear()

    async def ensure_collection(self, collection: str, dim: int) -> None:
        """Create the collection's index (dense + BM25 vectors, payload indexes) unless it exists."""
        if collection in self._known:
            return
        backend = await self._backend()
        if self.embedded:
            await self._engine_call("ensure", collection=collection, dim=dim)
        else:
            assert not isinstance(backend, EngineProcess)
            await backend.ensure(qdrant_name(collection), dim)
        self._known.add(collection)

    async def upsert_file(
        self,
        collection: str,
        *,
        sha256: str,
        path: str,
        job_id: str,
        texts: Sequence[str],
        vectors: npt.NDArray[np.float32],
        file_type: str | None = None,
        locations: Sequence[Mapping[str, Any]] | None = None,
        mtime: float | None = None,
    ) -> None:
        """Write every chunk of one file (``upsert_files`` with one)."""
        file = FilePoints(sha256, path, job_id, texts, vectors, file_type, locations, mtime)
        await self.upsert_files(collection, [file])

    async def upsert_files(self, collection: str, files: Sequence[FilePoints]) -> None:
        """Write every chunk of these files in one request; ids are deterministic, so a repeat
        overwrites, never duplicates. Returns once the points are in the engine's write-ahead log
        (embedded) or acknowledged with ``wait=True`` (server): an answered file survives a kill of
        the process."""
        ids: list[str] = []
        payloads: list[dict[str, Any]] = []
        texts: list[str] = []
        # Copies of one content among them share point ids: the last one's points are written, as
        # when they came one request after another (the paths that refer to it are settled later).
        files = list({file.sha256: file for file in files}.values())
        for file in files:
            ids += [point_id(collection, file.sha256, index) for index in range(len(file.texts))]
            payloads += file.payloads()
            texts += file.texts
        if not ids:
            return
        array = np.ascontiguousarray(np.concatenate([file.vectors for file in files]), dtype=np.float32)
        backend = await self._backend()
        if self.embedded:
            # BM25 here, in the caller (a worker), not in the one engine process all writers share.
            sparse = await asyncio.to_thread(lambda: [hybrid.document_sparse(text) for text in texts])
            backlog = await self._engine_call(
                "upsert", collection=collection, ids=ids, vectors=array, payloads=payloads, sparse=sparse
            )
            if backlog >= WRITE_BACKLOG_MAX:
                await self._wait_for_builds(collection, backlog)
        else:
            assert not isinstance(backend, EngineProcess)
            await backend.upsert(qdrant_name(collection), ids, array, payloads)

    async def _wait_for_builds(self, collection: str, backlog: int) -> None:
        """Hold this writer (not searches) until the embedded engine's index builds catch up."""
        began = time.monotonic()
        log.info("vector_writes_wait_for_index", collection=collection, backlog=backlog)
        while backlog >= WRITE_BACKLOG_MAX:
            await asyncio.sleep(BACKLOG_POLL_S)
            backlog = await self._engine_call("backlog", collection=collection)
        log.info("vector_writes_resume", collection=collection, waited_s=round(time.monotonic() - began, 1))

    async def delete_contents(self, collection: str, hashes: Sequence[str]) -> None:
        """Remove the points of file contents that are no longer current."""
        if not hashes:
            return
        backend = await self._backend()
        if self.embedded:
            await self._engine_call("delete", collection=collection, field="sha256", values=list(hashes))
        else:
            assert not isinstance(backend, EngineProcess)
            name = qdrant_name(collection)
            if collection in self._known or await backend.exists(name):
                await backend.delete(name, "sha256", list(hashes))

    async def search(
        self,
        collection: str,
        vector: npt.NDArray[np.float32] | None,
        k: int,
        *,
        query_text: str | None = None,
        mode: SearchMode | str = SearchMode.DENSE,
        where: Mapping[str, Sequence[str]] | None = None,
        ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> list[Hit]:
        """The k best chunks, best first. ``mode``: dense (needs ``vector``), keyword (needs
        ``query_text``) or hybrid (both). ``where``: payload field -> accepted values
        (path, sha256, job_id, file_type, dirs), every field must match; ``ranges``: field
        (mtime) -> (at least, at most)."""
        plan = plan_search(
            SearchMode(mode),
            vector=None if vector is None else np.asarray(vector, dtype=np.float32).tolist(),
            query_text=query_text,
            k=k,
            where=where,
            ranges=ranges,
            rrf_k=self.rrf_k,
            candidates=self.candidates,
        )
        backend = await self._backend()
        if self.embedded:
            found = await self._engine_call("search", collection=collection, plan=plan)
        else:
            assert not isinstance(backend, EngineProcess)
            name = qdrant_name(collection)
            if collection not in self._known and not await backend.exists(name):
                return []  # the collection exists but nothing has been indexed into it yet
            found = await backend.search(name, plan)
        return [Hit(score=row["score"], payload=row["payload"], id=row["id"], ranks=row["ranks"]) for row in found]

    async def set_paths(self, collection: str, sha256: str, paths: Sequence[str], mtime: float | None = None) -> None:
        """Name every path one content is found at on its points (``path``: the first, ``paths``:
        all, ``dirs``: the folders above them) and, when given, its newest file's ``mtime``."""
        if not paths:
            return
        backend = await self._backend()
        if self.embedded:
            await self._engine_call("set_paths", collection=collection, sha256=sha256, paths=list(paths), mtime=mtime)
        else:
            assert not isinstance(backend, EngineProcess)
            name = qdrant_name(collection)
            if collection in self._known or await backend.exists(name):
                await backend.set_paths(name, sha256, paths, mtime)

    async def content_counts(self, collection: str) -> dict[str, int]:
        """How many points each content (sha256) has in the collection."""
        backend = await self._backend()
        if self.embedded:
            return dict(await self._engine_call("content_counts", collection=collection))
        assert not isinstance(backend, EngineProcess)
        return await backend.content_counts(qdrant_name(collection))

    async def drop(self, collection: str) -> None:
        """Remove the collection's vectors and index entirely."""
        backend = await self._backend()
        if self.embedded:
            await self._engine_call("drop", collection=collection)
        else:
            assert not isinstance(backend, EngineProcess)
            await backend.drop(qdrant_name(collection))
        self._known.discard(collection)

    async def count(self, collection: str) -> int:
        """How many points the collection holds (0 before anything was indexed into it)."""
        backend = await self._backend()
        if self.embedded:
            return int(await self._engine_call("count", collection=collection))
        assert not isinstance(backend, EngineProcess)
        return await backend.count(qdrant_name(collection))

    async def optimize(self, collection: str | None = None) -> None:
        """Build the HNSW index for every waiting point now (the embedded engine does it by itself
        when idle; benchmarks and tests call this to measure or wait for it). No-op on a server."""
        if self.embedded:
            await self._engine_call("optimize", collection=collection)

    async def flush(self) -> None:
        """fsync everything written so far (embedded engine; it also does so by itself once writes
        pause for a second, and on close). Survives a power cut, not only a killed process."""
        if self.embedded:
            await self._engine_call("flush")

    async def stats(self, collection: str) -> dict[str, Any]:
        """Points, segments and vectors waiting for the index (embedded engine)."""
        if not self.embedded:
            return {"points": await self.count(collection)}
        return dict(await self._engine_call("stats", collection=collection))

    @property
    def engine_pid(self) -> int | None:
        """The embedded engine's process id while it runs."""
        return self._engine.pid if self._engine is not None else None
