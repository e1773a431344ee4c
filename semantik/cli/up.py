"""`semantik up`: Redis (if none is configured), server and an arq worker in one process.

qdrant-client's embedded mode allows one process per storage path, so the server and the worker
share one Runtime here: one embedded Qdrant, one model, one SQLite writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click
import structlog
from aiohttp import web
from arq.worker import Worker

from semantik.cli.redis_server import RedisServer
from semantik.domain import JobStatus
from semantik.indexing.worker import in_process_worker
from semantik.jobqueue import enqueue_embed_job, make_queue
from semantik.logs import AccessLogger, configure_logging
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.app import create_app

log = structlog.get_logger(__name__)


async def requeue_unfinished(runtime: Runtime, settings: Settings) -> int:
    """Queue again every job the database says is queued: the private Redis keeps nothing across
    restarts. Jobs left ``running`` by a previous process are the sweeper's (no heartbeat)."""
    queue = make_queue(settings)
    count = 0
    try:
        for job in await runtime.jobs.list_jobs(status=JobStatus.QUEUED, limit=100_000):
            await enqueue_embed_job(queue, job.id, await runtime.lifecycle.arq_job_id(job.id))
            count += 1
    finally:
        await queue.aclose(close_connection_pool=True)
    return count


async def run_embedded(settings: Settings) -> None:
    configure_logging(settings)
    redis_server: RedisServer | None = None
    if settings.redis_url is None:
        redis_server = RedisServer(settings.data_dir / "redis")
        await asyncio.to_thread(redis_server.start)
        settings = settings.model_copy(update={"redis_url": redis_server.url})
        log.info("redis_started", port=redis_server.port, directory=str(redis_server.directory))  # no password
    runtime = Runtime(settings)
    await runtime.open()
    runner = web.AppRunner(create_app(settings, runtime=runtime), access_log_class=AccessLogger)
    worker: Worker | None = None
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        worker = in_process_worker(settings, runtime)
        worker_task = asyncio.create_task(worker.async_run())
        requeued = await requeue_unfinished(runtime, settings)
        if requeued:
            log.info("jobs_requeued", count=requeued)
        click.echo(
            f"Semantik is running on http://{settings.host}:{settings.port}  (data: {settings.data_dir}; Ctrl-C stops)",
            err=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({worker_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if worker_task.done() and worker_task.exception() is not None:
            raise worker_task.exception()  # type: ignore[misc]
    finally:
        log.info("shutting_down")
        if worker is not None:
            with contextlib.suppress(Exception):
                await worker.close()
        await runner.cleanup()
        await runtime.close()
        if redis_server is not None:
            await asyncio.to_thread(redis_server.stop)
