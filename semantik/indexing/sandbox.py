"""Extraction (read + sha256, parse, tokenize, chunk) in a small pool of killable child processes.

Untrusted files are parsed where a crash cannot hurt: a zip bomb, a PDF whose page tree lists one
node 90,000 times or a parser stuck for hours costs one child process, never the worker. A child:

- is a fresh interpreter (``python -P -m semantik.indexing.sandbox_child``: spawn semantics, never a
  fork of the worker, which has torch's threads running). Not ``multiprocessing.Process``: its
  spawn and forkserver methods re-import the worker's ``__main__`` in every child. It never imports
  torch or transformers: the chunker needs only ``tokenizers``;
- runs under ``RLIMIT_AS`` (``SEMANTIK_EXTRACT_MEMORY_MB``), single-threaded, and dies with the worker
  (``PR_SET_PDEATHSIG``), even one killed with SIGKILL;
- talks to the worker over a multiprocessing Pipe (a socket pair); a dedicated thread per child
  waits for its replies, so the event loop never blocks on one and the default executor is unused.

The worker kills a child (SIGKILL) when a file outlasts ``SEMANTIK_EXTRACT_TIMEOUT_S``, when the
task awaiting it is cancelled (job cancelled, worker stopping), and when the pool closes. A child
that dies or is killed is replaced at once, and only the file it held fails, with the reason.

A file takes one or two requests on one child: ``read`` (its sha256, every check made on the opened
descriptor) and, unless the store already holds that content, ``extract`` (the chunks of the bytes
just read). A small file of plain text, Markdown or HTML comes back with its chunks from ``read``
(``AT_ONCE_BYTES``): on a folder of notes the second round trip cost more than the extraction. A
runtime's pool is shared by the jobs running on it, and kept a while after the last one ends
(``SharedPool``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import subprocess
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import structlog

from semantik.indexing.chunk import Chunk
from semantik.indexing.extract import ExtractionError
from semantik.indexing.sandbox_child import SandboxConfig
from semantik.proc import module_command

if TYPE_CHECKING:
    from semantik.runtime import Runtime

__all__ = ["ExtractPool", "Extraction", "SandboxConfig", "SharedPool", "extraction_pool"]

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 60.0
# A child whose resident set grew by more than this since it started (about 100 MB, with the
# parsers and the chunker loaded) is replaced by a fresh one when its pool goes idle, rather than kept
# with that memory.
IDLE_GROWTH_MB = 200
_REAP_TIMEOUT_S = 10.0
_CHILD_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


class _Died(Exception):
    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"exit status {returncode}")
        self.returncode = returncode


class _Child:
    """One extraction process, and the thread that reads its replies into the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.loop, self.process, self.conn = loop, process, conn
        self.pid = process.pid
        self.dead = False  # its pipe reached EOF: it has exited and is reaped
        self.killed = False  # we killed it (timeout, cancellation, shutdown)
        self.retiring = False  # it asked to be replaced (it came near its memory limit)
        self.returncode: int | None = None
        self.started_rss_mb = 0.0  # its resident set once ready
        self._waiter: asyncio.Future[Any] | None = loop.create_future()  # for its "ready"
        threading.Thread(target=self._read_replies, name=f"semantik-extract-{self.pid}", daemon=True).start()

    @property
    def usable(self) -> bool:
        return not (self.dead or self.killed or self.retiring)

    def _read_replies(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # a reply that does not unpickle
                message = ("error", f"unreadable reply from the extraction process: {exc}", True)
            if not self._post(message):
                break
        try:
            self.process.wait(_REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # it closed its end but lives on: it goes all the same
            self.process.kill()
            self.process.wait()
        if not self._post(None):
            self.conn.close()  # the loop is gone; nobody else holds it

    def _post(self, message: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(self._deliver, message)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def _deliver(self, message: Any) -> None:
        waiter = self._waiter if self._waiter is not None and not self._waiter.done() else None
        if message is None:  # end of file: it exited, and is reaped
            self.dead, self.returncode = True, self.process.returncode
            self.conn.close()  # the reader thread is done with it
            if waiter is not None:
                waiter.set_exception(_Died(self.returncode))
        elif waiter is not None:
            waiter.set_result(message)

    async def request(self, message: Any, timeout_s: float) -> Any:
        """Send ``message`` (None: only wait, for "ready") and wait for the reply. On timeout or
        cancellation the child is killed at once; raises ``_Died`` when it dies meanwhile."""
        if self.dead:
            raise _Died(self.returncode)
        if message is not None:
            self._waiter = self.loop.create_future()
            try:
                self.conn.send(message)
            except (OSError, ValueError) as exc:  # its end is closed: it is dying
                self.kill()
                raise _Died(None) from exc
        assert self._waiter is not None
        try:
            return await asyncio.wait_for(self._waiter, max(timeout_s, 0.001))
        except BaseException:  # timeout, cancellation: it may be stuck for hours, so it goes
            self.kill()
            raise
        finally:
            self._waiter = None

    def kill(self) -> None:
        if not (self.dead or self.killed):
            self.killed = True
            with contextlib.suppress(OSError):
                self.process.kill()


class Extraction:
    """One file on one child: ``read`` it (its sha256), then, if it is new, ``extract`` its chunks
    (at once, where ``read`` brought them). Both together may take ``SEMANTIK_EXTRACT_TIMEOUT_S``."""

    def __init__(self, child: _Child, config: SandboxConfig) -> None:
        self._child, self._config = child, config
        self._spent_s = 0.0
        self.mtime = 0.0
        self._chunks: list[Chunk] | None = None
        self._failed: str | None = None

    @property
    def pid(self) -> int:
        return self._child.pid

    async def read(self, path: str | bytes) -> str:
        """The file's sha256, after every check on the opened descriptor (its modification time,
        from the same descriptor, is then ``mtime``)."""
        reply = await self._request(("read", path))
        self.mtime = float(reply[3])
        self._chunks, self._failed = reply[4], reply[5]
        return str(reply[2])

    async def extract(self) -> list[Chunk]:
        """The chunks of the bytes ``read`` just hashed, each with its place in the document."""
        # A small file of a simple format: the child sent its chunks, or why it has none, with its hash.
        if self._failed is not None:
            raise ExtractionError(self._failed)
        if self._chunks is not None:
            return list(self._chunks)
        reply = await self._request(("extract",))
        return list(reply[1])

    async def _request(self, message: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        began_s = loop.time()
        try:
            reply = await self._child.request(message, self._config.timeout_s - self._spent_s)
        except TimeoutError:
            raise ExtractionError(self._config.timeout_reason()) from None
        except _Died as exc:
            raise ExtractionError(self._config.death_reason(exc.returncode)) from None
        finally:
            self._spent_s += loop.time() - began_s
        self._child.retiring = self._child.retiring or bool(reply[-1])  # a fresh process for the next file
        if reply[0] == "error":
            raise ExtractionError(str(reply[1]))
        return reply


class ExtractPool:
    """``size`` child processes, leased one file at a time. Use it from one event loop."""

    def __init__(self, config: SandboxConfig, size: int) -> None:
        self.config, self.size = config, size
        self._slots: asyncio.Queue[_Child | None] = asyncio.Queue()  # None: start one when leased
        for _ in range(size):
            self._slots.put_nowait(None)
        self._children: set[_Child] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The live children's process ids."""
        return sorted(child.pid for child in self._children if child.usable)

    def prestart(self) -> None:
        """Start every child now, in the background, rather than on first use."""
        while not self._slots.empty():
            if self._slots.get_nowait() is None:
                self._start_in_background()

    async def started(self) -> None:
        """Return once the children being started are ready (or failed to start)."""
        await asyncio.gather(*self._starting, return_exceptions=True)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Extraction]:
        """A child for one file (waits while all are busy). It goes back to the pool after, or is
        replaced when it was killed or died meanwhile."""
        if self._closed:
            raise ExtractionError("extraction is shutting down")
        child = await self._slots.get()
        try:
            if child is None or not child.usable:
                if child is not None:
                    self._children.discard(child)
                child = await self._start()
        except BaseException:
            self._slots.put_nowait(None)
            raise
        try:
            yield Extraction(child, self.config)
        finally:
            self._release(child)

    def _release(self, child: _Child) -> None:
        if child.usable and not self._closed:
            self._slots.put_nowait(child)
            return
        child.kill()
        self._children.discard(child)
        if not self._closed:
            self._start_in_background()  # so that the next file does not wait for it

    def _start_in_background(self) -> None:
        async def start() -> None:
            child: _Child | None = None
            try:
                child = await self._start()
            except ExtractionError as exc:
                log.warning("extract_process_start_failed", error=str(exc))
            finally:
                self._slots.put_nowait(child)  # None: the next lease tries again

        task = asyncio.get_running_loop().create_task(start())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start(self) -> _Child:
        loop = asyncio.get_running_loop()
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        try:
            process = _spawn(child_end)
        except OSError as exc:
            parent_end.close()
            raise ExtractionError(f"cannot start an extraction process: {exc}") from exc
        finally:
            child_end.close()  # the child holds its own copy: its death is our end of file
        child = _Child(loop, process, parent_end)
        self._children.add(child)
        try:
            if self._closed:
                raise ExtractionError("extraction is shutting down")
            parent_end.send(self.config)
            ready = await child.request(None, START_TIMEOUT_S)
            if ready[0] != "ready":
                raise ExtractionError(f"the extraction process did not start: {ready[1]}")
        except (TimeoutError, _Died, OSError) as exc:
            child.kill()
            self._children.discard(child)
            raise ExtractionError(f"the extraction process did not start ({type(exc).__name__})") from None
        except BaseException:
            child.kill()
            self._children.discard(child)
            raise
        child.started_rss_mb = ready[3] / 1024
        log.debug("extract_process_started", pid=child.pid, vm_size_kb=ready[2], vm_rss_kb=ready[3])
        return child

    def trim(self, growth_mb: float) -> None:
        """Replace the idle children (those not leased) whose resident set grew by more than
        ``growth_mb`` since they started: fresh ones start in the background."""
        idle: list[_Child | None] = []
        while not self._slots.empty():
            idle.append(self._slots.get_nowait())
        for child in idle:
            grown_mb = _rss_mb(child.pid) - child.started_rss_mb if child is not None and child.usable else 0.0
            if child is not None and grown_mb > growth_mb and not self._closed:
                log.debug("extract_process_trimmed", pid=child.pid, grown_mb=round(grown_mb))
                child.kill()
                self._children.discard(child)
                self._start_in_background()
            else:
                self._slots.put_nowait(child)

    def close(self) -> None:
        """Kill every child at once (nothing they hold is worth waiting for); never blocks."""
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        for child in list(self._children):
            child.kill()
        self._children.clear()
        for _ in range(self.size):  # a lease still waiting wakes up, and hears that it is over
            self._slots.put_nowait(None)


def _rss_mb(pid: int) -> float:
    """A process's resident set in MB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, IndexError, ValueError):
        return 0.0


def _spawn(child_end: Connection) -> subprocess.Popen[bytes]:
    """Start a child (vfork and exec: a few milliseconds, so on the loop's own thread). That thread
    is the child's parent thread, the one whose end kills it (``PR_SET_PDEATHSIG`` follows the thread
    that forked, not the process): a short-lived helper thread would take its children with it."""
    command, env = module_command("semantik.indexing.sandbox_child", str(child_end.fileno()))
    return subprocess.Popen(
        command,
        pass_fds=[child_end.fileno()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env={**env, **_CHILD_ENV},
    )


class SharedPool:
    """The extraction processes of one runtime (``extraction_pool``): a pool made on first use,
    shared by the jobs running at once, and kept ``idle_s`` (``SEMANTIK_EXTRACT_IDLE_S``) after the
    last one ends, so that the next job (a folder sync after a change, say) finds its processes
    started: a fresh one takes about half a second and 0.6 s of CPU to start (it imports the parsers
    and builds the chunker). Then the pool closes (its children are killed), so an idle worker holds
    no extraction memory. A child that grew by more than ``IDLE_GROWTH_MB`` on a large file is
    replaced when the pool goes idle rather than kept with that memory."""

    def __init__(self, config: SandboxConfig, size: int, idle_s: float) -> None:
        self.config, self.size, self.idle_s = config, size, idle_s
        self.pool: ExtractPool | None = None  # the live pool, if any
        self._loop: asyncio.AbstractEventLoop | None = None
        self._users = 0
        self._closing: asyncio.TimerHandle | None = None

    @asynccontextmanager
    async def use(self) -> AsyncIterator[ExtractPool]:
        """The pool, for one job; started now unless it is still warm from an earlier one."""
        pool = self._open()
        self._users += 1
        try:
            yield pool
        finally:
            self._users -= 1
            if self._users == 0 and self.pool is pool:
                self._idle(pool)

    async def prestart(self) -> None:
        """Start the processes now (a worker starting) and return once they are ready (one that
        fails to start is logged, and tried again by the first job); kept ``idle_s`` unless a job
        uses them."""
        if self.idle_s > 0 and self._users == 0:
            pool = self._open()
            self._idle(pool)
            await pool.started()

    def _open(self) -> ExtractPool:
        loop = asyncio.get_running_loop()
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None
        if self.pool is not None and self._loop is not loop:  # a pool serves one event loop
            with contextlib.suppress(RuntimeError):  # that loop may be closed
                self.close()
            self.pool, self._users = None, 0
        if self.pool is None:
            self.pool, self._loop = ExtractPool(self.config, self.size), loop
            self.pool.prestart()
        return self.pool

    def _idle(self, pool: ExtractPool) -> None:
        if self.idle_s <= 0:
            self.close()
            return
        pool.trim(IDLE_GROWTH_MB)
        self._closing = asyncio.get_running_loop().call_later(self.idle_s, self.close)

    def close(self) -> None:
        """Kill every child now (a runtime closing, or ``idle_s`` without a job)."""
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.close()
            log.debug("extract_pool_closed", users=self._users)


def extraction_pool(rt: Runtime) -> SharedPool:
    """The runtime's extraction processes (closed with it), for its settings."""
    s = rt.settings
    return rt.keep(
        "extraction_pool",
        lambda: SharedPool(SandboxConfig.from_settings(s, rt.model_path), s.extract_workers, s.extract_idle_s),
    )
