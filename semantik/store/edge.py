"""The embedded vector engine: the collections of one store directory, each a few Qdrant Edge shards.

This module runs inside the engine process (see ``engine.py``), never in the server or a worker:
qdrant-edge-py holds the GIL for the whole of every call, which would freeze an event loop, its
WebSockets and its job heartbeats. Everything here is synchronous and single-threaded; the process
serves one request at a time, and between requests does its housekeeping (``maintain``).

Layout of the directory (``SEMANTIK_DATA_DIR/vectors``)::

    .lock                     flock held by the one process that may open these shards
    <collection>/             a collection's first Edge shard (segments, WAL, edge_config.json)
    .shards/<collection>/<n>/ its other shards (see ``collection.py``)
    .meta/<collection>.json   its manifest: the shards in order, what its sparse vectors were made with
    .migrating/<collection>/  a shard being filled from an old store (removed if a migration died)

Durability: Edge writes every update to its write-ahead log before ``update`` returns, so a point
whose upsert returned survives ``kill -9`` of this process (tested); ``flush`` (fsync of WAL and
segments) runs after writes once the engine has been idle for ``FLUSH_IDLE_S`` and on close.

Indexing: points land unindexed and are searched by brute force; a collection seals its open shard
once ``MAX_SEGMENT_POINTS`` points are in it, or ``INDEX_AFTER_POINTS`` wait and no write came for
``OPTIMIZE_IDLE_S``, and builds the sealed shard's HNSW index on a copy in a child process
(``builder.py``), answering from the original meantime. Only an oversized shard from an earlier
version is indexed in this process, which holds every request for the build; that waits for no
write for ``OPTIMIZE_IDLE_S`` and no search for ``SEARCH_QUIET_S``. Once no write came for
``MERGE_IDLE_S``, neighbouring built shards that fit in one full shard together are merged by a build
of the same kind, when the memory left allows it (``collection.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
from qdrant_edge import EdgeShard, ScrollRequest

from semantik.proc import memory_limit_mb, release_free_memory
from semantik.store import hybrid
from semantik.store.collection import (
    META_DIR,
    Collection,
    read_meta,
    remove_collection,
    sealed_at,
    shard_dir,
    shard_names,
)
from semantik.store.collection import write_meta as _write_meta
from semantik.store.hybrid import INDEXED_FIELDS, SearchPlan
from semantik.store.shard import EngineError

__all__ = ["EdgeEngine", "EngineError", "lock_store", "stored_point_ids"]

LOCK_FILE = ".lock"
MIGRATING_DIR = ".migrating"
# A collection name is a directory name here: the API's own rule (no leading dot, no slash).
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Waiting points get their HNSW index once no write came for this long, so a bulk load is not cut
# into many small builds (a full shard is sealed and built at once) ...
OPTIMIZE_IDLE_S = 5.0
# ... and an oversized shard of an earlier version, indexed in this process, also waits until nobody
# searched for this long: that build holds the engine (a 200k-point segment: one to two minutes on
# 2 cores), and a search arriving meanwhile waits for it.
SEARCH_QUIET_S = 30.0
# ... and neighbouring built shards are merged (``collection.py``) once no write came for this long:
# a merge rebuilds up to a full shard (a minute or two on 2 cores), not worth starting in a pause
# between a job's files. (None: no merges.)
MERGE_IDLE_S: float | None = 60.0
FLUSH_IDLE_S = 1.0
MAINTENANCE_RETRY_S = 60.0

Log = Callable[..., None]


def busy_message(root: Path) -> str:
    return (
        f"the embedded vector store {root} is held by another process; only one process can open it."
        " Run `semantik up` alone, or share a Qdrant server via SEMANTIK_QDRANT_URL."
    )


def lock_store(root: Path) -> TextIO:
    """Take the store's lock (non-blocking) and return the open lock file that holds it; the lock
    goes with the process (or when the file is closed). Raises EngineError("vector_store_busy")."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = (root / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise EngineError("vector_store_busy", busy_message(root)) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _no_log(event: str, **fields: Any) -> None:
    pass


class EdgeEngine:
    """Every collection of one store directory, opened on first use, behind the store's lock."""

    def __init__(self, root: Path, *, log: Log = _no_log) -> None:
        self.root = root
        self.log = log
        self._lock = lock_store(root)
        self.memory_mb = memory_mb = memory_limit_mb()
        self.shard_points = sealed_at(memory_mb)
        log("vector_engine_memory", limit_mb=memory_mb, shard_points=self.shard_points)
        self._collections: dict[str, Collection] = {}
        self.last_search = float("-inf")
        self.last_write = 0.0
        self._retry_at = 0.0
        self._clear_dead_migrations()

    # -- layout -----------------------------------------------------------------------------

    def shard_path(self, collection: str) -> Path:
        """The collection's first shard's directory (the collection's name checked)."""
        if not COLLECTION_NAME.match(collection):
            raise EngineError("bad_request", f"invalid collection name {collection!r}")
        return shard_dir(self.root, collection, "base")

    def write_meta(self, collection: str, dim: int, **extra: Any) -> None:
        _write_meta(self.root, collection, {"dim": dim, "sparse": hybrid.BM25_SIGNATURE, **extra})

    def read_meta(self, collection: str) -> dict[str, Any]:
        return read_meta(self.root, collection)

    def check_meta(self, collection: str) -> None:
        meta = self.read_meta(collection)
        if meta and meta.get("sparse") != hybrid.BM25_SIGNATURE:
            raise EngineError(
                "vector_store_incompatible",
                f"collection {collection!r} holds keyword vectors made with {meta.get('sparse')!r}, this version"
                f" makes {hybrid.BM25_SIGNATURE!r}; re-index it into a new collection",
            )

    def _clear_dead_migrations(self) -> None:
        # A migration that died half-way left a partial shard here; its source is still intact.
        shutil.rmtree(self.root / MIGRATING_DIR, ignore_errors=True)

    def collections(self) -> list[str]:
        found = {p.name for p in self.root.iterdir() if p.is_dir() and COLLECTION_NAME.match(p.name)}
        meta = self.root / META_DIR
        if meta.is_dir():
            found |= {p.stem for p in meta.glob("*.json") if COLLECTION_NAME.match(p.stem)}
        return sorted(name for name in found if shard_names(self.root, name) is not None)

    # -- collections --------------------------------------------------------------------------

    def collection(self, name: str) -> Collection | None:
        """The collection's open shards, loading them on first use; None when it has none yet."""
        found = self._collections.get(name)
        if found is None:
            self.shard_path(name)  # checks the name
            if shard_names(self.root, name) is None:
                return None
            self.check_meta(name)
            found = Collection.open(self.root, name, self.log, shard_points=self.shard_points, memory_mb=self.memory_mb)
            if found is None:
                return None
            self._collections[name] = found
        return found

    def ensure(self, collection: str, dim: int) -> None:
        found = self.collection(collection)
        if found is None:
            found = self._collections[collection] = Collection.create(
                self.root, collection, dim, self.log, shard_points=self.shard_points, memory_mb=self.memory_mb
            )
            self.write_meta(collection, dim)
            self.log("vector_collection_created", collection=collection, dim=dim, path=str(self.shard_path(collection)))
        elif found.dim != dim:
            raise EngineError(
                "bad_request", f"collection {collection!r} holds {found.dim}-dimension vectors, not {dim}"
            )

    def adopt(self, collection: str, built: Path, dim: int, **meta: Any) -> None:
        """Make a shard built elsewhere under the root (a migration) the collection's only shard."""
        self.close_collection(collection)
        remove_collection(self.root, collection)
        self.write_meta(collection, dim, **meta)
        os.replace(built, self.shard_path(collection))

    def _existing(self, collection: str) -> Collection:
        found = self.collection(collection)
        if found is None:
            raise EngineError("bad_request", f"collection {collection!r} has no vector index yet (ensure it first)")
        return found

    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        payloads: Sequence[dict[str, Any]],
        sparse: Sequence[hybrid.Sparse] | None = None,
    ) -> int:
        """Write the points; answers the collection's ``backlog`` (sealed shards waiting for a
        build), which the client holds further writes on."""
        found = self._existing(collection)
        found.upsert(ids, vectors, payloads, sparse)
        self.last_write = time.monotonic()
        return found.backlog

    def backlog(self, collection: str) -> int:
        found = self.collection(collection)
        return 0 if found is None else found.backlog

    def delete(self, collection: str, field: str, values: Sequence[str]) -> None:
        if field not in INDEXED_FIELDS:
            raise EngineError("bad_request", f"cannot delete by {field!r}")
        found = self.collection(collection)
        if found is not None and values:
            found.delete(field, values)
            self.last_write = time.monotonic()

    def set_paths(self, collection: str, sha256: str, paths: Sequence[str], mtime: float | None = None) -> None:
        found = self.collection(collection)
        if found is not None and paths:
            found.set_paths(sha256, paths, mtime)
            self.last_write = time.monotonic()

    def content_counts(self, collection: str) -> dict[str, int]:
        found = self.collection(collection)
        return {} if found is None else found.content_counts()

    def drop(self, collection: str) -> None:
        """Remove the collection's shards and its manifest from disk."""
        self.shard_path(collection)  # checks the name
        self.close_collection(collection)
        remove_collection(self.root, collection)
        self.log("vector_collection_dropped", collection=collection)

    def search(self, collection: str, plan: SearchPlan) -> list[dict[str, Any]]:
        self.last_search = time.monotonic()
        found = self.collection(collection)
        return [] if found is None else found.search(plan)

    def count(self, collection: str) -> int:
        found = self.collection(collection)
        return 0 if found is None else found.count()

    def stats(self, collection: str) -> dict[str, Any]:
        found = self.collection(collection)
        return {"points": 0} if found is None else found.stats()

    # -- housekeeping -------------------------------------------------------------------------

    @property
    def build_due_at(self) -> float:
        """When an oversized shard may be indexed in this process (``time.monotonic()``): writes
        paused and searches quiet."""
        return max(self.last_write + OPTIMIZE_IDLE_S, self.last_search + SEARCH_QUIET_S)

    @property
    def merge_due_at(self) -> float | None:
        """When built shards may be merged (``time.monotonic()``): writes paused ``MERGE_IDLE_S``;
        None when merges are off."""
        return None if MERGE_IDLE_S is None else self.last_write + MERGE_IDLE_S

    def build_connections(self) -> list[Any]:
        """The connections of the build processes the engine waits on (``maintain`` takes their news)."""
        return [c.build.conn for c in self._collections.values() if c.build is not None and c.build.running]

    def due_in(self) -> float | None:
        """Seconds until ``maintain`` has something to do, None when nothing is pending (a build
        process's news also wakes it: ``build_connections``)."""
        now = time.monotonic()
        due: list[float] = []
        if any(c.dirty for c in self._collections.values()):
            due.append(self.last_write + FLUSH_IDLE_S)
        for found in self._collections.values():
            at = found.due(
                now,
                idle_at=self.last_write + OPTIMIZE_IDLE_S,
                quiet_at=self.build_due_at,
                settled_at=self.merge_due_at,
            )
            if at is not None:
                due.append(at)
        if not due:
            return None
        return max(0.0, min(due) - now, self._retry_at - now)

    def maintain(self) -> None:
        """One step of housekeeping: of a build (see ``collection.py``), and a flush (fsync) once
        writes paused. A failure is logged and tried again a minute later."""
        now = time.monotonic()
        merge_at = self.merge_due_at
        try:
            for found in list(self._collections.values()):
                with contextlib.suppress(EngineError):  # a failed build: logged, tried again later
                    found.maintain(
                        now,
                        idle=now >= self.last_write + OPTIMIZE_IDLE_S,
                        quiet=now >= self.build_due_at,
                        settled=merge_at is not None and now >= merge_at,
                    )
                if found.dirty and now - self.last_write >= FLUSH_IDLE_S:
                    found.flush()
        except Exception as exc:
            self._retry_at = time.monotonic() + MAINTENANCE_RETRY_S
            self.log("vector_maintenance_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=MAINTENANCE_RETRY_S)

    def optimize(self, collection: str | None = None) -> None:
        """Index every waiting point now and merge the shards that can be (``Collection.optimize``)."""
        for name, found in list(self._collections.items()):
            if collection is None or name == collection:
                found.optimize()

    def flush(self) -> None:
        for found in self._collections.values():
            found.flush()

    def close_collection(self, collection: str) -> None:
        found = self._collections.pop(collection, None)
        if found is not None:
            found.close()
            release_free_memory()

    def close(self) -> None:
        for collection in list(self._collections):
            self.close_collection(collection)
        with contextlib.suppress(OSError):
            self._lock.close()


def stored_point_ids(root: Path, collection: str) -> list[str]:
    """Every point id of a collection, read from its shards directly (tests, tools). The store must
    be free: no engine may hold it (raises EngineError("vector_store_busy") otherwise)."""
    lock = lock_store(root)
    try:
        ids: list[str] = []
        for name in shard_names(root, collection) or []:
            shard = EdgeShard.load(str(shard_dir(root, collection, name)))
            try:
                offset: Any = None
                while True:
                    records, offset = shard.scroll(ScrollRequest(offset=offset, limit=1000, with_payload=False))
                    ids.extend(str(r.id) for r in records)
                    if offset is None:
                        break
            finally:
                shard.close()
        return ids
    finally:
        lock.close()
