"""Documents as teams keep them, from ``tests/corpus`` (made by LibreOffice, python-pptx, the
standard library and Pillow: see ``tests/corpus/make.py``). Each file holds one phrase no other has:
searching for it puts that file first, at its page, slide, sheet or heading; the snippet marks the
phrase; results group by document and filter by folder, file type and modification time. Scans are
read by tesseract, or fail with the reason that says how to get it."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from semantik.indexing.chunk import chunker_for
from semantik.indexing.extract import ExtractionError, ExtractLimits, extract_sections
from semantik.inference.embedder import default_model_path
from tests.helpers import new_job, wait_for_job

CORPUS = Path(__file__).resolve().parent / "corpus"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text())
MAIL = {"message.eml", "archive.mbox"}
OFFICE = {"report.docx", "report.odt", "report.rtf", "report.epub", "slides.pptx", "slides.odp"}
OLD = {"sheet.xlsx", "sheet.ods"}  # modified in 2020
LOCATION_KEYS = ("page", "slide", "sheet", "heading")
NO_OCR = ExtractLimits(ocr_command="")


def place(docs: Path) -> dict[str, Path]:
    """The corpus in folders: mail/, office/ and the rest at the top; the sheets dated 2020."""
    placed = {}
    for name in EXPECTED:
        folder = docs / ("mail" if name in MAIL else "office" if name in OFFICE else "")
        folder.mkdir(exist_ok=True)
        placed[name] = Path(shutil.copyfile(CORPUS / name, folder / name))
    for name in OLD:
        stamp = datetime(2020, 6, 1, tzinfo=UTC).timestamp()
        os.utime(placed[name], (stamp, stamp))
    return placed


def expected_location(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: spec.get(key, [] if key == "heading" else None) for key in LOCATION_KEYS}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_format_yields_its_phrase_at_its_place(name: str) -> None:
    spec = EXPECTED[name]
    sections = extract_sections((CORPUS / name).read_bytes(), name)
    holding = [section for section in sections if spec["phrase"] in " ".join(section.text.lower().split())]
    assert len(holding) == 1, (name, sections)
    location = holding[0].location()
    assert {key: location.get(key, [] if key == "heading" else None) for key in LOCATION_KEYS} == expected_location(
        spec
    ), (name, holding[0])


def test_pdf_text_keeps_words_and_spaces_and_pages() -> None:
    sections = extract_sections((CORPUS / "report.pdf").read_bytes(), "report.pdf", NO_OCR)
    text = " ".join(" ".join(section.text.split()) for section in sections)
    assert "the crews completed the teal pangolin survey for the eastern berths" in text
    assert [section.page for section in sections] == [1, 2, 2]  # Introduction; Results, Measurements
    assert sections[1].heading == ("Results",) and sections[2].heading == ("Results", "Measurements")


def test_chunks_keep_their_section_and_prefer_paragraph_breaks() -> None:
    chunker = chunker_for(default_model_path(), chunk_size=48, overlap=8)
    sections = extract_sections((CORPUS / "report.docx").read_bytes(), "report.docx")
    chunks = chunker.chunk_sections(sections)
    assert {tuple(chunk.location.get("heading", ())) for chunk in chunks} == {
        ("Introduction",), ("Results",), ("Results", "Measurements")
    }  # fmt: skip
    for section in sections:  # no chunk holds text of two sections
        mine = [chunk.text for chunk in chunks if tuple(chunk.location.get("heading", ())) == section.heading]
        assert all(text in section.text for text in mine), (section, mine)
    # Two paragraphs of 60-odd tokens: the first chunk ends where the first paragraph does.
    first, second = "Alpha " + "one two three " * 12 + "end.", "Beta " + "four five six " * 12 + "stop."
    pieces = chunker.chunk(f"{first}\n\n{second}")
    assert pieces[0].endswith("end.") and pieces[1].startswith("Beta"), pieces


def test_scans_without_tesseract_fail_with_the_way_to_ocr() -> None:
    for name in ("scan.pdf", "scan.png"):
        with pytest.raises(Exception, match=r"^no text layer \(install tesseract-ocr to OCR it\)$"):
            extract_sections((CORPUS / name).read_bytes(), name, NO_OCR)
    # A PDF with a text layer needs no OCR, whether or not it is installed.
    assert extract_sections((CORPUS / "report.pdf").read_bytes(), "report.pdf", NO_OCR)


async def search(api: TestClient[Any, Any], query: str, **extra: Any) -> list[dict[str, Any]]:
    response = await api.post("/api/search", json={"query": query, "collection": "docs", **extra})
    assert response.status == 200, await response.text()
    results: list[dict[str, Any]] = (await response.json())["results"]
    return results


async def test_every_format_is_found_first_at_its_place(
    api: TestClient[Any, Any], docs: Path, run_worker: Callable[[], Awaitable[Any]]
) -> None:
    assert shutil.which("tesseract"), "the suite needs tesseract-ocr (scripts/test-deps.sh installs it)"
    placed = place(docs)
    job_id = await new_job(api, docs, "docs")
    await run_worker()
    job = await wait_for_job(api, job_id)
    assert job["status"] == "completed" and job["files_done"] == len(EXPECTED), job

    for name, spec in EXPECTED.items():
        if spec.get("ocr"):
            continue  # scan.pdf and scan.png hold the same words: checked below
        hits = await search(api, spec["phrase"], k=3)
        top = hits[0]
        assert top["path"] == str(placed[name]), (name, [hit["path"] for hit in hits])
        assert {key: top[key] for key in LOCATION_KEYS} == expected_location(spec), (name, top)
        assert top["file_type"] == name.rsplit(".", 1)[1]
        marked = [top["snippet"]["text"][start:end].lower() for start, end in top["snippet"]["highlights"]]
        assert set(spec["phrase"].split()) - {"the"} <= set(marked), (name, top["snippet"])
    scans = await search(api, "harbour crane maintenance", k=5)
    assert {Path(hit["path"]).name for hit in scans[:2]} == {"scan.pdf", "scan.png"}, scans
    assert {Path(hit["path"]).name: hit["page"] for hit in scans[:2]} == {"scan.pdf": 1, "scan.png": None}

    # Group by document: each document once, with how many more of its chunks matched.
    chunks = await search(api, "harbour authority inspection equipment", k=20)
    documents = await search(api, "harbour authority inspection equipment", k=20, group_by="document")
    assert len({hit["path"] for hit in documents}) == len(documents)
    assert len({hit["path"] for hit in chunks}) < len(chunks)  # the reports have several such chunks
    assert any(hit["other_hits"] for hit in documents) and all(hit["other_hits"] is not None for hit in documents)
    assert documents[0]["path"] == chunks[0]["path"]

    # Filters: a folder, file types, modification times.
    under_mail = await search(api, "delivery lease contract", k=10, filters={"path_prefix": str(docs / "mail") + "/"})
    assert under_mail and {Path(hit["path"]).parent for hit in under_mail} == {docs / "mail"}
    pdfs = await search(api, "harbour", k=10, filters={"file_types": ["PDF"]})
    assert pdfs and {hit["file_type"] for hit in pdfs} == {"pdf"}
    old = await search(api, "shipment", k=10, filters={"modified_before": "2021-01-01T00:00:00Z"})
    assert {Path(hit["path"]).name for hit in old} == OLD
    new = await search(api, "shipment", k=10, filters={"modified_after": "2021-01-01T00:00:00+00:00"})
    assert new and not {Path(hit["path"]).name for hit in new} & OLD
    assert old[0]["modified"].startswith("2020-06-01")
    nothing = await search(api, "harbour", filters={"path_prefix": str(docs / "nowhere")})
    assert nothing == []


@pytest.mark.parametrize(
    "filters",
    [
        {"path_prefix": "relative/folder"},
        {"file_types": ["p df"]},
        {"modified_after": "2021-01-01"},  # no zone: ambiguous
        {"modified_after": "yesterday"},
        {"unknown": 1},
    ],
)
async def test_bad_filters_are_422_in_the_error_shape(api: TestClient[Any, Any], filters: dict[str, Any]) -> None:
    response = await api.post("/api/search", json={"query": "x", "collection": "docs", "filters": filters})
    assert response.status == 422, await response.text()
    body = await response.json()
    assert body["error"]["code"] == "validation_error" and body["error"]["details"][0]["loc"][0] == "filters", body


async def test_a_scan_without_tesseract_fails_with_the_reason(make_api: Any, docs: Path) -> None:
    from tests.helpers import run_burst

    api, runtime = await make_api(ocr_command="")
    for name in ("scan.pdf", "scan.png", "notes.md"):
        shutil.copyfile(CORPUS / name, docs / name)
    job_id = await new_job(api, docs, "scans")
    await run_burst(runtime)
    job = await wait_for_job(api, job_id)
    assert job["status"] == "completed_with_errors", job
    failed = {Path(item["path"]).name: item["error"] for item in job["failed_files"]}
    reason = "no text layer (install tesseract-ocr to OCR it)"
    assert failed == {"scan.pdf": reason, "scan.png": reason}, job
    assert job["files_done"] == 1


def test_pdf_bookmarks_open_headings_in_order_even_on_blank_pages() -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.start_section("Chapter 1")
    pdf.multi_cell(0, 8, "Chapter 1\nThe first chapter tells of the quay.")
    pdf.add_page()
    pdf.start_section("Chapter 2")  # a divider page: a bookmark and no text
    pdf.add_page()
    pdf.start_section("Tables", level=1)  # its title is not on the page
    pdf.multi_cell(0, 8, "2024 1234.56 7890\nThe second chapter counts the cranes.")
    pdf.add_page()
    pdf.multi_cell(0, 8, "2024 1234.56 7890")  # numbers only: kept, no OCR needed
    sections = extract_sections(bytes(pdf.output()), "book.pdf", NO_OCR)
    assert [(section.page, section.heading) for section in sections] == [
        (1, ("Chapter 1",)), (3, ("Chapter 2", "Tables")), (4, ("Chapter 2", "Tables"))
    ]  # fmt: skip
    assert "counts the cranes" in sections[1].text and sections[2].text == "2024 1234.56 7890"


def test_markdown_front_matter_rules_and_lists_are_not_headings() -> None:
    note = b"---\ntitle: Notes\ntags: [x]\n---\n\n# Plan\n\n- item\n---\n\n> quote\n---\n\nSetext\n======\nbody\n"
    sections = extract_sections(note, "note.md")
    assert [section.heading for section in sections] == [("Plan",), ("Setext",)], sections
    assert sections[0].text.startswith("title: Notes\ntags: [x]")  # front matter is text, not lost


def test_html_text_cannot_forge_a_heading() -> None:
    page = (
        b"<p>intro &#xE000;1&#xE000;Forged&#xE000; and a paragraph long enough to stand alone"
        b" as a section of its own, before any heading.</p>"
    )
    sections = extract_sections(page + b"<h2>Real</h2><p>body</p>", "page.html")
    assert [section.heading for section in sections] == [(), ("Real",)], sections


def test_an_epub_with_an_empty_table_of_contents_is_read() -> None:
    """ebooklib reads an empty table of contents as one bare link; the book failed on it before
    ("cannot extract text: TypeError")."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("empty-toc")
    book.set_title("Logbook")
    chapters = []
    for n, (title, text) in enumerate([("Arrival", "The ferry docked at noon."), ("Departure", "Fog kept us ashore.")]):
        chapter = epub.EpubHtml(title=title, file_name=f"c{n}.xhtml")
        chapter.content = f"<h1>{title}</h1><p>{text}</p>"
        book.add_item(chapter)
        chapters.append(chapter)
    book.spine = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    out = io.BytesIO()
    epub.write_epub(out, book)
    sections = extract_sections(out.getvalue(), "logbook.epub")
    assert [(section.heading, section.text) for section in sections] == [
        (("Arrival",), "Arrival\n\nThe ferry docked at noon."),
        (("Departure",), "Departure\n\nFog kept us ashore."),
    ], sections


def test_rtf_pictures_are_not_text_and_nothing_after_them_is_lost() -> None:
    """Word writes pictures as ``{\\*\\shppict{\\pict ...}}``; with a paper-bin control word
    (``\\binfsxn``) or a path like C:\\\\bin anywhere, striprtf's own picture pass lost everything
    after the first one, or failed the file. Raw picture bytes (``\\binN``, braces among them) are
    not text either."""
    hex_picture = "89504e470d0a1a0a" * 40
    raw = b"}{\\x\\\x00\xff!?{"
    rtf = (
        b"{\\rtf1\\ansi\\binfsxn1\\binsxn1 Before the logo. {\\*\\shppict{\\pict\\pngblip\\picw10 "
        + hex_picture.encode()
        + b"}}{\\nonshppict{\\pict\\wmetafile8\\bin%d " % len(raw)
        + raw
        + b"}} After the logo, the tools live in C:\\\\bin\\\\tools. {\\b Bold} end."
        + b" {\\*\\shppict\\pict\\pngblip 89504e47} Photos in C:\\\\pictures.}"
    )
    sections = extract_sections(rtf, "memo.rtf")
    text = " ".join(" ".join(section.text.split()) for section in sections)
    assert (
        text == "Before the logo. After the logo, the tools live in C:\\bin\\tools. Bold end. Photos in C:\\pictures."
    ), text


def test_word_text_wherever_the_document_keeps_it() -> None:
    """Content controls (forms, templates), tracked insertions, fields, nested tables and text
    boxes hold text python-docx's own iteration leaves out; deleted text and field codes are not
    text, and a text box's copy for older readers (mc:Fallback) is not read twice."""
    import docx
    from lxml import etree

    document = docx.Document()
    document.add_heading("Inspection", level=1)
    body = document.element.body
    namespaces = (
        'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
        'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
        'xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape" '
        'xmlns:v="urn:schemas-microsoft-com:vml"'
    )

    def run(text: str) -> str:
        return f"<w:r><w:t xml:space='preserve'>{text}</w:t></w:r>"

    def box(text: str) -> str:
        return f"<w:txbxContent><w:p>{run(text)}</w:p></w:txbxContent>"

    note = box("Margin note: recheck the keel.")
    fragments = [
        f"<w:p>{run('The hull was ')}<w:ins w:id='1' w:author='a'>{run('freshly ')}</w:ins>"
        f"<w:del w:id='2' w:author='a'><w:r><w:delText>badly </w:delText></w:r></w:del>{run('painted.')}</w:p>",
        f"<w:sdt><w:sdtPr><w:alias w:val='Inspector'/></w:sdtPr><w:sdtContent><w:p>{run('Inspector: Mara Quill')}</w:p>"
        "</w:sdtContent></w:sdt>",
        f"<w:p>{run('Signed on ')}<w:fldSimple w:instr='DATE'>{run('7 December')}</w:fldSimple>"
        "<w:r><w:fldChar w:fldCharType='begin'/></w:r><w:r><w:instrText>PAGE \\* MERGEFORMAT</w:instrText></w:r>"
        f"<w:r><w:fldChar w:fldCharType='separate'/></w:r>{run(' page 3')}<w:r><w:fldChar w:fldCharType='end'/></w:r>"
        f"<w:sdt><w:sdtContent>{run(', approved')}</w:sdtContent></w:sdt></w:p>",
        f"<w:tbl><w:tr><w:tc><w:p>{run('Deck')}</w:p></w:tc><w:tc><w:tbl><w:tr><w:tc><w:p>{run('rivets')}</w:p></w:tc>"
        f"<w:tc><w:p>{run('sound')}</w:p></w:tc></w:tr></w:tbl></w:tc></w:tr></w:tbl>",
        f"<w:p>{run('See the margin.')}<w:r><mc:AlternateContent><mc:Choice Requires='wps'><w:drawing><wps:wsp>"
        f"<wps:txbx>{note}</wps:txbx></wps:wsp></w:drawing></mc:Choice><mc:Fallback><w:pict>"
        f"<v:shape><v:textbox>{note}</v:textbox></v:shape></w:pict></mc:Fallback>"
        "</mc:AlternateContent></w:r></w:p>",
    ]
    # Not read: a control showing its placeholder, Word's table of contents (the headings again), a
    # text box in deleted text. A text box's heading is no heading of the document's.
    sidebar = (
        "<w:txbxContent><w:p><w:pPr><w:pStyle w:val='Heading1'/></w:pPr>" + run("Sidebar") + "</w:p></w:txbxContent>"
    )
    fragments += [
        f"<w:sdt><w:sdtPr><w:showingPlcHdr/></w:sdtPr><w:sdtContent><w:p>{run('Click or tap here to enter text.')}"
        "</w:p></w:sdtContent></w:sdt>",
        "<w:sdt><w:sdtPr><w:docPartObj><w:docPartGallery w:val='Table of Contents'/></w:docPartObj></w:sdtPr>"
        f"<w:sdtContent><w:p>{run('Contents')}</w:p><w:p>{run('Inspection 1')}</w:p></w:sdtContent></w:sdt>",
        f"<w:p>{run('Kept.')}<w:del w:id='3' w:author='a'><w:r><w:drawing><wps:wsp><wps:txbx>{box('Struck box.')}"
        f"</wps:txbx></wps:wsp></w:drawing></w:r></w:del><w:r><w:drawing><wps:wsp><wps:txbx>{sidebar}</wps:txbx>"
        "</wps:wsp></w:drawing></w:r></w:p>",
        f"<w:tbl><w:tr><w:tc><w:p>{run('Hold')}<w:r><w:drawing><wps:wsp><wps:txbx>{box('dry')}</wps:txbx></wps:wsp>"
        "</w:drawing></w:r></w:p></w:tc></w:tr></w:tbl>",
    ]
    for fragment in fragments:
        body.insert(len(body) - 1, etree.fromstring(f"<w:root {namespaces}>{fragment}</w:root>")[0])
    # A style with no type (the format allows it) is no reason to fail the document.
    document.styles.element.append(
        etree.fromstring(f"<w:style {namespaces} w:styleId='Odd'><w:name w:val='odd'/></w:style>")
    )
    saved = io.BytesIO()
    document.save(saved)

    sections = extract_sections(saved.getvalue(), "inspection.docx")
    assert [section.heading for section in sections] == [("Inspection",)], sections
    assert sections[0].text.split("\n") == [
        "Inspection",
        "The hull was freshly painted.",
        "Inspector: Mara Quill",
        "Signed on 7 December page 3, approved",
        "Deck | rivets | sound",
        "See the margin.",
        "Margin note: recheck the keel.",
        "Kept.",
        "Sidebar",
        "Hold",  # a cell: its paragraph, then its text box
        "dry",
    ], sections[0].text


def test_opendocument_text_without_deletions_or_comments_and_each_box_once() -> None:
    """A text with tracked changes keeps its deleted text (text:tracked-changes); comments hold
    their author and text; a text box sits inside a paragraph. None of it is the paragraph's own
    text: deleted text and comments are not read, a box is read once, as a paragraph of its own."""
    namespaces = " ".join(
        f"xmlns:{prefix}='urn:oasis:names:tc:opendocument:xmlns:{name}:1.0'"
        for prefix, name in (("office", "office"), ("text", "text"), ("table", "table"), ("draw", "drawing"))
    )
    body = (
        "<text:tracked-changes><text:changed-region text:id='c1'><text:deletion><office:change-info>"
        "<dc:creator>Ann</dc:creator></office:change-info><text:p>Withdrawn paragraph.</text:p></text:deletion>"
        "</text:changed-region></text:tracked-changes>"
        "<text:h text:outline-level='1'>Survey</text:h>"
        "<text:p>The dunes <text:change text:change-id='c1'/>moved.</text:p>"
        "<text:p>Sand samples<office:annotation><dc:creator>Ben</dc:creator><text:p>Check this figure.</text:p>"
        "</office:annotation> were dry.</text:p>"
        "<text:p><draw:frame><draw:text-box><text:p>Boxed: wind from the west.</text:p></draw:text-box></draw:frame>"
        "Tide tables follow.</text:p>"
        "<table:table table:name='T'><table:table-row><table:table-cell><text:p>Cell<office:annotation>"
        "<text:p>cell comment</text:p></office:annotation> text</text:p></table:table-cell></table:table-row>"
        "</table:table>"
    )
    content = (
        f"<?xml version='1.0'?><office:document-content {namespaces} xmlns:dc='http://purl.org/dc/elements/1.1/'"
        f" office:version='1.2'><office:body><office:text>{body}</office:text></office:body></office:document-content>"
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("mimetype", "application/vnd.oasis.opendocument.text", compress_type=zipfile.ZIP_STORED)
        out.writestr("content.xml", content)
    sections = extract_sections(archive.getvalue(), "survey.odt")
    assert [(section.heading, section.text.split("\n")) for section in sections] == [
        (
            ("Survey",),
            [
                "Survey",
                "The dunes moved.",
                "Sand samples were dry.",
                "Tide tables follow.",
                "Boxed: wind from the west.",
                "Cell text",
            ],
        )
    ], sections


def test_an_email_keeps_each_text_it_shows_and_the_message_it_forwards() -> None:
    """A body an inline picture splits in two, and a message forwarded as an attachment: their
    text was lost (only the first part was read). The HTML twin of a plain body is not read again,
    and an attached file is named, not read."""
    from email.message import EmailMessage

    forwarded = EmailMessage()
    forwarded["From"], forwarded["Subject"] = "harbour@example.org", "Berth 4 closed"
    forwarded.set_content("Berth 4 is closed for dredging until Friday.")
    message = EmailMessage()
    message["From"], message["Subject"] = "ops@example.org", "Fwd: Berth 4 closed"
    message.set_content("See the notice below.")
    message.add_alternative("<p>See the notice below.</p>", subtype="html")
    message.add_attachment(b"\x89PNG", maintype="image", subtype="png", filename="map.png", disposition="inline")
    message.add_attachment("Reroute the ferries to berth 6.", subtype="plain", disposition="inline")
    message.add_attachment(forwarded)
    message.add_attachment("raw log lines", subtype="plain", filename="log.txt")
    sections = extract_sections(bytes(message), "fwd.eml")
    assert [(section.heading, section.text) for section in sections] == [
        (
            ("Fwd: Berth 4 closed",),
            "From: ops@example.org\nSubject: Fwd: Berth 4 closed\n\nSee the notice below.\n\n"
            "Reroute the ferries to berth 6.\n\nForwarded message:\nFrom: harbour@example.org\n"
            "Subject: Berth 4 closed\n\nBerth 4 is closed for dredging until Friday.\n\n"
            "Attachments: map.png, log.txt",
        )
    ], sections


def test_a_notebook_reads_its_prose_code_and_what_it_printed() -> None:
    """Markdown cells give the headings (a code comment is no heading); code, printed text and an
    error's message are read; a picture and its text stand-in, a traceback's terminal colours are
    not."""
    sections = extract_sections((CORPUS / "analysis.ipynb").read_bytes(), "analysis.ipynb")
    assert [section.heading for section in sections] == [("Berth occupancy",), ("Berth occupancy", "Method")]
    assert sections[0].text.split("\n")[-4:] == [
        "# load the register",
        "berths = load('register.csv')",
        "print(len(berths))",
        "412",
    ]
    assert sections[1].text.split("\n")[-4:] == [
        "berths.plot()",
        "",
        "ratio = 1 / 0",
        "ZeroDivisionError: division by zero",
    ]
    assert not any(noise in sections[1].text for noise in ("iVBOR", "Figure", "\x1b"))


def test_an_old_notebook_and_a_long_output() -> None:
    """nbformat 3 (cells in worksheets, heading cells, "input", pyerr); an output is cut at
    MAX_OUTPUT_CHARS and loses its terminal colours; a progress bar shows its last state; a
    cell's rules (---) are no front matter and a pasted picture no text; what is not a notebook
    says so."""
    from semantik.indexing.formats.notebook import MAX_OUTPUT_CHARS

    log = "\x1b[32mepoch\x1b[0m done\n" * 2000
    old = {
        "nbformat": 3,
        "worksheets": [
            {
                "cells": [
                    {"cell_type": "heading", "level": 2, "source": ["Training"]},
                    {"cell_type": "code", "input": ["fit()"], "outputs": [{"output_type": "stream", "text": log}]},
                    {"cell_type": "code", "input": ["x"], "outputs": [{"output_type": "pyout", "text": ["42"]}]},
                    {
                        "cell_type": "code",
                        "input": "load()",
                        "outputs": [
                            {"output_type": "stream", "text": "loading  10%\rloading  60%\rloading 100%\n"},
                            {"output_type": "pyerr", "ename": "KeyError", "evalue": "'berth'", "traceback": []},
                        ],
                    },
                    {
                        "cell_type": "markdown",
                        "source": "---\n## Results\n\n![map](data:image/png;base64,iVBORw0KGgo=)\n\n---",
                    },
                ]
            }
        ],
    }
    sections = extract_sections(json.dumps(old).encode(), "old.ipynb")
    assert [section.heading for section in sections] == [("Training",), ("Results",)]  # (both level 2)
    lines = sections[0].text.split("\n")
    assert lines[:3] == ["Training", "fit()", "epoch done"]
    assert lines[-9:] == ["", "x", "42", "", "load()", "loading 100%", "KeyError: 'berth'", "", "---"], lines[-9:]
    assert sections[1].text.split("\n") == ["Results", "![map]()", "", "---"]
    printed = "\n".join(lines[2:-10])  # (the log, 30,000 characters as printed)
    assert MAX_OUTPUT_CHARS - 20 < len(printed) <= MAX_OUTPUT_CHARS and "\x1b" not in sections[0].text
    for data, reason in [
        (b'{"cells": [', "corrupt notebook"),
        (b"[" * 100_000 + b"]" * 100_000, "corrupt notebook"),
        (b'{"name": "not a notebook"}', "not a Jupyter notebook"),
    ]:
        with pytest.raises(ExtractionError, match=reason):
            extract_sections(data, "bad.ipynb")


def test_a_charts_words_are_read_in_slides_and_documents() -> None:
    """A chart's title, axis title, series names and category labels (each once), not its numbers:
    in a deck (python-pptx draws the chart) and in a Word document (the same chart part)."""
    from datetime import date

    from docx import Document
    from docx.opc.constants import RELATIONSHIP_TYPE
    from docx.opc.packuri import PackURI
    from docx.opc.part import Part
    from lxml import etree
    from pptx import Presentation
    from pptx.chart.data import CategoryChartData
    from pptx.enum.chart import XL_CHART_TYPE
    from pptx.util import Inches

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = "Cargo"
    data = CategoryChartData()  # type: ignore[no-untyped-call]
    data.categories = ["North quay", "South quay"]
    data.add_series("Containers", (12.0, 7.5))  # type: ignore[no-untyped-call]
    data.add_series("Bulk", (3.0, 4.5))  # type: ignore[no-untyped-call]
    frame = slide.shapes.add_chart(XL_CHART_TYPE.COLUMN_CLUSTERED, Inches(1), Inches(2), Inches(6), Inches(4), data)
    frame.chart.has_title = True
    frame.chart.chart_title.text_frame.text = "Tonnage by quay"
    frame.chart.value_axis.has_title = True
    frame.chart.value_axis.axis_title.text_frame.text = "Thousand tonnes"
    by_month = CategoryChartData()  # type: ignore[no-untyped-call]
    by_month.categories = [date(2026, 1, 1), date(2026, 2, 1)]  # numbers (dates) to Office: not words
    by_month.add_series("Tankers", (4.0, 5.0))  # type: ignore[no-untyped-call]
    second = deck.slides.add_slide(deck.slide_layouts[6])
    second.shapes.add_chart(XL_CHART_TYPE.LINE, Inches(1), Inches(1), Inches(6), Inches(4), by_month)
    saved = io.BytesIO()
    deck.save(saved)
    words = ["Tonnage by quay", "Thousand tonnes", "Containers | Bulk", "North quay | South quay"]
    sections = extract_sections(saved.getvalue(), "cargo.pptx")
    assert [(section.heading, section.text.split("\n")) for section in sections] == [
        (("Cargo",), ["Cargo", *words]),
        ((), ["Tankers"]),
    ]

    document = Document()
    document.add_paragraph("The figure shows the tonnage.")
    chart = Part(
        PackURI("/word/charts/chart1.xml"),
        "application/vnd.openxmlformats-officedocument.drawingml.chart+xml",
        frame.chart_part.blob,
        document.part.package,
    )
    rid = document.part.relate_to(chart, RELATIONSHIP_TYPE.CHART)
    drawing = (
        '<w:r xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:drawing>'
        '<wp:inline xmlns:wp="http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing">'
        '<a:graphic xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main">'
        '<a:graphicData uri="http://schemas.openxmlformats.org/drawingml/2006/chart">'
        '<c:chart xmlns:c="http://schemas.openxmlformats.org/drawingml/2006/chart" '
        f'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" r:id="{rid}"/>'
        "</a:graphicData></a:graphic></wp:inline></w:drawing></w:r>"
    )
    document.add_paragraph("Figure 1")._p.append(etree.fromstring(drawing))
    saved = io.BytesIO()
    document.save(saved)
    sections = extract_sections(saved.getvalue(), "report.docx")
    assert [section.text.split("\n") for section in sections] == [["The figure shows the tonnage.", "Figure 1", *words]]


def test_a_slides_smartart_text_is_read() -> None:
    """A SmartArt diagram keeps its text in a part of its own (the diagram's data), which
    python-pptx does not read: a process drawn as SmartArt was lost from search."""
    from lxml import etree
    from pptx import Presentation
    from pptx.opc.constants import RELATIONSHIP_TYPE
    from pptx.opc.package import Part
    from pptx.opc.packuri import PackURI

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = "Release process"
    a = "http://schemas.openxmlformats.org/drawingml/2006/main"
    dgm = "http://schemas.openxmlformats.org/drawingml/2006/diagram"
    points = "".join(
        f"<dgm:pt modelId='{n}'><dgm:t><a:bodyPr/><a:p><a:r><a:t>{text}</a:t></a:r></a:p></dgm:t></dgm:pt>"
        for n, text in enumerate(["Freeze the branch", "Run the soak tests", "Tag and announce"], start=1)
    )
    data = f"<dgm:dataModel xmlns:dgm='{dgm}' xmlns:a='{a}'><dgm:ptLst>{points}</dgm:ptLst></dgm:dataModel>"
    part = Part(
        PackURI("/ppt/diagrams/data1.xml"),
        "application/vnd.openxmlformats-officedocument.drawingml.diagramData+xml",
        deck.part.package,
        data.encode(),
    )
    rid = slide.part.relate_to(part, RELATIONSHIP_TYPE.DIAGRAM_DATA)
    frame = (
        "<p:graphicFrame xmlns:p='http://schemas.openxmlformats.org/presentationml/2006/main'"
        f" xmlns:a='{a}' xmlns:r='http://schemas.openxmlformats.org/officeDocument/2006/relationships'>"
        "<p:nvGraphicFramePr><p:cNvPr id='9' name='Diagram'/><p:cNvGraphicFramePr/><p:nvPr/></p:nvGraphicFramePr>"
        "<p:xfrm><a:off x='0' y='0'/><a:ext cx='100' cy='100'/></p:xfrm>"
        f"<a:graphic><a:graphicData uri='{dgm}'><dgm:relIds xmlns:dgm='{dgm}' r:dm='{rid}' r:lo='' r:qs='' r:cs=''/>"
        "</a:graphicData></a:graphic></p:graphicFrame>"
    )
    slide.shapes._spTree.append(etree.fromstring(frame))
    saved = io.BytesIO()
    deck.save(saved)
    sections = extract_sections(saved.getvalue(), "release.pptx")
    assert [(section.slide, section.heading, section.text) for section in sections] == [
        (1, ("Release process",), "Release process\nFreeze the branch\nRun the soak tests\nTag and announce")
    ], sections


def test_a_mailbox_splits_only_at_separators_and_keeps_a_broken_message() -> None:
    box = (
        b"From a@example.org Mon Mar  2 08:00:00 2026\nSubject: one\n\nhello\nFrom the desk of the office\n\n"
        b"From b@example.org Tue Mar  3 08:00:00 2026\nSubject: two\nContent-Type: text/plain; charset=bogus\n\n"
        b"bye \x00 now\n"
    )
    sections = extract_sections(box, "box.mbox")
    assert [section.heading for section in sections] == [("one",), ("two",)], sections
    assert "From the desk of the office" in sections[0].text and "bye  now" in sections[1].text


def test_snippet_offsets_count_characters() -> None:
    from semantik.web.snippets import snippet

    passage, highlights = snippet(
        "\U0001f600\U0001f600 the measurement of tides, then more measurements", "measurement"
    )
    assert [passage[start:end] for start, end in highlights] == ["measurement", "measurements"]


def test_a_sheet_declaring_a_million_rows_is_read_as_stored() -> None:
    import io
    import time

    from openpyxl import Workbook

    book = Workbook()
    book.active["A1"] = "harbour ledger"
    book.active["XFD1048576"] = "last cell"
    data = io.BytesIO()
    book.save(data)
    began = time.monotonic()
    sections = extract_sections(data.getvalue(), "big.xlsx")
    assert [section.text for section in sections] == ["harbour ledger\nlast cell"]
    assert time.monotonic() - began < 10  # padded to its declared size it took minutes


async def test_the_cli_prints_where_each_hit_is_and_takes_the_filters(
    aiohttp_server: Any, api: TestClient[Any, Any], runtime: Any, docs: Path,
    run_worker: Callable[[], Awaitable[Any]],
) -> None:  # fmt: skip
    from semantik.web.app import create_app
    from tests.test_search_modes import run_cli

    for name in ("report.pdf", "report.docx", "slides.pptx", "notes.md"):
        folder = docs / ("office" if name.endswith("x") else "")
        folder.mkdir(exist_ok=True)
        shutil.copyfile(CORPUS / name, folder / name)
    job_id = await new_job(api, docs, "docs")
    await run_worker()
    assert (await wait_for_job(api, job_id))["status"] == "completed"
    server = await aiohttp_server(create_app(runtime.settings, runtime=runtime))
    url = f"http://{server.host}:{server.port}"

    code, out, err = await run_cli("search", "teal pangolin survey", "-c", "docs", "-k", "2", url=url)
    assert code == 0, (out, err)
    ranked = [line for line in out.splitlines() if line[:1].isdigit()]
    assert ranked[0].startswith("1. ") and f"{docs / 'report.pdf'} · p. 2 · Results \u203a Measurements" in ranked[0]
    assert "teal pangolin survey" in out

    code, out, err = await run_cli(
        "search", "harbour inspection", "-c", "docs", "--type", "docx", "--type", ".pptx", "--by-document",
        "--under", str(docs / "office"), "--after", "2000-01-01", url=url,
    )  # fmt: skip
    assert code == 0, (out, err)
    ranked = [line for line in out.splitlines() if line[:1].isdigit()]
    assert ranked and all("/office/" in line and (".docx" in line or ".pptx" in line) for line in ranked), out
    assert len({line.split()[2] for line in ranked}) == len(ranked), out  # one line per document
    assert any("more in this document)" in line for line in ranked), out

    code, out, err = await run_cli("search", "x", "-c", "docs", "--before", "last week", url=url)
    assert code == 2 and "--before" in err and "not an ISO date" in err, (code, out, err)
