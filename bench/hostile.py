"""The hostile folder at the audit's full sizes, through `semantik up` as a user runs it.

Makes the folder of ``tests/hostile.py`` (a 1.2 GB-inflating docx, a 1.2 M-paragraph docx, a
90,000-page PDF, 8 MB of one-line text, a non-UTF-8 name, FIFO, /dev/zero and symlink swaps after
the scan), starts `python -m semantik.cli up` on it with the default limits, runs one job and
prints: the job's wall time and outcome, /api/health latency (p50, p99, max) probed every 100 ms
throughout, and the peak RSS of the `up` process (API + worker; extraction runs in its children).

    python bench/hostile.py
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semantik.cli.redis_server import free_port
from tests.hostile import make_hostile_folder, swap


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def probe(session: aiohttp.ClientSession, base: str, stop: asyncio.Event, seen: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            async with session.get(base + "/api/health", timeout=aiohttp.ClientTimeout(total=30)) as response:
                await response.read()
                seen.append(time.perf_counter() - started if response.status == 200 else float("inf"))
        except (aiohttp.ClientError, TimeoutError):
            seen.append(float("inf"))
        await asyncio.sleep(0.1)


async def run(base: str, folder: Any, pid: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 120
        while True:
            try:
                async with session.get(base + "/api/health") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "semantik up did not start"
            await asyncio.sleep(0.2)
        stop, health = asyncio.Event(), list[float]()
        prober = asyncio.create_task(probe(session, base, stop, health))
        started = time.monotonic()
        body = {"collection": "hostile", "directory": str(folder.root)}
        async with session.post(base + "/api/jobs", json=body) as response:
            job = await response.json()
        async with session.ws_connect(base.replace("http", "ws") + f"/api/jobs/{job['id']}/ws") as ws:
            async for message in ws:
                if json.loads(message.data)["type"] == "scan_completed":
                    swap(folder)
                    break
        while True:
            async with session.get(base + f"/api/jobs/{job['id']}") as response:
                job = await response.json()
            if job["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.5)
        wall_s = time.monotonic() - started
        stop.set()
        await prober
        async with session.get(base + f"/api/jobs/{job['id']}/files") as response:
            files = (await response.json())["files"]
    finite = sorted(x for x in health if x != float("inf"))
    return {
        "job_status": job["status"],
        "job_wall_s": round(wall_s, 1),
        "files": {Path(f["path"]).name: f["error"] or f["status"] for f in files},
        "health_probes": len(health),
        "health_failures": sum(1 for x in health if x == float("inf")),
        "health_p50_ms": round(statistics.median(finite) * 1000, 1),
        "health_p99_ms": round(finite[int(len(finite) * 0.99) - 1] * 1000, 1) if finite else None,
        "health_max_ms": round(max(finite) * 1000, 1),
        "up_peak_rss_mb": round(peak_rss_mb(pid), 1),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = make_hostile_folder(tmp / "corpus", full_size=True)
        port = free_port()
        env = {
            **os.environ,
            "SEMANTIK_DATA_DIR": str(tmp / "data"),
            "SEMANTIK_ALLOWED_ROOTS": str(folder.root),
            "SEMANTIK_PORT": str(port),
            "SEMANTIK_LOG_LEVEL": "warning",
            "SEMANTIK_LOG_FORMAT": "json",
        }
        env.pop("SEMANTIK_REDIS_URL", None)
        log = (tmp / "up.log").open("wb")
        up = subprocess.Popen([sys.executable, "-m", "semantik.cli", "up"], env=env, stdout=log, stderr=log)
        try:
            result = asyncio.run(run(f"http://127.0.0.1:{port}", folder, up.pid))
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                print("semantik up did not stop within 60 s of SIGTERM")
        for name, outcome in sorted(result.pop("files").items()):
            print(f"  {name:<28} {outcome}")
        for key, value in result.items():
            print(f"{key}: {value}")
        print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
