"""Stores written by qdrant-client's local mode (``SEMANTIK_DATA_DIR/qdrant``, Qdrant collections
``semantik_<name>``) move into Edge shards the first time the engine opens: every point is read
back with qdrant-client (vectors and payloads as stored: nothing is embedded again), gets its BM25
vector from its stored text and a ``file_type`` from its path, and is written under the same id.
Each collection is built aside (``.migrating/<name>``), its point count checked against the source,
then moved into place; only when every collection is in place is the old directory renamed to
``qdrant.migrated-<time>`` (never deleted). A migration that dies leaves the old store as it was and
starts again on the next open. Runs inside the engine process, before it answers anything.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from semantik.store.edge import MIGRATING_DIR, EdgeEngine, EngineError, Log
from semantik.store.hybrid import file_type
from semantik.store.shard import Shard

LEGACY_PREFIX = "semantik_"
READ_BATCH = 1000
LOG_EVERY = 10_000


def is_legacy_store(path: Path) -> bool:
    return (path / "meta.json").is_file() and (path / "collection").is_dir()


def migrate_legacy(legacy: Path, engine: EdgeEngine, log: Log) -> None:
    if not is_legacy_store(legacy):
        return
    from qdrant_client import QdrantClient

    began = time.monotonic()
    try:
        client = QdrantClient(path=str(legacy))
    except RuntimeError as exc:
        if "already accessed" in str(exc):
            raise EngineError(
                "vector_store_busy",
                f"the old vector store {legacy} is held by another process (an older Semantik still running?);"
                " stop it, then start again to migrate it",
            ) from exc
        raise
    try:
        names = sorted(c.name for c in client.get_collections().collections if c.name.startswith(LEGACY_PREFIX))
        log("vector_migration_started", source=str(legacy), target=str(engine.root), collections=len(names))
        total = 0
        for name in names:
            total += _migrate_collection(client, name, legacy, engine, log)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(
            "vector_migration_failed",
            f"could not migrate the old vector store {legacy}: {type(exc).__name__}: {exc}. It is untouched. To start"
            f" without its vectors, move it aside (`mv {legacy} {legacy}.unreadable`) and index the folders again",
        ) from exc
    finally:
        client.close()
    moved = legacy.with_name(f"{legacy.name}.migrated-{time.strftime('%Y%m%dT%H%M%S')}")
    legacy.rename(moved)
    log(
        "vector_migration_finished",
        collections=len(names),
        points=total,
        seconds=round(time.monotonic() - began, 1),
        old_store=str(moved),
    )


def _migrate_collection(client: Any, name: str, legacy: Path, engine: EdgeEngine, log: Log) -> int:
    collection = name[len(LEGACY_PREFIX) :]
    target = engine.shard_path(collection)
    params = client.get_collection(name).config.params.vectors
    dim = int(params.size)
    expected = int(client.count(name, exact=True).count)
    existing = engine.collection(collection)
    if existing is not None:
        count = existing.count()
        if engine.read_meta(collection).get("migrated_from") == str(legacy) and count == expected:
            return count  # moved into place by an earlier run that died before the rename
        if count > 0:
            raise EngineError(
                "vector_store_incompatible",
                f"collection {collection!r} is both in the old store {legacy} and in {target}; keep the new one by"
                f" moving the old store aside (`mv {legacy} {legacy}.old`), or the old one by moving the new shard"
                f" aside (`mv {target} {target}.old`)",
            )
    building = engine.root / MIGRATING_DIR / collection
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    shard = Shard.create(building, dim)
    began, done, offset = time.monotonic(), 0, None
    log("vector_migration_collection", collection=collection, points=expected, dim=dim)
    try:
        while True:
            records, offset = client.scroll(name, limit=READ_BATCH, offset=offset, with_payload=True, with_vectors=True)
            if records:
                ids = [str(r.id) for r in records]
                vectors = np.asarray([r.vector for r in records], dtype=np.float32)
                payloads = []
                for r in records:
                    payload = dict(r.payload or {})
                    payload.setdefault("file_type", file_type(str(payload.get("path", ""))))
                    payloads.append(payload)
                shard.upsert(ids, vectors, payloads)
                before, done = done, done + len(records)
                if done // LOG_EVERY != before // LOG_EVERY:
                    log("vector_migration_progress", collection=collection, points=done, of=expected)
            if offset is None:
                break
        stored = shard.count()
        if stored != expected:
            raise EngineError(
                "vector_migration_failed",
                f"collection {collection!r}: {stored} points written, {expected} in the old store {legacy};"
                " the old store is untouched and the migration runs again on the next start",
            )
        shard.flush()
    finally:
        shard.close()
    engine.adopt(collection, building, dim, migrated_from=str(legacy))
    log(
        "vector_migration_collection_done",
        collection=collection,
        points=done,
        seconds=round(time.monotonic() - began, 1),
    )
    return done
