"""Text as people write it: plain text and source code, Markdown (its headings), and HTML read as a
browser shows it (its headings, inline markup joined, ``pre`` blocks kept)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from semantik.indexing.formats.base import (
    ExtractLimits,
    Section,
    decode_text,
    heading_title,
    sections_from_blocks,
)

if TYPE_CHECKING:
    from bs4.element import PageElement, Tag

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
HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Elements whose text a browser does not show.
_UNSHOWN = frozenset({"script", "style", "noscript", "template"})
# A private-use character marks where a heading was in the page's text; removed from the input first.
_MARK = "\ue000"
_HEADING_MARKS = re.compile(f"{_MARK}([1-6]){_MARK}([^{_MARK}]*){_MARK}")
_BLANK_LINES = re.compile(r"\n\s*\n+")

# An ATX heading's opening: its title is the rest of the line, less a closing run of "#".
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]|$)")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Lines an underline cannot make a heading (CommonMark reads "---" under them as a rule): list
# items, quotes, table rows.
_NOT_A_TITLE = re.compile(r"^ {0,3}(?:[-*+][ \t]|\d{1,9}[.)][ \t]|>|\|)")
_FRONT_MATTER = ("---", "+++")


def extract_plain(data: bytes, limits: ExtractLimits) -> list[Section]:
    return [Section(decode_text(data))]


def extract_markdown(data: bytes, limits: ExtractLimits) -> list[Section]:
    return list(sections_from_blocks(undo_taken_back(markdown_blocks(decode_text(data).splitlines()))))


def markdown_blocks(lines: list[str], *, front_matter: bool = True) -> Iterator[tuple[int, str]]:
    """ATX (``## Title``) and setext (underlined) headings outside fenced code; every other line as
    it is. Front matter (a YAML or TOML block at the very top of a file) is text, never a heading;
    ``front_matter=False`` for text that is not a file's top (a notebook's cell)."""
    fence: str | None = None
    previous: str | None = None  # a paragraph line an underline could make a heading
    if front_matter and lines and lines[0].strip() in _FRONT_MATTER:
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == lines[0].strip()), None)
        if end is not None:
            yield from ((0, line) for line in lines[1:end])
            lines = lines[end + 1 :]
    for line in lines:
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
            yield 0, line
            continue
        if opening:
            fence = opening.group(1)
            previous = None
            yield 0, line
            continue
        atx = _ATX.match(line)
        if atx:
            previous = None
            title = line[atx.end() :].strip()
            closing = title.rstrip("#")
            if closing != title and (not closing or closing[-1] in " \t"):
                title = closing.strip()
            yield len(atx.group(1)), title
            continue
        underline = _SETEXT.match(line)
        if underline and previous is not None:
            # The paragraph line just given is the heading's title: take it back as a heading.
            yield -1, ""
            yield (1 if underline.group(1)[0] == "=" else 2), previous
            previous = None
            continue
        plain = line.strip() and not line.startswith(("    ", "\t")) and not _NOT_A_TITLE.match(line)
        previous = line if plain else None
        yield 0, line


def undo_taken_back(blocks: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Apply markdown_blocks' take-backs (level -1 drops the block before it)."""
    held: tuple[int, str] | None = None
    for block in blocks:
        if block[0] == -1:
            held = None
            continue
        if held is not None:
            yield held
        held = block
    if held is not None:
        yield held


def extract_html(data: bytes, limits: ExtractLimits) -> list[Section]:
    return html_sections(decode_text(data))


def html_sections(markup: str, base: Iterable[str] = ()) -> list[Section]:
    """A page's sections, split at its headings (h1-h6), under the heading path ``base``."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    # Lines keep the text's own spacing (a <pre> block stays as written); blank runs shrink to one.
    parts = _HEADING_MARKS.split(_BLANK_LINES.sub("\n\n", "".join(_page_text(soup, layout=True))))
    blocks = [(0, parts[0])]
    for at in range(1, len(parts), 3):
        blocks += [(int(parts[at]), parts[at + 1]), (0, parts[at + 2])]
    return list(sections_from_blocks(blocks, base))


def _page_text(root: Tag, *, layout: bool) -> Iterator[str]:
    """The text under ``root`` as a browser shows it, in one walk of the tree (no recursion, so no
    depth is too deep): the strings ``get_text`` joins (no comments, scripts or styles), less any
    heading marker. With ``layout``: a line break around each block and for ``br``, a space after
    each table cell, and each heading as its marker and title (``_HEADING_MARKS``).

    The tree is only read. Adding the breaks to it instead (``insert_before``/``insert_after``)
    searches the parent's children for each insert: 4.3 s for a page of 8,000 paragraphs, and a
    4.6 MB page (100,000) ran past the extraction time limit."""
    from bs4.element import CData, NavigableString, Tag

    stack: list[PageElement | str] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, NavigableString):
            if type(node) in (NavigableString, CData):
                yield node.replace(_MARK, "")
        elif isinstance(node, str):  # a break after a block or cell, pushed before its children
            yield node
        elif isinstance(node, Tag) and node.name not in _UNSHOWN:
            name = node.name
            if layout and name in HTML_HEADINGS:
                title = heading_title(" ".join(_page_text(node, layout=False)))
                yield f"\n{_MARK}{name[1]}{_MARK}{title}{_MARK}\n"
                continue
            if layout and name == "br":
                yield "\n"
                continue
            if layout and name in HTML_BLOCKS:
                yield "\n"
                stack.append("\n")
            elif layout and name in HTML_CELLS:
                stack.append(" ")
            stack.extend(reversed(node.contents))
