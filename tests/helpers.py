"""What the tests share: files, waiting on observable conditions (never a fixed sleep), jobs through
the API, workers, and real faults (a Redis stopped or frozen, the embedded vector store held by
another process). Fixtures built on these live in ``tests/conftest.py``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

import aiohttp
from aiohttp.test_utils import TestClient
from arq.worker import Worker
from qdrant_client import QdrantClient

from semantik.cli.redis_server import RedisServer
from semantik.domain import TERMINAL_STATES
from semantik.indexing.worker import in_process_worker
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.store.edge import stored_point_ids
from semantik.store.vectors import qdrant_name

T = TypeVar("T")

# pytest-aiohttp's ``aiohttp_client`` fixture: app in, started test client out.
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
# A job as GET /api/jobs/{id} returns it.
JobView = dict[str, Any]

POLL_S = 0.05
JOB_TIMEOUT_S = 120.0


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- waiting --------------------------------------------------------------------------------------


@overload
async def wait_until(
    check: Callable[[], Awaitable[T | None]],
    timeout_s: float = ...,
    what: str | Callable[[], str] = ...,
    interval_s: float = ...,
) -> T: ...


@overload
async def wait_until(
    check: Callable[[], T | None],
    timeout_s: float = ...,
    what: str | Callable[[], str] = ...,
    interval_s: float = ...,
) -> T: ...


async def wait_until(
    check: Callable[[], Any],
    timeout_s: float = 30.0,
    what: str | Callable[[], str] = "the condition",
    interval_s: float = POLL_S,
) -> Any:
    """Call ``check`` (plain or async) until it returns something truthy, and return that.

    Fails the test after ``timeout_s``, saying ``what`` was awaited (a callable is asked only then,
    e.g. for a worker's log) and what ``check`` last returned. The timeout is a bound for a broken
    test, never a measurement: under load the wait simply lasts longer.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {detail}; last seen: {value!r}")
        await asyncio.sleep(interval_s)


def assert_error(body: Any, code: str) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) <= {"code", "message", "details"}
    assert "Traceback" not in str(body)
    return dict(error)


# --- jobs -----------------------------------------------------------------------------------------


async def create_job(api: TestClient[Any, Any], directory: Path, collection: str = "c", **extra: Any) -> JobView:
    """POST /api/jobs; the created job."""
    response = await api.post("/api/jobs", json={"collection": collection, "directory": str(directory), **extra})
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def new_job(api: TestClient[Any, Any], directory: Path, collection: str = "c", **extra: Any) -> str:
    """POST /api/jobs; the new job's id."""
    return str((await create_job(api, directory, collection, **extra))["id"])


async def job_view(source: TestClient[Any, Any] | Runtime, job_id: str) -> JobView:
    """The job as the API shows it, read through the API or straight from a runtime's database."""
    if isinstance(source, Runtime):
        return (await source.jobs.get_job(job_id, with_failed_files=True)).model_dump(mode="json")
    response = await source.get(f"/api/jobs/{job_id}")
    assert response.status == 200, await response.text()
    return dict(await response.json())


def ended(job: JobView) -> bool:
    return job["status"] in TERMINAL_STATES


async def wait_for_job(
    source: TestClient[Any, Any] | Runtime,
    job_id: str,
    until: Collection[str] | Callable[[JobView], bool] = TERMINAL_STATES,
    timeout_s: float = JOB_TIMEOUT_S,
    *,
    describe: Callable[[], str] | None = None,
) -> JobView:
    """The job once it is in one of the ``until`` statuses (or ``until(job)`` holds); by default
    once it has ended. On timeout the failure shows the job and, if given, ``describe()`` (logs)."""
    reached = until if callable(until) else (lambda job: job["status"] in until)
    last: list[JobView] = []

    async def check() -> JobView | None:
        job = await job_view(source, job_id)
        last[:] = [job]
        return job if reached(job) else None

    def what() -> str:
        extra = f"\n{describe()}" if describe is not None else ""
        return f"job {job_id} (last: {last[0] if last else None}){extra}"

    return await wait_until(check, timeout_s, what)


# --- workers --------------------------------------------------------------------------------------


async def run_burst(runtime: Runtime, timeout_s: float = 300.0) -> Worker:
    """An in-process arq worker on ``runtime`` that runs until the queue is empty."""
    worker = in_process_worker(runtime.settings, runtime, burst=True)
    try:
        await asyncio.wait_for(worker.async_run(), timeout=timeout_s)
    finally:
        await worker.close()
    return worker


# --- vectors -------------------------------------------------------------------------------------


def stored_points(settings: Settings, collection: str) -> tuple[int, int]:
    """(points, distinct point ids) of a collection, read from the closed embedded store (after every
    process has let it go, or see ``count_points``) or with a client of a Qdrant server."""
    if settings.qdrant_url is None:
        local = stored_point_ids(settings.vectors_path, collection)
        return len(local), len(set(local))
    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    client = QdrantClient(url=settings.qdrant_url, api_key=api_key)
    try:
        name = qdrant_name(collection)
        if not client.collection_exists(name):
            return 0, 0
        ids: list[object] = []
        offset = None
        while True:
            page, offset = client.scroll(name, limit=1000, offset=offset, with_payload=False)
            ids.extend(point.id for point in page)
            if offset is None:
                return len(ids), len(set(ids))
    finally:
        client.close()


async def count_points(runtime: Runtime, collection: str) -> int:
    """The points a collection holds in ``runtime``'s store, each stored once. The runtime lets its
    embedded store go for the count (it opens it again on its next use); nothing may be writing."""
    await runtime.vectors.close()
    points, distinct = await asyncio.to_thread(stored_points, runtime.settings, collection)
    assert points == distinct, f"{points - distinct} points stored twice"
    return points


# --- real faults ----------------------------------------------------------------------------------


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """Redis stops answering (SIGSTOP) without closing a connection, like a hung server or a
    half-open link; it resumes, with its data, when the block ends."""
    assert server.process is not None, "the Redis server is not running"
    process = server.process
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def embedded_store_held(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holds the embedded vector store at ``path`` (``settings.vectors_path``; one
    process per store: every other one is refused) until the block ends."""
    path.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys; from pathlib import Path; from semantik.store.edge import lock_store;"
        f" lock = lock_store(Path({str(path)!r})); print('ready', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"
        yield holder
    finally:
        holder.kill()
        holder.wait()


# --- WebSockets and the fake GPU ------------------------------------------------------------------

RECEIVE_TIMEOUT_S = 60.0


async def read_until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every JSON message the socket sends until the server closes it."""
    messages: list[dict[str, Any]] = []
    while True:
        message = await ws.receive(timeout=RECEIVE_TIMEOUT_S)
        if message.type != aiohttp.WSMsgType.TEXT:
            closing = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert message.type in closing, message
            return messages
        messages.append(json.loads(message.data))


class FakeGpuRuntime(Runtime):
    """A FAKE GPU (none exists on these machines): records which device index a job leased and
    runs it on the CPU instead. Everything else is real: the Redis leases, the worker, the model."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.fake_gpu_indexes: list[int] = []

    def device_for(self, gpu_index: int | None) -> str:
        if gpu_index is not None:
            self.fake_gpu_indexes.append(gpu_index)
        return "cpu"


@contextlib.asynccontextmanager
async def loop_gaps(every_s: float) -> AsyncIterator[list[float]]:
    """Seconds between the wakes of a task that sleeps ``every_s`` while the block runs: a gap far
    above ``every_s`` is the event loop held up by something.

    What the suite made before is frozen out of the garbage collector meanwhile (``gc.freeze``): a
    full collection of it is this test process's own pause, not the code under test's. Seen in CI:
    a 0.44 s gap that was exactly one gen-2 collection of the 727k objects alive 330 tests in."""
    gaps: list[float] = []
    gc.collect()
    gc.freeze()

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(every_s)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        yield gaps
    finally:
        ticker.cancel()
        gc.unfreeze()
