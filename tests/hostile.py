"""A hostile folder, made on the spot: each file one finding of the security audit, beside normal
notes. Shared by ``tests/test_hostile.py`` (small sizes, low limits) and ``bench/hostile.py`` (the
audit's full sizes).

Every generator writes real files with the tools a user's drive would hold them in (zip containers,
PDF objects, FIFOs, symlinks): nothing here is a stand-in.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# Each normal note carries a phrase that only it contains: a search for it must find that note first.
NORMAL_NOTES = {
    "lighthouse.txt": "The lighthouse keeper logs the fog horn test every Sunday at dawn.",
    "budget.md": "# Budget\n\nThe quarterly budget review moved to the second Thursday of the month.",
    "garden.txt": "Tomatoes in the rooftop garden need watering twice a day in July.",
    "onboarding.md": "New engineers get their badge and laptop from the front desk on day one.",
}
SECRET = "The payroll vault combination is 31-41-59, never share it."

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml"'
    ' ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
    "</Types>"
)
_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"'
    ' Target="word/document.xml"/></Relationships>'
)
_DOC_HEAD = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
)
_DOC_TAIL = "</w:body></w:document>"


def _docx(path: Path, body_parts: int, part: str) -> Path:
    """A valid .docx whose document body is ``part`` repeated ``body_parts`` times, streamed."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as package:
        package.writestr("[Content_Types].xml", _CONTENT_TYPES)
        package.writestr("_rels/.rels", _RELS)
        with package.open("word/document.xml", "w", force_zip64=True) as document:
            document.write(_DOC_HEAD.encode())
            block = part.encode() * max(1, (1 << 20) // len(part))
            written = 0
            total = body_parts * len(part)
            while written < total:
                piece = block[: total - written]
                document.write(piece)
                written += len(piece)
            document.write(_DOC_TAIL.encode())
    return path


def zip_bomb_docx(path: Path, inflated_mb: int) -> Path:
    """A small .docx whose word/document.xml inflates to ``inflated_mb`` MB (the audit: 2 MB → 1.2 GB)."""
    filler = "<w:p><w:r><w:t>" + " " * 4000 + "</w:t></w:r></w:p>"
    return _docx(path, inflated_mb * (1 << 20) // len(filler), filler)


def paragraph_flood_docx(path: Path, paragraphs: int) -> Path:
    """A .docx of ``paragraphs`` empty paragraphs (the audit: 1.2 M in 120 KB, 95 s of CPU)."""
    return _docx(path, paragraphs, "<w:p/>")


def page_tree_bomb_pdf(path: Path, fan_out: int) -> Path:
    """A tiny PDF whose page tree is a DAG: the root lists one Pages node ``fan_out`` times, which
    lists one page ``fan_out`` times: fan_out² pages sharing one content stream (the audit: 300 →
    90,000 pages in 4 KB)."""
    stream = b"BT /F1 12 Tf 72 712 Td (page tree bomb) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + b"3 0 R " * fan_out + b"] /Count %d >>" % (fan_out * fan_out),
        b"<< /Type /Pages /Parent 2 0 R /Kids [" + b"4 0 R " * fan_out + b"] /Count %d >>" % fan_out,
        b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] /Contents 5 0 R"
        b" /Resources << /Font << /F1 6 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def one_line_text(path: Path, megabytes: int) -> Path:
    """``megabytes`` MB of text with no line break and no space (one [UNK] token for the model)."""
    path.write_bytes(b"x" * (megabytes << 20))
    return path


def non_utf8_name(directory: Path, text: str) -> Path:
    """A note whose name is not valid UTF-8 (Latin-1 é), as old drives and zip files carry them."""
    raw = os.fsencode(str(directory)) + b"/r\xe9sum\xe9-notes.txt"
    with open(raw, "wb") as handle:
        handle.write(text.encode())
    return Path(os.fsdecode(raw))


@dataclass
class HostileFolder:
    """The folder and what a run over it must show."""

    root: Path  # the job's folder (inside the allowed roots)
    outside: Path  # a folder outside the allowed roots, holding SECRET
    normal: dict[Path, str] = field(default_factory=dict)  # note → its phrase
    bad: dict[Path, str] = field(default_factory=dict)  # hostile file → a word its reason must hold
    # Swaps to make after the scan and before the files are read: path → what it becomes.
    swaps: dict[Path, Path] = field(default_factory=dict)


def make_hostile_folder(base: Path, *, full_size: bool = False) -> HostileFolder:
    """The hostile folder under ``base``. ``full_size`` makes the audit's sizes (GBs inflated, 8 MB
    text, 90,000 pages); otherwise sizes that still cross the limits the tests set, quickly."""
    root, outside = base / "drive", base / "outside"
    root.mkdir(parents=True)
    outside.mkdir(parents=True)
    (outside / "vault.txt").write_text(SECRET)
    folder = HostileFolder(root, outside)
    for name, text in NORMAL_NOTES.items():
        (root / name).write_text(text)
        folder.normal[root / name] = text
    folder.bad[zip_bomb_docx(root / "bomb.docx", 1200 if full_size else 64)] = "SEMANTIK_EXTRACT_MAX_UNZIPPED_MB"
    # Refused as a zip bomb by its compression ratio, or by the time limit: either way with a reason.
    folder.bad[paragraph_flood_docx(root / "flood.docx", 1_200_000 if full_size else 400_000)] = ""
    folder.bad[page_tree_bomb_pdf(root / "pages.pdf", 300)] = "SEMANTIK_EXTRACT_MAX_PAGES"
    folder.bad[one_line_text(root / "oneline.txt", 8 if full_size else 2)] = ""  # may index, within caps
    # Regular notes at scan time, swapped just after the scan for what the audit used.
    for name in ("zz-fifo.txt", "zz-zero.txt", "zz-link.txt"):
        (root / name).write_text("an innocent note, until it is swapped")
    folder.swaps[root / "zz-fifo.txt"] = Path("fifo")
    folder.swaps[root / "zz-zero.txt"] = Path("/dev/zero")
    folder.swaps[root / "zz-link.txt"] = outside / "vault.txt"
    # Named like the secret: once the folder is swapped, this path leads to it.
    (root / "zz-sub").mkdir()
    (root / "zz-sub" / "vault.txt").write_text("an innocent note in a subfolder, until the folder is swapped")
    folder.swaps[root / "zz-sub"] = outside
    resume = non_utf8_name(root, "Résumé notes: the hiring committee meets on Wednesdays.")
    folder.normal[resume] = "the hiring committee meets on Wednesdays"
    return folder


def swap(folder: HostileFolder) -> None:
    """Make the swaps: each file becomes a FIFO or a symlink (to /dev/zero, to outside the roots),
    the subfolder a symlink to outside the roots."""
    for path, becomes in folder.swaps.items():
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()
        if becomes == Path("fifo"):
            os.mkfifo(path)
        else:
            path.symlink_to(becomes, target_is_directory=becomes.is_dir())
