"""Each extractor on a real small file of its format, generated here."""

from __future__ import annotations

import io

import docx
import pytest
from fpdf import FPDF

from semantik.indexing.extract import ExtractionError, extract_text, read_file


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
    assert extract_text(b"\xef\xbb\xbf# Title\n\nBody", ".md") == "# Title\n\nBody"  # BOM dropped


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


def test_read_file_hashes_content(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "a.txt"  # type: ignore[operator]
    path.write_bytes(b"abc")
    data, digest = read_file(path)
    assert data == b"abc"
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ExtractionError, match="cannot read"):
        read_file(path.parent / "missing.txt")
