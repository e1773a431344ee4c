"""Turn file bytes into plain text, one extractor per format. Every failure names its reason."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import charset_normalizer

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".log"})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"}

_BINARY_SNIFF_BYTES = 8192
_CP1252_CHAOS_MARGIN = 0.2
_BLANK_RUNS = re.compile(r"\n\s*\n\s*\n+")


class ExtractionError(Exception):
    """The file cannot be turned into text; the message says why, for the user."""


def read_file(path: Path) -> tuple[bytes, str]:
    """The file's bytes and their sha256 hex digest."""
    try:
        data = path.read_bytes()
    except PermissionError as exc:
        raise ExtractionError("permission denied") from exc
    except OSError as exc:
        raise ExtractionError(f"cannot read: {exc.strerror or exc}") from exc
    return data, hashlib.sha256(data).hexdigest()


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


def extract_html(data: bytes) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(decode_text(data), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    return soup.get_text("\n")


def extract_pdf(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractionError("encrypted PDF")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ExtractionError(f"corrupt PDF: {exc}") from exc


def extract_docx(data: bytes) -> str:
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"corrupt DOCX: {exc}") from exc
    parts = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text for cell in row.cells))
    return "\n".join(parts)


_EXTRACTORS: dict[str, Callable[[bytes], str]] = {
    **{suffix: decode_text for suffix in TEXT_SUFFIXES},
    **{suffix: extract_html for suffix in HTML_SUFFIXES},
    ".pdf": extract_pdf,
    ".docx": extract_docx,
}


def extract_text(data: bytes, suffix: str) -> str:
    """Plain text of a file with this suffix; raises ExtractionError with a reason."""
    extractor = _EXTRACTORS.get(suffix.lower())
    if extractor is None:
        raise ExtractionError(f"unsupported file type {suffix!r}")
    text = extractor(data)
    return _BLANK_RUNS.sub("\n\n", text).strip()
