"""The embedded vector engine: one Qdrant Edge shard per collection under one directory.

This module runs inside the engine process (see ``engine.py``), never in the server or a worker:
qdrant-edge-py holds the GIL for the whole of every call, and building an HNSW index (``optimize``)
takes seconds to minutes, which would freeze an event loop, its WebSockets and its job heartbeats.
Everything here is synchronous and single-threaded; the process serves one request at a time.

Layout of the directory (``SEMANTIK_DATA_DIR/vectors``)::

    .lock                 flock held by the one process that may open these shards
    <collection>/         an Edge shard (segments, WAL, edge_config.json)
    .meta/<collection>.json   what the shard's sparse vectors were made with
    .migrating/<collection>/  a shard being filled from an old store (removed if a migration died)

Durability: Edge writes every update to its write-ahead log before ``update`` returns, so a point
whose upsert returned survives ``kill -9`` of this process (tested); ``flush`` (fsync of WAL and
segments) runs after writes once the engine has been idle for ``FLUSH_IDLE_S`` and on close.

Indexing: Edge has no background optimizer, and ``optimize`` holds the GIL (and so this process) for
the whole build. Points land in a plain (brute force) appendable segment (``shard.py``); once
``INDEX_AFTER_POINTS`` points are waiting, ``optimize`` builds HNSW for them once no write has come
for ``OPTIMIZE_IDLE_S`` and no search for ``SEARCH_QUIET_S``, or at once when ``OPTIMIZE_FORCE_POINTS``
are waiting; requests arriving during a build wait for it. Building on every pause of a bulk load made
many small segments that merges then rebuilt: at 1M points 737 s of a 901 s load.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
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

from semantik.proc import release_free_memory
from semantik.store import hybrid
from semantik.store.hybrid import INDEXED_FIELDS, SearchPlan
from semantik.store.shard import INDEX_AFTER_POINTS, MAX_SEGMENT_POINTS, EngineError, Shard

__all__ = ["EdgeEngine", "EngineError", "lock_store", "stored_point_ids"]

LOCK_FILE = ".lock"
META_DIR = ".meta"
MIGRATING_DIR = ".migrating"
LAYOUT = 1
# A collection name is a directory name here: the API's own rule (no leading dot, no slash).
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Waiting points get their HNSW index once no write came for this long, so a bulk load is not
# interrupted by builds that later merges would redo ...
OPTIMIZE_IDLE_S = 5.0
# ... and nobody searched for this long: a build holds the engine (a 200k-point segment: one to two
# minutes on 2 cores) and a search arriving meanwhile waits for it, so the build waits for people to
# stop searching (the waiting points are searched by brute force meanwhile) ...
SEARCH_QUIET_S = 30.0
# ... or at once when this many wait: one full-size segment, built once, never merged again. Until
# then searches scan the waiting points (brute force over up to this many: tens of milliseconds).
OPTIMIZE_FORCE_POINTS = MAX_SEGMENT_POINTS
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
    """Every shard of one store directory, opened on first use, behind the store's lock."""

    def __init__(self, root: Path, *, log: Log = _no_log) -> None:
        self.root = root
        self.log = log
        self._lock = lock_store(root)
        self._shards: dict[str, Shard] = {}
        self.last_search = float("-inf")
        self.last_write = 0.0
        self._retry_at = 0.0
        self._clear_dead_migrations()

    # -- layout -----------------------------------------------------------------------------

    def shard_path(self, collection: str) -> Path:
        if not COLLECTION_NAME.match(collection):
            raise EngineError("bad_request", f"invalid collection name {collection!r}")
        return self.root / collection

    def meta_path(self, collection: str) -> Path:
        return self.root / META_DIR / f"{collection}.json"

    def write_meta(self, collection: str, dim: int, **extra: Any) -> None:
        path = self.meta_path(collection)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"layout": LAYOUT, "dim": dim, "sparse": hybrid.BM25_SIGNATURE, **extra}))
        os.replace(tmp, path)

    def read_meta(self, collection: str) -> dict[str, Any]:
        path = self.meta_path(collection)
        return dict(json.loads(path.read_text())) if path.exists() else {}

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
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and COLLECTION_NAME.match(p.name))

    # -- shards -----------------------------------------------------------------------------

    def shard(self, collection: str) -> Shard | None:
        """The collection's open shard, loading it on first use; None when it has none yet."""
        shard = self._shards.get(collection)
        if shard is None:
            path = self.shard_path(collection)
            if not (path / "edge_config.json").exists():
                return None
            self.check_meta(collection)
            shard = self._shards[collection] = Shard.load(path)
        return shard

    def ensure(self, collection: str, dim: int) -> None:
        shard = self.shard(collection)
        if shard is None:
            path = self.shard_path(collection)
            if path.exists():
                shutil.rmtree(path)  # a directory without a config: a creation that died half-way
            shard = self._shards[collection] = Shard.create(path, dim)
            self.write_meta(collection, dim)
            self.log("vector_collection_created", collection=collection, dim=dim, path=str(path))
        elif shard.dim != dim:
            raise EngineError(
                "bad_request", f"collection {collection!r} holds {shard.dim}-dimension vectors, not {dim}"
            )

    def adopt(self, collection: str, shard_dir: Path, dim: int, **meta: Any) -> None:
        """Make a shard built elsewhere under the root (a migration) the collection's shard."""
        self.write_meta(collection, dim, **meta)
        os.replace(shard_dir, self.shard_path(collection))

    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        payloads: Sequence[dict[str, Any]],
        sparse: Sequence[hybrid.Sparse] | None = None,
    ) -> int:
        shard = self.shard(collection)
        if shard is None:
            raise EngineError("bad_request", f"collection {collection!r} has no vector index yet (ensure it first)")
        shard.upsert(ids, vectors, payloads, sparse)
        self.last_write = time.monotonic()
        if shard.waiting >= OPTIMIZE_FORCE_POINTS:
            self._optimize(collection, shard, reason="backlog")
        return len(ids)

    def delete(self, collection: str, field: str, values: Sequence[str]) -> None:
        if field not in INDEXED_FIELDS:
            raise EngineError("bad_request", f"cannot delete by {field!r}")
        shard = self.shard(collection)
        if shard is not None and values:
            shard.delete(field, values)
            self.last_write = time.monotonic()

    def set_paths(self, collection: str, sha256: str, paths: Sequence[str], mtime: float | None = None) -> None:
        shard = self.shard(collection)
        if shard is not None and paths:
            shard.set_paths(sha256, paths, mtime)
            self.last_write = time.monotonic()

    def content_counts(self, collection: str) -> dict[str, int]:
        shard = self.shard(collection)
        return {} if shard is None else shard.content_counts()

    def drop(self, collection: str) -> None:
        """Remove the collection's shard and its metadata from disk."""
        self.close_shard(collection)
        path = self.shard_path(collection)
        if path.exists():
            doomed = path.with_name(f".dropping-{collection}")
            os.replace(path, doomed)  # gone from view at once, even if the removal below is cut off
            shutil.rmtree(doomed, ignore_errors=True)
        self.meta_path(collection).unlink(missing_ok=True)
        self.log("vector_collection_dropped", collection=collection)

    def search(self, collection: str, plan: SearchPlan) -> list[dict[str, Any]]:
        self.last_search = time.monotonic()
        shard = self.shard(collection)
        return [] if shard is None else shard.search(plan)

    def count(self, collection: str) -> int:
        shard = self.shard(collection)
        return 0 if shard is None else shard.count()

    def stats(self, collection: str) -> dict[str, Any]:
        shard = self.shard(collection)
        if shard is None:
            return {"points": 0}
        info = shard.edge.info()
        return {
            "points": info.points_count,
            "segments": info.segments_count,
            "indexed_vectors": info.indexed_vectors_count,
            "waiting": shard.waiting,
            "index_seconds": round(shard.index_seconds, 3),
        }

    # -- housekeeping -------------------------------------------------------------------------

    @property
    def build_due_at(self) -> float:
        """When waiting points may be indexed (``time.monotonic()``): writes paused, searches quiet."""
        return max(self.last_write + OPTIMIZE_IDLE_S, self.last_search + SEARCH_QUIET_S)

    def due_in(self) -> float | None:
        """Seconds until ``maintain`` has something to do, None when nothing is pending."""
        now = time.monotonic()
        due: list[float] = []
        if any(s.dirty for s in self._shards.values()):
            due.append(self.last_write + FLUSH_IDLE_S - now)
        if any(s.waiting >= INDEX_AFTER_POINTS for s in self._shards.values()):
            due.append(self.build_due_at - now)
        if not due:
            return None
        return max(0.0, min(due), self._retry_at - now)

    def maintain(self) -> None:
        """Build HNSW for waiting points once writes paused and searches went quiet; flush (fsync)
        once writes paused. A failure is logged and tried again a minute later."""
        now = time.monotonic()
        try:
            for collection, shard in list(self._shards.items()):
                if shard.waiting >= INDEX_AFTER_POINTS and now >= self.build_due_at:
                    self._optimize(collection, shard, reason="idle")
                if shard.dirty and now - self.last_write >= FLUSH_IDLE_S:
                    shard.flush()
        except Exception as exc:
            self._retry_at = time.monotonic() + MAINTENANCE_RETRY_S
            self.log("vector_maintenance_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=MAINTENANCE_RETRY_S)

    def optimize(self, collection: str | None = None) -> None:
        for name, shard in list(self._shards.items()):
            if collection is None or name == collection:
                self._optimize(name, shard, reason="asked")

    def _optimize(self, collection: str, shard: Shard, *, reason: str) -> None:
        began = time.monotonic()
        waiting = shard.waiting
        changed = shard.optimize()
        shard.flush()
        shard.index_seconds += time.monotonic() - began
        if changed:
            self.log(
                "vector_index_built",
                collection=collection,
                points=waiting,
                reason=reason,
                seconds=round(time.monotonic() - began, 2),
                rss_anon_mb=release_free_memory(),
            )

    def flush(self) -> None:
        for shard in self._shards.values():
            shard.flush()

    def close_shard(self, collection: str) -> None:
        shard = self._shards.pop(collection, None)
        if shard is not None:
            shard.close()
            release_free_memory()

    def close(self) -> None:
        for collection in list(self._shards):
            self.close_shard(collection)
        with contextlib.suppress(OSError):
            self._lock.close()


def stored_point_ids(root: Path, collection: str) -> list[str]:
    """Every point id of a collection, read from its shard directly (tests, tools). The store must
    be free: no engine may hold it (raises EngineError("vector_store_busy") otherwise)."""
    lock = lock_store(root)
    try:
        path = root / collection
        if not (path / "edge_config.json").exists():
            return []
        shard = EdgeShard.load(str(path))
        try:
            ids: list[str] = []
            offset: Any = None
            while True:
                records, offset = shard.scroll(ScrollRequest(offset=offset, limit=1000, with_payload=False))
                ids.extend(str(r.id) for r in records)
                if offset is None:
                    return ids
        finally:
            shard.close()
    finally:
        lock.close()
