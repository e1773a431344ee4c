"""Turn a file into sections of text, one extractor per format (``formats/``). Every failure names its reason.

These functions parse untrusted bytes: they run in the extraction processes
(``semantik.indexing.sandbox``), never in the worker itself. Each limit a hostile file could defeat
is checked before the work it guards: the file's size on the opened descriptor, the uncompressed
size of a zip container before it is parsed, a PDF's page count before its pages are built, the
text's length as it grows. Time and memory are bounded by the process that runs them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from semantik.indexing.formats.base import (
    BLANK_RUNS,
    ExtractionError,
    ExtractLimits,
    Section,
    check_zip_container,
    decode_text,
    megabytes,
    too_many_chars,
)
from semantik.paths import is_within

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ExtractLimits",
    "ExtractionError",
    "FileContent",
    "Section",
    "check_zip_container",
    "decode_text",
    "extract_sections",
    "extract_text",
    "extracts_cheaply",
    "format_key",
    "read_file",
]

Extractor = Callable[[bytes, ExtractLimits], list[Section]]

# Plain text as it is: prose, logs, and source code and configuration (searchable by what they say).
TEXT_SUFFIXES = frozenset({
    ".txt", ".text", ".rst", ".csv", ".tsv", ".log", ".tex", ".org", ".adoc",
    ".py", ".pyi", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".vue", ".svelte", ".java", ".kt", ".kts",
    ".scala", ".go", ".rs", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".fs", ".swift",
    ".m", ".mm", ".rb", ".php", ".pl", ".pm", ".lua", ".r", ".jl", ".dart", ".ex", ".exs", ".erl",
    ".hs", ".clj", ".elm", ".sh", ".bash", ".zsh", ".fish", ".ps1", ".bat", ".sql", ".graphql", ".proto",
    ".css", ".scss", ".sass", ".less", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini", ".cfg",
    ".conf", ".properties", ".env", ".xml", ".xsd", ".svg", ".gradle", ".cmake", ".mk", ".tf", ".hcl",
    ".nix", ".dockerfile",
})  # fmt: skip
# Files known by their whole name (lower case): they have no suffix.
TEXT_NAMES = frozenset(
    {
        "makefile",
        "dockerfile",
        "containerfile",
        "jenkinsfile",
        "vagrantfile",
        "gemfile",
        "rakefile",
        "procfile",
        "readme",
        "license",
        "changelog",
        "authors",
        "notice",
    }
)
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx"})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pnm"})
ODF_SUFFIXES = frozenset({".odt", ".ods", ".odp"})
# Office Open XML: documents, macro-enabled documents, templates (and PowerPoint's slide shows).
WORD_SUFFIXES = frozenset({".docx", ".docm", ".dotx", ".dotm"})
POWERPOINT_SUFFIXES = frozenset({".pptx", ".pptm", ".ppsx", ".ppsm", ".potx", ".potm"})
EXCEL_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xltx", ".xltm"})


def _extractors() -> dict[str, Extractor]:
    """Format key (a suffix, or a whole name) -> extractor; the modules load on first use."""
    from semantik.indexing.formats import epub, legacy, mail, notebook, office, opendocument, pdf, rtf, web

    return {
        **{suffix: web.extract_plain for suffix in TEXT_SUFFIXES | TEXT_NAMES},
        **{suffix: web.extract_markdown for suffix in MARKDOWN_SUFFIXES},
        **{suffix: web.extract_html for suffix in HTML_SUFFIXES},
        **{suffix: pdf.extract_image for suffix in IMAGE_SUFFIXES},
        **{suffix: opendocument.extract_odf for suffix in ODF_SUFFIXES},
        ".pdf": pdf.extract_pdf,
        **{suffix: office.extract_docx for suffix in WORD_SUFFIXES},
        **{suffix: office.extract_pptx for suffix in POWERPOINT_SUFFIXES},
        **{suffix: office.extract_xlsx for suffix in EXCEL_SUFFIXES},
        **{suffix: legacy.extract_doc for suffix in (".doc", ".dot")},
        **{suffix: legacy.extract_xls for suffix in (".xls", ".xlt")},
        **{suffix: legacy.extract_ppt for suffix in (".ppt", ".pps", ".pot")},
        ".epub": epub.extract_epub,
        ".eml": mail.extract_eml,
        ".mbox": mail.extract_mbox,
        ".msg": mail.extract_msg,
        ".rtf": rtf.extract_rtf,
        ".ipynb": notebook.extract_ipynb,
    }


SUPPORTED_SUFFIXES = (
    TEXT_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | IMAGE_SUFFIXES | ODF_SUFFIXES
    | WORD_SUFFIXES | POWERPOINT_SUFFIXES | EXCEL_SUFFIXES
    | {".doc", ".dot", ".xls", ".xlt", ".ppt", ".pps", ".pot"}  # Office 97-2003
    | {".pdf", ".epub", ".eml", ".mbox", ".msg", ".rtf", ".ipynb"}
)  # fmt: skip


def format_key(name: str) -> str | None:
    """What picks a file's extractor: its suffix in lower case, or its whole name for the few
    files known without one (Makefile, Dockerfile ...); None when no extractor takes it."""
    suffix = Path(name).suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        return suffix
    lowered = Path(name).name.lower()
    return lowered if not suffix and lowered in TEXT_NAMES else None


CHEAP_KEYS = TEXT_SUFFIXES | TEXT_NAMES | MARKDOWN_SUFFIXES | HTML_SUFFIXES


def _extractor_key(name: str) -> str | None:
    """``format_key``, where a bare suffix (".pdf") names its format too."""
    return format_key(name) or format_key("x" + name)


def extracts_cheaply(name: str) -> bool:
    """Plain text, Markdown or HTML: formats whose text costs about as much to extract as to hash
    (no archive, no pages to render, no OCR)."""
    return _extractor_key(name) in CHEAP_KEYS


_READ_BLOCK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileContent:
    data: bytes
    sha256: str
    real_path: str  # what the descriptor really is: its suffix picks the extractor
    mtime: float = 0.0  # seconds since the epoch, from the opened descriptor


def read_file(path: str | bytes | os.PathLike[str], *, max_bytes: int, allowed_roots: Sequence[Path]) -> FileContent:
    """The bytes of a regular file inside ``allowed_roots`` and their sha256, read without trusting
    what the scan saw: the path may have become a FIFO (opening it must not block), a device
    (``/dev/zero`` never ends), a socket, or a symlink out of the roots since. Where it leads and
    what it is are checked before opening (so nothing outside is opened) and again on the opened
    descriptor (so a swap in between is caught too); at most ``max_bytes + 1`` bytes are read."""
    try:
        _check_target(os.path.realpath(path), os.stat(path).st_mode, allowed_roots)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except PermissionError as exc:
        raise ExtractionError("permission denied") from exc
    except OSError as exc:
        raise ExtractionError(f"cannot read: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        real_path = os.readlink(f"/proc/self/fd/{fd}")
        _check_target(real_path, info.st_mode, allowed_roots)
        too_large = f"larger than the {megabytes(max_bytes)} MB limit (SEMANTIK_MAX_FILE_SIZE_MB)"
        if info.st_size > max_bytes:
            raise ExtractionError(too_large)
        blocks, size, digest = [], 0, hashlib.sha256()
        while block := os.read(fd, min(_READ_BLOCK_BYTES, max_bytes + 1 - size)):
            blocks.append(block)
            digest.update(block)
            size += len(block)
            if size > max_bytes:  # it grew since fstat
                raise ExtractionError(too_large)
    except PermissionError as exc:
        raise ExtractionError("permission denied") from exc
    except OSError as exc:
        raise ExtractionError(f"cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return FileContent(b"".join(blocks), digest.hexdigest(), real_path, info.st_mtime)


def _check_target(real_path: str | bytes, mode: int, allowed_roots: Sequence[Path]) -> None:
    from semantik.indexing.scan import file_kind  # scan imports this module

    if not is_within(Path(os.fsdecode(real_path)), allowed_roots):
        raise ExtractionError("leads outside the allowed roots (SEMANTIK_ALLOWED_ROOTS)")
    if not stat.S_ISREG(mode):
        raise ExtractionError(f"not a regular file ({file_kind(mode)})")


_EXTRACTORS: dict[str, Extractor] = {}


def extract_sections(data: bytes, name: str, limits: ExtractLimits | None = None) -> list[Section]:
    """The sections of text of a file called ``name`` (its suffix picks the format); raises
    ExtractionError with a reason (a parser's own exception on a strange file too). MemoryError goes
    through: the caller knows the limit."""
    limits = limits or ExtractLimits()
    key = _extractor_key(name)
    if not _EXTRACTORS:
        _EXTRACTORS.update(_extractors())
    extractor = _EXTRACTORS.get(key or "")
    if extractor is None:
        raise ExtractionError(f"unsupported file type {Path(name).suffix or name!r}")
    try:
        sections = extractor(data, limits)
    except (ExtractionError, MemoryError):
        raise
    except Exception as exc:  # a parser bug on a strange file fails that file, not the job
        raise ExtractionError(f"cannot extract text: {type(exc).__name__}: {exc}") from exc
    if sum(len(section.text) for section in sections) > limits.max_chars:
        raise too_many_chars(limits)
    # Blank runs shrink to one blank line; a lone surrogate (from a PDF's odd character map) is not
    # text the tokenizer takes.
    return [
        replace(section, text=text.encode("utf-8", "replace").decode("utf-8"))
        for section in sections
        if (text := BLANK_RUNS.sub("\n\n", section.text).strip())
    ]


def extract_text(data: bytes, name: str, limits: ExtractLimits | None = None) -> str:
    """The whole text of a file, its sections one after another."""
    return "\n\n".join(section.text for section in extract_sections(data, name, limits))
