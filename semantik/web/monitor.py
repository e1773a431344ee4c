"""What an operator watches: live workers, the queue, running jobs, failures, throughput.

Read-only: workers write their presence records and counters (``semantik.indexing.presence``);
this module reads them, with the database, for /api/monitor, /metrics and `semantik workers`.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from semantik.domain import TERMINAL_STATES, FileStatus, JobStatus
from semantik.gpu.leases import gpu_leases
from semantik.redis_names import RedisNames
from semantik.runtime import Runtime

log = structlog.get_logger(__name__)

THROUGHPUT_MINUTES = 5
RECENT_FAILURES = 10
RUNNING_FIELDS = ("id", "collection", "worker_id", "current_file", "files_total", "files_done", "files_failed",
                  "files_skipped", "chunks", "started_at")  # fmt: skip


async def workers(redis: Redis, names: RedisNames) -> list[dict[str, Any]]:
    found = []
    async for key in redis.scan_iter(match=names.worker_pattern, count=500):
        record: dict[bytes, bytes] = await redis.hgetall(key)  # type: ignore[misc]
        if record:
            # Whatever can write to Redis writes these: text as text, numbers as numbers, or 0.
            info: dict[str, Any] = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in record.items()}
            for field in ("pid", "jobs_done", "jobs_failed"):
                value = str(info.get(field) or "0")
                info[field] = int(value) if value.isascii() and value.isdigit() else 0
            info["current_job"] = info.get("current_job") or None
            found.append(info)
    return sorted(found, key=lambda w: str(w["worker_id"]))


async def queue_state(redis: Redis, queue_name: str) -> dict[str, Any]:
    depth = await redis.zcard(queue_name)
    oldest = await redis.zrange(queue_name, 0, 0, withscores=True)
    age_s = max(0.0, time.time() - oldest[0][1] / 1000) if oldest else None
    return {"name": queue_name, "depth": int(depth), "oldest_age_s": round(age_s, 1) if age_s is not None else None}


async def throughput(redis: Redis, names: RedisNames) -> dict[str, Any]:
    minute = int(time.time() // 60)
    keys = [names.chunks_minute(minute - i) for i in range(THROUGHPUT_MINUTES)]
    counts = [int(v or 0) for v in await redis.mget(keys)]
    total, seconds = await redis.mget([names.chunks_total, names.embed_seconds])
    return {
        "chunks_per_minute": counts,  # newest first; the first minute is still running
        "chunks_last_5_min": sum(counts),
        "chunks_total": int(total or 0),
        "embed_seconds_total": round(float(seconds or 0), 3),
    }


async def recent_failures(rt: Runtime) -> list[dict[str, Any]]:
    rows = await rt.db.fetchall(
        "SELECT f.path, f.error, f.updated_at, f.job_id FROM files f WHERE f.status = ?"
        " ORDER BY f.updated_at DESC LIMIT ?",
        (FileStatus.FAILED, RECENT_FAILURES),
    )
    failed_files = [dict(row) for row in rows]
    jobs = await rt.jobs.list_jobs(status=JobStatus.FAILED, limit=RECENT_FAILURES)
    failed_jobs = [
        {"id": j.id, "collection": j.collection, "error": j.error, "finished_at": j.finished_at} for j in jobs
    ]
    return [{"kind": "job", **job} for job in failed_jobs] + [{"kind": "file", **f} for f in failed_files]


async def snapshot(rt: Runtime, redis: Redis) -> dict[str, Any]:
    """Everything /api/monitor and `semantik workers` show. Redis parts say so when Redis is away."""
    running = await rt.jobs.list_jobs(status=JobStatus.RUNNING, limit=1000)
    by_status = {row[0]: row[1] for row in await rt.db.fetchall("SELECT status, COUNT(*) FROM jobs GROUP BY status")}
    statuses = sorted({JobStatus.QUEUED, JobStatus.RUNNING, *TERMINAL_STATES})
    result: dict[str, Any] = {
        "jobs_by_status": {status: int(by_status.get(status, 0)) for status in statuses},
        "running_jobs": [{k: getattr(j, k) for k in RUNNING_FIELDS} for j in running],
        "recent_failures": await recent_failures(rt),
    }
    try:
        names = rt.settings.redis_names
        result["workers"] = await workers(redis, names)
        result["queue"] = await queue_state(redis, names.queue)
        result["throughput"] = await throughput(redis, names)
        result["gpus"] = await gpu_status(redis, rt)
        result["redis"] = "ok"
    except (RedisError, OSError) as exc:
        result.update(workers=None, queue=None, throughput=None, redis=f"unavailable: {exc}")
    return result


async def gpu_status(redis: Redis, rt: Runtime) -> dict[str, Any]:
    """Each GPU slot (free or held: by which worker and job, since, until) and the waiters."""
    leases = gpu_leases(redis, rt.settings)
    if leases is None:
        return {"configured": False, "slots": [], "waiters": []}
    return {"configured": True, **await leases.status()}
