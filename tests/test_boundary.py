"""Hostile folders, the scan and the run: names that are not UTF-8, special files, a job folder
swapped for a symlink out of the roots, and a job whose workers keep dying."""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from arq.worker import Worker

from semantik.domain import FileStatus, JobStatus, ScannedFile
from semantik.indexing import cron
from semantik.jobqueue import make_queue
from semantik.runtime import Runtime
from semantik.settings import Settings
from tests.helpers import create_job, job_view, wait_until, write

RunWorker = Callable[[], Awaitable[Worker]]


async def files_of(api: TestClient[Any, Any], job_id: str) -> dict[str, dict[str, Any]]:
    body = await (await api.get(f"/api/jobs/{job_id}/files")).json()
    return {f["path"]: f for f in body["files"]}


async def search(api: TestClient[Any, Any], query: str) -> list[dict[str, Any]]:
    response = await api.post("/api/search", json={"query": query, "collection": "c", "k": 5})
    assert response.status == 200
    results: list[dict[str, Any]] = (await response.json())["results"]
    return results


async def test_a_name_that_is_not_utf8_is_indexed_and_shown_escaped(
    api: TestClient[Any, Any], docs: Path, settings: Settings, run_worker: RunWorker
) -> None:
    raw_name = os.fsencode(str(docs)) + b"/caf\xe9-notes.txt"  # Latin-1 é: not valid UTF-8
    with open(raw_name, "wb") as handle:
        handle.write(b"The espresso machine descales itself every Tuesday night.")
    write(docs / "plain.txt", "Bicycles are stored in the basement.")
    job = await create_job(api, docs)
    await run_worker()
    done = await job_view(api, job["id"])
    assert done["status"] == JobStatus.COMPLETED and done["files_done"] == 2, done
    shown = f"{docs}/caf\\xe9-notes.txt"
    assert (await files_of(api, job["id"]))[shown]["status"] == FileStatus.DONE
    hits = await search(api, "when does the coffee machine descale")
    assert hits[0]["path"] == shown
    # Stored losslessly: the exact bytes are kept beside the escaped name.
    with sqlite3.connect(settings.db_path) as db:
        (raw,) = db.execute("SELECT raw_path FROM files WHERE path = ?", (shown,)).fetchone()
    assert raw == raw_name
    # A second run finds the same name again, and knows it is unchanged.
    again = await create_job(api, docs)
    await run_worker()
    assert (await job_view(api, again["id"]))["status"] == JobStatus.COMPLETED


async def test_fifos_and_sockets_are_skipped_with_a_reason_never_read(
    api: TestClient[Any, Any], docs: Path, run_worker: RunWorker
) -> None:
    write(docs / "normal.txt", "Normal notes about the quarterly budget.")
    os.mkfifo(docs / "pipe.txt")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(docs / "sock.txt"))
    try:
        job = await create_job(api, docs)
        await run_worker()  # a FIFO that was opened for reading would block this forever
        done = await job_view(api, job["id"])
        assert done["status"] == JobStatus.COMPLETED and done["files_done"] == 1, done
        files = await files_of(api, job["id"])
        assert files[str(docs / "pipe.txt")]["error"] == "not a regular file (fifo)"
        assert files[str(docs / "sock.txt")]["error"] == "not a regular file (socket)"
        assert files[str(docs / "pipe.txt")]["status"] == FileStatus.SKIPPED
    finally:
        listener.close()


async def test_a_retry_rechecks_the_folder_swapped_for_a_symlink_out_of_the_roots(
    api: TestClient[Any, Any], docs: Path, tmp_path: Path, run_worker: RunWorker
) -> None:
    folder = docs / "team"
    write(folder / "a.txt", "Inside the roots: the onboarding checklist.")
    (folder / "b.pdf").write_bytes(b"%PDF-1.4 broken")  # fails, so the job can be retried
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "Outside the roots: the payroll password is hunter2.")
    job = await create_job(api, folder)
    await run_worker()
    assert (await job_view(api, job["id"]))["status"] == JobStatus.COMPLETED_WITH_ERRORS
    # The folder becomes a symlink to outside the roots, then the user presses Retry.
    (folder / "a.txt").unlink()
    (folder / "b.pdf").unlink()
    folder.rmdir()
    folder.symlink_to(outside, target_is_directory=True)
    assert (await api.post(f"/api/jobs/{job['id']}/retry")).status == 202
    await run_worker()
    retried = await job_view(api, job["id"])
    assert retried["status"] == JobStatus.FAILED, retried
    assert "outside the allowed roots" in retried["error"]
    assert not [hit for hit in await search(api, "payroll password") if "hunter2" in hit["text"]]


async def test_a_job_whose_worker_keeps_dying_fails_naming_the_file(settings: Settings, docs: Path) -> None:
    """No crash loop: after SEMANTIK_JOB_MAX_ATTEMPTS runs that each lost their worker, the
    sweeper fails the job instead of re-queueing it, and names the file it was processing."""
    fast = settings.model_copy(update={"job_heartbeat_ttl_s": 1.0, "job_max_attempts": 2})
    write(docs / "killer.docx", "pretend this file kills every worker that reads it")
    rt = Runtime(fast)
    await rt.open()
    queue = make_queue(fast)
    try:
        job, _ = await rt.jobs.create_job(
            collection="c", directory=str(docs), recursive=True, include=None, exclude=None,
            name=None, model=rt.model_name, dim=rt.model_dim,
        )  # fmt: skip
        killer = str(docs / "killer.docx")
        for attempt in (1, 2):
            # A worker takes the run, reaches the file, and dies (no heartbeat, no goodbye).
            started = await rt.jobs.start_job(job.id, worker_id=f"dead:{attempt}", device="cpu")
            assert started is not None and started["attempts"] == attempt
            assert job.source_id is not None
            await rt.sources.record_scan(job.id, job.source_id, [ScannedFile(killer, 50, 0.0)], rows_for_unchanged=True)
            await rt.jobs.set_current_file(job.id, killer)

            async def swept() -> str | None:
                await cron.sweep_orphans(rt, queue)
                status = (await rt.jobs.get_job(job.id)).status
                return None if status == JobStatus.RUNNING else status

            expected = JobStatus.QUEUED if attempt == 1 else JobStatus.FAILED  # re-queued once, then given up
            assert await wait_until(swept, 15, "the sweeper to act") == expected
        failed = await job_view(rt, job.id)
        assert failed["status"] == JobStatus.FAILED and failed["attempts"] == 2
        assert "died 2 times while processing" in failed["error"] and killer in failed["error"]
        assert failed["failed_files"][0]["path"] == killer
        # It stays failed: the sweeper leaves it alone from now on.
        assert await cron.sweep_orphans(rt, queue) == []
    finally:
        await queue.aclose(close_connection_pool=True)
        await rt.close()
