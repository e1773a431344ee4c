"""Shared by the benchmarks: the full product in this process (private Redis, API on a free port,
an in-process arq worker), exactly as `semantik up` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semantik.cli.client import Client
from semantik.cli.redis_server import RedisServer, free_port
from semantik.indexing.worker import in_process_worker
from semantik.logs import configure_logging
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.app import create_app

NFCORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "nfcorpus"


def load_corpus(data: Path = NFCORPUS) -> list[dict[str, Any]]:
    with (data / "corpus.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def write_corpus(docs: list[dict[str, Any]], directory: Path) -> None:
    """One .txt per document, named by its id, holding title + " " + text (as MTEB embeds them)."""
    directory.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        (directory / f"{doc['_id']}.txt").write_text(f"{doc['title']} {doc['text']}".strip(), encoding="utf-8")


@dataclass
class Product:
    client: Client
    runtime: Runtime
    settings: Settings


@contextlib.asynccontextmanager
async def running_product(tmp: Path, docs: Path, **overrides: Any) -> AsyncIterator[Product]:
    redis = RedisServer(tmp / "redis")
    await asyncio.to_thread(redis.start)
    port = free_port()
    settings = Settings(
        data_dir=tmp / "data",
        allowed_roots=[docs],
        redis_url=redis.url,
        port=port,
        worker_poll_delay_s=overrides.pop("worker_poll_delay_s", 0.05),  # jobs start at once
        log_level="warning",
        **overrides,
    )
    configure_logging(settings)  # as `semantik serve` and the worker do: warnings and errors only
    runtime = Runtime(settings)
    await runtime.open()
    runner = web.AppRunner(create_app(settings, runtime=runtime), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    worker = in_process_worker(settings, runtime)
    task = asyncio.create_task(worker.async_run())
    await runtime.embedder()  # the model is loaded before anything is timed
    try:
        async with Client(f"http://127.0.0.1:{port}", timeout_s=3600) as client:
            # ... and the worker has started (it shows in the monitor once its extraction processes
            # and the vector engine are up), as it has by the time a user sends a job.
            while not (await client.request("GET", "/api/monitor")).get("workers"):
                if task.done():
                    task.result()  # its startup failed: say why
                    raise RuntimeError("the worker stopped before it started")
                await asyncio.sleep(0.05)
            yield Product(client, runtime, settings)
    finally:
        await worker.close()
        task.cancel()
        await runner.cleanup()
        await runtime.close()
        await asyncio.to_thread(redis.stop)
