"""Job state transitions beyond a plain run: cancel, retry, re-queue after a crash, and retention.

Every transition is one SQLite transaction that also numbers the event announcing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from semantik.domain import TERMINAL_STATES, FileStatus, JobState, JobStatus, utcnow
from semantik.errors import Conflict, NotFound
from semantik.store.db import Database
from semantik.store.jobs import bump, is_current_run, recount


@dataclass(frozen=True)
class JobRun:
    id: str
    arq_job_id: str | None
    worker_id: str | None
    created_at: str
    started_at: str | None
    attempts: int = 1
    current_file: str | None = None


def retry_arq_id(job_id: str, attempt: int) -> str:
    """Each run of a job gets its own arq id: arq keeps a finished id's result, blocking reuse."""
    return job_id if attempt <= 1 else f"{job_id}:run{attempt}"


class Lifecycle:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def request_cancel(self, job_id: str) -> tuple[str, JobState | None]:
        """Cancel a queued job at once (its state comes back, to announce), or ask a running one to
        stop (None: its worker announces it). Returns the job's status before the call."""
        async with self.db.transaction() as conn:
            row = await (await conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,))).fetchone()
            if row is None:
                raise NotFound(f"job {job_id!r} does not exist", code="job_not_found")
            status = row["status"]
            if status in TERMINAL_STATES:
                raise Conflict(f"job {job_id} has already ended ({status})", code="job_finished")
            now = utcnow()
            if status == JobStatus.QUEUED:
                await conn.execute(
                    "UPDATE jobs SET status = ?, cancel_requested_at = COALESCE(cancel_requested_at, ?),"
                    " finished_at = ? WHERE id = ?",
                    (JobStatus.CANCELLED, now, now, job_id),
                )
                return status, await bump(conn, job_id)
            await conn.execute(
                "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ?) WHERE id = ?", (now, job_id)
            )
            return status, None

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self.db.fetchval("SELECT cancel_requested_at IS NOT NULL FROM jobs WHERE id = ?", (job_id,)))

    async def acknowledge_cancel(self, job_id: str, *, attempt: int | None = None) -> JobState | None:
        """The worker stopped: the job ends ``cancelled``, keeping what it indexed. With ``attempt``,
        only while that run is still the job's current one (None otherwise)."""
        async with self.db.transaction() as conn:
            if not await is_current_run(conn, job_id, attempt):
                return None
            await recount(conn, job_id)
            await conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, current_file = NULL WHERE id = ?",
                (JobStatus.CANCELLED, utcnow(), job_id),
            )
            return await bump(conn, job_id)

    async def requeue(
        self, job_id: str, *, reason: str | None, new_run: bool, from_status: str, attempt: int | None = None
    ) -> JobState | None:
        """Put a job back in the queue. ``new_run``: a new attempt with a new arq job id (retry,
        orphan); otherwise the same arq job runs again (arq's own retry or restart). Failed files
        of a retried job are tried again; done ones are never redone. With ``attempt`` (a worker
        giving its run back), only while that run is still the current one."""
        async with self.db.transaction() as conn:
            if not await is_current_run(conn, job_id, attempt):
                return None
            cursor = await conn.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = NULL, cancel_requested_at = NULL,"
                " current_file = NULL, attempts = attempts + ?, worker_id = NULL WHERE id = ? AND status = ?",
                (JobStatus.QUEUED, reason, int(new_run), job_id, from_status),
            )
            if cursor.rowcount == 0:
                return None
            if new_run:
                row = await (await conn.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,))).fetchone()
                assert row is not None
                await conn.execute(
                    "UPDATE jobs SET arq_job_id = ? WHERE id = ?", (retry_arq_id(job_id, row["attempts"]), job_id)
                )
                await conn.execute(
                    "UPDATE files SET status = ?, error = NULL, updated_at = ? WHERE job_id = ? AND status = ?",
                    (FileStatus.PENDING, utcnow(), job_id, FileStatus.FAILED),
                )
                await recount(conn, job_id)
            return await bump(conn, job_id)

    async def arq_job_id(self, job_id: str) -> str | None:
        value = await self.db.fetchval("SELECT arq_job_id FROM jobs WHERE id = ?", (job_id,))
        return str(value) if value is not None else None

    async def _runs(self, status: str) -> list[JobRun]:
        rows = await self.db.fetchall(
            "SELECT id, arq_job_id, worker_id, created_at, started_at, attempts, current_file FROM jobs"
            " WHERE status = ?",
            (status,),
        )
        return [JobRun(**dict(row)) for row in rows]

    async def give_up(self, run: JobRun, reason: str, file_reason: str) -> JobState | None:
        """A run whose worker died: end the job ``failed`` with ``reason`` instead of re-queueing it,
        and fail the file it was processing with ``file_reason``. None when the run is not the
        job's current one any more."""
        async with self.db.transaction() as conn:
            if not await is_current_run(conn, run.id, run.attempts):
                return None
            if run.current_file is not None:
                await conn.execute(
                    "UPDATE files SET status = ?, error = ?, updated_at = ?"
                    " WHERE job_id = ? AND path = ? AND status = ?",
                    (FileStatus.FAILED, file_reason, utcnow(), run.id, run.current_file, FileStatus.PENDING),
                )
            await recount(conn, run.id)
            await conn.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ?, current_file = NULL WHERE id = ?",
                (JobStatus.FAILED, reason, utcnow(), run.id),
            )
            return await bump(conn, run.id)

    async def running_jobs(self) -> list[JobRun]:
        return await self._runs(JobStatus.RUNNING)

    async def queued_jobs(self) -> list[JobRun]:
        return await self._runs(JobStatus.QUEUED)

    async def delete_finished_before(self, cutoff_iso: str) -> list[tuple[str, str | None]]:
        """Remove jobs that ended before ``cutoff_iso`` (their file rows go with them); returns
        (job id, arq job id) of each. What the collections hold is kept."""
        marks = ",".join("?" * len(TERMINAL_STATES))
        states = sorted(TERMINAL_STATES)
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                f"SELECT id, arq_job_id FROM jobs WHERE status IN ({marks}) AND finished_at < ?", (*states, cutoff_iso)
            )
            doomed = [(row["id"], row["arq_job_id"]) for row in await cursor.fetchall()]
            await conn.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id, _ in doomed])
        return doomed
