"""Make the document corpus in this folder with real tools: LibreOffice (headless) converts flat
OpenDocument sources written here into the formats teams keep; the standard library writes the
e-mail; Pillow draws the scans. The generated files are committed; run this only to change them:

    apt-get install libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui
    pip install msoffcrypto-tool  # (it puts a password on a copy of the .docx)
    python tests/corpus/make.py

Each file carries one phrase no other file has (``PHRASES``), at a known place (``EXPECTED``):
the tests search for it and check that its file comes first, at that page, slide, sheet or heading.
"""

from __future__ import annotations

import email.message
import email.utils
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# file name -> (phrase, where it is). Locations use the API's names.
EXPECTED: dict[str, dict[str, object]] = {
    "report.docx": {"phrase": "amber walrus inventory", "heading": ["Results", "Measurements"]},
    "report.odt": {"phrase": "cobalt heron ledger", "heading": ["Results", "Measurements"]},
    "report.rtf": {"phrase": "saffron lynx timetable", "heading": []},
    "report.epub": {"phrase": "violet narwhal census", "heading": ["Results"]},
    "report.pdf": {"phrase": "teal pangolin survey", "page": 2, "heading": ["Results", "Measurements"]},
    "slides.pptx": {"phrase": "crimson ibex roadmap", "slide": 2, "heading": ["Next quarter"]},
    "slides.odp": {"phrase": "golden marmot budget", "slide": 2, "heading": ["Next quarter"]},
    "sheet.xlsx": {"phrase": "indigo tapir shipment", "sheet": "Inventory"},
    "sheet.ods": {"phrase": "scarlet gecko invoice", "sheet": "Inventory"},
    "notes.md": {"phrase": "silver okapi checklist", "heading": ["Operations handbook", "Deployment", "Rollback"]},
    "page.html": {"phrase": "emerald quokka itinerary", "heading": ["Results", "Measurements"]},
    "message.eml": {"phrase": "russet axolotl contract", "heading": ["Renewal of the harbour lease"]},
    "archive.mbox": {"phrase": "ochre manatee shipment", "heading": ["Second delivery window"]},
    "tool.py": {"phrase": "magenta bison parser", "heading": []},
    "settings.yaml": {"phrase": "azure lemur threshold", "heading": []},
    "scan.pdf": {"phrase": "harbour crane maintenance", "page": 1, "ocr": True},
    "scan.png": {"phrase": "harbour crane maintenance", "ocr": True},
    # Word, Excel and PowerPoint 97-2003, and Office Open XML's templates, macro-enabled files and slide shows.
    "report.doc": {"phrase": "maroon kestrel audit", "heading": ["Results", "Measurements"]},
    "report.dotx": {"phrase": "olive tortoise rota", "heading": ["Results", "Measurements"]},
    "sheet.xls": {"phrase": "umber jackal manifest", "sheet": "Inventory"},
    "sheet.xlsm": {"phrase": "cerise badger tally", "sheet": "Inventory"},
    "slides.ppsx": {"phrase": "khaki puffin forecast", "slide": 2, "heading": ["Next quarter"]},
    "slides.ppt": {"phrase": "plum ocelot drill", "slide": 2, "heading": ["Next quarter"]},
    "analysis.ipynb": {"phrase": "mauve heron sampling", "heading": ["Berth occupancy", "Method"]},
}
# Made here too, but not searched for: a Word 97 file with what only a careful reader gets right (see
# tests/test_documents.py).
WORD97_FEATURES = "features.doc"
# report.docx with the password "harbour", as Office encrypts it (a compound file holding the package).
LOCKED = "locked.docx"
# A workbook of dates, numbers, booleans and an error, as Excel 97-2003 and as .xlsx: the two read alike.
SHEET_TWINS = ("values.xls", "values.xlsx")

NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:xlink="http://www.w3.org/1999/xlink" '
    'xmlns:number="urn:oasis:names:tc:opendocument:xmlns:datastyle:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:fo="urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0" office:version="1.3"'
)

FILLER = (
    "The harbour authority reviews its equipment every spring. Inspectors walk the quay, record the "
    "condition of each bollard and crane, and file their notes with the operations office before the "
    "summer traffic begins. Findings that need repair are ranked by risk, and the ranking decides the "
    "order in which crews are sent out."
)


def writer_source(phrase: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<office:document {NS} office:mimetype="application/vnd.oasis.opendocument.text">
<office:styles>
<style:style style:name="Heading" style:family="paragraph" style:class="text"/>
<style:style style:name="Heading_20_1" style:display-name="Heading 1" style:family="paragraph"
 style:parent-style-name="Heading" style:default-outline-level="1" style:class="text"/>
<style:style style:name="Heading_20_2" style:display-name="Heading 2" style:family="paragraph"
 style:parent-style-name="Heading" style:default-outline-level="2" style:class="text"/>
</office:styles>
<office:automatic-styles>
<style:style style:name="Break" style:family="paragraph" style:parent-style-name="Heading_20_1">
<style:paragraph-properties fo:break-before="page"/></style:style>
<style:style style:name="Justified" style:family="paragraph">
<style:paragraph-properties fo:text-align="justify"/></style:style>
</office:automatic-styles>
<office:body><office:text>
<text:h text:style-name="Heading_20_1" text:outline-level="1">Introduction</text:h>
<text:p text:style-name="Justified">{FILLER}</text:p>
<text:p text:style-name="Justified">This report covers the spring inspection of the northern quay and the
changes made to the maintenance schedule since the last review.</text:p>
<text:h text:style-name="Break" text:outline-level="1">Results</text:h>
<text:p text:style-name="Justified">{FILLER}</text:p>
<text:h text:style-name="Heading_20_2" text:outline-level="2">Measurements</text:h>
<text:p text:style-name="Justified">During the second week the crews completed the {phrase} for the
eastern berths, and every reading was entered into the register the same afternoon.</text:p>
</office:text></office:body></office:document>
"""


def features_source() -> str:
    """A document with a title, a table of contents, a hyperlink, a page-number field, a footnote,
    characters beyond 16 bits, a table (one cell of two paragraphs, one holding a table) and a
    section break."""
    cell = '<table:table-cell office:value-type="string">{}</table:table-cell>'

    def row(*cells: str) -> str:
        inner = "".join(cell.format(f"<text:p>{text}</text:p>") for text in cells)
        return f"<table:table-row>{inner}</table:table-row>"

    ships = "\U0001f6a2" * 20  # each two positions in a .doc's UTF-16 text
    spares = (
        '<table:table table:name="Spares"><table:table-column table:number-columns-repeated="2"/>'
        f"{row('Cable', '2')}{row('Hook', '1')}</table:table>"
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<office:document {NS} office:mimetype="application/vnd.oasis.opendocument.text">
<office:styles>
<style:style style:name="Heading_20_1" style:display-name="Heading 1" style:family="paragraph"
 style:default-outline-level="1" style:class="text"/>
<style:style style:name="Heading_20_2" style:display-name="Heading 2" style:family="paragraph"
 style:default-outline-level="2" style:class="text"/>
<style:style style:name="Title" style:family="paragraph" style:class="chapter"/>
</office:styles>
<office:automatic-styles>
<style:style style:name="Columns" style:family="section"><style:section-properties>
<style:columns fo:column-count="2" fo:column-gap="0.5cm"/></style:section-properties></style:style>
</office:automatic-styles>
<office:body><office:text>
<text:p text:style-name="Title">Harbour records</text:p>
<text:table-of-content text:name="Contents"><text:table-of-content-source text:outline-level="2"/>
<text:index-body><text:p>Berth survey 1</text:p><text:p>Crane ledger 2</text:p></text:index-body>
</text:table-of-content>
<text:h text:style-name="Heading_20_1" text:outline-level="1">Berth survey</text:h>
<text:p>Read the <text:a xlink:type="simple" xlink:href="https://harbour.example/rules">quay rules</text:a>
first.<text:note text:id="n1" text:note-class="footnote"><text:note-citation>1</text:note-citation>
<text:note-body><text:p>Revised by the pilots in March.</text:p></text:note-body></text:note></text:p>
<text:p>This is page <text:page-number text:select-page="current">1</text:page-number> of the survey.</text:p>
<text:h text:style-name="Heading_20_2" text:outline-level="2">Crane ledger</text:h>
<text:p>Marks used: {ships} for ships.</text:p>
<table:table table:name="Ledger"><table:table-column table:number-columns-repeated="3"/>
{row("Crane", "Load", "Status")}{row("Crane 4", "40 t", "cable worn")}
<table:table-row>{cell.format("<text:p>Crane 7</text:p>")}{cell.format("<text:p>25 t</text:p>")}\
{cell.format("<text:p>first line</text:p><text:p>second line</text:p>")}</table:table-row>
<table:table-row>{cell.format("<text:p>Spares</text:p>")}{cell.format("<text:p>stock</text:p>")}\
{cell.format(spares)}</table:table-row>
</table:table>
<text:p>After the table.</text:p>
<text:section text:style-name="Columns" text:name="Appendix">
<text:h text:style-name="Heading_20_1" text:outline-level="1">Appendix</text:h>
<text:p>Tide tables are kept by the harbour master.</text:p>
</text:section>
</office:text></office:body></office:document>
"""


def values_source() -> str:
    def cell(kind: str, shown: str, **value: str) -> str:
        attributes = "".join(f' office:{key.replace("_", "-")}="{item}"' for key, item in value.items())
        kind_attribute = f' office:value-type="{kind}"' if kind else ""
        return f"<table:table-cell{kind_attribute}{attributes}><text:p>{shown}</text:p></table:table-cell>"

    def row(*cells: str) -> str:
        return f"<table:table-row>{''.join(cells)}</table:table-row>"

    header = row(*(cell("string", name) for name in ("Day", "Cranes", "Load", "Checked", "Ratio")))
    values = row(
        cell("date", "2026-03-02", date_value="2026-03-02").replace(
            "<table:table-cell", '<table:table-cell table:style-name="day"', 1
        ),
        cell("float", "12", value="12"),
        cell("float", "2.5", value="2.5"),
        cell("boolean", "TRUE", boolean_value="true"),
        '<table:table-cell table:formula="of:=1/0"><text:p>#DIV/0!</text:p></table:table-cell>',
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<office:document {NS} office:mimetype="application/vnd.oasis.opendocument.spreadsheet">
<office:automatic-styles>
<number:date-style style:name="iso"><number:year number:style="long"/><number:text>-</number:text>
<number:month number:style="long"/><number:text>-</number:text><number:day number:style="long"/></number:date-style>
<style:style style:name="day" style:family="table-cell" style:data-style-name="iso"/>
</office:automatic-styles>
<office:body><office:spreadsheet>
<table:table table:name="Readings">{header}{values}</table:table>
<table:table table:name="Empty"/>
<table:table table:name="Notes">{row(cell("string", "Crane 4"), cell("string", "needs new cable"))}</table:table>
</office:spreadsheet></office:body></office:document>
"""


def make_locked(source: Path, target: Path) -> None:
    from msoffcrypto.format.ooxml import OOXMLFile

    with source.open("rb") as plain, target.open("wb") as locked:
        OOXMLFile(plain).encrypt("harbour", locked)


def make_notebook(phrase: str, target: Path) -> None:
    """A Jupyter notebook (nbformat 4) as Jupyter writes it: markdown and code cells, with a
    stream output, a result with a picture beside its text, and an error."""

    def markdown(text: str) -> dict[str, object]:
        return {"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)}

    def code(number: int, text: str, *outputs: dict[str, object]) -> dict[str, object]:
        source = text.splitlines(keepends=True)
        return {"cell_type": "code", "execution_count": number, "metadata": {}, "source": source, "outputs": outputs}

    figure = {
        "image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk",
        "text/plain": ["<Figure size 640x480>"],
    }
    rule = "\u001b[0;31m" + "-" * 75 + "\u001b[0m"  # (a traceback's first line, in red)
    cells = [
        markdown("# Berth occupancy\n\nWho used which berth."),
        code(
            1,
            "# load the register\nberths = load('register.csv')\nprint(len(berths))",
            {"output_type": "stream", "name": "stdout", "text": ["412\n"]},
        ),
        markdown(f"## Method\n\nThe {phrase} covers every tide."),
        code(2, "berths.plot()", {"output_type": "display_data", "metadata": {}, "data": figure}),
        code(
            3,
            "ratio = 1 / 0",
            {"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": [rule]},
        ),
    ]
    for number, cell in enumerate(cells):
        cell["id"] = f"cell-{number}"
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3"}}, "cells": cells}
    target.write_text(json.dumps(notebook, indent=1) + "\n")


def make_slides(phrase: str, target: Path, *, extras: bool = False) -> None:
    """A deck with real title placeholders (python-pptx's default template), three slides; with
    ``extras``, the last one also has a text box of its own and speaker notes."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for title, body in [
        ("Quarterly review", "Traffic at the quay grew in every month of the quarter."),
        ("Next quarter", f"The {phrase} is approved and starts in April."),
        ("Questions", "Ask the operations office."),
    ]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])  # title and content
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    if extras:
        box = slide.shapes.add_textbox(Inches(1), Inches(6), Inches(6), Inches(1))
        box.text_frame.text = "Berth 9 stays closed until June."
        slide.notes_slide.notes_text_frame.text = "Mention the pilots' new schedule."
    deck.save(str(target))


def sheets_source(phrase: str) -> str:
    def row(*cells: str) -> str:
        inner = "".join(
            f'<table:table-cell office:value-type="string"><text:p>{cell}</text:p></table:table-cell>' for cell in cells
        )
        return f"<table:table-row>{inner}</table:table-row>"

    return f"""<?xml version="1.0" encoding="UTF-8"?>
<office:document {NS} office:mimetype="application/vnd.oasis.opendocument.spreadsheet">
<office:body><office:spreadsheet>
<table:table table:name="Summary">{row("Region", "Berths", "Status")}{row("North", "12", "inspected")}</table:table>
<table:table table:name="Inventory">{row("Item", "Note")}{row("Crane 4", "needs new cable")}
{row("Berth 7", f"{phrase} delayed to May")}</table:table>
</office:spreadsheet></office:body></office:document>
"""


def soffice(source: Path, target_format: str, out_dir: Path) -> Path:
    subprocess.run(
        ["soffice", "--headless", "--convert-to", target_format, "--outdir", str(out_dir), str(source)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    produced = sorted(out_dir.glob(source.stem + ".*"), key=lambda p: p.stat().st_mtime)
    produced = [p for p in produced if p != source]
    return produced[-1]


def convert(source_text: str, suffix: str, conversions: dict[str, str], work: Path) -> None:
    for name, target_format in conversions.items():
        source = work / f"{Path(name).stem}-{Path(name).suffix[1:]}{suffix}"
        source.write_text(source_text.replace("{PHRASE}", str(EXPECTED[name]["phrase"])))
        out = soffice(source, target_format, work)
        shutil.copyfile(out, HERE / name)


def mail(subject: str, body: str, when: str) -> email.message.EmailMessage:
    message = email.message.EmailMessage()
    message["From"] = "Harbour Office <office@harbour.example>"
    message["To"] = "crews@harbour.example"
    message["Subject"] = subject
    message["Date"] = when
    message.set_content(body)
    return message


def scans() -> None:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 40)
    image = Image.new("L", (1700, 400), 255)
    draw = ImageDraw.Draw(image)
    draw.text((80, 100), "Scheduled work: harbour crane maintenance", font=font, fill=0)
    draw.text((80, 200), "on the eastern berths next Tuesday.", font=font, fill=0)
    image.save(HERE / "scan.png")
    image.save(HERE / "scan.pdf", resolution=150)  # an image and no text layer, as a scanner makes


def main() -> None:
    if shutil.which("soffice") is None:
        sys.exit(
            "needs LibreOffice: apt-get install libreoffice-writer-nogui libreoffice-calc-nogui"
            " libreoffice-impress-nogui"
        )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        writer = writer_source("{PHRASE}")
        convert(writer, ".fodt", {
            "report.docx": "docx:MS Word 2007 XML",
            "report.doc": "doc:MS Word 97",
            "report.dotx": "dotx:MS Word 2007 XML Template",
            "report.odt": "odt",
            "report.rtf": "rtf",
            "report.epub": "epub",
            "report.pdf": "pdf:writer_pdf_Export",
        }, work)  # fmt: skip
        make_slides(str(EXPECTED["slides.pptx"]["phrase"]), HERE / "slides.pptx")
        make_slides(str(EXPECTED["slides.odp"]["phrase"]), work / "slides.pptx")
        shutil.copyfile(soffice(work / "slides.pptx", "odp", work), HERE / "slides.odp")
        make_slides(str(EXPECTED["slides.ppsx"]["phrase"]), work / "show.pptx")
        show = soffice(work / "show.pptx", "ppsx:Impress MS PowerPoint 2007 XML AutoPlay", work)
        shutil.copyfile(show, HERE / "slides.ppsx")
        make_slides(str(EXPECTED["slides.ppt"]["phrase"]), work / "old.pptx", extras=True)
        shutil.copyfile(soffice(work / "old.pptx", "ppt:MS PowerPoint 97", work), HERE / "slides.ppt")
        convert(sheets_source("{PHRASE}"), ".fods", {
            "sheet.xlsx": "xlsx",
            "sheet.ods": "ods",
            "sheet.xls": "xls:MS Excel 97",
            "sheet.xlsm": "xlsm:Calc MS Excel 2007 VBA XML",
        }, work)  # fmt: skip
        (work / "features.fodt").write_text(features_source())
        (work / "values.fods").write_text(values_source())
        for twin, target_format in zip(SHEET_TWINS, ("xls:MS Excel 97", "xlsx"), strict=True):
            shutil.copyfile(soffice(work / "values.fods", target_format, work), HERE / twin)
        shutil.copyfile(soffice(work / "features.fodt", "doc:MS Word 97", work), HERE / WORD97_FEATURES)
    phrase = {name: str(spec["phrase"]) for name, spec in EXPECTED.items()}
    (HERE / "notes.md").write_text(
        "# Operations handbook\n\nHow the harbour office runs its systems.\n\n"
        f"## Deployment\n\n{FILLER}\n\n### Rollback\n\nIf a release fails, follow the {phrase['notes.md']} "
        "and restore the previous version.\n\n## Contacts\n\nThe operations office answers on weekdays.\n"
    )
    (HERE / "page.html").write_text(
        "<!doctype html><html><head><title>Spring inspection</title></head><body>"
        f"<h1>Introduction</h1><p>{FILLER}</p><h1>Results</h1><p>{FILLER}</p>"
        f"<h2>Measurements</h2><p>The <em>{phrase['page.html']}</em> was entered in the register.</p>"
        "<pre><code><span>python3</span> <span>-m</span> <span>venv</span> env</code></pre></body></html>\n"
    )
    first = mail(
        "Renewal of the harbour lease",
        f"Dear crews,\n\nthe {phrase['message.eml']} is signed until 2030.\n\nThe office\n",
        "Tue, 03 Mar 2026 09:00:00 +0000",
    )
    (HERE / "message.eml").write_bytes(bytes(first))
    box = [
        mail("First delivery window", "Deliveries arrive on Mondays from now on.\n", "Mon, 02 Mar 2026 08:00:00 +0000"),
        mail(
            "Second delivery window",
            f"The {phrase['archive.mbox']} moves to Thursday.\n",
            "Wed, 04 Mar 2026 08:00:00 +0000",
        ),
    ]
    (HERE / "archive.mbox").write_bytes(
        b"".join(b"From office@harbour.example Mon Mar  2 08:00:00 2026\n" + bytes(m) + b"\n" for m in box)
    )
    (HERE / "tool.py").write_text(
        f'"""Read the berth register: the {phrase["tool.py"]} lives here."""\n\n\n'
        "def berths(register: dict[str, int]) -> list[str]:\n    return sorted(register)\n"
    )
    (HERE / "settings.yaml").write_text(
        f"# quay alarms\nalarm:\n  # the {phrase['settings.yaml']} for wind speed, in m/s\n  wind: 24\n"
    )
    scans()
    make_notebook(phrase["analysis.ipynb"], HERE / "analysis.ipynb")
    make_locked(HERE / "report.docx", HERE / LOCKED)
    (HERE / "expected.json").write_text(json.dumps(EXPECTED, indent=1) + "\n")


if __name__ == "__main__":
    main()
