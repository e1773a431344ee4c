"""One embedding job: scan, then extract → chunk → embed → upsert, overlapped so the model never waits.

- Preparation (read, hash, extract, chunk) runs in ``extract_workers`` killable child processes
  (``semantik.indexing.sandbox``), a few files ahead of the model; a file that outlasts its time
  or memory fails alone, with the reason. Content already indexed is skipped after the hash,
  before any parsing.
- The model takes batches that may span files; a partial batch goes as soon as nothing else is
  ready, because an idle model is the one cost we cannot win back.
- The files whose chunks a model call completed are upserted and then committed as done, together
  and in the background, while the model works on the next batch. Point ids are deterministic, so
  a retried or resumed job re-upserts without duplicates.
- Content the collection already has vectors for is not embedded again: only its path is noted
  (a copy, or a move when this run removed a path with that content). See ``reconcile.py`` for
  what comes before: which files are pending at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from semantik.domain import EmbeddedFile, EventType, FileStatus, Job, PendingFile
from semantik.events.publish import JobEvents
from semantik.indexing.chunk import Chunk
from semantik.indexing.extract import ExtractionError
from semantik.indexing.presence import Stats
from semantik.indexing.sandbox import ExtractPool
from semantik.inference.embedder import Embedder
from semantik.paths import is_within
from semantik.runtime import Runtime
from semantik.store.vectors import FilePoints

log = structlog.get_logger(__name__)

UPSERTS_IN_FLIGHT = 2
ENCODE_GROUP = 4
READY_FILES = 64


class JobError(Exception):
    """The whole job cannot go on; the message is stored as the job's error."""


class JobCancelled(Exception):
    """A user asked the job to stop; it stopped between batches."""


class JobSuperseded(Exception):
    """This run is not the job's current one any more (its heartbeat lapsed and the sweeper queued a
    new attempt): it stops at once and leaves the job, and the collection, to the new run."""


StopCheck = Callable[[], Awaitable[bool]]
STOP_CHECK_INTERVAL_S = 0.25
# While files are committed, replaced contents leave the store at most this long after their file.
SETTLE_INTERVAL_S = 1.0


@dataclass
class _Prepared:
    file: PendingFile
    sha256: str
    chunks: list[Chunk]
    mtime: float
    queued: int = 0  # chunks handed to the model so far
    embedded: int = 0
    vectors: npt.NDArray[np.float32] | None = None
    started: bool = field(default=False)


def checked_directory(directory: str, allowed_roots: list[Path]) -> Path:
    """The job's folder, resolved again at the start of every run (first run, retry, resume, sweep):
    it may have been swapped for a symlink to somewhere outside the allowed roots since the job was
    created. Raises JobError when it is gone or outside."""
    try:
        resolved = Path(directory).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise JobError(f"directory {directory} does not exist any more") from exc
    if not is_within(resolved, allowed_roots):
        raise JobError(f"directory {directory} now leads outside the allowed roots (SEMANTIK_ALLOWED_ROOTS)")
    if not resolved.is_dir():
        raise JobError(f"directory {directory} is not a directory any more")
    return resolved


class Pipeline:
    def __init__(
        self,
        rt: Runtime,
        job: Job,
        embedder: Embedder,
        events: JobEvents,
        pending: int,
        should_stop: StopCheck,
    ) -> None:
        self.should_stop = should_stop
        self.stats = Stats(events.publisher.redis, events.publisher.names)
        self.next_stop_check_s = 0.0
        self.rt, self.job, self.embedder, self.events = rt, job, embedder, events
        self.pending_at_start = pending
        self.settled = 0  # files of this run that reached a final state
        self.chunks_embedded = 0
        self.started_s = time.monotonic()
        workers = rt.settings.extract_workers
        self.workers = workers
        # Prepared files waiting for the model: deep enough to fill full encode groups from small files.
        self.ready: asyncio.Queue[_Prepared | None] = asyncio.Queue(maxsize=READY_FILES)
        self.upserts: set[asyncio.Task[None]] = set()
        self.upsert_slots = asyncio.Semaphore(UPSERTS_IN_FLIGHT)
        self.failure: BaseException | None = None
        # Contents a file of this run may still adopt (a move): not released until the run ends.
        self.keep: set[str] = set()
        self.next_settle_s = 0.0
        self._last_encode_end_s = 0.0  # time.perf_counter() when the last encode call returned

    async def run(self, pending: list[PendingFile], pool: ExtractPool) -> None:
        producer = asyncio.create_task(self._produce(pending, pool))
        try:
            await self._consume()
            await producer
        finally:
            producer.cancel()
            await asyncio.wait({producer})  # its extraction processes are killed before we go on
            # Files whose vectors are embedded still get written and committed, even when the job
            # stops: that work is done, and a file is only ever marked done after its upsert.
            while self.upserts:
                await asyncio.wait(set(self.upserts))
        self._raise_commit_failure()

    async def _check_stop(self) -> None:
        now = time.monotonic()
        if now >= self.next_stop_check_s:
            self.next_stop_check_s = now + STOP_CHECK_INTERVAL_S
            if await self.should_stop():
                raise JobCancelled()

    # -- preparation -------------------------------------------------------------------------

    async def _produce(self, pending: list[PendingFile], pool: ExtractPool) -> None:
        files = iter(pending)

        async def prepare_next() -> None:
            for pending_file in files:  # the iterator is shared: each file is taken once
                await self._check_stop()
                prepared = await self._prepare(pending_file, pool)
                if prepared is not None:
                    await self.ready.put(prepared)

        preparers = [asyncio.create_task(prepare_next()) for _ in range(self.workers)]
        try:
            try:
                await asyncio.gather(*preparers)
            finally:
                # One preparer failing (a stop request, a store error) or our own cancellation stops
                # them all, here and now: none may go on in the background, where the end of the
                # job would kill its extraction process and fail a file that was merely stopped.
                for preparer in preparers:
                    preparer.cancel()
                await asyncio.wait(preparers)
        except BaseException:
            with contextlib.suppress(asyncio.QueueFull):  # the consumer may be gone: never wait for it
                self.ready.put_nowait(None)
            raise
        await self.ready.put(None)

    async def _prepare(self, file: PendingFile, pool: ExtractPool) -> _Prepared | None:
        jobs, collection = self.rt.jobs, self.job.collection
        sha256 = None
        chunks: list[Chunk] = []
        try:
            async with pool.lease() as extraction:
                sha256 = await extraction.read(file.open_path)
                # Known content is adopted under the lock that releasing contents takes: it cannot
                # lose its vectors between this check and the file's row saying it refers to it.
                async with self.rt.contents.lock(collection):
                    indexed_from = await jobs.indexed_path(collection, sha256)
                    if indexed_from is not None:
                        await self._known_content(file, sha256, indexed_from)
                        return None
                chunks = await extraction.extract()
        except ExtractionError as exc:
            log.warning("file_failed", job_id=self.job.id, file=file.path, error=str(exc))
            await self._settle(file, FileStatus.FAILED, str(exc), sha256)
            return None
        if not chunks:
            await self._settle(file, FileStatus.SKIPPED, "no text to index", sha256)
            return None
        return _Prepared(file, sha256, chunks, extraction.mtime)

    async def _known_content(self, file: PendingFile, sha256: str, indexed_from: str) -> None:
        """Content the collection has vectors for: no embedding, only the path is noted."""
        contents, collection = self.rt.contents, self.job.collection
        paths = await contents.paths_of(collection, sha256)
        moved = None if file.path in paths else await self.rt.sources.moved_from(self.job.id, sha256, file.path)
        if file.path in paths or (not paths and indexed_from == file.path):
            reason = "unchanged since last indexed"
        elif moved is not None:
            reason = f"moved from {moved} (path updated, not embedded again)"
        else:
            reason = f"same content as {paths[0] if paths else indexed_from} (findable at both paths)"
        # Its points name the new path once the contents are settled (after the next file, or at the end).
        await self._settle(file, FileStatus.SKIPPED, reason, sha256, entry_status=FileStatus.DONE)

    async def _settle(
        self, file: PendingFile, status: str, reason: str, sha256: str | None, *, entry_status: str | None = None
    ) -> None:
        change = self.rt.jobs.settle_file(self.job.id, file.id, status, reason, sha256, entry_status=entry_status)
        await self.events.emit(EventType.FILE_FAILED, change, path=file.path, error=reason)
        self.settled += 1
        await self.progress()

    async def progress(self, *, force: bool = False) -> None:
        """A throttled progress event (at most every PROGRESS_INTERVAL_S), with rate and ETA."""
        if not (self.events.progress_due() or force):
            return
        elapsed_s = max(time.monotonic() - self.started_s, 1e-6)
        remaining = max(self.pending_at_start - self.settled, 0)
        eta_s = round(elapsed_s / self.settled * remaining, 1) if self.settled else None
        await self.events.emit(
            EventType.PROGRESS,
            self.rt.jobs.progress(self.job.id),
            rate_chunks_s=round(self.chunks_embedded / elapsed_s, 2),
            eta_s=eta_s,
        )

    # -- embedding ---------------------------------------------------------------------------

    async def _consume(self) -> None:
        # Up to ENCODE_GROUP model batches per encode call: sentence-transformers sorts one call's
        # texts by length, so grouping cuts padding (files end in short chunks) at no latency cost.
        batch_size = self.embedder.batch_size * ENCODE_GROUP
        open_files: deque[_Prepared] = deque()  # files with chunks not yet handed to the model
        produced_all = False
        # One encode call waits in the model's queue behind the one running: the model starts it the
        # moment the other ends, instead of idling while this loop stores a call's vectors and
        # gathers the next (17 ms a call on an AMX Xeon, 2% of a job; docs/benchmarks.md, session 25).
        in_flight: deque[asyncio.Task[None]] = deque()

        def waiting_chunks() -> int:
            return sum(len(item.chunks) - item.queued for item in open_files)

        try:
            while True:
                self._raise_commit_failure()
                await self._check_stop()
                # Take what is ready; block on preparation only when the model has nothing to do.
                while not produced_all and waiting_chunks() < batch_size:
                    if (waiting_chunks() or in_flight) and self.ready.empty():
                        break
                    item = await self.ready.get()
                    if item is None:
                        produced_all = True
                    else:
                        open_files.append(item)
                if not open_files:
                    if not in_flight:
                        return
                    await in_flight[0]
                    in_flight.popleft()
                    continue
                batch: list[tuple[_Prepared, int]] = []
                while open_files and len(batch) < batch_size:
                    current = open_files[0]
                    take = min(batch_size - len(batch), len(current.chunks) - current.queued)
                    batch.extend((current, current.queued + i) for i in range(take))
                    current.queued += take
                    if current.queued == len(current.chunks):
                        open_files.popleft()
                in_flight.append(asyncio.create_task(self._embed(batch)))
                if len(in_flight) > 1:
                    await in_flight[0]
                    in_flight.popleft()
        except JobCancelled:
            # A stop request (checked between calls, as before): the call the model is running ends
            # and its files are committed, since that work is done; one waiting behind it is dropped
            # (its files stay pending for the next run).
            for task in list(in_flight)[1:]:
                task.cancel()
            raise
        except BaseException:
            for task in in_flight:  # a failure or a cancellation: nothing more is embedded
                task.cancel()
            raise
        finally:
            if in_flight:
                await asyncio.wait(in_flight)  # none goes on in the background
                for task in in_flight:
                    if not task.cancelled() and task.exception() is not None:
                        log.warning("encode_failed_while_stopping", job_id=self.job.id, error=str(task.exception()))

    async def _embed(self, batch: list[tuple[_Prepared, int]]) -> None:
        first = batch[0][0]
        if not first.started:
            first.started = True
            await self.rt.jobs.set_current_file(self.job.id, first.file.path)
        began_s = time.perf_counter()
        chunks = [item.chunks[index] for item, index in batch]
        vectors = await self.embedder.encode([chunk.text for chunk in chunks], [chunk.tokens for chunk in chunks])
        ended_s = time.perf_counter()
        # Model time only: a call queued behind the previous one started when that one ended.
        seconds = ended_s - max(began_s, self._last_encode_end_s)
        self._last_encode_end_s = ended_s
        self.chunks_embedded += len(batch)
        await self.stats.embedded(len(batch), seconds)
        completed = []
        for row, (item, index) in enumerate(batch):
            if item.vectors is None:
                item.vectors = np.empty((len(item.chunks), vectors.shape[1]), dtype=np.float32)
            item.vectors[index] = vectors[row]
            item.embedded += 1
            if item.embedded == len(item.chunks):
                completed.append(item)
        if completed:
            task = asyncio.create_task(self._commit(completed))
            self.upserts.add(task)
            task.add_done_callback(self._commit_done)

    # -- storing -----------------------------------------------------------------------------

    async def _commit(self, items: list[_Prepared]) -> None:
        """The files one model call completed, stored together: one transaction notes their contents,
        one request writes their points, one transaction marks them done (an event each), in that
        order, so a file is never done before its points are stored. Per file, each of those steps
        was a hand-off between threads or processes; for a folder of small files on a fast CPU the
        hand-offs took the cores the model needed (docs/benchmarks.md, session 20)."""
        rt, job = self.rt, self.job
        collection = job.collection
        files = [EmbeddedFile(item.file.id, item.file.path, item.sha256, len(item.chunks)) for item in items]
        async with self.upsert_slots:
            await rt.jobs.begin_contents(collection, job.id, files)
            await rt.vectors.upsert_files(collection, [_points(item, job.id) for item in items])
            await self.events.emit_each(
                EventType.FILE_COMPLETED,
                rt.jobs.commit_files(job.id, collection, files),
                [{"path": file.path, "file_chunks": file.chunks} for file in files],
            )
            # Old contents go (unless another path still has them), and contents found at several
            # paths name them all: at most every SETTLE_INTERVAL_S, so the deletions go in batches.
            if time.monotonic() >= self.next_settle_s:
                self.next_settle_s = time.monotonic() + SETTLE_INTERVAL_S
                await rt.contents.settle(collection, keep=self.keep)
        self.settled += len(files)
        for file in files:
            log.debug("file_completed", job_id=job.id, file=file.path, chunks=file.chunks)
        await self.progress()

    def _commit_done(self, task: asyncio.Task[None]) -> None:
        self.upserts.discard(task)
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()

    def _raise_commit_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


def _points(item: _Prepared, job_id: str) -> FilePoints:
    assert item.vectors is not None
    texts = [chunk.text for chunk in item.chunks]
    locations = [chunk.location for chunk in item.chunks]
    return FilePoints(item.sha256, item.file.path, job_id, texts, item.vectors, locations=locations, mtime=item.mtime)
