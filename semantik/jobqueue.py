"""The arq queue as the server sees it: a Redis connection that enqueues by function name."""

from __future__ import annotations

import contextlib

from arq.connections import ArqRedis, RedisSettings
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from semantik.errors import Unavailable
from semantik.redis_names import EMBED_JOB_FUNCTION
from semantik.settings import Settings

REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 10.0
# Ride out a Redis restart: each command retries with backoff (0.05 s doubling to 2 s) ~40 times.
REDIS_RETRIES = 40


def redis_retry() -> Retry:
    return Retry(ExponentialBackoff(cap=2.0, base=0.05), REDIS_RETRIES)


REDIS_RETRY_ON = [RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError]


def redis_settings(settings: Settings) -> RedisSettings:
    rs = RedisSettings.from_dsn(settings.effective_redis_url)
    rs.conn_timeout = int(REDIS_CONNECT_TIMEOUT_S)
    rs.conn_retries = 30
    rs.retry, rs.retry_on_error = redis_retry(), list(REDIS_RETRY_ON)
    return rs


def make_queue(settings: Settings, *, retry: bool = False) -> ArqRedis:
    """An arq client that connects lazily: the server starts, and serves reads, while Redis is down.
    Requests fail fast (503) by default; ``retry`` rides out a Redis restart instead (workers, sweeper)."""
    pool = ConnectionPool.from_url(
        settings.effective_redis_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=30,
        **({"retry": redis_retry(), "retry_on_error": list(REDIS_RETRY_ON)} if retry else {}),
    )
    return ArqRedis(pool, default_queue_name=settings.redis_names.queue)


async def enqueue_embed_job(queue: ArqRedis, job_id: str, arq_job_id: str | None = None) -> None:
    """Queue ``embed_job(job_id)``; the first run's arq id is the job's own id, so they cannot disagree."""
    try:
        await queue.enqueue_job(EMBED_JOB_FUNCTION, job_id, _job_id=arq_job_id or job_id)
    except (RedisError, OSError) as exc:
        raise queue_unavailable(queue, exc) from exc


def queue_unavailable(queue: ArqRedis, exc: BaseException) -> Unavailable:
    """The 503 a request gets when the job queue cannot be reached."""
    where = queue.connection_pool.connection_kwargs.get("host", "?")
    return Unavailable(f"the job queue (Redis at {where}) is unavailable: {exc}", code="queue_unavailable")


async def abort_arq_job(queue: ArqRedis, arq_job_id: str) -> None:
    """Ask the worker running it to cancel the task now (workers run with ``allow_abort_jobs``)."""
    with contextlib.suppress(RedisError, OSError):
        await queue.zadd(abort_jobs_ss, {arq_job_id: timestamp_ms()})


async def forget_arq_job(queue: ArqRedis, arq_job_id: str) -> None:
    """Drop arq's records of a run: its queue entry, its in-progress lock (which would otherwise block
    the id until the job timeout), its definition, retry counter and result."""
    async with queue.pipeline(transaction=True) as pipe:
        pipe.zrem(queue.default_queue_name, arq_job_id)
        pipe.delete(
            in_progress_key_prefix + arq_job_id,
            job_key_prefix + arq_job_id,
            retry_key_prefix + arq_job_id,
            result_key_prefix + arq_job_id,
        )
        await pipe.execute()
