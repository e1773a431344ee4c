"""Cancel, retry, the orphan sweeper and the retention cleanup, with a real worker and real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from arq.constants import result_key_prefix
from arq.worker import Worker

from semantik import maintenance
from semantik.queue import make_queue
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.worker import worker_options
from tests.conftest import write


def long_corpus(docs: Path, files: int = 40) -> None:
    for i in range(files):
        write(docs / f"part{i:03}.txt", f"Section {i}: a long passage about subject {i} and its history. " * 120)


async def job_state(api: TestClient[Any, Any], job_id: str) -> dict[str, Any]:
    return dict(await (await api.get(f"/api/jobs/{job_id}")).json())


async def wait_for(api: TestClient[Any, Any], job_id: str, predicate: Any, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = await job_state(api, job_id)
        if predicate(job):
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)


@pytest.fixture
async def worker(settings: Settings, runtime: Runtime) -> AsyncIterator[Worker]:
    w = Worker(**worker_options(settings), ctx={"runtime": runtime}, handle_signals=False)
    task = asyncio.create_task(w.async_run())
    yield w
    await w.close()
    task.cancel()


async def create(api: TestClient[Any, Any], docs: Path, collection: str = "life") -> str:
    response = await api.post("/api/jobs", json={"collection": collection, "directory": str(docs)})
    assert response.status == 201
    return str((await response.json())["id"])


async def test_cancel_queued_job(api: TestClient[Any, Any], docs: Path, run_worker: Any) -> None:
    write(docs / "a.txt", "alpha")
    job_id = await create(api, docs)
    response = await api.post(f"/api/jobs/{job_id}/cancel")
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    await run_worker()  # the queue entry is still there; the worker must not run it
    job = await job_state(api, job_id)
    assert (job["status"], job["files_total"], job["started_at"]) == ("cancelled", 0, None)
    again = await api.post(f"/api/jobs/{job_id}/cancel")
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "job_finished"


async def test_cancel_running_job_stops_fast_and_keeps_what_it_indexed(
    api: TestClient[Any, Any], docs: Path, runtime: Runtime, worker: Worker
) -> None:
    long_corpus(docs, files=60)
    job_id = await create(api, docs)
    await wait_for(api, job_id, lambda j: j["files_done"] >= 2)
    asked = time.monotonic()
    response = await api.post(f"/api/jobs/{job_id}/cancel")
    assert response.status == 202
    assert (await response.json())["cancel_requested_at"]
    job = await wait_for(api, job_id, lambda j: j["status"] == "cancelled", timeout_s=30)
    stopped_s = time.monotonic() - asked
    print(f"cancel_latency_s={stopped_s:.2f}")
    assert stopped_s < 5, stopped_s  # the issue asks for 2 s; allow for a loaded CI machine
    assert 2 <= job["files_done"] < 60 and job["finished_at"]
    # What was indexed stays, exactly: every done file's chunks are points, nothing more.
    assert await runtime.vectors.count("life") == job["chunks"] > 0
    assert (await api.post(f"/api/jobs/{job_id}/cancel")).status == 409

    # Retry processes only what is not done, and ends with exactly a clean run's vectors.
    retried = await api.post(f"/api/jobs/{job_id}/retry")
    assert retried.status == 202
    assert (await retried.json())["attempts"] == 2
    done = await wait_for(api, job_id, lambda j: j["status"] == "completed")
    assert done["files_done"] == 60
    clean = await create(api, docs, collection="clean")
    clean_job = await wait_for(api, clean, lambda j: j["status"] == "completed")
    assert await runtime.vectors.count("life") == await runtime.vectors.count("clean") == clean_job["chunks"]
    assert done["chunks"] == clean_job["chunks"]


async def test_retry_a_failed_job(api: TestClient[Any, Any], docs: Path, run_worker: Any) -> None:
    target = docs / "moving"
    write(target / "a.txt", "The quick brown fox jumps over the lazy dog.")
    job_id = await create(api, target)
    (target / "a.txt").rename(docs / "a.txt")
    target.rmdir()
    await run_worker()
    assert (await job_state(api, job_id))["status"] == "failed"
    not_yet = await api.post(f"/api/jobs/{job_id}/retry")
    assert not_yet.status == 202
    target.mkdir()
    (docs / "a.txt").rename(target / "a.txt")
    await run_worker()
    job = await job_state(api, job_id)
    assert (job["status"], job["files_done"], job["attempts"], job["error"]) == ("completed", 1, 2, None)
    refused = await api.post(f"/api/jobs/{job_id}/retry")
    assert refused.status == 409
    assert (await refused.json())["error"]["code"] == "not_retryable"
    assert (await api.post("/api/jobs/missing/retry")).status == 404


async def test_retry_a_job_that_completed_with_errors(api: TestClient[Any, Any], docs: Path, run_worker: Any) -> None:
    write(docs / "fine.txt", "A note that indexes without trouble. " * 10)
    broken = docs / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 truncated")
    fixable = docs / "fixable.docx"
    fixable.write_bytes(b"PK\x03\x04 not a docx yet")
    job_id = await create(api, docs)
    await run_worker()
    first = await job_state(api, job_id)
    assert (first["status"], first["files_done"], first["files_failed"]) == ("completed_with_errors", 1, 2)

    # The user deletes one bad file, replaces the other with a good one, and retries.
    broken.unlink()
    fixable.unlink()
    write(docs / "fixable.txt", "The fixed version, as plain text. " * 10)
    assert (await api.post(f"/api/jobs/{job_id}/retry")).status == 202
    await run_worker()
    job = await job_state(api, job_id)
    listing = await (await api.get(f"/api/jobs/{job_id}/files")).json()
    files = {Path(f["path"]).name: (f["status"], f["error"]) for f in listing["files"]}
    assert job["status"] == "completed", (job, files)
    assert (job["files_done"], job["files_failed"], job["files_skipped"], job["attempts"]) == (2, 0, 2, 2)
    assert files["fine.txt"] == files["fixable.txt"] == ("done", None)
    for gone in ("broken.pdf", "fixable.docx"):
        assert files[gone][0] == "skipped" and "no longer found" in files[gone][1]
    refused = await api.post(f"/api/jobs/{job_id}/retry")  # nothing left to do
    assert refused.status == 409


async def test_sweeper_requeues_an_orphaned_job(
    api: TestClient[Any, Any], docs: Path, settings: Settings, run_worker: Any
) -> None:
    write(docs / "a.txt", "Orphans are picked up again.")
    fast = settings.model_copy(update={"job_heartbeat_ttl_s": 1.0})
    rt = Runtime(fast)
    await rt.open()
    queue = make_queue(fast)
    try:
        job_id = await create(api, docs)
        # A worker took it and died at once: running, no heartbeat ever written.
        assert await rt.jobs.start_job(job_id, worker_id="dead-host:1", device="cpu/fp32") is not None
        await rt.db.execute(
            "UPDATE jobs SET started_at = ? WHERE id = ?",
            ((datetime.now(UTC) - timedelta(minutes=5)).isoformat(), job_id),
        )
        assert await maintenance.sweep_orphans(rt, queue) == []  # first sight: only a suspect
        await asyncio.sleep(1.2)
        assert await maintenance.sweep_orphans(rt, queue) == [job_id]
        job = await job_state(api, job_id)
        assert (job["status"], job["attempts"]) == ("queued", 2)
        assert "heartbeat" in job["error"]
        assert await queue.zscore(fast.queue_name, f"{job_id}:run2") is not None
        assert await queue.zscore(fast.queue_name, job_id) is None  # the dead run's entry is gone
    finally:
        await queue.aclose()
        await rt.close()
    await run_worker()
    assert (await job_state(api, job_id))["status"] == "completed"


async def test_sweeper_requeues_a_queued_job_that_redis_lost(
    api: TestClient[Any, Any], docs: Path, settings: Settings, run_worker: Any, redis_url: str
) -> None:
    write(docs / "a.txt", "Lost and found.")
    job_id = await create(api, docs)
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()  # Redis restarted without persistence
    await client.aclose()
    fast = settings.model_copy(update={"job_heartbeat_ttl_s": 1.0})
    rt = Runtime(fast)
    await rt.open()
    queue = make_queue(fast)
    try:
        await asyncio.sleep(1.1)
        assert await maintenance.sweep_orphans(rt, queue) == []
        await asyncio.sleep(1.1)
        assert await maintenance.sweep_orphans(rt, queue) == [job_id]
    finally:
        await queue.aclose()
        await rt.close()
    await run_worker()
    assert (await job_state(api, job_id))["status"] == "completed"


async def test_cleanup_removes_exactly_the_old_finished_jobs(
    api: TestClient[Any, Any], docs: Path, runtime: Runtime, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write(docs / "a.txt", "retention")
    ids = [await create(api, docs) for _ in range(5)]
    now = datetime.now(UTC)
    ages_days = {ids[0]: 10, ids[1]: 8, ids[2]: 3}  # ids[3] finished just now; ids[4] still queued
    for job_id in ids[:4]:
        await runtime.jobs.finish_job(job_id)
    for job_id, days in ages_days.items():
        when = (now - timedelta(days=days)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        await runtime.db.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (when, job_id))
    await runtime.db.execute("UPDATE jobs SET created_at = '2000-01-01T00:00:00Z' WHERE id = ?", (ids[4],))
    queue = make_queue(runtime.settings)
    try:
        for job_id in ids:
            await queue.set(result_key_prefix + job_id, b"result")
        removed = await maintenance.cleanup_finished_jobs(runtime, queue)
        assert sorted(removed) == sorted(ids[:2])
        remaining = [job["id"] for job in (await (await api.get("/api/jobs")).json())["jobs"]]
        assert sorted(remaining) == sorted(ids[2:])
        for job_id in ids:
            assert bool(await queue.exists(result_key_prefix + job_id)) == (job_id not in ids[:2])
    finally:
        await queue.aclose()
    assert (await api.get(f"/api/jobs/{ids[0]}")).status == 404
    assert "jobs_cleaned_up" in capsys.readouterr().out


async def test_qdrant_outage_inside_a_job_retries_with_backoff_and_completes(
    api: TestClient[Any, Any], docs: Path, runtime: Runtime, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: the vector store refuses the first two upserts (as an unreachable Qdrant does)."""
    from semantik.errors import Unavailable

    long_corpus(docs, files=6)
    real_upsert = runtime.vectors.upsert_file
    refusals = {"left": 2}

    async def flaky_upsert(*args: Any, **kwargs: Any) -> None:
        if refusals["left"] > 0:
            refusals["left"] -= 1
            raise Unavailable("Qdrant is unreachable (injected)")
        await real_upsert(*args, **kwargs)

    monkeypatch.setattr(runtime.vectors, "upsert_file", flaky_upsert)
    job_id = await create(api, docs)
    requeued = await wait_for(api, job_id, lambda j: j["status"] == "queued" and j["error"], timeout_s=60)
    assert "retrying in" in requeued["error"] and "injected" in requeued["error"]
    done = await wait_for(api, job_id, lambda j: j["status"] == "completed", timeout_s=120)
    assert done["files_done"] == 6 and done["error"] is None
    assert await runtime.vectors.count("life") == done["chunks"]  # nothing lost, nothing twice
