"""Live sync: sources marked ``watch`` are watched for file events (watchfiles: inotify on Linux),
and a change queues a sync of their collection.

- One watcher per source across all workers: a worker watches a source only while it holds the
  source's lease in Redis (``RedisNames.watch_lease``), renewed every third of its TTL. A worker
  that dies lets its leases lapse, and another worker takes them over within a TTL.
- Events are debounced (``WATCH_DEBOUNCE_MS``); a burst of saves makes one sync. While another job
  of the collection is queued or running, the watcher remembers the change and queues the sync as
  soon as the collection is free, so nothing saved meanwhile is missed.
- Every worker looks for sources to watch (new ones, turned off, removed) every ``WATCH_POLL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog
import watchfiles
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from semantik.domain import Source
from semantik.errors import Conflict
from semantik.runtime import Runtime
from semantik.sync import queue_sync

log = structlog.get_logger(__name__)

# How often a worker looks for watched sources it could take (and drops those no longer watched).
WATCH_POLL_S = 2.0
WATCH_LEASE_TTL_S = 15.0
# File events closer together than this make one sync.
WATCH_DEBOUNCE_MS = 500
# While the collection is busy, try to queue the sync this often.
BUSY_RETRY_S = 1.0

# Renew the lease only while we still hold it (KEYS[1] = lease, ARGV = owner, ttl ms).
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Watchers:
    """This worker's share of the watched sources."""

    def __init__(self, rt: Runtime, redis: ArqRedis, worker_id: str) -> None:
        self.rt, self.redis, self.worker_id = rt, redis, worker_id
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._look())

    async def stop(self) -> None:
        tasks = [task for task in (self._loop, *self._tasks.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    @property
    def watching(self) -> list[int]:
        return sorted(self._tasks)

    async def _look(self) -> None:
        while True:
            try:
                wanted = {source.id: source for source in await self.rt.sources.watched()}
                for source_id, task in list(self._tasks.items()):
                    if task.done() or source_id not in wanted:
                        task.cancel()
                        self._tasks.pop(source_id)
                for source_id, source in wanted.items():
                    if source_id not in self._tasks and await self._take(source_id):
                        self._tasks[source_id] = asyncio.create_task(self._watch(source))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the database away for a moment: look again later
                log.warning("watch_lookup_failed", error=str(exc))
            await asyncio.sleep(WATCH_POLL_S)

    def _key(self, source_id: int) -> str:
        return self.rt.settings.redis_names.watch_lease(source_id)

    async def _take(self, source_id: int) -> bool:
        ttl_ms = int(WATCH_LEASE_TTL_S * 1000)
        return bool(await self.redis.set(self._key(source_id), self.worker_id, nx=True, px=ttl_ms))

    async def _renew(self, source_id: int) -> bool:
        ttl_ms = int(WATCH_LEASE_TTL_S * 1000)
        return bool(await self._script(RENEW, source_id, str(ttl_ms)))

    async def _script(self, script: str, source_id: int, *args: str) -> object:
        return await self.redis.eval(script, 1, self._key(source_id), self.worker_id, *args)  # type: ignore[misc]

    async def _watch(self, source: Source) -> None:
        bound = log.bind(source_id=source.id, collection=source.collection, directory=source.directory)
        changed = asyncio.Event()
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(self._events(source, changed, stop)),
            asyncio.create_task(self._syncs(source, changed)),
        ]
        bound.info("watch_started", worker_id=self.worker_id)
        try:
            while True:
                await asyncio.sleep(WATCH_LEASE_TTL_S / 3)
                if any(task.done() for task in tasks):
                    break  # the folder went away, or watching failed: the next look starts again
                try:
                    if not await self._renew(source.id):
                        bound.warning("watch_lease_lost")
                        break
                except RedisError as exc:
                    bound.warning("watch_lease_renew_failed", error=str(exc))
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(self._script(RELEASE, source.id))
            bound.info("watch_stopped")

    async def _events(self, source: Source, changed: asyncio.Event, stop: asyncio.Event) -> None:
        try:
            async for changes in watchfiles.awatch(
                Path(source.directory),
                recursive=source.recursive,
                debounce=WATCH_DEBOUNCE_MS,
                stop_event=stop,
                ignore_permission_denied=True,
            ):
                log.debug("watch_changes", source_id=source.id, changes=len(changes))
                changed.set()
        except (OSError, RuntimeError) as exc:
            log.warning("watch_failed", source_id=source.id, directory=source.directory, error=str(exc))

    async def _syncs(self, source: Source, changed: asyncio.Event) -> None:
        """Queue a sync for each (debounced) change; while the collection is busy, keep trying."""
        while True:
            await changed.wait()
            changed.clear()
            while True:
                try:
                    job = await queue_sync(self.rt, self.redis, source.collection, reason="watch")
                except Conflict as exc:
                    if exc.code != "sync_running":
                        log.warning("watch_sync_refused", source_id=source.id, error=exc.message)
                        break
                    await asyncio.sleep(BUSY_RETRY_S)  # a job of the collection runs: queue ours after it
                    continue
                except Exception as exc:  # Redis or the database away for a moment: the change waits
                    log.warning("watch_sync_failed", source_id=source.id, error=str(exc))
                    await asyncio.sleep(BUSY_RETRY_S)
                    continue
                log.info("watch_sync_queued", source_id=source.id, job_id=job.id)
                break
