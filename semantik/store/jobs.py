"""Job, file, collection and document bookkeeping in SQLite: the source of truth for every state."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

import aiosqlite

from semantik.domain import (
    Collection,
    EmbeddedFile,
    FileInfo,
    FileStatus,
    Job,
    JobKind,
    JobState,
    JobStatus,
    PendingFile,
    utcnow,
)
from semantik.errors import Conflict, NotFound
from semantik.store.db import Database, in_thread
from semantik.store.sources import (
    active_job,
    entry_from_file_now,
    refuse_while_active,
    source_for_job,
)

FAILED_FILES_SHOWN = 100
# What every event carries about its job, read back in the transaction that made the change.
STATE_FIELDS = ("status", "files_total", "files_done", "files_failed", "files_skipped", "chunks", "current_file",
                "files_unchanged", "files_removed")  # fmt: skip
STATE_COLUMNS = ", ".join(("seq", *STATE_FIELDS))


# Another job of the same collection in a given state, beside a job in a given state (its id, status,
# other's status): jobs of one collection run one at a time.
RUNNING_BESIDE = (
    "SELECT o.id FROM jobs j JOIN jobs o ON o.collection = j.collection AND o.id != j.id"
    " WHERE j.id = ? AND j.status = ? AND o.status = ? LIMIT 1"
)


class CollectionBusy(Exception):
    """Another job of the same collection is running: jobs of one collection run one at a time."""

    def __init__(self, running_job_id: str) -> None:
        super().__init__(f"job {running_job_id} of the same collection is running")
        self.running_job_id = running_job_id


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


def bump_now(conn: sqlite3.Connection, job_id: str) -> JobState:
    """Number the job's next event, inside the transaction of the change it announces. On SQLite's
    thread (``db.in_thread``); ``bump`` from the event loop."""
    cursor = conn.execute(f"UPDATE jobs SET seq = seq + 1 WHERE id = ? RETURNING {STATE_COLUMNS}", (job_id,))
    row = cursor.fetchone()
    cursor.close()
    if row is None:
        raise NotFound(f"job {job_id!r} does not exist", code="job_not_found")
    return dict(row)


async def bump(conn: aiosqlite.Connection, job_id: str) -> JobState:
    return await in_thread(conn, bump_now, job_id)


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
    """Set the job's counters from its file rows (and the files a sync found unchanged, which have none)."""
    await conn.execute(
        "UPDATE jobs SET"
        " files_total = files_unchanged"
        "   + (SELECT COUNT(*) FROM files WHERE job_id = :id AND status != 'removed'),"
        " files_done = (SELECT COUNT(*) FROM files WHERE job_id = :id AND status = 'done'),"
        " files_failed = (SELECT COUNT(*) FROM files WHERE job_id = :id AND status = 'failed'),"
        " files_skipped = files_unchanged + (SELECT COUNT(*) FROM files WHERE job_id = :id AND status = 'skipped'),"
        " files_removed = (SELECT COUNT(*) FROM files WHERE job_id = :id AND status = 'removed'),"
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
            "SELECT c.name, c.model, c.dim, c.created_at, c.sync_interval_s,"
            " (SELECT COUNT(*) FROM documents d WHERE d.collection = c.name AND d.state = 'done') AS documents,"
            " (SELECT COALESCE(SUM(d.chunks), 0) FROM documents d WHERE d.collection = c.name AND d.state = 'done')"
            " AS chunks, (SELECT COUNT(*) FROM sources s WHERE s.collection = c.name) AS sources"
            f" FROM collections c {where} ORDER BY c.name",
            params,
        )
        return [Collection(**dict(row)) for row in rows]

    async def set_sync_interval(self, name: str, interval_s: int | None) -> Collection:
        """Sync the collection every ``interval_s`` seconds (arq cron); 0: never; None: as
        SEMANTIK_SYNC_INTERVAL_S says."""
        changed = await self.db.execute("UPDATE collections SET sync_interval_s = ? WHERE name = ?", (interval_s, name))
        if not changed:
            raise NotFound(f"collection {name!r} does not exist", code="collection_not_found")
        return await self.get_collection(name)

    async def sync_schedule(self, default_interval_s: int | None) -> list[tuple[str, int, str | None]]:
        """(collection, interval, when its newest job was created) for each scheduled collection:
        those with an interval of their own (0: never), the others with ``default_interval_s``."""
        rows = await self.db.fetchall(
            "SELECT c.name, COALESCE(c.sync_interval_s, ?) AS interval_s,"
            " (SELECT MAX(j.created_at) FROM jobs j WHERE j.collection = c.name) AS last"
            " FROM collections c WHERE COALESCE(c.sync_interval_s, ?) > 0 ORDER BY c.name",
            (default_interval_s, default_interval_s),
        )
        return [(row["name"], int(row["interval_s"]), row["last"]) for row in rows]

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
        kind: JobKind = JobKind.INDEX,
    ) -> tuple[Job, bool]:
        """Insert a queued job (its ``job_queued`` event is seq 1), creating its collection on first
        use. An index job's folder becomes one of the collection's sources (the same folder read the
        same way is the same source). A sync job covers every source; it is refused (409) while
        another job of the collection is queued or running. Returns the job and whether its
        collection was created now (see ``discard_job``)."""
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
            source_id = None
            if kind == JobKind.INDEX:
                source_id = await source_for_job(conn, collection, directory, recursive, include, exclude, now)
            else:
                await refuse_while_active(conn, collection)
            await conn.execute(
                "INSERT INTO jobs (id, name, collection, directory, recursive, include, exclude, status,"
                " created_at, seq, arq_job_id, kind, source_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
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
                    kind,
                    source_id,
                ),
            )
        return await self.get_job(job_id), created

    async def active_job(self, collection: str) -> str | None:
        """The id of a queued or running job of the collection, running ones first; None when idle."""
        async with self.db.reader() as conn:
            row = await active_job(conn, collection)
        return str(row["id"]) if row is not None else None

    async def running_beside(self, job_id: str) -> str | None:
        """Another running job of this queued job's collection (it must wait for it), or None (also
        when this job is not queued any more)."""
        value = await self.db.fetchval(RUNNING_BESIDE, (job_id, JobStatus.QUEUED, JobStatus.RUNNING))
        return str(value) if value is not None else None

    async def discard_job(self, job_id: str, *, drop_collection: bool) -> None:
        """Undo ``create_job`` for a job that could not be queued: the row goes, and so does the
        collection it created, unless something else uses it by now."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute("SELECT collection, source_id, created_at FROM jobs WHERE id = ?", (job_id,))
            row = await cursor.fetchone()
            if row is None:
                return
            await conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            # The source it made (at the same moment), unless another job uses it by now.
            await conn.execute(
                "DELETE FROM sources WHERE id = :id AND created_at = :at"
                " AND NOT EXISTS (SELECT 1 FROM jobs WHERE source_id = :id)"
                " AND NOT EXISTS (SELECT 1 FROM entries WHERE source_id = :id)",
                {"id": row["source_id"], "at": row["created_at"]},
            )
            if drop_collection:
                await conn.execute(
                    "DELETE FROM collections WHERE name = :name"
                    " AND NOT EXISTS (SELECT 1 FROM jobs WHERE collection = :name)"
                    " AND NOT EXISTS (SELECT 1 FROM sources WHERE collection = :name)"
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
        Raises CollectionBusy while another job of its collection runs (the caller waits).
        The state carries ``attempts``: the run's number, which the worker's closing calls pass back."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(RUNNING_BESIDE, (job_id, JobStatus.QUEUED, JobStatus.RUNNING))
            other = await cursor.fetchone()
            if other is not None:
                raise CollectionBusy(other["id"])
            cursor = await conn.execute(
                "UPDATE jobs SET status = ?, worker_id = ?, device = ?, error = NULL, finished_at = NULL,"
                " files_unchanged = 0,"
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

    async def is_current(self, job_id: str, attempt: int) -> bool:
        """Whether the run that started as ``attempt`` is still the job's current, running one."""
        row = await self.db.fetchone(
            "SELECT 1 FROM jobs WHERE id = ? AND status = ? AND attempts = ?", (job_id, JobStatus.RUNNING, attempt)
        )
        return row is not None

    async def progress(self, job_id: str) -> JobState:
        """Number a progress event and read the counters it carries."""
        async with self.db.transaction() as conn:
            return await bump(conn, job_id)

    # -- files -------------------------------------------------------------------------------

    async def pending_files(self, job_id: str) -> list[PendingFile]:
        rows = await self.db.fetchall(
            "SELECT id, path, raw_path, size, source_id FROM files WHERE job_id = ? AND status = ? ORDER BY path",
            (job_id, FileStatus.PENDING),
        )
        return [PendingFile(row["id"], row["path"], row["size"], row["raw_path"], row["source_id"]) for row in rows]

    async def set_current_file(self, job_id: str, path: str) -> None:
        await self.db.execute("UPDATE jobs SET current_file = ? WHERE id = ?", (path, job_id))

    async def settle_file(
        self,
        job_id: str,
        file_id: int,
        status: str,
        error: str | None,
        sha256: str | None,
        *,
        entry_status: str | None = None,
    ) -> JobState | None:
        """A file that ends without new vectors: skipped (with why) or failed (with the reason). Its
        source remembers it as ``entry_status`` (default: the same): ``done`` for a file whose content
        the collection already has vectors for (a copy, a move). A failure is an event (its state
        comes back); a skip only moves the counters."""
        return await self.db.write(_settle_file, job_id, file_id, status, error, sha256, entry_status or status)

    async def indexed_path(self, collection: str, sha256: str) -> str | None:
        """A path this content is indexed from in the collection, or None if it has no vectors there."""
        value = await self.db.fetchval(
            "SELECT path FROM documents WHERE collection = ? AND sha256 = ? AND state = 'done'", (collection, sha256)
        )
        return str(value) if value is not None else None

    async def begin_contents(self, collection: str, job_id: str, files: Sequence[EmbeddedFile]) -> None:
        """Before contents' points are upserted: note them (``writing``), so that points a crash
        leaves behind without a file row are found and removed by the next run."""
        now = utcnow()
        rows = [(collection, f.sha256, f.path, f.chunks, job_id, now) for f in files]
        await self.db.write(lambda conn: conn.executemany(BEGIN_CONTENT, rows))

    async def commit_files(self, job_id: str, collection: str, files: Sequence[EmbeddedFile]) -> list[JobState]:
        """After the files' points are upserted: mark each done and record what the collection holds,
        in one transaction; one numbered state per file, in order (each file is an event). The
        content a file's source had at its path before is marked (``Contents.settle`` releases it once
        nothing refers to it)."""
        return await self.db.write(_commit_files, job_id, collection, files, utcnow())


BEGIN_CONTENT = (
    "INSERT OR IGNORE INTO documents (collection, sha256, path, chunks, job_id, indexed_at, state)"
    " VALUES (?, ?, ?, ?, ?, ?, 'writing')"
)


def _settle_file(
    conn: sqlite3.Connection,
    job_id: str,
    file_id: int,
    status: str,
    error: str | None,
    sha256: str | None,
    entry_status: str,
) -> JobState | None:
    counter = "files_failed" if status == FileStatus.FAILED else "files_skipped"
    cursor = conn.execute(
        "UPDATE files SET status = ?, error = ?, sha256 = ?, updated_at = ? WHERE id = ? AND status = ?",
        (status, error, sha256, utcnow(), file_id, FileStatus.PENDING),
    )
    if not cursor.rowcount:
        return None
    entry_from_file_now(conn, file_id, entry_status)
    conn.execute(f"UPDATE jobs SET {counter} = {counter} + 1 WHERE id = ?", (job_id,))
    return bump_now(conn, job_id) if status == FileStatus.FAILED else None


def _commit_files(
    conn: sqlite3.Connection, job_id: str, collection: str, files: Sequence[EmbeddedFile], now: str
) -> list[JobState]:
    states = []
    for f in files:
        cursor = conn.execute(
            "UPDATE files SET status = ?, sha256 = ?, chunks = ?, error = NULL, updated_at = ?"
            " WHERE id = ? AND status = ?",
            (FileStatus.DONE, f.sha256, f.chunks, now, f.file_id, FileStatus.PENDING),
        )
        if cursor.rowcount:
            conn.execute(
                "UPDATE jobs SET files_done = files_done + 1, chunks = chunks + ? WHERE id = ?", (f.chunks, job_id)
            )
        conn.execute(
            "INSERT INTO documents (collection, sha256, path, chunks, job_id, indexed_at, state)"
            " VALUES (?, ?, ?, ?, ?, ?, 'done') ON CONFLICT (collection, sha256) DO UPDATE"
            " SET path = excluded.path, chunks = excluded.chunks, job_id = excluded.job_id,"
            " indexed_at = excluded.indexed_at, state = 'done'",
            (collection, f.sha256, f.path, f.chunks, job_id, now),
        )
        entry_from_file_now(conn, f.file_id, FileStatus.DONE)
        states.append(bump_now(conn, job_id))
    return states
