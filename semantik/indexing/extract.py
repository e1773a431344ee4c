"""Turn a file into plain text, one extractor per format. Every failure names its reason.

These functions parse untrusted bytes: they run in the extraction processes
(``semantik.indexing.sandbox``), never in the worker itself. Each limit a hostile file could defeat
is checked before the work it guards: the file's size on the opened descriptor, the uncompressed
size of a zip container before it is parsed, a PDF's page count before its pages are built, the
text's length as it grows. Time and memory are bounded by the process that runs them.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import charset_normalizer

from semantik.paths import is_within

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".log"})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"}

_BINARY_SNIFF_BYTES = 8192
_CP1252_CHAOS_MARGIN = 0.2
_BLANK_RUNS = re.compile(r"\n\s*\n\s*\n+")
_READ_BLOCK_BYTES = 1024 * 1024
_MB = 1024 * 1024
# Members of a zip container: more than this many, or one inflating more than MAX_ZIP_RATIO times
# (and by more than ZIP_RATIO_FLOOR_BYTES), is a zip bomb, not a document. Office XML compresses
# about 5-20 times; deflate cannot exceed about 1032.
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_RATIO = 200
ZIP_RATIO_FLOOR_BYTES = 1 * _MB
# Nodes visited in a PDF's page tree per allowed page (besides the pages): a tree whose nodes list
# each other thousands of times is refused before pypdf builds a page object per listing.
_PAGE_TREE_VISITS_PER_PAGE = 4


class ExtractionError(Exception):
    """The file cannot be turned into text; the message says why, for the user."""


@dataclass(frozen=True)
class ExtractLimits:
    """What one file may take (``SEMANTIK_EXTRACT_*``); the defaults are the settings' defaults."""

    max_pages: int = 5000
    max_chars: int = 20_000_000
    max_unzipped_bytes: int = 512 * _MB


@dataclass(frozen=True)
class FileContent:
    data: bytes
    sha256: str
    real_path: str  # what the descriptor really is: its suffix picks the extractor


def megabytes(size_bytes: float) -> str:
    return f"{size_bytes / _MB:g}"


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
    return FileContent(b"".join(blocks), digest.hexdigest(), real_path)


def _check_target(real_path: str | bytes, mode: int, allowed_roots: Sequence[Path]) -> None:
    from semantik.indexing.scan import file_kind  # scan imports this module

    if not is_within(Path(os.fsdecode(real_path)), allowed_roots):
        raise ExtractionError("leads outside the allowed roots (SEMANTIK_ALLOWED_ROOTS)")
    if not stat.S_ISREG(mode):
        raise ExtractionError(f"not a regular file ({file_kind(mode)})")


def decode_text(data: bytes) -> str:
    if not data:
        return ""
    if b"\x00" in data[:_BINARY_SNIFF_BYTES] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExtractionError("binary content (NUL bytes) in a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        raise ExtractionError("undecodable text: not UTF-8 and no other encoding fits")
    # Short Western text is ambiguous between the 125x code pages; Windows-1252 is by far the most
    # common legacy encoding, so it wins whenever it reads about as cleanly as the best guess.
    for match in matches:
        if match.encoding == "cp1252" and match.chaos <= best.chaos + _CP1252_CHAOS_MARGIN:
            return str(match)
    return str(best)


# Elements that start a new line of text; everything else (span, code, a, em, b ...) is inline and
# joins its neighbours as the browser shows it, so highlighted code reads `python3 -m venv env`,
# not one token per line.
HTML_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "caption", "dd", "details", "dialog", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "title",
    "tr", "ul",
})  # fmt: skip
HTML_CELLS = frozenset({"td", "th"})


def extract_html(data: bytes, limits: ExtractLimits) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(decode_text(data), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    for tag in soup.find_all(True):
        if tag.name == "br":
            tag.replace_with("\n")
        elif tag.name in HTML_BLOCKS:
            tag.insert_before("\n")
            tag.insert_after("\n")
        elif tag.name in HTML_CELLS:
            tag.insert_after(" ")
    # Lines keep the text's own spacing (a <pre> block stays as written); blank runs shrink to one.
    return re.sub(r"\n\s*\n+", "\n\n", soup.get_text(""))


def too_many_chars(limits: ExtractLimits) -> ExtractionError:
    return ExtractionError(f"more than {limits.max_chars} characters of text (SEMANTIK_EXTRACT_MAX_CHARS)")


def extract_pdf(data: bytes, limits: ExtractLimits) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractionError("encrypted PDF")
        check_page_count(reader.root_object.get("/Pages"), limits.max_pages)
        texts, length = [], 0
        for page in reader.pages:
            texts.append(page.extract_text() or "")
            length += len(texts[-1]) + 2
            if length > limits.max_chars:
                raise too_many_chars(limits)
        return "\n\n".join(texts)
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ExtractionError(f"corrupt PDF: {exc}") from exc


def check_page_count(pages: Any, max_pages: int) -> None:
    """Refuse a page tree with more than ``max_pages`` pages, counted without building them: first
    its /Count (which may lie), then a walk that stops at the limit, so a tree whose nodes list each
    other many times (90,000 pages from a 4 KB file) fails at once. A loop is corrupt."""
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject

    too_many = ExtractionError(f"more than {max_pages} pages (SEMANTIK_EXTRACT_MAX_PAGES)")
    root = pages.get_object() if isinstance(pages, IndirectObject) else pages
    if not isinstance(root, DictionaryObject):
        raise ExtractionError("corrupt PDF: no page tree")
    declared = root.get("/Count")
    declared = declared.get_object() if isinstance(declared, IndirectObject) else declared
    if isinstance(declared, int) and declared > max_pages:
        raise too_many
    count, visits, visit_budget = 0, 0, _PAGE_TREE_VISITS_PER_PAGE * max_pages + 1000
    path: list[int] = []  # the /Pages nodes from the root to where the walk is
    stack: list[Iterator[Any]] = [iter([pages])]
    while stack:
        kid = next(stack[-1], None)
        if kid is None:
            stack.pop()
            if path:
                path.pop()
            continue
        visits += 1
        if visits > visit_budget:
            raise too_many
        node = kid.get_object() if isinstance(kid, IndirectObject) else kid
        if not isinstance(node, DictionaryObject):
            continue
        kids = node.get("/Kids")
        kind = node.get("/Type")
        if kids is None or kind == "/Page":
            count += 1
            if count > max_pages:
                raise too_many
            continue
        key = kid.idnum if isinstance(kid, IndirectObject) else id(node)
        if key in path:
            raise ExtractionError("corrupt PDF: its page tree loops")
        kids = kids.get_object() if isinstance(kids, IndirectObject) else kids
        if isinstance(kids, ArrayObject):
            path.append(key)
            stack.append(iter(kids))


def check_zip_container(data: bytes, limits: ExtractLimits) -> None:
    """Refuse a zip container (docx, and pptx, xlsx, odt, epub alike) that would inflate to more
    than the limit, in total or by an absurd ratio, before any parser opens it. The sizes come from
    the central directory; ``zipfile`` never inflates a member beyond its declared size."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ExtractionError(f"corrupt zip container: {exc}") from exc
    if len(members) > MAX_ZIP_MEMBERS:
        raise ExtractionError(f"zip container with {len(members)} members (at most {MAX_ZIP_MEMBERS})")
    if sum(member.file_size for member in members) > limits.max_unzipped_bytes:
        raise ExtractionError(
            f"would unzip to more than {megabytes(limits.max_unzipped_bytes)} MB (SEMANTIK_EXTRACT_MAX_UNZIPPED_MB)"
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > ZIP_RATIO_FLOOR_BYTES and ratio > MAX_ZIP_RATIO:
            raise ExtractionError(f"zip bomb: {member.filename} inflates {ratio:.0f} times (at most {MAX_ZIP_RATIO})")


def extract_docx(data: bytes, limits: ExtractLimits) -> str:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        check_zip_container(data, limits)
    except ExtractionError as exc:
        if str(exc).startswith("corrupt zip"):
            raise ExtractionError(f"corrupt DOCX: {exc}") from exc
        raise
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"corrupt DOCX: {exc}") from exc
    parts = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text for cell in row.cells))
    return "\n".join(parts)


_EXTRACTORS: dict[str, Callable[[bytes, ExtractLimits], str]] = {
    **{suffix: lambda data, limits: decode_text(data) for suffix in TEXT_SUFFIXES},
    **{suffix: extract_html for suffix in HTML_SUFFIXES},
    ".pdf": extract_pdf,
    ".docx": extract_docx,
}


def extract_text(data: bytes, suffix: str, limits: ExtractLimits | None = None) -> str:
    """Plain text of a file with this suffix; raises ExtractionError with a reason (a parser's
    own exception on a strange file too). MemoryError goes through: the caller knows the limit."""
    limits = limits or ExtractLimits()
    extractor = _EXTRACTORS.get(suffix.lower())
    if extractor is None:
        raise ExtractionError(f"unsupported file type {suffix!r}")
    try:
        text = extractor(data, limits)
    except (ExtractionError, MemoryError):
        raise
    except Exception as exc:  # a parser bug on a strange file fails that file, not the job
        raise ExtractionError(f"cannot extract text: {type(exc).__name__}: {exc}") from exc
    if len(text) > limits.max_chars:
        raise too_many_chars(limits)
    return _BLANK_RUNS.sub("\n\n", text).strip()
