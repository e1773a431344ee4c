"""README promises that had no test yet, each checked the way a user would notice it.

Everything here is real: redis-server processes, SQLite files, embedded Qdrant, the real model,
`semantik up` and the `semantik` CLI as subprocesses. The only fake is the GPU
(``FakeGpuRuntime``, as in tests/test_gpu_jobs.py): a leased ``cuda:N`` runs on the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from arq.worker import Worker
from redis.asyncio import Redis

from semantik.cli.redis_server import free_port
from semantik.domain import TERMINAL_STATES, EventType, JobStatus
from semantik.events.hub import EventHub, Listener
from semantik.events.publish import PROGRESS_INTERVAL_S, EventPublisher, envelope
from semantik.gpu.leases import GpuLeases
from semantik.indexing.chunk import chunker_for
from semantik.indexing.worker import in_process_worker
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.store.edge import stored_point_ids
from semantik.web.app import create_app
from semantik.web.appkeys import HUB
from tests.conftest import ClientFactory, write
from tests.helpers import FakeGpuRuntime, count_points, read_until_closed, wait_for_job

REPO = Path(__file__).resolve().parents[1]
RECEIVE_TIMEOUT_S = 60.0
ServerFactory = Callable[..., Awaitable[TestServer]]


# -- helpers -------------------------------------------------------------------------------------


def assert_error_shape(body: Any, code: str | None = None) -> dict[str, Any]:
    """The one error shape: ``{"error": {"code", "message", "details"?}}``."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and {"code", "message"} <= set(error) <= {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


async def job_of(api: TestClient[Any, Any], job_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/jobs/{job_id}")
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def new_job(api: TestClient[Any, Any], directory: Path, collection: str) -> str:
    response = await api.post("/api/jobs", json={"collection": collection, "directory": str(directory)})
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


@contextlib.asynccontextmanager
async def watching(api: TestClient[Any, Any], job_id: str) -> AsyncIterator[asyncio.Task[list[dict[str, Any]]]]:
    """The job's WebSocket, from its snapshot: a task that returns every message until the socket closes."""
    ws = await api.ws_connect(f"/api/jobs/{job_id}/ws")
    try:
        snapshot = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert snapshot["type"] == EventType.SNAPSHOT

        async def rest() -> list[dict[str, Any]]:
            return [snapshot, *await read_until_closed(ws)]

        task = asyncio.create_task(rest())
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await ws.close()


@contextlib.asynccontextmanager
async def worker_running(settings: Settings, runtime: Runtime) -> AsyncIterator[Worker]:
    """An arq worker running for the whole block in this process, sharing ``runtime`` (as `semantik up` does)."""
    worker = in_process_worker(settings, runtime)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        # A job's events can end before arq has filed its result: let what runs finish (it is quick
        # once the job ended), so that close() does not cancel it. A test that failed mid-job stops it.
        worker.allow_pick_jobs = False
        deadline = time.monotonic() + 15
        while any(not t.done() for t in worker.tasks.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        idle = all(t.done() for t in worker.tasks.values())
        try:
            await worker.close()
        except asyncio.CancelledError:
            if idle:
                raise
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any SEMANTIK_* variable, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEMANTIK_")}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def topic_corpus(directory: Path, files: int, words: int) -> list[str]:
    """``files`` distinct text files of about ``words`` words each; returns their texts."""
    texts = []
    for i in range(files):
        sentence = f"Record {i} describes shipment number {i} and the warehouse shelf {i * 7} it went to. "
        text = sentence * max(1, words // len(sentence.split()))
        write(directory / f"record{i:03}.txt", text)
        texts.append(text)
    return texts


def iso_s(ts: str) -> float:
    """An event's ``ts`` as seconds since the epoch."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


LIGHTHOUSE = "The lighthouse keeper polished the brass lens every evening before lighting the lamp for the ships."


def stored_points(settings: Settings, collection: str) -> tuple[int, int]:
    """(points, distinct ids) in the embedded store, read once the runtime has let it go."""
    ids = stored_point_ids(settings.vectors_path, collection)
    return len(ids), len(set(ids))


# -- 1. `semantik up` restarted re-queues an interrupted job ---------------------------------------


class UpProcess:
    """`python -m semantik.cli up` in its own session: killing the group kills its private redis-server too."""

    def __init__(self, data_dir: Path, docs: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = clean_env(
            SEMANTIK_DATA_DIR=str(data_dir),
            SEMANTIK_ALLOWED_ROOTS=str(docs),
            SEMANTIK_PORT=str(self.port),
            SEMANTIK_LOG_FORMAT="json",
            SEMANTIK_JOB_HEARTBEAT_TTL_S="2",
            SEMANTIK_WORKER_MAX_JOBS="1",
            SEMANTIK_WORKER_POLL_DELAY_S="0.05",
        )
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "semantik.cli", "up"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        self.kill_group()  # whatever is left of it, its redis-server included

    async def wait_ready(self, session: aiohttp.ClientSession, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, f"`semantik up` exited:\n{self.log_tail()}"
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(self.url + "/api/health") as response:
                    if response.status == 200:
                        return
            assert time.monotonic() < deadline, f"`semantik up` did not become healthy:\n{self.log_tail()}"
            await asyncio.sleep(0.1)

    async def job(self, session: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
        async with session.get(f"{self.url}/api/jobs/{job_id}") as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())

    async def wait_job(
        self,
        session: aiohttp.ClientSession,
        job_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout_s: float = 120,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = await self.job(session, job_id)
            if predicate(job):
                return job
            assert time.monotonic() < deadline, f"timed out; job is {job}\n{self.log_tail()}"
            await asyncio.sleep(0.05)


async def test_up_restarted_after_kill_9_requeues_the_interrupted_and_the_queued_job(tmp_path: Path) -> None:
    """One `up` is killed (SIGKILL, with its private Redis) while job A runs and job B waits behind it
    (one job at a time); a new `up` on the same data dir finishes both, losing and duplicating nothing."""
    docs = tmp_path / "docs"
    files = 24
    topic_corpus(docs / "big", files, words=500)
    write(docs / "big" / "lighthouse.txt", LIGHTHOUSE)
    for i in range(3):
        write(docs / "small" / f"note{i}.txt", f"Small note {i} about the quarterly budget review meeting {i}.")
    data_dir = tmp_path / "data"
    started: list[UpProcess] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            first = UpProcess(data_dir, docs, tmp_path / "up1.log")
            started.append(first)
            await first.wait_ready(session)
            async with session.post(
                first.url + "/api/jobs", json={"collection": "restart", "directory": str(docs / "big")}
            ) as response:
                assert response.status == 201, await response.text()
                job_a = str((await response.json())["id"])
            await first.wait_job(
                session,
                job_a,
                lambda j: (j["status"] == "running" and j["files_done"] >= 1) or j["status"] in TERMINAL_STATES,
            )
            async with session.post(
                first.url + "/api/jobs", json={"collection": "restart", "directory": str(docs / "small")}
            ) as response:
                assert response.status == 201, await response.text()
                job_b = str((await response.json())["id"])
            waiting = await first.job(session, job_b)
            running = await first.job(session, job_a)
            first.kill_group()  # `kill -9` on the whole box: server, worker and the private redis-server
            assert running["status"] == "running", f"job A was not interrupted mid-run: {running}"
            assert 1 <= running["files_done"] < files + 1, running
            assert waiting["status"] == "queued", waiting  # one job at a time: B waits behind A

            second = UpProcess(data_dir, docs, tmp_path / "up2.log")
            started.append(second)
            await second.wait_ready(session)
            done_b = await second.wait_job(session, job_b, lambda j: j["status"] in TERMINAL_STATES, timeout_s=90)
            done_a = await second.wait_job(session, job_a, lambda j: j["status"] in TERMINAL_STATES, timeout_s=90)
            assert done_b["status"] == "completed" and done_b["files_done"] == 3, done_b
            assert done_a["status"] == "completed", f"{done_a}\n{second.log_tail()}"
            assert done_a["files_done"] == files + 1 and done_a["files_failed"] == 0, done_a
            assert done_a["attempts"] >= 2, done_a  # it really ran again after the kill
            async with session.post(
                second.url + "/api/search",
                json={"query": "who polishes the lens of the lighthouse lamp", "collection": "restart", "k": 100},
            ) as response:
                assert response.status == 200, await response.text()
                results = (await response.json())["results"]
            assert results and results[0]["path"].endswith("lighthouse.txt"), results[:3]
            hits = [(hit["path"], hit["chunk_index"]) for hit in results]
            assert len(hits) == len(set(hits)), "a chunk is stored twice"
            async with session.get(second.url + "/api/collections/restart") as response:
                collection = await response.json()
            assert collection["chunks"] == done_a["chunks"] + done_b["chunks"], collection
    finally:
        for up in started:
            up.stop()


# -- 2. retries stop after SEMANTIK_JOB_MAX_TRIES ----------------------------------------------------


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
async def test_transient_errors_retry_with_backoff_then_fail_after_max_tries(
    aiohttp_client: ClientFactory, settings: Settings, docs: Path
) -> None:
    """A Qdrant server nobody listens on: connection refused on every run (a real transient error)."""
    write(docs / "a.txt", "A document that can never be stored because its vector database is down.")
    max_tries = 2
    unreachable = settings.model_copy(
        update={"qdrant_url": f"http://127.0.0.1:{free_port()}", "job_max_tries": max_tries}
    )
    runtime = Runtime(unreachable)
    await runtime.open()
    try:
        api = await aiohttp_client(create_app(unreachable, runtime=runtime))
        job_id = await new_job(api, docs, "unreachable")
        async with watching(api, job_id) as stream:
            worker = in_process_worker(unreachable, runtime, burst=True)
            try:
                await asyncio.wait_for(worker.async_run(), 120)
            finally:
                await worker.close()
            messages = await asyncio.wait_for(stream, RECEIVE_TIMEOUT_S)
        job = await job_of(api, job_id)
    finally:
        await runtime.close()
    assert job["status"] == "failed", job
    assert job["error"] and not job["error"].startswith("retrying"), job
    types = [m["type"] for m in messages]
    assert types.count(EventType.JOB_STARTED) == max_tries, types  # no run past the limit
    retries = [
        m for m in messages if m["type"] == EventType.JOB_QUEUED and "retrying in" in (m["data"].get("error") or "")
    ]
    assert len(retries) == max_tries - 1, types
    assert types[-1] == EventType.JOB_FAILED and messages[-1]["data"]["error"] == job["error"], messages[-1]
    # With backoff: the second run started at least the first delay (2 s) after the retry was queued.
    second_start = [m for m in messages if m["type"] == EventType.JOB_STARTED][1]
    waited_s = iso_s(second_start["ts"]) - iso_s(retries[0]["ts"])
    assert waited_s >= 1.9, waited_s


# -- 3. a GPU lease lost mid-job re-queues the job ----------------------------------------------------


async def test_gpu_lease_lost_mid_job_requeues_it_and_it_completes_without_sharing_the_gpu(
    aiohttp_client: ClientFactory, settings: Settings, docs: Path, redis_url: str
) -> None:
    """While the job runs on (fake) GPU 0, its lease lapses and another worker takes the slot: the
    job's next renewal is refused, so it stops, goes back to the queue, and finishes (on the CPU:
    the slot stays the other worker's) with every file indexed exactly once."""
    gpu_settings = settings.model_copy(
        update={"gpu_devices": "0", "gpu_lease_ttl_s": 1.0, "gpu_wait_s": 0.5, "gpu_fallback": "cpu"}
    )
    texts = topic_corpus(docs, 40, words=400)
    runtime = FakeGpuRuntime(gpu_settings)
    await runtime.open()
    redis = Redis.from_url(redis_url)
    # The other worker leases with a long TTL, so it keeps the slot for the whole test without renewing.
    other_worker = GpuLeases(redis, ["0:0"], ttl_s=600, names=gpu_settings.redis_names)
    try:
        api = await aiohttp_client(create_app(gpu_settings, runtime=runtime))
        job_id = await new_job(api, docs, "gpu")
        async with watching(api, job_id) as stream, worker_running(gpu_settings, runtime):
            deadline = time.monotonic() + 120
            while True:  # the job holds the slot and is indexing
                slots = (await (await api.get("/api/gpus")).json())["slots"]
                job = await job_of(api, job_id)
                if job["status"] == "running" and slots[0].get("job_id") == job_id:
                    break
                assert job["status"] in ("queued", "running"), job
                assert time.monotonic() < deadline, (job, slots)
                await asyncio.sleep(0.02)
            names = gpu_settings.redis_names
            await redis.delete(names.gpu_holders, names.gpu_holder_info)  # the lease lapsed...
            stolen = await other_worker.acquire("another-worker", "another-job", wait_s=5)  # ...and was taken
            assert stolen is not None
            messages = await asyncio.wait_for(stream, 180)
            final = await job_of(api, job_id)
            slots_after = (await (await api.get("/api/gpus")).json())["slots"]
        embedder = await runtime.embedder()
        chunker = chunker_for(embedder, gpu_settings.chunk_size_tokens, gpu_settings.chunk_overlap_tokens)
        expected_chunks = sum(len(chunker.chunk(text)) for text in texts)
    finally:
        await redis.aclose()
        await runtime.close()
    points, distinct = stored_points(gpu_settings, "gpu")
    types = [m["type"] for m in messages]
    lost = [
        i
        for i, m in enumerate(messages)
        if m["type"] == EventType.JOB_QUEUED and "GPU lease" in (m["data"].get("error") or "")
    ]
    assert lost, types  # it went back to the queue because of the lease
    assert EventType.JOB_STARTED in types[lost[0] :], types  # and ran again
    assert final["status"] == "completed", final
    assert final["files_done"] == len(texts) and final["files_failed"] == 0, final
    assert final["chunks"] == expected_chunks, final
    assert points == distinct == expected_chunks  # nothing lost, nothing twice
    assert set(runtime.fake_gpu_indexes) == {0}  # the first run did use the leased (fake) GPU
    # Never shared: the other worker held the slot, unchanged, from the moment it took it.
    assert slots_after[0]["state"] == "held" and slots_after[0]["owner"] == "another-worker", slots_after
    assert slots_after[0]["acquired_at_ms"] == stolen.acquired_at_ms, slots_after


# -- 4. progress: at most ~5/s per job, one at the end, coalescing for slow sockets --------------------


async def test_progress_events_are_rate_limited_and_one_closes_the_job(
    api: TestClient[Any, Any], settings: Settings, runtime: Runtime, docs: Path
) -> None:
    files = 80
    for i in range(files):
        write(docs / f"tiny{i:03}.txt", f"Tiny note {i}: item {i * 13} was moved to bin {i % 7}.")
    job_id = await new_job(api, docs, "rate")
    async with watching(api, job_id) as stream, worker_running(settings, runtime):
        messages = await asyncio.wait_for(stream, 120)
    final = await job_of(api, job_id)
    assert final["status"] == "completed" and final["files_done"] == files, final
    assert messages[-1]["type"] == EventType.JOB_COMPLETED
    progress = [m for m in messages if m["type"] == EventType.PROGRESS]
    assert progress, [m["type"] for m in messages]
    # One progress always goes out at the end, with the final counters, right before job_completed.
    last = messages[-2]
    assert last["type"] == EventType.PROGRESS, [m["type"] for m in messages[-4:]]
    assert last["data"]["files_done"] == files and last["data"]["chunks"] == final["chunks"], last
    assert {"rate_chunks_s", "eta_s"} <= set(last["data"]), last
    # The test means something only if files completed faster than 5/s somewhere.
    completed_s = [iso_s(m["ts"]) for m in messages if m["type"] == EventType.FILE_COMPLETED]
    assert max_in_window(completed_s, 1.0) > 6, "files completed too slowly to exercise the rate limit"
    # At most 5 per second (one more for scheduling jitter), not counting the closing one.
    throttled = [iso_s(m["ts"]) for m in progress[:-1]]
    assert max_in_window(throttled, 1.0) <= round(1 / PROGRESS_INTERVAL_S) + 1, throttled


async def test_files_committed_together_each_get_their_own_event_in_order(
    api: TestClient[Any, Any], settings: Settings, runtime: Runtime, docs: Path
) -> None:
    # Small files share a model call and are stored together (one transaction, one write of points):
    # each must still be its own file_completed event, once, with its own counters, in seq order.
    files = 60
    for i in range(files):
        write(docs / f"note{i:03}.txt", f"Note {i}: the parcel for desk {i * 7} went to floor {i % 5}.")
    job_id = await new_job(api, docs, "together")
    async with watching(api, job_id) as stream, worker_running(settings, runtime):
        messages = await asyncio.wait_for(stream, 120)
    final = await job_of(api, job_id)
    assert final["status"] == "completed" and final["files_done"] == files, final
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(set(seqs)), "out of order or twice"
    completed = [m for m in messages if m["type"] == EventType.FILE_COMPLETED]
    paths = [Path(m["data"]["path"]).name for m in completed]
    assert sorted(paths) == [f"note{i:03}.txt" for i in range(files)], paths
    assert [m["data"]["files_done"] for m in completed] == list(range(1, files + 1))
    assert all(m["data"]["file_chunks"] == 1 for m in completed), completed[:3]
    assert sum(m["data"]["file_chunks"] for m in completed) == final["chunks"]
    assert await count_points(runtime, "together") == final["chunks"]


async def test_copies_stored_together_are_stored_once(
    api: TestClient[Any, Any], settings: Settings, runtime: Runtime, docs: Path
) -> None:
    # Copies of one file that reach the model before any is stored are stored in one request, their
    # points (same ids) written once; a copy prepared after the first was stored is only noted as a
    # copy (skipped). Which copies go which way depends on timing (a fast backend stores the first
    # sub-batch before the last copy is hashed); either way no request fails, every file is accounted
    # for, and the collection holds one content's points once.
    for i in range(4):
        write(docs / f"copy{i}.txt", "The boiler in building C is serviced every March by Halvorsen Ltd.")
    for i in range(10):
        write(docs / f"other{i}.txt", f"Other note {i}: locker {i * 3} holds the spare keys for room {i + 100}.")
    job_id = await new_job(api, docs, "copies")
    async with worker_running(settings, runtime):
        final = await wait_for_job(api, job_id)
    assert final["status"] == "completed" and final["files_failed"] == 0, final
    assert final["files_done"] + final["files_skipped"] == 14 and final["files_done"] >= 11, final
    assert await count_points(runtime, "copies") == 11  # one content of one chunk, and ten others


def max_in_window(times_s: list[float], window_s: float) -> int:
    times_s = sorted(times_s)
    best, start = 0, 0
    for end, t in enumerate(times_s):
        while t - times_s[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def hub_message(kind: EventType, job_id: str, seq: int, **data: Any) -> str:
    return json.dumps(envelope(kind, job_id, seq, {"status": "running", **data}))


async def drain_until(listener: Listener, job_id: str, seq: int) -> list[tuple[str, str, int]]:
    """What a socket that starts reading now gets, up to and including the event ``(job_id, seq)``."""
    got = []
    while True:
        event = await asyncio.wait_for(listener.get(), 5)
        assert event is not None, "a resync was asked for; nothing should have overflowed"
        parsed, raw, frame = event
        assert frame.endswith(raw.encode())  # a complete WebSocket frame of exactly this event
        got.append((parsed["job_id"], parsed["type"], parsed["seq"]))
        if (parsed["job_id"], parsed["seq"]) == (job_id, seq):
            return got


async def test_a_slow_listener_keeps_every_event_but_only_the_latest_progress_per_job() -> None:
    """EventHub fan-out to listeners whose sockets are not reading: queued progress coalesces."""
    hub = EventHub("redis://127.0.0.1:1/0", "semantik:events:job:*")  # dispatch only: the relay is not started
    one_job = hub.listen("a")
    every_job = hub.listen(None)
    expected_a: list[tuple[str, str, int]] = []
    expected_all: list[tuple[str, str, int]] = []
    seq = {"a": 0, "b": 0}
    for round_ in range(40):
        for job_id in ("a", "b"):
            for _ in range(3):
                seq[job_id] += 1
                await hub.dispatch(hub_message(EventType.PROGRESS, job_id, seq[job_id], files_done=round_))
            if round_ % 10 == 9:
                seq[job_id] += 1
                await hub.dispatch(hub_message(EventType.FILE_COMPLETED, job_id, seq[job_id], path=f"{round_}.txt"))
                if job_id == "a":
                    expected_a.append((job_id, EventType.FILE_COMPLETED, seq[job_id]))
                expected_all.append((job_id, EventType.FILE_COMPLETED, seq[job_id]))
    for job_id in ("a", "b"):
        seq[job_id] += 1
        await hub.dispatch(hub_message(EventType.PROGRESS, job_id, seq[job_id], files_done=40))
    last_a, last_b = ("a", EventType.PROGRESS, seq["a"]), ("b", EventType.PROGRESS, seq["b"])
    seq["a"] += 1
    await hub.dispatch(hub_message(EventType.JOB_COMPLETED, "a", seq["a"]))
    end_a = ("a", EventType.JOB_COMPLETED, seq["a"])

    got_a = await drain_until(one_job, "a", seq["a"])
    assert got_a == [*expected_a, last_a, end_a], got_a
    got_all = await drain_until(every_job, "a", seq["a"])
    assert [e for e in got_all if e[1] != EventType.PROGRESS] == [*expected_all, end_a], got_all
    assert [e for e in got_all if e[1] == EventType.PROGRESS] == [last_a, last_b], got_all
    assert one_job.overflows == every_job.overflows == 0


async def test_a_stalled_socket_gets_every_file_event_and_the_latest_progress(
    api: TestClient[Any, Any], docs: Path, redis_url: str, settings: Settings
) -> None:
    """A real socket that stops reading while thousands of events go by: when it reads again it has
    every non-progress event in order, fewer progress events than were sent, and the last one."""
    job_id = await new_job(api, docs, "stall")
    await asyncio.wait_for(api.app[HUB].connected.wait(), 10)
    redis = Redis.from_url(redis_url)
    publisher = EventPublisher(redis, settings.redis_names)
    padding = "p" * 8192
    total, every = 1500, 15
    try:
        async with api.ws_connect(f"/api/jobs/{job_id}/ws") as ws:
            snapshot = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
            assert snapshot["type"] == EventType.SNAPSHOT
            seq = snapshot["seq"]
            sent_files: list[int] = []
            sent_progress: list[int] = []
            for i in range(total):  # the socket reads nothing meanwhile
                seq += 1
                kind = EventType.FILE_COMPLETED if i % every == 0 else EventType.PROGRESS
                (sent_files if kind == EventType.FILE_COMPLETED else sent_progress).append(seq)
                await publisher.publish(envelope(kind, job_id, seq, {"status": "running", "padding": padding}))
            seq += 1
            await publisher.publish(envelope(EventType.JOB_COMPLETED, job_id, seq, {"status": "completed"}))
            received = await read_until_closed(ws)
    finally:
        await redis.aclose()
    types = [m["type"] for m in received]
    assert EventType.SNAPSHOT not in types, "it fell behind far enough to be resynchronised"
    seqs = [m["seq"] for m in received]
    assert seqs == sorted(set(seqs)), "out of order or twice"
    assert [m["seq"] for m in received if m["type"] == EventType.FILE_COMPLETED] == sent_files
    got_progress = [m["seq"] for m in received if m["type"] == EventType.PROGRESS]
    assert got_progress[-1] == sent_progress[-1], "the latest progress must win"
    assert len(got_progress) < len(sent_progress), "no progress event was coalesced"
    assert received[-1]["type"] == EventType.JOB_COMPLETED


# -- 5. request body and WebSocket message limits ------------------------------------------------------


async def test_request_body_over_1_mib_is_413_in_the_error_shape_and_changes_nothing(
    api: TestClient[Any, Any], docs: Path
) -> None:
    big = json.dumps({"collection": "big", "directory": str(docs), "name": "n" * (1024 * 1024)})
    response = await api.post("/api/jobs", data=big, headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert_error_shape(await response.json())
    # Just under the limit the body is read (and refused for what it says, not for its size).
    under = json.dumps({"collection": "big", "directory": str(docs), "name": "n" * (1000 * 1024)})
    response = await api.post("/api/jobs", data=under, headers={"Content-Type": "application/json"})
    assert response.status == 422, response.status
    assert_error_shape(await response.json(), "validation_error")
    assert (await (await api.get("/api/jobs")).json())["jobs"] == []
    assert (await api.get("/api/collections/big")).status == 404


async def test_websocket_client_messages_over_64_kib_close_the_socket_with_1009(
    api: TestClient[Any, Any], docs: Path
) -> None:
    job_id = await new_job(api, docs, "wslimit")  # no worker: it stays queued, its sockets stay open
    url = f"/api/jobs/{job_id}/ws"
    async with api.ws_connect(url) as chatty, api.ws_connect(url) as flooding:
        for ws in (chatty, flooding):
            assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == EventType.SNAPSHOT
        await flooding.send_str("hello")
        await flooding.send_str("x" * (60 * 1024))  # under the limit: ignored
        await flooding.send_str("y" * (100 * 1024))
        message = await flooding.receive(timeout=RECEIVE_TIMEOUT_S)
        assert message.type == WSMsgType.CLOSE, message
        assert message.data == WSCloseCode.MESSAGE_TOO_BIG, message
        # A small message is ignored and the socket carries on: it still gets the job's events.
        await chatty.send_str('{"hello": "server"}')
        assert (await api.post(f"/api/jobs/{job_id}/cancel")).status == 200
        event = await chatty.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert event["type"] == EventType.JOB_CANCELLED, event
        message = await chatty.receive(timeout=RECEIVE_TIMEOUT_S)
        assert message.type == WSMsgType.CLOSE and message.data == WSCloseCode.OK, message


# -- 6. ping with no worker ---------------------------------------------------------------------------


async def test_ping_with_no_worker_is_503_in_the_error_shape(api: TestClient[Any, Any]) -> None:
    began = time.monotonic()
    response = await api.post("/api/jobs/ping?timeout_s=1")
    took_s = time.monotonic() - began
    assert response.status == 503
    error = assert_error_shape(await response.json())
    assert "worker" in error["message"], error
    assert 0.9 <= took_s < 15, took_s


# -- 7. GET /api/jobs filters and pages -----------------------------------------------------------------


async def test_job_list_filters_pages_newest_first_and_refuses_bad_values(
    api: TestClient[Any, Any], docs: Path
) -> None:
    ids = [await new_job(api, docs, "paging") for _ in range(5)]  # no worker: all queued
    for job_id in (ids[1], ids[3]):
        assert (await api.post(f"/api/jobs/{job_id}/cancel")).status == 200
    newest_first = ids[::-1]

    async def listed(query: str) -> list[str]:
        response = await api.get(f"/api/jobs{query}")
        assert response.status == 200, await response.text()
        return [job["id"] for job in (await response.json())["jobs"]]

    assert await listed("") == newest_first
    assert await listed("?status=queued") == [ids[4], ids[2], ids[0]]
    assert await listed("?status=cancelled") == [ids[3], ids[1]]
    assert await listed("?status=completed") == []
    assert await listed("?limit=2") == newest_first[:2]
    assert await listed("?limit=2&offset=2") == newest_first[2:4]
    assert await listed("?limit=2&offset=4") == newest_first[4:]
    assert await listed("?offset=5") == []
    assert await listed("?limit=0") == []
    assert await listed("?status=queued&limit=1&offset=1") == [ids[2]]
    for query, field in (
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=5000", "limit"),
        ("limit=1.5", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
        ("status=finished", "status"),
    ):
        response = await api.get(f"/api/jobs?{query}")
        assert response.status == 422, (query, response.status)
        error = assert_error_shape(await response.json())
        assert error["details"][0]["loc"] == [field], error


# -- 8. the CLI against a real server -------------------------------------------------------------------


async def run_cli(*args: str, url: str | None = None, timeout_s: float = 120) -> tuple[int, str, str]:
    env = clean_env(**({"SEMANTIK_URL": url} if url else {}))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "semantik.cli",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def server(aiohttp_server: ServerFactory, settings: Settings, runtime: Runtime) -> str:
    """The API on a real port (sharing the runtime with any in-process worker); its base URL."""
    app: web.Application = create_app(settings, runtime=runtime)
    test_server = await aiohttp_server(app)
    return f"http://{test_server.host}:{test_server.port}"


async def test_cli_index_waits_for_the_job_and_search_names_the_file(
    server: str, settings: Settings, runtime: Runtime, docs: Path
) -> None:
    write(docs / "lighthouse.txt", LIGHTHOUSE)
    write(docs / "budget.txt", "The quarterly budget review found the travel costs were over plan.")
    write(docs / "garden.md", "# Garden\n\nTomatoes need full sun and regular watering in the summer.")
    async with worker_running(settings, runtime):
        code, out, err = await run_cli("index", str(docs), "-c", "clinotes", url=server)
        assert code == 0, (out, err)
        job = json.loads(out)  # standard output is exactly the final job, as JSON
        assert job["status"] == "completed" and job["files_done"] == 3, job
        assert job["id"] in err  # "job <id> queued", on stderr
        code, out, err = await run_cli("search", "who looks after the lamp and the lens", "-c", "clinotes", url=server)
    assert code == 0, (out, err)
    ranked = [line for line in out.splitlines() if line[:1].isdigit()]
    assert len(ranked) == 3 and ranked[0].startswith("1. "), out
    assert str(docs / "lighthouse.txt") in ranked[0], out
    assert "lighthouse keeper" in out


async def test_cli_index_no_wait_returns_the_queued_job_and_a_failed_job_exits_1(
    server: str, settings: Settings, runtime: Runtime, docs: Path, tmp_path: Path
) -> None:
    write(docs / "kept" / "a.txt", "A file in a folder that stays.")
    doomed = docs / "doomed"
    write(doomed / "b.txt", "A file in a folder that is removed before any worker starts.")
    # No worker is running: --no-wait must still return, with the queued job.
    code, out, err = await run_cli("index", str(docs / "kept"), "-c", "nowait", "--no-wait", url=server)
    assert code == 0, (out, err)
    queued = json.loads(out)
    assert queued["status"] == "queued" and queued["directory"] == str(docs / "kept"), queued
    # A waiting `index` whose folder disappears before a worker takes the job.
    waiting = asyncio.create_task(run_cli("index", str(doomed), "-c", "doomed", url=server))
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 60
        while True:
            async with session.get(f"{server}/api/jobs") as response:
                jobs = (await response.json())["jobs"]
            if any(job["directory"] == str(doomed) for job in jobs):
                break
            assert not waiting.done(), waiting.result()
            assert time.monotonic() < deadline, jobs
            await asyncio.sleep(0.05)
    shutil.rmtree(doomed)
    async with worker_running(settings, runtime):
        code, out, err = await asyncio.wait_for(waiting, 120)
        assert code == 1, (out, err)
        failed = json.loads(out)
        assert failed["status"] == "failed" and "does not exist" in failed["error"], failed
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:  # the --no-wait job was queued for real: the worker now runs it
                async with session.get(f"{server}/api/jobs/{queued['id']}") as response:
                    job = await response.json()
                if job["status"] in TERMINAL_STATES:
                    break
                assert time.monotonic() < deadline, job
                await asyncio.sleep(0.05)
    assert job["status"] == JobStatus.COMPLETED and job["files_done"] == 1, job


LOG_LINES: list[dict[str, Any] | str] = [
    {"ts": "2026-01-01T00:00:00.000Z", "level": "info", "event": "job_started", "logger": "x", "job_id": "j1"},
    {"ts": "2026-01-01T00:00:01.000Z", "level": "info", "event": "http_request", "logger": "x", "status": 200},
    "plain text from another program",
    {"ts": "2026-01-01T00:00:02.000Z", "level": "warning", "event": "job_started", "logger": "x", "job_id": "j2"},
    {"ts": "2026-01-01T00:00:03.000Z", "level": "info", "event": "job_finished", "logger": "x", "job_id": "j1"},
]


def log_line(record: dict[str, Any] | str) -> str:
    return (record if isinstance(record, str) else json.dumps(record)) + "\n"


async def test_cli_logs_filters_by_event(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("".join(log_line(record) for record in LOG_LINES))
    code, out, err = await run_cli("logs", str(log), "--event", "job_started", "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["event"], r["job_id"]) for r in records] == [("job_started", "j1"), ("job_started", "j2")], out
    code, out, err = await run_cli("logs", str(log), "--event", "job_started")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all("job_started" in line for line in lines), out
    assert "j1" in lines[0] and "j2" in lines[1], out
    assert "http_request" not in out and "plain text" not in out, out


async def test_cli_logs_follow_prints_lines_appended_after_it_started(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text(log_line(LOG_LINES[0]))
    env = clean_env()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "semantik.cli",
        "logs",
        str(log),
        "--follow",
        "--event",
        "job_started",
        "--json",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        assert first["job_id"] == "j1", first  # it has read the file to its end and keeps watching it
        with log.open("a") as handle:
            handle.write(log_line(LOG_LINES[1]))  # filtered out
            handle.write(log_line(LOG_LINES[3]))
        appended = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert (appended["event"], appended["job_id"]) == ("job_started", "j2"), appended
        assert process.returncode is None, "--follow must keep running"
    finally:
        process.kill()
        await process.wait()


async def test_cli_sync_mirrors_the_folder_and_check_says_what_is_out_of_step(
    server: str, settings: Settings, runtime: Runtime, docs: Path
) -> None:
    write(docs / "lighthouse.txt", LIGHTHOUSE)
    write(docs / "budget.txt", "The quarterly budget review found the travel costs were over plan.")
    async with worker_running(settings, runtime):
        code, out, err = await run_cli("index", str(docs), "-c", "clisync", url=server)
        assert code == 0, (out, err)
        (docs / "budget.txt").unlink()
        write(docs / "garden.md", "# Garden\n\nTomatoes need full sun and regular watering in the summer.")
        code, out, err = await run_cli("sync", "clisync", url=server)
        assert code == 0, (out, err)
        job = json.loads(out)
        assert (job["kind"], job["status"], job["files_done"], job["files_removed"]) == ("sync", "completed", 1, 1)
        assert job["id"] in err  # "sync job <id> queued"
        code, out, err = await run_cli("check", "clisync", url=server)
        assert code == 0 and "in step" in out, (out, err)
    (docs / "garden.md").unlink()  # gone from disk, not synced yet
    code, out, err = await run_cli("check", "clisync", url=server)
    assert code == 1, (out, err)
    assert "files gone from disk (not synced yet): 1" in out and str(docs / "garden.md") in out
    assert "semantik sync clisync" in out
    code, out, err = await run_cli("sync", "nowhere", url=server)
    assert code == 1 and "collection_not_found" in err, (out, err)
