"""The House issue's promises: deployments isolated by namespace on one Redis, 503 (never 500) and no
leftovers when Redis is down, a swept run never overwrites the newer run, enums in the API, logs for
a person at a terminal."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from semantik.cli.redis_server import RedisServer
from semantik.domain import EventType, FileStatus, JobStatus
from semantik.gpu.leases import gpu_leases
from semantik.indexing import cron
from semantik.indexing.worker import in_process_worker
from semantik.jobqueue import make_queue
from semantik.logs import configure_logging
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.app import create_app
from tests.conftest import ClientFactory, write

REPO = Path(__file__).resolve().parents[1]
ARQ = Path(sys.executable).parent / "arq"


async def poll(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def job_status(api: TestClient[Any, Any], job_id: str) -> dict[str, Any]:
    return dict(await (await api.get(f"/api/jobs/{job_id}")).json())


async def new_job(api: TestClient[Any, Any], docs: Path) -> str:
    response = await api.post("/api/jobs", json={"collection": "c", "directory": str(docs)})
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


async def finished(api: TestClient[Any, Any], job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        job = await job_status(api, job_id)
        return job if job["status"] not in ("queued", "running") else None

    result: dict[str, Any] = await poll(ended, timeout_s, f"job {job_id} to end")
    return result


# -- two deployments, one Redis ------------------------------------------------------------------


async def test_two_deployments_on_one_redis_see_none_of_each_others_things(
    aiohttp_client: ClientFactory, redis_url: str, tmp_path: Path
) -> None:
    """Jobs, events, workers, GPU leases and cron runs stay inside their SEMANTIK_NAMESPACE."""
    alpha_docs, beta_docs = tmp_path / "alpha-docs", tmp_path / "beta-docs"
    write(alpha_docs / "a.txt", "Alpha keeps its notes about glaciers and fjords.")
    write(beta_docs / "b.txt", "Beta keeps its notes about deserts and dunes.")

    def deployment(namespace: str, docs: Path) -> Settings:
        return Settings(
            namespace=namespace, data_dir=tmp_path / namespace, allowed_roots=[docs], redis_url=redis_url,
            worker_poll_delay_s=0.05, log_format="json", job_heartbeat_ttl_s=1.0,
        )  # fmt: skip

    alpha, beta = deployment("alpha", alpha_docs), deployment("beta", beta_docs)
    alpha_rt, beta_rt = Runtime(alpha), Runtime(beta)
    await alpha_rt.open()
    await beta_rt.open()
    alpha_api = await aiohttp_client(create_app(alpha, runtime=alpha_rt))
    beta_api = await aiohttp_client(create_app(beta, runtime=beta_rt))
    # Alpha's worker runs in this process; beta's is the plain arq CLI in another one.
    alpha_worker = in_process_worker(alpha, alpha_rt)
    alpha_task = asyncio.create_task(alpha_worker.async_run())
    env = {
        **os.environ,
        "SEMANTIK_NAMESPACE": "beta",
        "SEMANTIK_DATA_DIR": str(beta.data_dir),
        "SEMANTIK_ALLOWED_ROOTS": str(beta_docs),
        "SEMANTIK_REDIS_URL": redis_url,
        "SEMANTIK_WORKER_POLL_DELAY_S": "0.05",
        "SEMANTIK_JOB_HEARTBEAT_TTL_S": "1",
        "SEMANTIK_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "beta-worker.log"
    with log_path.open("wb") as log:
        beta_worker = subprocess.Popen(
            [str(ARQ), "workers.main.WorkerSettings"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        async with alpha_api.ws_connect("/api/ws/jobs") as alpha_socket:
            assert (await alpha_socket.receive_json(timeout=10))["type"] == EventType.SNAPSHOT
            # Jobs: each deployment's worker runs its own job (a worker that took the other's job
            # would find no such row in its database and drop it: that job would never finish).
            a_id = await new_job(alpha_api, alpha_docs)
            b_id = await new_job(beta_api, beta_docs)
            assert (await finished(alpha_api, a_id))["status"] == JobStatus.COMPLETED
            beta_job = await finished(beta_api, b_id)
            assert beta_job["status"] == JobStatus.COMPLETED, log_path.read_text()
            assert beta_job["worker_id"].endswith(f":{beta_worker.pid}")

            # Events: alpha's dashboard socket saw alpha's job end and nothing of beta's.
            seen: list[dict[str, Any]] = []
            while not any(e["type"] == EventType.JOB_COMPLETED and e["job_id"] == a_id for e in seen):
                seen.append(await alpha_socket.receive_json(timeout=10))
            assert {event["job_id"] for event in seen} == {a_id}

        # Workers: each monitor lists only its own deployment's workers.
        async def monitor_workers(api: TestClient[Any, Any]) -> list[int]:
            return [int(w["pid"]) for w in (await (await api.get("/api/monitor")).json())["workers"] or []]

        assert await monitor_workers(alpha_api) == [os.getpid()]
        assert await monitor_workers(beta_api) == [beta_worker.pid]

        # GPU leases: the same slot name is held independently in each deployment.
        redis = Redis.from_url(redis_url)
        try:
            alpha_leases = gpu_leases(redis, alpha.model_copy(update={"gpu_devices": "0"}))
            beta_leases = gpu_leases(redis, beta.model_copy(update={"gpu_devices": "0"}))
            assert alpha_leases is not None and beta_leases is not None
            held = await alpha_leases.acquire("alpha-owner", "job-a", wait_s=0)
            assert held is not None
            assert await beta_leases.acquire("beta-owner", "job-b", wait_s=0) is not None  # not blocked by alpha
            alpha_slots = (await alpha_leases.status())["slots"]
            assert [slot.get("owner") for slot in alpha_slots] == ["alpha-owner"]
        finally:
            await redis.aclose()

        # Cron runs: a job orphaned in each deployment (running, its worker gone) is re-queued by
        # that deployment's own sweeper, and both finish; a shared unique cron id would let only
        # one deployment sweep each tick.
        async def orphan(rt: Runtime, docs: Path) -> str:
            job, _ = await rt.jobs.create_job(
                collection="orphans", directory=str(docs), recursive=True, include=None, exclude=None,
                name=None, model=rt.model_name, dim=rt.model_dim,
            )  # fmt: skip
            assert await rt.jobs.start_job(job.id, worker_id="gone:1", device="cpu") is not None
            return job.id

        orphans = [(alpha_api, await orphan(alpha_rt, alpha_docs)), (beta_api, await orphan(beta_rt, beta_docs))]
        for api, job_id in orphans:
            done = await finished(api, job_id, timeout_s=90)
            assert done["status"] == JobStatus.COMPLETED and done["attempts"] == 2, (done, log_path.read_text())
    finally:
        beta_worker.terminate()
        beta_worker.wait(timeout=30)
        await alpha_worker.close()
        alpha_task.cancel()
        await asyncio.gather(alpha_task, return_exceptions=True)
        await alpha_rt.close()
        await beta_rt.close()


# -- Redis down --------------------------------------------------------------------------------------


@pytest.fixture
async def redis_down_api(
    aiohttp_client: ClientFactory, tmp_path: Path, docs: Path
) -> AsyncIterator[tuple[TestClient[Any, Any], Runtime, RedisServer]]:
    """An API (GPUs configured) whose private Redis the test can stop."""
    server = RedisServer(tmp_path / "redis-down")
    server.start()
    settings = Settings(
        data_dir=tmp_path / "data", allowed_roots=[docs], redis_url=server.url, gpu_devices="0", log_format="json"
    )
    runtime = Runtime(settings)
    await runtime.open()
    api = await aiohttp_client(create_app(settings, runtime=runtime))
    yield api, runtime, server
    await runtime.close()
    server.stop()


def assert_unavailable(status: int, body: dict[str, Any]) -> None:
    assert status == 503, body
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]


async def test_every_route_that_needs_redis_answers_503_when_it_is_down(
    redis_down_api: tuple[TestClient[Any, Any], Runtime, RedisServer], docs: Path
) -> None:
    api, _, server = redis_down_api
    write(docs / "a.txt", "some text")
    server.stop()
    for method, path in (("POST", "/api/jobs/ping?timeout_s=1"), ("GET", "/api/gpus")):
        response = await api.request(method, path)
        assert_unavailable(response.status, await response.json())
    response = await api.post("/api/jobs", json={"collection": "fresh", "directory": str(docs)})
    assert_unavailable(response.status, await response.json())
    # A refused request changes nothing: no job row, no collection made for it.
    assert (await (await api.get("/api/jobs")).json())["jobs"] == []
    assert (await (await api.get("/api/collections")).json())["collections"] == []
    assert (await api.get("/api/collections/fresh")).status == 404


async def test_a_retry_refused_while_redis_is_down_leaves_the_job_as_it_was(
    redis_down_api: tuple[TestClient[Any, Any], Runtime, RedisServer], docs: Path
) -> None:
    api, _, server = redis_down_api
    job = await (await api.post("/api/jobs", json={"collection": "c", "directory": str(docs)})).json()
    assert (await api.post(f"/api/jobs/{job['id']}/cancel")).status == 200
    server.stop()
    response = await api.post(f"/api/jobs/{job['id']}/retry")
    assert_unavailable(response.status, await response.json())
    after = await job_status(api, job["id"])
    assert after["status"] == JobStatus.CANCELLED and after["attempts"] == 1 and after["error"] is None


# -- a swept run is superseded ---------------------------------------------------------------------


async def test_a_swept_run_cannot_overwrite_the_newer_run(settings: Settings, docs: Path) -> None:
    """Worker A's heartbeat lapses (stalled, partitioned); the sweeper re-queues the job as a new
    attempt and worker B starts it. When A wakes up, its closing writes change nothing."""
    fast = settings.model_copy(update={"job_heartbeat_ttl_s": 1.0})
    rt = Runtime(fast)
    await rt.open()
    try:
        job, _ = await rt.jobs.create_job(
            collection="c", directory=str(docs), recursive=True, include=None, exclude=None,
            name=None, model=rt.model_name, dim=rt.model_dim,
        )  # fmt: skip
        run_a = await rt.jobs.start_job(job.id, worker_id="a:1", device="cpu")
        assert run_a is not None and run_a["attempts"] == 1
        queue = make_queue(fast)
        try:
            await poll(lambda: cron.sweep_orphans(rt, queue), 15, "the sweeper to re-queue the job")
        finally:
            await queue.aclose(close_connection_pool=True)
        run_b = await rt.jobs.start_job(job.id, worker_id="b:2", device="cpu", arq_job_id=f"{job.id}:run2")
        assert run_b is not None and run_b["attempts"] == 2
        # A finishes, fails, is cancelled, is interrupted: none of it lands.
        assert await rt.jobs.finish_job(job.id, attempt=1) is None
        assert await rt.jobs.fail_job(job.id, "late failure from A", attempt=1) is None
        assert await rt.lifecycle.acknowledge_cancel(job.id, attempt=1) is None
        requeue = rt.lifecycle.requeue(job.id, reason="A stops", new_run=False, from_status="running", attempt=1)
        assert await requeue is None
        current = await rt.jobs.get_job(job.id)
        assert (current.status, current.worker_id, current.error) == (JobStatus.RUNNING, "b:2", None)
        # B's own end lands.
        done = await rt.jobs.finish_job(job.id, attempt=2)
        assert done is not None and done["status"] == JobStatus.COMPLETED
    finally:
        await rt.close()


# -- enums in the API ------------------------------------------------------------------------------


async def test_states_and_event_types_are_published_as_enums(api: TestClient[Any, Any]) -> None:
    spec = await (await api.get("/api/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert schemas["JobStatus"]["enum"] == [status.value for status in JobStatus]
    assert schemas["FileStatus"]["enum"] == [status.value for status in FileStatus]
    assert "file_failed" in schemas["EventType"]["enum"]
    # Routes carry their real status codes and query parameters.
    cancel = spec["paths"]["/api/jobs/{job_id}/cancel"]["post"]["responses"]
    assert {"200", "202"} <= set(cancel)
    listing = {p["name"]: p for p in spec["paths"]["/api/jobs"]["get"]["parameters"]}
    assert set(listing) == {"status", "limit", "offset"}
    assert listing["status"]["schema"]["enum"] == [status.value for status in JobStatus]
    # An unknown state is refused, not silently answered with nothing.
    response = await api.get("/api/jobs?status=finished")
    assert response.status == 422
    assert (await response.json())["error"]["details"][0]["loc"] == ["status"]


async def test_a_failed_file_is_announced_as_file_failed(
    api: TestClient[Any, Any], docs: Path, run_worker: Callable[[], Awaitable[Any]]
) -> None:
    """The event type is ``file_failed`` (it once went out as the file state ``failed``)."""
    write(docs / "ok.txt", "fine text")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    job = await (await api.post("/api/jobs", json={"collection": "c", "directory": str(docs)})).json()
    async with api.ws_connect(f"/api/jobs/{job['id']}/ws") as ws:
        await run_worker()
        types = []
        async for message in ws:
            types.append(json.loads(message.data)["type"])
    assert EventType.FILE_FAILED in types and "failed" not in types


# -- logs for a person at a terminal ----------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_terminal_gets_readable_lines_and_the_sweeper_stays_at_debug(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, log_format="auto")
    primary, replica = os.openpty()
    with open(replica, "w", buffering=1, closefd=True) as terminal:
        configure_logging(settings, stream=terminal)
        structlog.get_logger("semantik.test").info("job_started", job_id="j1")
        logging.getLogger("arq.worker").info("%6.2fs → %s()", 0.01, "semantik:sweep_orphans")
        logging.getLogger("arq.worker").info("%6.2fs → %s()", 0.01, "abc:embed_job")
    # A pty hands written bytes to its reader through the kernel's flip buffer, a moment later:
    # read until the last line is there (or 5 s), not just what the first read() finds.
    output, deadline = "", time.monotonic() + 5
    while "embed_job" not in output and select.select([primary], [], [], max(0.0, deadline - time.monotonic()))[0]:
        output += os.read(primary, 65536).decode()
    os.close(primary)
    assert "job_started" in output and not output.lstrip().startswith("{")  # console rendering, not JSON
    assert "embed_job" in output and "sweep_orphans" not in output
    piped = io.StringIO()
    configure_logging(settings, stream=piped)
    structlog.get_logger("semantik.test").info("job_started", job_id="j2")
    logging.getLogger("arq.worker").info("%6.2fs → %s()", 0.01, "semantik:sweep_orphans")
    lines = [json.loads(line) for line in piped.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["job_started"] and lines[0]["job_id"] == "j2"
    configure_logging(settings.model_copy(update={"log_level": "debug"}), stream=piped)
    logging.getLogger("arq.worker").info("%6.2fs → %s()", 0.01, "semantik:sweep_orphans")
    assert json.loads(piped.getvalue().splitlines()[-1])["level"] == "debug"
