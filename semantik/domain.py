"""The domain's closed sets and records, shared by every layer: job and file states, event types,
and the job, file and collection records the store returns and the API serves.

States and event types are ``StrEnum``: they compare equal to their JSON strings, the type checker
sees the closed set, and the OpenAPI description publishes them as enums.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A job in one of these has ended; only a retry moves it again.
TERMINAL_STATES = frozenset(
    {JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS, JobStatus.FAILED, JobStatus.CANCELLED}
)


class FileStatus(StrEnum):
    """A file within a job."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    # Found by an earlier run, gone now (deleted, moved away, no longer matched): its vectors went
    # with it, unless the same content is still found at another path.
    REMOVED = "removed"


class JobKind(StrEnum):
    """``index``: one folder (``POST /api/jobs``, which makes it one of the collection's sources);
    ``sync``: every source of a collection (``POST /api/collections/{name}/sync``, the schedule,
    the watcher). Both make the collection mirror what they read: additions, changes, moves, deletions."""

    INDEX = "index"
    SYNC = "sync"


class EventType(StrEnum):
    """Job events (worker → Redis pub/sub → server → WebSocket); ``snapshot`` is made by the server."""

    JOB_QUEUED = "job_queued"
    JOB_STARTED = "job_started"
    SCAN_COMPLETED = "scan_completed"
    FILE_COMPLETED = "file_completed"
    FILE_FAILED = "file_failed"
    PROGRESS = "progress"
    JOB_COMPLETED = "job_completed"
    JOB_FAILED = "job_failed"
    JOB_CANCELLED = "job_cancelled"
    SNAPSHOT = "snapshot"


TERMINAL_EVENTS = frozenset({EventType.JOB_COMPLETED, EventType.JOB_FAILED, EventType.JOB_CANCELLED})

# What an event carries about its job: the counters read back in the transaction that made the change.
JobState = dict[str, Any]


def age_s(iso: str | None) -> float:
    """Seconds since an ISO-8601 UTC timestamp made by ``utcnow`` (infinite for None)."""
    if not iso:
        return float("inf")
    return (datetime.now(UTC) - datetime.fromisoformat(iso.replace("Z", "+00:00"))).total_seconds()


def utcnow() -> str:
    """Now, as the ISO-8601 UTC text every timestamp in the database and the API uses."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ScannedFile:
    """One file found by the scan; ``status``/``error`` are set when it is skipped outright.
    ``mtime_ns``, ``ctime_ns`` and ``inode`` with ``size`` tell a sync that a file is unchanged
    without reading it (ctime moves on chmod, rename and hard links, so those are noticed too)."""

    path: str
    size: int
    mtime: float
    status: FileStatus = FileStatus.PENDING
    error: str | None = None
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0


@dataclass(frozen=True)
class EmbeddedFile:
    """A file of a job whose chunks are embedded: what its rows record once its points are stored."""

    file_id: int
    path: str
    sha256: str
    chunks: int


@dataclass(frozen=True)
class PendingFile:
    """A file row still waiting to be indexed. ``path`` is how it is shown (a name that is not
    UTF-8 appears with ``\\xNN`` escapes); ``open_path`` is what to open (lossless)."""

    id: int
    path: str
    size: int
    raw_path: bytes | None = None  # the name's bytes, only when they are not valid UTF-8
    source_id: int | None = None

    @property
    def open_path(self) -> str:
        return os.fsdecode(self.raw_path) if self.raw_path is not None else self.path


class FileInfo(BaseModel):
    path: str
    size: int
    status: FileStatus
    error: str | None
    chunks: int
    sha256: str | None


class Job(BaseModel):
    id: str
    name: str | None
    kind: JobKind = JobKind.INDEX
    status: JobStatus
    collection: str
    directory: str
    recursive: bool
    include: list[str] | None
    exclude: list[str] | None
    files_total: int
    files_done: int
    files_failed: int
    files_skipped: int
    chunks: int
    current_file: str | None
    worker_id: str | None
    device: str | None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    files_unchanged: int = 0  # a sync's files found as they were (not read; in files_skipped too)
    files_removed: int = 0
    source_id: int | None = None
    seq: int = 0
    attempts: int = 1
    cancel_requested_at: str | None = None
    failed_files: list[FileInfo] | None = None


class Collection(BaseModel):
    name: str
    model: str
    dim: int
    created_at: str
    documents: int = 0
    chunks: int = 0
    sources: int = 0
    sync_interval_s: int | None = None


class Source(BaseModel):
    """A folder a collection mirrors, and how it is read."""

    id: int
    collection: str
    directory: str
    recursive: bool
    include: list[str] | None
    exclude: list[str] | None
    watch: bool
    created_at: str
    files: int = 0  # paths found by its last run
    indexed: int = 0  # of those, with vectors
