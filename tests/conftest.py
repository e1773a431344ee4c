"""Shared fixtures: a real redis-server per test session, real SQLite files, embedded Qdrant, the real model.

Factories (``make_runtime``, ``make_api``, ``start_worker``) close what they made at teardown, in
order: workers, then apps, then runtimes. The plain helpers are in ``tests/helpers.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
import structlog
from aiohttp.test_utils import TestClient
from arq.worker import Worker

from semantik.cli.redis_server import RedisServer
from semantik.indexing.worker import in_process_worker
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.app import create_app
from tests.helpers import ClientFactory as ClientFactory
from tests.helpers import run_burst
from tests.helpers import write as write  # test files import it from here too


class RuntimeFactory(Protocol):
    async def __call__(self, base: Settings | None = None, *, cls: type[Runtime] = ..., **overrides: Any) -> Runtime:
        """An opened runtime on ``base`` (default: the ``settings`` fixture) with ``overrides``."""
        ...


class ApiFactory(Protocol):
    async def __call__(
        self, base: Settings | None = None, *, cls: type[Runtime] = ..., **overrides: Any
    ) -> tuple[TestClient[Any, Any], Runtime]:
        """A test client for an app on its own runtime (see ``RuntimeFactory``), and that runtime."""
        ...


class WorkerStarter(Protocol):
    def __call__(self, runtime: Runtime, **options: Any) -> Worker:
        """An in-process arq worker on ``runtime``, running in the background until teardown."""
        ...


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache (exported ONNX files, the measured backend choice) for the whole session and
    every process it starts, as one machine has: the choice is measured once, not once per test."""
    given = os.environ.get("SEMANTIK_MODEL_CACHE_DIR")  # tox: one per checkout, shared by its sessions
    path = Path(given) if given else tmp_path_factory.getbasetemp() / "model-cache"
    os.environ["SEMANTIK_MODEL_CACHE_DIR"] = str(path)
    return path


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
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to stop, freeze or restart (same port, empty unless saved)."""
    server = RedisServer(tmp_path / "private-redis")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)  # a test that failed while it was frozen
    server.stop()


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
async def make_runtime(settings: Settings) -> AsyncIterator[RuntimeFactory]:
    opened: list[Runtime] = []

    async def make(base: Settings | None = None, *, cls: type[Runtime] = Runtime, **overrides: Any) -> Runtime:
        chosen = base or settings
        runtime = cls(chosen.model_copy(update=overrides) if overrides else chosen)
        await runtime.open()
        opened.append(runtime)
        return runtime

    yield make
    for runtime in reversed(opened):
        await runtime.close()


@pytest.fixture
async def runtime(make_runtime: RuntimeFactory) -> Runtime:
    return await make_runtime()


@pytest.fixture
def make_api(make_runtime: RuntimeFactory, aiohttp_client: ClientFactory) -> ApiFactory:
    async def make(
        base: Settings | None = None, *, cls: type[Runtime] = Runtime, **overrides: Any
    ) -> tuple[TestClient[Any, Any], Runtime]:
        runtime = await make_runtime(base, cls=cls, **overrides)
        return await aiohttp_client(create_app(runtime.settings, runtime=runtime)), runtime

    return make


@pytest.fixture
async def api(aiohttp_client: ClientFactory, settings: Settings, runtime: Runtime) -> TestClient[Any, Any]:
    """The API, sharing the runtime (one embedded Qdrant) with the in-process worker, as `semantik up` does."""
    return await aiohttp_client(create_app(settings, runtime=runtime))


@pytest.fixture
async def start_worker(make_runtime: RuntimeFactory) -> AsyncIterator[WorkerStarter]:
    # Depends on make_runtime so that it is torn down first: workers stop before their runtimes close.
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    def start(runtime: Runtime, **options: Any) -> Worker:
        worker = in_process_worker(runtime.settings, runtime, **options)
        running.append((worker, asyncio.create_task(worker.async_run())))
        return worker

    yield start
    for worker, task in reversed(running):
        try:
            await worker.close()
        except asyncio.CancelledError:
            # arq's close can surface the cancellation of a job it interrupted; only a cancellation
            # of this teardown itself goes on (a leaked one would break the fixtures of later tests).
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        task.cancel()


@pytest.fixture
async def background_worker(start_worker: WorkerStarter, runtime: Runtime) -> Worker:
    """A worker running for the whole test on the shared runtime, as in `semantik up`."""
    return start_worker(runtime)


@pytest.fixture
def run_worker(runtime: Runtime) -> Callable[[], Awaitable[Worker]]:
    """Run an arq worker in burst mode until the queue is empty."""

    async def run() -> Worker:
        return await run_burst(runtime)

    return run


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = handlers, level


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # `tox -- -k something` that selects nothing is not a failure of the code under test.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK
