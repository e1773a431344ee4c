"""GPU leases against the real Redis, and OOM backoff against a fake GPU (no GPU on the test machine)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import numpy.typing as npt
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from semantik.cli.redis_server import RedisServer
from semantik.gpu import leases as gpu
from semantik.gpu.leases import GpuLeases, GpuUnavailable, Lease, acquire_device, hold, parse_devices, slot_names
from semantik.inference.oom_batch import AdaptiveBatch, is_oom
from semantik.redis_names import RedisNames
from semantik.settings import Settings
from tests.helpers import frozen, wait_until

NAMES = RedisNames()  # GpuLeases' default namespace


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def own_redis(private_redis: RedisServer) -> AsyncIterator[Redis]:
    """A client of a Redis this test may stop, freeze and restart."""
    client = Redis.from_url(private_redis.url)
    yield client
    await client.aclose()


async def redis_now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def wait_for_waiters(leases: GpuLeases, count: int, timeout_s: float = 10.0) -> None:
    async def queued() -> bool:
        return len((await leases.status())["waiters"]) >= count

    await wait_until(queued, timeout_s, f"{count} waiters in the queue", interval_s=0.01)


async def wait_past(redis: Redis, expires_at_ms: int) -> None:
    """Until ``expires_at_ms`` has passed on the Redis clock (the only clock the leases trust)."""

    async def lapsed() -> bool:
        return await redis_now_ms(redis) > expires_at_ms

    await wait_until(lapsed, 30, "the lease's expiry on the Redis clock", interval_s=0.02)


def past_expiry_on_this_host(lease: Lease) -> bool:
    """The lease's expiry has passed by this machine's clock, which is Redis's clock too (same host):
    for when Redis itself cannot be asked."""
    return time.time() * 1000 > lease.expires_at_ms + 20


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "devices"), [("", []), ("  ", []), ("0", [0]), ("0,1", [0, 1]), (" 1 , 3 ", [1, 3])])
def test_parse_devices(spec: str, devices: list[int]) -> None:
    assert parse_devices(spec) == devices


def test_parse_devices_auto_counts_cuda_devices() -> None:
    import torch

    assert parse_devices("auto") == list(range(torch.cuda.device_count()))
    assert parse_devices("AUTO") == parse_devices("auto")


@pytest.mark.parametrize("spec", ["cuda:0", "0,,1", "-1", "1.5", "0,0", "gpu"])
def test_parse_devices_rejects_bad_input(spec: str) -> None:
    with pytest.raises(ValueError, match="SEMANTIK_GPU_DEVICES"):
        parse_devices(spec)


def test_no_gpu_configured_never_imports_torch() -> None:
    # A fresh interpreter: this test process has torch loaded already.
    code = (
        "import sys; from semantik.gpu import leases; from semantik.inference import oom_batch;"
        "assert leases.parse_devices('') == [] and leases.parse_devices('0,1') == [0, 1];"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_slot_names() -> None:
    assert slot_names([0, 1], 2) == ["0:0", "0:1", "1:0", "1:1"]
    assert slot_names([0, 1], 1) == ["0:0", "1:0"]
    assert slot_names([], 3) == []
    with pytest.raises(ValueError):
        slot_names([0], 0)


async def test_gpu_leases_from_settings(redis: Redis) -> None:
    assert gpu.gpu_leases(redis, Settings(gpu_devices="")) is None
    leases = gpu.gpu_leases(redis, Settings(gpu_devices="0,2", gpu_slots_per_device=2, gpu_lease_ttl_s=7))
    assert leases is not None
    assert leases.slots == ["0:0", "0:1", "2:0", "2:1"]
    assert leases.ttl_s == 7


async def test_redis_keys_are_namespaced(redis: Redis) -> None:
    names = RedisNames("team-a")
    assert len(set(names.gpu_keys)) == 6 and all(key.startswith("team-a:gpu:") for key in names.gpu_keys)
    leases = GpuLeases(redis, ["0:0"], ttl_s=30, names=names)
    held = await leases.acquire("w", "job", wait_s=0)
    assert held is not None
    waiter = asyncio.create_task(leases.acquire("v", "job-v", wait_s=30))
    try:
        await wait_for_waiters(leases, 1)
        stored = {key.decode() for key in await redis.keys("*")}
        assert len(stored) == 6 and all(key.startswith("team-a:gpu:") for key in stored), stored
        # Another deployment on the same Redis has its own slots.
        other = GpuLeases(redis, ["0:0"], ttl_s=30, names=RedisNames("team-b"))
        assert await other.acquire("x", "job-x", wait_s=0) is not None
        assert [w["owner"] for w in (await leases.status())["waiters"]] == ["v"]
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


# --- leases ------------------------------------------------------------------------------------


async def test_concurrent_acquirers_never_exceed_slots(redis_url: str) -> None:
    # Four "workers", each with its own connection, as separate processes would have.
    clients = [Redis.from_url(redis_url) for _ in range(4)]
    workers = [GpuLeases(client, slot_names([0], 3), ttl_s=5) for client in clients]
    leases = workers[0]
    holding = peak = done = 0
    devices_seen: set[str] = set()

    async def job(index: int) -> None:
        nonlocal holding, peak, done
        lease = await workers[index % 4].acquire(f"worker-{index % 4}", f"job-{index}", wait_s=60)
        assert lease is not None
        holding += 1
        peak = max(peak, holding)
        devices_seen.add(lease.slot)
        try:
            await asyncio.sleep(random.uniform(0.01, 0.05))
        finally:
            holding -= 1
            assert await workers[index % 4].release(lease)
        done += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(job(i) for i in range(20))), timeout=60)
    finally:
        for client in clients[1:]:
            await client.aclose()
    assert done == 20
    assert 1 <= peak <= 3
    assert devices_seen <= {"0:0", "0:1", "0:2"}
    status = await leases.status()
    assert [s["state"] for s in status["slots"]] == ["free"] * 3
    assert status["waiters"] == []


async def test_waiters_are_served_in_arrival_order(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    first = await leases.acquire("holder", "job-h", wait_s=0)
    assert first is not None
    served: list[int] = []

    async def waiter(index: int) -> None:
        lease = await leases.acquire(f"w{index}", f"job-{index}", wait_s=30)
        assert lease is not None
        served.append(index)
        await asyncio.sleep(0.02)
        await leases.release(lease)

    tasks = []
    for index in range(5):
        tasks.append(asyncio.create_task(waiter(index)))
        await wait_for_waiters(leases, index + 1)
    assert [w["job_id"] for w in (await leases.status())["waiters"]] == [f"job-{i}" for i in range(5)]
    # A newcomer queues behind them.
    late = asyncio.create_task(waiter(99))
    await wait_for_waiters(leases, 6)
    await leases.release(first)
    await asyncio.wait_for(asyncio.gather(*tasks, late), timeout=30)
    assert served == [0, 1, 2, 3, 4, 99]


async def test_dead_waiter_drops_out_of_the_queue(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5, waiter_ttl_s=1.0)
    # What a waiter that crashed mid-wait leaves behind: first in line, no longer polling. Its place
    # lasts 2 s: long enough that the first look below surely comes before it lapses.
    lapses_at_ms = await redis_now_ms(redis) + 2000
    await redis.zadd(NAMES.gpu_waiters, {"dead-token": 0})
    await redis.zadd(NAMES.gpu_waiter_expiry, {"dead-token": lapses_at_ms})
    assert await leases.acquire("alive", "job-a", wait_s=0) is None  # it still holds its place
    lease = await leases.acquire("alive", "job-a", wait_s=30)  # ... until it lapses, not for ever
    assert lease is not None
    assert lease.acquired_at_ms >= lapses_at_ms
    assert await redis.zcard(NAMES.gpu_waiters) == 0


async def test_expired_lease_is_reclaimed_by_another_owner(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=1)
    crashed = await leases.acquire("crashed-worker", "job-1", wait_s=0)
    assert crashed is not None
    assert await leases.acquire("other", "job-2", wait_s=0) is None
    other = await leases.acquire("other", "job-2", wait_s=30)
    assert other is not None
    assert other.acquired_at_ms >= crashed.expires_at_ms  # reclaimed once lapsed, not before
    assert other.slot == crashed.slot and other.token != crashed.token
    # The old holder wakes up: it can neither renew nor release what is now someone else's.
    assert await leases.renew(crashed) is False
    assert await leases.release(crashed) is False
    status = await leases.status()
    assert status["slots"][0]["owner"] == "other"
    assert await leases.renew(other) is True


async def test_renew_after_expiry_is_refused(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=1)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    assert await leases.renew(lease) is True
    await wait_past(redis, lease.expires_at_ms)
    assert await leases.renew(lease) is False
    assert (await leases.status())["slots"][0]["state"] == "free"


async def test_renew_extends_expiry(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=1.5)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    first_expiry = lease.expires_at_ms
    renewals = 0
    # Renewed every 0.25 s (a 1.25 s margin for a busy machine) until it outlives its first TTL.
    while await redis_now_ms(redis) <= first_expiry + 250:
        await asyncio.sleep(0.25)
        before = lease.expires_at_ms
        assert await leases.renew(lease) is True
        assert lease.expires_at_ms > before
        renewals += 1
    assert renewals >= 2
    assert (await leases.status())["slots"][0]["owner"] == "w"


async def test_release_by_a_stranger_is_refused(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    lease = await leases.acquire("owner", "job", wait_s=0)
    assert lease is not None
    stranger = Lease(
        lease.slot, lease.device, "not-the-token", "stranger", "job-x", lease.acquired_at_ms, lease.expires_at_ms
    )
    assert await leases.release(stranger) is False
    assert await leases.renew(stranger) is False
    slot = (await leases.status())["slots"][0]
    assert (slot["state"], slot["owner"], slot["job_id"]) == ("held", "owner", "job")
    assert await leases.acquire("third", "job-3", wait_s=0) is None


async def test_release_is_idempotent(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    lease = await leases.acquire("owner", "job", wait_s=0)
    assert lease is not None
    assert await leases.release(lease) is True
    assert await leases.release(lease) is False
    assert await leases.renew(lease) is False
    again = await leases.acquire("next", "job-2", wait_s=0)
    assert again is not None
    assert await leases.release(lease) is False  # the old token cannot free the new holder's slot
    assert (await leases.status())["slots"][0]["owner"] == "next"


async def test_expiry_comes_from_the_redis_clock(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    leases = GpuLeases(redis, ["0:0", "0:1"], ttl_s=30)
    before = await redis_now_ms(redis)
    # A wildly wrong local clock (years ahead) changes nothing: only Redis TIME counts.
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    after = await redis_now_ms(redis)
    assert before + 30_000 <= lease.expires_at_ms <= after + 30_000
    assert before <= lease.acquired_at_ms <= after
    status = await leases.status()
    held = status["slots"][0]
    assert held["expires_at_ms"] == lease.expires_at_ms
    assert held["acquired_at_ms"] == lease.acquired_at_ms
    assert after <= status["now_ms"] <= await redis_now_ms(redis)
    assert await leases.renew(lease) is True
    monkeypatch.setattr(time, "time", lambda: 0.0)
    assert await leases.renew(lease) is True
    assert await leases.release(lease) is True


async def test_status_shows_holders_and_waiters(redis: Redis) -> None:
    leases = GpuLeases(redis, slot_names([0, 1], 1), ttl_s=5)
    a = await leases.acquire("worker-a", "job-a", wait_s=0)
    b = await leases.acquire("worker-b", "job-b", wait_s=0)
    assert a is not None and b is not None
    assert {a.device, b.device} == {0, 1}
    waiting = [asyncio.create_task(leases.acquire(f"worker-{n}", f"job-{n}", wait_s=30)) for n in "cd"]
    await wait_for_waiters(leases, 2)
    status = await leases.status()
    by_slot = {s["slot"]: s for s in status["slots"]}
    assert by_slot[a.slot]["owner"] == "worker-a" and by_slot[a.slot]["job_id"] == "job-a"
    assert by_slot[b.slot]["owner"] == "worker-b" and by_slot[b.slot]["job_id"] == "job-b"
    assert by_slot[a.slot]["state"] == "held" and by_slot[a.slot]["device"] == a.device
    assert [(w["owner"], w["job_id"]) for w in status["waiters"]] == [("worker-c", "job-c"), ("worker-d", "job-d")]
    # A cancelled waiter leaves the queue at once.
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert (await leases.status())["waiters"] == []
    assert await redis.zcard(NAMES.gpu_waiters) == 0


async def test_timed_out_waiter_leaves_the_queue(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    assert await leases.acquire("a", "job-a", wait_s=0) is not None
    assert await leases.acquire("b", "job-b", wait_s=0.2) is None
    assert (await leases.status())["waiters"] == []


async def test_works_with_decoded_responses(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        leases = GpuLeases(client, ["1:0"], ttl_s=5)
        lease = await leases.acquire("w", "job", wait_s=0)
        assert lease is not None and lease.slot == "1:0" and lease.device == 1
        assert (await leases.status())["slots"][0]["owner"] == "w"
        assert await leases.release(lease) is True
    finally:
        await client.aclose()


# --- acquire_device ----------------------------------------------------------------------------


def test_acquire_device_without_gpus_uses_cpu_at_once() -> None:
    # Driven by hand, without an event loop: it returns on the first step, never waiting on anything.
    step = acquire_device(None, "w", "job", wait_s=300, fallback="fail")
    with pytest.raises(StopIteration) as returned:
        step.send(None)
    assert returned.value.value is None


async def test_acquire_device_gets_a_free_slot(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    lease = await acquire_device(leases, "w", "job", wait_s=1, fallback="fail")
    assert lease is not None and lease.device == 0


async def test_acquire_device_falls_back_to_cpu(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    assert await leases.acquire("busy", "job-busy", wait_s=0) is not None
    started = time.monotonic()
    assert await acquire_device(leases, "w", "job", wait_s=0.3, fallback="cpu") is None
    assert 0.3 <= time.monotonic() - started < 30  # it waited its wait_s, then gave up


async def test_acquire_device_fail_raises(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    assert await leases.acquire("busy", "job-busy", wait_s=0) is not None
    with pytest.raises(GpuUnavailable, match="SEMANTIK_GPU_FALLBACK=fail"):
        await acquire_device(leases, "w", "job", wait_s=0.2, fallback="fail")
    assert (await leases.status())["waiters"] == []


async def test_acquire_device_wait_keeps_waiting(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=30)
    busy = await leases.acquire("busy", "job-busy", wait_s=0)
    assert busy is not None
    waiting = asyncio.create_task(acquire_device(leases, "w", "job", wait_s=0.1, fallback="wait"))
    try:
        await wait_for_waiters(leases, 1)
        await asyncio.sleep(0.5)  # five times its wait_s: "cpu" or "fail" would have given up by now
        assert not waiting.done()
        assert [w["owner"] for w in (await leases.status())["waiters"]] == ["w"]  # still in line
        await leases.release(busy)
        lease = await asyncio.wait_for(waiting, timeout=30)
    finally:
        waiting.cancel()
    assert lease is not None and lease.owner == "w"


# --- hold --------------------------------------------------------------------------------------


async def test_hold_renews_and_releases(redis: Redis) -> None:
    # A 3 s TTL renewed every 1 s: a busy machine may stall this process for up to 2 s.
    leases = GpuLeases(redis, ["0:0"], ttl_s=3)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    first_expiry = lease.expires_at_ms
    async with hold(leases, lease) as lost:
        # Still held after its first expiry on the Redis clock: only renewals can have done that.
        await wait_past(redis, first_expiry)
        assert not lost.is_set()
        slot = (await leases.status())["slots"][0]
        assert (slot["state"], slot["owner"]) == ("held", "w")
        assert lease.expires_at_ms > first_expiry
    assert (await leases.status())["slots"][0]["state"] == "free"


async def test_hold_sets_lost_when_the_slot_is_taken(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=3)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    async with hold(leases, lease) as lost:
        # Someone wipes our entry (an operator, a flush) and another worker takes the slot.
        await redis.delete(NAMES.gpu_holder_info, NAMES.gpu_holders)
        thief = await leases.acquire("thief", "job-t", wait_s=0)
        assert thief is not None
        await asyncio.wait_for(lost.wait(), timeout=30)  # at the next renewal, 1 s away
    # Leaving the block must not free the thief's slot.
    assert (await leases.status())["slots"][0]["owner"] == "thief"


@pytest.mark.parametrize("failure", ["redis_stopped", "redis_frozen", "loop_stalled"])
async def test_hold_sets_lost_when_renewal_fails(private_redis: RedisServer, own_redis: Redis, failure: str) -> None:
    """No renewal gets through while the lease is surely valid: the job is told at once, and the
    slot goes to the next worker. Real failures: Redis stopped (connections refused), Redis frozen
    (SIGSTOP: no reply and no error, as on a half-open link), and this process stalled past the TTL."""
    leases = GpuLeases(own_redis, ["0:0"], ttl_s=1)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    async with hold(leases, lease) as lost:
        if failure == "redis_stopped":
            await own_redis.save()  # it comes back with its data, as with persistence (compose: appendonly)
            await asyncio.to_thread(private_redis.stop)
            await asyncio.wait_for(lost.wait(), timeout=30)
            await wait_until(lambda: past_expiry_on_this_host(lease), 30, "the lease's expiry")
            await asyncio.to_thread(private_redis.start)
        elif failure == "redis_frozen":
            with frozen(private_redis):
                await asyncio.wait_for(lost.wait(), timeout=30)
                await wait_until(lambda: past_expiry_on_this_host(lease), 30, "the lease's expiry")
        else:
            while not past_expiry_on_this_host(lease):
                time.sleep(0.05)  # blocks the event loop: nothing of this process runs meanwhile
            await asyncio.wait_for(lost.wait(), timeout=30)
        # Redis is back: the lease lapsed on its clock, and another worker gets the slot.
        other = await leases.acquire("other", "job-2", wait_s=30)
        assert other is not None
    # Leaving the block must not free the other worker's slot.
    slot = (await leases.status())["slots"][0]
    assert (slot["state"], slot["owner"]) == ("held", "other")


async def test_hold_survives_a_brief_redis_outage(private_redis: RedisServer, own_redis: Redis) -> None:
    # Renewed every 5/3 s, retried every 0.5 s after a failure: the outage below lasts about one
    # renewal period plus a restart, well inside the 5 s TTL.
    leases = GpuLeases(own_redis, ["0:0"], ttl_s=5)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    with capture_logs() as logs:

        def renewal_failed() -> bool:
            return any(entry["event"] == "gpu_lease_renew_failed" for entry in logs)

        async with hold(leases, lease) as lost:
            await own_redis.save()  # it comes back with its data, as with persistence (compose: appendonly)
            await asyncio.to_thread(private_redis.stop)
            await wait_until(renewal_failed, 30, "a renewal to fail while Redis is down")
            expiry_before = lease.expires_at_ms
            await asyncio.to_thread(private_redis.start)
            await wait_until(lambda: lease.expires_at_ms > expiry_before, 30, "a renewal once Redis is back")
            assert not lost.is_set()
            slot = (await leases.status())["slots"][0]
            assert (slot["state"], slot["owner"]) == ("held", "w")
    assert (await leases.status())["slots"][0]["state"] == "free"
    assert not [entry for entry in logs if entry["event"] in ("gpu_lease_lapsed", "gpu_lease_lost")]


async def test_cancelled_while_releasing_still_releases(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    real_release = leases.release
    releasing = asyncio.Event()

    async def slow_release(lease: Lease) -> bool:
        releasing.set()
        await asyncio.sleep(0.2)
        return await real_release(lease)

    monkeypatch.setattr(leases, "release", slow_release)
    after_block: list[bool] = []

    async def job() -> None:
        async with hold(leases, lease):
            pass
        after_block.append(True)

    task = asyncio.create_task(job())
    await asyncio.wait_for(releasing.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The release ran to the end, and the cancellation was not swallowed on the way.
    assert after_block == []
    assert (await leases.status())["slots"][0]["state"] == "free"


# --- OOM backoff (fake GPU) --------------------------------------------------------------------


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError; the code under test matches it by name only."""


def fake_encode_with_memory_limit(limit: int, calls: list[int]) -> Callable[[list[str]], npt.NDArray[np.float32]]:
    """A FAKE GPU encoder (no GPU on the test machine): raises OutOfMemoryError for batches larger
    than ``limit``, else returns one 2-float vector per text (text index and length)."""

    def encode(texts: list[str]) -> npt.NDArray[np.float32]:
        calls.append(len(texts))
        if len(texts) > limit:
            raise OutOfMemoryError(f"CUDA out of memory: batch of {len(texts)} > {limit}")
        return np.array([[float(t.split("-")[1]), float(len(t))] for t in texts], dtype=np.float32)

    return encode


def test_is_oom() -> None:
    assert is_oom(OutOfMemoryError("boom"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert is_oom(RuntimeError("MPS backend Out Of Memory"))
    assert not is_oom(RuntimeError("device-side assert triggered"))
    assert not is_oom(ValueError("bad input"))


def test_adaptive_batch_halves_on_oom_and_grows_back() -> None:
    texts = [f"t-{i}" for i in range(100)]
    calls: list[int] = []
    emptied: list[int] = []
    batch = AdaptiveBatch(max_size=32, grow_after=3)
    encode = fake_encode_with_memory_limit(10, calls)
    vectors = batch.encode(encode, texts, on_oom=lambda: emptied.append(1))
    assert isinstance(vectors, np.ndarray) and vectors.shape == (100, 2)
    assert vectors[:, 0].tolist() == list(range(100))  # complete and in input order
    assert calls[:3] == [32, 16, 8]  # halved until the batch fits
    assert len(emptied) == calls.count(32) + calls.count(16)  # the cache was emptied after each OOM
    assert batch.size <= 16
    # After three successes in a row it tries the larger size again (and backs off again).
    assert calls[:7] == [32, 16, 8, 8, 8, 16, 8]

    # Once the memory is there again, the size climbs back to the maximum.
    roomy = AdaptiveBatch(max_size=32, grow_after=2)
    roomy.size = 4
    more: list[int] = []
    result = roomy.encode(fake_encode_with_memory_limit(1000, more), texts)
    assert result[:, 0].tolist() == list(range(100))
    assert more[:6] == [4, 4, 8, 8, 16, 16]
    assert roomy.size == 32


def test_adaptive_batch_with_lists() -> None:
    batch = AdaptiveBatch(max_size=8, grow_after=1)
    seen: list[int] = []

    def encode(texts: list[int]) -> list[int]:
        seen.append(len(texts))
        if len(texts) > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [t * 10 for t in texts]

    assert batch.encode(encode, list(range(20))) == [i * 10 for i in range(20)]
    assert seen[:3] == [8, 4, 2]
    assert batch.encode(encode, []) == []


def test_adaptive_batch_oom_at_size_one_is_raised() -> None:
    calls: list[int] = []
    batch = AdaptiveBatch(max_size=4)
    with pytest.raises(OutOfMemoryError):
        batch.encode(fake_encode_with_memory_limit(0, calls), ["t-0", "t-1"])
    assert calls == [2, 1]


def test_adaptive_batch_other_errors_pass_through() -> None:
    batch = AdaptiveBatch(max_size=4)

    def encode(texts: list[str]) -> list[str]:
        raise ValueError("not an OOM")

    with pytest.raises(ValueError):
        batch.encode(encode, ["a", "b"])
    assert batch.size == 4
