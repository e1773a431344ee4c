"""One run of a job: make the collection mirror its folders.

An index job reads its one folder (a source of the collection), a sync every source. For each:
scan, and compare with what the folder held last time (``Sources.record_scan``): a file as it was
(size, mtime, ctime, inode) is not read; the rest is pending. Paths that are gone are forgotten
first, so deleted files leave search before any embedding; only a content a pending file of the same
size may carry (a move) keeps its vectors until that file is read. Then the pipeline indexes the
pending files (``pipeline.py``), and at the end every content nothing refers to loses its vectors.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from semantik.domain import EventType, FileStatus, Job, JobKind, JobState, ScannedFile, Source
from semantik.events.publish import JobEvents
from semantik.indexing.pipeline import JobCancelled, JobError, Pipeline, StopCheck, checked_directory
from semantik.indexing.sandbox import extraction_pool
from semantik.indexing.scan import folder_entry, scan_directory
from semantik.inference.embedder import Embedder
from semantik.runtime import Runtime

log = structlog.get_logger(__name__)


async def index_job(rt: Runtime, job: Job, embedder: Embedder, events: JobEvents, should_stop: StopCheck) -> None:
    """Scan the job's folders and make the collection mirror them: index what is new or changed,
    note copies and moves, remove what is gone. Raises JobCancelled when asked to stop."""
    collection = job.collection
    missing_by_source = []
    for source in await _job_sources(rt, job):
        scanned = await _scan_source(rt, job, source)
        outcome = await rt.sources.record_scan(job.id, source.id, scanned, rows_for_unchanged=job.kind == JobKind.INDEX)
        await events.emit(EventType.SCAN_COMPLETED, _now(outcome.state), directory=source.directory)
        log.info(
            "scan_completed",
            job_id=job.id,
            directory=source.directory,
            files=len(scanned),
            unchanged=outcome.unchanged,
            gone=len(outcome.missing),
        )
        missing_by_source.append((source, outcome.missing))
    pending_files = await rt.jobs.pending_files(job.id)
    await rt.vectors.ensure_collection(collection, embedder.dim)
    # Gone paths go first, so deleted files leave search at once. A content that a new file of the
    # same size may carry (a move) keeps its vectors until that file is read: released at the end.
    if await should_stop():  # before anything is forgotten: a cancel, or a newer run of this job
        raise JobCancelled()
    sizes = {f.size for f in pending_files}
    deferred: set[str] = set()
    for source, missing in missing_by_source:
        if missing:
            await events.emit(EventType.PROGRESS, rt.sources.remove_missing(job.id, source.id, missing))
        deferred |= {m.sha256 for m in missing if m.sha256 and m.size in sizes}
    # This scan's deletions (a copy elsewhere keeps its content, under its remaining paths), and
    # whatever an interrupted run left marked or half-written.
    removed = await rt.contents.settle(collection, keep=deferred, writing=True)
    if removed:
        log.info("contents_removed", job_id=job.id, contents=removed)
    log.info("sync_plan", job_id=job.id, pending=len(pending_files), deferred=len(deferred))
    pipeline = Pipeline(rt, job, embedder, events, len(pending_files), should_stop)
    pipeline.keep = deferred
    try:
        if pending_files:
            async with extraction_pool(rt).use() as pool:
                await pipeline.run(pending_files, pool)
    except Exception:
        # Stopped or failed: what this run forgot still leaves search (the rest waits for the next run).
        await _settle_quietly(rt, job, collection)
        raise
    # Whatever nothing refers to now (moves are settled, changed files replaced) loses its vectors.
    await rt.contents.settle(collection, writing=True)
    await pipeline.progress(force=True)


async def _settle_quietly(rt: Runtime, job: Job, collection: str) -> None:
    try:
        await rt.contents.settle(collection, writing=True)
    except Exception as exc:  # the store may be what failed: the next run settles it
        log.warning("contents_settle_failed", job_id=job.id, error=str(exc))


async def _now(state: JobState) -> JobState:
    return state


async def _job_sources(rt: Runtime, job: Job) -> list[Source]:
    if job.kind == JobKind.SYNC:
        return await rt.sources.of_collection(job.collection)
    if job.source_id is None:
        raise JobError("this job's folder is no longer a source of the collection (it was removed)")
    return [await rt.sources.get(job.collection, job.source_id)]


async def _scan_source(rt: Runtime, job: Job, source: Source) -> list[ScannedFile]:
    """The source's files. A folder that is gone or cannot be listed fails an index job; in a sync
    it is one failed entry, and what was indexed from it stays (an unmounted drive is not a
    deletion)."""
    s = rt.settings
    try:
        directory = await asyncio.to_thread(checked_directory, source.directory, s.allowed_roots)
        try:
            return await asyncio.to_thread(
                scan_directory,
                directory,
                recursive=source.recursive,
                include=source.include,
                exclude=source.exclude,
                allowed_roots=s.allowed_roots,
                max_file_size_bytes=s.max_file_size_bytes,
            )
        except OSError as exc:
            raise JobError(f"cannot list {source.directory}: {exc.strerror or exc}") from exc
    except JobError as exc:
        if job.kind == JobKind.INDEX:
            raise
        reason = f"{exc}; what was indexed from it is kept"
        return [ScannedFile(folder_entry(Path(source.directory)), 0, 0.0, FileStatus.FAILED, reason)]
