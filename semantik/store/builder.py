"""Index builds off the engine's process: a child process writes a copy of sealed shards and builds
its HNSW index, while the engine keeps answering from the originals.

qdrant-edge-py holds the GIL (and so the one engine process) for the whole of ``optimize``: 114-151 s
for a 200k-point segment on a 2-core Zen 3, during which every search waited. Now the engine
(``collection.py``) reads the points of the shards to build back a page at a time, between
requests, and hands each page to this child (``python -m semantik.store.builder``), which upserts
it into a new shard; after the last page the child builds the index, flushes, closes and reports.
The engine then opens the built shard, replays the deletes and path changes made meanwhile, and
swaps it in for the originals (``Collection.finish_build``).

The child runs at a lower CPU priority (``nice`` ``BUILD_NICE``), so searches and the embedding
job keep their share of the cores, and dies with the engine (``PR_SET_PDEATHSIG``): a killed
engine leaves only a half-written directory that the next start removes.

Protocol over a socket pair (``multiprocessing.connection``): the engine sends ``("points",
Exported)`` and waits for ``("ack",)`` before the next page (one page in flight, so a send never
blocks the engine on a busy child), then ``("build",)``; the child answers ``("done", {"points",
"seconds"})`` or ``("error", message)``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from semantik.proc import die_with_parent
from semantik.store import shard as shards
from semantik.store.shard import Exported, Shard

# Points per page read back from a shard: ~50 ms of the engine's time each on 2 cores, so a search
# arriving during the read-back waits at most about that long.
EXPORT_PAGE = 1000
BUILD_NICE = 10
# The build process is the first the kernel's OOM killer takes (the most it allows): a build that
# dies is tried again, or done in place (``collection.py``), while the engine and the workers keep
# running.
BUILD_OOM_SCORE_ADJ = 1000


class Build:
    """One build in progress, from the engine's side: its child process and its read-back."""

    def __init__(self, sources: list[Shard], target: Path, dim: int) -> None:
        self.sources, self.target, self.dim = sources, target, dim
        self.began = time.monotonic()
        self.points = sum(s.points for s in sources)
        self.state = "exporting"  # then "building", "done" or "failed"
        self.error = ""
        self.result: dict[str, Any] = {}
        self._source = 0
        self._offset: Any = None
        self._page: Exported | None = None
        self._exhausted = False
        self._busy = False  # a page sent and not acknowledged yet
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "semantik.store.builder", str(theirs.fileno()), str(os.getpid()), str(target)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self.conn = Connection(ours.detach())
        self._send(("create", dim, shards.INDEX_AFTER_POINTS))

    @property
    def running(self) -> bool:
        return self.state in ("exporting", "building")

    @property
    def due(self) -> bool:
        """Whether ``step`` has work to do now (read a page, or send one); otherwise the engine
        waits on ``conn`` for the child's answer."""
        if self.state != "exporting":
            return not self.running  # done or failed: the engine takes the result
        return (self._page is None and not self._exhausted) or not self._busy

    def step(self) -> None:
        """Take the child's answers, then read back or send one page."""
        self._receive()
        if self.state != "exporting":
            return
        if self._page is None and not self._exhausted:
            self._page = self._next_page()
        if self._busy:
            return
        if self._page is not None:
            self._send(("points", self._page))
            self._page, self._busy = None, True
        elif self._exhausted:
            self._send(("build",))
            self.state = "building"

    def _next_page(self) -> Exported | None:
        while self._source < len(self.sources):
            page, self._offset = self.sources[self._source].export(self._offset, EXPORT_PAGE)
            if self._offset is None:
                self._source, self._offset = self._source + 1, None
            if page is not None:
                return page
        self._exhausted = True
        return None

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except OSError as exc:
            self._fail(f"the build process stopped ({exc})")

    def _receive(self) -> None:
        try:
            while self.running and self.conn.poll(0):
                message = self.conn.recv()
                if message[0] == "ack":
                    self._busy = False
                elif message[0] == "done":
                    self.state, self.result = "done", dict(message[1])
                    self._reap()
                else:
                    self._fail(str(message[1]))
        except (EOFError, OSError):
            code = self.process.poll()
            self._fail(f"the build process stopped (exit status {code})")

    def _fail(self, error: str) -> None:
        self.state, self.error = "failed", error
        self.cancel()

    def _reap(self) -> None:
        self.conn.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def cancel(self) -> None:
        """Stop the child (if it runs) and remove what it wrote."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.conn.close()
        shutil.rmtree(self.target, ignore_errors=True)
        if self.running:
            self.state = "failed"


# -- the child process --------------------------------------------------------------------------


def build(conn: Connection, target: Path) -> None:
    op, dim, index_after = conn.recv()
    assert op == "create", op
    shard = Shard.create(target, int(dim), index_after=int(index_after))
    try:
        while True:
            message = conn.recv()
            if message[0] == "points":
                page: Exported = message[1]
                shard.upsert(page.ids, page.vectors, page.payloads, page.sparse)
                conn.send(("ack",))
                continue
            began = time.monotonic()
            shard.optimize()
            shard.flush()
            points = shard.count()
            break
    finally:
        shard.close()
    conn.send(("done", {"points": points, "seconds": round(time.monotonic() - began, 2)}))


def main() -> None:
    fd, parent, target = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the engine stops us
    with contextlib.suppress(OSError):
        os.nice(BUILD_NICE)
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(str(BUILD_OOM_SCORE_ADJ))
    conn = Connection(fd)
    try:
        build(conn, target)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


if __name__ == "__main__":
    main()
