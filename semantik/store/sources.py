"""A collection's sources and what their folders held (``contents.py``: what has vectors).

- ``sources``: a folder and how it is read (recursive, include, exclude, watched). An index job's
  folder becomes one; the same folder read the same way is the same source.
- ``entries``: what each source's folder held at its last run, one row per path, with the stat
  (size, mtime, ctime, inode) that lets a sync pass an unchanged file without reading it, and the
  content (sha256) it had.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from semantik.domain import FileStatus, JobState, JobStatus, ScannedFile, Source, utcnow
from semantik.errors import Conflict, NotFound
from semantik.paths import storable
from semantik.store.db import Database, in_thread

ACTIVE_STATES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
UNCHANGED_REASON = "unchanged since last indexed"
# Contents looked up per query.
RELEASE_BATCH = 500
# An entry that refers to its content: indexed, or failed since (a file that cannot be read or
# parsed any more keeps its last indexed version searchable until it is fixed or deleted).
REFERS = "e.status IN ('done', 'failed') AND e.sha256 IS NOT NULL"


def not_found_reason(path: str) -> str:
    """Why a row that an earlier scan found is not indexed now that a new scan did not find it."""
    if path.endswith(os.sep):  # scan.folder_entry: a folder that could not be listed before
        return "folder can be listed now: its files are indexed on their own"
    return "no longer found: deleted or moved since an earlier run scanned it"


async def active_job(conn: aiosqlite.Connection, collection: str) -> aiosqlite.Row | None:
    """A queued or running job of the collection (id, status), running ones first; None when idle."""
    marks = ",".join("?" * len(ACTIVE_STATES))
    cursor = await conn.execute(
        f"SELECT id, status FROM jobs WHERE collection = ? AND status IN ({marks})"
        " ORDER BY status = 'running' DESC, created_at LIMIT 1",
        (collection, *sorted(ACTIVE_STATES)),
    )
    return await cursor.fetchone()


async def refuse_while_active(conn: aiosqlite.Connection, collection: str) -> None:
    """409 ``collection_busy`` (naming the job) while a job of the collection is queued or running."""
    row = await active_job(conn, collection)
    if row is not None:
        raise Conflict(
            f"job {row['id']} of collection {collection!r} is {row['status']}; try again once it ends (or cancel it)",
            code="collection_busy",
            details={"job_id": row["id"]},
        )


def _globs(value: list[str] | None) -> str:
    return json.dumps(value)


async def source_for_job(
    conn: aiosqlite.Connection,
    collection: str,
    directory: str,
    recursive: bool,
    include: list[str] | None,
    exclude: list[str] | None,
    now: str,
) -> int:
    """The id of the source that reads ``directory`` this way, created (at ``now``) if new, inside
    the caller's transaction."""
    key = (collection, directory, int(recursive), _globs(include), _globs(exclude))
    await conn.execute(
        "INSERT OR IGNORE INTO sources (collection, directory, recursive, include, exclude, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (*key, now),
    )
    cursor = await conn.execute(
        "SELECT id FROM sources WHERE collection = ? AND directory = ? AND recursive = ? AND include = ?"
        " AND exclude = ?",
        key,
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row["id"])


# Its source remembers a file row's outcome (path, stat, content) under the given status. A failure
# keeps the content the path had (see REFERS). Parameters: status, now, file id.
UPSERT_ENTRY = (
    "INSERT INTO entries (source_id, path, raw_path, size, mtime_ns, ctime_ns, inode, sha256, status, error,"
    " updated_at) SELECT source_id, path, raw_path, size, mtime_ns, ctime_ns, inode, sha256, ?, error, ?"
    " FROM files WHERE id = ? AND source_id IS NOT NULL AND EXISTS (SELECT 1 FROM sources WHERE id = source_id)"
    " ON CONFLICT (source_id, path) DO UPDATE SET raw_path = excluded.raw_path, size = excluded.size,"
    " mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, inode = excluded.inode,"
    " sha256 = CASE WHEN excluded.status = 'failed' THEN entries.sha256 ELSE excluded.sha256 END,"
    " status = excluded.status, error = excluded.error, updated_at = excluded.updated_at"
)
# The same path found by another source of the collection (overlapping folders) is the same file:
# its entry follows. Parameters: file id.
FOLLOW_ENTRY = (
    "UPDATE entries SET size = f.size, mtime_ns = f.mtime_ns, ctime_ns = f.ctime_ns, inode = f.inode,"
    " sha256 = CASE WHEN e.status = 'failed' THEN entries.sha256 ELSE e.sha256 END, status = e.status,"
    " error = e.error, updated_at = e.updated_at"
    " FROM files f JOIN entries e ON e.source_id = f.source_id AND e.path = f.path"
    " JOIN sources s ON s.id = f.source_id"
    " WHERE f.id = ? AND entries.path = f.path AND entries.source_id != f.source_id"
    " AND entries.source_id IN (SELECT id FROM sources WHERE collection = s.collection)"
)


def mark_dirty_now(conn: sqlite3.Connection, collection: str, hashes: Iterable[str | None]) -> None:
    """The paths referring to these contents changed: their points are brought in step later
    (``Contents.settle``), whatever happens to this process meanwhile. On SQLite's thread
    (``db.in_thread``); ``mark_dirty`` from the event loop."""
    wanted = sorted({sha for sha in hashes if sha})
    for start in range(0, len(wanted), RELEASE_BATCH):
        batch = wanted[start : start + RELEASE_BATCH]
        conn.execute(
            f"UPDATE documents SET dirty = dirty + 1 WHERE collection = ? AND sha256 IN ({','.join('?' * len(batch))})",
            (collection, *batch),
        )


async def mark_dirty(conn: aiosqlite.Connection, collection: str, hashes: Iterable[str | None]) -> None:
    await in_thread(conn, mark_dirty_now, collection, list(hashes))


def _references(conn: sqlite3.Connection, collection: str, sha256: str) -> int:
    row = conn.execute(
        f"SELECT COUNT(*) FROM entries e JOIN sources s ON s.id = e.source_id WHERE s.collection = ?"
        f" AND e.sha256 = ? AND {REFERS}",
        (collection, sha256),
    ).fetchone()
    return int(row[0]) if row else 0


def entry_from_file_now(conn: sqlite3.Connection, file_id: int, status: str) -> None:
    """Its source (and any other source that found the same path) remembers a file row's outcome.
    The content the path had before, and the one it has now when another path has it too, are
    marked: their points must name the paths that refer to them now (and their newest mtime).
    On SQLite's thread (``db.in_thread``); ``upsert_entry_from_file`` from the event loop."""
    row = conn.execute(
        "SELECT s.collection, f.path, f.sha256 FROM files f JOIN sources s ON s.id = f.source_id WHERE f.id = ?",
        (file_id,),
    ).fetchone()
    if row is None:
        return  # no source (removed meanwhile): nothing to remember
    collection, path, sha256 = row["collection"], row["path"], row["sha256"]
    before = {
        r["sha256"]
        for r in conn.execute(
            "SELECT DISTINCT e.sha256 FROM entries e JOIN sources s ON s.id = e.source_id"
            " WHERE s.collection = ? AND e.path = ? AND e.sha256 IS NOT NULL",
            (collection, path),
        )
    }
    now = utcnow()
    conn.execute(UPSERT_ENTRY, (status, now, file_id))
    conn.execute(FOLLOW_ENTRY, (file_id,))
    touched = before - {sha256} if status != FileStatus.FAILED else set()
    if status == FileStatus.DONE and sha256 and _references(conn, collection, sha256) > 1:
        touched.add(sha256)
    if status == FileStatus.DONE and sha256 in before:
        touched.add(sha256)  # read again with the same bytes (touched): its points take the new mtime
    mark_dirty_now(conn, collection, touched)


async def upsert_entry_from_file(conn: aiosqlite.Connection, file_id: int, status: str) -> None:
    await in_thread(conn, entry_from_file_now, file_id, status)


@dataclass(frozen=True)
class Missing:
    """A path an earlier run found that this run's scan did not."""

    path: str
    sha256: str | None
    size: int
    status: str


@dataclass(frozen=True)
class ScanOutcome:
    state: JobState
    missing: list[Missing]
    unchanged: int


def _same_stat(f: ScannedFile, row: aiosqlite.Row) -> bool:
    return (
        f.size == row["size"]
        and f.mtime_ns == row["mtime_ns"]
        and f.ctime_ns == row["ctime_ns"]
        and f.inode == row["inode"]
        and f.inode != 0
    )


def _unchanged(f: ScannedFile, row: aiosqlite.Row | None) -> bool:
    """Whether a scanned file can be passed without reading it: same stat as last time, and last
    time it was indexed or skipped after reading; or the scan skips it again for the same reason
    (nothing is read for those). Failed files are always tried again."""
    if row is None:
        return False
    if f.status == FileStatus.PENDING:
        return (
            _same_stat(f, row) and row["status"] in (FileStatus.DONE, FileStatus.SKIPPED) and row["sha256"] is not None
        )
    return bool(f.status == row["status"] == FileStatus.SKIPPED and f.error == row["error"])


async def _recount_and_bump(conn: aiosqlite.Connection, job_id: str) -> JobState:
    from semantik.store.jobs import bump, recount  # jobs imports this module: import at call time

    await recount(conn, job_id)
    return await bump(conn, job_id)


class Sources:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- sources -----------------------------------------------------------------------------

    async def add(
        self,
        collection: str,
        *,
        directory: str,
        recursive: bool,
        include: list[str] | None,
        exclude: list[str] | None,
        watch: bool,
    ) -> Source:
        """A new source (409 when the collection already reads this folder this way)."""
        async with self.db.transaction() as conn:
            row = await (await conn.execute("SELECT 1 FROM collections WHERE name = ?", (collection,))).fetchone()
            if row is None:
                raise NotFound(f"collection {collection!r} does not exist", code="collection_not_found")
            cursor = await conn.execute(
                "INSERT OR IGNORE INTO sources (collection, directory, recursive, include, exclude, watch, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (collection, directory, int(recursive), _globs(include), _globs(exclude), int(watch), utcnow()),
            )
            added = await cursor.fetchone()
            await cursor.close()
            if added is None:
                raise Conflict(
                    f"collection {collection!r} already has a source for {directory} read this way",
                    code="source_exists",
                )
            source_id = int(added["id"])
        return await self.get(collection, source_id)

    async def of_collection(self, collection: str) -> list[Source]:
        return await self._sources("WHERE s.collection = ?", (collection,))

    async def get(self, collection: str, source_id: int) -> Source:
        found = await self._sources("WHERE s.collection = ? AND s.id = ?", (collection, source_id))
        if not found:
            raise NotFound(f"collection {collection!r} has no source {source_id}", code="source_not_found")
        return found[0]

    async def watched(self) -> list[Source]:
        return await self._sources("WHERE s.watch = 1", ())

    async def _sources(self, where: str, params: Sequence[Any]) -> list[Source]:
        rows = await self.db.fetchall(
            "SELECT s.*, (SELECT COUNT(*) FROM entries e WHERE e.source_id = s.id) AS files,"
            " (SELECT COUNT(*) FROM entries e WHERE e.source_id = s.id AND e.status = 'done') AS indexed"
            f" FROM sources s {where} ORDER BY s.id",
            params,
        )
        sources = []
        for row in rows:
            data = dict(row)
            data["include"], data["exclude"] = json.loads(data["include"]), json.loads(data["exclude"])
            data["recursive"], data["watch"] = bool(data["recursive"]), bool(data["watch"])
            sources.append(Source(**data))
        return sources

    async def set_watch(self, collection: str, source_id: int, watch: bool) -> Source:
        changed = await self.db.execute(
            "UPDATE sources SET watch = ? WHERE collection = ? AND id = ?", (int(watch), collection, source_id)
        )
        if not changed:
            raise NotFound(f"collection {collection!r} has no source {source_id}", code="source_not_found")
        return await self.get(collection, source_id)

    # -- a run's scan ------------------------------------------------------------------------

    async def record_scan(
        self, job_id: str, source_id: int, files: Iterable[ScannedFile], *, rows_for_unchanged: bool
    ) -> ScanOutcome:
        """Compare a source's scan with what its folder held before. Files that need reading get a
        pending row; files that are as they were get none (a sync only counts them) or, with
        ``rows_for_unchanged`` (an index job: a person asked for this folder), a skipped row saying
        so. What the scan says outright (unsupported, too large, a FIFO) gets a row and is remembered.
        Returns the paths found before and not now (see ``remove_missing``).

        A resumed or retried job keeps the rows, and states, it has, except rows still waiting to be
        indexed: those take this scan's verdict, and are skipped when this scan no longer finds them."""
        now = utcnow()
        pending = FileStatus.PENDING
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "SELECT path, size, mtime_ns, ctime_ns, inode, sha256, status, error FROM entries WHERE source_id = ?",
                (source_id,),
            )
            known = {row["path"]: row for row in await cursor.fetchall()}
            cursor = await conn.execute("SELECT path FROM files WHERE job_id = ?", (job_id,))
            rowed = {row["path"] for row in await cursor.fetchall()}
            rows, verdicts, found, blocked = [], [], set(), []
            unchanged = 0
            for f in files:
                text, raw = storable(f.path)
                found.add(text)
                if f.status == FileStatus.FAILED and text.endswith(os.sep):
                    blocked.append(text)  # a folder that cannot be listed: its files are not gone
                entry = known.get(text)
                status, error = f.status, f.error and storable(f.error)[0]
                if _unchanged(f, entry):
                    if not rows_for_unchanged:
                        unchanged += text not in rowed
                        continue
                    assert entry is not None
                    status = FileStatus.SKIPPED
                    error = UNCHANGED_REASON if entry["status"] == FileStatus.DONE else entry["error"]
                elif status != pending:
                    verdicts.append(text)
                rows.append((job_id, text, raw, f.size, f.mtime, status, error, now, source_id, f.mtime_ns,
                             f.ctime_ns, f.inode, entry["sha256"] if entry is not None and status == FileStatus.SKIPPED
                             and error == UNCHANGED_REASON else None, pending, pending, pending))  # fmt: skip
            await conn.executemany(
                "INSERT INTO files (job_id, path, raw_path, size, mtime, status, error, updated_at, source_id,"
                " mtime_ns, ctime_ns, inode, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id, path) DO UPDATE"
                " SET status = CASE WHEN excluded.status != ? THEN excluded.status ELSE files.status END,"
                " error = CASE WHEN excluded.status != ? THEN excluded.error ELSE files.error END,"
                " updated_at = excluded.updated_at, size = excluded.size, mtime_ns = excluded.mtime_ns,"
                " ctime_ns = excluded.ctime_ns, inode = excluded.inode, source_id = excluded.source_id"
                " WHERE files.status = ?",
                rows,
            )
            # What the scan decided by itself is remembered now (a later sync passes it if unchanged).
            cursor = await conn.execute(
                "SELECT id, path, status FROM files WHERE job_id = ? AND source_id = ? AND status IN (?, ?)",
                (job_id, source_id, FileStatus.SKIPPED, FileStatus.FAILED),
            )
            decided = {row["path"]: (row["id"], row["status"]) for row in await cursor.fetchall()}
            # A path new to the source cannot change what any content's points say: one statement
            # for all of those; the others, one by one.
            fresh = [text for text in verdicts if text in decided and text not in known]
            await conn.executemany(UPSERT_ENTRY, [(decided[text][1], now, decided[text][0]) for text in fresh])
            for text in verdicts:
                if text in decided and text in known:
                    await upsert_entry_from_file(conn, decided[text][0], decided[text][1])
            cursor = await conn.execute(
                "SELECT id, path FROM files WHERE job_id = ? AND source_id = ? AND status = ?",
                (job_id, source_id, pending),
            )
            gone = [(file_id, path) for file_id, path in await cursor.fetchall() if path not in found]
            await conn.executemany(
                "UPDATE files SET status = ?, error = ?, updated_at = ? WHERE id = ?",
                [(FileStatus.SKIPPED, not_found_reason(path), now, file_id) for file_id, path in gone],
            )
            await conn.execute(
                "UPDATE jobs SET files_unchanged = files_unchanged + ? WHERE id = ?", (unchanged, job_id)
            )
            missing = [
                Missing(path, row["sha256"], row["size"], row["status"])
                for path, row in known.items()
                if path not in found and not any(path.startswith(folder) for folder in blocked)
            ]
            return ScanOutcome(await _recount_and_bump(conn, job_id), missing, unchanged)

    async def remove_missing(self, job_id: str, source_id: int, missing: Sequence[Missing]) -> JobState | None:
        """Forget paths that are gone: their entries go, and a file that had vectors gets a
        ``removed`` row in the job. Their contents are marked, to be released or renamed
        (``Contents.settle``)."""
        if not missing:
            return None
        now = utcnow()
        async with self.db.transaction() as conn:
            # Those that had vectors: indexed, or failed since but still searchable as last indexed.
            hashes = sorted({m.sha256 for m in missing if m.sha256})
            contents: set[str] = set()
            for start in range(0, len(hashes), RELEASE_BATCH):
                batch = hashes[start : start + RELEASE_BATCH]
                cursor = await conn.execute(
                    "SELECT sha256 FROM documents WHERE collection = (SELECT collection FROM sources WHERE id = ?)"
                    f" AND state = 'done' AND sha256 IN ({','.join('?' * len(batch))})",
                    (source_id, *batch),
                )
                contents |= {row["sha256"] for row in await cursor.fetchall()}
            indexed = [m for m in missing if m.status in (FileStatus.DONE, FileStatus.FAILED) and m.sha256 in contents]
            await conn.executemany(
                "INSERT INTO files (job_id, path, size, mtime, status, error, updated_at, source_id, sha256)"
                " VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?) ON CONFLICT (job_id, path) DO UPDATE"
                " SET status = excluded.status, error = excluded.error, sha256 = excluded.sha256"
                " WHERE files.status IN (?, ?)",
                [(job_id, m.path, m.size, FileStatus.REMOVED, "no longer in the folder: removed from the collection",
                  now, source_id, m.sha256, FileStatus.PENDING, FileStatus.SKIPPED) for m in indexed],
            )  # fmt: skip
            await conn.executemany(
                "DELETE FROM entries WHERE source_id = ? AND path = ?", [(source_id, m.path) for m in missing]
            )
            cursor = await conn.execute("SELECT collection FROM sources WHERE id = ?", (source_id,))
            row = await cursor.fetchone()
            if row is not None:
                await mark_dirty(conn, row["collection"], hashes)
            return await _recount_and_bump(conn, job_id)

    async def moved_from(self, job_id: str, sha256: str, new_path: str) -> str | None:
        """If this job removed a path that had this content, the file was moved (or renamed): that
        row is dropped (the move is told once, on the new path) and its path returned."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "SELECT id, path FROM files WHERE job_id = ? AND status = ? AND sha256 = ? ORDER BY path LIMIT 1",
                (job_id, FileStatus.REMOVED, sha256),
            )
            row = await cursor.fetchone()
            if row is None or row["path"] == new_path:
                return None
            await conn.execute("DELETE FROM files WHERE id = ?", (row["id"],))
            await conn.execute("UPDATE jobs SET files_removed = files_removed - 1 WHERE id = ?", (job_id,))
            return str(row["path"])
