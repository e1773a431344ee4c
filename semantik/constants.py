"""Names shared between server and workers: Redis keys, channels, Qdrant naming."""

from __future__ import annotations

# arq function names; the server enqueues by name so it never imports worker code.
EMBED_JOB_FUNCTION = "embed_job"
PING_FUNCTION = "ping"

# Qdrant collection backing Semantik collection NAME; the prefix keeps a shared Qdrant server tidy.
QDRANT_COLLECTION_PREFIX = "semantik_"

# Pub/sub channel carrying one job's events, and the one carrying every job's events.
JOB_EVENTS_CHANNEL = "semantik:events:job:{job_id}"
ALL_JOBS_EVENTS_CHANNEL = "semantik:events:jobs"
# The server's one pattern subscription: every per-job channel.
JOB_EVENTS_PATTERN = "semantik:events:job:*"

# Event types (worker → Redis pub/sub → server → WebSocket); ``snapshot`` is made by the server.
JOB_QUEUED, JOB_STARTED, SCAN_COMPLETED = "job_queued", "job_started", "scan_completed"
FILE_COMPLETED, FILE_FAILED, PROGRESS = "file_completed", "file_failed", "progress"
JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED = "job_completed", "job_failed", "job_cancelled"
SNAPSHOT = "snapshot"
TERMINAL_EVENTS = frozenset({JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED})

# Job states; the last four are terminal.
QUEUED, RUNNING = "queued", "running"
COMPLETED, COMPLETED_WITH_ERRORS, FAILED, CANCELLED = (
    "completed",
    "completed_with_errors",
    "failed",
    "cancelled",
)
TERMINAL_STATES = frozenset({COMPLETED, COMPLETED_WITH_ERRORS, FAILED, CANCELLED})

# File states within a job.
FILE_PENDING, FILE_DONE, FILE_FAILED, FILE_SKIPPED = "pending", "done", "failed", "skipped"
