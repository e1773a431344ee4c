"""What an operator watches: live workers, the queue, running jobs, failures, throughput.

Workers keep a presence record in Redis with a short TTL (arq's own health key is one per queue and
lives an hour), so a dead worker disappears within ``WORKER_TTL_S``. Workers also count what they
embed in per-minute buckets, so any server process can report throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from semantik import constants as c
from semantik.gpu import gpu_leases
from semantik.jobs import utcnow
from semantik.runtime import Runtime

log = structlog.get_logger(__name__)

# Hash per live worker (host, pid, device, current job, counters), expiring WORKER_TTL_S after its last beat.
WORKER_KEY = "semantik:worker:{worker_id}"
WORKER_KEY_PATTERN = "semantik:worker:*"
# Chunks embedded during one minute (key suffix: unix minute), kept an hour.
CHUNKS_MINUTE_KEY = "semantik:stats:chunks:{minute}"
# Totals since the counters began: chunks embedded and seconds spent in encode.
CHUNKS_TOTAL_KEY = "semantik:stats:chunks_total"
EMBED_SECONDS_KEY = "semantik:stats:embed_seconds"
WORKER_TTL_S = 15
WORKER_BEAT_S = 5
THROUGHPUT_MINUTES = 5
RECENT_FAILURES = 10
RUNNING_FIELDS = ("id", "collection", "worker_id", "current_file", "files_total", "files_done", "files_failed",
                  "files_skipped", "chunks", "started_at")  # fmt: skip


class Stats:
    """Best-effort counters: a Redis outage costs the numbers, never the job."""

    def __init__(self, redis: Redis | None) -> None:
        self.redis = redis

    async def embedded(self, chunks: int, seconds: float) -> None:
        if self.redis is None:
            return
        minute_key = CHUNKS_MINUTE_KEY.format(minute=int(time.time() // 60))
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incrby(minute_key, chunks)
                pipe.expire(minute_key, 3600)
                pipe.incrby(CHUNKS_TOTAL_KEY, chunks)
                pipe.incrbyfloat(EMBED_SECONDS_KEY, seconds)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("stats_failed", error=str(exc))


class WorkerPresence:
    def __init__(self, redis: Redis, worker_id: str, device: str) -> None:
        self.redis, self.key = redis, WORKER_KEY.format(worker_id=worker_id)
        self.info: dict[str, Any] = {
            "worker_id": worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": device,
            "current_job": "",
            "jobs_done": 0,
            "jobs_failed": 0,
            "started_at": utcnow(),
        }
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.key, mapping={k: str(v) for k, v in self.info.items()})
                pipe.expire(self.key, WORKER_TTL_S)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("worker_heartbeat_failed", error=str(exc))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(WORKER_BEAT_S)
            await self.beat()

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._loop())

    async def job_started(self, job_id: str) -> None:
        self.info["current_job"] = job_id
        await self.beat()

    async def job_ended(self, job_id: str, ok: bool) -> None:
        self.info["current_job"] = ""
        self.info["jobs_done" if ok else "jobs_failed"] += 1
        await self.beat()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self.key)


async def workers(redis: Redis) -> list[dict[str, Any]]:
    found = []
    async for key in redis.scan_iter(match=WORKER_KEY_PATTERN, count=500):
        record: dict[bytes, bytes] = await redis.hgetall(key)  # type: ignore[misc]
        if record:
            info: dict[str, Any] = {k.decode(): v.decode() for k, v in record.items()}
            for field in ("pid", "jobs_done", "jobs_failed"):
                info[field] = int(info.get(field) or 0)
            info["current_job"] = info.get("current_job") or None
            found.append(info)
    return sorted(found, key=lambda w: str(w["worker_id"]))


async def queue_state(redis: Redis, queue_name: str) -> dict[str, Any]:
    depth = await redis.zcard(queue_name)
    oldest = await redis.zrange(queue_name, 0, 0, withscores=True)
    age_s = max(0.0, time.time() - oldest[0][1] / 1000) if oldest else None
    return {"name": queue_name, "depth": int(depth), "oldest_age_s": round(age_s, 1) if age_s is not None else None}


async def throughput(redis: Redis) -> dict[str, Any]:
    minute = int(time.time() // 60)
    keys = [CHUNKS_MINUTE_KEY.format(minute=minute - i) for i in range(THROUGHPUT_MINUTES)]
    counts = [int(v or 0) for v in await redis.mget(keys)]
    total, seconds = await redis.mget([CHUNKS_TOTAL_KEY, EMBED_SECONDS_KEY])
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
        (c.FILE_FAILED, RECENT_FAILURES),
    )
    failed_files = [dict(row) for row in rows]
    jobs = await rt.jobs.list_jobs(status=c.FAILED, limit=RECENT_FAILURES)
    failed_jobs = [
        {"id": j.id, "collection": j.collection, "error": j.error, "finished_at": j.finished_at} for j in jobs
    ]
    return [{"kind": "job", **job} for job in failed_jobs] + [{"kind": "file", **f} for f in failed_files]


async def snapshot(rt: Runtime, redis: Redis) -> dict[str, Any]:
    """Everything /api/monitor and `semantik workers` show. Redis parts say so when Redis is away."""
    running = await rt.jobs.list_jobs(status=c.RUNNING, limit=1000)
    by_status = {row[0]: row[1] for row in await rt.db.fetchall("SELECT status, COUNT(*) FROM jobs GROUP BY status")}
    statuses = sorted({c.QUEUED, c.RUNNING, *c.TERMINAL_STATES})
    result: dict[str, Any] = {
        "jobs_by_status": {status: int(by_status.get(status, 0)) for status in statuses},
        "running_jobs": [{k: getattr(j, k) for k in RUNNING_FIELDS} for j in running],
        "recent_failures": await recent_failures(rt),
    }
    try:
        result["workers"] = await workers(redis)
        result["queue"] = await queue_state(redis, rt.settings.queue_name)
        result["throughput"] = await throughput(redis)
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


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)
