"""PDF pages with PDFium (words spaced from their glyphs' positions, as a viewer selects them), each
page a section under the bookmarks (outline) that point into it; pages and images without a text
layer through tesseract (OCR) when it is installed."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

from semantik.indexing.formats.base import (
    ExtractionError,
    ExtractLimits,
    Outline,
    Section,
    TextBudget,
    heading_title,
)
from semantik.proc import die_with_parent

NO_TEXT_LAYER = "no text layer (install tesseract-ocr to OCR it)"
# A page is rendered for OCR at this resolution, but never larger than OCR_MAX_PIXELS.
OCR_DPI = 300
OCR_MAX_PIXELS = 40_000_000
OCR_TIMEOUT_S = 300.0
# A page with fewer letters than this in its text layer is treated as a scan.
MIN_TEXT_LAYER_LETTERS = 3
# Nodes visited in a PDF's page tree per allowed page (besides the pages): a tree whose nodes list
# each other thousands of times is refused before pypdf builds a page object per listing.
_PAGE_TREE_VISITS_PER_PAGE = 4
_SOFT_HYPHEN_BREAK = re.compile("[\u00ad\ufffe\x02]\r?\n")


def extract_pdf(data: bytes, limits: ExtractLimits) -> list[Section]:
    import pypdfium2 as pdfium

    check_page_tree(data, limits.max_pages)
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise ExtractionError("encrypted PDF") from exc
        raise ExtractionError(f"corrupt PDF: {message}") from exc
    try:
        if len(pdf) > limits.max_pages:
            raise ExtractionError(f"more than {limits.max_pages} pages (SEMANTIK_EXTRACT_MAX_PAGES)")
        marks = _bookmarks(pdf)
        budget, outline = TextBudget(limits), Outline()
        sections: list[Section] = []
        scans: list[int] = []
        for index in range(len(pdf)):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                text = _SOFT_HYPHEN_BREAK.sub("", textpage.get_text_range()).replace("\r\n", "\n").replace("\r", "\n")
                textpage.close()
                if sum(char.isalpha() for char in text) < MIN_TEXT_LAYER_LETTERS and _has_image(page):
                    # A scan (perhaps with a stamped page number): OCR when it can, else its text layer.
                    scans.append(index)
                    if ocr_available(limits):
                        read = ocr_image(_render(page), limits)
                        text = read if len(read.strip()) >= len(text.strip()) else text
                budget.take(text)
                sections += _page_sections(text, index + 1, marks.get(index, []), outline)
            finally:
                page.close()
        if scans and not ocr_available(limits) and not any(section.text.strip() for section in sections):
            raise ExtractionError(NO_TEXT_LAYER)
        return sections
    finally:
        pdf.close()


def _bookmarks(pdf: Any) -> dict[int, list[tuple[int, str]]]:
    """Page index -> the (level, title) of the bookmarks pointing into it, in outline order."""
    marks: dict[int, list[tuple[int, str]]] = {}
    try:
        for count, item in enumerate(pdf.get_toc(max_depth=8)):
            if count > 10_000:
                break
            dest = item.get_dest()
            page = dest.get_index() if dest is not None else None
            title = heading_title(item.get_title() or "")
            if page is not None and title:
                marks.setdefault(page, []).append((item.level + 1, title))
    except Exception:  # a broken outline is no reason to lose the text
        return {}
    return marks


def _page_sections(text: str, page: int, marks: list[tuple[int, str]], outline: Outline) -> Iterator[Section]:
    """One page's text, cut where the bookmarks into it have their titles (found in order); text
    before the first belongs to the heading already open. A bookmark whose title is not in the
    text opens its heading where the previous one was found (the page's start if none was)."""
    position, cuts = 0, list[tuple[int, int, str]]()
    for level, title in marks:
        found = _find_title(text, title, position)
        if found is None:
            cuts.append((cuts[-1][0] if cuts else 0, level, title))
            continue
        cuts.append((found, level, title))
        position = found + 1
    start = 0
    for found, level, title in cuts:
        if text[start:found].strip():
            yield Section(text[start:found].strip(), page=page, heading=outline.path)
        outline.enter(level, title)
        start = max(start, found)
    if text[start:].strip():
        yield Section(text[start:].strip(), page=page, heading=outline.path)


def _find_title(text: str, title: str, start: int) -> int | None:
    words = title.split()
    if not words:
        return None
    pattern = r"\s+".join(re.escape(word) for word in words)
    match = re.compile(pattern, re.IGNORECASE).search(text, start)
    return match.start() if match else None


def _has_image(page: Any) -> bool:
    """The page draws an image (a scan is one); a blank or vector-only page is not a scan."""
    import pypdfium2.raw as pdfium_c

    try:
        return any(True for _ in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=2))
    except Exception:
        return True


def _render(page: Any) -> bytes:
    width, height = page.get_size()
    scale = OCR_DPI / 72
    if width * height * scale * scale > OCR_MAX_PIXELS:
        scale = (OCR_MAX_PIXELS / max(width * height, 1.0)) ** 0.5
    image = page.render(scale=scale, grayscale=True).to_pil()
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def extract_image(data: bytes, limits: ExtractLimits) -> list[Section]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as exc:
        raise ExtractionError(f"corrupt image: {exc}") from exc
    if width * height > OCR_MAX_PIXELS:
        raise ExtractionError(f"image of {width}x{height} pixels is larger than OCR takes ({OCR_MAX_PIXELS} pixels)")
    if not ocr_available(limits):
        raise ExtractionError(NO_TEXT_LAYER)
    text = TextBudget(limits).take(ocr_image(data, limits))
    return [Section(text)] if text.strip() else []


def ocr_available(limits: ExtractLimits) -> bool:
    return bool(limits.ocr_command) and shutil.which(limits.ocr_command) is not None


def ocr_image(image: bytes, limits: ExtractLimits) -> str:
    """The text tesseract reads in one image (PNG, JPEG, TIFF ...), given on its standard input.
    It runs single-threaded, under this process's memory limit, and dies with this process."""
    command = shutil.which(limits.ocr_command)
    if command is None:
        raise ExtractionError(NO_TEXT_LAYER)
    try:
        done = subprocess.run(
            [command, "stdin", "stdout", "-l", limits.ocr_languages],
            input=image,
            capture_output=True,
            timeout=OCR_TIMEOUT_S,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
            preexec_fn=die_with_parent,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ExtractionError(f"OCR took longer than {OCR_TIMEOUT_S:g} s") from exc
    except OSError as exc:
        raise ExtractionError(f"cannot run OCR ({limits.ocr_command}): {exc.strerror or exc}") from exc
    if done.returncode != 0:
        error = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ExtractionError(f"OCR failed: {error[-1] if error else f'exit status {done.returncode}'}")
    return done.stdout.decode("utf-8", "replace").replace("\f", "\n").strip()


def check_page_tree(data: bytes, max_pages: int) -> None:
    """Refuse a page tree with more than ``max_pages`` pages before PDFium builds it: first its
    /Count (which may lie), then a walk that stops at the limit, so a tree whose nodes list each
    other many times (90,000 pages from a 4 KB file) fails at once. A loop is corrupt."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractionError("encrypted PDF")
        check_page_count(reader.root_object.get("/Pages"), max_pages)
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ExtractionError(f"corrupt PDF: {exc}") from exc


def check_page_count(pages: Any, max_pages: int) -> None:
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
