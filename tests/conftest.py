"""Shared fixtures: a real redis-server per test session, real SQLite files, embedded Qdrant, the real model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from arq.worker import Worker

from semantik.app import create_app
from semantik.redis_server import RedisServer
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.worker import worker_options


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    path = tmp_path / "docs"
    path.mkdir()
    return path


@pytest.fixture
def settings(tmp_path: Path, docs: Path, redis_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        allowed_roots=[docs],
        redis_url=redis_url,
        worker_poll_delay_s=0.05,
        log_format="json",
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime(settings)
    await rt.open()
    yield rt
    await rt.close()


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def api(aiohttp_client: ClientFactory, settings: Settings, runtime: Runtime) -> TestClient[Any, Any]:
    """The API, sharing the runtime (one embedded Qdrant) with the in-process worker, as `semantik up` does."""
    return await aiohttp_client(create_app(settings, runtime=runtime))


@pytest.fixture
def run_worker(settings: Settings, runtime: Runtime) -> Callable[[], Awaitable[Worker]]:
    """Run an arq worker in burst mode until the queue is empty."""

    async def run() -> Worker:
        worker = Worker(**worker_options(settings), ctx={"runtime": runtime}, burst=True, handle_signals=False)
        try:
            await asyncio.wait_for(worker.async_run(), timeout=300)
        finally:
            await worker.close()
        return worker

    return run


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # `tox -- -k something` that selects nothing is not a failure of the code under test.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK
