"""Each extractor on a real small file of its format, and each limit on a real hostile file, all
generated here (``tests/test_sandbox.py`` runs the same hostile files through the extraction processes)."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import docx
import pytest
from fpdf import FPDF

from semantik.indexing.extract import (
    ExtractionError,
    ExtractLimits,
    check_zip_container,
    extract_text,
    read_file,
)

MB = 1024 * 1024


def make_pdf(pages: list[str]) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def make_docx(paragraphs: list[str], table: list[list[str]]) -> bytes:
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    grid = document.add_table(rows=len(table), cols=len(table[0]))
    for r, row in enumerate(table):
        for col, cell in enumerate(row):
            grid.cell(r, col).text = cell
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_plain_text_and_markdown() -> None:
    assert extract_text("héllo wörld\n\n\n\n\nnext".encode(), ".txt") == "héllo wörld\n\nnext"
    assert extract_text(b"\xef\xbb\xbf# Title\n\nBody", ".md") == "Title\nBody"  # BOM (and heading marks) dropped


def test_legacy_encoding_is_detected() -> None:
    text = "Le café crème coûte très cher à Paris, déjà à l'été."
    assert extract_text(text.encode("cp1252"), ".txt") == text
    russian = "Съешь же ещё этих мягких французских булок, да выпей чаю. Широкая электрификация южных губерний."
    assert extract_text(russian.encode("cp1251"), ".txt") == russian


def test_binary_text_file_fails_with_reason() -> None:
    with pytest.raises(ExtractionError, match="binary"):
        extract_text(b"\x00\x01\x02 junk", ".txt")


def test_html_keeps_text_drops_scripts() -> None:
    html = (
        b"<html><head><title>Guide</title><style>p{color:red}</style></head>"
        b"<body><h1>Install</h1><p>Run the installer &amp; reboot.</p><script>alert('x')</script></body></html>"
    )
    text = extract_text(html, ".html")
    assert "Install" in text and "Run the installer & reboot." in text and "Guide" in text
    assert "alert" not in text and "color" not in text


def test_pdf_pages() -> None:
    data = make_pdf(["First page about glaciers.", "Second page about volcanoes."])
    text = extract_text(data, ".pdf")
    assert "glaciers" in text and "volcanoes" in text
    assert text.index("glaciers") < text.index("volcanoes")


def test_corrupt_pdf_fails_with_reason() -> None:
    with pytest.raises(ExtractionError, match="PDF"):
        extract_text(b"%PDF-1.4\ngarbage without objects", ".pdf")


def test_docx_paragraphs_and_tables() -> None:
    data = make_docx(["Quarterly report", "Revenue grew in the north."], [["Region", "Sales"], ["North", "42"]])
    text = extract_text(data, ".docx")
    assert "Quarterly report" in text and "Revenue grew in the north." in text
    assert "North | 42" in text


def test_corrupt_docx_fails_with_reason() -> None:
    with pytest.raises(ExtractionError, match="DOCX"):
        extract_text(b"PK\x03\x04 not a zip", ".docx")


def read(path: Path | str | bytes, roots: list[Path], max_bytes: int = MB) -> bytes:
    return read_file(path, max_bytes=max_bytes, allowed_roots=roots).data


def test_read_file_hashes_content(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"abc")
    content = read_file(str(path), max_bytes=MB, allowed_roots=[tmp_path])
    assert content.data == b"abc"
    assert content.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content.real_path == str(path)
    with pytest.raises(ExtractionError, match="cannot read: No such file"):
        read(tmp_path / "missing.txt", [tmp_path])


def test_read_file_takes_names_that_are_not_utf8(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9.txt"
    with open(raw, "wb") as out:
        out.write(b"latin-1 name")
    assert read(raw, [tmp_path]) == b"latin-1 name"
    assert read(os.fsdecode(raw), [tmp_path]) == b"latin-1 name"  # str with surrogate escapes


def test_read_file_refuses_what_is_not_a_regular_file_inside_the_roots(tmp_path: Path) -> None:
    docs, outside = tmp_path / "docs", tmp_path / "outside"
    docs.mkdir()
    outside.mkdir()
    os.mkfifo(docs / "fifo.txt")  # opening it for reading would wait for a writer forever
    (docs / "zero.txt").symlink_to("/dev/zero")  # never ends
    (outside / "secret.txt").write_text("not for the index")
    (docs / "secret.txt").symlink_to(outside / "secret.txt")
    (docs / "folder.txt").mkdir()
    with pytest.raises(ExtractionError, match=r"not a regular file \(fifo\)"):
        read(docs / "fifo.txt", [docs])
    with pytest.raises(ExtractionError, match="outside the allowed roots"):
        read(docs / "zero.txt", [docs])
    with pytest.raises(ExtractionError, match=r"not a regular file \(character device\)"):
        read(docs / "zero.txt", [docs, Path("/dev")])
    with pytest.raises(ExtractionError, match="leads outside the allowed roots"):
        read(docs / "secret.txt", [docs])
    with pytest.raises(ExtractionError, match=r"not a regular file \(directory\)"):
        read(docs / "folder.txt", [docs])


def test_read_file_checks_the_size_it_opens(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * (MB + 1))
    with pytest.raises(ExtractionError, match=r"larger than the 1 MB limit \(SEMANTIK_MAX_FILE_SIZE_MB\)"):
        read(path, [tmp_path])
    assert len(read(path, [tmp_path], max_bytes=MB + 1)) == MB + 1


# --- hostile files ----------------------------------------------------------------------------------


def pdf_from_objects(objects: list[bytes]) -> bytes:
    """A PDF made of these objects (numbered from 1, the first is the catalog), with a true xref."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def flate_stream(data: bytes) -> bytes:
    packed = zlib.compress(data, 9)
    return b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(packed), packed)


FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def page_object(parent: int, contents: int, font: int) -> bytes:
    return (
        b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
        b" /Resources << /Font << /F1 %d 0 R >> >> >>" % (parent, contents, font)
    )


def page_tree_bomb_pdf(fanout: int = 300, declared_count: int | None = None) -> bytes:
    """A few KB: the root /Pages lists one /Pages node ``fanout`` times, which lists one page
    ``fanout`` times: fanout² pages (90,000) for pypdf to build and extract. ``declared_count``
    lets the root's /Count lie."""
    count = fanout * fanout if declared_count is None else declared_count
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join([b"3 0 R"] * fanout), count),
            b"<< /Type /Pages /Parent 2 0 R /Kids [%s] /Count %d >>" % (b" ".join([b"4 0 R"] * fanout), fanout),
            page_object(parent=3, contents=5, font=6),
            flate_stream(b"BT /F1 12 Tf 72 720 Td (Page of a page tree bomb) Tj ET"),
            FONT,
        ]
    )


def slow_pdf(pages: int, lines: int = 1400) -> bytes:
    """Valid ``pages`` pages that share one content stream of ``lines`` lines of 1,800 half-point
    characters each: a few KB on disk, and about a second of PDFium text extraction a page (2.5
    million characters), so a test that needs it to time out sets SEMANTIK_EXTRACT_MAX_CHARS high."""
    line = b"(" + b"ab " * 600 + b") Tj 0 -0.5 Td\n"
    content = b"BT /F1 0.5 Tf 1 790 Td\n" + line * lines + b"ET\n"
    kids = b" ".join(b"%d 0 R" % (5 + page) for page in range(pages))
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
            flate_stream(content),
            FONT,
            *[page_object(parent=2, contents=3, font=4) for _ in range(pages)],
        ]
    )


def docx_with_body(path: Path, body_xml: Iterable[bytes]) -> Path:
    """A valid DOCX (python-docx's own skeleton) whose word/document.xml body is ``body_xml``,
    streamed into the zip: a bomb never exists uncompressed, here or on disk."""
    skeleton = zipfile.ZipFile(io.BytesIO(make_docx(["x"], [["x"]])))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for item in skeleton.infolist():
            if item.filename != "word/document.xml":
                out.writestr(item, skeleton.read(item.filename))
                continue
            info = zipfile.ZipInfo("word/document.xml")
            info.compress_type = zipfile.ZIP_DEFLATED
            with out.open(info, "w", force_zip64=True) as document:
                document.write(
                    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w='
                    b'"http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
                )
                for piece in body_xml:
                    document.write(piece)
                document.write(b"</w:body></w:document>")
    return path


def zip_bomb_docx(path: Path, unzipped_mb: int) -> Path:
    """``unzipped_mb`` MB of empty paragraphs: about a thousandth of that on disk."""
    return docx_with_body(path, (b"<w:p/>" * (MB // 6) for _ in range(unzipped_mb)))


def test_zip_bomb_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    bomb = zip_bomb_docx(tmp_path / "bomb.docx", 64).read_bytes()
    assert len(bomb) < MB // 4
    with pytest.raises(ExtractionError, match=r"would unzip to more than 16 MB \(SEMANTIK_EXTRACT_MAX_UNZIPPED_MB\)"):
        extract_text(bomb, ".docx", ExtractLimits(max_unzipped_bytes=16 * MB))
    # Within the total, a member that inflates a thousandfold is still no document.
    with pytest.raises(ExtractionError, match=r"zip bomb: word/document.xml inflates \d+ times"):
        extract_text(bomb, ".docx", ExtractLimits(max_unzipped_bytes=128 * MB))


def test_the_zip_check_is_the_same_for_every_zip_container() -> None:
    archive = io.BytesIO()  # what a pptx, xlsx, odt or epub is made of
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("ppt/slides/slide1.xml", b"<p:sld/>" * (3 * MB // 8))
    with pytest.raises(ExtractionError, match="would unzip to more than 2 MB"):
        check_zip_container(archive.getvalue(), ExtractLimits(max_unzipped_bytes=2 * MB))
    with pytest.raises(ExtractionError, match="zip bomb"):
        check_zip_container(archive.getvalue(), ExtractLimits(max_unzipped_bytes=4 * MB))
    with pytest.raises(ExtractionError, match="corrupt zip"):
        check_zip_container(b"PK\x03\x04 not a zip", ExtractLimits())


@pytest.mark.parametrize("declared_count", [None, 1], ids=["true-count", "lying-count"])
def test_page_tree_bomb_fails_on_the_page_limit_at_once(declared_count: int | None) -> None:
    bomb = page_tree_bomb_pdf(declared_count=declared_count)
    assert len(bomb) < 8 * 1024
    with pytest.raises(ExtractionError, match=r"more than 5000 pages \(SEMANTIK_EXTRACT_MAX_PAGES\)"):
        extract_text(bomb, ".pdf")
    # The same tree within the limit is a document of many (identical) pages.
    small = page_tree_bomb_pdf(fanout=3)
    assert extract_text(small, ".pdf").count("Page of a page tree bomb") == 9


def test_page_tree_loop_is_corrupt() -> None:
    looped = pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R] /Count 1 >>",
        ]
    )
    with pytest.raises(ExtractionError, match="page tree loops"):
        extract_text(looped, ".pdf")


def test_text_longer_than_the_limit_fails() -> None:
    with pytest.raises(ExtractionError, match=r"more than 1000 characters of text \(SEMANTIK_EXTRACT_MAX_CHARS\)"):
        extract_text(b"word " * 300, ".txt", ExtractLimits(max_chars=1000))
    with pytest.raises(ExtractionError, match="more than 1000 characters"):
        extract_text(slow_pdf(pages=1, lines=10), ".pdf", ExtractLimits(max_chars=1000))


def test_a_parser_exception_is_a_reason() -> None:
    # A catalog whose /Pages is a number: pypdf stumbles, the file fails with what happened.
    broken = pdf_from_objects([b"<< /Type /Catalog /Pages 7 >>"])
    with pytest.raises(ExtractionError, match="PDF"):
        extract_text(broken, ".pdf")


def test_html_inline_markup_and_code_blocks_stay_whole() -> None:
    """Syntax highlighting wraps every token in a <span>: the text must still read as written."""
    html = (
        b'<html><body><p>Run <code><span class="pre">python3</span> <span class="pre">-m</span>'
        b' <span class="pre">venv</span> <span class="pre">tutorial-env</span></code> first.</p>'
        b'<div class="highlight"><pre><span class="gp">&gt;&gt;&gt; </span><span class="p">[</span>'
        b'<span class="mi">1</span><span class="p">,</span> <span class="mi">2</span><span class="p">]</span>\n'
        b"<span>for</span> x <span>in</span> y:\n    <span>pass</span></pre></div>"
        b"<ul><li>first</li><li>second</li></ul><p>one<br>two</p>"
        b"<table><tr><th>Region</th><th>Sales</th></tr><tr><td>North</td><td>42</td></tr></table></body></html>"
    )
    text = extract_text(html, ".html")
    assert "Run python3 -m venv tutorial-env first." in text
    assert ">>> [1, 2]\nfor x in y:\n    pass" in text  # a code block keeps its lines and indentation
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert {"first", "second", "one", "two"} <= set(lines)  # blocks and <br> still break lines
    assert "North 42" in text
