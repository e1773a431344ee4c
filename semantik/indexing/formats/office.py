"""Microsoft Office files: Word (python-docx's parts and styles, its own walk of the text: headings,
content controls, tracked insertions, nested tables, text boxes), PowerPoint (python-pptx; a section per
slide, with its notes) and Excel (openpyxl, read-only and streaming; a section per sheet, a line per
row). The zip container is checked before any of them opens it."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from typing import Any

from semantik.indexing.formats import legacy
from semantik.indexing.formats.base import (
    OLE_MAGIC,
    ExtractionError,
    ExtractLimits,
    Section,
    TextBudget,
    check_zip_container,
    heading_title,
    safe_xml_parser,
    sections_from_blocks,
)

_HEADING_STYLE = re.compile(r"^Heading (\d)$")
# Rows of a sheet in one line each; a cell's text is cut at this length (a cell can hold 32k).
MAX_CELL_CHARS = 2000


# Word's other kinds of .docx: macro-enabled (.docm) and templates (.dotx, .dotm) hold the same parts,
# their main part under another content type, which python-docx's ``Document()`` refuses.
WORD_MAIN_TYPES = (
    "application/vnd.ms-word.document.macroEnabled.main+xml",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml",
    "application/vnd.ms-word.template.macroEnabledTemplate.main+xml",
)


def extract_docx(data: bytes, limits: ExtractLimits) -> list[Section]:
    """Word documents, also macro-enabled ones and templates (.docm, .dotx, .dotm); macros are not
    read, let alone run."""
    from docx.opc.exceptions import PackageNotFoundError
    from docx.opc.part import PartFactory
    from docx.package import Package
    from docx.parts.document import DocumentPart

    if data.startswith(OLE_MAGIC):
        return legacy.compound_as_open_xml(data, limits, "DOCX")
    check_zip_container(data, limits, "DOCX")
    for content_type in WORD_MAIN_TYPES:
        PartFactory.part_type_for.setdefault(content_type, DocumentPart)
    try:
        main = Package.open(io.BytesIO(data)).main_document_part
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"corrupt DOCX: {exc}") from exc
    if not isinstance(main, DocumentPart):
        raise ExtractionError(f"not a Word document: its main part is {main.content_type!r}")
    document = main.document
    return list(sections_from_blocks(_docx_blocks(document, _StyleNames(document), TextBudget(limits))))


def _docx_blocks(document: Any, styles: _StyleNames, budget: TextBudget) -> Iterator[tuple[int, str]]:
    """(heading level or 0, text) of each paragraph and table row, in reading order, wherever the
    document holds them: python-docx's own iteration sees only the body's direct paragraphs and
    tables and each paragraph's direct runs, which leaves out content controls (forms, templates),
    tracked insertions, nested tables and text boxes. A text box's headings are not the document's
    (Word's navigation leaves them out too)."""
    charts: dict[str, list[str]] = {}
    for kind, element in _docx_block_elements(document.element.body):
        if kind == "row":
            yield 0, budget.take(element)
            continue
        text = budget.take(_paragraph_text(element))
        style = styles.of(element)
        heading = _HEADING_STYLE.match(style)
        level = int(heading.group(1)) if heading else (1 if style == "Title" else 0)
        yield (level, text) if level and text.strip() else (0, text)
        for box in _text_boxes(element):
            for line in _block_texts(box):
                yield 0, budget.take(line)
        for chart in element.iter(_C_CHART):
            if _nearest(chart, _W_P, _MC_FALLBACK, _W + "del", _W + "moveFrom") is element:
                yield from ((0, budget.take(line)) for line in chart_lines(chart, document.part, charts))


def _block_texts(container: Any) -> Iterator[str]:
    """The text of each paragraph (then of its text boxes) and table row of a block container (a
    text box, a cell), in order."""
    for kind, element in _docx_block_elements(container):
        if kind == "row":
            yield element
            continue
        yield _paragraph_text(element)
        for box in _text_boxes(element):
            yield from _block_texts(box)


class _StyleNames:
    """Paragraph style names by style id, read once from the styles part: python-docx's own lookup
    (``Paragraph.style``) searches every style for the default one on each paragraph, 90% of the
    time a long document took (8,000 paragraphs: 2.7 s)."""

    def __init__(self, document: Any) -> None:
        from docx.styles import BabelFish

        self.names: dict[str, str] = {}
        self.default = ""
        for style in document.styles.element.iterchildren(_W + "style"):
            if style.get(_W + "type") != "paragraph":  # (one with no type is no paragraph style to python-docx)
                continue
            name = style.find(_W + "name")
            shown = BabelFish.internal2ui(name.get(_W + "val") or "") if name is not None else ""
            self.names.setdefault(style.get(_W + "styleId") or "", shown)
            if style.get(_W + "default") in ("1", "true", "on"):
                self.default = shown  # the last default, as the format says

    def of(self, paragraph: Any) -> str:
        """The name of a w:p element's style (the default paragraph style when it names none, or
        one that is not a paragraph style, as Word shows it)."""
        style = paragraph.find(_W_PSTYLE)
        style_id = style.get(_W + "val") if style is not None else None
        return self.names.get(style_id, self.default) if style_id is not None else self.default


def _docx_block_elements(container: Any) -> Iterator[tuple[str, Any]]:
    """("paragraph", w:p element) and ("row", its text) for a block container (the body, a cell, a
    text box), in order, through content controls and other wrappers; iteratively, so no nesting is
    too deep. A content control showing its placeholder ("Click or tap here to enter text.") and
    Word's table of contents (its headings again) are not read."""
    stack: list[Any] = list(reversed(container))
    while stack:
        element = stack.pop()
        tag = element.tag
        if tag == _W_P:
            yield "paragraph", element
        elif tag == _W_TBL:
            for row in _table_rows(element):
                yield "row", row
        elif tag not in _NOT_CONTENT and not _unread_control(element):
            stack.extend(reversed(element))  # w:sdt, w:sdtContent, w:customXml, w:ins ...


def _table_rows(table: Any) -> Iterator[str]:
    """Each row's cells, " | " between them: a cell spanning columns once, a cell under a vertically
    merged one with that one's text (as python-docx's ``row.cells``, without its recursion), nested
    tables as their rows."""
    above: dict[int, str] = {}  # grid column -> the text of the cell that merged cells below repeat
    for row in table.iter(_W_TR):
        if _nearest(row, _W_TBL) is not table:
            continue
        column = _number(row.find(_W_GRID_BEFORE), 0)
        cells = []
        for cell in row.iter(_W_TC):
            if _nearest(cell, _W_TR) is not row:
                continue
            merge = cell.find(_W_VMERGE)
            if merge is not None and merge.get(_W + "val", "continue") == "continue":
                text = above.get(column, "")
            else:
                text = above[column] = _cell_text(cell)
            cells.append(text)
            column += max(1, _number(cell.find(_W_GRID_SPAN), 1))
        yield " | ".join(cells)


def _cell_text(cell: Any) -> str:
    return "\n".join(line for line in _block_texts(cell) if line.strip())


def _number(element: Any, default: int) -> int:
    value = element.get(_W + "val") if element is not None else None
    return int(value) if value is not None and value.isdigit() and len(value) < 6 else default


def _paragraph_text(paragraph: Any) -> str:
    """A paragraph's text as shown: every run, also inside hyperlinks, content controls, fields and
    tracked insertions; not deleted text, field codes, placeholders, or its text boxes (read as
    blocks of their own)."""
    parts: list[str] = []
    stack: list[Any] = list(reversed(paragraph))
    while stack:
        element = stack.pop()
        if element.tag == _W_R:
            parts.append(element.text)  # python-docx's run text: w:t, tabs, breaks
        elif element.tag not in _NOT_CONTENT and not _unread_control(element):
            stack.extend(reversed(element))
    return "".join(parts)


def _unread_control(element: Any) -> bool:
    """A content control showing its placeholder, or Word's table of contents."""
    if element.tag != _W_SDT:
        return False
    return element.find(_W_PLACEHOLDER_SHOWN) is not None or any(
        gallery.get(_W + "val") == "Table of Contents" for gallery in element.iterfind(_W_GALLERY)
    )


def _text_boxes(paragraph: Any) -> Iterator[Any]:
    """The text boxes anchored in a paragraph (w:txbxContent), each once: not the copy a document
    keeps for older readers (mc:Fallback), nor one in deleted or moved-away text, nor one inside
    another (read with that one)."""
    for box in paragraph.iter(_W_TXBX):
        if _nearest(box, _W_P, _MC_FALLBACK, _W + "del", _W + "moveFrom") is paragraph:
            yield box


def _nearest(element: Any, *tags: str) -> Any:
    """The nearest ancestor of ``element`` with one of ``tags``, or None."""
    parent = element.getparent()
    while parent is not None and parent.tag not in tags:
        parent = parent.getparent()
    return parent


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_W_P, _W_R, _W_TBL, _W_TR, _W_TC, _W_TXBX, _W_SDT = (
    _W + name for name in ("p", "r", "tbl", "tr", "tc", "txbxContent", "sdt")
)
_W_PSTYLE = f"{_W}pPr/{_W}pStyle"
_W_GRID_BEFORE, _W_GRID_SPAN, _W_VMERGE = f"{_W}trPr/{_W}gridBefore", f"{_W}tcPr/{_W}gridSpan", f"{_W}tcPr/{_W}vMerge"
_W_PLACEHOLDER_SHOWN = f"{_W}sdtPr/{_W}showingPlcHdr"
_W_GALLERY = f"{_W}sdtPr/{_W}docPartObj/{_W}docPartGallery"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
# What holds no shown text of the paragraph or block it is in: properties, deleted and moved-away
# text, text boxes (read apart), and the copy of any content kept for older readers.
_NOT_CONTENT = frozenset(
    {_W + name for name in ("pPr", "rPr", "sectPr", "tblPr", "tcPr", "trPr", "sdtPr", "del", "moveFrom", "txbxContent")}
    | {_MC_FALLBACK}
)


def extract_pptx(data: bytes, limits: ExtractLimits) -> list[Section]:
    """PowerPoint decks, also macro-enabled ones, slide shows and templates (.pptm, .ppsx, .ppsm,
    .potx, .potm: python-pptx reads their parts, but its ``Presentation()`` takes only .pptx and
    .pptm)."""
    from pptx.exc import PackageNotFoundError
    from pptx.package import Package
    from pptx.parts.presentation import PresentationPart

    if data.startswith(OLE_MAGIC):
        return legacy.compound_as_open_xml(data, limits, "PPTX")
    check_zip_container(data, limits, "PPTX")
    try:
        main = Package.open(io.BytesIO(data)).main_document_part
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"corrupt PPTX: {exc}") from exc
    if not isinstance(main, PresentationPart):
        raise ExtractionError(f"not a PowerPoint deck: its main part is {main.content_type!r}")
    presentation = main.presentation
    if len(presentation.slides) > limits.max_pages:
        raise ExtractionError(f"more than {limits.max_pages} slides (SEMANTIK_EXTRACT_MAX_PAGES)")
    budget, sections = TextBudget(limits), []
    charts: dict[str, list[str]] = {}
    for number, slide in enumerate(presentation.slides, start=1):
        title_shape = slide.shapes.title
        title = heading_title(title_shape.text_frame.text) if title_shape is not None else ""
        lines = [budget.take(line) for shape in slide.shapes for line in _shape_lines(shape, charts)]
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                lines.append(budget.take(notes.text))
        text = "\n".join(line for line in lines if line.strip())
        if text:
            sections.append(Section(text, slide=number, heading=(title,) if title else ()))
    return sections


def _shape_lines(shape: Any, charts: dict[str, list[str]]) -> Iterator[str]:
    if shape.shape_type is not None and getattr(shape, "shapes", None) is not None:  # a group
        for inner in shape.shapes:
            yield from _shape_lines(inner, charts)
        return
    if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
        yield shape.text_frame.text
    if getattr(shape, "has_table", False) and shape.has_table:
        for row in shape.table.rows:
            yield " | ".join(cell.text for cell in row.cells)
    for chart in shape.element.iter(_C_CHART):
        yield from chart_lines(chart, shape.part, charts)
    yield from _smartart_lines(shape)


def chart_lines(reference: Any, part: Any, read: dict[str, list[str]]) -> list[str]:
    """The words of the chart a ``c:chart`` element refers to (its own part): its title and axis
    titles, a line of its series' names and one of its category labels (each once, in order); not
    its numbers, nor categories that are numbers or dates. A missing or broken part has none. Each
    part is read once (``read``, by part name), however many elements refer to it."""
    from lxml import etree

    try:
        target = part.rels[reference.get(_R_ID)].target_part
    except (KeyError, AttributeError):
        return []
    name = str(target.partname)
    if name not in read:
        try:
            read[name] = _chart_words(etree.fromstring(target.blob, safe_xml_parser()))
        except (etree.XMLSyntaxError, ValueError):
            read[name] = []
    return read[name]


def _chart_words(root: Any) -> list[str]:
    lines = [text for title in root.iter(f"{_CHART}title") for text in _drawing_paragraphs(title) if text.strip()]
    for kind in ("tx", "cat"):  # series' names, then category labels
        labels = dict.fromkeys(
            value.text.strip()
            for series in root.iter(f"{_CHART}ser")
            for holder in series.iterfind(f"{_CHART}{kind}")
            if holder.find(f"{_CHART}numRef") is None and holder.find(f"{_CHART}numLit") is None
            for value in holder.iter(f"{_CHART}v")
            if value.text and value.text.strip()
        )
        if labels:
            lines.append(" | ".join(labels))
    return lines


def _smartart_lines(shape: Any) -> Iterator[str]:
    """A SmartArt diagram's text, a line per paragraph of each of its points (python-pptx does not
    read SmartArt: its text is in a part of its own, the diagram's data)."""
    from lxml import etree

    relations = shape.element.find(f"{_A}graphic/{_A}graphicData/{_DGM}relIds")
    rid = relations.get(_R_DM) if relations is not None else None
    if not rid:
        return
    try:
        data = etree.fromstring(shape.part.related_part(rid).blob, safe_xml_parser())
    except (KeyError, etree.XMLSyntaxError, ValueError):  # a missing or broken part: no text
        return
    yield from (text for text in _drawing_paragraphs(data) if text)


def _drawing_paragraphs(root: Any) -> Iterator[str]:
    """The text of each DrawingML paragraph (a:p) under ``root``: its runs' text joined."""
    for paragraph in root.iter(f"{_A}p"):
        yield "".join(run.text or "" for run in paragraph.iter(f"{_A}t"))


_A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
_CHART = "{http://schemas.openxmlformats.org/drawingml/2006/chart}"
_C_CHART = f"{_CHART}chart"
_R_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_DGM = "{http://schemas.openxmlformats.org/drawingml/2006/diagram}"
_R_DM = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}dm"


def extract_xlsx(data: bytes, limits: ExtractLimits) -> list[Section]:
    import openpyxl

    if data.startswith(OLE_MAGIC):
        return legacy.compound_as_open_xml(data, limits, "XLSX")
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
