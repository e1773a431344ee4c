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
from redis.exceptions import ConnectionError as RedisConnectionError

from semantik import gpu
from semantik.gpu import GpuLeases, GpuUnavailable, Lease, acquire_device, hold, parse_devices, slot_names
from semantik.gpu_backoff import AdaptiveBatch, is_oom
from semantik.settings import Settings


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def redis_now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def wait_for_waiters(leases: GpuLeases, count: int, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while len((await leases.status())["waiters"]) < count:
            await asyncio.sleep(0.01)


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
        "import sys; from semantik import gpu, gpu_backoff;"
        "assert gpu.parse_devices('') == [] and gpu.parse_devices('0,1') == [0, 1];"
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


def test_redis_keys_are_namespaced() -> None:
    keys = [value for name, value in vars(gpu).items() if name.endswith("_KEY")]
    assert len(keys) == 6
    assert all(key.startswith("semantik:gpu:") for key in keys)


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
    leases = GpuLeases(redis, ["0:0"], ttl_s=5, waiter_ttl_s=0.3)
    # What a waiter that crashed mid-wait leaves behind: first in line, no longer polling.
    await redis.zadd(gpu.WAITERS_KEY, {"dead-token": 0})
    await redis.zadd(gpu.WAITER_EXPIRY_KEY, {"dead-token": await redis_now_ms(redis) + 300})
    assert await leases.acquire("alive", "job-a", wait_s=0) is None  # it still holds its place
    started = time.monotonic()
    lease = await leases.acquire("alive", "job-a", wait_s=10)
    assert lease is not None
    assert time.monotonic() - started < 5
    assert await redis.zcard(gpu.WAITERS_KEY) == 0


async def test_expired_lease_is_reclaimed_by_another_owner(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=0.3)
    crashed = await leases.acquire("crashed-worker", "job-1", wait_s=0)
    assert crashed is not None
    assert await leases.acquire("other", "job-2", wait_s=0) is None
    other = await leases.acquire("other", "job-2", wait_s=10)
    assert other is not None
    assert other.slot == crashed.slot and other.token != crashed.token
    # The old holder wakes up: it can neither renew nor release what is now someone else's.
    assert await leases.renew(crashed) is False
    assert await leases.release(crashed) is False
    status = await leases.status()
    assert status["slots"][0]["owner"] == "other"
    assert await leases.renew(other) is True


async def test_renew_after_expiry_is_refused(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=0.3)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    assert await leases.renew(lease) is True
    await asyncio.sleep(0.5)
    assert await leases.renew(lease) is False
    assert (await leases.status())["slots"][0]["state"] == "free"


async def test_renew_extends_expiry(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=0.5)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    for _ in range(4):  # 0.8 s in all: longer than the TTL
        await asyncio.sleep(0.2)
        before = lease.expires_at_ms
        assert await leases.renew(lease) is True
        assert lease.expires_at_ms > before
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
    leases = GpuLeases(redis, ["0:0", "0:1"], ttl_s=1)
    before = await redis_now_ms(redis)
    # A wildly wrong local clock (years ahead) changes nothing: only Redis TIME counts.
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    after = await redis_now_ms(redis)
    assert before + 1000 <= lease.expires_at_ms <= after + 1000
    assert before <= lease.acquired_at_ms <= after
    status = await leases.status()
    held = status["slots"][0]
    assert held["expires_at_ms"] == lease.expires_at_ms
    assert held["acquired_at_ms"] == lease.acquired_at_ms
    assert abs(status["now_ms"] - after) < 1000
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
    assert await redis.zcard(gpu.WAITERS_KEY) == 0


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


async def test_acquire_device_without_gpus_uses_cpu_at_once() -> None:
    started = time.monotonic()
    assert await acquire_device(None, "w", "job", wait_s=300, fallback="fail") is None
    assert time.monotonic() - started < 0.05


async def test_acquire_device_gets_a_free_slot(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    lease = await acquire_device(leases, "w", "job", wait_s=1, fallback="fail")
    assert lease is not None and lease.device == 0


async def test_acquire_device_falls_back_to_cpu(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    assert await leases.acquire("busy", "job-busy", wait_s=0) is not None
    started = time.monotonic()
    assert await acquire_device(leases, "w", "job", wait_s=0.3, fallback="cpu") is None
    assert 0.25 <= time.monotonic() - started < 5


async def test_acquire_device_fail_raises(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    assert await leases.acquire("busy", "job-busy", wait_s=0) is not None
    with pytest.raises(GpuUnavailable, match="SEMANTIK_GPU_FALLBACK=fail"):
        await acquire_device(leases, "w", "job", wait_s=0.2, fallback="fail")
    assert (await leases.status())["waiters"] == []


async def test_acquire_device_wait_keeps_waiting(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=5)
    busy = await leases.acquire("busy", "job-busy", wait_s=0)
    assert busy is not None

    async def release_later() -> None:
        await asyncio.sleep(0.5)
        await leases.release(busy)

    releaser = asyncio.create_task(release_later())
    lease = await asyncio.wait_for(acquire_device(leases, "w", "job", wait_s=0.1, fallback="wait"), timeout=10)
    await releaser
    assert lease is not None and lease.owner == "w"


# --- hold --------------------------------------------------------------------------------------


async def test_hold_renews_and_releases(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=0.3)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    async with hold(leases, lease) as lost:
        await asyncio.sleep(1.0)  # more than three TTLs
        assert not lost.is_set()
        assert (await leases.status())["slots"][0]["owner"] == "w"
    assert (await leases.status())["slots"][0]["state"] == "free"


async def test_hold_sets_lost_when_the_slot_is_taken(redis: Redis) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=0.3)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    async with hold(leases, lease) as lost:
        # Someone wipes our entry (an operator, a flush) and another worker takes the slot.
        await redis.delete(gpu.HOLDER_INFO_KEY, gpu.HOLDERS_KEY)
        thief = await leases.acquire("thief", "job-t", wait_s=0)
        assert thief is not None
        await asyncio.wait_for(lost.wait(), timeout=5)
    # Leaving the block must not free the thief's slot.
    assert (await leases.status())["slots"][0]["owner"] == "thief"


@pytest.mark.parametrize("failure", ["late", "errors", "hangs"])
async def test_hold_sets_lost_when_renewal_fails(redis: Redis, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=0.3)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    real_renew = leases.renew

    async def failing_renew(lease: Lease) -> bool:
        if failure == "late":
            await asyncio.sleep(0.5)  # the TTL passes before the renewal reaches Redis
            return await real_renew(lease)
        if failure == "errors":
            raise RedisConnectionError("Redis went away")  # and stays away: retries fail too
        await asyncio.Event().wait()  # a half-open connection: no reply, no error
        return True

    monkeypatch.setattr(leases, "renew", failing_renew)
    async with hold(leases, lease) as lost:
        await asyncio.wait_for(lost.wait(), timeout=5)
    assert (await leases.status())["slots"][0]["state"] == "free"


async def test_hold_survives_a_brief_redis_error(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    leases = GpuLeases(redis, ["0:0"], ttl_s=1.5)
    lease = await leases.acquire("w", "job", wait_s=0)
    assert lease is not None
    real_renew = leases.renew
    attempts: list[bool] = []

    async def flaky_renew(lease: Lease) -> bool:
        attempts.append(True)
        if len(attempts) == 1:
            raise RedisConnectionError("connection reset")
        return await real_renew(lease)

    monkeypatch.setattr(leases, "renew", flaky_renew)
    first_expiry = lease.expires_at_ms
    async with hold(leases, lease) as lost:
        async with asyncio.timeout(10):
            while lease.expires_at_ms == first_expiry:  # the retry renewed it
                await asyncio.sleep(0.02)
        assert not lost.is_set()
        assert (await leases.status())["slots"][0]["owner"] == "w"
    assert len(attempts) >= 2


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
