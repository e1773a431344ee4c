"""What the API does, apart from HTTP: each function takes parsed input and returns models."""

from __future__ import annotations

import time
from pathlib import Path

import structlog
from arq.connections import ArqRedis

from semantik import constants as c
from semantik.errors import Conflict, Forbidden, ValidationFailed
from semantik.events import EventPublisher, JobEvents, envelope
from semantik.jobs import job_state
from semantik.models import Job, JobCreate, SearchHit, SearchRequest
from semantik.queue import abort_arq_job, enqueue_embed_job
from semantik.runtime import Runtime
from semantik.scan import is_within

log = structlog.get_logger(__name__)


def field_error(field: str, message: str, code: str) -> ValidationFailed:
    return ValidationFailed(message, code=code, details=[{"loc": [field], "msg": message, "type": code}])


def resolve_job_directory(rt: Runtime, directory: str) -> Path:
    """The job's directory, resolved; refused unless it lies inside an allowed root."""
    path = Path(directory).expanduser()
    if not path.is_absolute():
        raise field_error("directory", "directory must be an absolute path", "path_not_absolute")
    resolved = path.resolve()
    if not is_within(resolved, rt.settings.allowed_roots):
        # Checked before existence, so the answer says nothing about paths outside the roots.
        raise Forbidden(
            f"{directory} is outside the allowed roots (SEMANTIK_ALLOWED_ROOTS)",
            code="path_not_allowed",
            details={"allowed_roots": [str(root) for root in rt.settings.allowed_roots]},
        )
    if not resolved.is_dir():
        raise field_error("directory", f"{directory} is not an existing directory", "directory_not_found")
    return resolved


async def create_job(rt: Runtime, queue: ArqRedis, request: JobCreate) -> Job:
    directory = resolve_job_directory(rt, request.directory)
    for field, patterns in (("include", request.include), ("exclude", request.exclude)):
        if patterns is not None and any(not pattern.strip() for pattern in patterns):
            raise field_error(field, f"{field} patterns must not be empty", "empty_pattern")
    job = await rt.jobs.create_job(
        collection=request.collection,
        directory=str(directory),
        recursive=request.recursive,
        include=request.include,
        exclude=request.exclude,
        name=request.name,
        model=rt.model_name,
        dim=rt.model_dim,
    )
    events = JobEvents(EventPublisher(queue), job.id)
    await events.publisher.publish(envelope(c.JOB_QUEUED, job.id, job.seq, job_state(job)))
    try:
        await enqueue_embed_job(queue, job.id)
    except Exception as exc:
        error = f"could not be queued: {exc}"
        await events.emit(c.JOB_FAILED, rt.jobs.fail_job(job.id, error), error=error)
        log.error("job_enqueue_failed", job_id=job.id, error=str(exc))
        raise
    log.info("job_queued", job_id=job.id, collection=job.collection, directory=job.directory)
    return job


async def cancel_job(rt: Runtime, queue: ArqRedis, job_id: str) -> tuple[Job, bool]:
    """Cancel a queued job now, or tell a running one to stop (its worker confirms within a batch).
    Returns the job and whether it is already cancelled. A finished job is 409."""
    previous, state = await rt.lifecycle.request_cancel(job_id)
    publisher = EventPublisher(queue)
    if state is not None:
        data = {key: value for key, value in state.items() if key != "seq"}
        await publisher.publish(envelope(c.JOB_CANCELLED, job_id, int(state["seq"]), data))
    else:
        arq_job_id = await rt.lifecycle.arq_job_id(job_id)
        if arq_job_id:
            await abort_arq_job(queue, arq_job_id)
    log.info("job_cancel_requested", job_id=job_id, was=previous)
    return await rt.jobs.get_job(job_id), state is not None


# A retry runs what is left: failed and never-reached files. A completed job has nothing left.
RETRYABLE_STATES = frozenset({c.FAILED, c.CANCELLED, c.COMPLETED_WITH_ERRORS})


async def retry_job(rt: Runtime, queue: ArqRedis, job_id: str) -> Job:
    """Run a job that failed, was cancelled or completed with errors again: files already done are
    kept, the rest (failed ones included) are processed. Anything else is 409."""
    job = await rt.jobs.get_job(job_id)
    if job.status not in RETRYABLE_STATES:
        raise Conflict(
            f"only failed, cancelled or completed_with_errors jobs can be retried; job {job_id} is {job.status}",
            code="not_retryable",
        )
    events = JobEvents(EventPublisher(queue), job_id)
    change = rt.lifecycle.requeue(job_id, reason=None, new_run=True, from_status=job.status)
    if await events.emit(c.JOB_QUEUED, change) is None:
        raise Conflict(f"job {job_id} changed state meanwhile; try again", code="not_retryable")
    try:
        await enqueue_embed_job(queue, job_id, await rt.lifecycle.arq_job_id(job_id))
    except Exception as exc:
        error = f"could not be queued: {exc}"
        await events.emit(c.JOB_FAILED, rt.jobs.fail_job(job_id, error), error=error)
        raise
    log.info("job_retried", job_id=job_id)
    return await rt.jobs.get_job(job_id)


async def search(rt: Runtime, request: SearchRequest) -> tuple[list[SearchHit], float]:
    """Best chunks first, and the milliseconds it took."""
    started = time.perf_counter()
    await rt.jobs.get_collection(request.collection)  # 404 for an unknown collection
    embedder = await rt.embedder()
    vector = (await embedder.encode([request.query]))[0]
    hits = await rt.vectors.search(request.collection, vector, request.k)
    results = [
        SearchHit(
            score=hit.score,
            path=str(hit.payload.get("path", "")),
            chunk_index=int(hit.payload.get("chunk_index", 0)),
            text=str(hit.payload.get("text", "")),
            job_id=hit.payload.get("job_id"),
        )
        for hit in hits
    ]
    return results, (time.perf_counter() - started) * 1000
