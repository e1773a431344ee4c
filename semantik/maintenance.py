"""arq cron jobs (unique across workers): the orphan sweeper and the daily retention cleanup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from arq.connections import ArqRedis
from arq.constants import result_key_prefix

from semantik import constants as c
from semantik.events import EventPublisher, JobEvents
from semantik.jobs import utcnow
from semantik.queue import enqueue_embed_job, forget_arq_job
from semantik.runner import heartbeat_key
from semantik.runtime import Runtime

log = structlog.get_logger(__name__)

ORPHAN_REASON = "its worker stopped answering (no heartbeat); resumed on another worker"


def _age_s(iso: str | None) -> float:
    if not iso:
        return float("inf")
    return (datetime.now(UTC) - datetime.fromisoformat(iso.replace("Z", "+00:00"))).total_seconds()


async def sweep_orphans(rt: Runtime, redis: ArqRedis) -> list[str]:
    """Re-queue running jobs whose worker is gone: their heartbeat key has lapsed. The dead run's arq
    records go too, so the job does not wait for arq's in-progress lock (the job timeout) to expire.
    Returns the ids re-queued."""
    requeued: list[str] = []
    ttl_s = rt.settings.job_heartbeat_ttl_s
    for job in await rt.lifecycle.running_jobs():
        if _age_s(job.started_at) < ttl_s or await redis.exists(heartbeat_key(job.id)):
            continue  # just started (first beat may be on its way), or alive
        events = JobEvents(EventPublisher(redis), job.id)
        change = rt.lifecycle.requeue(job.id, reason=ORPHAN_REASON, new_run=True, from_status=c.RUNNING)
        state = await events.emit(c.JOB_QUEUED, change, error=ORPHAN_REASON)
        if state is None:
            continue  # it finished or moved meanwhile
        if job.arq_job_id:
            await forget_arq_job(redis, job.arq_job_id)
        new_arq_id = await rt.lifecycle.arq_job_id(job.id)
        await enqueue_embed_job(redis, job.id, new_arq_id)
        log.warning("job_orphan_requeued", job_id=job.id, dead_worker=job.worker_id, arq_job_id=new_arq_id)
        requeued.append(job.id)
    return requeued


async def cleanup_finished_jobs(rt: Runtime, redis: ArqRedis, now: datetime | None = None) -> list[str]:
    """Remove jobs that ended more than SEMANTIK_JOB_RETENTION_DAYS ago: their rows and file lists,
    and arq's results. What they indexed stays searchable. Returns the ids removed."""
    now = now or datetime.now(UTC)
    cutoff = (now - timedelta(days=rt.settings.job_retention_days)).isoformat(timespec="milliseconds")
    cutoff = cutoff.replace("+00:00", "Z")
    removed = await rt.lifecycle.delete_finished_before(cutoff)
    arq_ids = [arq_id for _, arq_id in removed if arq_id]
    if arq_ids:
        await redis.delete(*(result_key_prefix + arq_id for arq_id in arq_ids))
    log.info(
        "jobs_cleaned_up",
        removed=len(removed),
        job_ids=[job_id for job_id, _ in removed][:100],
        cutoff=cutoff,
        retention_days=rt.settings.job_retention_days,
        at=utcnow(),
    )
    return [job_id for job_id, _ in removed]
