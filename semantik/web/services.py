"""What the API does, apart from HTTP: each function takes parsed input and returns models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import structlog
from arq.connections import ArqRedis

from semantik.domain import EventType, Job, JobStatus, Source
from semantik.errors import Conflict, Forbidden, field_error
from semantik.events.publish import EventPublisher, JobEvents, envelope
from semantik.jobqueue import abort_arq_job, enqueue_embed_job
from semantik.paths import is_within
from semantik.runtime import Runtime
from semantik.store.hybrid import SearchMode
from semantik.store.vectors import Hit
from semantik.sync import queue_job, queue_reachable
from semantik.web.models import GroupBy, JobCreate, RetrieverName, SearchHit, SearchRequest, Snippet, SourceCreate
from semantik.web.snippets import snippet

log = structlog.get_logger(__name__)

# group_by "document": candidates fetched per requested hit (a document may hold many of them),
# and at most this many in all.
DOCUMENT_CANDIDATES_PER_HIT = 5
MAX_DOCUMENT_CANDIDATES = 500


def resolve_job_directory(rt: Runtime, directory: str) -> Path:
    """The job's directory, resolved; refused unless it lies inside an allowed root."""
    if "\x00" in directory:
        raise field_error("directory", "directory must not contain a NUL character", "invalid_directory")
    path = Path(directory).expanduser()
    if not path.is_absolute():
        raise field_error("directory", "directory must be an absolute path", "path_not_absolute")
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a chain too long to follow
        # RecursionError is a RuntimeError: Python 3.11 follows a chain of links recursively.
        raise field_error(
            "directory", f"{directory} cannot be resolved ({type(exc).__name__}): a symlink loop?", "invalid_directory"
        ) from exc
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
    """Insert and enqueue a job. A refusal (503 when Redis is down) leaves nothing behind: no job
    row, and no collection created for it."""
    directory = resolve_job_directory(rt, request.directory)
    _check_patterns(request.include, request.exclude)
    return await queue_job(
        rt,
        queue,
        collection=request.collection,
        directory=str(directory),
        recursive=request.recursive,
        include=request.include,
        exclude=request.exclude,
        name=request.name,
    )


def _check_patterns(include: list[str] | None, exclude: list[str] | None) -> None:
    for field, patterns in (("include", include), ("exclude", exclude)):
        if patterns is not None and any(not pattern.strip() for pattern in patterns):
            raise field_error(field, f"{field} patterns must not be empty", "empty_pattern")


async def add_source(rt: Runtime, collection: str, request: SourceCreate) -> Source:
    """A new folder for the collection to mirror (indexed by the next sync)."""
    await rt.jobs.get_collection(collection)
    directory = resolve_job_directory(rt, request.directory)
    _check_patterns(request.include, request.exclude)
    source = await rt.sources.add(
        collection,
        directory=str(directory),
        recursive=request.recursive,
        include=request.include,
        exclude=request.exclude,
        watch=request.watch,
    )
    log.info("source_added", collection=collection, source_id=source.id, directory=source.directory)
    return source


async def remove_source(rt: Runtime, collection: str, source_id: int) -> dict[str, int]:
    removed = await rt.contents.remove_source(collection, source_id)
    log.info("source_removed", collection=collection, source_id=source_id, **removed)
    return removed


async def delete_collection(rt: Runtime, name: str) -> None:
    await rt.contents.drop_collection(name)
    log.info("collection_deleted", collection=name)


async def cancel_job(rt: Runtime, queue: ArqRedis, job_id: str) -> tuple[Job, bool]:
    """Cancel a queued job now, or tell a running one to stop (its worker confirms within a batch).
    Returns the job and whether it is already cancelled. A finished job is 409."""
    previous, state = await rt.lifecycle.request_cancel(job_id)
    publisher = EventPublisher(queue, rt.settings.redis_names)
    if state is not None:
        data = {key: value for key, value in state.items() if key != "seq"}
        await publisher.publish(envelope(EventType.JOB_CANCELLED, job_id, int(state["seq"]), data))
    else:
        arq_job_id = await rt.lifecycle.arq_job_id(job_id)
        if arq_job_id:
            await abort_arq_job(queue, arq_job_id)
    log.info("job_cancel_requested", job_id=job_id, was=previous)
    return await rt.jobs.get_job(job_id), state is not None


# A retry runs what is left: failed and never-reached files. A completed job has nothing left.
RETRYABLE_STATES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.COMPLETED_WITH_ERRORS})


async def retry_job(rt: Runtime, queue: ArqRedis, job_id: str) -> Job:
    """Run a job that failed, was cancelled or completed with errors again: files already done are
    kept, the rest (failed ones included) are processed. Anything else is 409."""
    job = await rt.jobs.get_job(job_id)
    if job.status not in RETRYABLE_STATES:
        raise Conflict(
            f"only failed, cancelled or completed_with_errors jobs can be retried; job {job_id} is {job.status}",
            code="not_retryable",
        )
    await queue_reachable(queue)
    events = JobEvents(EventPublisher(queue, rt.settings.redis_names), job_id)
    change = rt.lifecycle.requeue(job_id, reason=None, new_run=True, from_status=job.status)
    if await events.emit(EventType.JOB_QUEUED, change) is None:
        raise Conflict(f"job {job_id} changed state meanwhile; try again", code="not_retryable")
    try:
        await enqueue_embed_job(queue, job_id, await rt.lifecycle.arq_job_id(job_id))
    except Exception as exc:
        error = f"could not be queued: {exc}"
        await events.emit(EventType.JOB_FAILED, rt.jobs.fail_job(job_id, error), error=error)
        raise
    log.info("job_retried", job_id=job_id)
    return await rt.jobs.get_job(job_id)


async def search(rt: Runtime, request: SearchRequest) -> tuple[list[SearchHit], float]:
    """Best chunks (or documents) first, and the milliseconds it took. A keyword search does not
    embed the query."""
    started = time.perf_counter()
    await rt.jobs.get_collection(request.collection)  # 404 for an unknown collection
    if request.mode is SearchMode.KEYWORD:
        return await _search(rt, request, None, started)
    embedder = await rt.embedder()
    with embedder.search_first():  # indexing in this process starts no new sub-batch meanwhile
        return await _search(rt, request, (await embedder.encode_query([request.query]))[0], started)


async def _search(
    rt: Runtime, request: SearchRequest, vector: npt.NDArray[np.float32] | None, started: float
) -> tuple[list[SearchHit], float]:
    by_document = request.group_by is GroupBy.DOCUMENT
    limit = (
        min(max(request.k * DOCUMENT_CANDIDATES_PER_HIT, request.k), MAX_DOCUMENT_CANDIDATES)
        if by_document
        else request.k
    )
    hits = await rt.vectors.search(
        request.collection,
        vector,
        limit,
        query_text=request.query,
        mode=request.mode,
        where=request.filters.where(),
        ranges=request.filters.ranges(),
    )
    others: list[int | None] = [None] * len(hits)
    if by_document:
        hits, others = _best_per_document(hits, request.k)
    # Snippets only for what is returned (a document search reads up to 500 candidates).
    results = [_hit(hit, request.query, other_hits) for hit, other_hits in zip(hits, others, strict=True)]
    return results, (time.perf_counter() - started) * 1000


def _hit(hit: Hit, query: str, other_hits: int | None) -> SearchHit:
    payload = hit.payload
    text = str(payload.get("text", ""))
    passage, highlights = snippet(text, query)
    heading = payload.get("heading")
    return SearchHit(
        score=hit.score,
        path=str(payload.get("path", "")),
        paths=[str(p) for p in payload.get("paths") or [payload.get("path", "")]],
        chunk_index=int(payload.get("chunk_index", 0)),
        text=text,
        snippet=Snippet(text=passage, highlights=highlights),
        page=payload.get("page"),
        slide=payload.get("slide"),
        sheet=payload.get("sheet"),
        heading=[str(title) for title in heading] if isinstance(heading, list) else [],
        file_type=payload.get("file_type"),
        modified=SearchHit.modified_at(payload.get("mtime")),
        job_id=payload.get("job_id"),
        retrievers=cast("list[RetrieverName]", list(hit.retrievers)),  # validated by the model
        other_hits=other_hits,
    )


def _best_per_document(hits: list[Hit], k: int) -> tuple[list[Hit], list[int | None]]:
    """The best hit of each of the first k documents (contents), in order, and how many more of
    each one's chunks are among the candidates."""
    best: dict[str, Hit] = {}
    more: dict[str, int] = {}
    for hit in hits:
        document = str(hit.payload.get("sha256", hit.id))
        if document in best:
            more[document] += 1
        elif len(best) < k:
            best[document], more[document] = hit, 0
    return list(best.values()), [more[document] for document in best]
