"""arq cron jobs (unique across workers): the orphan sweeper and the daily retention cleanup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, result_key_prefix

from semantik.domain import EventType, JobStatus, age_s, utcnow
from semantik.events.publish import EventPublisher, JobEvents
from semantik.jobqueue import enqueue_embed_job, forget_arq_job
from semantik.runtime import Runtime
from semantik.store.lifecycle import JobRun

log = structlog.get_logger(__name__)

# The sweeper runs every this many seconds (arq cron, unique across workers).
SWEEP_INTERVAL_S = 10
ORPHAN_REASON = "its worker stopped answering (no heartbeat); resumed on another worker"


async def _suspect_long_enough(redis: ArqRedis, key: str, grace_s: float) -> bool:
    """True once ``job_id`` has looked orphaned for ``grace_s``. A single missing heartbeat is not
    enough: right after a Redis restart every key is gone until the next beat (ttl/3 away)."""
    now_s = (await redis.time())[0]
    # The mark must outlive the gap between two sweeps, or a short grace never adds up.
    await redis.set(key, now_s, nx=True, ex=int(max(grace_s * 4, SWEEP_INTERVAL_S * 3)) + 1)
    first_seen = await redis.get(key)
    return first_seen is not None and now_s - int(first_seen) >= grace_s


async def sweep_orphans(rt: Runtime, redis: ArqRedis) -> list[str]:
    """Re-queue jobs that would otherwise never finish:

    - ``running`` jobs whose worker is gone (heartbeat lapsed for a heartbeat TTL): a new run with a
      new arq id; the dead run's arq records go, so nothing waits for arq's in-progress lock (which
      lasts the job timeout);
    - ``queued`` jobs that Redis lost (restarted without persistence): queued again as they were.

    Returns the ids re-queued."""
    requeued: list[str] = []
    grace_s = rt.settings.job_heartbeat_ttl_s
    names = rt.settings.redis_names
    for job in await rt.lifecycle.running_jobs():
        if age_s(job.started_at) < grace_s or await redis.exists(names.job_heartbeat(job.id)):
            await redis.delete(names.orphan_suspect(job.id))
            continue  # just started (first beat may be on its way), or alive
        if not await _suspect_long_enough(redis, names.orphan_suspect(job.id), grace_s):
            continue
        events = JobEvents(EventPublisher(redis, names), job.id)
        if job.attempts >= rt.settings.job_max_attempts:
            await _give_up(rt, events, job, redis)
            continue
        change = rt.lifecycle.requeue(job.id, reason=ORPHAN_REASON, new_run=True, from_status=JobStatus.RUNNING)
        if await events.emit(EventType.JOB_QUEUED, change, error=ORPHAN_REASON) is None:
            continue  # it finished or moved meanwhile
        if job.arq_job_id:
            await forget_arq_job(redis, job.arq_job_id)
        new_arq_id = await rt.lifecycle.arq_job_id(job.id)
        await enqueue_embed_job(redis, job.id, new_arq_id)
        log.warning("job_orphan_requeued", job_id=job.id, dead_worker=job.worker_id, arq_job_id=new_arq_id)
        requeued.append(job.id)
    for queued in await rt.lifecycle.queued_jobs():
        arq_id = queued.arq_job_id or queued.id
        known = await redis.zscore(redis.default_queue_name, arq_id) is not None
        if known or await redis.exists(in_progress_key_prefix + arq_id):
            continue
        if age_s(queued.created_at) < grace_s or not await _suspect_long_enough(
            redis, names.orphan_suspect(queued.id), grace_s
        ):
            continue
        await enqueue_embed_job(redis, queued.id, arq_id)
        log.warning("job_lost_requeued", job_id=queued.id, arq_job_id=arq_id)
        requeued.append(queued.id)
    return requeued


async def _give_up(rt: Runtime, events: JobEvents, job: JobRun, redis: ArqRedis) -> None:
    """The job's workers died under it ``attempts`` times: a file that kills workers must not cause a
    crash loop. The job fails, naming the file it was processing."""
    where = f"while processing {job.current_file}" if job.current_file else "before it processed any file"
    reason = (
        f"its worker died {job.attempts} times {where}; gave up after SEMANTIK_JOB_MAX_ATTEMPTS="
        f"{rt.settings.job_max_attempts} (retry to try again)"
    )
    file_reason = f"its worker died while processing this file (attempt {job.attempts})"
    if await events.emit(EventType.JOB_FAILED, rt.lifecycle.give_up(job, reason, file_reason), error=reason) is None:
        return
    if job.arq_job_id:
        await forget_arq_job(redis, job.arq_job_id)
    log.error("job_gave_up", job_id=job.id, attempts=job.attempts, file=job.current_file)


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
