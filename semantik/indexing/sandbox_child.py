"""The extraction process (``python -m semantik.indexing.sandbox_child FD``): limits, then one
request at a time from ``semantik.indexing.sandbox`` over the connection on file descriptor FD.

It must stay light: no torch, no transformers, no asyncio machinery; ``tokenizers`` and the parsers
are all it needs.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from semantik.indexing.chunk import Chunk, Chunker
from semantik.indexing.extract import (
    ExtractionError,
    ExtractLimits,
    FileContent,
    extract_sections,
    extracts_cheaply,
    read_file,
)
from semantik.proc import die_with_parent
from semantik.settings import Settings

_MB = 1024 * 1024
# Fractions of the memory limit: a failure past the first is out of memory whatever its type; a
# request that took the process past the second is its last (a fresh process takes the next file).
_OUT_OF_MEMORY_AT = 0.9
_RETIRE_AT = 0.6
# A file up to this size in a format that extracts cheaply (``extracts_cheaply``) is extracted with
# its ``read``: one request a file instead of two. On a folder of small text files that was 0.9 s of
# CPU less per 2,400 files, jobs 1.7% faster (docs/benchmarks.md, session 31).
AT_ONCE_BYTES = 256 * 1024


@dataclass(frozen=True)
class SandboxConfig:
    """What a child needs: every limit, and the model folder its chunker is built from."""

    model_dir: str
    allowed_roots: tuple[str, ...]
    max_file_bytes: int
    timeout_s: float
    memory_mb: int
    chunk_size: int
    chunk_overlap: int
    chunk_max_chars: int
    limits: ExtractLimits

    @classmethod
    def from_settings(cls, settings: Settings, model_dir: Path) -> SandboxConfig:
        s = settings
        return cls(
            model_dir=str(model_dir),
            allowed_roots=tuple(str(root) for root in s.allowed_roots),
            max_file_bytes=s.max_file_size_bytes,
            timeout_s=s.extract_timeout_s,
            memory_mb=s.extract_memory_mb,
            chunk_size=s.chunk_size_tokens,
            chunk_overlap=s.chunk_overlap_tokens,
            chunk_max_chars=s.chunk_max_chars,
            limits=ExtractLimits(
                max_pages=s.extract_max_pages,
                max_chars=s.extract_max_chars,
                max_unzipped_bytes=int(s.extract_max_unzipped_mb * _MB),
                ocr_command=s.ocr_command,
                ocr_languages=s.ocr_languages,
            ),
        )

    def timeout_reason(self) -> str:
        return f"extraction took longer than {self.timeout_s:g} s (SEMANTIK_EXTRACT_TIMEOUT_S)"

    def memory_reason(self) -> str:
        return f"needs more than {self.memory_mb} MB of memory (SEMANTIK_EXTRACT_MEMORY_MB)"

    def death_reason(self, returncode: int | None) -> str:
        if returncode is not None and returncode < 0:
            number = -returncode
            name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
            if number in (signal.SIGKILL, signal.SIGABRT):  # the kernel's OOM killer; an allocator's abort
                return f"the extraction process was killed ({name}): it probably {self.memory_reason()}"
            return f"the extraction process crashed ({name})"
        return f"the extraction process exited unexpectedly (code {returncode})"


def child_main(conn: Connection) -> None:
    """Receive the config, set the limits, say "ready", then answer ``read`` (with the chunks too, for
    a small file of a cheap format) and ``extract`` until the connection closes (or a request took
    this process near its memory limit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the worker decides
    die_with_parent()
    logging.disable(logging.CRITICAL)  # parsers' warnings about odd files are not the worker's log
    try:
        config: SandboxConfig = conn.recv()
    except (EOFError, OSError):
        return
    try:
        chunker = Chunker.from_model_dir(
            Path(config.model_dir),
            chunk_size=config.chunk_size,
            overlap=config.chunk_overlap,
            max_chars=config.chunk_max_chars,
        )
        import bs4  # noqa: F401  (loaded before the limit: the baseline pays for them, not a file)
        import docx  # noqa: F401
        import lxml.etree  # noqa: F401
        import pypdf  # noqa: F401
        import pypdfium2  # noqa: F401

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit_bytes = config.memory_mb * _MB if hard == resource.RLIM_INFINITY else min(config.memory_mb * _MB, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc} (model folder {config.model_dir})"))
        return
    conn.send(("ready", os.getpid(), *vm_usage_kb()))
    server = _Server(conn, config, chunker)
    while server.serve_one():
        pass


class _Server:
    def __init__(self, conn: Connection, config: SandboxConfig, chunker: Chunker) -> None:
        self.conn, self.config, self.chunker = conn, config, chunker
        self.content: FileContent | None = None  # what the last ``read`` read, for ``extract``
        self.limit_bytes = config.memory_mb * _MB

    def serve_one(self) -> bool:
        """Answer one request; False when the worker is gone or this process should be replaced.
        Every reply ends with that flag: a request that took the process near its memory limit
        leaves a fresh process for the next file (and a clean high-water mark to judge by)."""
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            return False
        try:
            reply: tuple[Any, ...] = self._handle(message)
        except Exception as exc:
            self.content = None
            reply = ("error", self._reason(exc))
        retire = vm_peak_kb() * 1024 >= _RETIRE_AT * self.limit_bytes
        try:
            self.conn.send((*reply, retire))
        except MemoryError:  # the reply itself did not fit
            self.conn.send(("error", self.config.memory_reason(), True))
            return False
        except OSError:
            return False
        return not retire

    def _reason(self, exc: Exception) -> str:
        """Why a request failed, as the file's reason."""
        cause = exc.__cause__ if isinstance(exc, ExtractionError) else exc
        if isinstance(cause, Exception) and self._out_of_memory(cause):
            return self.config.memory_reason()
        if isinstance(exc, ExtractionError):
            return str(exc)
        return f"cannot extract text: {type(exc).__name__}: {exc}"  # a parser bug on a strange file

    def _out_of_memory(self, exc: Exception) -> bool:
        """MemoryError, or a parser's own report of a failed allocation (lxml says "ERR_NO_MEMORY"),
        or any failure once the process came within reach of its limit."""
        return (
            isinstance(exc, MemoryError)
            or "NO_MEMORY" in str(getattr(exc, "error_log", ""))
            or vm_peak_kb() * 1024 >= _OUT_OF_MEMORY_AT * self.limit_bytes
        )

    def _handle(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        if message[0] == "read":
            self.content = None
            self.content = read_file(
                message[1],
                max_bytes=self.config.max_file_bytes,
                allowed_roots=[Path(root) for root in self.config.allowed_roots],
            )
            size, sha256, mtime = len(self.content.data), self.content.sha256, self.content.mtime
            return ("read", size, sha256, mtime, *self._extract_at_once())
        if message[0] == "extract":
            return ("chunks", self._extract())
        raise ExtractionError(f"unknown request {message[0]!r}")

    def _extract(self) -> list[Chunk]:
        content, self.content = self.content, None
        if content is None:
            raise ExtractionError("nothing read to extract")
        sections = extract_sections(content.data, Path(content.real_path).name, self.config.limits)
        del content
        return self.chunker.chunk_sections(sections)

    def _extract_at_once(self) -> tuple[list[Chunk] | None, str | None]:
        """The chunks of the file just read, or why it cannot be extracted, when that costs less
        than a second request (a small file of plain text, Markdown or HTML); else (None, None):
        ``extract`` asks for them. Its content may turn out to be known already (a move, a copy):
        then they go unused, a millisecond lost. The file's time limit covers this as it covered
        ``extract``: one that outlasts it fails here, before the worker could see its hash."""
        assert self.content is not None
        if len(self.content.data) > AT_ONCE_BYTES or not extracts_cheaply(Path(self.content.real_path).name):
            return None, None
        try:
            return self._extract(), None
        except Exception as exc:
            return None, self._reason(exc)


def _status_kb(*names: str) -> list[int]:
    """Fields of ``/proc/self/status`` in KiB (read after every request: kept cheap)."""
    with open("/proc/self/status", "rb") as status:
        text = status.read()
    values = []
    for name in names:
        at = text.index(b"\n" + name.encode() + b":") + len(name) + 2
        values.append(int(text[at : text.index(b"\n", at)].split()[0]))
    return values


def vm_usage_kb() -> tuple[int, int]:
    """This process's virtual size and resident set, in KiB."""
    size, resident = _status_kb("VmSize", "VmRSS")
    return size, resident


def vm_peak_kb() -> int:
    """The largest virtual size this process has had, in KiB."""
    return _status_kb("VmPeak")[0]


if __name__ == "__main__":
    from semantik.indexing.sandbox_child import child_main as main  # this module by its own name

    main(Connection(int(sys.argv[1])))
