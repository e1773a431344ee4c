"""Index builds off the engine's process: a child process makes a copy of sealed shards and builds
its HNSW index, while the engine keeps answering from the originals.

qdrant-edge-py holds the GIL (and so the one engine process) for the whole of ``optimize``: 114-151 s
for a 200k-point segment on a 2-core Zen 3, during which every search waited. Now a child (``python
-m semantik.store.builder``) makes a copy of the shards to build, builds its index, flushes, closes
and reports. The copy is made one of two ways. Read back: the engine (``collection.py``) reads the
points a page at a time, between requests, and hands each page to the child, which upserts it into
a new shard. Cloned: the child copies the files of the one shard to build (below).
The engine then opens the built shard, replays the deletes and path changes made meanwhile, and
swaps it in for the originals (``Collection.finish_build``).

The child runs at a lower CPU priority (``nice`` ``BUILD_NICE``), so searches and the embedding
job keep their share of the cores, and dies with the engine (``PR_SET_PDEATHSIG``): a killed
engine leaves only a half-written directory that the next start removes.

A single sealed shard stored in this version's datatype is cloned: the child copies its files. The
engine flushes the shard first and changes it no more until the
child says ``("copied",)``: a delete or path change that arrives meanwhile waits for that
(``Build.settle``; a second or two for 200k points), and an upsert deletes its ids from sealed
shards only where they are (``Collection.upsert``), so a bulk load never waits. The child opens the
copy and checks it holds every point; a copy that cannot be made or opened is replaced by the
read-back (``("unclonable", reason)``), in the same build. Measured on a 2-core Zen 3: the file copy
and open took 0.5 s for 20k points, where reading them back and writing them again took 6.1 s.

Protocol over a socket pair (``multiprocessing.connection``). Read back: the engine sends
``("create", dim, index_after)``, then ``("points", Exported)`` pages, waiting for ``("ack",)``
before the next (one page in flight, so a send never blocks the engine on a busy child), then
``("build",)``. Cloned: the engine sends ``("clone", source, points, dim, index_after)``; the child
answers ``("copied",)``, then builds, or ``("unclonable", reason)`` and takes pages as above. Either
way the child ends with ``("done", {"points", "seconds", "via"})`` or ``("error", message)``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from semantik.proc import die_with_parent, module_command
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
# How long a change to a shard being cloned may wait for the child's copy of its files (1.1 GB for
# 200k points) before the build is given up (tried again later) and the change is made.
CLONE_WAIT_S = 60.0


def clonable(sources: list[Shard]) -> bool:
    """Whether a build copies the files of its sources (one shard, in this version's datatype: a
    build also moves older shards to it) instead of reading their points back."""
    return len(sources) == 1 and sources[0].datatype == shards.DENSE_DATATYPE


class Build:
    """One build in progress, from the engine's side: its child process and its read-back."""

    def __init__(self, sources: list[Shard], target: Path, dim: int, log: Callable[..., None]) -> None:
        self.sources, self.target, self.dim, self.log = sources, target, dim, log
        self.began = time.monotonic()
        self.points = sum(s.points for s in sources)
        self.via = "clone" if clonable(sources) else "export"
        # "cloning" (the child copies the source's files) or "exporting" (the engine reads the points
        # back), then "building", then "done" or "failed".
        self.state = "cloning" if self.via == "clone" else "exporting"
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
        command, env = module_command("semantik.store.builder", str(theirs.fileno()), str(os.getpid()), str(target))
        with theirs:
            self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        self.conn = Connection(ours.detach())
        if self.via == "clone":
            source = sources[0]
            if source.dirty:
                source.flush()  # the files hold every change; none comes until the child copied them
            self._send(("clone", str(source.path), source.count(), dim, shards.INDEX_AFTER_POINTS))
        else:
            self._send(("create", dim, shards.INDEX_AFTER_POINTS))

    @property
    def running(self) -> bool:
        return self.state in ("cloning", "exporting", "building")

    def settle(self) -> None:
        """Return once the sources may change: at once, unless the child is copying their files;
        then wait for it (the build is given up after ``CLONE_WAIT_S``)."""
        deadline = time.monotonic() + CLONE_WAIT_S
        while self.state == "cloning":
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"copying the shard's files took over {CLONE_WAIT_S:.0f} s")
                return
            if self.conn.poll(min(left, 1.0)):
                self._receive()

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
                elif message[0] == "copied":
                    self.state = "building"
                elif message[0] == "unclonable":
                    self.state, self.via = "exporting", "export"
                    self.log("vector_index_clone_failed", into=self.target.name, reason=str(message[1]))
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


COPY_STEP = 8 << 20


def copy_file(source: str, target: Path) -> None:
    """One regular file, its holes kept as holes: Edge preallocates its log and storage files (three
    32 MB log files a shard, mostly unwritten), and a plain copy would write their zeros out. A link
    put in its place since it was looked at is refused (``O_NOFOLLOW``)."""
    fd_in = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd_in)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{source} is not a regular file")
        size = info.st_size
        fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fd_in, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # nothing but a hole from here to the end
                        break
                    raise
                end = os.lseek(fd_in, start, os.SEEK_HOLE)
                while start < end:
                    data = os.pread(fd_in, min(COPY_STEP, end - start), start)
                    if not data:
                        break
                    os.pwrite(fd_out, data, start)
                    start += len(data)
                offset = end
            os.ftruncate(fd_out, size)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def copy_shard_files(source: Path, target: Path) -> None:
    """The files a shard reopens from: its configuration, segments and write-ahead log (the source
    was flushed, so its segments hold every point; the log carries the number of the last change,
    below which a change is taken as already made and skipped). Only regular files and
    directories: anything else there (a link, a pipe) is refused, never followed or read."""

    def copy_tree(src: Path, dst: Path) -> None:
        dst.mkdir()
        for entry in os.scandir(src):
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                copy_tree(Path(entry.path), dst / entry.name)
            elif stat.S_ISREG(mode):
                copy_file(entry.path, dst / entry.name)
            else:
                raise OSError(f"{entry.path} is not a regular file or directory")

    target.mkdir()
    copy_file(str(source / "edge_config.json"), target / "edge_config.json")
    copy_tree(source / "segments", target / "segments")
    copy_tree(source / "wal", target / "wal")


def _clone(conn: Connection, source: Path, points: int, target: Path, index_after: int) -> Shard | None:
    """The copy of ``source``'s files, opened and checked; None (the reason sent) where it failed."""
    try:
        copy_shard_files(source, target)
    except OSError as exc:
        reason = f"copying its files failed: {exc}"
    else:
        reason = ""
    conn.send(("copied",))  # the engine may change the source again
    if not reason:
        try:
            shard = Shard.load(target, index_after=index_after)
        except Exception as exc:
            reason = f"the copy did not open: {type(exc).__name__}: {exc}"
        else:
            found = shard.count()
            if found == points:
                return shard
            shard.close()
            reason = f"the copy holds {found} points, not {points}"
    shutil.rmtree(target, ignore_errors=True)
    conn.send(("unclonable", reason))
    return None


def build(conn: Connection, target: Path) -> None:
    message = conn.recv()
    shard: Shard | None = None
    if message[0] == "clone":
        _, source, points, dim, index_after = message
        shard = _clone(conn, Path(source), int(points), target, int(index_after))
    else:
        _, dim, index_after = message
    via = "clone" if shard is not None else "export"
    if shard is None:
        shard = Shard.create(target, int(dim), index_after=int(index_after))
        while (message := conn.recv())[0] == "points":  # until ("build",)
            page: Exported = message[1]
            shard.upsert(page.ids, page.vectors, page.payloads, page.sparse)
            conn.send(("ack",))
    try:
        began = time.monotonic()
        shard.optimize()
        shard.flush()
        points = shard.count()
    finally:
        shard.close()
    conn.send(("done", {"points": points, "seconds": round(time.monotonic() - began, 2), "via": via}))


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
