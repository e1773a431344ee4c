"""Extraction speed per format with the chosen libraries, and the candidates compared.

    python bench/extract.py [--docs 400] [--compare]

Builds a corpus from NFCorpus abstracts (real prose) in every format the product reads: PDF (fpdf2),
docx, pptx, xlsx, epub, eml, mbox, html, md, txt and rtf (written here), odt/ods/odp and doc/xls/ppt
(LibreOffice converts the docx/xlsx/pptx when ``soffice`` is installed), plus every PDF under
/usr/share/doc (real manuals). Each file goes through ``extract_sections`` in this process, one at a
time, as one extraction process does. Prints per format: files, MB, pages (PDF pages, slides,
sheets), seconds, MB/s, pages/s, characters/s. ``--compare`` runs the candidates on the same files: pypdf against
PDFium for PDF; markitdown, kreuzberg and inscriptis where installed (they are not dependencies).
Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import email.message
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import NFCORPUS, load_corpus
from semantik.indexing.extract import ExtractLimits, extract_sections

PER_FILE = 20  # abstracts per generated file


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def make_corpus(root: Path, docs: list[dict[str, Any]]) -> dict[str, list[Path]]:
    from docx import Document
    from ebooklib import epub
    from fpdf import FPDF
    from openpyxl import Workbook
    from pptx import Presentation

    groups = [docs[i : i + PER_FILE] for i in range(0, len(docs), PER_FILE)]
    made: dict[str, list[Path]] = {}

    def out(kind: str, n: int) -> Path:
        path = root / kind / f"doc{n:04d}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        made.setdefault(kind, []).append(path)
        return path

    def clean(text: str) -> str:
        return text.encode("latin-1", "replace").decode("latin-1")  # fpdf2's core fonts are latin-1

    for n, group in enumerate(groups):
        pdf = FPDF()
        pdf.set_font("Helvetica", size=11)
        for doc in group:
            pdf.add_page()
            pdf.multi_cell(0, 6, clean(f"{doc['title']}\n\n{doc['text']}"))
        pdf.output(str(out("pdf", n)))
        document = Document()
        for doc in group:
            document.add_heading(doc["title"][:200], level=1)
            document.add_paragraph(doc["text"])
        document.save(str(out("docx", n)))
        deck = Presentation()
        for doc in group:
            slide = deck.slides.add_slide(deck.slide_layouts[1])
            slide.shapes.title.text = doc["title"][:200]
            slide.placeholders[1].text = doc["text"]
        deck.save(str(out("pptx", n)))
        book = Workbook()
        sheet = book.active
        for doc in group:
            for sentence in re.split(r"(?<=\.) ", doc["text"]):
                sheet.append([doc["_id"], doc["title"][:200], sentence])
        book.save(str(out("xlsx", n)))
        html = "".join(f"<h2>{doc['title']}</h2><p>{doc['text']}</p>" for doc in group)
        out("html", n).write_text(f"<html><body><h1>Abstracts</h1>{html}</body></html>")
        out("md", n).write_text("".join(f"## {doc['title']}\n\n{doc['text']}\n\n" for doc in group))
        out("txt", n).write_text("".join(f"{doc['title']}\n\n{doc['text']}\n\n" for doc in group))
        rtf = "".join(f"{{\\b {rtf_escape(doc['title'])}}}\\par {rtf_escape(doc['text'])}\\par\\par " for doc in group)
        out("rtf", n).write_text("{\\rtf1\\ansi\\deff0 " + rtf + "}")
        book_ = epub.EpubBook()
        book_.set_identifier(f"bench-{n}")
        book_.set_title("Abstracts")
        chapters = []
        for i, doc in enumerate(group):
            chapter = epub.EpubHtml(title=doc["title"][:100], file_name=f"c{i}.xhtml")
            chapter.content = f"<h1>{doc['title']}</h1><p>{doc['text']}</p>"
            book_.add_item(chapter)
            chapters.append(chapter)
        book_.toc = chapters
        book_.spine = chapters
        book_.add_item(epub.EpubNcx())
        book_.add_item(epub.EpubNav())
        epub.write_epub(str(out("epub", n)), book_)
        messages = []
        for doc in group:
            message = email.message.EmailMessage()
            message["From"], message["To"], message["Subject"] = "a@example.org", "b@example.org", doc["title"][:200]
            message.set_content(doc["text"])
            messages.append(bytes(message))
        out("eml", n).write_bytes(messages[0])
        out("mbox", n).write_bytes(
            b"".join(b"From a@example.org Mon Mar  2 08:00:00 2026\n" + m + b"\n" for m in messages)
        )
    if shutil.which("soffice"):
        conversions = [("docx", "odt"), ("xlsx", "ods"), ("pptx", "odp")]
        conversions += [("docx", "doc"), ("xlsx", "xls"), ("pptx", "ppt")]
        for source, target in conversions:
            (root / target).mkdir(exist_ok=True)
            subprocess.run(
                ["soffice", "--headless", "--convert-to", target, "--outdir", str(root / target),
                 *map(str, made[source])],
                check=True, capture_output=True, timeout=1800,
            )  # fmt: skip
            made[target] = sorted((root / target).glob(f"*.{target}"))
    if shutil.which("tesseract"):
        made["pdf (scans)"] = make_scans(root / "scans", groups[:5])
    manuals = sorted(Path("/usr/share/doc").rglob("*.pdf")) if Path("/usr/share/doc").is_dir() else []
    if manuals:
        made["pdf (manuals)"] = manuals
    return made


def make_scans(folder: Path, groups: list[list[dict[str, Any]]]) -> list[Path]:
    """PDFs of page images without a text layer, as a scanner makes them: four pages each, one
    abstract per page drawn at 150 dpi."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    folder.mkdir(parents=True, exist_ok=True)
    font_file = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    font = ImageFont.truetype(str(font_file), 22) if font_file.exists() else ImageFont.load_default()
    made = []
    for n, group in enumerate(groups):
        pages = []
        for doc in group[:4]:
            page = Image.new("L", (1240, 1754), 255)  # A4 at 150 dpi
            draw = ImageDraw.Draw(page)
            lines = textwrap.wrap(f"{doc['title']}. {doc['text']}", 90)[:60]
            for row, line in enumerate(lines):
                draw.text((90, 90 + row * 28), line, font=font, fill=0)
            pages.append(page)
        path = folder / f"scan{n:03d}.pdf"
        pages[0].save(path, save_all=True, append_images=pages[1:], resolution=150)
        made.append(path)
    return made


def rtf_escape(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}")
    return "".join(ch if ord(ch) < 128 else f"\\u{ord(ch) if ord(ch) < 32768 else ord(ch) - 65536}?" for ch in escaped)


def abstracts(count: int) -> list[dict[str, Any]]:
    """NFCorpus documents; where that data set is not at hand (a fresh clone alone), the 48 real
    passages of the model's calibration set, each used as often as needed."""
    if (NFCORPUS / "corpus.jsonl").exists():
        return load_corpus()[:count]
    print(f"NFCorpus not found at {NFCORPUS}: using the calibration passages (semantik/inference)")
    data = json.loads((Path(__file__).resolve().parents[1] / "semantik/inference/calibration.json").read_text())
    passages = data["passages"]
    return [{"_id": f"cal-{i}", "title": f"Passage {i}", "text": passages[i % len(passages)]} for i in range(count)]


def pages_of(kind: str, sections: list[Any]) -> int:
    if kind.startswith("pdf"):
        return len({section.page for section in sections})
    if kind in ("pptx", "odp", "ppt"):
        return len({section.slide for section in sections})
    if kind in ("xlsx", "ods", "xls"):
        return len({section.sheet for section in sections})
    return 0


def measure(kind: str, files: list[Path], limits: ExtractLimits) -> dict[str, Any]:
    size = sum(path.stat().st_size for path in files)
    chars = pages = 0
    began = time.perf_counter()
    for path in files:
        sections = extract_sections(path.read_bytes(), path.name, limits)
        chars += sum(len(section.text) for section in sections)
        pages += pages_of(kind, sections)
    seconds = time.perf_counter() - began
    return {
        "files": len(files),
        "mb": round(size / 1e6, 2),
        "pages": pages,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / 1e6 / seconds, 2),
        "pages_per_s": round(pages / seconds, 1) if pages else None,
        "chars_per_s": round(chars / seconds),
    }


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def compare(made: dict[str, list[Path]]) -> dict[str, Any]:
    """Each candidate's seconds and words on the same files; quality as the share of the chosen
    extractor's words it yields and its words of 25+ letters (words glued together)."""
    candidates: dict[str, Callable[[Path], str]] = {}

    def pypdf_text(path: Path) -> str:
        from pypdf import PdfReader

        return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(path.read_bytes())).pages)

    candidates["pypdf"] = pypdf_text
    if importlib.util.find_spec("markitdown"):
        from markitdown import MarkItDown

        converter = MarkItDown()
        candidates["markitdown"] = lambda path: str(converter.convert(str(path)).text_content)
    if importlib.util.find_spec("kreuzberg"):
        import kreuzberg

        candidates["kreuzberg"] = lambda path: str(kreuzberg.extract_file_sync(str(path)).content)
    if importlib.util.find_spec("inscriptis"):
        from inscriptis import get_text

        candidates["inscriptis"] = lambda path: str(get_text(path.read_text()))
    applies = {"pypdf": ("pdf", "pdf (manuals)"), "inscriptis": ("html",)}
    results: dict[str, Any] = {}
    for kind, files in made.items():
        if kind == "pdf (scans)":
            continue  # only OCR reads them
        ours_began = time.perf_counter()
        ours = [" ".join(s.text for s in extract_sections(p.read_bytes(), p.name)) for p in files]
        row: dict[str, Any] = {
            "semantik": {"seconds": round(time.perf_counter() - ours_began, 3), **quality(ours, ours)}
        }
        for name, extract in candidates.items():
            if name in applies and kind not in applies[name]:
                continue
            began = time.perf_counter()
            try:
                theirs = [extract(path) for path in files]
            except Exception as exc:  # a candidate that cannot read the format
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:80]}"}
                continue
            row[name] = {"seconds": round(time.perf_counter() - began, 3), **quality(ours, theirs)}
        results[kind] = row
    return results


def quality(reference: list[str], texts: list[str]) -> dict[str, Any]:
    from collections import Counter

    ref = Counter(w.lower() for text in reference for w in words(text))
    got = Counter(w.lower() for text in texts for w in words(text))
    shared = sum((ref & got).values())
    return {
        "words": sum(got.values()),
        "recall_of_semantik_words": round(shared / max(sum(ref.values()), 1), 3),
        "glued_words": sum(count for word, count in got.items() if len(word) >= 25),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=400, help="NFCorpus abstracts to spread over the files")
    parser.add_argument("--compare", action="store_true", help="also run the candidate extractors")
    args = parser.parse_args()
    docs = abstracts(args.docs)
    limits = ExtractLimits(ocr_command="")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {len(docs)} abstracts, {PER_FILE} per file")
    with tempfile.TemporaryDirectory() as tmp:
        made = make_corpus(Path(tmp), docs)
        if not shutil.which("soffice"):
            print("odt, ods, odp: skipped (LibreOffice's soffice is not installed to make them)")
        rows = {
            kind: measure(kind, files, ExtractLimits() if kind == "pdf (scans)" else limits)
            for kind, files in made.items()
        }
        print(f"{'format':<15}{'files':>6}{'MB':>8}{'pages':>7}{'s':>8}{'MB/s':>8}{'pages/s':>9}{'chars/s':>11}")
        for kind, row in rows.items():
            pages_s = "" if row["pages_per_s"] is None else row["pages_per_s"]
            print(
                f"{kind:<15}{row['files']:>6}{row['mb']:>8}{row['pages'] or '':>7}{row['seconds']:>8}"
                f"{row['mb_per_s']:>8}{pages_s:>9}{row['chars_per_s']:>11}"
            )
        compared = compare(made) if args.compare else {}
        for kind, row in compared.items():
            print(f"\n{kind}:")
            for name, figures in row.items():
                print(f"  {name:<12} {json.dumps(figures)}")
    print("RESULT " + json.dumps({"cpu": cpu_name(), "formats": rows, "compare": compared}))


if __name__ == "__main__":
    main()
