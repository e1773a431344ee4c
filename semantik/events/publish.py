"""Job events: numbered in the database with the change they announce, then published to Redis.

State is stored; pub/sub only notifies. A listener that misses events (Redis restart, slow socket)
reads a fresh snapshot from the database and continues from its ``seq``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from semantik.domain import EventType, JobState, utcnow
from semantik.redis_names import RedisNames

log = structlog.get_logger(__name__)

# Progress events per job per second, at most (one more always goes out at the end).
PROGRESS_INTERVAL_S = 0.2


def envelope(event_type: EventType, job_id: str, seq: int, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": event_type, "job_id": job_id, "seq": seq, "ts": utcnow(), "data": data}


def _without_seq(state: JobState) -> dict[str, Any]:
    return {key: value for key, value in state.items() if key != "seq"}


class EventPublisher:
    """Publishes envelopes on the job's channel and the all-jobs channel. A Redis outage costs
    only the notification: the change is already committed, and listeners resynchronise."""

    def __init__(self, redis: Redis | None, names: RedisNames) -> None:
        self.redis, self.names = redis, names

    async def publish(self, *events: dict[str, Any]) -> None:
        """Each event on its job's channel and the all-jobs channel, in order, in one round trip."""
        if self.redis is None or not events:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for event in events:
                    message = json.dumps(event, separators=(",", ":"))
                    pipe.publish(self.names.job_channel(event["job_id"]), message)
                    pipe.publish(self.names.all_jobs_channel, message)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            first = events[0]
            log.warning(
                "event_publish_failed", job_id=first["job_id"], type=first["type"], events=len(events), error=str(exc)
            )


class JobEvents:
    """One job's event stream from this process: each change is committed and published under a
    lock, so events leave in ``seq`` order even when several tasks change the job at once."""

    def __init__(self, publisher: EventPublisher, job_id: str) -> None:
        self.publisher = publisher
        self.job_id = job_id
        self._lock = asyncio.Lock()
        self._last_progress_s = 0.0

    async def emit(self, event_type: EventType, change: Awaitable[JobState | None], **extra: Any) -> JobState | None:
        """Run ``change`` (a store call that returns the numbered state) and publish it."""
        async with self._lock:
            state = await change
            if state is None:
                return None
            data = {**_without_seq(state), **extra}
            await self.publisher.publish(envelope(event_type, self.job_id, int(state["seq"]), data))
            return state

    async def emit_each(
        self, event_type: EventType, change: Awaitable[list[JobState]], extras: list[dict[str, Any]]
    ) -> list[JobState]:
        """Like ``emit`` for a change of several steps (files committed together): one numbered state
        per step, each published as its own event with its ``extras``, all in one round trip."""
        async with self._lock:
            states = await change
            await self.publisher.publish(
                *(
                    envelope(event_type, self.job_id, int(state["seq"]), {**_without_seq(state), **extra})
                    for state, extra in zip(states, extras, strict=True)
                )
            )
            return states

    def progress_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_progress_s < PROGRESS_INTERVAL_S:
            return False
        self._last_progress_s = now
        return True
