"""Operations: structured logs across processes, the monitor, metrics, auth on every route, OpenAPI."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from semantik.cli.logview import Filter, parse_since, show
from semantik.cli.redis_server import free_port
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.routes import ROUTES
from tests.conftest import ApiFactory, WorkerStarter
from tests.helpers import wait_for_job, wait_until, write

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def service_env(settings: Settings, docs: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SEMANTIK_DATA_DIR": str(settings.data_dir),
        "SEMANTIK_ALLOWED_ROOTS": str(docs),
        "SEMANTIK_REDIS_URL": str(settings.redis_url),
        "SEMANTIK_WORKER_POLL_DELAY_S": "0.05",
        "SEMANTIK_LOG_FORMAT": "json",
        **extra,
    }


async def test_job_logs_across_server_and_worker_and_worker_presence(
    settings: Settings, docs: Path, tmp_path: Path
) -> None:
    write(docs / "a.txt", "Logs should tell one job's story across processes.")
    port = free_port()
    env = service_env(settings, docs, SEMANTIK_PORT=str(port))
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen([str(BIN / "semantik"), "serve"], env=env, stdout=out, stderr=out)
    with worker_log.open("wb") as out:
        worker = subprocess.Popen([str(BIN / "arq"), "workers.main.WorkerSettings"], cwd=REPO, env=env, stdout=out,
                                  stderr=out)  # fmt: skip
    try:
        from semantik.cli.client import Client

        async with Client(f"http://127.0.0.1:{port}") as client:

            async def healthy() -> bool:
                try:
                    return bool((await client.request("GET", "/api/health"))["status"] == "ok")
                except Exception:
                    return False

            await wait_until(healthy, 30, "the server to start", interval_s=0.2)

            async def worker_listed() -> list[dict[str, Any]]:
                return [w for w in (await client.request("GET", "/api/monitor"))["workers"] if w["pid"] == worker.pid]

            listed = await wait_until(worker_listed, 60, "the worker to appear in /api/monitor", interval_s=0.2)
            assert listed[0]["device"].startswith("cpu/") and listed[0]["current_job"] is None
            job = await client.create_job("logs", str(docs))
            done = await asyncio.wait_for(client.wait(job["id"], poll_s=0.1), 120)
            assert done["status"] == "completed"
            workers = await worker_listed()
            assert workers[0]["jobs_done"] == 1
            cli_env = {**env, "SEMANTIK_URL": f"http://127.0.0.1:{port}", "COLUMNS": "200"}
            shown = subprocess.run([str(BIN / "semantik"), "workers"], env=cli_env, capture_output=True, text=True)
            assert shown.returncode == 0 and f":{worker.pid}" in shown.stdout and "cpu/" in shown.stdout
            raw = subprocess.run([str(BIN / "semantik"), "workers", "--json"], env=cli_env, capture_output=True)
            assert json.loads(raw.stdout)["jobs_by_status"]["completed"] == 1
            no_gpus = subprocess.run([str(BIN / "semantik"), "gpus"], env=cli_env, capture_output=True, text=True)
            assert "no GPUs configured" in no_gpus.stdout

            worker.send_signal(signal.SIGKILL)
            worker.wait()

            async def gone() -> bool:
                return not await worker_listed()

            await wait_until(gone, 30, "a killed worker to leave the monitor (within its TTL)", interval_s=0.2)
    finally:
        for process in (server, worker):
            if process.poll() is None:
                process.terminate()
                process.wait(30)

    result = subprocess.run(
        [str(BIN / "semantik"), "logs", str(server_log), str(worker_log), "--job", job["id"], "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    records = [json.loads(line) for line in result.stdout.splitlines()]
    events = {record["event"] for record in records}
    assert {"job_queued", "job_started", "scan_completed", "job_finished"} <= events
    assert all(record["job_id"] == job["id"] and record["ts"] and record["level"] for record in records)
    assert any(record.get("worker_id", "").endswith(f":{worker.pid}") for record in records)
    assert any("request_id" in record for record in records)  # the server side of the story
    access = [json.loads(line) for line in server_log.read_text().splitlines() if '"http_request"' in line]
    assert access and {"method", "path", "status", "duration_ms"} <= set(access[0])


def test_logview_filters_and_tolerates_other_lines() -> None:
    lines = [
        "plain text from somewhere else\n",
        json.dumps({"event": "a", "level": "info", "ts": "2026-01-01T00:00:00Z", "job_id": "j1"}) + "\n",
        json.dumps({"event": "b", "level": "error", "ts": "2026-01-01T00:10:00Z", "job_id": "j2"}) + "\n",
        "{broken json\n",
    ]
    out = io.StringIO()
    assert show(lines, Filter(), as_json=True, out=out) == 2
    assert "plain text from somewhere else" in out.getvalue() and "{broken json" in out.getvalue()
    out = io.StringIO()
    assert show(lines, Filter(level="warning"), as_json=True, out=out) == 1
    assert json.loads(out.getvalue())["event"] == "b"
    since = parse_since("5m", now=datetime(2026, 1, 1, 0, 12, tzinfo=UTC))
    out = io.StringIO()
    assert show(lines, Filter(since=since), as_json=False, out=out) == 1
    assert "b" in out.getvalue() and "plain text" not in out.getvalue()
    with pytest.raises(Exception, match="10m"):
        parse_since("yesterday-ish")


async def test_monitor_and_metrics_match_reality(
    api: TestClient[Any, Any], docs: Path, runtime: Runtime, start_worker: WorkerStarter
) -> None:
    for i in range(30):
        write(docs / f"f{i:02}.txt", f"Monitoring file {i}. " * 300)
    response = await api.post("/api/jobs", json={"collection": "mon", "directory": str(docs)})
    job_id = (await response.json())["id"]
    start_worker(runtime)

    async def running() -> dict[str, Any] | None:
        data = await (await api.get("/api/monitor")).json()
        return data if data["running_jobs"] and data["running_jobs"][0]["files_done"] >= 1 else None

    data = await wait_until(running, 120, "the job to show as running", interval_s=0.2)
    job = await (await api.get(f"/api/jobs/{job_id}")).json()
    assert data["running_jobs"][0]["id"] == job_id and data["jobs_by_status"]["running"] == 1
    assert [w["current_job"] for w in data["workers"]] == [job_id]
    assert data["running_jobs"][0]["worker_id"] == data["workers"][0]["worker_id"] == job["worker_id"]
    assert data["queue"]["depth"] >= 0 and data["redis"] == "ok"

    job = await wait_for_job(api, job_id, {"completed"}, timeout_s=180)
    await api.post("/api/search", json={"query": "monitoring", "collection": "mon"})
    text = await (await api.get("/metrics")).text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    jobs = {sample.labels["status"]: sample.value for sample in families["semantik_jobs"].samples}
    assert jobs["completed"] == 1 and jobs["running"] == 0
    chunks = next(s.value for s in families["semantik_chunks_embedded"].samples if s.name.endswith("_total"))
    assert chunks == job["chunks"]
    assert next(s.value for s in families["semantik_search_seconds"].samples if s.name.endswith("_count")) == 1
    data = await (await api.get("/api/monitor")).json()
    assert data["throughput"]["chunks_last_5_min"] == job["chunks"]


async def test_every_protected_route_needs_the_token(make_api: ApiFactory) -> None:
    api, _ = await make_api(api_token=SecretStr("ops-token-0123456789"))
    served = {(r.method.lower(), r.resource.canonical) for r in api.app.router.routes()
              if r.method != "HEAD" and r.resource is not None}  # fmt: skip
    protected = sorted((m, p) for m, p in served if (p.startswith("/api/") or p == "/metrics") and p != "/api/health")
    assert len(protected) >= 15
    good = {"Authorization": "Bearer ops-token-0123456789"}
    for method, path in protected:
        url = path.replace("{job_id}", "some-job").replace("{name}", "some-name")
        refused = await api.request(method, url)
        assert refused.status == 401, (method, path)
        allowed = await api.request(method, url, headers=good, json={})
        assert allowed.status != 401, (method, path)
    assert (await api.get("/api/health")).status in (200, 503)


@pytest.mark.parametrize("command", ["serve", "up"])
def test_non_loopback_bind_without_token_refuses_to_start(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "SEMANTIK_DATA_DIR": str(tmp_path)}
    env.pop("SEMANTIK_API_TOKEN", None)
    result = subprocess.run(
        [str(BIN / "semantik"), command, "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "SEMANTIK_API_TOKEN" in result.stderr


async def test_openapi_describes_exactly_the_served_routes(api: TestClient[Any, Any]) -> None:
    spec = await (await api.get("/api/openapi.json")).json()
    described = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in api.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
        and (route.resource.canonical.startswith("/api/") or route.resource.canonical == "/metrics")
    }  # fmt: skip
    assert described == served == {(route.method.lower(), route.path) for route in ROUTES}
    assert spec["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "JobCreate"
    )
    assert "JobCreate" in spec["components"]["schemas"]
