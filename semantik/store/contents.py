"""The contents a collection has vectors for, and keeping them in step with its sources' files.

- ``documents``: one row per content (sha256); point ids derive from the content, so one content
  at several paths has one set of points. A content is ``writing`` from just before its points
  are upserted until a file refers to it (``done``).
- A content no remembered path refers to any more (deleted, changed, its source removed) loses
  its points, then its row (``release``); a crash between leaves a row without a path, which the
  next run releases. The points of a content name every path it is found at (``refresh_paths``).
- Removing a source or a whole collection, and the consistency check.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from semantik.domain import FileStatus
from semantik.errors import NotFound
from semantik.store.db import Database
from semantik.store.sources import REFERS, Sources, mark_dirty, refuse_while_active
from semantik.store.vectors import VectorStore

# Contents released per vector-store call.
RELEASE_BATCH = 500


class Contents:
    def __init__(self, db: Database, vectors: VectorStore, sources: Sources) -> None:
        self.db, self.vectors, self.sources = db, vectors, sources
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, collection: str) -> asyncio.Lock:
        """Held while contents are released, and while a file adopts a content the collection
        already has: a content is never released between "it has vectors" and "this path refers
        to it". (Jobs of one collection run one at a time, in one process.)"""
        return self._locks.setdefault(collection, asyncio.Lock())

    async def _referenced(self, collection: str, hashes: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(hashes), RELEASE_BATCH):
            batch = hashes[start : start + RELEASE_BATCH]
            rows = await self.db.fetchall(
                "SELECT DISTINCT e.sha256 FROM entries e JOIN sources s ON s.id = e.source_id"
                f" WHERE s.collection = ? AND e.sha256 IN ({','.join('?' * len(batch))}) AND {REFERS}",
                (collection, *batch),
            )
            found |= {row["sha256"] for row in rows}
        return found

    async def settle(self, collection: str, *, keep: Iterable[str] = (), writing: bool = False) -> int:
        """Bring the points of every marked content in step with the paths that refer to it now: a
        content nothing refers to loses its points, then its row; the others name their paths.
        ``keep``: contents to leave for later (a move may adopt them); ``writing``: also contents
        whose upsert was cut off (only while nothing is being written). Returns how many went."""
        async with self.lock(collection):
            rows = await self.db.fetchall(
                # The first OR is the partial index's condition, word for word, so SQLite uses it.
                "SELECT sha256, dirty FROM documents WHERE collection = ? AND (dirty > 0 OR state = 'writing')"
                " AND (dirty > 0 OR ?)",
                (collection, int(writing)),
            )
            held = set(keep)
            marked = {row["sha256"]: row["dirty"] for row in rows if row["sha256"] not in held}
            if not marked:
                return 0
            referenced = await self._referenced(collection, sorted(marked))
            doomed = sorted(set(marked) - referenced)
            for start in range(0, len(doomed), RELEASE_BATCH):
                batch = doomed[start : start + RELEASE_BATCH]
                await self.vectors.delete_contents(collection, batch)  # points first, then the rows
                await self.db.execute(
                    f"DELETE FROM documents WHERE collection = ? AND sha256 IN ({','.join('?' * len(batch))})",
                    (collection, *batch),
                )
            for sha in sorted(referenced):
                paths, mtime = await self._where(collection, sha)
                await self.vectors.set_paths(collection, sha, paths, mtime)
                # Unless it changed meanwhile (then the next settle takes it).
                await self.db.execute(
                    "UPDATE documents SET dirty = 0 WHERE collection = ? AND sha256 = ? AND dirty = ?",
                    (collection, sha, marked[sha]),
                )
            return len(doomed)

    async def _where(self, collection: str, sha256: str) -> tuple[list[str], float | None]:
        """The paths that refer to a content, in order, and the newest modification time (seconds)
        of their files; None when none is known yet (an entry carried over from before folder sync
        has mtime_ns 0 until it is read)."""
        rows = await self.db.fetchall(
            "SELECT e.path, e.mtime_ns FROM entries e JOIN sources s ON s.id = e.source_id"
            f" WHERE s.collection = ? AND e.sha256 = ? AND {REFERS} ORDER BY e.path",
            (collection, sha256),
        )
        newest = max((int(row["mtime_ns"]) for row in rows if row["mtime_ns"]), default=None)
        return list(dict.fromkeys(row["path"] for row in rows)), None if newest is None else newest / 1e9

    async def paths_of(self, collection: str, sha256: str) -> list[str]:
        return (await self._where(collection, sha256))[0]

    # -- removing sources and collections ----------------------------------------------------

    async def remove_source(self, collection: str, source_id: int) -> dict[str, int]:
        """Remove a source: its entries go, and every content no other source still finds loses its
        vectors. Refused (409) while a job of the collection is queued or running."""
        await self.sources.get(collection, source_id)
        async with self.db.reader() as conn:
            await refuse_while_active(conn, collection)
        files = int(await self.db.fetchval("SELECT COUNT(*) FROM entries WHERE source_id = ?", (source_id,)))
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "SELECT DISTINCT sha256 FROM entries WHERE source_id = ? AND sha256 IS NOT NULL", (source_id,)
            )
            hashes = [row["sha256"] for row in await cursor.fetchall()]
            await conn.execute("DELETE FROM entries WHERE source_id = ?", (source_id,))
            await conn.execute("UPDATE jobs SET source_id = NULL WHERE source_id = ?", (source_id,))
            await conn.execute("UPDATE files SET source_id = NULL WHERE source_id = ?", (source_id,))
            await conn.execute("DELETE FROM sources WHERE id = ?", (source_id,))
            await mark_dirty(conn, collection, hashes)
        released = await self.settle(collection)
        return {"files": files, "contents_removed": released}

    async def drop_collection(self, collection: str) -> None:
        """Remove a collection whole: its vectors, then its jobs, files, sources, entries and row.
        Refused (409) while one of its jobs is queued or running."""
        row = await self.db.fetchone("SELECT 1 FROM collections WHERE name = ?", (collection,))
        if row is None:
            raise NotFound(f"collection {collection!r} does not exist", code="collection_not_found")
        async with self.db.reader() as conn:
            await refuse_while_active(conn, collection)
        await self.vectors.drop(collection)
        async with self.db.transaction() as conn:
            await conn.execute(
                "DELETE FROM entries WHERE source_id IN (SELECT id FROM sources WHERE collection = ?)", (collection,)
            )
            await conn.execute("DELETE FROM sources WHERE collection = ?", (collection,))
            await conn.execute("DELETE FROM documents WHERE collection = ?", (collection,))
            await conn.execute("DELETE FROM jobs WHERE collection = ?", (collection,))  # files go with them
            await conn.execute("DELETE FROM collections WHERE name = ?", (collection,))

    # -- consistency -------------------------------------------------------------------------

    async def check(self, collection: str) -> dict[str, Any]:
        """Three counts that are zero when the collection mirrors its folders:
        ``vectors_without_file``: points whose content no indexed path refers to;
        ``files_without_vectors``: paths marked indexed whose content has fewer points than chunks;
        ``files_missing``: remembered paths that are not on disk any more (not synced yet)."""
        if await self.db.fetchone("SELECT 1 FROM collections WHERE name = ?", (collection,)) is None:
            raise NotFound(f"collection {collection!r} does not exist", code="collection_not_found")
        counts = await self.vectors.content_counts(collection)
        rows = await self.db.fetchall(
            "SELECT e.path, e.raw_path, e.sha256, e.status, d.chunks"
            " FROM entries e JOIN sources s ON s.id = e.source_id LEFT JOIN documents d"
            " ON d.collection = s.collection AND d.sha256 = e.sha256 AND d.state = 'done'"
            " WHERE s.collection = ?",
            (collection,),
        )
        referenced = {row["sha256"] for row in rows if row["status"] in (FileStatus.DONE, FileStatus.FAILED)}
        orphans = {sha: n for sha, n in counts.items() if sha not in referenced}
        without = [
            row["path"]
            for row in rows
            if row["status"] == FileStatus.DONE and counts.get(row["sha256"], 0) < (row["chunks"] or 1)
        ]

        def gone() -> list[str]:
            missing = []
            for row in rows:
                name = os.fsdecode(row["raw_path"]) if row["raw_path"] is not None else row["path"]
                if name.endswith(os.sep):
                    continue  # a folder that could not be listed: not a file
                try:
                    os.lstat(name)
                except OSError:
                    missing.append(row["path"])
            return missing

        missing = await asyncio.to_thread(gone)
        return {
            "collection": collection,
            "vectors_without_file": sum(orphans.values()),
            "files_without_vectors": len(without),
            "files_missing": len(missing),
            "ok": not orphans and not without and not missing,
            "points": sum(counts.values()),
            "files": len(rows),
            "examples": {
                "vectors_without_file": sorted(orphans)[:10],
                "files_without_vectors": sorted(without)[:10],
                "files_missing": sorted(missing)[:10],
            },
        }
