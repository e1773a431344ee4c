"""Queueing jobs: an index job from the API, a collection's sync from the API, its schedule or a
watcher. One path for all: insert the row, enqueue it, announce it; a refusal leaves nothing behind.

Used by the web layer and by the workers (cron, watchers), so it sits between them and the runtime.
"""

from __future__ import annotations

import asyncio

import structlog
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from semantik.domain import EventType, Job, JobKind, age_s
from semantik.errors import Conflict
from semantik.events.publish import EventPublisher, envelope
from semantik.jobqueue import enqueue_embed_job, queue_unavailable
from semantik.runtime import Runtime
from semantik.store.jobs import job_state

log = structlog.get_logger(__name__)

# How a sync job names its folders (``directory``): the first few, then how many more.
FOLDERS_NAMED = 3


async def queue_reachable(queue: ArqRedis) -> None:
    """Refuse (503) before changing anything when the queue cannot take the job anyway."""
    try:
        await queue.ping()
    except (RedisError, OSError) as exc:
        raise queue_unavailable(queue, exc) from exc


async def queue_job(
    rt: Runtime,
    queue: ArqRedis,
    *,
    collection: str,
    directory: str,
    recursive: bool,
    include: list[str] | None,
    exclude: list[str] | None,
    name: str | None,
    kind: JobKind = JobKind.INDEX,
) -> Job:
    """Insert and enqueue a job. A refusal (503 when Redis is down, 409 for a sync while another
    job of the collection is queued or running) leaves nothing behind: no job row, and no
    collection created for it."""
    await queue_reachable(queue)
    job, new_collection = await rt.jobs.create_job(
        collection=collection,
        directory=directory,
        recursive=recursive,
        include=include,
        exclude=exclude,
        name=name,
        model=rt.model_name,
        dim=rt.model_dim,
        kind=kind,
    )
    try:
        await enqueue_embed_job(queue, job.id)
    except BaseException as exc:  # Redis went away since the ping, or the request was cancelled
        await asyncio.shield(rt.jobs.discard_job(job.id, drop_collection=new_collection))
        log.error("job_enqueue_failed", job_id=job.id, error=repr(exc))
        raise
    # Announced once queued: a worker that starts it at once publishes seq 2, which a listener
    # that already has the job's state simply skips if it comes first.
    publisher = EventPublisher(queue, rt.settings.redis_names)
    await publisher.publish(envelope(EventType.JOB_QUEUED, job.id, job.seq, job_state(job)))
    log.info("job_queued", job_id=job.id, collection=job.collection, directory=job.directory, kind=job.kind)
    return job


async def queue_sync(rt: Runtime, queue: ArqRedis, collection: str, *, reason: str = "sync") -> Job:
    """A job that makes the collection mirror every one of its sources. 404 for an unknown
    collection, 409 when it has no source or another of its jobs is queued or running (the error's
    ``details.job_id`` names that job)."""
    await rt.jobs.get_collection(collection)
    sources = await rt.sources.of_collection(collection)
    if not sources:
        raise Conflict(
            f"collection {collection!r} has no folder to sync: index one into it (POST /api/jobs)"
            f" or add one (POST /api/collections/{collection}/sources)",
            code="no_sources",
        )
    active = await rt.jobs.active_job(collection)
    if active is not None:
        raise _busy(collection, active)
    folders = [source.directory for source in sources]
    shown = ", ".join(folders[:FOLDERS_NAMED])
    if len(folders) > FOLDERS_NAMED:
        shown += f" and {len(folders) - FOLDERS_NAMED} more"
    try:
        return await queue_job(
            rt,
            queue,
            collection=collection,
            directory=shown,
            recursive=True,
            include=None,
            exclude=None,
            name=reason,
            kind=JobKind.SYNC,
        )
    except Conflict as exc:
        if exc.code == "collection_busy" and isinstance(exc.details, dict):
            raise _busy(collection, str(exc.details.get("job_id"))) from exc
        raise


def _busy(collection: str, job_id: str) -> Conflict:
    return Conflict(
        f"job {job_id} of collection {collection!r} is queued or running; sync again once it ends",
        code="sync_running",
        details={"job_id": job_id},
    )


async def queue_due_syncs(rt: Runtime, queue: ArqRedis) -> list[str]:
    """Queue a sync of each collection whose interval (its own ``sync_interval_s``, else
    SEMANTIK_SYNC_INTERVAL_S) has passed since its newest job was created (arq cron, unique
    across workers). A collection that is busy waits for the next tick.
    Returns the job ids queued."""
    queued = []
    for collection, interval_s, last_started in await rt.jobs.sync_schedule(rt.settings.sync_interval_s):
        if age_s(last_started) < interval_s:
            continue
        try:
            job = await queue_sync(rt, queue, collection, reason="scheduled sync")
        except Conflict:
            continue  # busy, or no sources (yet)
        log.info("sync_scheduled", job_id=job.id, collection=collection, interval_s=interval_s)
        queued.append(job.id)
    return queued
