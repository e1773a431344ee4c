"""Jupyter notebooks (.ipynb, nbformat 4 and 3): the markdown cells as Markdown (their headings give
the sections; pictures pasted in as data are left out), the code cells as code, and what the cells
printed: text output (at most ``MAX_OUTPUT_CHARS`` of each, terminal colours taken out, a progress
bar's last state only) and errors as "Name: message". Pictures and their text stand-ins ("<Figure
size 640x480>"), HTML twins of a text output, tracebacks and widget state are not read."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from semantik.indexing.formats.base import (
    ExtractionError,
    ExtractLimits,
    Section,
    TextBudget,
    decode_text,
    sections_from_blocks,
)
from semantik.indexing.formats.web import markdown_blocks, undo_taken_back

# An output is what a cell printed: a long one (a data frame, a training log) is mostly noise.
MAX_OUTPUT_CHARS = 5000
_TERMINAL_COLOURS = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A line a progress bar rewrote with carriage returns: only what it showed last.
_REWRITTEN = re.compile(r"^[^\n]*\r(?=[^\n\r])", re.MULTILINE)
# A picture pasted into a markdown cell as data (``![x](data:image/png;base64,...)``, ``<img src=...>``).
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]*")
# Rich outputs whose text form only stands in for a picture or a widget.
_PICTURE_FORMS = ("image/", "application/vnd.jupyter.widget")
# Text forms of a rich output, best first (nbformat 3 kept plain text under "text").
_TEXT_FORMS = ("text/markdown", "text/plain", "text")


def extract_ipynb(data: bytes, limits: ExtractLimits) -> list[Section]:
    try:
        notebook = json.loads(decode_text(data))
    except (ValueError, RecursionError) as exc:  # (json's errors are ValueErrors; deep nesting recurses)
        raise ExtractionError(f"corrupt notebook: {type(exc).__name__}: {exc}") from exc
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if cells is None and isinstance(notebook, dict) and isinstance(notebook.get("worksheets"), list):
        cells = [  # nbformat 3: cells in worksheets
            cell for sheet in notebook["worksheets"] if isinstance(sheet, dict) for cell in _list(sheet.get("cells"))
        ]
    if not isinstance(cells, list):
        raise ExtractionError("not a Jupyter notebook (no cells)")
    return list(sections_from_blocks(undo_taken_back(_blocks(cells, TextBudget(limits)))))


def _blocks(cells: list[Any], budget: TextBudget) -> Iterator[tuple[int, str]]:
    """(heading level or 0, line) of every cell in order, a blank line between cells."""
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type")
        source = budget.take(_text(cell.get("source", cell.get("input"))))
        if kind == "markdown":
            yield from markdown_blocks(_DATA_URI.sub("", source).splitlines(), front_matter=False)
        elif kind == "heading" and source.strip():  # nbformat 3's heading cells
            level = cell.get("level")
            yield (level if isinstance(level, int) and 1 <= level <= 6 else 1), source
        elif kind in ("code", "raw"):
            yield from ((0, line) for line in source.splitlines())
            for output in _list(cell.get("outputs")):
                printed = budget.take(_output_text(output)[:MAX_OUTPUT_CHARS])
                yield from ((0, line) for line in printed.splitlines())
        yield 0, ""


def _output_text(output: Any) -> str:
    if not isinstance(output, dict):
        return ""
    kind = output.get("output_type")
    if kind == "stream":
        return _REWRITTEN.sub("", _TERMINAL_COLOURS.sub("", _text(output.get("text"))).replace("\r\n", "\n"))
    if kind in ("error", "pyerr"):  # (nbformat 3: pyerr)
        name, message = output.get("ename"), output.get("evalue")
        if not isinstance(name, str):
            return ""
        return _TERMINAL_COLOURS.sub("", f"{name}: {message}" if isinstance(message, str) and message else name)
    data = output.get("data")
    if not isinstance(data, dict):  # nbformat 3: the forms beside "output_type"
        data = output
    if any(isinstance(form, str) and form.startswith(_PICTURE_FORMS) for form in data):
        return ""
    return next((text for form in _TEXT_FORMS if (text := _text(data.get(form)))), "")


def _text(value: Any) -> str:
    """nbformat's text: a string, or a list of strings (its lines)."""
    if isinstance(value, str):
        return value
    return "".join(part for part in value if isinstance(part, str)) if isinstance(value, list) else ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
