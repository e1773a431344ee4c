"""Every Redis key, channel and arq name Semantik uses, under one per-deployment namespace.

Two deployments share a Redis safely when their ``SEMANTIK_NAMESPACE`` differs: each one's queue,
events, worker presence, statistics, heartbeats, GPU leases and cron runs live under its own prefix.
The only names outside it are arq's per-job records (``arq:job:<id>``, ``arq:in-progress:<id>``,
``arq:result:<id>``, ``arq:retry:<id>``, ``arq:abort``), keyed by job ids that never collide: job
ids are UUIDs, and the cron jobs' ids carry the namespace (``cron:<namespace>:sweep_orphans:<ms>``).

Each name says who writes it, who reads it, and when it goes away.
"""

from __future__ import annotations

import re

# Letters, digits, "_", "." and "-": no ":" (so one namespace is never a prefix of another's
# names) and no glob characters (the event relay subscribes to a pattern built from it).
NAMESPACE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
DEFAULT_NAMESPACE = "semantik"

# arq function names: the server enqueues by name, so it never imports worker code.
EMBED_JOB_FUNCTION = "embed_job"
PING_FUNCTION = "ping"


class RedisNames:
    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not re.match(NAMESPACE_PATTERN, namespace):
            raise ValueError(f"namespace {namespace!r} must match {NAMESPACE_PATTERN}")
        self.namespace = namespace
        ns = namespace

        # -- queue and cron (arq) ------------------------------------------------------------
        # arq's queue: a sorted set of job ids by run time. The server and the sweeper enqueue,
        # workers poll it; an entry goes when a worker takes the job.
        self.queue = f"{ns}:queue"
        # arq cron job names; a unique cron run's id is ``cron:<name>:<ms>``, so with the namespace
        # in the name one deployment's sweeper never blocks another's.
        self.cron_sweep_orphans = f"{ns}:sweep_orphans"
        self.cron_cleanup_jobs = f"{ns}:cleanup_jobs"
        self.cron_scheduled_syncs = f"{ns}:scheduled_syncs"

        # -- events (pub/sub channels; nothing stored) ---------------------------------------
        # Workers and the server publish each job event on the job's channel and on the all-jobs
        # channel; each server process holds one pattern subscription over the job channels.
        self.all_jobs_channel = f"{ns}:events:jobs"
        self.job_channel_pattern = f"{ns}:events:job:*"

        # -- worker presence and statistics --------------------------------------------------
        # Hash per live worker (host, pid, device, current job, counters): written by the worker
        # every few seconds, read by /api/monitor; expires WORKER_TTL_S after the last beat.
        self.worker_pattern = f"{ns}:worker:*"
        # Totals since the counters began, incremented by workers after each encode, read by
        # /api/monitor and /metrics; never expire.
        self.chunks_total = f"{ns}:stats:chunks_total"
        self.embed_seconds = f"{ns}:stats:embed_seconds"

        # -- GPU leases (see semantik.gpu.leases; every mutation is one Lua script) -----------
        # Sorted set slot → lease expiry (ms, Redis clock): held slots. Lapsed entries are reclaimed.
        self.gpu_holders = f"{ns}:gpu:holders"
        # Hash slot → JSON {token, owner, job_id, acquired_at_ms}: the current holder of each slot.
        self.gpu_holder_info = f"{ns}:gpu:holder-info"
        # Sorted set waiter token → arrival number: the FIFO queue of acquirers.
        self.gpu_waiters = f"{ns}:gpu:waiters"
        # Sorted set waiter token → expiry (ms); refreshed on each poll, lapsed waiters drop out.
        self.gpu_waiter_expiry = f"{ns}:gpu:waiter-expiry"
        # Hash waiter token → JSON {owner, job_id, since_ms}, for status.
        self.gpu_waiter_info = f"{ns}:gpu:waiter-info"
        # Counter handing out arrival numbers; never expires.
        self.gpu_waiter_seq = f"{ns}:gpu:waiter-seq"

    def job_channel(self, job_id: str) -> str:
        """Pub/sub channel of one job's events."""
        return f"{self.namespace}:events:job:{job_id}"

    def worker(self, worker_id: str) -> str:
        """A worker's presence hash (see ``worker_pattern``)."""
        return f"{self.namespace}:worker:{worker_id}"

    def chunks_minute(self, unix_minute: int) -> str:
        """Chunks embedded during one minute, by every worker; expires after an hour."""
        return f"{self.namespace}:stats:chunks:{unix_minute}"

    def job_heartbeat(self, job_id: str) -> str:
        """A running job's heartbeat (value: worker id): set by its worker every ttl/3 with a TTL of
        SEMANTIK_JOB_HEARTBEAT_TTL_S, deleted when the run ends; the sweeper re-queues a running
        job whose heartbeat is missing."""
        return f"{self.namespace}:job-heartbeat:{job_id}"

    def orphan_suspect(self, job_id: str) -> str:
        """Set by the sweeper when a job first looks orphaned (value: Redis time, s); deleted when
        its heartbeat is seen again, and expires by itself."""
        return f"{self.namespace}:orphan-suspect:{job_id}"

    def watch_lease(self, source_id: int) -> str:
        """Which worker watches a source for file events (value: worker id): taken with SET NX by
        a worker, renewed every third of its TTL (15 s) while it watches, deleted when it stops;
        a dead worker's lease lapses and another worker takes the source over."""
        return f"{self.namespace}:watch:{source_id}"

    @property
    def gpu_keys(self) -> list[str]:
        """The GPU lease keys in the order the Lua scripts take them."""
        return [
            self.gpu_holders,
            self.gpu_holder_info,
            self.gpu_waiters,
            self.gpu_waiter_expiry,
            self.gpu_waiter_info,
            self.gpu_waiter_seq,
        ]
