"""The hostile-corpus suite: one folder holding every file of the security audit beside normal notes.
The service stays up and answers /api/health in < 2 s throughout, the job ends by itself as
``completed_with_errors``, the normal notes are found, each bad file has a reason, and nothing
outside the allowed roots is ever read."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from semantik.domain import EventType, FileStatus, JobStatus
from tests.conftest import ApiFactory, WorkerStarter
from tests.helpers import create_job, wait_for_job
from tests.hostile import SECRET, make_hostile_folder, swap

HEALTH_BOUND_S = 2.0


async def probe_health(api: TestClient[Any, Any], stop: asyncio.Event, seen: list[tuple[float, int]]) -> None:
    """GET /api/health every 100 ms until ``stop``: (latency, status) of each."""
    while not stop.is_set():
        started = time.perf_counter()
        response = await api.get("/api/health")
        await response.read()
        seen.append((time.perf_counter() - started, response.status))
        await asyncio.sleep(0.1)


async def test_a_hostile_folder_cannot_crash_hang_or_escape(
    make_api: ApiFactory, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    folder = make_hostile_folder(tmp_path)
    api, runtime = await make_api(
        allowed_roots=[folder.root],
        extract_timeout_s=15.0,
        extract_max_unzipped_mb=32.0,
        max_file_size_mb=20.0,
    )
    start_worker(runtime)
    stop, health = asyncio.Event(), list[tuple[float, int]]()
    prober = asyncio.create_task(probe_health(api, stop, health))
    started = time.monotonic()
    try:
        job = await create_job(api, folder.root)
        async with api.ws_connect(f"/api/jobs/{job['id']}/ws") as ws:
            async for message in ws:
                if message.json()["type"] == EventType.SCAN_COMPLETED:
                    swap(folder)  # after the scan, before those files are read (they sort last)
                    break
        done = await wait_for_job(api, job["id"], timeout_s=600)
    finally:
        stop.set()
        await prober
    wall_s = time.monotonic() - started
    assert done["status"] == JobStatus.COMPLETED_WITH_ERRORS, done

    files = {Path(f["path"]): f for f in (await (await api.get(f"/api/jobs/{job['id']}/files")).json())["files"]}
    for path, word in folder.bad.items():
        entry = files[path]
        if entry["status"] != FileStatus.DONE:
            assert entry["error"] and word in entry["error"], entry
    for path in folder.swaps:
        if path.name == "zz-sub":
            path = path / "vault.txt"
        entry = files[path]
        assert entry["status"] in (FileStatus.FAILED, FileStatus.SKIPPED) and entry["error"], entry
    assert "not a regular file" in files[folder.root / "zz-fifo.txt"]["error"]
    assert "outside the allowed roots" in files[folder.root / "zz-link.txt"]["error"]
    assert "outside the allowed roots" in files[folder.root / "zz-sub" / "vault.txt"]["error"]

    # The normal notes are found, first, by their own phrase.
    for path, phrase in folder.normal.items():
        response = await api.post("/api/search", json={"query": phrase, "collection": "c", "k": 3})
        hits = (await response.json())["results"]
        shown = path.as_posix().encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        assert hits and hits[0]["path"] == shown, (phrase, hits[:1])
    # Nothing outside the roots was ever read: the secret is nowhere in the collection.
    response = await api.post("/api/search", json={"query": SECRET, "collection": "c", "k": 100})
    assert all("31-41-59" not in hit["text"] for hit in (await response.json())["results"])
    # No chunk grew huge from the one-line file.
    for hit in (await (await api.post("/api/search", json={"query": "xxxx", "collection": "c", "k": 20})).json())[
        "results"
    ]:
        assert len(hit["text"]) <= runtime.settings.chunk_max_chars

    # The service stayed up and answered throughout.
    assert health and all(status == 200 for _, status in health), health
    worst_s = max(latency for latency, _ in health)
    assert worst_s < HEALTH_BOUND_S, f"/api/health took {worst_s:.2f} s"
    print(f"hostile job: {wall_s:.1f} s; health probes: {len(health)}, max {worst_s * 1000:.0f} ms")
