"""What every format shares: the error a file fails with, the limits, the ``Section`` a format
yields, text decoding and the zip-container check."""

from __future__ import annotations

import io
import re
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import charset_normalizer

_MB = 1024 * 1024
_BINARY_SNIFF_BYTES = 8192
_CP1252_CHAOS_MARGIN = 0.2
# Members of a zip container: more than this many, or one inflating more than MAX_ZIP_RATIO times
# (and by more than ZIP_RATIO_FLOOR_BYTES), is a zip bomb, not a document. Office XML compresses
# about 5-20 times; deflate cannot exceed about 1032.
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_RATIO = 200
ZIP_RATIO_FLOOR_BYTES = 1 * _MB
# The first bytes of a compound file (OLE2): Office 97-2003 files, Outlook messages, and Office
# Open XML files with a password (their encrypted package inside one).
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# What a parser of a binary format raises on a damaged file: offsets past the end, bad codes, odd
# code pages, a directory chained so deep that a parser's recursion runs out.
BROKEN_BINARY = (OSError, ValueError, LookupError, struct.error, OverflowError, RecursionError)
# Heading titles longer than this are cut: a heading is a label, not a paragraph.
MAX_HEADING_CHARS = 200
# Text before a document's first heading shorter than this (a title) joins the first section.
MIN_PREAMBLE_CHARS = 80


BLANK_RUNS = re.compile(r"\n\s*\n\s*\n+")


class ExtractionError(Exception):
    """The file cannot be turned into text; the message says why, for the user."""


@dataclass(frozen=True)
class ExtractLimits:
    """What one file may take (``SEMANTIK_EXTRACT_*``, ``SEMANTIK_OCR_*``); the defaults are the
    settings' defaults. ``ocr_command``: the tesseract program, "" for no OCR."""

    max_pages: int = 5000
    max_chars: int = 20_000_000
    max_unzipped_bytes: int = 512 * _MB
    ocr_command: str = "tesseract"
    ocr_languages: str = "eng"


@dataclass(frozen=True)
class Section:
    """A run of text and where it is: its page (PDF, 1-based), slide (pptx, odp; 1-based), sheet
    (xlsx, ods) and heading path (outermost first). Chunks never span two sections."""

    text: str
    page: int | None = None
    slide: int | None = None
    sheet: str | None = None
    heading: tuple[str, ...] = ()

    def location(self) -> dict[str, Any]:
        """The fields that are set, as a chunk's payload carries them."""
        found: dict[str, Any] = {}
        if self.page is not None:
            found["page"] = self.page
        if self.slide is not None:
            found["slide"] = self.slide
        if self.sheet is not None:
            found["sheet"] = self.sheet
        if self.heading:
            found["heading"] = list(self.heading)
        return found


def megabytes(size_bytes: float) -> str:
    return f"{size_bytes / _MB:g}"


def too_many_chars(limits: ExtractLimits) -> ExtractionError:
    return ExtractionError(f"more than {limits.max_chars} characters of text (SEMANTIK_EXTRACT_MAX_CHARS)")


class TextBudget:
    """Counts the characters a format has produced and fails as soon as they pass the limit, so a
    hostile file is refused while it grows, not after it has filled memory."""

    def __init__(self, limits: ExtractLimits) -> None:
        self.limits, self.used = limits, 0

    def take(self, text: str) -> str:
        self.charge(len(text) + 1)
        return text

    def charge(self, count: int) -> None:
        """Count ``count`` characters about to be made (before making them)."""
        self.used += count
        if self.used > self.limits.max_chars:
            raise too_many_chars(self.limits)


def heading_title(text: str) -> str:
    title = " ".join(text.split())
    return title if len(title) <= MAX_HEADING_CHARS else title[: MAX_HEADING_CHARS - 1] + "…"


class Outline:
    """The heading path while a document is read from top to bottom: a heading of level N replaces
    the one of level N and everything below it."""

    def __init__(self, base: Iterable[str] = ()) -> None:
        self._levels: list[tuple[int, str]] = [(0, title) for title in base]
        self.base = self.path

    def enter(self, level: int, title: str) -> None:
        title = heading_title(title)
        if not title:
            return
        while self._levels and self._levels[-1][0] >= max(level, 1):
            self._levels.pop()
        self._levels.append((max(level, 1), title))

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self._levels)


def sections_from_blocks(
    blocks: Iterable[tuple[int, str]], base: Iterable[str] = (), **where: Any
) -> Iterator[Section]:
    """Sections from a document's blocks in order: ``(level, text)`` where level > 0 is a heading
    of that level and 0 a paragraph. A heading starts a section and is its first line; a heading
    with no text before the next one goes into the next section, and so does a short preamble
    before the first heading (a page's <title>): no chunk of a lone title."""
    outline = Outline(base)
    lines: list[str] = []
    body = False
    path = outline.path
    for level, text in blocks:
        if level > 0:
            preamble = path == outline.base and len(_joined(lines)) < MIN_PREAMBLE_CHARS
            if body and not preamble:
                yield Section(_joined(lines), heading=path, **where)
                lines, body = [], False
            outline.enter(level, text)
            path = outline.path
            lines.append(heading_title(text))
        elif body or text.strip():  # blank lines inside a section keep its paragraphs apart
            lines.append(text)
            body = True
    if any(line.strip() for line in lines):
        yield Section(_joined(lines), heading=path, **where)


def _joined(lines: list[str]) -> str:
    return BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


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


def check_zip_container(data: bytes, limits: ExtractLimits, kind: str = "zip container") -> None:
    """Refuse a zip container (docx, pptx, xlsx, odt, epub alike) that would inflate to more than
    the limit, in total or by an absurd ratio, before any parser opens it. The sizes come from the
    central directory; ``zipfile`` never inflates a member beyond its declared size."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        prefix = f"corrupt {kind}: " if kind != "zip container" else ""
        raise ExtractionError(f"{prefix}corrupt zip container: {exc}") from exc
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


def safe_xml_parser() -> Any:
    """An lxml parser for untrusted XML: no entities resolved, no network, no DTD, no huge trees."""
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, recover=False)
