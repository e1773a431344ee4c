"""Make the document corpus in this folder with real tools: LibreOffice (headless) converts flat
OpenDocument sources written here into the formats teams keep; the standard library writes the
e-mail; Pillow draws the scans. The generated files are committed; run this only to change them:

    apt-get install libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui
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
}

NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
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


def make_slides(phrase: str, target: Path) -> None:
    """A deck with real title placeholders (python-pptx's default template), three slides."""
    from pptx import Presentation

    deck = Presentation()
    for title, body in [
        ("Quarterly review", "Traffic at the quay grew in every month of the quarter."),
        ("Next quarter", f"The {phrase} is approved and starts in April."),
        ("Questions", "Ask the operations office."),
    ]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])  # title and content
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
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
            "report.odt": "odt",
            "report.rtf": "rtf",
            "report.epub": "epub",
            "report.pdf": "pdf:writer_pdf_Export",
        }, work)  # fmt: skip
        make_slides(str(EXPECTED["slides.pptx"]["phrase"]), HERE / "slides.pptx")
        make_slides(str(EXPECTED["slides.odp"]["phrase"]), work / "slides.pptx")
        shutil.copyfile(soffice(work / "slides.pptx", "odp", work), HERE / "slides.odp")
        convert(sheets_source("{PHRASE}"), ".fods", {"sheet.xlsx": "xlsx", "sheet.ods": "ods"}, work)
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
    (HERE / "expected.json").write_text(json.dumps(EXPECTED, indent=1) + "\n")


if __name__ == "__main__":
    main()
