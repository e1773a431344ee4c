"""The arq queue as the server sees it: a Redis connection that enqueues by function name."""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from semantik.constants import EMBED_JOB_FUNCTION
from semantik.errors import Unavailable
from semantik.settings import Settings

REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 10.0


def redis_settings(settings: Settings) -> RedisSettings:
    rs = RedisSettings.from_dsn(settings.effective_redis_url)
    rs.conn_timeout = int(REDIS_CONNECT_TIMEOUT_S)
    return rs


def make_queue(settings: Settings) -> ArqRedis:
    """An arq client that connects lazily: the server starts, and serves reads, while Redis is down."""
    pool = ConnectionPool.from_url(
        settings.effective_redis_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )
    return ArqRedis(pool, default_queue_name=settings.queue_name)


async def enqueue_embed_job(queue: ArqRedis, job_id: str) -> None:
    """Queue ``embed_job(job_id)`` under the job's own id, so the two can never disagree."""
    try:
        await queue.enqueue_job(EMBED_JOB_FUNCTION, job_id, _job_id=job_id)
    except (RedisError, OSError) as exc:
        where = queue.connection_pool.connection_kwargs.get("host", "?")
        raise Unavailable(
            f"the job queue (Redis at {where}) is unavailable: {exc}",
            code="queue_unavailable",
        ) from exc
