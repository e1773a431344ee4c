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
