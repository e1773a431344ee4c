"""Jobs with GPUs configured, on a machine without CUDA: the GPU is a FAKE here, named as such.

``FakeGpuRuntime`` maps a leased ``cuda:N`` to the CPU (the only thing that cannot exist on this
machine); everything else is real: the Redis lease semaphore, the worker, the model, Qdrant.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from arq.worker import Worker
from redis.asyncio import Redis

from semantik.app import create_app
from semantik.gpu import gpu_leases
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.worker import worker_options
from tests.conftest import ClientFactory, write


class FakeGpuRuntime(Runtime):
    """A FAKE GPU: records which device index a job leased and runs it on the CPU instead."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.fake_gpu_indexes: list[int] = []

    def device_for(self, gpu_index: int | None) -> str:
        if gpu_index is not None:
            self.fake_gpu_indexes.append(gpu_index)
        return "cpu"


async def fake_gpu_api(
    aiohttp_client: ClientFactory, settings: Settings
) -> tuple[TestClient[Any, Any], FakeGpuRuntime]:
    runtime = FakeGpuRuntime(settings)
    await runtime.open()
    return await aiohttp_client(create_app(settings, runtime=runtime)), runtime


async def test_job_takes_a_gpu_lease_and_gives_it_back(
    aiohttp_client: ClientFactory, settings: Settings, docs: Path
) -> None:
    gpu_settings = settings.model_copy(update={"gpu_devices": "0", "gpu_lease_ttl_s": 5.0})
    api, runtime = await fake_gpu_api(aiohttp_client, gpu_settings)
    for i in range(25):
        write(docs / f"g{i:02}.txt", f"GPU bound text number {i}. " * 200)
    worker = Worker(**worker_options(gpu_settings), ctx={"runtime": runtime}, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        job_id = (await (await api.post("/api/jobs", json={"collection": "g", "directory": str(docs)})).json())["id"]
        deadline = time.monotonic() + 120
        held_by_job = False
        while time.monotonic() < deadline:
            status = await (await api.get("/api/gpus")).json()
            held_by_job = held_by_job or any(s["state"] == "held" and s["job_id"] == job_id for s in status["slots"])
            job = await (await api.get(f"/api/jobs/{job_id}")).json()
            if job["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        assert job["status"] == "completed", job
        assert held_by_job, "the lease was never seen held by the job"
        assert set(runtime.fake_gpu_indexes) == {0}  # the leased device, and only it
        status = await (await api.get("/api/gpus")).json()
        assert status["configured"] and [s["state"] for s in status["slots"]] == ["free"]
        metrics = await (await api.get("/metrics")).text()
        assert "semantik_gpu_slots 1.0" in metrics and "semantik_gpu_slots_in_use 0.0" in metrics
    finally:
        await worker.close()
        task.cancel()
        await runtime.close()


async def test_busy_gpu_falls_back_to_cpu_or_fails_as_configured(
    aiohttp_client: ClientFactory, settings: Settings, docs: Path, redis_url: str
) -> None:
    write(docs / "a.txt", "Waiting for a GPU that never frees up.")
    redis = Redis.from_url(redis_url)
    for fallback, expected in (("cpu", "completed"), ("fail", "failed")):
        gpu_settings = settings.model_copy(update={"gpu_devices": "0", "gpu_wait_s": 0.5, "gpu_fallback": fallback})
        leases = gpu_leases(redis, gpu_settings)
        assert leases is not None
        other = await leases.acquire("another-worker", "another-job", wait_s=1)
        assert other is not None
        api, runtime = await fake_gpu_api(aiohttp_client, gpu_settings)
        try:
            job_id = (
                await (await api.post("/api/jobs", json={"collection": fallback, "directory": str(docs)})).json()
            )["id"]
            worker = Worker(**worker_options(gpu_settings), ctx={"runtime": runtime}, burst=True, handle_signals=False)
            await asyncio.wait_for(worker.async_run(), 120)
            await worker.close()
            job = await (await api.get(f"/api/jobs/{job_id}")).json()
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
            await runtime.close()
    await redis.aclose()
