"""Office 97-2003 binary files: Word (.doc), Excel (.xls) and PowerPoint (.ppt). A file is read as
what its bytes are, not what its name says: many ".doc" files are RTF, HTML or a renamed .docx, and
many ".xls" files are a web page's table or a renamed .xlsx.

Word: olefile opens the compound file; the text comes from the document's piece table ([MS-DOC]
2.4.1), each paragraph's style from its properties (PAPX), a heading from its style (built-in
"heading 1-9" and "Title", in any language), table rows from their row marks (nested tables as
lines of their cell). Field codes and the table of contents are left out, as in .docx. Footnotes,
endnotes and text boxes follow the body; headers, footers and comments are not read. Excel: xlrd, a
section per sheet, a line per row. PowerPoint: the records of [MS-PPT], the newest copy of each slide
through the edit chain and persist directory, in the slide list's order.

Every count and offset comes from an untrusted file: text is charged to the budget before it is
made, record walks and directories are bounded by the file's size, and nothing recurses."""

from __future__ import annotations

import bisect
import codecs
import io
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

from semantik.indexing.formats.base import (
    BROKEN_BINARY,
    OLE_MAGIC,
    ExtractionError,
    ExtractLimits,
    Section,
    TextBudget,
    heading_title,
    sections_from_blocks,
)

_ZIP_MAGIC = b"PK\x03\x04"
_RTF_MAGIC = b"{\\rtf"
_MARKUP_START = re.compile(rb"^(?:\xef\xbb\xbf)?\s*<", re.DOTALL)


def _sniffed(data: bytes) -> str:
    """What a legacy-named file that is not a compound file really is: "zip", "rtf", "markup" (HTML,
    XML) or "text"."""
    if data.startswith(_ZIP_MAGIC):
        return "zip"
    if data.lstrip()[:5] == _RTF_MAGIC:
        return "rtf"
    return "markup" if _MARKUP_START.match(data[:4096]) else "text"


def _as_other_format(data: bytes, limits: ExtractLimits, zip_reader: Callable[..., list[Section]]) -> list[Section]:
    """A legacy-named file that is not a compound file, read as what it is."""
    from semantik.indexing.formats import rtf, web

    kind = _sniffed(data)
    if kind == "zip":
        return zip_reader(data, limits)
    if kind == "rtf":
        return rtf.extract_rtf(data, limits)
    if kind == "markup":
        return web.extract_html(data, limits)
    return web.extract_plain(data, limits)


def compound_as_open_xml(data: bytes, limits: ExtractLimits, kind: str) -> list[Section]:
    """A compound file under an Office Open XML name (``kind``: "DOCX" ...): a password-protected
    document (Office keeps its encrypted package in one), or a 97-2003 file renamed, read as that."""
    import olefile

    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            streams = {"/".join(entry) for entry in ole.listdir()}
    except BROKEN_BINARY as exc:
        raise ExtractionError(f"corrupt {kind}: {type(exc).__name__}: {exc}") from exc
    if "EncryptedPackage" in streams:
        raise ExtractionError(f"encrypted {kind}")
    if "WordDocument" in streams:
        return extract_doc(data, limits)
    if "Workbook" in streams or "Book" in streams:
        return extract_xls(data, limits)
    if "PowerPoint Document" in streams:
        return extract_ppt(data, limits)
    raise ExtractionError(f"corrupt {kind}: a compound file that holds no Office document")


# --- Excel ------------------------------------------------------------------------------------


def extract_xls(data: bytes, limits: ExtractLimits) -> list[Section]:
    """An Excel 97-2003 workbook (BIFF, read by xlrd): a section per sheet, a line per row with its
    non-empty cells, as an .xlsx's read: dates as dates, whole numbers without ".0", errors as shown."""
    import xlrd

    from semantik.indexing.formats import office

    if not data.startswith(OLE_MAGIC):
        return _as_other_format(data, limits, office.extract_xlsx)
    try:
        return _xls_sections(data, limits)
    except xlrd.XLRDError as exc:
        if "encrypted" in str(exc).lower():
            raise ExtractionError("encrypted XLS") from exc
        raise ExtractionError(f"corrupt XLS: {exc}") from exc
    except (
        xlrd.compdoc.CompDocError,
        xlrd.formula.FormulaError,
        AssertionError,
        *BROKEN_BINARY,
    ) as exc:
        raise ExtractionError(f"corrupt XLS: {type(exc).__name__}: {exc}") from exc


def _xls_sections(data: bytes, limits: ExtractLimits) -> list[Section]:
    import xlrd

    from semantik.indexing.formats import office

    # xlrd reports oddities by printing them: not in this process's output.
    book = xlrd.open_workbook(file_contents=data, on_demand=True, ragged_rows=True, logfile=io.StringIO())
    budget, sections = TextBudget(limits), []
    try:
        if book.nsheets > limits.max_pages:
            raise ExtractionError(f"more than {limits.max_pages} sheets (SEMANTIK_EXTRACT_MAX_PAGES)")
        for index in range(book.nsheets):
            sheet = book.sheet_by_index(index)
            lines = []
            for row in range(sheet.nrows):
                values = [_xls_value(cell, book.datemode) for cell in sheet.row(row)]
                if line := office.sheet_row(values):
                    lines.append(budget.take(line))
            if lines:
                sections.append(Section("\n".join(lines), sheet=heading_title(sheet.name)))
            book.unload_sheet(index)
    finally:
        book.release_resources()
    return sections


def _xls_value(cell: Any, datemode: int) -> Any:
    import xlrd

    if cell.ctype == xlrd.XL_CELL_NUMBER:
        value = cell.value
        return int(value) if value.is_integer() and abs(value) < 1e15 else value
    if cell.ctype == xlrd.XL_CELL_DATE:
        try:
            return xlrd.xldate.xldate_as_datetime(cell.value, datemode)
        except (xlrd.xldate.XLDateError, OverflowError, ValueError):
            return cell.value
    if cell.ctype == xlrd.XL_CELL_BOOLEAN:
        return bool(cell.value)
    if cell.ctype == xlrd.XL_CELL_TEXT:
        return cell.value
    if cell.ctype == xlrd.XL_CELL_ERROR:  # as the sheet shows it (and as openpyxl reads an .xlsx's)
        return xlrd.error_text_from_code.get(cell.value)
    return None  # empty, blank


# --- Word -------------------------------------------------------------------------------------

# Characters of Word's text stream ([MS-DOC] 2.8.25): paragraph mark, cell or row mark, fields.
_CELL = "\x07"  # (a paragraph mark is "\r")
_FIELD_BEGIN, _FIELD_SEPARATOR, _FIELD_END = "\x13", "\x14", "\x15"
_SECTION = "\x0c"  # a section break (it ends its paragraph) or a page break (inside one)
_MARKS = re.compile("[\r\x07\x0c\x13\x14\x15]")
# Within a paragraph: line, page and column breaks end a line; a non-breaking hyphen is a hyphen;
# an optional hyphen, and the anchors of pictures, drawings, notes and comments, are nothing.
_IN_PARAGRAPH = str.maketrans(
    {"\x0b": "\n", "\x0c": "\n", "\x0e": "\n", "\x1e": "-", "\x1f": None}
    | {chr(code): None for code in range(0x20) if chr(code) not in "\t\n\x0b\x0c\x0e\x1e\x1f"}
)
# A character beyond 16 bits: two positions in Word's UTF-16 text, one in a Python string.
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_NFIB_WORD97 = 0xC1  # Word 97 and later; Word 6 and 95 files have an older, different layout
_FKP_BYTES = 512
_FKP_MAX_RUNS = 0x1D  # paragraph runs in one page ([MS-DOC] 2.9.175)
# Paragraph properties ([MS-DOC] 2.6.2): in a table, and the mark that ends a table row.
_SPRM_IN_TABLE, _SPRM_ROW_END = 0x2416, 0x2417
_SPRM_INNER_CELL_END, _SPRM_INNER_ROW_END = 0x244B, 0x244C  # a nested table's cell and row
_SPRM_TABLE_DEPTH = 0x6649  # sprmPItap: 1 in a table, 2 in a table in a table ...
_SPRM_TABLE_DEFINITIONS = (0xD608, 0xD606)  # their operands have a 2-byte length
_STI_TITLE = 62
_SPRM_OPERAND_BYTES = {0: 1, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2, 7: 3}
_HEADING_STI = range(1, 10)  # built-in "heading 1" to "heading 9"


def _latin1_for_undefined(error: UnicodeError) -> tuple[str, int]:
    """Bytes Windows-1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) as Word reads them."""
    assert isinstance(error, UnicodeDecodeError)
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error("latin-1-for-undefined", _latin1_for_undefined)


def extract_doc(data: bytes, limits: ExtractLimits) -> list[Section]:
    """A Word 97-2003 document: its body as paragraphs under their headings, table rows as lines
    ("a | b | c"), then its footnotes, endnotes and text boxes."""
    from semantik.indexing.formats import office

    if not data.startswith(OLE_MAGIC):
        return _as_other_format(data, limits, office.extract_docx)
    try:
        return list(sections_from_blocks(_WordDocument(data).blocks(TextBudget(limits))))
    except BROKEN_BINARY as exc:
        raise ExtractionError(f"corrupt DOC: {type(exc).__name__}: {exc}") from exc


class _WordDocument:
    """A Word 97-2003 file's streams and the tables that place its text ([MS-DOC] 2.5, the FIB)."""

    def __init__(self, data: bytes) -> None:
        import olefile

        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            if not ole.exists("WordDocument"):
                raise ExtractionError("not a Word document (no WordDocument stream in the compound file)")
            self.stream = ole.openstream("WordDocument").read()
            if len(self.stream) < 0x200 or _u16(self.stream, 0) != 0xA5EC:
                raise ExtractionError("corrupt DOC: no Word file header")
            flags = _u16(self.stream, 0x0A)
            if flags & 0x0100:  # fEncrypted (also when only obfuscated)
                raise ExtractionError("encrypted DOC")
            if _u16(self.stream, 2) < _NFIB_WORD97:
                raise ExtractionError("Word 6 or Word 95 document: only Word 97 and later .doc files are read")
            table_name = "1Table" if flags & 0x0200 else "0Table"
            if not ole.exists(table_name):
                raise ExtractionError(f"corrupt DOC: no {table_name} stream")
            self.table = ole.openstream(table_name).read()
        # FibRgW97 (csw 16-bit words), FibRgLw97 (cslw 32-bit words), then FibRgFcLcb (fc, lcb pairs).
        csw = _u16(self.stream, 32)
        lw = 34 + 2 * csw + 2
        cslw = _u16(self.stream, lw - 2)
        if cslw < 22:
            raise ExtractionError("corrupt DOC: short file information block")
        # ccpText, ccpFtn, ccpHdd, (reserved), ccpAtn, ccpEdn, ccpTxbx, ccpHdrTxbx
        counts = [_u32(self.stream, lw + 4 * index) for index in range(3, 11)]
        self.text_cps, footnotes, headers, _, comments, endnotes, boxes, _ = counts
        fc_lcb = lw + 4 * cslw + 2
        pairs = _u16(self.stream, fc_lcb - 2)
        if pairs < 34:
            raise ExtractionError("corrupt DOC: short file information block")

        def table_part(index: int) -> bytes:
            start, length = _u32(self.stream, fc_lcb + 8 * index), _u32(self.stream, fc_lcb + 8 * index + 4)
            return self.table[start : start + length] if length else b""

        # The other stories follow the body in character positions, in this order.
        start = self.text_cps
        self.stories = [(0, self.text_cps)]
        for length, read in ((footnotes, True), (headers, False), (comments, False), (endnotes, True), (boxes, True)):
            if read and length:
                self.stories.append((start, start + length))
            start += length
        self.pieces = _pieces(table_part(33))  # Clx
        self.piece_starts = [piece[0] for piece in self.pieces]
        self.styles = _styles(table_part(1))  # STSH
        self.papx_bins = _bin_table(table_part(13))  # PlcBtePapx
        self.fkp_pages: dict[int, list[tuple[int, int, bytes]]] = {}

    def text(self, start: int, end: int, budget: TextBudget) -> str:
        """Characters [start, end) of the document, one per character position: from the pieces
        that hold them, a gap or a range past the stream as spaces, and a character beyond 16 bits
        (two positions in UTF-16) followed by a NUL, so positions stay right. Charged to the budget
        before they are made."""
        parts: list[str] = []
        cursor = start
        index = max(0, bisect.bisect_right(self.piece_starts, start) - 1)
        while index < len(self.pieces) and self.pieces[index][0] < end:
            cp_start, cp_end, fc, compressed = self.pieces[index]
            index += 1
            first, last = max(cursor, cp_start), min(end, cp_end)
            if last <= first:
                continue
            budget.charge(last - cursor)
            if first > cursor:
                parts.append(" " * (first - cursor))
            width = 1 if compressed else 2
            offset = fc + (first - cp_start) * width
            raw = self.stream[offset : offset + (last - first) * width]
            if compressed:
                piece = raw.decode("cp1252", "latin-1-for-undefined")
            else:
                piece = _ASTRAL.sub("\\g<0>\x00", raw.decode("utf-16-le", "replace"))
            parts.append(piece.ljust(last - first))
            cursor = last
        return "".join(parts)

    def paragraph_run(self, cp: int) -> tuple[int, bytes, bool]:
        """The style (istd) and the other properties (grpprl) of the paragraph that holds the mark at
        character position ``cp`` (0 and b"" where none are stored: Normal, no properties), and
        whether the mark is that paragraph's last character."""
        place = self._fc(cp)
        if place is None:
            return 0, b"", True
        fc, width = place
        bounds, pages = self.papx_bins
        index = bisect.bisect_right(bounds, fc) - 1
        if index < 0 or index >= len(pages):
            return 0, b"", True
        runs = self._fkp(pages[index])
        run = bisect.bisect_right(runs, (fc, 1 << 62, b"")) - 1
        if run < 0 or not runs[run][0] <= fc < runs[run][1]:
            return 0, b"", True
        properties, last = runs[run][2], fc + width >= runs[run][1]
        return (_u16(properties, 0), properties[2:], last) if len(properties) >= 2 else (0, b"", last)

    def _fc(self, cp: int) -> tuple[int, int] | None:
        """Where character position ``cp`` is in the stream, and its width in bytes."""
        index = bisect.bisect_right(self.piece_starts, cp) - 1
        if index < 0:
            return None
        cp_start, cp_end, fc, compressed = self.pieces[index]
        width = 1 if compressed else 2
        return (fc + (cp - cp_start) * width, width) if cp < cp_end else None

    def _fkp(self, page: int) -> list[tuple[int, int, bytes]]:
        """A PapxFkp page ([MS-DOC] 2.9.175): (first fc, end fc, istd and grpprl) of each run."""
        if page not in self.fkp_pages:
            data = self.stream[page * _FKP_BYTES : (page + 1) * _FKP_BYTES]
            runs: list[tuple[int, int, bytes]] = []
            if len(data) == _FKP_BYTES:
                count = min(data[511], _FKP_MAX_RUNS)
                bounds = [_u32(data, 4 * index) for index in range(count + 1)]
                for index in range(count):
                    offset = 2 * data[4 * (count + 1) + 13 * index]
                    properties = b""
                    if offset:
                        size = data[offset]
                        properties = (
                            data[offset + 2 : offset + 2 + 2 * data[offset + 1]]
                            if size == 0
                            else data[offset + 1 : offset + 2 * size]
                        )
                    runs.append((bounds[index], bounds[index + 1], properties))
            runs.sort()
            self.fkp_pages[page] = runs
        return self.fkp_pages[page]

    def blocks(self, budget: TextBudget) -> Iterator[tuple[int, str]]:
        """(heading level or 0, text) of each paragraph and table row, the body first."""
        for number, (start, end) in enumerate(self.stories):
            yield from self._story_blocks(start, end, budget, headings=number == 0)

    def _story_blocks(self, start: int, end: int, budget: TextBudget, *, headings: bool) -> Iterator[tuple[int, str]]:
        raw = TextBudget(budget.limits)  # the story with its marks and field codes, within what is left
        raw.used = budget.used
        text = self.text(start, end, raw)
        fields: list[str] = []  # per open field: "code" up to its separator, then "shown" or "hidden"
        codes: list[list[str]] = []  # the code of each open field
        unshown = 0  # open fields not "shown": text is read only where there are none
        paragraph: list[str] = []
        cell: list[str] = []  # the paragraphs of a table cell not yet ended
        row: list[str] = []  # the cells of a table row not yet ended
        inner_cell: list[str] = []  # the same in a table nested in a cell
        inner_row: list[str] = []
        position = 0
        for mark in _MARKS.finditer(text):
            piece = text[position : mark.start()]
            position = mark.end()
            if not unshown:
                paragraph.append(piece)
            elif fields[-1] == "code":
                codes[-1].append(piece)
            char = mark.group()
            if char == _FIELD_BEGIN:
                fields.append("code")
                codes.append([])
                unshown += 1
                continue
            if char in (_FIELD_SEPARATOR, _FIELD_END):
                if fields and fields[-1] == "code":  # its result is read, but not a table of contents'
                    words = "".join(codes[-1]).split()
                    shown = not (words and words[0].upper() == "TOC")
                    fields[-1] = "shown" if shown else "hidden"
                    unshown -= shown
                if char == _FIELD_END and fields:
                    unshown -= fields.pop() != "shown"
                    codes.pop()
                continue
            style, properties, last = self.paragraph_run(start + mark.start())
            if char == _SECTION and not last:  # a page break inside its paragraph
                paragraph.append("\n")
                continue
            # A paragraph, a table cell or a table row ends at this mark.
            line = "".join(paragraph).translate(_IN_PARAGRAPH).strip()  # (a note's text starts with a tab)
            paragraph = []
            place = _TablePlace(properties)
            if place.row_end:
                _close_nested(cell, inner_row, inner_cell)
                yield 0, budget.take(_row_text(row, cell))
                row, cell = [], []
            elif place.inner_row_end:
                _close_nested(cell, inner_row, inner_cell, empty=True)
            elif place.inner_cell_end:
                inner_row.append(_lines([*inner_cell, line]))
                inner_cell.clear()
            elif char == _CELL:
                _close_nested(cell, inner_row, inner_cell)
                row.append(_lines([*cell, line]))
                cell = []
            elif place.depth > 1:
                inner_cell.append(line)
            elif place.depth == 1:
                cell.append(line)
            else:
                if row or cell:  # a table whose row marks were lost
                    yield 0, budget.take(_row_text(row, cell))
                    row, cell = [], []
                level = self.styles.get(style, 0) if headings else 0
                yield (level, budget.take(line)) if level and line.strip() else (0, budget.take(line))
        if row or cell:
            yield 0, budget.take(_row_text(row, cell))


def _lines(lines: list[str]) -> str:
    return "\n".join(line for line in lines if line)


def _close_nested(cell: list[str], inner_row: list[str], inner_cell: list[str], *, empty: bool = False) -> None:
    """A table nested in ``cell`` ends its row: the row becomes a line of the cell (an empty one,
    too, where ``empty``: a nested row's own end mark), and the nested row starts again."""
    if empty or inner_row or inner_cell:
        cell.append(_row_text(inner_row, inner_cell))
    inner_row.clear()
    inner_cell.clear()


def _row_text(row: list[str], cell: list[str]) -> str:
    cells = [*row, _lines(cell)] if cell else row
    return " | ".join(text.strip() for text in cells)


class _TablePlace:
    """Where a paragraph's properties ([MS-DOC] 2.6.2) put it: its table depth (0 outside tables),
    and whether its mark ends a row, or a nested table's cell or row."""

    def __init__(self, properties: bytes) -> None:
        self.depth = 0
        self.row_end = self.inner_cell_end = self.inner_row_end = False
        in_table, depth = False, None
        position = 0
        while position + 2 <= len(properties):
            sprm = _u16(properties, position)
            position += 2
            kind = sprm >> 13
            if sprm in _SPRM_TABLE_DEFINITIONS and position + 2 <= len(properties):
                size = _u16(properties, position) + 1
            elif kind == 6:  # a variable-length operand: its length first
                if sprm == 0xC615 or position >= len(properties):  # sprmPChgTabs: its own layout; no more
                    break
                size = properties[position] + 1
            else:
                size = _SPRM_OPERAND_BYTES[kind]
            value = properties[position] if position < len(properties) else 0
            if sprm == _SPRM_IN_TABLE:
                in_table = value != 0
            elif sprm == _SPRM_ROW_END:
                self.row_end = value != 0
            elif sprm == _SPRM_INNER_CELL_END:
                self.inner_cell_end = value != 0
            elif sprm == _SPRM_INNER_ROW_END:
                self.inner_row_end = value != 0
            elif sprm == _SPRM_TABLE_DEPTH and position + 4 <= len(properties):
                depth = _u32(properties, position)
            position += size
        if in_table or depth:
            self.depth = depth if depth is not None else 1


def _pieces(clx: bytes) -> list[tuple[int, int, int, bool]]:
    """(first cp, end cp, stream offset, 8-bit text) of each piece in the Clx ([MS-DOC] 2.9.38)."""
    position = 0
    while position < len(clx) and clx[position] == 0x01:  # Prc: formatting of fast-saved files
        position += 3 + _u16(clx, position + 1)  # (never backwards, whatever the file says)
    if position >= len(clx) or clx[position] != 0x02:
        raise ExtractionError("corrupt DOC: no piece table")
    size = _u32(clx, position + 1)
    plc = clx[position + 5 : position + 5 + size]
    count = (len(plc) - 4) // 12
    if count < 1:
        raise ExtractionError("corrupt DOC: empty piece table")
    cps = struct.unpack_from(f"<{count + 1}I", plc, 0)
    pieces = []
    for index in range(count):
        encoded = _u32(plc, 4 * (count + 1) + 8 * index + 2)
        compressed = bool(encoded & 0x40000000)
        fc = (encoded & 0x3FFFFFFF) // 2 if compressed else encoded & 0x3FFFFFFF
        if cps[index] < cps[index + 1]:
            pieces.append((cps[index], cps[index + 1], fc, compressed))
    pieces.sort()
    return pieces


def _bin_table(plc: bytes) -> tuple[list[int], list[int]]:
    """A PlcBtePapx ([MS-DOC] 2.8.6): the bounds (stream offsets) and the FKP page of each run."""
    count = (len(plc) - 4) // 8
    if count < 1:
        return [], []
    bounds = list(struct.unpack_from(f"<{count + 1}I", plc, 0))
    pages = [page & 0x3FFFFF for page in struct.unpack_from(f"<{count}I", plc, 4 * (count + 1))]
    return bounds, pages


def _styles(stsh: bytes) -> dict[int, int]:
    """Heading level by style index (istd), from the style sheet ([MS-DOC] 2.9.271): built-in
    headings by their identifier (sti 1-9, named in the document's language), and "Title" as 1."""
    levels: dict[int, int] = {}
    if len(stsh) < 6:
        return levels
    header = _u16(stsh, 0)
    count, base_size = _u16(stsh, 2), _u16(stsh, 4)
    position = 2 + header
    for istd in range(count):
        if position + 2 > len(stsh):
            break
        size = _u16(stsh, position)
        std = stsh[position + 2 : position + 2 + size]
        position += 2 + size
        if len(std) < 4:
            continue
        sti = _u16(std, 0) & 0x0FFF
        if sti in _HEADING_STI:
            levels[istd] = sti
        elif sti == _STI_TITLE:
            levels[istd] = 1
        elif len(std) >= base_size + 2:
            length = _u16(std, base_size)
            name = std[base_size + 2 : base_size + 2 + 2 * length].decode("utf-16-le", "replace")
            if name == "Title":
                levels[istd] = 1
    return levels


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


# --- PowerPoint -------------------------------------------------------------------------------

# Record types of a PowerPoint 97-2003 file ([MS-PPT] 2.13.24); a record whose version is 0xF
# holds other records (OfficeArt's drawing records too).
_RT_SLIDE, _RT_SLIDE_ATOM, _RT_NOTES = 0x03EE, 0x03EF, 0x03F0
_RT_SLIDE_PERSIST, _RT_SLIDE_LIST = 0x03F3, 0x0FF0
_RT_TEXT_HEADER, _RT_TEXT_CHARS, _RT_TEXT_BYTES = 0x0F9F, 0x0FA0, 0x0FA8
_RT_USER_EDIT, _RT_PERSIST_DIRECTORY, _RT_CURRENT_USER = 0x0FF5, 0x1772, 0x0FF6
_TITLE_TEXT_TYPES = (0, 6)  # a title, a centered title
_NOTES_TEXT_TYPE = 2
_CURRENT_USER_ENCRYPTED = 0xF3D1C4DF
_MAX_EDITS = 10_000


def extract_ppt(data: bytes, limits: ExtractLimits) -> list[Section]:
    """A PowerPoint 97-2003 deck: a section per slide, in the deck's order (its last save's, fast
    saves included), with its title as heading; the placeholders' text, then the other text boxes,
    then the notes."""
    from semantik.indexing.formats import office

    if not data.startswith(OLE_MAGIC):
        return _as_other_format(data, limits, office.extract_pptx)
    try:
        slides = _PowerPointDeck(data, TextBudget(limits)).slides()
    except BROKEN_BINARY as exc:
        raise ExtractionError(f"corrupt PPT: {type(exc).__name__}: {exc}") from exc
    sections = []
    for number, texts in enumerate(slides, start=1):
        title = next((heading_title(text) for kind, text in texts if kind in _TITLE_TEXT_TYPES and text.strip()), "")
        text = "\n".join(text for _, text in texts if text.strip())
        if text:
            sections.append(Section(text, slide=number, heading=(title,) if title else ()))
    return sections


class _PowerPointDeck:
    """The "PowerPoint Document" stream and where its persisted objects are ([MS-PPT] 2.1.2). Each
    text read is charged to ``budget`` before it is decoded."""

    def __init__(self, data: bytes, budget: TextBudget) -> None:
        import olefile

        self.budget = budget
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            if not ole.exists("PowerPoint Document") or not ole.exists("Current User"):
                raise ExtractionError("not a PowerPoint deck (no PowerPoint Document stream in the compound file)")
            if ole.exists("EncryptedSummary"):
                raise ExtractionError("encrypted PPT")
            self.stream = ole.openstream("PowerPoint Document").read()
            current = ole.openstream("Current User").read()
        if len(current) < 20 or _u16(current, 2) != _RT_CURRENT_USER:
            raise ExtractionError("corrupt PPT: no current user record")
        if _u32(current, 12) == _CURRENT_USER_ENCRYPTED:
            raise ExtractionError("encrypted PPT")
        self.records_left = 8 * (len(self.stream) // 8 + 1000)  # every walk together
        self.persist: dict[int, int] = {}
        document = None
        edit, seen, directories = _u32(current, 16), set[int](), set[int]()
        while edit and edit not in seen and len(seen) < _MAX_EDITS:  # newest edit first
            seen.add(edit)
            if _u16(self.stream, edit + 2) != _RT_USER_EDIT:
                raise ExtractionError("corrupt PPT: no edit record where the file says")
            if document is None:
                document = _u32(self.stream, edit + 8 + 16)
            directory = _u32(self.stream, edit + 8 + 12)
            if directory not in directories:  # (each is read once, whatever points to it)
                directories.add(directory)
                self._read_persist_directory(directory)
            edit = _u32(self.stream, edit + 8 + 8)
        if document is None or document not in self.persist:
            raise ExtractionError("corrupt PPT: no document record")
        self.document = self.persist[document]

    def _read_persist_directory(self, offset: int) -> None:
        if _u16(self.stream, offset + 2) != _RT_PERSIST_DIRECTORY:
            raise ExtractionError("corrupt PPT: no persist directory where the file says")
        position, end = offset + 8, offset + 8 + _u32(self.stream, offset + 4)
        while position + 4 <= min(end, len(self.stream)):
            entry = _u32(self.stream, position)
            first, count = entry & 0xFFFFF, entry >> 20
            self._spend(1 + count)
            for index in range(count):
                self.persist.setdefault(first + index, _u32(self.stream, position + 4 + 4 * index))
            position += 4 + 4 * count

    def _spend(self, records: int) -> None:
        """Count records read: all walks and directories together read at most about as many as
        the stream can hold (so records pointed to from many places cannot multiply the work)."""
        self.records_left -= records
        if self.records_left < 0:
            raise ExtractionError("corrupt PPT: its records are read more than once over")

    def _records(self, offset: int) -> Iterator[tuple[int, int, int, int]]:
        """(type, instance, start of its data, end) of the record at ``offset`` and every record
        inside it, in file order; iteratively, and within the file's own count of records."""
        stack = [(offset, offset + 8 + _u32(self.stream, offset + 4))]
        while stack:
            position, end = stack.pop()
            if position + 8 > min(end, len(self.stream)):
                continue
            self._spend(1)
            version_instance, kind, length = struct.unpack_from("<HHI", self.stream, position)
            data_end = min(position + 8 + length, end, len(self.stream))
            yield kind, version_instance >> 4, position + 8, data_end
            if data_end < end:
                stack.append((data_end, end))  # the next sibling, after this record's children
            if version_instance & 0xF == 0xF:
                stack.append((position + 8, data_end))

    def _events(self, offset: int) -> Iterator[tuple[str, int, Any]]:
        """In the record at ``offset``, in order: ("persist", persist id, slide or notes id) for
        each slide's or notes' place in a slide list, ("text", text type, text) for each text."""
        text_type = 4  # "other" until a text header says
        for kind, _, start, end in self._records(offset):
            if kind == _RT_SLIDE_PERSIST and end - start >= 16:
                text_type = 4
                yield "persist", _u32(self.stream, start), _u32(self.stream, start + 12)
            elif kind == _RT_TEXT_HEADER and end - start >= 4:
                text_type = _u32(self.stream, start)
            elif kind in (_RT_TEXT_CHARS, _RT_TEXT_BYTES):
                self.budget.charge((end - start) // (2 if kind == _RT_TEXT_CHARS else 1) + 1)
                raw = self.stream[start:end]
                text = raw.decode("utf-16-le", "replace") if kind == _RT_TEXT_CHARS else raw.decode("latin-1")
                if text != "*":  # where a field (slide number, date) shows
                    yield "text", text_type, text.replace("\r", "\n").replace("\x0b", "\n")

    def _texts(self, offset: int, *, only: int | None = None) -> list[tuple[int, str]]:
        return [(kind, text) for event, kind, text in self._events(offset) if event == "text" and only in (None, kind)]

    def _slide_lists(self) -> dict[int, list[tuple[int, int, list[tuple[int, str]]]]]:
        """The document's lists of slides (instance 0) and of notes (2): (persist id, slide or
        notes id, the text the list holds for it) of each, in the deck's order."""
        lists: dict[int, list[tuple[int, int, list[tuple[int, str]]]]] = {}
        for kind, instance, start, _ in self._records(self.document):
            if kind != _RT_SLIDE_LIST or instance not in (0, 2) or instance in lists:
                continue
            entries = lists[instance] = []
            for event, first, second in self._events(start - 8):
                if event == "persist":
                    entries.append((first, second, []))
                elif entries:
                    entries[-1][2].append((first, second))
        return lists

    def slides(self) -> list[list[tuple[int, str]]]:
        """Each slide's (text type, text): its placeholders' (held by the slide list), its own text
        boxes', and its notes'."""
        limits = self.budget.limits
        lists = self._slide_lists()
        if len(lists.get(0, [])) > limits.max_pages:
            raise ExtractionError(f"more than {limits.max_pages} slides (SEMANTIK_EXTRACT_MAX_PAGES)")
        notes_by_id = {notes_id: persist_id for persist_id, notes_id, _ in lists.get(2, [])}
        read = []
        for persist_id, _, outline in lists.get(0, []):
            texts = list(outline)
            slide = self.persist.get(persist_id)
            if slide is not None and _u16(self.stream, slide + 2) == _RT_SLIDE:
                texts += self._texts(slide)
                notes = self.persist.get(notes_by_id.get(self._notes_id(slide), -1))
                if notes is not None and _u16(self.stream, notes + 2) == _RT_NOTES:
                    texts += self._texts(notes, only=_NOTES_TEXT_TYPE)
            read.append(texts)
        return read

    def _notes_id(self, slide: int) -> int:
        """The id of a slide's notes, from its SlideAtom ([MS-PPT] 2.5.10); 0 for none."""
        for kind, _, start, end in self._records(slide):
            if kind == _RT_SLIDE_ATOM:
                return _u32(self.stream, start + 16) if end - start >= 20 else 0
        return 0
