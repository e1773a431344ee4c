"""The embedded vector engine's process, and the client the server or worker talks to it with.

qdrant-edge-py runs Qdrant's Rust engine in-process but holds the GIL for the whole of every call
(measured: a 19 s HNSW build froze every other thread of the process for 19 s), so the shards live
in a child process of their own: ``python -m semantik.store.engine``. The parent's event loop, its
WebSockets and its job heartbeats never wait on the engine; a call waits only for its own answer.

The client sends one request at a time from one dedicated thread (requests queue in order: a
search never overtakes an upsert sent before it) over a socket pair, pickled with
``multiprocessing.connection``; the engine answers ``("ok", result)`` or ``("error", code,
message)``, and may send ``("log", event, fields)`` lines first, which the client logs as its own.
The child dies with the thread that started it (``PR_SET_PDEATHSIG``), so a killed server or worker
never leaves the store locked behind it; everything an answered upsert wrote is in the engine's WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import structlog

from semantik.errors import SemantikError, Unavailable
from semantik.proc import die_with_parent, module_command

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 30.0


class VectorStoreError(SemantikError):
    """The embedded store refuses what it was asked: a bad request, an incompatible store."""

    status = 500
    code = "vector_store_error"


def _error(code: str, message: str) -> Exception:
    if code in ("vector_store_busy", "vector_store_incompatible", "vector_migration_failed"):
        return Unavailable(message, code=code)
    if code == "bad_request":
        return ValueError(message)
    return VectorStoreError(message, code=code if code != "internal" else None)


class EngineProcess:
    """A running engine process for one store directory (see the module docstring)."""

    def __init__(self, root: Path, *, legacy: Path | None = None) -> None:
        self.root, self.legacy = root, legacy
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semantik-vectors")
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        try:
            await self._run(self._start)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def call(self, op: str, **kwargs: Any) -> Any:
        return await self._run(partial(self._request, op, kwargs))

    async def close(self) -> None:
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=True)

    async def _run(self, fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- in the dedicated thread ----------------------------------------------------------------

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        command, env = module_command("semantik.store.engine", str(theirs.fileno()), str(os.getpid()))
        with theirs:
            self._process = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self._conn = Connection(ours.detach())
        try:
            self._request("open", {"root": str(self.root), "legacy": str(self.legacy) if self.legacy else None})
        except BaseException:
            self._kill()
            raise

    def _request(self, op: str, kwargs: dict[str, Any]) -> Any:
        if self._conn is None:
            raise Unavailable("the embedded vector engine is not running", code="vector_engine_stopped")
        try:
            self._conn.send((op, kwargs))
            while True:
                message = self._conn.recv()
                if message[0] == "log":
                    log.info(message[1], **message[2])
                elif message[0] == "ok":
                    return message[1]
                else:
                    raise _error(message[1], message[2])
        except (EOFError, OSError) as exc:
            code = self._kill()
            raise Unavailable(
                f"the embedded vector engine for {self.root} stopped (exit status {code});"
                " it restarts on the next request",
                code="vector_engine_stopped",
            ) from exc

    def _close(self) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(EOFError, OSError):
            self._conn.send(("close", {}))
            while self._conn.poll(CLOSE_TIMEOUT_S):
                message = self._conn.recv()
                if message[0] == "log":
                    log.info(message[1], **message[2])
                else:
                    break
        if self._process is not None:
            try:
                self._process.wait(timeout=CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("vector_engine_kill", pid=self._process.pid)
        self._kill()

    def _kill(self) -> int | None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        return process.wait()


# -- the engine process -------------------------------------------------------------------------


def serve(conn: Connection) -> None:
    from semantik.store.edge import EdgeEngine, EngineError
    from semantik.store.migrate import migrate_legacy

    def send_log(event: str, **fields: Any) -> None:
        conn.send(("log", event, fields))

    def reply_error(exc: BaseException) -> None:
        if isinstance(exc, EngineError):
            conn.send(("error", exc.code, exc.message))
        else:
            conn.send(("error", "internal", f"{type(exc).__name__}: {exc}"))

    op, kwargs = conn.recv()
    assert op == "open", op
    try:
        engine = EdgeEngine(Path(kwargs["root"]), log=send_log)
    except Exception as exc:
        reply_error(exc)
        return
    try:
        if kwargs.get("legacy"):
            migrate_legacy(Path(kwargs["legacy"]), engine, send_log)
    except Exception as exc:
        engine.close()
        reply_error(exc)
        return
    conn.send(("ok", {"pid": os.getpid()}))
    handlers: dict[str, Callable[..., Any]] = {
        "ensure": engine.ensure,
        "upsert": engine.upsert,
        "backlog": engine.backlog,
        "delete": engine.delete,
        "search": engine.search,
        "count": engine.count,
        "set_paths": engine.set_paths,
        "content_counts": engine.content_counts,
        "drop": engine.drop,
        "stats": engine.stats,
        "optimize": engine.optimize,
        "flush": engine.flush,
        "close_collection": engine.close_collection,
    }
    try:
        while True:
            due = engine.due_in()
            if due is not None and due <= 0:  # between requests, even when they keep coming
                engine.maintain()
                if not conn.poll(0):
                    continue
            else:
                ready = wait([conn, *engine.build_connections()], due)
                if conn not in ready:
                    if ready:  # a build process's news
                        engine.maintain()
                    continue
            try:
                op, kwargs = conn.recv()
            except EOFError:
                return
            if op == "close":
                break
            try:
                result = handlers[op](**kwargs)
            except Exception as exc:
                reply_error(exc)
            else:
                conn.send(("ok", result))
    finally:
        engine.close()
    conn.send(("ok", None))


def main() -> None:
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent closes us
    conn = Connection(fd)
    try:
        serve(conn)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass
    finally:
        conn.close()


if __name__ == "__main__":
    main()
