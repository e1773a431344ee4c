"""The server's event relay: one Redis pattern subscription per process, fanned out to listeners.

Each WebSocket owns a bounded ``Listener``; the relay only ever appends to it and never waits, so a
slow or stuck client cannot delay the relay or any other client. When a listener falls behind, its
queued ``progress`` events are coalesced (the latest wins); when it overflows anyway, or after the
relay reconnects to Redis, it is told to resynchronise: its socket reads a fresh snapshot from the
database, which supersedes everything it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections import deque
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from semantik.domain import TERMINAL_EVENTS, EventType, JobStatus

log = structlog.get_logger(__name__)

LISTENER_MAX_EVENTS = 512
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0

# An idle socket is written to directly (one prepared frame, no task switch) while its transport
# buffer holds less than this; above it, events queue and the slow-client rules apply.
DIRECT_WRITE_LIMIT_BYTES = 64 * 1024
# Listeners offered one event per turn of the event loop. A direct write costs about 10 µs (a send
# on the socket), so a fan-out to thousands of sockets is cut into slices of about 2 ms and REST
# requests, heartbeats and the other sockets' tasks run in between.
FANOUT_SLICE = 200

Event = tuple[dict[str, Any], str, bytes]  # parsed envelope, its JSON text, the WebSocket frame

# What an event may look like. Anyone who can publish on the Redis channels (a worker, but also
# whatever else reaches that Redis) chooses its bytes, and browsers and the CLI show its fields:
# the relay forwards only events of this shape, re-serialised from what it checked.
ENVELOPE_KEYS = frozenset({"type", "job_id", "seq", "ts", "data"})
RELAYED_TYPES = frozenset(EventType) - {EventType.SNAPSHOT}  # snapshots are made by the server only
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # uuid4, or a test's short name
MAX_EVENT_BYTES = 256 * 1024
COUNTERS = frozenset(
    {"files_total", "files_done", "files_failed", "files_skipped", "chunks", "file_chunks", "attempts"}
    | {"files_unchanged", "files_removed"}
)
NUMBERS = frozenset({"rate_chunks_s", "eta_s"})
STATES = frozenset(JobStatus)
TEXTS = frozenset({"id", "current_file", "path", "error", "worker_id", "device", "name", "collection", "directory",
                   "kind", "created_at", "started_at", "finished_at"})  # fmt: skip


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_data_field(key: str, value: object) -> bool:
    if key in COUNTERS:
        return not _is_int(value) or value < 0  # type: ignore[operator]
    if key in NUMBERS:
        if value is None:
            return False
        return isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if key == "status":
        return not isinstance(value, str) or value not in STATES
    if key in TEXTS:
        return value is not None and not isinstance(value, str)
    return False


def checked_event(raw: str | bytes) -> dict[str, Any] | None:
    """The event if it has the envelope's shape (known type, sane job id, int ``seq``, text ``ts``,
    a ``data`` object whose counters are ints, ``status`` a job state and texts texts); else None."""
    if len(raw) > MAX_EVENT_BYTES:
        return None
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or event.keys() != ENVELOPE_KEYS:
        return None
    job_id, data = event["job_id"], event["data"]
    if (
        not isinstance(event["type"], str)
        or event["type"] not in RELAYED_TYPES
        or not isinstance(job_id, str)
        or not JOB_ID.match(job_id)
        or not _is_int(event["seq"])
        or not isinstance(event["ts"], str)
        or len(event["ts"]) > 64
        or not isinstance(data, dict)
        or any(not isinstance(key, str) or _bad_data_field(key, value) for key, value in data.items())
    ):
        return None
    return event


def text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed, final text frame: what a server sends, identical for every client."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


class DirectWriter(Protocol):
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...
    def write(self, data: bytes) -> None: ...


class Listener:
    """A bounded, coalescing queue of events for one socket."""

    def __init__(self, job_id: str | None, max_events: int = LISTENER_MAX_EVENTS) -> None:
        self.job_id = job_id  # None: every job
        self.max_events = max_events
        self._items: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._resync = False
        self.coalesced = 0
        self.overflows = 0
        # Set by the socket while it idles: the relay may then write events straight to it.
        self.transport: DirectWriter | None = None
        self.last_seq: dict[str, int] = {}  # per job: the last seq this socket has sent
        self.finished = False  # a terminal event went out directly

    def offer(self, event: Event) -> None:
        """Never blocks: write directly to an idle socket, or append, coalesce progress, or resync."""
        parsed = event[0]
        transport = self.transport
        if (
            transport is not None
            and not self._items
            and not self._resync
            and not transport.is_closing()
            and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT_BYTES
        ):
            if parsed["seq"] > self.last_seq.get(parsed["job_id"], 0):
                transport.write(event[2])
                self.last_seq[parsed["job_id"]] = parsed["seq"]
                if self.job_id is not None and parsed["type"] in TERMINAL_EVENTS:
                    self.finished = True
                    self._wakeup.set()
            return
        if parsed["type"] == EventType.PROGRESS:
            # Drop the job's older queued progress; appending keeps the queue in seq order.
            for index in range(len(self._items) - 1, -1, -1):
                queued = self._items[index][0]
                if queued["type"] == EventType.PROGRESS and queued["job_id"] == parsed["job_id"]:
                    del self._items[index]
                    self.coalesced += 1
                    break
        if len(self._items) >= self.max_events:
            self._items.clear()
            self._resync = True
            self.overflows += 1
        else:
            self._items.append(event)
        self._wakeup.set()

    def request_resync(self) -> None:
        self._items.clear()
        self._resync = True
        self._wakeup.set()

    async def get(self) -> Event | None:
        """The next event, or None when the socket must send a fresh snapshot first (or, with
        ``finished`` set, when a terminal event already went out directly)."""
        while True:
            if self.finished:
                return None
            if self._resync:
                self._resync = False
                return None
            if self._items:
                return self._items.popleft()
            self._wakeup.clear()
            await self._wakeup.wait()


class EventHub:
    def __init__(self, redis_url: str, pattern: str) -> None:
        self.redis_url = redis_url
        self.pattern = pattern  # RedisNames.job_channel_pattern: every job channel of one deployment
        self._by_job: dict[str, set[Listener]] = {}
        self._everything: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.relayed = 0

    @property
    def listener_count(self) -> int:
        return len(self._everything) + sum(len(group) for group in self._by_job.values())

    def listen(self, job_id: str | None) -> Listener:
        listener = Listener(job_id)
        if job_id is None:
            self._everything.add(listener)
        else:
            self._by_job.setdefault(job_id, set()).add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        if listener.job_id is None:
            self._everything.discard(listener)
            return
        group = self._by_job.get(listener.job_id)
        if group is not None:
            group.discard(listener)
            if not group:
                del self._by_job[listener.job_id]

    async def dispatch(self, raw: str | bytes) -> None:
        """Offer one event to every listener of its job and every all-jobs listener.

        The relay awaits this before it reads the next message, so events reach each listener in
        order; between slices of ``FANOUT_SLICE`` listeners the loop serves everything else.
        """
        parsed = checked_event(raw)
        if parsed is None:
            log.warning("event_malformed", raw=repr(raw[:200]))
            return
        job_id = parsed["job_id"]
        text = json.dumps(parsed, separators=(",", ":"))  # exactly what was checked, nothing else
        event = (parsed, text, text_frame(text.encode()))
        self.relayed += 1
        # A copy: sockets may come and go while the loop runs between slices. One that joins now
        # reads its snapshot after this event was stored, so it misses nothing.
        listeners = [*self._by_job.get(job_id, ()), *self._everything]
        for start in range(0, len(listeners), FANOUT_SLICE):
            if start:
                await asyncio.sleep(0)
            for listener in listeners[start : start + FANOUT_SLICE]:
                listener.offer(event)

    def _resync_all(self) -> None:
        for listener in self._everything:
            listener.request_resync()
        for group in self._by_job.values():
            for listener in group:
                listener.request_resync()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._relay(), name="semantik-event-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _relay(self) -> None:
        delay_s = RECONNECT_MIN_S
        first = True
        while True:
            # No silent retries inside redis-py: every reconnect must be seen here, to resync.
            client = Redis.from_url(self.redis_url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self.pattern)
                self.connected.set()
                if not first:
                    log.info("event_relay_reconnected")
                    self._resync_all()
                first, delay_s = False, RECONNECT_MIN_S
                async for message in pubsub.listen():
                    if message["type"] == "pmessage":
                        await self.dispatch(message["data"])
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("event_relay_disconnected", error=str(exc))
                self.connected.clear()
                first = False
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RECONNECT_MAX_S)
