"""Microsoft Office files: Word (python-docx; its headings), PowerPoint (python-pptx; a section per
slide, with its notes) and Excel (openpyxl, read-only and streaming; a section per sheet, a line per
row). The zip container is checked before any of them opens it."""

from __future__ import annotations

import io
import re
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
    sections_from_blocks,
)

_HEADING_STYLE = re.compile(r"^Heading (\d)$")
# Rows of a sheet in one line each; a cell's text is cut at this length (a cell can hold 32k).
MAX_CELL_CHARS = 2000


def extract_docx(data: bytes, limits: ExtractLimits) -> list[Section]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    check_zip_container(data, limits, "DOCX")
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"corrupt DOCX: {exc}") from exc
    return list(sections_from_blocks(_docx_blocks(document, TextBudget(limits))))


def _docx_blocks(document: Any, budget: TextBudget) -> Iterator[tuple[int, str]]:
    from docx.table import Table

    for block in document.iter_inner_content():  # paragraphs and tables, in reading order
        if isinstance(block, Table):
            for row in block.rows:
                yield 0, budget.take(" | ".join(_unique_cells(row.cells)))
            continue
        text = budget.take(block.text)
        style = getattr(block.style, "name", "") or ""
        heading = _HEADING_STYLE.match(style)
        level = int(heading.group(1)) if heading else (1 if style == "Title" else 0)
        yield (level, text) if level and text.strip() else (0, text)


def _unique_cells(cells: Any) -> Iterator[str]:
    """A merged cell is listed once per grid column it spans: say it once."""
    seen: set[int] = set()
    for cell in cells:
        if id(cell._tc) not in seen:
            seen.add(id(cell._tc))
            yield cell.text


def extract_pptx(data: bytes, limits: ExtractLimits) -> list[Section]:
    from pptx import Presentation
    from pptx.exc import PackageNotFoundError

    check_zip_container(data, limits, "PPTX")
    try:
        presentation = Presentation(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"corrupt PPTX: {exc}") from exc
    if len(presentation.slides) > limits.max_pages:
        raise ExtractionError(f"more than {limits.max_pages} slides (SEMANTIK_EXTRACT_MAX_PAGES)")
    budget, sections = TextBudget(limits), []
    for number, slide in enumerate(presentation.slides, start=1):
        title_shape = slide.shapes.title
        title = heading_title(title_shape.text_frame.text) if title_shape is not None else ""
        lines = [budget.take(line) for shape in slide.shapes for line in _shape_lines(shape)]
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                lines.append(budget.take(notes.text))
        text = "\n".join(line for line in lines if line.strip())
        if text:
            sections.append(Section(text, slide=number, heading=(title,) if title else ()))
    return sections


def _shape_lines(shape: Any) -> Iterator[str]:
    if shape.shape_type is not None and getattr(shape, "shapes", None) is not None:  # a group
        for inner in shape.shapes:
            yield from _shape_lines(inner)
        return
    if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
        yield shape.text_frame.text
    if getattr(shape, "has_table", False) and shape.has_table:
        for row in shape.table.rows:
            yield " | ".join(cell.text for cell in row.cells)


def extract_xlsx(data: bytes, limits: ExtractLimits) -> list[Section]:
    import openpyxl

    check_zip_container(data, limits, "XLSX")
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, TypeError) as exc:
        raise ExtractionError(f"corrupt XLSX: {exc}") from exc
    budget, sections = TextBudget(limits), []
    try:
        for sheet in workbook.worksheets:
            # A sheet's declared size may be a million rows of nothing (A1 and XFD1048576); read-only
            # mode would pad every row to it, so rows are read as stored.
            if hasattr(sheet, "reset_dimensions"):
                sheet.reset_dimensions()
            lines = [budget.take(line) for row in sheet.iter_rows(values_only=True) if (line := sheet_row(row))]
            if lines:
                sections.append(Section("\n".join(lines), sheet=heading_title(sheet.title)))
    finally:
        workbook.close()
    return sections


def sheet_row(values: Any) -> str:
    """A row's non-empty cells, separated by " | "."""
    cells = [str(value)[:MAX_CELL_CHARS] for value in values if value is not None and str(value).strip()]
    return " | ".join(cells)
