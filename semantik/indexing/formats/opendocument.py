"""OpenDocument files (odt, ods, odp; LibreOffice's own), read from their ``content.xml`` with lxml
(no entities, no network, no DTD): headings and paragraphs of a text, a section per sheet of a
spreadsheet (a line per row), a section per slide of a presentation.

Why not odfpy: it builds a whole DOM in pure Python (minidom), and was last released in 2020; the
format's text is a handful of elements that lxml streams in C."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

from semantik.indexing.formats.base import (
    ExtractionError,
    ExtractLimits,
    Section,
    TextBudget,
    check_zip_container,
    heading_title,
    safe_xml_parser,
    sections_from_blocks,
)
from semantik.indexing.formats.office import MAX_CELL_CHARS

TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
DRAW = "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0"
OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
PRESENTATION = "urn:oasis:names:tc:opendocument:xmlns:presentation:1.0"
_P, _H = f"{{{TEXT}}}p", f"{{{TEXT}}}h"
_SPACE, _TAB, _BREAK = f"{{{TEXT}}}s", f"{{{TEXT}}}tab", f"{{{TEXT}}}line-break"
_NOTE = f"{{{TEXT}}}note"  # footnotes: their text is kept, after the paragraph's own
_ROW, _CELL, _TABLE = f"{{{TABLE}}}table-row", f"{{{TABLE}}}table-cell", f"{{{TABLE}}}table"
_PAGE, _FRAME = f"{{{DRAW}}}page", f"{{{DRAW}}}frame"
# A paragraph's run of spaces (text:s text:c="N") is written as at most this many.
_MAX_SPACES = 8
_ANNOTATION, _ANNOTATION_END = f"{{{OFFICE}}}annotation", f"{{{OFFICE}}}annotation-end"
# Paragraphs that are not the document's text: comments, and the deleted text a document keeps
# while changes are tracked (text:tracked-changes).
_NOT_SHOWN = frozenset({_ANNOTATION, f"{{{TEXT}}}tracked-changes"})
_NOT_INLINE = frozenset({_NOTE, _ANNOTATION, _ANNOTATION_END})
_DRAWING = f"{{{DRAW}}}"


def extract_odf(data: bytes, limits: ExtractLimits) -> list[Section]:
    """An odt, ods or odp file: what kind it is comes from its body, not its name."""
    body = _body(data, limits)
    budget = TextBudget(limits)
    kind = body[0].tag if len(body) else ""
    if kind == f"{{{OFFICE}}}spreadsheet":
        return list(_sheets(body[0], budget))
    if kind == f"{{{OFFICE}}}presentation":
        return list(_slides(body[0], budget, limits))
    return list(sections_from_blocks(_text_blocks(body, budget)))


def _body(data: bytes, limits: ExtractLimits) -> Any:
    from lxml import etree

    check_zip_container(data, limits, "OpenDocument file")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            content = archive.read("content.xml")
        root = etree.fromstring(content, safe_xml_parser())
    except KeyError as exc:
        raise ExtractionError("corrupt OpenDocument file: no content.xml") from exc
    except (zipfile.BadZipFile, etree.XMLSyntaxError, ValueError, OSError) as exc:
        raise ExtractionError(f"corrupt OpenDocument file: {exc}") from exc
    body = root.find(f"{{{OFFICE}}}body")
    if body is None:
        raise ExtractionError("corrupt OpenDocument file: no body")
    return body


def shown_paragraphs(root: Any, *tags: str) -> Iterator[Any]:
    """The paragraphs (elements with ``tags``) under ``root``, in order, less those of comments and
    of tracked deletions."""
    for element in root.iter(*tags):
        if _shown(element, root):
            yield element


def _shown(element: Any, root: Any) -> bool:
    for ancestor in element.iterancestors():
        if ancestor is root:
            return True
        if ancestor.tag in _NOT_SHOWN:
            return False
    return True


def paragraph_text(element: Any) -> str:
    """A paragraph's text as shown: text:s is spaces, text:tab a tab, text:line-break a new line;
    notes (footnotes) and drawings anchored in it (a text box, a shape with text) are skipped here
    and read as paragraphs of their own; comments are not read."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        if node.text:
            parts.append(node.text)
        for child in node:
            if child.tag == _SPACE:
                count = child.get(f"{{{TEXT}}}c") or "1"
                parts.append(" " * min(int(count) if count.isdigit() else 1, _MAX_SPACES))
            elif child.tag == _TAB:
                parts.append("\t")
            elif child.tag == _BREAK:
                parts.append("\n")
            elif child.tag not in _NOT_INLINE and not child.tag.startswith(_DRAWING):
                walk(child)
            if child.tail:
                parts.append(child.tail)

    walk(element)
    return "".join(parts)


def _text_blocks(body: Any, budget: TextBudget) -> Iterator[tuple[int, str]]:
    for element in shown_paragraphs(body, _P, _H):
        text = budget.take(paragraph_text(element))
        if element.tag == _H:
            level = element.get(f"{{{TEXT}}}outline-level") or "1"
            yield (int(level) if level.isdigit() else 1), text
        else:
            yield 0, text


def _sheets(spreadsheet: Any, budget: TextBudget) -> Iterator[Section]:
    for table in spreadsheet.iter(_TABLE):
        lines = []
        for row in table.iter(_ROW):
            # Repeated rows and cells (an empty row repeated a million times) are read once: only
            # cells with text count, so the repetition costs nothing.
            cells = [paragraph_text_of(cell)[:MAX_CELL_CHARS] for cell in row.iterchildren(_CELL)]
            line = " | ".join(cell for cell in cells if cell.strip())
            if line:
                lines.append(budget.take(line))
        if lines:
            sections_name = table.get(f"{{{TABLE}}}name") or ""
            yield Section("\n".join(lines), sheet=heading_title(sections_name))


def paragraph_text_of(cell: Any) -> str:
    return "\n".join(paragraph_text(p) for p in shown_paragraphs(cell, _P))


def _slides(presentation: Any, budget: TextBudget, limits: ExtractLimits) -> Iterator[Section]:
    for number, page in enumerate(presentation.iterchildren(_PAGE), start=1):
        if number > limits.max_pages:
            raise ExtractionError(f"more than {limits.max_pages} slides (SEMANTIK_EXTRACT_MAX_PAGES)")
        title = ""
        for frame in page.iter(_FRAME):
            if frame.get(f"{{{PRESENTATION}}}class") == "title":
                title = heading_title(paragraph_text_of(frame))
                break
        lines = [budget.take(paragraph_text(p)) for p in shown_paragraphs(page, _P)]
        text = "\n".join(line for line in lines if line.strip())
        if text:
            yield Section(text, slide=number, heading=(title,) if title else ())
