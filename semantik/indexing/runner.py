"""Running one job on a worker: start it, keep its heartbeat, and end it in exactly one state.

- Finished: ``completed`` / ``completed_with_errors`` (job_completed).
- Asked to stop (cooperative check between batches, or arq's abort): ``cancelled``, keeping what
  was indexed (job_cancelled).
- Transient trouble (Redis, Qdrant, timeouts): back to ``queued`` and arq retries it with backoff,
  up to ``SEMANTIK_JOB_MAX_TRIES`` runs; it resumes where it stopped.
- Worker shutting down: back to ``queued``; arq runs it again, here or on another worker.
- Anything else: ``failed`` with the reason (job_failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable
from typing import Any

import httpx
import structlog
from arq.connections import ArqRedis
from arq.worker import Retry
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from semantik.domain import EventType, JobState, JobStatus
from semantik.errors import Unavailable
from semantik.events.publish import EventPublisher, JobEvents
from semantik.gpu.leases import GpuUnavailable, acquire_device, gpu_leases, hold
from semantik.indexing.cron import SWEEP_INTERVAL_S, sweep_orphans
from semantik.indexing.pipeline import JobCancelled, JobError, JobSuperseded
from semantik.indexing.reconcile import index_job
from semantik.runtime import Runtime
from semantik.store.jobs import CollectionBusy

log = structlog.get_logger(__name__)

RETRY_BACKOFF_MAX_S = 60.0
# How often a job waiting for its collection (another of its jobs runs) looks again.
COLLECTION_WAIT_POLL_S = 0.5


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_transient(exc: BaseException) -> bool:
    """Errors worth another run later: a backing service was away, not a problem with the job."""
    if isinstance(exc, Unavailable | RedisError | ConnectionError | TimeoutError | httpx.TransportError):
        return True
    if isinstance(exc, ResponseHandlingException):
        return True
    return isinstance(exc, UnexpectedResponse) and (exc.status_code or 0) >= 500


class Heartbeat:
    """Renews the job's heartbeat key (``RedisNames.job_heartbeat``) every ttl/3 while the job runs. A lapse tells the
    sweeper the worker is gone. Redis trouble is logged, never fatal: the job goes on."""

    def __init__(self, redis: Redis | None, key: str, worker_id: str, ttl_s: float) -> None:
        self.redis, self.key, self.worker_id, self.ttl_s = redis, key, worker_id, ttl_s
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        assert self.redis is not None
        try:
            await self.redis.set(self.key, self.worker_id, px=int(self.ttl_s * 1000))
        except (RedisError, OSError) as exc:
            log.warning("heartbeat_failed", key=self.key, error=str(exc))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            await self._beat()

    async def start(self) -> None:
        if self.redis is not None:
            await self._beat()
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(self.key)


async def _finally(step: Awaitable[JobState | None]) -> JobState | None:
    """Run a closing step to the end even while our task is being cancelled."""
    future = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        return await future


async def run_embed_job(
    rt: Runtime,
    job_id: str,
    *,
    worker_id: str | None = None,
    redis: Redis | None = None,
    arq_job_id: str | None = None,
    job_try: int = 1,
) -> JobState | None:
    """Run (or resume) a job; returns its final state, or None when it should not run (any more).
    With GPUs configured it first takes a GPU lease (or falls back per SEMANTIK_GPU_FALLBACK)."""
    worker_id = worker_id or worker_identity()
    events = JobEvents(EventPublisher(redis, rt.settings.redis_names), job_id)
    while True:
        await _wait_for_collection(rt, job_id, redis)
        try:
            return await _lease_and_run(rt, job_id, events, worker_id, redis, arq_job_id, job_try)
        except CollectionBusy:
            continue  # another worker started a job of the collection first: wait for it


async def _wait_for_collection(rt: Runtime, job_id: str, redis: Redis | None) -> None:
    """Jobs of one collection run one at a time (each reconciles the collection's folders): wait,
    still queued, while another runs. Cancelling the waiting job ends the wait. The job waited for
    may be an orphan (its worker died): the wait runs the orphan sweeper itself now and then, as
    the cron job may have no free slot on this worker while we hold one."""
    waited_for = None
    next_sweep_s = asyncio.get_running_loop().time() + SWEEP_INTERVAL_S
    # Ends too when the job is not queued any more (cancelled meanwhile): start_job says so.
    while (other := await rt.jobs.running_beside(job_id)) is not None:
        if other != waited_for:
            log.info("job_waiting_for_collection", job_id=job_id, running_job_id=other)
            waited_for = other
        if isinstance(redis, ArqRedis) and asyncio.get_running_loop().time() >= next_sweep_s:
            next_sweep_s += SWEEP_INTERVAL_S
            try:
                await sweep_orphans(rt, redis)
            except (RedisError, OSError) as exc:  # the cron job sweeps too, once Redis is back
                log.warning("orphan_sweep_failed", job_id=job_id, error=str(exc))
        await asyncio.sleep(COLLECTION_WAIT_POLL_S)


async def _lease_and_run(
    rt: Runtime,
    job_id: str,
    events: JobEvents,
    worker_id: str,
    redis: Redis | None,
    arq_job_id: str | None,
    job_try: int,
) -> JobState | None:
    s = rt.settings
    leases = gpu_leases(redis, s) if redis is not None else None
    try:
        lease = await acquire_device(leases, worker_id, job_id, s.gpu_wait_s, s.gpu_fallback)
    except GpuUnavailable as exc:
        if (await rt.jobs.get_job(job_id)).status != JobStatus.QUEUED:
            return None
        return await events.emit(EventType.JOB_FAILED, rt.jobs.fail_job(job_id, str(exc)), error=str(exc))
    if leases is None or lease is None:
        return await _run(rt, job_id, events, worker_id, redis, arq_job_id, job_try, None)
    log.info("gpu_leased", job_id=job_id, slot=lease.slot, device=lease.device)
    async with hold(leases, lease) as lost:
        try:
            return await _run(rt, job_id, events, worker_id, redis, arq_job_id, job_try, (lease.device, lost))
        finally:
            with contextlib.suppress(Exception):
                (await rt.embedder(rt.device_for(lease.device))).release_memory()


async def _run(
    rt: Runtime,
    job_id: str,
    events: JobEvents,
    worker_id: str,
    redis: Redis | None,
    arq_job_id: str | None,
    job_try: int,
    gpu: tuple[int, asyncio.Event] | None,
) -> JobState | None:
    embedder = await rt.embedder(rt.device_for(gpu[0] if gpu else None))
    device = embedder.label

    async def should_stop() -> bool:
        if gpu is not None and gpu[1].is_set():
            # The lease could not be renewed: the slot may be someone else's now. Stop using the
            # GPU; the job goes back to the queue and resumes where it stopped.
            raise Unavailable("lost the GPU lease (renewal refused or Redis unreachable)", code="gpu_lease_lost")
        if attempts and not await rt.jobs.is_current(job_id, attempts[0]):
            raise JobSuperseded()
        return await rt.lifecycle.cancel_requested(job_id)

    attempts: list[int] = []  # this run's attempt number: every closing write is for this run only

    async def starting() -> JobState | None:
        state = await rt.jobs.start_job(job_id, worker_id=worker_id, device=device, arq_job_id=arq_job_id)
        if state is not None:
            attempts.append(state.pop("attempts"))
        return state

    if await events.emit(EventType.JOB_STARTED, starting(), worker_id=worker_id, device=device) is None:
        log.info("job_not_runnable", job_id=job_id, arq_job_id=arq_job_id)
        return None
    attempt = attempts[0]
    job = await rt.jobs.get_job(job_id)
    bound = log.bind(job_id=job_id, collection=job.collection)
    bound.info("job_started", directory=job.directory, device=device, attempt=attempt, job_try=job_try)
    heartbeat_key = rt.settings.redis_names.job_heartbeat(job_id)
    heartbeat = Heartbeat(redis, heartbeat_key, worker_id, rt.settings.job_heartbeat_ttl_s)
    await heartbeat.start()
    try:
        await index_job(rt, job, embedder, events, should_stop)
    except JobSuperseded:
        bound.warning("job_run_superseded", attempt=attempt, detail="a newer run of this job took over; stopped")
        return None
    except JobCancelled:
        bound.info("job_cancelled")
        return await _closing(events, EventType.JOB_CANCELLED, rt.lifecycle.acknowledge_cancel(job_id, attempt=attempt))
    except asyncio.CancelledError:
        await _finally(_interrupted(rt, events, job_id, attempt))
        raise
    except JobError as exc:
        bound.warning("job_failed", error=str(exc))
        failing = rt.jobs.fail_job(job_id, str(exc), attempt=attempt)
        return await _closing(events, EventType.JOB_FAILED, failing, error=str(exc))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if is_transient(exc) and job_try < rt.settings.job_max_tries:
            defer_s = min(2.0**job_try, RETRY_BACKOFF_MAX_S)
            bound.warning("job_retrying", error=error, defer_s=defer_s, job_try=job_try)
            reason = f"retrying in {defer_s:.0f} s after: {error}"
            requeue = rt.lifecycle.requeue(
                job_id, reason=reason, new_run=False, from_status=JobStatus.RUNNING, attempt=attempt
            )
            if await _closing(events, EventType.JOB_QUEUED, requeue, error=reason) is None:
                return None  # superseded: the current run is someone else's
            raise Retry(defer=defer_s) from exc
        bound.exception("job_failed")
        await _closing(events, EventType.JOB_FAILED, rt.jobs.fail_job(job_id, error, attempt=attempt), error=error)
        raise
    finally:
        await heartbeat.stop()
    done = await _closing(events, EventType.JOB_COMPLETED, rt.jobs.finish_job(job_id, attempt=attempt))
    if done is None:
        return None
    bound.info(
        "job_finished",
        status=done["status"],
        files_done=done["files_done"],
        files_failed=done["files_failed"],
        files_skipped=done["files_skipped"],
        chunks=done["chunks"],
    )
    return done


async def _closing(
    events: JobEvents, event_type: EventType, change: Awaitable[JobState | None], **extra: Any
) -> JobState | None:
    """Announce a run's closing change; None, with a log line, when the run was superseded: swept
    (its heartbeat lapsed) and re-queued as a newer attempt that owns the job's state now."""
    state = await events.emit(event_type, change, **extra)
    if state is None:
        log.warning("job_run_superseded", job_id=events.job_id, would_have_sent=str(event_type))
    return state


async def _interrupted(rt: Runtime, events: JobEvents, job_id: str, attempt: int) -> JobState | None:
    """Our task was cancelled: by arq's abort (the user cancelled) or by worker shutdown."""
    if await rt.lifecycle.cancel_requested(job_id):
        log.info("job_cancelled", job_id=job_id)
        return await _closing(events, EventType.JOB_CANCELLED, rt.lifecycle.acknowledge_cancel(job_id, attempt=attempt))
    log.info("job_interrupted", job_id=job_id, detail="worker stopping; the job goes back to the queue")
    reason = "worker stopped; resuming on the next free worker"
    change = rt.lifecycle.requeue(job_id, reason=reason, new_run=False, from_status=JobStatus.RUNNING, attempt=attempt)
    return await _closing(events, EventType.JOB_QUEUED, change, error=reason)
