"""Job, file, collection and document bookkeeping in SQLite: the source of truth for every state."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from semantik.domain import Collection, FileInfo, FileStatus, Job, JobState, JobStatus, PendingFile, ScannedFile, utcnow
from semantik.errors import Conflict, NotFound
from semantik.paths import storable
from semantik.store.db import Database

FAILED_FILES_SHOWN = 100
# What every event carries about its job, read back in the transaction that made the change.
STATE_FIELDS = ("status", "files_total", "files_done", "files_failed", "files_skipped", "chunks", "current_file")
STATE_COLUMNS = ", ".join(("seq", *STATE_FIELDS))


def _not_found_reason(path: str) -> str:
    """Why a row that an earlier scan found is not indexed now that a new scan did not find it."""
    if path.endswith(os.sep):  # scan.folder_entry: a folder that could not be listed before
        return "folder can be listed now: its files are indexed on their own"
    return "no longer found: deleted or moved since an earlier run scanned it"


def _job_from_row(row: aiosqlite.Row, failed_files: list[FileInfo] | None = None) -> Job:
    data = dict(row)
    data.pop("arq_job_id", None)
    data["recursive"] = bool(data["recursive"])
    data["include"] = json.loads(data["include"]) if data["include"] else None
    data["exclude"] = json.loads(data["exclude"]) if data["exclude"] else None
    return Job(**data, failed_files=failed_files)


def job_state(job: Job) -> JobState:
    """The counters an event carries, from a job read whole."""
    return {field: getattr(job, field) for field in STATE_FIELDS}


def _file_from_row(row: aiosqlite.Row) -> FileInfo:
    return FileInfo(**{key: row[key] for key in FileInfo.model_fields})


async def bump(conn: aiosqlite.Connection, job_id: str) -> JobState:
    """Number the job's next event, inside the transaction of the change it announces."""
    cursor = await conn.execute(f"UPDATE jobs SET seq = seq + 1 WHERE id = ? RETURNING {STATE_COLUMNS}", (job_id,))
    row = await cursor.fetchone()
    await cursor.close()
    if row is None:
        raise NotFound(f"job {job_id!r} does not exist", code="job_not_found")
    return dict(row)


async def is_current_run(conn: aiosqlite.Connection, job_id: str, attempt: int | None) -> bool:
    """Whether a worker's run (``attempt``: the job's attempt number when that run started) is still
    the job's current one. A run that was swept (heartbeat lost) and re-queued as a new attempt is
    not: it must not overwrite the newer run's state. ``None`` skips the check (not a worker's call)."""
    if attempt is None:
        return True
    cursor = await conn.execute(
        "SELECT 1 FROM jobs WHERE id = ? AND status = ? AND attempts = ?", (job_id, JobStatus.RUNNING, attempt)
    )
    return await cursor.fetchone() is not None


async def recount(conn: aiosqlite.Connection, job_id: str) -> None:
    """Set the job's counters from its file rows."""
    await conn.execute(
        "UPDATE jobs SET"
        " files_total = (SELECT COUNT(*) FROM files WHERE job_id = :id),"
        " files_done = (SELECT COUNT(*) FROM files WHERE job_id = :id AND status = 'done'),"
        " files_failed = (SELECT COUNT(*) FROM files WHERE job_id = :id AND status = 'failed'),"
        " files_skipped = (SELECT COUNT(*) FROM files WHERE job_id = :id AND status = 'skipped'),"
        " chunks = (SELECT COALESCE(SUM(chunks), 0) FROM files WHERE job_id = :id AND status = 'done')"
        " WHERE id = :id",
        {"id": job_id},
    )


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- collections -------------------------------------------------------------------------

    async def create_collection(self, name: str, model: str, dim: int) -> Collection:
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "INSERT OR IGNORE INTO collections (name, model, dim, created_at) VALUES (?, ?, ?, ?)",
                (name, model, dim, utcnow()),
            )
            if cursor.rowcount == 0:
                raise Conflict(f"collection {name!r} already exists", code="collection_exists")
        return await self.get_collection(name)

    async def get_collection(self, name: str) -> Collection:
        collections = await self._collections("WHERE c.name = ?", (name,))
        if not collections:
            raise NotFound(f"collection {name!r} does not exist", code="collection_not_found")
        return collections[0]

    async def list_collections(self) -> list[Collection]:
        return await self._collections("", ())

    async def _collections(self, where: str, params: Sequence[Any]) -> list[Collection]:
        rows = await self.db.fetchall(
            "SELECT c.name, c.model, c.dim, c.created_at, COUNT(d.sha256) AS documents,"
            " COALESCE(SUM(d.chunks), 0) AS chunks"
            f" FROM collections c LEFT JOIN documents d ON d.collection = c.name {where}"
            " GROUP BY c.name ORDER BY c.name",
            params,
        )
        return [Collection(**dict(row)) for row in rows]

    # -- jobs --------------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        collection: str,
        directory: str,
        recursive: bool,
        include: list[str] | None,
        exclude: list[str] | None,
        name: str | None,
        model: str,
        dim: int,
    ) -> tuple[Job, bool]:
        """Insert a queued job (its ``job_queued`` event is seq 1), creating its collection on first
        use. Returns the job and whether its collection was created now (see ``discard_job``)."""
        job_id = str(uuid.uuid4())
        now = utcnow()
        async with self.db.transaction() as conn:
            row = await (await conn.execute("SELECT dim FROM collections WHERE name = ?", (collection,))).fetchone()
            created = row is None
            if created:
                await conn.execute(
                    "INSERT INTO collections (name, model, dim, created_at) VALUES (?, ?, ?, ?)",
                    (collection, model, dim, now),
                )
            elif row is not None and row["dim"] != dim:
                raise Conflict(
                    f"collection {collection!r} holds {row['dim']}-dimensional vectors;"
                    f" the configured model makes {dim}",
                    code="collection_model_mismatch",
                )
            await conn.execute(
                "INSERT INTO jobs (id, name, collection, directory, recursive, include, exclude, status,"
                " created_at, seq, arq_job_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (
                    job_id,
                    name,
                    collection,
                    directory,
                    int(recursive),
                    json.dumps(include) if include is not None else None,
                    json.dumps(exclude) if exclude is not None else None,
                    JobStatus.QUEUED,
                    now,
                    job_id,
                ),
            )
        return await self.get_job(job_id), created

    async def discard_job(self, job_id: str, *, drop_collection: bool) -> None:
        """Undo ``create_job`` for a job that could not be queued: the row goes, and so does the
        collection it created, unless something else uses it by now."""
        async with self.db.transaction() as conn:
            row = await (await conn.execute("SELECT collection FROM jobs WHERE id = ?", (job_id,))).fetchone()
            if row is None:
                return
            await conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            if drop_collection:
                await conn.execute(
                    "DELETE FROM collections WHERE name = :name"
                    " AND NOT EXISTS (SELECT 1 FROM jobs WHERE collection = :name)"
                    " AND NOT EXISTS (SELECT 1 FROM documents WHERE collection = :name)",
                    {"name": row["collection"]},
                )

    async def get_job(self, job_id: str, *, with_failed_files: bool = False) -> Job:
        row = await self.db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound(f"job {job_id!r} does not exist", code="job_not_found")
        failed = None
        if with_failed_files:
            failed = await self.list_files(job_id, status=FileStatus.FAILED, limit=FAILED_FILES_SHOWN)
        return _job_from_row(row, failed)

    async def list_jobs(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = await self.db.fetchall(
            f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_job_from_row(row) for row in rows]

    async def list_files(
        self, job_id: str, *, status: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[FileInfo]:
        where, params = ("AND status = ?", [status]) if status else ("", [])
        rows = await self.db.fetchall(
            f"SELECT * FROM files WHERE job_id = ? {where} ORDER BY path LIMIT ? OFFSET ?",
            [job_id, *params, limit, offset],
        )
        return [_file_from_row(row) for row in rows]

    async def start_job(
        self, job_id: str, *, worker_id: str, device: str, arq_job_id: str | None = None
    ) -> JobState | None:
        """Mark a queued job running. None when it should not run: cancelled, finished, deleted,
        already running elsewhere, or queued again under a newer arq job id (a stale queue entry).
        The state carries ``attempts``: the run's number, which the worker's closing calls pass back."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET status = ?, worker_id = ?, device = ?, error = NULL, finished_at = NULL,"
                " started_at = COALESCE(started_at, ?) WHERE id = ? AND status = ?"
                " AND (? IS NULL OR arq_job_id = ?)",
                (JobStatus.RUNNING, worker_id, device, utcnow(), job_id, JobStatus.QUEUED, arq_job_id, arq_job_id),
            )
            if cursor.rowcount == 0:
                return None
            state = await bump(conn, job_id)
            row = await (await conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,))).fetchone()
            assert row is not None
            return {**state, "attempts": int(row["attempts"])}

    async def fail_job(self, job_id: str, error: str, *, attempt: int | None = None) -> JobState | None:
        """End the job ``failed``; with ``attempt``, only while that run is still the current one."""
        async with self.db.transaction() as conn:
            if not await is_current_run(conn, job_id, attempt):
                return None
            await recount(conn, job_id)
            await conn.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ?, current_file = NULL WHERE id = ?",
                (JobStatus.FAILED, error, utcnow(), job_id),
            )
            return await bump(conn, job_id)

    async def finish_job(self, job_id: str, *, attempt: int | None = None) -> JobState | None:
        """Recount from the file rows and set the terminal status they imply; with ``attempt``, only
        while that run is still the current one (None otherwise)."""
        async with self.db.transaction() as conn:
            if not await is_current_run(conn, job_id, attempt):
                return None
            await recount(conn, job_id)
            await conn.execute(
                "UPDATE jobs SET status = CASE WHEN files_failed > 0 THEN ? ELSE ? END,"
                " finished_at = ?, current_file = NULL WHERE id = ?",
                (JobStatus.COMPLETED_WITH_ERRORS, JobStatus.COMPLETED, utcnow(), job_id),
            )
            return await bump(conn, job_id)

    async def progress(self, job_id: str) -> JobState:
        """Number a progress event and read the counters it carries."""
        async with self.db.transaction() as conn:
            return await bump(conn, job_id)

    # -- files -------------------------------------------------------------------------------

    async def record_scan(self, job_id: str, files: Iterable[ScannedFile]) -> JobState:
        """Add the scanned files. A resumed or retried job keeps the rows, and the states, it already
        has, except rows still waiting to be indexed: those take this scan's verdict (skipped or
        failed as found now), and are skipped when this scan no longer finds them."""
        scanned = [(f, *storable(f.path)) for f in files]
        now = utcnow()
        pending = FileStatus.PENDING
        async with self.db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO files (job_id, path, raw_path, size, mtime, status, error, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, path) DO UPDATE"
                " SET status = excluded.status, error = excluded.error, updated_at = excluded.updated_at"
                " WHERE files.status = ? AND excluded.status != ?",
                [(job_id, text, raw, f.size, f.mtime, f.status, f.error and storable(f.error)[0], now, pending, pending)
                 for f, text, raw in scanned],
            )  # fmt: skip
            found = {text for _, text, _ in scanned}
            cursor = await conn.execute("SELECT id, path FROM files WHERE job_id = ? AND status = ?", (job_id, pending))
            gone = [(file_id, path) for file_id, path in await cursor.fetchall() if path not in found]
            await conn.executemany(
                "UPDATE files SET status = ?, error = ?, updated_at = ? WHERE id = ?",
                [(FileStatus.SKIPPED, _not_found_reason(path), now, file_id) for file_id, path in gone],
            )
            await recount(conn, job_id)
            return await bump(conn, job_id)

    async def pending_files(self, job_id: str) -> list[PendingFile]:
        rows = await self.db.fetchall(
            "SELECT id, path, raw_path, size FROM files WHERE job_id = ? AND status = ? ORDER BY path",
            (job_id, FileStatus.PENDING),
        )
        return [PendingFile(row["id"], row["path"], row["size"], row["raw_path"]) for row in rows]

    async def set_current_file(self, job_id: str, path: str) -> None:
        await self.db.execute("UPDATE jobs SET current_file = ? WHERE id = ?", (path, job_id))

    async def settle_file(
        self, job_id: str, file_id: int, status: str, error: str | None, sha256: str | None
    ) -> JobState | None:
        """A file that ends without vectors: skipped (with why) or failed (with the reason).
        A failure is an event (its state comes back); a skip only moves the counters."""
        counter = "files_failed" if status == FileStatus.FAILED else "files_skipped"
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE files SET status = ?, error = ?, sha256 = ?, updated_at = ? WHERE id = ? AND status = ?",
                (status, error, sha256, utcnow(), file_id, FileStatus.PENDING),
            )
            if not cursor.rowcount:
                return None
            await conn.execute(f"UPDATE jobs SET {counter} = {counter} + 1 WHERE id = ?", (job_id,))
            return await bump(conn, job_id) if status == FileStatus.FAILED else None

    async def indexed_path(self, collection: str, sha256: str) -> str | None:
        """The path this content was indexed from in the collection, or None if it is not there."""
        value = await self.db.fetchval(
            "SELECT path FROM documents WHERE collection = ? AND sha256 = ?", (collection, sha256)
        )
        return str(value) if value is not None else None

    async def stale_hashes(self, collection: str, path: str, sha256: str) -> list[str]:
        """Contents previously indexed from ``path`` that the file no longer has."""
        rows = await self.db.fetchall(
            "SELECT sha256 FROM documents WHERE collection = ? AND path = ? AND sha256 != ?",
            (collection, path, sha256),
        )
        return [row["sha256"] for row in rows]

    async def commit_file(
        self,
        *,
        job_id: str,
        file_id: int,
        collection: str,
        path: str,
        sha256: str,
        chunks: int,
        stale: list[str],
    ) -> JobState:
        """After the file's points are upserted: mark it done and record what the collection holds."""
        now = utcnow()
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE files SET status = ?, sha256 = ?, chunks = ?, error = NULL, updated_at = ?"
                " WHERE id = ? AND status = ?",
                (FileStatus.DONE, sha256, chunks, now, file_id, FileStatus.PENDING),
            )
            if cursor.rowcount:
                await conn.execute(
                    "UPDATE jobs SET files_done = files_done + 1, chunks = chunks + ? WHERE id = ?",
                    (chunks, job_id),
                )
            await conn.execute(
                "INSERT OR REPLACE INTO documents (collection, sha256, path, chunks, job_id, indexed_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (collection, sha256, path, chunks, job_id, now),
            )
            await conn.executemany(
                "DELETE FROM documents WHERE collection = ? AND sha256 = ?", [(collection, h) for h in stale]
            )
            return await bump(conn, job_id)
