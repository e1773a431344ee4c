"""Cancel, retry, the orphan sweeper and the retention cleanup, with a real worker and real Redis."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from arq.connections import ArqRedis
from arq.constants import result_key_prefix
from arq.worker import Worker

from semantik.cli.redis_server import free_port
from semantik.indexing import cron as maintenance
from semantik.jobqueue import make_queue
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.store.db import Database, in_thread
from tests.conftest import RuntimeFactory, WorkerStarter
from tests.helpers import count_points, embedded_store_held, job_view, new_job, wait_for_job, write


def long_corpus(docs: Path, files: int = 40) -> None:
    for i in range(files):
        write(docs / f"part{i:03}.txt", f"Section {i}: a long passage about subject {i} and its history. " * 120)


async def create(api: TestClient[Any, Any], docs: Path, collection: str = "life") -> str:
    return await new_job(api, docs, collection)


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[ArqRedis]:
    client = make_queue(settings)
    yield client
    await client.aclose()


async def test_cancel_queued_job(api: TestClient[Any, Any], docs: Path, run_worker: Any) -> None:
    write(docs / "a.txt", "alpha")
    job_id = await create(api, docs)
    response = await api.post(f"/api/jobs/{job_id}/cancel")
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    await run_worker()  # the queue entry is still there; the worker must not run it
    job = await job_view(api, job_id)
    assert (job["status"], job["files_total"], job["started_at"]) == ("cancelled", 0, None)
    again = await api.post(f"/api/jobs/{job_id}/cancel")
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "job_finished"


async def test_cancel_running_job_stops_fast_and_keeps_what_it_indexed(
    api: TestClient[Any, Any], docs: Path, runtime: Runtime, background_worker: Worker
) -> None:
    long_corpus(docs, files=60)
    job_id = await create(api, docs)
    await wait_for_job(api, job_id, lambda j: j["files_done"] >= 2)
    asked = time.monotonic()
    response = await api.post(f"/api/jobs/{job_id}/cancel")
    assert response.status == 202
    assert (await response.json())["cancel_requested_at"]
    job = await wait_for_job(api, job_id, {"cancelled"}, timeout_s=30)
    stopped_s = time.monotonic() - asked
    print(f"cancel_latency_s={stopped_s:.2f}")
    assert stopped_s < 5, stopped_s  # the issue asks for 2 s; allow for a loaded CI machine
    assert 2 <= job["files_done"] < 60 and job["finished_at"]
    # What was indexed stays, exactly: every done file's chunks are points, nothing more.
    assert await count_points(runtime, "life") == job["chunks"] > 0
    assert (await api.post(f"/api/jobs/{job_id}/cancel")).status == 409

    # Retry processes only what is not done, and ends with exactly a clean run's vectors.
    retried = await api.post(f"/api/jobs/{job_id}/retry")
    assert retried.status == 202
    assert (await retried.json())["attempts"] == 2
    done = await wait_for_job(api, job_id, {"completed"})
    assert done["files_done"] == 60
    clean = await create(api, docs, collection="clean")
    clean_job = await wait_for_job(api, clean, {"completed"})
    assert await count_points(runtime, "life") == await count_points(runtime, "clean") == clean_job["chunks"]
    assert done["chunks"] == clean_job["chunks"]


async def test_retry_a_failed_job(api: TestClient[Any, Any], docs: Path, run_worker: Any) -> None:
    target = docs / "moving"
    write(target / "a.txt", "The quick brown fox jumps over the lazy dog.")
    job_id = await create(api, target)
    (target / "a.txt").rename(docs / "a.txt")
    target.rmdir()
    await run_worker()
    assert (await job_view(api, job_id))["status"] == "failed"
    not_yet = await api.post(f"/api/jobs/{job_id}/retry")
    assert not_yet.status == 202
    target.mkdir()
    (docs / "a.txt").rename(target / "a.txt")
    await run_worker()
    job = await job_view(api, job_id)
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
    first = await job_view(api, job_id)
    assert (first["status"], first["files_done"], first["files_failed"]) == ("completed_with_errors", 1, 2)

    # The user deletes one bad file, replaces the other with a good one, and retries.
    broken.unlink()
    fixable.unlink()
    write(docs / "fixable.txt", "The fixed version, as plain text. " * 10)
    assert (await api.post(f"/api/jobs/{job_id}/retry")).status == 202
    await run_worker()
    job = await job_view(api, job_id)
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
    api: TestClient[Any, Any], docs: Path, make_runtime: RuntimeFactory, queue: ArqRedis, run_worker: Any
) -> None:
    write(docs / "a.txt", "Orphans are picked up again.")
    rt = await make_runtime(job_heartbeat_ttl_s=1.0)
    job_id = await create(api, docs)
    # A worker took it and died at once: running, no heartbeat ever written.
    assert await rt.jobs.start_job(job_id, worker_id="dead-host:1", device="cpu/fp32") is not None
    await rt.db.execute(
        "UPDATE jobs SET started_at = ? WHERE id = ?",
        ((datetime.now(UTC) - timedelta(minutes=5)).isoformat(), job_id),
    )
    assert await maintenance.sweep_orphans(rt, queue) == []  # first sight: only a suspect
    await asyncio.sleep(1.2)  # the heartbeat TTL passes; waiting longer changes nothing
    assert await maintenance.sweep_orphans(rt, queue) == [job_id]
    job = await job_view(api, job_id)
    assert (job["status"], job["attempts"]) == ("queued", 2)
    assert "heartbeat" in job["error"]
    assert await queue.zscore(rt.settings.redis_names.queue, f"{job_id}:run2") is not None
    assert await queue.zscore(rt.settings.redis_names.queue, job_id) is None  # the dead run's entry is gone
    await run_worker()
    assert (await job_view(api, job_id))["status"] == "completed"


async def test_sweeper_requeues_a_queued_job_that_redis_lost(
    api: TestClient[Any, Any], docs: Path, make_runtime: RuntimeFactory, queue: ArqRedis, run_worker: Any
) -> None:
    write(docs / "a.txt", "Lost and found.")
    job_id = await create(api, docs)
    await queue.flushall()  # Redis restarted without persistence
    rt = await make_runtime(job_heartbeat_ttl_s=1.0)
    await asyncio.sleep(1.1)  # older than the grace: a job queued a moment ago may not be in Redis yet
    assert await maintenance.sweep_orphans(rt, queue) == []
    await asyncio.sleep(1.1)  # the grace passes; waiting longer changes nothing
    assert await maintenance.sweep_orphans(rt, queue) == [job_id]
    await run_worker()
    assert (await job_view(api, job_id))["status"] == "completed"


async def test_cleanup_removes_exactly_the_old_finished_jobs(
    api: TestClient[Any, Any], docs: Path, runtime: Runtime, queue: ArqRedis, capsys: pytest.CaptureFixture[str]
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
    for job_id in ids:
        await queue.set(result_key_prefix + job_id, b"result")
    removed = await maintenance.cleanup_finished_jobs(runtime, queue)
    assert sorted(removed) == sorted(ids[:2])
    remaining = [job["id"] for job in (await (await api.get("/api/jobs")).json())["jobs"]]
    assert sorted(remaining) == sorted(ids[2:])
    for job_id in ids:
        assert bool(await queue.exists(result_key_prefix + job_id)) == (job_id not in ids[:2])
    assert (await api.get(f"/api/jobs/{ids[0]}")).status == 404
    assert "jobs_cleaned_up" in capsys.readouterr().out


async def test_vector_store_outage_inside_a_job_retries_with_backoff_and_completes(
    api: TestClient[Any, Any], docs: Path, runtime: Runtime, background_worker: Worker
) -> None:
    """A real outage: while another process holds the embedded Qdrant store, the worker's store
    cannot open it and answers Unavailable, as it does for an unreachable Qdrant server."""
    long_corpus(docs, files=6)
    with embedded_store_held(runtime.settings.vectors_path):
        job_id = await create(api, docs)
        requeued = await wait_for_job(api, job_id, lambda j: j["status"] == "queued" and bool(j["error"]))
        assert "retrying in" in requeued["error"] and "held by another process" in requeued["error"]
        assert requeued["files_total"] == 6 and requeued["attempts"] == 1  # the same run, resumed later
    # The store is free again: the next try (arq's backoff) opens it and finishes the job.
    done = await wait_for_job(api, job_id, {"completed", "completed_with_errors", "failed"})
    assert done["status"] == "completed" and done["error"] is None, done
    assert done["files_done"] == 6 and done["attempts"] == 1
    assert await count_points(runtime, "life") == done["chunks"] > 0  # nothing lost, nothing twice


@pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning")
async def test_unreachable_qdrant_server_fails_the_job_after_its_tries(
    api: TestClient[Any, Any], docs: Path, make_runtime: RuntimeFactory, start_worker: WorkerStarter
) -> None:
    """A real refused connection: the worker's SEMANTIK_QDRANT_URL points at a port nobody listens on."""
    write(docs / "a.txt", "Nowhere to store this. " * 20)
    unreachable = await make_runtime(qdrant_url=f"http://127.0.0.1:{free_port()}", job_max_tries=2)
    start_worker(unreachable)
    job_id = await create(api, docs)
    requeued = await wait_for_job(api, job_id, lambda j: j["status"] == "queued" and bool(j["error"]))
    assert "retrying in 2 s" in requeued["error"]
    failed = await wait_for_job(api, job_id, {"completed", "completed_with_errors", "failed"})
    assert failed["status"] == "failed" and "connection" in failed["error"].lower(), failed
    assert "retrying" not in failed["error"]  # the last try says what went wrong, not what comes next


# -- SQLite steps in one hop ---------------------------------------------------------------------


async def test_a_write_step_is_applied_whole_or_not_at_all(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.sqlite3")
    await db.open()
    try:
        await db.write(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"))

        def two_rows_then_a_clash(conn: sqlite3.Connection, value: str) -> None:
            conn.execute("INSERT INTO t VALUES (1, ?)", (value,))
            conn.execute("INSERT INTO t VALUES (2, ?)", (value,))
            conn.execute("INSERT INTO t VALUES (1, ?)", (value,))  # the same key again

        with pytest.raises(sqlite3.IntegrityError):
            await db.write(two_rows_then_a_clash, "lost")
        assert await db.fetchall("SELECT * FROM t") == []  # the first two rows went with it

        def add(conn: sqlite3.Connection, rows: list[tuple[int, str]]) -> int:
            conn.executemany("INSERT INTO t VALUES (?, ?)", rows)
            return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])

        assert await db.write(add, [(1, "a"), (2, "b")]) == 2
        # Steps run from the loop inside an open transaction share it, and its rollback.
        with pytest.raises(RuntimeError, match="stop"):
            async with db.transaction() as conn:
                assert await in_thread(conn, add, [(3, "c")]) == 3
                raise RuntimeError("stop")
        assert [tuple(row) for row in await db.fetchall("SELECT k, v FROM t ORDER BY k")] == [(1, "a"), (2, "b")]

        # A caller cancelled while its step runs on SQLite's thread gets CancelledError only once the
        # step has ended: it is applied whole, and the writer is free again for the next one.
        def slow_add(conn: sqlite3.Connection, rows: list[tuple[int, str]]) -> int:
            time.sleep(0.3)
            return add(conn, rows)

        step = asyncio.create_task(db.write(slow_add, [(5, "e")]))
        await asyncio.sleep(0.05)
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step
        assert [row[0] for row in await db.fetchall("SELECT k FROM t ORDER BY k")] == [1, 2, 5]
        assert await db.write(add, [(6, "f")]) == 4
    finally:
        await db.close()


async def test_a_commit_that_fails_leaves_no_transaction_open_and_keeps_its_error(tmp_path: Path) -> None:
    """SQLite checks a deferred foreign key at COMMIT, and a COMMIT refused that way leaves the
    transaction open: both write paths must roll it back, raise SQLite's own error, and free the writer."""
    db = Database(tmp_path / "state.sqlite3")
    await db.open()
    try:
        await db.write(lambda conn: conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        await db.write(
            lambda conn: conn.execute(
                "CREATE TABLE child (id INTEGER PRIMARY KEY,"
                " parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )

        def orphan(conn: sqlite3.Connection, child: int) -> None:
            conn.execute("INSERT INTO child VALUES (?, 99)", (child,))

        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await db.write(orphan, 1)
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO child VALUES (2, 99)")
        assert await db.fetchall("SELECT * FROM child") == []

        # The writer is free and outside any transaction: the next steps on both paths commit.
        await db.write(lambda conn: conn.execute("INSERT INTO parent VALUES (99)"))
        await db.write(orphan, 3)
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO child VALUES (4, 99)")
        assert [row[0] for row in await db.fetchall("SELECT id FROM child ORDER BY id")] == [3, 4]
    finally:
        await db.close()


async def test_a_transaction_cancelled_while_it_waits_for_sqlites_lock_leaves_nothing_open(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock, so BEGIN waits (up to the busy timeout) on SQLite's
    thread; the caller is cancelled meanwhile. When the lock frees, the BEGIN that still ran must not
    leave the writer inside a transaction nobody owns: the next writes commit."""
    path = tmp_path / "state.sqlite3"
    db = Database(path)
    await db.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await db.write(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        other.execute("BEGIN IMMEDIATE")  # the other process's write lock
        began = asyncio.Event()

        async def writer() -> None:
            began.set()
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO t VALUES (1)")

        task = asyncio.create_task(writer())
        await began.wait()
        await asyncio.sleep(0.2)  # its BEGIN now waits for the lock
        task.cancel()
        await asyncio.sleep(0.1)
        other.execute("COMMIT")  # the lock frees; the BEGIN goes through on SQLite's thread
        with pytest.raises(asyncio.CancelledError):
            await task
        await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO t VALUES (3)")
        assert [row[0] for row in await db.fetchall("SELECT k FROM t ORDER BY k")] == [2, 3]
        other.execute("BEGIN IMMEDIATE")  # and the writer holds no lock: another process can write
        other.execute("ROLLBACK")
    finally:
        other.close()
        await db.close()
