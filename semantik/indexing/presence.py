"""What workers write for operators to read: a presence record per live worker and embedding counters.

Workers keep a presence hash in Redis with a short TTL (arq's own health key is one per queue and
lives an hour), so a dead worker disappears within ``WORKER_TTL_S``. They also count what they
embed in per-minute buckets, so any server process can report throughput (``semantik.web.monitor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from semantik.domain import utcnow
from semantik.redis_names import RedisNames

log = structlog.get_logger(__name__)

WORKER_TTL_S = 15
WORKER_BEAT_S = 5
CHUNKS_MINUTE_TTL_S = 3600


class Stats:
    """Best-effort counters: a Redis outage costs the numbers, never the job."""

    def __init__(self, redis: Redis | None, names: RedisNames) -> None:
        self.redis, self.names = redis, names

    async def embedded(self, chunks: int, seconds: float) -> None:
        if self.redis is None:
            return
        minute_key = self.names.chunks_minute(int(time.time() // 60))
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incrby(minute_key, chunks)
                pipe.expire(minute_key, CHUNKS_MINUTE_TTL_S)
                pipe.incrby(self.names.chunks_total, chunks)
                pipe.incrbyfloat(self.names.embed_seconds, seconds)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("stats_failed", error=str(exc))


class WorkerPresence:
    def __init__(self, redis: Redis, names: RedisNames, worker_id: str, device: str) -> None:
        self.redis, self.key = redis, names.worker(worker_id)
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
