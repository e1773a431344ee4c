"""Jobs with GPUs configured, on a machine without CUDA: the GPU is a FAKE here, named as such.

``FakeGpuRuntime`` maps a leased ``cuda:N`` to the CPU (the only thing that cannot exist on this
machine); everything else is real: the Redis lease semaphore, the worker, the model, Qdrant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from semantik.gpu.leases import gpu_leases
from semantik.settings import Settings
from tests.conftest import ApiFactory, WorkerStarter
from tests.helpers import FakeGpuRuntime, job_view, new_job, run_burst, wait_until, write


async def fake_gpu_api(make_api: ApiFactory, **overrides: Any) -> tuple[TestClient[Any, Any], FakeGpuRuntime]:
    api, runtime = await make_api(cls=FakeGpuRuntime, gpu_devices="0", **overrides)
    assert isinstance(runtime, FakeGpuRuntime)
    return api, runtime


async def test_job_takes_a_gpu_lease_and_gives_it_back(
    make_api: ApiFactory, start_worker: WorkerStarter, docs: Path
) -> None:
    # A TTL far above the renewal period (ttl/3): a busy machine must not make the job lose its lease.
    api, runtime = await fake_gpu_api(make_api, gpu_lease_ttl_s=30.0)
    for i in range(25):
        write(docs / f"g{i:02}.txt", f"GPU bound text number {i}. " * 200)
    start_worker(runtime)
    job_id = await new_job(api, docs, "g")
    held_by_job = False

    async def finished_watching_the_lease() -> dict[str, Any] | None:
        nonlocal held_by_job
        status = await (await api.get("/api/gpus")).json()
        held_by_job = held_by_job or any(s["state"] == "held" and s["job_id"] == job_id for s in status["slots"])
        job = await job_view(api, job_id)
        return job if job["status"] not in ("queued", "running") else None

    job = await wait_until(finished_watching_the_lease, 120, "the job to finish")
    assert job["status"] == "completed", job
    assert held_by_job, "the lease was never seen held by the job"
    assert set(runtime.fake_gpu_indexes) == {0}  # the leased device, and only it
    status = await (await api.get("/api/gpus")).json()
    assert status["configured"] and [s["state"] for s in status["slots"]] == ["free"]
    metrics = await (await api.get("/metrics")).text()
    assert "semantik_gpu_slots 1.0" in metrics and "semantik_gpu_slots_in_use 0.0" in metrics


async def test_busy_gpu_falls_back_to_cpu_or_fails_as_configured(
    make_api: ApiFactory, settings: Settings, docs: Path, redis_url: str
) -> None:
    write(docs / "a.txt", "Waiting for a GPU that never frees up.")
    redis = Redis.from_url(redis_url)
    try:
        for fallback, expected in (("cpu", "completed"), ("fail", "failed")):
            gpu_settings = settings.model_copy(update={"gpu_devices": "0", "gpu_wait_s": 0.5, "gpu_fallback": fallback})
            leases = gpu_leases(redis, gpu_settings)
            assert leases is not None
            other = await leases.acquire("another-worker", "another-job", wait_s=1)
            assert other is not None
            try:
                # Each case on its own data dir: the first one's runtime stays open (and holds its store).
                api, runtime = await fake_gpu_api(
                    make_api, gpu_wait_s=0.5, gpu_fallback=fallback, data_dir=settings.data_dir / fallback
                )
                job_id = await new_job(api, docs, fallback)
                await run_burst(runtime, timeout_s=120)
                job = await job_view(api, job_id)
                assert job["status"] == expected, job
                assert runtime.fake_gpu_indexes == []  # it never touched the (fake) GPU
                if fallback == "cpu":
                    assert job["device"].startswith("cpu/")
                else:
                    assert "GPU" in job["error"]
                slots = (await (await api.get("/api/gpus")).json())["slots"]
                assert slots[0]["owner"] == "another-worker"  # the holder kept its slot throughout
            finally:
                await leases.release(other)
    finally:
        await redis.aclose()
