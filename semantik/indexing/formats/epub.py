"""E-books (EPUB 2 and 3) with EbookLib: the documents of the spine in reading order, each read as
HTML under the table-of-contents title that points to it."""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator
from typing import Any

from semantik.indexing.formats.base import ExtractionError, ExtractLimits, Section, TextBudget, check_zip_container
from semantik.indexing.formats.web import html_sections


def extract_epub(data: bytes, limits: ExtractLimits) -> list[Section]:
    import ebooklib
    from ebooklib import epub

    check_zip_container(data, limits, "EPUB")
    try:
        book = epub.read_epub(io.BytesIO(data), options={"ignore_ncx": False})
    except (epub.EpubException, KeyError, ValueError, AttributeError, IndexError) as exc:
        raise ExtractionError(f"corrupt EPUB: {exc}") from exc
    titles = dict(_toc_titles(book.toc))
    budget, sections = TextBudget(limits), []
    for item_id, _linear in book.spine:
        item = book.get_item_with_id(item_id)
        if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT:
            continue
        title = titles.get(posixpath.normpath(item.get_name()))
        markup = item.get_content().decode("utf-8", "replace")
        for section in html_sections(markup, (title,) if title else ()):
            budget.take(section.text)
            sections.append(section)
    return sections


def _toc_titles(toc: Any, depth: int = 0) -> Iterator[tuple[str, str]]:
    """(document name, title) of each table-of-contents entry; the first entry for a document wins."""
    from ebooklib.epub import Link
    from ebooklib.epub import Section as TocSection

    # ebooklib gives a list of entries, or one bare entry (a book whose table of contents holds one).
    one_section = isinstance(toc, tuple) and len(toc) == 2 and isinstance(toc[1], (list, tuple))
    entries = toc if isinstance(toc, (list, tuple)) and not one_section else [toc]
    for entry in entries if depth < 16 else ():
        if isinstance(entry, tuple) and len(entry) == 2:  # (Section, [children])
            head, children = entry
            if isinstance(head, (Link, TocSection)) and getattr(head, "href", None):
                yield posixpath.normpath(head.href.split("#")[0]), head.title
            yield from _toc_titles(children, depth + 1)
        elif isinstance(entry, Link) and entry.href:
            yield posixpath.normpath(entry.href.split("#")[0]), entry.title
