"""Faults injected into real worker processes (the plain arq CLI) and a real Redis we can kill.

For each fault the job must still end ``completed`` with exactly the vectors a clean run makes.
The API runs in this process; the workers hold the embedded Qdrant store, one at a time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from semantik.cli.redis_server import RedisServer
from semantik.indexing.chunk import chunker_for
from semantik.indexing.scan import folder_entry
from semantik.inference.embedder import default_model_path
from semantik.runtime import Runtime
from semantik.settings import Settings
from tests.conftest import ApiFactory, RuntimeFactory
from tests.helpers import JobView, ended, job_view, new_job, run_burst, stored_points, wait_for_job, write

REPO = Path(__file__).resolve().parents[1]
ARQ = Path(sys.executable).parent / "arq"
FILES = 36


def corpus(docs: Path) -> list[str]:
    texts = [f"Chapter {i}. A slow and detailed account of event {i} and what followed. " * 110 for i in range(FILES)]
    for i, text in enumerate(texts):
        write(docs / f"chapter{i:03}.txt", text)
    return texts


def clean_run_chunks(texts: list[str]) -> int:
    """What a clean run stores: the chunker's output for every file."""
    chunker = chunker_for(default_model_path(), 256, 32)
    return sum(len(chunker.chunk(text)) for text in texts)


class Workers:
    """arq CLI worker processes sharing the test's settings through the environment."""

    def __init__(self, settings: Settings, docs: Path, log_dir: Path) -> None:
        self.env = {
            **os.environ,
            "SEMANTIK_DATA_DIR": str(settings.data_dir),
            "SEMANTIK_ALLOWED_ROOTS": str(docs),
            "SEMANTIK_REDIS_URL": str(settings.redis_url),
            "SEMANTIK_WORKER_POLL_DELAY_S": "0.05",
            "SEMANTIK_JOB_HEARTBEAT_TTL_S": "2",
            "SEMANTIK_LOG_FORMAT": "json",
        }
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """One more worker; ``prefix`` goes before the command (e.g. to drop privileges)."""
        log = (self.log_dir / f"worker{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [*prefix, str(ARQ), "workers.main.WorkerSettings"], cwd=REPO, env=self.env, stdout=log, stderr=log
        )
        log.close()
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in sorted(self.log_dir.glob("worker*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def workers(settings: Settings, docs: Path, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(settings, docs, tmp_path)
    yield group
    group.stop_all()


async def until(
    api: TestClient[Any, Any], job_id: str, reached: Callable[[JobView], bool], workers: Workers
) -> JobView:
    """The job once ``reached(job)``; on timeout the failure shows the workers' logs too."""
    return await wait_for_job(api, job_id, reached, timeout_s=180, describe=workers.logs)


async def start_job(api: TestClient[Any, Any], docs: Path) -> str:
    return await new_job(api, docs, "chaos")


async def test_worker_killed_mid_job_is_resumed_by_another(
    api: TestClient[Any, Any], settings: Settings, docs: Path, workers: Workers
) -> None:
    texts = corpus(docs)
    first = workers.start()
    job_id = await start_job(api, docs)
    before = await until(api, job_id, lambda j: j["files_done"] >= 3, workers)
    first.send_signal(signal.SIGKILL)  # no cleanup, no goodbye
    first.wait()
    killed_at = time.monotonic()
    workers.start()
    done = await until(api, job_id, ended, workers)
    assert done["status"] == "completed", workers.logs()
    assert done["attempts"] == 2 and done["files_done"] == FILES
    assert "heartbeat" not in (done["error"] or "")
    resumed_s = time.monotonic() - killed_at
    workers.stop_all()
    expected = clean_run_chunks(texts)
    assert done["chunks"] == expected
    assert stored_points(settings, "chaos") == (expected, expected)  # nothing lost, nothing twice
    assert before["files_done"] >= 3 and resumed_s < 120


async def test_sigterm_checkpoints_and_the_job_resumes(
    api: TestClient[Any, Any], settings: Settings, docs: Path, workers: Workers
) -> None:
    texts = corpus(docs)
    first = workers.start()
    job_id = await start_job(api, docs)
    await until(api, job_id, lambda j: j["files_done"] >= 3, workers)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=30)
    paused = await job_view(api, job_id)
    assert paused["status"] == "queued", workers.logs()  # handed back, not failed
    assert 3 <= paused["files_done"] < FILES
    workers.start()
    done = await until(api, job_id, ended, workers)
    assert done["status"] == "completed", workers.logs()
    workers.stop_all()
    expected = clean_run_chunks(texts)
    assert stored_points(settings, "chaos") == (expected, expected)


async def test_redis_restart_mid_job(
    make_api: ApiFactory, tmp_path: Path, docs: Path, private_redis: RedisServer
) -> None:
    texts = corpus(docs)
    api, runtime = await make_api(redis_url=private_redis.url)
    group = Workers(runtime.settings, docs, tmp_path)
    try:
        group.start()
        job_id = await start_job(api, docs)
        await until(api, job_id, lambda j: j["files_done"] >= 2, group)
        await asyncio.to_thread(private_redis.stop)
        await asyncio.sleep(2)  # the outage: the worker's commands fail and retry meanwhile
        await asyncio.to_thread(private_redis.start)  # same port, empty: nothing was persisted
        done = await until(api, job_id, ended, group)
        assert done["status"] == "completed", group.logs()
        assert group.processes[0].poll() is None, "the worker survived the restart"
        group.stop_all()
        expected = clean_run_chunks(texts)
        assert done["chunks"] == expected
        assert stored_points(runtime.settings, "chaos") == (expected, expected)
    finally:
        group.stop_all()


async def test_bad_files_are_each_accounted_for(
    api: TestClient[Any, Any], docs: Path, make_runtime: RuntimeFactory
) -> None:
    good = write(docs / "good.md", "# Fine\n\nA perfectly ordinary document.")
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.5\n1 0 obj << /Type /Catalog >>\ntrailer\n%%EOF")
    (docs / "corrupt.docx").write_bytes(b"PK\x03\x04\x14\x00garbage")
    (docs / "empty.txt").write_bytes(b"")
    (docs / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (docs / "huge.txt").write_bytes(b"word " * (2 * 1024 * 1024 // 5 + 10))
    (docs / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (docs / "escape.txt").symlink_to("/etc/hostname")
    (docs / "dangling.txt").symlink_to(docs / "nowhere.txt")
    job_id = await new_job(api, docs, "bad", include=["*"])
    await run_burst(await make_runtime(max_file_size_mb=1.0), timeout_s=120)  # a worker with a 1 MB limit
    job = await job_view(api, job_id)
    files = {Path(f["path"]).name: f for f in (await (await api.get(f"/api/jobs/{job_id}/files")).json())["files"]}
    assert job["files_total"] == len(files) == 9
    assert job["files_done"] + job["files_failed"] + job["files_skipped"] == 9
    assert job["status"] == "completed_with_errors"
    expected = {
        good.name: ("done", None),
        "corrupt.pdf": ("failed", "PDF"),
        "corrupt.docx": ("failed", "DOCX"),
        "binary.txt": ("failed", "binary"),
        "empty.txt": ("skipped", "no text"),
        "huge.txt": ("skipped", "larger than"),
        "clip.mp4": ("skipped", "unsupported"),
        "escape.txt": ("skipped", "outside the allowed roots"),
        "dangling.txt": ("skipped", "broken symlink"),
    }
    for name, (status, reason) in expected.items():
        assert files[name]["status"] == status, (name, files[name])
        if reason:
            assert reason in (files[name]["error"] or ""), (name, files[name])


def file_modes_apply() -> list[str]:
    """A command prefix under which a worker is bound by file modes, as a service account is.

    Root reads any file through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH; the worker runs as root
    without them (dropped from its bounding set), so a mode-000 file or folder is unreadable to it.
    """
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    try:
        subprocess.run([*prefix, "true"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot drop root's read-anything capabilities here (setpriv missing or not permitted)")
    return prefix


async def test_unreadable_files_and_folders_fail_alone_and_a_retry_takes_them(
    api: TestClient[Any, Any], docs: Path, workers: Workers
) -> None:
    prefix = file_modes_apply()
    write(docs / "good.txt", "An ordinary note about the garden and its roses. " * 20)
    secret = write(docs / "secret.txt", "Quarterly numbers for the board, not for everyone. " * 20)
    private = docs / "private"
    write(private / "inner.md", "# Inner\n\nNotes kept in a folder nobody could open. " * 20)
    secret.chmod(0)
    private.chmod(0)
    try:
        workers.start(prefix)
        job_id = await start_job(api, docs)
        job = await until(api, job_id, ended, workers)
        files = await files_of(api, job_id)
        assert job["status"] == "completed_with_errors", (job, files)
        assert (job["files_done"], job["files_failed"]) == (1, 2)
        assert files[str(docs / "good.txt")] == ("done", None)
        assert files[str(secret)] == ("failed", "permission denied")
        assert files[folder_entry(private)] == ("failed", "cannot list folder: Permission denied")

        # A job on a folder the worker cannot list at all fails as a whole, and says why.
        response = await api.post("/api/jobs", json={"collection": "chaos", "directory": str(private)})
        locked_id = (await response.json())["id"]
        locked = await until(api, locked_id, ended, workers)
        assert locked["status"] == "failed"
        assert f"cannot list {private}: Permission denied" in locked["error"]

        # The owner fixes the modes and retries: what failed is indexed now, nothing else changes.
        secret.chmod(0o644)
        private.chmod(0o755)
        assert (await api.post(f"/api/jobs/{job_id}/retry")).status == 202
        job = await until(api, job_id, ended, workers)
        files = await files_of(api, job_id)
        assert job["status"] == "completed", (job, files)
        assert (job["files_done"], job["files_failed"], job["files_skipped"]) == (3, 0, 1)
        assert files[str(secret)] == ("done", None)
        assert files[str(private / "inner.md")] == ("done", None)
        assert files[folder_entry(private)][0] == "skipped"
    finally:
        secret.chmod(0o644)
        private.chmod(0o755)


async def files_of(api: TestClient[Any, Any], job_id: str) -> dict[str, tuple[str, str | None]]:
    listing = await (await api.get(f"/api/jobs/{job_id}/files")).json()
    return {f["path"]: (f["status"], f["error"]) for f in listing["files"]}


# -- folder sync under faults ---------------------------------------------------------------------


async def sync_job(api: TestClient[Any, Any]) -> str:
    response = await api.post("/api/collections/chaos/sync")
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


async def in_step(api: TestClient[Any, Any]) -> dict[str, Any]:
    response = await api.get("/api/collections/chaos/check")
    assert response.status == 200, await response.text()
    report = dict(await response.json())
    counts = (report["vectors_without_file"], report["files_without_vectors"], report["files_missing"])
    assert counts == (0, 0, 0) and report["ok"], report
    return report


async def test_a_sync_killed_halfway_converges_when_it_resumes(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, workers: Workers
) -> None:
    texts = corpus(docs)
    workers.start()
    first = await until(api, await start_job(api, docs), ended, workers)
    assert first["status"] == "completed", workers.logs()
    current = {f"chapter{i:03}.txt": text for i, text in enumerate(texts)}
    for i in range(0, 6):  # deleted
        (docs / f"chapter{i:03}.txt").unlink()
        del current[f"chapter{i:03}.txt"]
    for i in range(6, 18):  # rewritten
        # Long enough that the sync is still running when the poll sees its first files done.
        current[f"chapter{i:03}.txt"] = f"Chapter {i}, second edition: what really happened at event {i}. " * 400
        write(docs / f"chapter{i:03}.txt", current[f"chapter{i:03}.txt"])
    for i in range(18, 21):  # moved
        (docs / f"chapter{i:03}.txt").rename(docs / f"moved{i:03}.txt")
        current[f"moved{i:03}.txt"] = current.pop(f"chapter{i:03}.txt")
    sync_id = await sync_job(api)
    await until(api, sync_id, lambda j: j["files_done"] >= 2, workers)
    workers.processes[0].send_signal(signal.SIGKILL)  # halfway: some files rewritten, most not
    workers.processes[0].wait()
    workers.start()
    done = await until(api, sync_id, ended, workers)
    assert (done["status"], done["attempts"]) == ("completed", 2), workers.logs()
    workers.stop_all()
    expected = clean_run_chunks(list(current.values()))
    report = await in_step(api)
    assert report["points"] == expected and report["files"] == len(current)
    # Nothing is left to do: another sync reads nothing.
    await runtime.vectors.close()  # the workers hold the embedded store, one process at a time
    workers.start()
    again = await until(api, await sync_job(api), ended, workers)
    assert (again["status"], again["files_unchanged"], again["files_done"], again["files_removed"]) == (
        "completed",
        len(current),
        0,
        0,
    ), again


async def test_a_file_that_became_unreadable_fails_and_its_last_version_stays_searchable(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path, workers: Workers
) -> None:
    prefix = file_modes_apply()
    write(docs / "garden.txt", "An ordinary note about the garden and its roses. " * 20)
    secret = write(docs / "secret.txt", "Quarterly numbers for the board: revenue grew by a third. " * 20)
    workers.start(prefix)
    assert (await until(api, await start_job(api, docs), ended, workers))["status"] == "completed"
    secret.chmod(0)
    try:
        sync_id = await sync_job(api)
        done = await until(api, sync_id, ended, workers)
        assert done["status"] == "completed_with_errors", (done, workers.logs())
        assert (await files_of(api, sync_id))[str(secret)] == ("failed", "permission denied")
        workers.stop_all()  # the API opens the store now
        response = await api.post("/api/search", json={"query": "how much did revenue grow", "collection": "chaos"})
        hits = (await response.json())["results"]
        assert hits[0]["path"] == str(secret), hits  # kept as last indexed, until fixed or deleted
        await in_step(api)
        await runtime.vectors.close()
        secret.chmod(0o644)
        workers.start(prefix)
        fixed_id = await sync_job(api)
        fixed = await until(api, fixed_id, ended, workers)
        assert (fixed["status"], fixed["files_done"]) == ("completed", 0), fixed  # same content: not embedded again
        assert (await files_of(api, fixed_id))[str(secret)] == ("skipped", "unchanged since last indexed")
    finally:
        secret.chmod(0o644)
