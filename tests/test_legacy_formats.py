"""Office files as old drives keep them: Word, Excel and PowerPoint 97-2003 (.doc, .xls, .ppt),
Outlook's saved messages (.msg), Office Open XML's templates, macro-enabled files and slide shows, and
legacy names on files that are something else. The files come from LibreOffice
(``tests/corpus/make.py``; the corpus tests search each one's phrase through the product, in
tests/test_documents.py), and the .msg from Outlook (``tests/corpus/THIRD_PARTY.md``)."""

from __future__ import annotations

import io
import random
import re
import zipfile
from pathlib import Path

import olefile
import pytest

from semantik.indexing.extract import ExtractionError, ExtractLimits, extract_sections
from tests import compound

CORPUS = Path(__file__).resolve().parent / "corpus"


def test_a_word_97_document_reads_as_its_author_sees_it() -> None:
    """Headings from their styles; table rows as lines (a cell of two paragraphs, and a table in a
    cell, kept in their row), also after characters that take two positions in Word's text; a
    hyperlink's and a page number's shown text but not their field codes; a section break ends its
    paragraph; the footnote after the body; not the table of contents (its headings again). The
    same text as LibreOffice's .docx of the same document, but for the footnote."""
    sections = extract_sections((CORPUS / "features.doc").read_bytes(), "features.doc")
    assert [section.heading for section in sections] == [
        ("Berth survey",),
        ("Berth survey", "Crane ledger"),
        ("Appendix",),
    ]
    assert [section.text.split("\n") for section in sections] == [
        ["Harbour records", "Berth survey", "Read the quay rules first.", "This is page 1 of the survey."],
        [
            "Crane ledger",
            f"Marks used: {chr(0x1F6A2) * 20} for ships.",
            "Crane | Load | Status",
            "Crane 4 | 40 t | cable worn",
            "Crane 7 | 25 t | first line",
            "second line",
            "Spares | stock | Cable | 2",
            "Hook | 1",
            "After the table.",
        ],
        ["Appendix", "Tide tables are kept by the harbour master.", "Revised by the pilots in March."],
    ]


def test_a_powerpoint_97_deck_reads_slide_by_slide() -> None:
    """Each slide in order under its title: the placeholders' text, then a text box of its own,
    then its speaker notes (not the notes page's slide-number field)."""
    sections = extract_sections((CORPUS / "slides.ppt").read_bytes(), "slides.ppt")
    assert [(section.slide, section.heading, section.text) for section in sections] == [
        (1, ("Quarterly review",), "Quarterly review\nTraffic at the quay grew in every month of the quarter."),
        (2, ("Next quarter",), "Next quarter\nThe plum ocelot drill is approved and starts in April."),
        (
            3,
            ("Questions",),
            "Questions\nAsk the operations office.\nBerth 9 stays closed until June.\n"
            "Mention the pilots' new schedule.",
        ),
    ]


def test_an_outlook_message_reads_as_an_eml_would() -> None:
    """Its To, Date (delivered: it has no sent time) and Subject lines, its body, and the message
    attached to it (forwarded), as .eml files read; an .eml saved under the name .msg is read as one."""
    sections = extract_sections((CORPUS / "outer.msg").read_bytes(), "outer.msg")
    assert [(section.heading, section.text) for section in sections] == [
        (
            ("outer subject",),
            "To: outer@foo.bar\nDate: Tue, 15 Nov 2016 23:29:05 +0000\nSubject: outer subject\n\nOuter body\n\n"
            "Forwarded message:\nTo: test@foobar.com\nDate: Tue, 15 Nov 2016 23:28:26 +0000\nSubject: test\n\nbody",
        )
    ]
    eml = (CORPUS / "message.eml").read_bytes()
    assert extract_sections(eml, "saved.msg") == extract_sections(eml, "message.eml")


def test_an_outlook_messages_8_bit_text_reads_in_its_code_pages() -> None:
    """8-bit strings in the message's code page (PidTagMessageCodepage), an HTML body in its body's
    (PidTagInternetCodepage), also one Python names otherwise (28595: ISO 8859-5)."""
    subject, shown = "Отчёт за март", "Причал закрыт"
    streams = {
        "__substg1.0_0037001E": subject.encode("cp1251"),
        "__substg1.0_10130102": f"<p>{shown}</p>".encode("iso8859_5"),
    }
    message = compound.outlook_message(streams, {0x3FFD: 1251, 0x3FDE: 28595})
    sections = extract_sections(message, "report.msg")
    assert [(section.heading, section.text) for section in sections] == [((subject,), f"Subject: {subject}\n\n{shown}")]


def test_an_outlook_messages_recipients_with_their_addresses() -> None:
    """To and Cc from the recipients (names and e-mail addresses, as an .eml's headers give them),
    not the display fields' names alone; an Exchange path is no address; Bcc is not shown."""

    def recipient(number: int, kind: int, name: str, address: str) -> dict[str, bytes]:
        storage = f"__recip_version1.0_#{number:08X}"
        smtp = "39FE" if "@" in address else "3003"
        return {
            f"{storage}/__properties_version1.0": compound.outlook_properties(8, {0x0C15: kind}),
            f"{storage}/__substg1.0_3001001F": name.encode("utf-16-le"),
            f"{storage}/__substg1.0_{smtp}001F": address.encode("utf-16-le"),
        }

    streams = {
        "__substg1.0_0037001F": "Berth 9".encode("utf-16-le"),
        "__substg1.0_0E04001F": "Mara Quill".encode("utf-16-le"),
        **recipient(0, 1, "Mara Quill", "mara@harbour.example"),
        **recipient(1, 2, "Ops desk", "/O=EXCHANGELABS/OU=EXCHANGE ADMINISTRATIVE GROUP/CN=RECIPIENTS/CN=OPS"),
        **recipient(2, 3, "Auditor", "audit@harbour.example"),
    }
    sections = extract_sections(compound.outlook_message(streams, {}), "berth.msg")
    assert [section.text for section in sections] == [
        "To: Mara Quill <mara@harbour.example>\nCc: Ops desk\nSubject: Berth 9"
    ]


def test_an_xls_reads_as_its_xlsx_twin() -> None:
    """Dates, whole and decimal numbers, booleans and an error cell read from Excel 97-2003 as the
    same workbook's .xlsx reads; an empty sheet makes no section."""
    old = extract_sections((CORPUS / "values.xls").read_bytes(), "values.xls")
    new = extract_sections((CORPUS / "values.xlsx").read_bytes(), "values.xlsx")
    assert old == new
    assert [section.sheet for section in old] == ["Readings", "Notes"]
    assert old[0].text.split("\n")[1] == "2026-03-02 00:00:00 | 12 | 2.5 | 1 | #VALUE!", old[0].text


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("report.rtf", "memo.doc"),  # Word's "save as RTF", WordPad
        ("page.html", "memo.doc"),  # Word's "save as web page"
        ("report.docx", "memo.doc"),
        ("sheet.xlsx", "ledger.xls"),
        ("page.html", "export.xls"),  # a web application's "export to Excel"
        ("slides.pptx", "deck.ppt"),
        ("report.doc", "memo.docx"),  # and the other way: a 97-2003 file under a new name
        ("sheet.xls", "ledger.xlsx"),
        ("slides.ppt", "deck.pptx"),
    ],
)
def test_a_legacy_name_on_another_format_reads_as_that_format(source: str, named: str) -> None:
    data = (CORPUS / source).read_bytes()
    assert extract_sections(data, named) == extract_sections(data, source)


def test_a_password_protected_office_file_says_so() -> None:
    """Office keeps a protected document's package encrypted in a compound file: that is the
    reason given, not a corrupt zip."""
    with pytest.raises(ExtractionError, match=r"^encrypted DOCX$"):
        extract_sections((CORPUS / "locked.docx").read_bytes(), "locked.docx")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("minutes.doc", "Minutes of the quay meeting.\nAll cranes inspected."),
        ("berths.dot", "digraph berths {\n  north -> east;\n}"),  # Graphviz, not a Word template
        ("messages.pot", 'msgid "Berth closed"\nmsgstr ""'),  # gettext, not a PowerPoint template
    ],
)
def test_plain_text_under_a_legacy_office_name_is_read_as_text(name: str, text: str) -> None:
    sections = extract_sections(text.encode() + b"\n", name)
    assert [section.text for section in sections] == [text]


def test_office_open_xml_variants_by_their_content_type() -> None:
    """A macro-enabled document is read (its macros are not); a deck saved as a template is read; a
    workbook renamed .docx fails with what it is, not a traceback."""
    import docx

    document = docx.Document()
    document.add_heading("Macros", level=1)
    document.add_paragraph("The loading macro fills the berth table.")
    saved = io.BytesIO()
    document.save(saved)
    macro = _with_content_type(
        saved.getvalue(),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
        "application/vnd.ms-word.document.macroEnabled.main+xml",
    )
    sections = extract_sections(macro, "tools.docm")
    assert [(section.heading, section.text) for section in sections] == [
        (("Macros",), "Macros\nThe loading macro fills the berth table.")
    ]
    deck = _with_content_type(
        (CORPUS / "slides.pptx").read_bytes(),
        "application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml",
        "application/vnd.openxmlformats-officedocument.presentationml.template.main+xml",
    )
    assert extract_sections(deck, "slides.potx") == extract_sections((CORPUS / "slides.pptx").read_bytes(), "x.pptx")
    with pytest.raises(ExtractionError, match="not a Word document"):
        extract_sections((CORPUS / "sheet.xlsx").read_bytes(), "sheet.docx")


def _with_content_type(package: bytes, old: str, new: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "[Content_Types].xml":
                assert old.encode() in data
                data = data.replace(old.encode(), new.encode())
            target.writestr(member, data)
    return out.getvalue()


def _fib_offset(doc: bytes) -> int:
    """Where the WordDocument stream (its header, 0xA5EC) starts in a compound file LibreOffice wrote."""
    for offset in range(512, len(doc), 512):
        if doc[offset : offset + 2] == b"\xec\xa5":
            return offset
    raise AssertionError("no Word file header")


def test_encrypted_and_pre_97_word_files_fail_with_their_reason() -> None:
    doc = (CORPUS / "features.doc").read_bytes()
    fib = _fib_offset(doc)
    encrypted = bytearray(doc)
    encrypted[fib + 0x0B] |= 0x01  # fEncrypted
    with pytest.raises(ExtractionError, match=r"^encrypted DOC$"):
        extract_sections(bytes(encrypted), "locked.doc")
    word95 = bytearray(doc)
    word95[fib + 2 : fib + 4] = (0x65).to_bytes(2, "little")  # nFib of Word 6
    with pytest.raises(ExtractionError, match="only Word 97 and later"):
        extract_sections(bytes(word95), "old.doc")


def test_a_word_document_over_the_text_limit_fails_while_it_is_read() -> None:
    with pytest.raises(ExtractionError, match="more than 200 characters"):
        extract_sections((CORPUS / "features.doc").read_bytes(), "features.doc", ExtractLimits(max_chars=200))


def test_files_that_claim_more_text_than_they_hold_fail_before_it_is_made() -> None:
    """A 12 KB Word file whose piece table claims four billion characters, and a deck that shows one
    slide of a million characters 5,000 times: each fails on the text limit, not after the text
    (4 GB, 5 GB) has been made."""
    claims = compound.word_document_with_text(CORPUS / "features.doc", b"Hi\r", pieces=[(0, 0xF0000000, 0, True)])
    with pytest.raises(ExtractionError, match="more than 20000000 characters"):
        extract_sections(claims, "claims.doc")
    repeats = compound.deck_of_one_slide_shown_many_times(5000, 1_000_000)
    with pytest.raises(ExtractionError, match="more than 20000000 characters"):
        extract_sections(repeats, "repeats.ppt")


def test_a_compound_file_with_a_deep_directory_fails_as_corrupt() -> None:
    """3,000 streams chained in the directory make olefile recurse past Python's limit: the file
    fails as a corrupt .doc, not with the parser's error."""
    with olefile.OleFileIO(str(CORPUS / "features.doc")) as ole:
        streams = [(name, ole.openstream(name).read()) for name in ("WordDocument", "1Table")]
    deep = compound.compound_file(streams + [(f"s{index}", b"") for index in range(3000)])
    with pytest.raises(ExtractionError, match=r"^corrupt DOC: RecursionError"):
        extract_sections(deep, "deep.doc")


# The streams that hold each format's text and what places it.
STREAMS = {
    "features.doc": ("WordDocument", "1Table"),
    "values.xls": ("Workbook",),
    "slides.ppt": ("PowerPoint Document", "Current User"),
    "outer.msg": (
        "__properties_version1.0",
        "__attach_version1.0_#00000000/__substg1.0_3701000D/__properties_version1.0",
    ),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_damaged_legacy_files_fail_with_a_reason_of_their_own(name: str, tmp_path: Path) -> None:
    """Bytes changed at random in the streams that hold the text, or the file cut short: each
    either reads or fails with a reason that names the format, never with a parser's own
    exception or a hang."""
    original = (CORPUS / name).read_bytes()
    kind = name.rsplit(".", 1)[1].upper()
    shuffle = random.Random(7)
    damaged = [original[: len(original) // 2], original[:600]]
    copy = tmp_path / name
    for _ in range(150):
        copy.write_bytes(original)
        with olefile.OleFileIO(str(copy), write_mode=True) as ole:
            stream = shuffle.choice(STREAMS[name])
            changed = bytearray(ole.openstream(stream).read())
            for _ in range(shuffle.randint(1, 12)):
                changed[shuffle.randrange(len(changed))] = shuffle.randrange(256)
            ole.write_stream(stream, bytes(changed))
        damaged.append(copy.read_bytes())
    unexplained, read = [], 0
    for file in damaged:
        try:
            extract_sections(file, name)
            read += 1
        except ExtractionError as exc:
            reason = (
                rf"(corrupt {kind}|encrypted {kind}|not an? (Word document|PowerPoint deck|Outlook)|more than|Word 6)"
            )
            if not re.match(reason, str(exc)):
                unexplained.append(str(exc))
    assert not unexplained, sorted(set(unexplained))
    assert 0 < read < len(damaged)  # the damage was seen, and not every change breaks the file
