"""Live progress over WebSockets: snapshot then stream, in order, no gaps, slow-client safe, Redis-restart safe."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from arq.worker import Worker
from redis.asyncio import Redis

from semantik import constants as c
from semantik.app import create_app
from semantik.events import EventPublisher, JobEvents
from semantik.hub import FANOUT_SLICE
from semantik.keys import HUB
from semantik.redis_server import RedisServer
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.worker import worker_options
from tests.conftest import ClientFactory, write

RECEIVE_TIMEOUT_S = 30


async def new_job(api: TestClient[Any, Any], docs: Path, collection: str = "live") -> str:
    response = await api.post("/api/jobs", json={"collection": collection, "directory": str(docs)})
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


async def read_until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await ws.receive(timeout=RECEIVE_TIMEOUT_S)
        if message.type != WSMsgType.TEXT:
            assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), message
            return messages
        messages.append(json.loads(message.data))


def assert_contiguous(messages: list[dict[str, Any]]) -> None:
    """A snapshot, then every later event exactly once, in order."""
    assert messages[0]["type"] == c.SNAPSHOT
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


@pytest.fixture
async def publisher(redis_url: str) -> AsyncIterator[EventPublisher]:
    redis = Redis.from_url(redis_url)
    yield EventPublisher(redis)
    await redis.aclose()


@pytest.fixture
async def background_worker(settings: Settings, runtime: Runtime) -> AsyncIterator[Worker]:
    """A worker running for the whole test, as in `semantik up`."""
    worker = Worker(**worker_options(settings), ctx={"runtime": runtime}, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    yield worker
    await worker.close()
    task.cancel()


async def test_snapshot_then_every_event_in_order_while_events_are_published(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, publisher: EventPublisher
) -> None:
    job_id = await new_job(api, docs)
    events = JobEvents(publisher, job_id)
    await asyncio.wait_for(api.app[HUB].connected.wait(), 10)

    delays_s = (0, 0.05, 0.1, 0.2, 0.3, 0.4)
    joined: list[int] = []

    async def produce() -> None:
        # Events keep coming until every watcher is in (a slow machine must not let one join late).
        emitted = 0
        while emitted < 150 or len(joined) < len(delays_s):
            await events.emit(c.FILE_COMPLETED, runtime.jobs.progress(job_id), path="x")
            emitted += 1
            await asyncio.sleep(0.002)
        for _ in range(10):
            await events.emit(c.FILE_COMPLETED, runtime.jobs.progress(job_id), path="x")
        await events.emit(c.JOB_COMPLETED, runtime.jobs.finish_job(job_id))

    async def watch(delay_s: float) -> list[dict[str, Any]]:
        await asyncio.sleep(delay_s)
        async with api.ws_connect(f"/api/jobs/{job_id}/ws") as ws:
            snapshot = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
            joined.append(snapshot["seq"])
            return [snapshot, *await read_until_closed(ws)]

    producer = asyncio.create_task(produce())
    streams = await asyncio.gather(*(watch(delay) for delay in delays_s))
    await producer
    final = await (await api.get(f"/api/jobs/{job_id}")).json()
    assert final["seq"] >= 162  # job_queued, at least 160 events, job_completed
    for messages in streams:
        assert_contiguous(messages)
        assert messages[-1]["type"] == c.JOB_COMPLETED
        assert messages[-1]["seq"] == final["seq"]
    assert len(set(joined)) > 1  # they really joined at different points


async def test_real_job_stream_counters_equal_the_database(
    api: TestClient[Any, Any], docs: Path, background_worker: Worker
) -> None:
    for i in range(12):
        write(docs / f"doc{i:02}.txt", f"Document number {i} talks about topic {i} at length. " * 40)
    (docs / "bad.pdf").write_bytes(b"%PDF-1.4 broken")
    await asyncio.wait_for(api.app[HUB].connected.wait(), 10)
    job_id = await new_job(api, docs)
    async with api.ws_connect(f"/api/jobs/{job_id}/ws") as ws:
        messages = await read_until_closed(ws)
    assert_contiguous(messages)
    types = [m["type"] for m in messages]
    assert types[-1] == c.JOB_COMPLETED
    assert types[-2] == c.PROGRESS  # always one progress at the end
    assert c.SCAN_COMPLETED in types and c.FILE_FAILED in types
    assert types.count(c.FILE_COMPLETED) + (messages[0]["data"]["files_done"]) == 12
    failed = next(m for m in messages if m["type"] == c.FILE_FAILED)
    assert failed["data"]["path"].endswith("bad.pdf") and "PDF" in failed["data"]["error"]
    job = await (await api.get(f"/api/jobs/{job_id}")).json()
    last = messages[-1]["data"]
    for key in ("status", "files_total", "files_done", "files_failed", "files_skipped", "chunks"):
        assert last[key] == job[key], key
    assert job["status"] == "completed_with_errors"
    assert all(m["job_id"] == job_id and m["ts"] for m in messages)


async def test_reconnect_with_after_seq_gets_a_fresh_snapshot_and_continues(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, publisher: EventPublisher
) -> None:
    job_id = await new_job(api, docs)
    events = JobEvents(publisher, job_id)
    await asyncio.wait_for(api.app[HUB].connected.wait(), 10)
    async with api.ws_connect(f"/api/jobs/{job_id}/ws") as ws:
        snapshot = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        await events.emit(c.FILE_COMPLETED, runtime.jobs.progress(job_id), path="a")
        seen = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert seen["seq"] == snapshot["seq"] + 1
    for _ in range(3):  # missed while disconnected
        await events.emit(c.FILE_COMPLETED, runtime.jobs.progress(job_id), path="b")
    async with api.ws_connect(f"/api/jobs/{job_id}/ws?after_seq={seen['seq']}") as ws:
        fresh = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert fresh["type"] == c.SNAPSHOT and fresh["seq"] == seen["seq"] + 3
        await events.emit(c.JOB_COMPLETED, runtime.jobs.finish_job(job_id))
        rest = await read_until_closed(ws)
    assert [(m["type"], m["seq"]) for m in rest] == [(c.JOB_COMPLETED, fresh["seq"] + 1)]
    bad = await api.get(f"/api/jobs/{job_id}/ws?after_seq=minus-one")
    assert bad.status == 422


async def test_finished_job_gets_snapshot_and_close_unless_asked_to_stay(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path
) -> None:
    job_id = await new_job(api, docs)
    await runtime.jobs.finish_job(job_id)
    async with api.ws_connect(f"/api/jobs/{job_id}/ws") as ws:
        messages = await read_until_closed(ws)
        assert ws.close_code == 1000
    assert [m["type"] for m in messages] == [c.SNAPSHOT]
    assert messages[0]["data"]["status"] == "completed"
    async with api.ws_connect(f"/api/jobs/{job_id}/ws?stay=1") as ws:
        assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == c.SNAPSHOT
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.5)
    missing = await api.get("/api/jobs/nope/ws")
    assert missing.status == 404


async def test_a_client_that_never_reads_does_not_slow_another(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, publisher: EventPublisher
) -> None:
    job_id = await new_job(api, docs)
    events = JobEvents(publisher, job_id)
    await asyncio.wait_for(api.app[HUB].connected.wait(), 10)
    padding = "x" * 4096
    url = f"/api/jobs/{job_id}/ws"
    async with api.ws_connect(url) as stuck, api.ws_connect(url) as healthy:
        assert (await stuck.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == c.SNAPSHOT
        assert (await healthy.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == c.SNAPSHOT
        total = 3000
        received: list[int] = []

        async def read_healthy() -> None:
            while len(received) < total:
                received.append((await healthy.receive_json(timeout=RECEIVE_TIMEOUT_S))["seq"])

        reader = asyncio.create_task(read_healthy())
        for _ in range(total):  # `stuck` reads nothing meanwhile: its TCP window fills up
            await events.emit(c.FILE_COMPLETED, runtime.jobs.progress(job_id), padding=padding)
        await asyncio.wait_for(reader, 60)
        assert received == list(range(2, total + 2))
        # The stuck client was resynchronised instead of buffering without bound.
        overflows = sum(lst.overflows for lst in api.app[HUB]._by_job[job_id])
        assert overflows >= 1
        # When it finally reads, it gets what was queued, then a fresh snapshot; seqs never go backwards.
        seqs, types = [], []
        while True:
            message = await stuck.receive_json(timeout=RECEIVE_TIMEOUT_S)
            seqs.append(message["seq"])
            types.append(message["type"])
            if message["type"] == c.SNAPSHOT:
                break
        assert seqs == sorted(seqs)
        assert seqs[-1] == total + 1  # the snapshot is current


async def test_fan_out_to_hundreds_of_sockets_is_complete_in_order_and_lets_the_loop_run(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, publisher: EventPublisher
) -> None:
    job_id = await new_job(api, docs)
    hub = api.app[HUB]
    await asyncio.wait_for(hub.connected.wait(), 10)
    count = 2 * FANOUT_SLICE + 50
    # Our own session: the test client's pool, like aiohttp's default, stops at 100 connections.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        url = api.make_url(f"/api/jobs/{job_id}/ws")
        sockets = await asyncio.gather(*(session.ws_connect(url) for _ in range(count)))
        firsts = await asyncio.gather(*(ws.receive_json(timeout=RECEIVE_TIMEOUT_S) for ws in sockets))
        assert {m["type"] for m in firsts} == {c.SNAPSHOT}
        listeners = list(hub._by_job[job_id])
        assert len(listeners) == count
        async with asyncio.timeout(10):  # every socket idles, so the relay writes to it directly
            while not all(listener.transport is not None for listener in listeners):
                await asyncio.sleep(0.01)

        # While the relay fans one event out, other tasks get turns: this one sees it half done.
        partial_counts: list[int] = []
        stop = asyncio.Event()

        async def watch_fan_out() -> None:
            while not stop.is_set():
                sent = sum(1 for listener in listeners if listener.last_seq.get(job_id, 0) >= 2)
                if 0 < sent < count:
                    partial_counts.append(sent)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch_fan_out())
        events = JobEvents(publisher, job_id)
        await events.emit(c.FILE_COMPLETED, runtime.jobs.progress(job_id), path="first")
        async with asyncio.timeout(10):
            while not all(listener.last_seq.get(job_id, 0) >= 2 for listener in listeners):
                await asyncio.sleep(0)
        stop.set()
        await watcher
        assert partial_counts and all(n % FANOUT_SLICE == 0 for n in partial_counts), partial_counts

        for _ in range(20):
            await events.emit(c.FILE_COMPLETED, runtime.jobs.progress(job_id), path="x")
        await events.emit(c.JOB_COMPLETED, runtime.jobs.finish_job(job_id))
        streams = await asyncio.gather(*(read_until_closed(ws) for ws in sockets))
    for first, stream in zip(firsts, streams, strict=True):
        messages = [first, *stream]
        assert_contiguous(messages)
        assert messages[-1]["type"] == c.JOB_COMPLETED and messages[-1]["seq"] == 23


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    yield server
    server.stop()


async def test_redis_restart_sockets_get_a_new_snapshot_then_events(
    aiohttp_client: ClientFactory, tmp_path: Path, docs: Path, restartable_redis: RedisServer
) -> None:
    settings = Settings(data_dir=tmp_path / "data", allowed_roots=[docs], redis_url=restartable_redis.url)
    runtime = Runtime(settings)
    await runtime.open()
    try:
        api = await aiohttp_client(create_app(settings, runtime=runtime))
        job_id = await new_job(api, docs)
        hub = api.app[HUB]
        await asyncio.wait_for(hub.connected.wait(), 10)
        async with api.ws_connect(f"/api/jobs/{job_id}/ws") as ws:
            first = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
            assert first["type"] == c.SNAPSHOT
            await asyncio.to_thread(restartable_redis.stop)
            for _ in range(100):
                if not hub.connected.is_set():
                    break
                await asyncio.sleep(0.05)
            assert not hub.connected.is_set()
            # REST keeps working while Redis is away; the state changes meanwhile are stored.
            await runtime.jobs.progress(job_id)
            assert (await api.get(f"/api/jobs/{job_id}")).status == 200
            await asyncio.to_thread(restartable_redis.start)
            again = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
            assert again["type"] == c.SNAPSHOT and again["seq"] == first["seq"] + 1
            redis = Redis.from_url(restartable_redis.url)
            try:
                events = JobEvents(EventPublisher(redis), job_id)
                await events.emit(c.JOB_COMPLETED, runtime.jobs.finish_job(job_id))
            finally:
                await redis.aclose()
            rest = await read_until_closed(ws)
        assert [(m["type"], m["seq"]) for m in rest] == [(c.JOB_COMPLETED, again["seq"] + 1)]
    finally:
        await runtime.close()


async def test_all_jobs_socket_streams_every_job(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, publisher: EventPublisher
) -> None:
    first = await new_job(api, docs, "one")
    await asyncio.wait_for(api.app[HUB].connected.wait(), 10)
    async with api.ws_connect("/api/ws/jobs") as ws:
        snapshot = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert snapshot["type"] == c.SNAPSHOT
        assert [job["id"] for job in snapshot["data"]["jobs"]] == [first]
        second = await new_job(api, docs, "two")
        queued = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert (queued["type"], queued["job_id"], queued["seq"]) == (c.JOB_QUEUED, second, 1)
        await JobEvents(publisher, first).emit(c.JOB_COMPLETED, runtime.jobs.finish_job(first))
        done = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert (done["type"], done["job_id"]) == (c.JOB_COMPLETED, first)


async def test_socket_auth_and_origin(aiohttp_client: ClientFactory, settings: Settings, docs: Path) -> None:
    from pydantic import SecretStr

    secured = settings.model_copy(update={"api_token": SecretStr("tok-123")})
    runtime = Runtime(secured)
    await runtime.open()
    try:
        api = await aiohttp_client(create_app(secured, runtime=runtime))
        refused = await api.get("/api/ws/jobs", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
        assert refused.status == 401
        async with api.ws_connect("/api/ws/jobs", headers={"Authorization": "Bearer tok-123"}) as ws:
            assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == c.SNAPSHOT
        async with api.ws_connect("/api/ws/jobs", protocols=("semantik", "bearer.tok-123")) as ws:
            assert ws.protocol == "semantik"
            assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == c.SNAPSHOT
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused_origin:
            await api.ws_connect(
                "/api/ws/jobs", headers={"Authorization": "Bearer tok-123", "Origin": "http://evil.example"}
            )
        assert refused_origin.value.status == 403
    finally:
        await runtime.close()


async def test_shutdown_closes_every_socket_as_going_away(
    aiohttp_server: Any, settings: Settings, runtime: Runtime, docs: Path
) -> None:
    server = await aiohttp_server(create_app(settings, runtime=runtime))
    async with aiohttp.ClientSession() as session:
        created = await session.post(server.make_url("/api/jobs"), json={"collection": "c", "directory": str(docs)})
        job_id = (await created.json())["id"]
        job_ws = await session.ws_connect(server.make_url(f"/api/jobs/{job_id}/ws"))
        all_ws = await session.ws_connect(server.make_url("/api/ws/jobs"))
        for ws in (job_ws, all_ws):
            assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == c.SNAPSHOT
        await server.close()
        for ws in (job_ws, all_ws):
            message = await ws.receive(timeout=RECEIVE_TIMEOUT_S)
            assert message.type == WSMsgType.CLOSE
            assert (message.data, message.extra) == (aiohttp.WSCloseCode.GOING_AWAY, "server shutdown")


async def test_sockets_are_pinged_and_a_silent_client_is_dropped(
    api: TestClient[Any, Any], docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from semantik import ws as ws_module

    monkeypatch.setattr(ws_module, "HEARTBEAT_S", 0.3)
    job_id = await new_job(api, docs)
    hub = api.app[HUB]
    # autoping=False: this client sees the server's pings and, like a vanished peer, never answers.
    async with api.ws_connect(f"/api/jobs/{job_id}/ws", autoping=False) as ws:
        assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == c.SNAPSHOT
        assert hub.listener_count == 1
        assert (await ws.receive(timeout=5)).type == WSMsgType.PING
        async with asyncio.timeout(10):  # no pong: the server gives up on the socket and frees its listener
            while hub.listener_count:
                await asyncio.sleep(0.05)
    assert hub.listener_count == 0


async def test_cli_follow_shows_progress_and_failed_files(
    aiohttp_server: Any, settings: Settings, runtime: Runtime, docs: Path, background_worker: Worker
) -> None:
    for i in range(5):
        write(docs / f"note{i}.md", f"# Note {i}\n\nSome words about subject {i}. " * 30)
    (docs / "broken.docx").write_bytes(b"PK\x03\x04 not really a docx")
    server = await aiohttp_server(create_app(settings, runtime=runtime))
    env = {**os.environ, "SEMANTIK_DATA_DIR": str(settings.data_dir), "COLUMNS": "120"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "semantik.cli", "index", str(docs), "-c", "cli", "--follow",
        "--url", str(server.make_url("")).rstrip("/"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    err = stderr.decode()
    assert process.returncode == 0, err
    final = json.loads(stdout)
    assert final["status"] == "completed_with_errors"
    assert (final["files_done"], final["files_failed"]) == (5, 1)
    assert "failed" in err and "broken.docx" in err and "DOCX" in err
    assert "completed_with_errors" in err and "6/6" in err
