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

from semantik.cli.redis_server import RedisServer
from semantik.domain import EventType
from semantik.events.hub import FANOUT_SLICE, EventHub
from semantik.events.publish import EventPublisher, JobEvents
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.app import create_app
from semantik.web.appkeys import HUB
from tests.conftest import ApiFactory
from tests.helpers import new_job, read_until_closed, wait_until, write

RECEIVE_TIMEOUT_S = 30


def assert_contiguous(messages: list[dict[str, Any]]) -> None:
    """A snapshot, then every later event exactly once, in order."""
    assert messages[0]["type"] == EventType.SNAPSHOT
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


@pytest.fixture
async def publisher(redis_url: str, settings: Settings) -> AsyncIterator[EventPublisher]:
    redis = Redis.from_url(redis_url)
    yield EventPublisher(redis, settings.redis_names)
    await redis.aclose()


def overflows(hub: EventHub, job_id: str) -> int:
    """How often the hub dropped a listener's queue of this job's events and told it to resync."""
    return sum(listener.overflows for listener in hub._by_job.get(job_id, ()))


async def test_snapshot_then_every_event_in_order_while_events_are_published(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, publisher: EventPublisher
) -> None:
    job_id = await new_job(api, docs)
    events = JobEvents(publisher, job_id)
    await asyncio.wait_for(api.app[HUB].connected.wait(), 10)

    watchers, spacing = 6, 20
    emitted = 0
    progressed = asyncio.Condition()
    joined: list[int] = []
    all_joined = asyncio.Event()

    async def produce() -> None:
        # Events keep coming until every watcher is in, so each one joins mid-stream.
        nonlocal emitted
        while emitted < 150 or not all_joined.is_set():
            await events.emit(EventType.FILE_COMPLETED, runtime.jobs.progress(job_id), path="x")
            emitted += 1
            async with progressed:
                progressed.notify_all()
            await asyncio.sleep(0)
        for _ in range(10):
            await events.emit(EventType.FILE_COMPLETED, runtime.jobs.progress(job_id), path="x")
        await events.emit(EventType.JOB_COMPLETED, runtime.jobs.finish_job(job_id))

    async def watch(in_: asyncio.Event) -> list[dict[str, Any]]:
        async with api.ws_connect(f"/api/jobs/{job_id}/ws") as ws:
            snapshot = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
            joined.append(snapshot["seq"])
            in_.set()
            return [snapshot, *await read_until_closed(ws)]

    async def join_one_by_one() -> list[asyncio.Task[list[dict[str, Any]]]]:
        # Each watcher connects once `spacing` more events went out after the previous one had its
        # snapshot: they join at different, known points of the stream, however busy the machine.
        tasks = []
        for _ in range(watchers):
            mark = emitted + spacing

            def reached(mark: int = mark) -> bool:
                return emitted >= mark

            async with progressed:
                await progressed.wait_for(reached)
            in_ = asyncio.Event()
            tasks.append(asyncio.create_task(watch(in_)))
            await asyncio.wait_for(in_.wait(), RECEIVE_TIMEOUT_S)
        all_joined.set()
        return tasks

    producer = asyncio.create_task(produce())
    streams = await asyncio.gather(*await join_one_by_one())
    await producer
    final = await (await api.get(f"/api/jobs/{job_id}")).json()
    assert final["seq"] >= 162  # job_queued, at least 160 events, job_completed
    for messages in streams:
        assert_contiguous(messages)
        assert messages[-1]["type"] == EventType.JOB_COMPLETED
        assert messages[-1]["seq"] == final["seq"]
    assert joined == sorted(joined) and len(set(joined)) == watchers, joined  # each at its own point
    assert joined[-1] < final["seq"] - 10  # the last one too joined while events were still coming


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
    assert types[-1] == EventType.JOB_COMPLETED
    assert types[-2] == EventType.PROGRESS  # always one progress at the end
    assert EventType.SCAN_COMPLETED in types and EventType.FILE_FAILED in types
    assert types.count(EventType.FILE_COMPLETED) + (messages[0]["data"]["files_done"]) == 12
    failed = next(m for m in messages if m["type"] == EventType.FILE_FAILED)
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
        await events.emit(EventType.FILE_COMPLETED, runtime.jobs.progress(job_id), path="a")
        seen = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert seen["seq"] == snapshot["seq"] + 1
    for _ in range(3):  # missed while disconnected
        await events.emit(EventType.FILE_COMPLETED, runtime.jobs.progress(job_id), path="b")
    async with api.ws_connect(f"/api/jobs/{job_id}/ws?after_seq={seen['seq']}") as ws:
        fresh = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert fresh["type"] == EventType.SNAPSHOT and fresh["seq"] == seen["seq"] + 3
        await events.emit(EventType.JOB_COMPLETED, runtime.jobs.finish_job(job_id))
        rest = await read_until_closed(ws)
    assert [(m["type"], m["seq"]) for m in rest] == [(EventType.JOB_COMPLETED, fresh["seq"] + 1)]
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
    assert [m["type"] for m in messages] == [EventType.SNAPSHOT]
    assert messages[0]["data"]["status"] == "completed"
    async with api.ws_connect(f"/api/jobs/{job_id}/ws?stay=1") as ws:
        assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == EventType.SNAPSHOT
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.5)
    missing = await api.get("/api/jobs/nope/ws")
    assert missing.status == 404


async def test_a_client_that_never_reads_does_not_slow_another(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, publisher: EventPublisher
) -> None:
    job_id = await new_job(api, docs)
    events = JobEvents(publisher, job_id)
    hub = api.app[HUB]
    await asyncio.wait_for(hub.connected.wait(), 10)
    padding = "x" * 4096
    url = f"/api/jobs/{job_id}/ws"
    async with api.ws_connect(url) as stuck, api.ws_connect(url) as healthy:
        assert (await stuck.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == EventType.SNAPSHOT
        assert (await healthy.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == EventType.SNAPSHOT
        received: list[int] = []

        async def read_healthy() -> None:
            while True:
                received.append((await healthy.receive_json(timeout=RECEIVE_TIMEOUT_S))["seq"])

        reader = asyncio.create_task(read_healthy())
        # `stuck` reads nothing meanwhile: once the socket buffers between it and the server are
        # full (how big they are is the kernel's business), its events queue in the hub until the
        # queue (LISTENER_MAX_EVENTS) overflows. Publish until that has happened.
        total = 0
        try:
            while not overflows(hub, job_id):
                assert total < 100_000, "the stuck client never overflowed"
                await events.emit(EventType.FILE_COMPLETED, runtime.jobs.progress(job_id), padding=padding)
                total += 1
            print(f"events_until_overflow={total}")
            await wait_until(lambda: len(received) >= total, 60, lambda: f"{total} events on the healthy socket")
        finally:
            reader.cancel()
        # The healthy client got every event, in order, while the other one was stuck.
        assert received == list(range(2, total + 2))
        # The stuck client was resynchronised instead of buffering without bound.
        assert overflows(hub, job_id) >= 1
        # When it finally reads, it gets what was queued, then a fresh snapshot; seqs never go backwards.
        seqs, types = [], []
        while True:
            message = await stuck.receive_json(timeout=RECEIVE_TIMEOUT_S)
            seqs.append(message["seq"])
            types.append(message["type"])
            if message["type"] == EventType.SNAPSHOT:
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
        assert {m["type"] for m in firsts} == {EventType.SNAPSHOT}
        listeners = list(hub._by_job[job_id])
        assert len(listeners) == count
        # Every socket idles, so the relay writes to it directly.
        await wait_until(lambda: all(listener.transport is not None for listener in listeners), 30, "idle sockets")

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
        await events.emit(EventType.FILE_COMPLETED, runtime.jobs.progress(job_id), path="first")
        await wait_until(
            lambda: all(listener.last_seq.get(job_id, 0) >= 2 for listener in listeners), 30, "the fan-out", 0
        )
        stop.set()
        await watcher
        assert partial_counts and all(n % FANOUT_SLICE == 0 for n in partial_counts), partial_counts

        for _ in range(20):
            await events.emit(EventType.FILE_COMPLETED, runtime.jobs.progress(job_id), path="x")
        await events.emit(EventType.JOB_COMPLETED, runtime.jobs.finish_job(job_id))
        streams = await asyncio.gather(*(read_until_closed(ws) for ws in sockets))
    for first, stream in zip(firsts, streams, strict=True):
        messages = [first, *stream]
        assert_contiguous(messages)
        assert messages[-1]["type"] == EventType.JOB_COMPLETED and messages[-1]["seq"] == 23


async def test_redis_restart_sockets_get_a_new_snapshot_then_events(
    make_api: ApiFactory, docs: Path, private_redis: RedisServer
) -> None:
    api, runtime = await make_api(redis_url=private_redis.url)
    job_id = await new_job(api, docs)
    hub = api.app[HUB]
    await asyncio.wait_for(hub.connected.wait(), 10)
    async with api.ws_connect(f"/api/jobs/{job_id}/ws") as ws:
        first = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert first["type"] == EventType.SNAPSHOT
        await asyncio.to_thread(private_redis.stop)
        await wait_until(lambda: not hub.connected.is_set(), 30, "the relay to notice Redis is gone")
        # REST keeps working while Redis is away; the state changes meanwhile are stored.
        await runtime.jobs.progress(job_id)
        assert (await api.get(f"/api/jobs/{job_id}")).status == 200
        await asyncio.to_thread(private_redis.start)
        again = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert again["type"] == EventType.SNAPSHOT and again["seq"] == first["seq"] + 1
        redis = Redis.from_url(private_redis.url)
        try:
            events = JobEvents(EventPublisher(redis, runtime.settings.redis_names), job_id)
            await events.emit(EventType.JOB_COMPLETED, runtime.jobs.finish_job(job_id))
        finally:
            await redis.aclose()
        rest = await read_until_closed(ws)
    assert [(m["type"], m["seq"]) for m in rest] == [(EventType.JOB_COMPLETED, again["seq"] + 1)]


async def test_all_jobs_socket_streams_every_job(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, publisher: EventPublisher
) -> None:
    first = await new_job(api, docs, "one")
    await asyncio.wait_for(api.app[HUB].connected.wait(), 10)
    async with api.ws_connect("/api/ws/jobs") as ws:
        snapshot = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert snapshot["type"] == EventType.SNAPSHOT
        assert [job["id"] for job in snapshot["data"]["jobs"]] == [first]
        second = await new_job(api, docs, "two")
        queued = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert (queued["type"], queued["job_id"], queued["seq"]) == (EventType.JOB_QUEUED, second, 1)
        await JobEvents(publisher, first).emit(EventType.JOB_COMPLETED, runtime.jobs.finish_job(first))
        done = await ws.receive_json(timeout=RECEIVE_TIMEOUT_S)
        assert (done["type"], done["job_id"]) == (EventType.JOB_COMPLETED, first)


async def test_socket_auth_and_origin(make_api: ApiFactory, docs: Path) -> None:
    from pydantic import SecretStr

    api, _ = await make_api(api_token=SecretStr("tok-123"))
    refused = await api.get("/api/ws/jobs", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert refused.status == 401
    async with api.ws_connect("/api/ws/jobs", headers={"Authorization": "Bearer tok-123"}) as ws:
        assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == EventType.SNAPSHOT
    async with api.ws_connect("/api/ws/jobs", protocols=("semantik", "bearer.tok-123")) as ws:
        assert ws.protocol == "semantik"
        assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == EventType.SNAPSHOT
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused_origin:
        await api.ws_connect(
            "/api/ws/jobs", headers={"Authorization": "Bearer tok-123", "Origin": "http://evil.example"}
        )
    assert refused_origin.value.status == 403


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
            assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == EventType.SNAPSHOT
        await server.close()
        for ws in (job_ws, all_ws):
            message = await ws.receive(timeout=RECEIVE_TIMEOUT_S)
            assert message.type == WSMsgType.CLOSE
            assert (message.data, message.extra) == (aiohttp.WSCloseCode.GOING_AWAY, "server shutdown")


async def test_sockets_are_pinged_and_a_silent_client_is_dropped(
    api: TestClient[Any, Any], docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from semantik.web import ws as ws_module

    # The ping interval is configuration, not behaviour: shortened so the test takes a second.
    monkeypatch.setattr(ws_module, "HEARTBEAT_S", 0.3)
    job_id = await new_job(api, docs)
    hub = api.app[HUB]
    # autoping=False: this client sees the server's pings and, like a vanished peer, never answers.
    async with api.ws_connect(f"/api/jobs/{job_id}/ws", autoping=False) as ws:
        assert (await ws.receive_json(timeout=RECEIVE_TIMEOUT_S))["type"] == EventType.SNAPSHOT
        assert hub.listener_count == 1
        assert (await ws.receive(timeout=RECEIVE_TIMEOUT_S)).type == WSMsgType.PING
        # No pong: the server gives up on the socket and frees its listener.
        await wait_until(lambda: hub.listener_count == 0, 30, "the silent socket to be dropped")
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
