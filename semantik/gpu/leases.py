"""GPU leases: a counting semaphore in Redis shared by every worker on every machine.

One slot per configured device (times ``SEMANTIK_GPU_SLOTS_PER_DEVICE``). A job acquires a slot
before it touches the GPU, renews it every ttl/3 while it runs (:func:`hold`) and releases it at
the end; a crashed worker's slot lapses after the TTL and the next acquirer reclaims it.

- Every mutation is one Lua script, and every timestamp comes from Redis ``TIME`` inside it, so
  the clocks of the worker machines never matter.
- Waiters queue FIFO: a slot goes to a waiter only when every live waiter ahead of it is served
  too. A waiter refreshes its place on each poll; one that stops polling (dead process) drops
  out after ``waiter_ttl_s`` and blocks nobody.
- With no GPU configured there is nothing to lease: :func:`acquire_device` answers "CPU" at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from semantik.gpu import lua
from semantik.redis_names import RedisNames
from semantik.settings import Settings

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 0.05
# A waiter not seen for this long is dropped from the queue; far above the poll interval so a
# briefly busy event loop does not lose its place.
WAITER_TTL_S = 3.0
# After a failed renewal (Redis unreachable for a moment), try again this often (at most a tenth
# of the TTL), for as long as the lease may still be valid.
RENEW_RETRY_S = 1.0

Fallback = Literal["cpu", "wait", "fail"]


class GpuUnavailable(Exception):
    """No GPU slot came free in time and ``SEMANTIK_GPU_FALLBACK=fail`` forbids the CPU."""


def parse_devices(spec: str) -> list[int]:
    """``SEMANTIK_GPU_DEVICES``: "" (no GPU), "0,1" (those CUDA indexes) or "auto" (every device torch sees)."""
    spec = spec.strip()
    if not spec:
        return []
    if spec.lower() == "auto":
        import torch  # only here: the server and CPU-only workers never pay for it

        return list(range(torch.cuda.device_count()))
    devices: list[int] = []
    for part in spec.split(","):
        item = part.strip()
        if not item.isdigit():
            raise ValueError(
                f"SEMANTIK_GPU_DEVICES={spec!r}: {item!r} is not a device index; "
                'use comma-separated CUDA indexes ("0,1"), "auto" or "" for none'
            )
        if int(item) in devices:
            raise ValueError(f"SEMANTIK_GPU_DEVICES={spec!r}: device {int(item)} is listed twice")
        devices.append(int(item))
    return devices


def slot_names(devices: list[int], per_device: int) -> list[str]:
    """``slot_names([0, 1], 2) == ["0:0", "0:1", "1:0", "1:1"]``: "device:slot"."""
    if per_device < 1:
        raise ValueError(f"slots per device must be at least 1, not {per_device}")
    return [f"{device}:{index}" for device in devices for index in range(per_device)]


def device_of(slot: str) -> int:
    return int(slot.split(":", 1)[0])


@dataclass
class Lease:
    """A held slot. ``acquired_at_ms`` and ``expires_at_ms`` are on the Redis clock; the expiry
    moves forward on each renewal."""

    slot: str
    device: int
    token: str
    owner: str
    job_id: str
    acquired_at_ms: int
    expires_at_ms: int
    # This process's own bound, on its event-loop clock: when the request that granted or last
    # renewed the lease was sent, plus the TTL. Redis started the TTL later than that, so past this
    # moment the slot may be someone else's. Only ever compared with loop.time(), never with Redis.
    valid_until_local_s: float = field(default=-math.inf, compare=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


T = TypeVar("T")


async def _finish(step: Awaitable[T]) -> T:
    """Run a clean-up step to the end even when our task is cancelled meanwhile, then stay
    cancelled (a second cancellation interrupts the step)."""
    future = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await future
        raise


class GpuLeases:
    """Slots ``slots`` ("device:index") leased for ``ttl_s`` seconds at a time."""

    def __init__(
        self,
        redis: Redis,
        slots: list[str],
        ttl_s: float,
        *,
        names: RedisNames | None = None,
        waiter_ttl_s: float = WAITER_TTL_S,
    ) -> None:
        if not slots:
            raise ValueError("GpuLeases needs at least one slot")
        self.redis, self.slots, self.ttl_s, self.waiter_ttl_s = redis, list(slots), ttl_s, waiter_ttl_s
        self.names = names or RedisNames()
        self._keys = self.names.gpu_keys
        self._acquire = redis.register_script(lua.ACQUIRE)
        self._renew = redis.register_script(lua.RENEW)
        self._release = redis.register_script(lua.RELEASE)
        self._leave = redis.register_script(lua.LEAVE)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    async def acquire(self, owner: str, job_id: str, wait_s: float) -> Lease | None:
        """Wait (FIFO) up to ``wait_s`` seconds (``math.inf``: for ever) for a slot; None when none came free."""
        token = uuid.uuid4().hex
        args: list[str | int] = [token, owner, job_id, self._ttl_ms, max(1, int(self.waiter_ttl_s * 1000)), *self.slots]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        lease: Lease | None = None
        try:
            while True:
                sent = loop.time()
                reply = await self._acquire(keys=self._keys, args=args)
                if reply[0]:
                    slot = _text(reply[0])
                    lease = Lease(slot, device_of(slot), token, owner, job_id, int(reply[2]), int(reply[1]))
                    lease.valid_until_local_s = sent + self.ttl_s
                    return lease
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                await asyncio.sleep(min(POLL_INTERVAL_S, remaining))
        finally:
            if lease is None:
                await _finish(self._leave_queue(token))

    async def _leave_queue(self, token: str) -> None:
        try:
            await self._leave(keys=self._keys[:5], args=[token, *self.slots])
        except (RedisError, OSError) as exc:
            # The waiter entry lapses by itself after waiter_ttl_s.
            log.warning("gpu_leave_queue_failed", error=str(exc))

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease by a full TTL; False when it lapsed or another token holds the slot now."""
        sent = asyncio.get_running_loop().time()
        expires = await self._renew(keys=self._keys[:2], args=[lease.slot, lease.token, self._ttl_ms])
        if not expires:
            return False
        lease.expires_at_ms = int(expires)
        lease.valid_until_local_s = sent + self.ttl_s
        return True

    async def release(self, lease: Lease) -> bool:
        """Give the slot back. True when this call removed the lease; releasing twice, or a lease
        that another token holds now, returns False and changes nothing."""
        return bool(await self._release(keys=self._keys[:2], args=[lease.slot, lease.token]))

    async def status(self) -> dict[str, Any]:
        """Every configured slot (free or held, with holder and expiry) and the live waiters in order."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.zrange(self.names.gpu_holders, 0, -1, withscores=True)
            pipe.hgetall(self.names.gpu_holder_info)
            pipe.zrange(self.names.gpu_waiters, 0, -1)
            pipe.zrange(self.names.gpu_waiter_expiry, 0, -1, withscores=True)
            pipe.hgetall(self.names.gpu_waiter_info)
            (seconds, micros), held, holder_info, waiters, waiter_expiry, waiter_info = await pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        expiry = {_text(slot): int(score) for slot, score in held}
        holders = {_text(slot): json.loads(raw) for slot, raw in holder_info.items()}
        slots: list[dict[str, Any]] = []
        for slot in self.slots:
            info = holders.get(slot)
            if info is None or expiry.get(slot, 0) <= now_ms:
                slots.append({"slot": slot, "device": device_of(slot), "state": "free"})
                continue
            slots.append(
                {
                    "slot": slot,
                    "device": device_of(slot),
                    "state": "held",
                    "owner": info["owner"],
                    "job_id": info["job_id"],
                    "acquired_at_ms": int(info["acquired_at_ms"]),
                    "expires_at_ms": expiry[slot],
                }
            )
        live = {_text(token): int(score) for token, score in waiter_expiry if score > now_ms}
        queue: list[dict[str, Any]] = []
        for raw_token in waiters:
            token = _text(raw_token)
            raw_info = waiter_info.get(raw_token)
            if token in live and raw_info is not None:
                info = json.loads(raw_info)
                queue.append({"owner": info["owner"], "job_id": info["job_id"], "since_ms": int(info["since_ms"])})
        return {"now_ms": now_ms, "ttl_s": self.ttl_s, "slots": slots, "waiters": queue}


def gpu_leases(redis: Redis, settings: Settings) -> GpuLeases | None:
    """The leases for ``SEMANTIK_GPU_*``; None when no GPU is configured (every job runs on the CPU)."""
    devices = parse_devices(settings.gpu_devices)
    if not devices:
        return None
    slots = slot_names(devices, settings.gpu_slots_per_device)
    return GpuLeases(redis, slots, settings.gpu_lease_ttl_s, names=settings.redis_names)


async def acquire_device(
    leases: GpuLeases | None, owner: str, job_id: str, wait_s: float, fallback: Fallback
) -> Lease | None:
    """A GPU lease for the job, or None for "use the CPU".

    Waits up to ``wait_s`` seconds; then ``fallback`` decides: "cpu" gives None, "wait" waits on
    (keeping its place in the queue) and "fail" raises :class:`GpuUnavailable`.
    """
    if leases is None:
        return None
    lease = await leases.acquire(owner, job_id, math.inf if fallback == "wait" else wait_s)
    if lease is None and fallback == "fail":
        raise GpuUnavailable(
            f"no GPU slot came free within {wait_s:g} s (SEMANTIK_GPU_WAIT_S) and SEMANTIK_GPU_FALLBACK=fail "
            'forbids the CPU; raise the wait, add slots or set SEMANTIK_GPU_FALLBACK to "cpu" or "wait"'
        )
    if lease is None:
        log.info("gpu_busy_using_cpu", owner=owner, job_id=job_id, wait_s=wait_s)
    return lease


async def _keep_renewing(leases: GpuLeases, lease: Lease, lost: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(leases.ttl_s / 3)
    while True:
        remaining_s = lease.valid_until_local_s - loop.time()
        if remaining_s <= 0:
            # No renewal confirmed in time (Redis unreachable or hung): another job may hold the slot now.
            log.warning("gpu_lease_lapsed", slot=lease.slot, job_id=lease.job_id)
            lost.set()
            return
        try:
            # A renewal that hangs past the lease's validity is as good as refused.
            async with asyncio.timeout(remaining_s):
                renewed = await leases.renew(lease)
        except Exception as exc:
            log.warning("gpu_lease_renew_failed", slot=lease.slot, job_id=lease.job_id, error=repr(exc))
            await asyncio.sleep(min(RENEW_RETRY_S, leases.ttl_s / 10))
            continue
        if not renewed:
            log.warning("gpu_lease_lost", slot=lease.slot, job_id=lease.job_id)
            lost.set()
            return
        await asyncio.sleep(leases.ttl_s / 3)


@contextlib.asynccontextmanager
async def hold(leases: GpuLeases, lease: Lease) -> AsyncIterator[asyncio.Event]:
    """Keep ``lease`` renewed (every ttl/3) for the block and release it after.

    The event is set when a renewal is refused, or when none succeeded while the lease was surely
    valid (failed renewals are retried until then): the slot may be someone else's now, so the job
    must stop using the GPU (fall back to the CPU, or stop and retry).
    """
    lost = asyncio.Event()
    renewing = asyncio.create_task(_keep_renewing(leases, lease, lost))
    try:
        yield lost
    finally:
        renewing.cancel()
        try:
            # wait() never raises the renewal task's own CancelledError, only a cancellation of
            # ours, which must propagate (after the release below), not be swallowed.
            await asyncio.wait([renewing])
        finally:
            await _finish(_release_quietly(leases, lease))


async def _release_quietly(leases: GpuLeases, lease: Lease) -> None:
    try:
        await leases.release(lease)
    except (RedisError, OSError) as exc:
        # The slot lapses after its TTL.
        log.warning("gpu_lease_release_failed", slot=lease.slot, job_id=lease.job_id, error=str(exc))
