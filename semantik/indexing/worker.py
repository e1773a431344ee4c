"""arq worker functions and settings. ``workers/main.py`` exposes them to the plain arq CLI."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import structlog
from arq import cron
from arq.worker import Worker, func

from semantik.indexing import cron as cron_jobs
from semantik.indexing.presence import WorkerPresence
from semantik.indexing.runner import run_embed_job, worker_identity
from semantik.indexing.sandbox import extraction_pool
from semantik.indexing.watch import Watchers
from semantik.jobqueue import redis_settings
from semantik.logs import configure_logging
from semantik.redis_names import EMBED_JOB_FUNCTION, PING_FUNCTION
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.sync import queue_due_syncs

log = structlog.get_logger(__name__)

# ctx keys: the typed dependencies object, and whether this worker built (and must close) it.
RUNTIME_KEY = "runtime"
OWNS_RUNTIME_KEY = "owns_runtime"
PRESENCE_KEY = "presence"
WATCHERS_KEY = "watchers"


async def startup(ctx: dict[str, Any]) -> None:
    if RUNTIME_KEY not in ctx:  # launched by the arq CLI: build our own runtime
        settings = Settings()
        configure_logging(settings)
        runtime = Runtime(settings)
        await runtime.open()
        ctx[RUNTIME_KEY], ctx[OWNS_RUNTIME_KEY] = runtime, True
    runtime = ctx[RUNTIME_KEY]
    ctx["worker_id"] = worker_identity()
    embedder = await runtime.embedder()  # load the model now, not inside the first job
    # ... and start what the first job would wait for: the extraction processes, and the vector
    # engine where this process shares it with its server (``semantik up``) or talks to a Qdrant
    # server. A worker of its own (the arq CLI) opens an embedded store only on its first job: only
    # one process at a time may hold it, and a server beside it may be holding it for searches.
    starting = [extraction_pool(runtime).prestart()]
    if not ctx.get(OWNS_RUNTIME_KEY) or not runtime.vectors.embedded:
        starting.append(_start_vectors(runtime))
    await asyncio.gather(*starting)
    names = runtime.settings.redis_names
    ctx[PRESENCE_KEY] = WorkerPresence(ctx["redis"], names, ctx["worker_id"], embedder.label)
    await ctx[PRESENCE_KEY].start()
    ctx[WATCHERS_KEY] = Watchers(runtime, ctx["redis"], ctx["worker_id"])
    await ctx[WATCHERS_KEY].start()
    log.info("worker_started", worker_id=ctx["worker_id"], device=embedder.device, backend=embedder.spec.name)


async def _start_vectors(runtime: Runtime) -> None:
    try:
        await runtime.vectors.start()
    except Exception as exc:  # the first job that needs it tries again, and fails with the reason
        log.warning("vector_store_not_started", error=str(exc))


async def shutdown(ctx: dict[str, Any]) -> None:
    if WATCHERS_KEY in ctx:
        await ctx[WATCHERS_KEY].stop()
    if PRESENCE_KEY in ctx:
        await ctx[PRESENCE_KEY].stop()
    if ctx.get(OWNS_RUNTIME_KEY):
        await ctx[RUNTIME_KEY].close()
    log.info("worker_stopped", worker_id=ctx.get("worker_id"))


async def embed_job(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    presence: WorkerPresence = ctx[PRESENCE_KEY]
    await presence.job_started(job_id)
    state = None
    try:
        with structlog.contextvars.bound_contextvars(job_id=job_id, worker_id=ctx["worker_id"]):
            state = await run_embed_job(
                ctx[RUNTIME_KEY],
                job_id,
                worker_id=ctx["worker_id"],
                redis=ctx["redis"],
                arq_job_id=ctx.get("job_id"),
                job_try=int(ctx.get("job_try", 1)),
            )
    finally:
        await presence.job_ended(job_id, ok=state is not None and state["status"] != "failed")
    return {"job_id": job_id, "status": state["status"] if state else "not_runnable"}


async def sweep_orphans(ctx: dict[str, Any]) -> list[str]:
    return await cron_jobs.sweep_orphans(ctx[RUNTIME_KEY], ctx["redis"])


async def cleanup_jobs(ctx: dict[str, Any]) -> list[str]:
    return await cron_jobs.cleanup_finished_jobs(ctx[RUNTIME_KEY], ctx["redis"])


async def scheduled_syncs(ctx: dict[str, Any]) -> list[str]:
    return await queue_due_syncs(ctx[RUNTIME_KEY], ctx["redis"])


async def ping(ctx: dict[str, Any]) -> dict[str, Any]:
    runtime: Runtime = ctx[RUNTIME_KEY]
    embedder = await runtime.embedder()
    return {
        "worker_id": ctx["worker_id"],
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": embedder.label,
    }


def worker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker``, shared by the arq CLI and ``semantik up``."""
    names = settings.redis_names
    return {
        "functions": [func(embed_job, name=EMBED_JOB_FUNCTION), func(ping, name=PING_FUNCTION)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "queue_name": names.queue,
        "redis_settings": redis_settings(settings),
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.job_timeout_s,
        "poll_delay": settings.worker_poll_delay_s,
        "keep_result": 3600,
        "max_tries": settings.job_max_tries,
        "allow_abort_jobs": True,  # POST /api/jobs/{id}/cancel interrupts a running job at once
        "health_check_interval": 30,  # `arq --check` sees a dead worker within a minute
        "cron_jobs": [
            # Every 10 s; unique, so one worker runs each tick however many there are.
            cron(
                sweep_orphans,
                name=names.cron_sweep_orphans,
                second=set(range(0, 60, cron_jobs.SWEEP_INTERVAL_S)),
                run_at_startup=True,
                unique=True,
                timeout=60,
            ),
            # Every 10 s: queue a sync of each collection whose SEMANTIK sync interval has passed.
            cron(
                scheduled_syncs,
                name=names.cron_scheduled_syncs,
                second=set(range(5, 60, cron_jobs.SWEEP_INTERVAL_S)),
                run_at_startup=True,
                unique=True,
                timeout=60,
            ),
            cron(
                cleanup_jobs,
                name=names.cron_cleanup_jobs,
                hour={3},
                minute={17},
                second={0},
                unique=True,
                timeout=600,
            ),
        ],
    }


def in_process_worker(settings: Settings, runtime: Runtime, **options: Any) -> Worker:
    """An arq worker sharing ``runtime`` with its caller (``semantik up``, tests, benchmarks);
    the caller owns the runtime and handles signals. ``options`` go to ``Worker`` (e.g. ``burst``)."""
    return Worker(**worker_options(settings), ctx={RUNTIME_KEY: runtime}, handle_signals=False, **options)
