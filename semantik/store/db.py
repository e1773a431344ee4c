"""SQLite access: one writer connection per process, a small pool of readers, numbered migrations.

WAL lets readers run beside the writer (and beside writers in other processes on the same box);
``busy_timeout`` makes a second process's writer wait instead of failing with "database is locked".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiosqlite

P = ParamSpec("P")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
# The database holds every chunk's text: only this user may read it, whatever the umask.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def make_private_dir(path: Path, *, tighten: bool = False) -> None:
    """Create ``path`` and any missing parents with mode 0700, whatever the umask. With
    ``tighten``, an existing ``path`` of this user's loses its group and other permissions too."""
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        with contextlib.suppress(PermissionError):  # made meanwhile by another user: theirs
            os.chmod(directory, PRIVATE_DIR_MODE)
    if not path.is_dir():
        path.mkdir(mode=PRIVATE_DIR_MODE)  # not a directory: let mkdir say why (FileExistsError)
    if tighten and path not in missing:
        info = path.stat()
        if info.st_uid == os.geteuid() and info.st_mode & 0o7777 != PRIVATE_DIR_MODE:
            os.chmod(path, PRIVATE_DIR_MODE)


def make_private_file(path: Path) -> None:
    """Create ``path`` if missing; either way readable and writable by this user only (0600)."""
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_FILE_MODE))
    with contextlib.suppress(PermissionError):  # another user's file: theirs to protect
        os.chmod(path, PRIVATE_FILE_MODE)


# Each entry is applied once, in order, inside a transaction; never edit one that has shipped.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE collections (
        name        TEXT PRIMARY KEY,
        model       TEXT NOT NULL,
        dim         INTEGER NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id            TEXT PRIMARY KEY,
        name          TEXT,
        collection    TEXT NOT NULL REFERENCES collections(name),
        directory     TEXT NOT NULL,
        recursive     INTEGER NOT NULL,
        include       TEXT,
        exclude       TEXT,
        status        TEXT NOT NULL,
        files_total   INTEGER NOT NULL DEFAULT 0,
        files_done    INTEGER NOT NULL DEFAULT 0,
        files_failed  INTEGER NOT NULL DEFAULT 0,
        files_skipped INTEGER NOT NULL DEFAULT 0,
        chunks        INTEGER NOT NULL DEFAULT 0,
        current_file  TEXT,
        worker_id     TEXT,
        device        TEXT,
        error         TEXT,
        created_at    TEXT NOT NULL,
        started_at    TEXT,
        finished_at   TEXT
    );
    CREATE INDEX jobs_status ON jobs(status);
    CREATE INDEX jobs_created ON jobs(created_at);
    CREATE TABLE files (
        id          INTEGER PRIMARY KEY,
        job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        path        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        mtime       REAL NOT NULL,
        sha256      TEXT,
        status      TEXT NOT NULL,
        error       TEXT,
        chunks      INTEGER NOT NULL DEFAULT 0,
        updated_at  TEXT NOT NULL,
        UNIQUE (job_id, path)
    );
    CREATE INDEX files_job_status ON files(job_id, status);
    -- What each collection holds: one row per distinct file content, so a re-run skips it.
    CREATE TABLE documents (
        collection  TEXT NOT NULL REFERENCES collections(name),
        sha256      TEXT NOT NULL,
        path        TEXT NOT NULL,
        chunks      INTEGER NOT NULL,
        job_id      TEXT NOT NULL,
        indexed_at  TEXT NOT NULL,
        PRIMARY KEY (collection, sha256)
    );
    CREATE INDEX documents_path ON documents(collection, path);
    """,
    # Events: the number of the job's last event, so a snapshot says where the stream continues.
    """
    ALTER TABLE jobs ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    """,
    # Lifecycle: cancellation requests, retries (each run has its own arq job id), crash resume.
    """
    ALTER TABLE jobs ADD COLUMN cancel_requested_at TEXT;
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE jobs ADD COLUMN arq_job_id TEXT;
    CREATE INDEX jobs_finished ON jobs(finished_at);
    """,
    # Hostile folders: a file name that is not UTF-8 keeps its exact bytes (``path`` shows it escaped).
    """
    ALTER TABLE files ADD COLUMN raw_path BLOB;
    """,
    # Folder sync. A collection remembers its sources (a folder and how to read it), and what each
    # source's folder held at its last run (``entries``: one row per path, with the stat that lets an
    # unchanged file go unread). ``documents`` becomes the register of contents that have vectors:
    # ``writing`` before a content's points are upserted, ``done`` once a path refers to it; ``dirty``
    # counts changes to the paths that refer to it since its points were last brought in step
    # (released when nothing refers to it, else renamed), so nothing a crash interrupts is lost
    # track of. Existing jobs become sources and what they indexed becomes entries (stat unknown:
    # the first sync reads each file once); pending files of unfinished jobs get their source.
    """
    CREATE TABLE sources (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        collection  TEXT NOT NULL REFERENCES collections(name),
        directory   TEXT NOT NULL,
        recursive   INTEGER NOT NULL,
        include     TEXT NOT NULL,
        exclude     TEXT NOT NULL,
        watch       INTEGER NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL,
        UNIQUE (collection, directory, recursive, include, exclude)
    );
    CREATE TABLE entries (
        source_id   INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
        path        TEXT NOT NULL,
        raw_path    BLOB,
        size        INTEGER NOT NULL,
        mtime_ns    INTEGER NOT NULL,
        ctime_ns    INTEGER NOT NULL,
        inode       INTEGER NOT NULL,
        sha256      TEXT,
        status      TEXT NOT NULL,
        error       TEXT,
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (source_id, path)
    );
    CREATE INDEX entries_sha256 ON entries(sha256);
    ALTER TABLE documents ADD COLUMN state TEXT NOT NULL DEFAULT 'done';
    ALTER TABLE documents ADD COLUMN dirty INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX documents_dirty ON documents(collection) WHERE dirty > 0 OR state = 'writing';
    ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'index';
    ALTER TABLE jobs ADD COLUMN source_id INTEGER;
    ALTER TABLE jobs ADD COLUMN files_unchanged INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN files_removed INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_collection_status ON jobs(collection, status);
    ALTER TABLE files ADD COLUMN source_id INTEGER;
    ALTER TABLE files ADD COLUMN mtime_ns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE files ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE files ADD COLUMN inode INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE collections ADD COLUMN sync_interval_s INTEGER;
    INSERT OR IGNORE INTO sources (collection, directory, recursive, include, exclude, created_at)
        SELECT collection, directory, recursive, COALESCE(include, 'null'), COALESCE(exclude, 'null'),
               MIN(created_at)
        FROM jobs GROUP BY collection, directory, recursive, include, exclude;
    UPDATE jobs SET source_id = (
        SELECT s.id FROM sources s WHERE s.collection = jobs.collection AND s.directory = jobs.directory
        AND s.recursive = jobs.recursive AND s.include = COALESCE(jobs.include, 'null')
        AND s.exclude = COALESCE(jobs.exclude, 'null'));
    UPDATE files SET source_id = (SELECT source_id FROM jobs WHERE jobs.id = files.job_id);
    INSERT OR IGNORE INTO entries (source_id, path, size, mtime_ns, ctime_ns, inode, sha256, status, updated_at)
        SELECT source_id, path, 0, 0, 0, 0, sha256, 'done', indexed_at FROM (
            SELECT d.path, d.sha256, d.indexed_at, (
                SELECT s.id FROM sources s WHERE s.collection = d.collection
                AND substr(d.path, 1, length(s.directory) + 1) = s.directory || '/'
                AND (s.recursive = 1 OR instr(substr(d.path, length(s.directory) + 2), '/') = 0)
                ORDER BY length(s.directory) DESC, s.recursive DESC, s.include = 'null' DESC LIMIT 1) AS source_id
            FROM documents d)
        WHERE source_id IS NOT NULL;
    """,
    # 6: the search filters (issue 17) need ``dirs`` and ``mtime`` on every point: each content a
    # path refers to is marked, so the collection's next run names its paths again with them
    # (no re-embedding). Contents nothing refers to stay as they are (kept, and searchable).
    """
    UPDATE documents SET dirty = dirty + 1
    WHERE EXISTS (
        SELECT 1 FROM entries e JOIN sources s ON s.id = e.source_id
        WHERE s.collection = documents.collection AND e.sha256 = documents.sha256
          AND e.status IN ('done', 'failed') AND e.sha256 IS NOT NULL
    );
    """,
]


async def in_thread(
    conn: aiosqlite.Connection,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """``fn(sqlite3 connection, *args)`` on ``conn``'s own thread, in one hop from the event loop.

    Each aiosqlite call (an ``execute``, a cursor's ``fetchone``, its ``close``) is a round trip
    between the loop and SQLite's thread: a job committing 2,400 small files made 21 of them a file,
    and with the model holding both cores of an AMX Xeon, those hand-offs cost the job more than the
    SQL did. Steps of several statements run here as one call instead, on the same connection and so
    inside the caller's transaction. aiosqlite has no public way to do this: it uses ``_execute`` and
    ``_conn`` (the version is capped in pyproject.toml; the store's tests run through here)."""
    return await conn._execute(fn, conn._conn, *args, **kwargs)  # type: ignore[no-untyped-call,no-any-return]


def _in_transaction(
    conn: sqlite3.Connection,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args, **kwargs)
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back by itself (a full disk, an I/O error): then only the error stays.
        _rollback_if_open(conn)
        raise
    return result


def _rollback_if_open(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


async def _to_the_end(step: Awaitable[T]) -> T:
    """Await ``step``; a caller cancelled meanwhile gets CancelledError only once it has ended (it
    runs on SQLite's thread whatever the caller does, and the writer is not free before)."""
    future = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        raise


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class Database:
    """All writes go through one connection guarded by a lock; reads use a bounded pool."""

    def __init__(self, path: Path, readers: int = 3) -> None:
        self.path = path
        self._reader_count = readers
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []

    async def open(self) -> None:
        make_private_dir(self.path.parent)
        # SQLite gives its -wal and -shm files the database file's mode: 0600 for all three.
        make_private_file(self.path)
        self._writer = await _connect(self.path)
        await self._writer.execute("PRAGMA journal_mode = WAL")
        self._protect_side_files()
        await self._migrate()
        for _ in range(self._reader_count):
            reader = await _connect(self.path)
            self._all_readers.append(reader)
            self._readers.put_nowait(reader)

    def _protect_side_files(self) -> None:
        for suffix in SQLITE_SIDE_FILES:
            side = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError, PermissionError):
                if side.stat().st_mode & 0o077:
                    os.chmod(side, PRIVATE_FILE_MODE)

    async def close(self) -> None:
        for conn in self._all_readers:
            await conn.close()
        self._all_readers.clear()
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    async def _migrate(self) -> None:
        async with self.transaction() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await (await conn.execute("SELECT MAX(version) FROM schema_version")).fetchone()
            current = row[0] if row and row[0] is not None else 0
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An IMMEDIATE transaction on the writer: takes SQLite's write lock up front."""
        if self._writer is None:
            raise RuntimeError("database is not open")
        async with self._write_lock:
            writer = self._writer
            try:
                await writer.execute("BEGIN IMMEDIATE")  # inside: a caller cancelled while it waits rolls back
                yield writer
                await writer.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a deferred constraint, a full disk) leaves the transaction open, or SQLite
                # has rolled it back already, or a cancelled BEGIN or COMMIT still runs on SQLite's thread:
                # whether one is open is asked there, after them, and the error stays the caller's.
                await _to_the_end(in_thread(writer, _rollback_if_open))
                raise

    async def write(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(connection, *args)`` in an IMMEDIATE transaction on the writer, all in one call on its
        thread (``in_thread``): committed if it returns, rolled back if it raises. A caller cancelled
        meanwhile does not stop it: the step is applied whole or not at all."""
        if self._writer is None:
            raise RuntimeError("database is not open")
        async with self._write_lock:
            return await _to_the_end(in_thread(self._writer, _in_transaction, fn, *args, **kwargs))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement; returns the number of rows changed."""
        return await self.write(lambda conn: conn.execute(sql, params).rowcount)

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        """A connection of the reader pool, for a few reads in a row."""
        conn = await self._readers.get()
        try:
            yield conn
        finally:
            self._readers.put_nowait(conn)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self.reader() as conn:
            return list(await conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return row[0] if row is not None else None
