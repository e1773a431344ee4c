"""A worker launched with the plain arq CLI, as an operator would, processes a job queued through the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from semantik.settings import Settings
from tests.helpers import JobView, embedded_store_held, new_job, wait_for_job, write

REPO = Path(__file__).resolve().parents[1]
ARQ = Path(sys.executable).parent / "arq"


async def test_arq_cli_worker_processes_an_api_job(
    api: TestClient[Any, Any], settings: Settings, docs: Path, tmp_path: Path
) -> None:
    write(docs / "volcano.txt", "Volcanoes erupt when magma from the mantle rises through the crust.")
    write(docs / "tea.txt", "Green tea is brewed at eighty degrees for two minutes.")
    env = {
        **os.environ,
        "SEMANTIK_DATA_DIR": str(settings.data_dir),
        "SEMANTIK_ALLOWED_ROOTS": str(docs),
        "SEMANTIK_REDIS_URL": str(settings.redis_url),
        "SEMANTIK_WORKER_POLL_DELAY_S": "0.05",
        "SEMANTIK_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([str(ARQ), "workers.main.WorkerSettings"], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        job_id = await new_job(api, docs, "geo")

        def ended_while_the_worker_lives(job: JobView) -> bool:
            assert worker.poll() is None, log_path.read_text()
            return job["status"] not in ("queued", "running")

        job = await wait_for_job(api, job_id, ended_while_the_worker_lives, 180, describe=log_path.read_text)
        assert job["status"] == "completed", (job, log_path.read_text())
        assert job["files_done"] == 2 and job["chunks"] == 2
        assert job["worker_id"].endswith(f":{worker.pid}")

        ping = await api.post("/api/jobs/ping")
        assert ping.status == 200
        assert (await ping.json())["pid"] == worker.pid
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    # The worker has released the embedded Qdrant storage; the server can now open and search it.
    response = await api.post("/api/search", json={"query": "what makes a volcano erupt", "collection": "geo", "k": 2})
    assert response.status == 200
    results = (await response.json())["results"]
    assert results[0]["path"] == str(docs / "volcano.txt")
    assert b'"event": "job_finished"' in log_path.read_bytes()


async def test_embedded_store_held_by_another_process_is_a_clear_503(
    api: TestClient[Any, Any], settings: Settings, docs: Path
) -> None:
    """With embedded Qdrant, a second process cannot open the store: the API says so instead of crashing."""
    with embedded_store_held(settings.vectors_path):
        await api.post("/api/collections", json={"name": "busy"})
        response = await api.post("/api/search", json={"query": "anything", "collection": "busy"})
        assert response.status == 503
        error = (await response.json())["error"]
        assert error["code"] == "vector_store_busy"
        assert "SEMANTIK_QDRANT_URL" in error["message"]
    response = await api.post("/api/search", json={"query": "anything", "collection": "busy"})
    assert response.status == 200  # once the other process is gone, the server opens the store itself
