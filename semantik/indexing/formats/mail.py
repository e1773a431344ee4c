"""E-mail: a message (.eml) or a mailbox of them (.mbox), with the standard library's parser, and
Outlook's saved messages (.msg: their properties, from the compound file olefile opens). Each
message is a section under its subject: its From, To and Date lines, then its body (the plain-text
part, or the HTML part read as text), the other text parts it shows, the messages forwarded with it,
and the names of its attachments."""

from __future__ import annotations

import email
import email.policy
import email.utils
import io
import re
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

from semantik.indexing.formats.base import (
    BROKEN_BINARY,
    OLE_MAGIC,
    ExtractionError,
    ExtractLimits,
    Section,
    TextBudget,
    heading_title,
)
from semantik.indexing.formats.web import html_sections

# An mbox separates messages with a line starting "From " (after a blank line, or at the start).
_MBOX_SEPARATOR = re.compile(rb"(?:\A|(?<=\n\n))From [^\n]*\n")
MAX_MESSAGES = 100_000
# Messages forwarded as attachments (message/rfc822) are read this many levels deep.
MAX_FORWARDED_DEPTH = 8
# Multiparts inside multiparts are read this many levels deep.
MAX_NESTING = 32
_HEADERS = ("From", "To", "Cc", "Date", "Subject")


def extract_eml(data: bytes, limits: ExtractLimits) -> list[Section]:
    return [_message_section(data, TextBudget(limits))]


def _message_section(raw: bytes, budget: TextBudget) -> Section:
    """A message as a section; one the parser cannot take (a broken header, an odd part) is read
    as its raw text rather than lost."""
    try:
        return _parsed_section(raw, budget)
    except (ExtractionError, MemoryError):
        raise
    except Exception:
        return Section(budget.take(raw.decode("utf-8", "replace").replace("\x00", "")))


def extract_mbox(data: bytes, limits: ExtractLimits) -> list[Section]:
    budget, sections = TextBudget(limits), []
    for count, raw in enumerate(_mbox_messages(data)):
        if count >= MAX_MESSAGES:
            raise ExtractionError(f"more than {MAX_MESSAGES} messages in one mailbox")
        sections.append(_message_section(raw, budget))
    return [section for section in sections if section.text]


def _mbox_messages(data: bytes) -> Iterator[bytes]:
    starts = [match.end() for match in _MBOX_SEPARATOR.finditer(data)]
    if not starts:
        raise ExtractionError("not an mbox mailbox: no 'From ' line")
    ends = [*(match.start() for match in _MBOX_SEPARATOR.finditer(data)), len(data)][1:]
    for start, end in zip(starts, ends, strict=True):
        # mboxrd quoting: ">From " at a line's start was "From ".
        yield re.sub(rb"(?m)^>(>*From )", rb"\1", data[start:end])


def _parsed_section(raw: bytes, budget: TextBudget) -> Section:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(message, EmailMessage):
        raise ExtractionError("corrupt e-mail message")
    subject = heading_title(str(message.get("Subject", "") or ""))
    lines = _header_lines(message) + _body_lines(message, depth=0)
    text = budget.take("\n".join(lines).strip())
    return Section(text, heading=(subject,) if subject else ())


def _header_lines(message: EmailMessage) -> list[str]:
    return [f"{name}: {message[name]}" for name in _HEADERS if message.get(name)]


def _body_lines(message: EmailMessage, depth: int) -> list[str]:
    """The message's body (its plain-text part, or the HTML one as text); the other text parts shown
    in the message (a body that an inline picture splits in two); each forwarded message, with its
    From, To, Date and Subject lines, up to ``MAX_FORWARDED_DEPTH`` deep; and the attachments' names.
    (Not ``iter_attachments``: it skips the first text part beside a multipart/alternative body.)"""
    body = message.get_body(preferencelist=("plain", "html"))
    lines = ["", _part_text(body)] if body is not None else []
    attachments: list[str] = []
    if message.get_content_subtype() != "alternative":  # (its parts are the body, in other forms)
        lines += _other_parts(message, body, depth, attachments, 0)
    if attachments:
        lines += ["", "Attachments: " + ", ".join(attachments)]
    return lines


def _other_parts(container: Any, body: Any, depth: int, attachments: list[str], nesting: int) -> list[str]:
    lines: list[str] = []
    for part in container.iter_parts() if nesting < MAX_NESTING else ():
        if part is body:
            continue
        if part.get_content_type() == "message/rfc822" and depth < MAX_FORWARDED_DEPTH:
            forwarded = part.get_content()
            if isinstance(forwarded, EmailMessage):
                lines += ["", "Forwarded message:", *_header_lines(forwarded), *_body_lines(forwarded, depth + 1)]
                continue
        if part.is_multipart():
            if part.get_content_subtype() not in ("alternative", "related"):
                lines += _other_parts(part, body, depth, attachments, nesting + 1)
            elif not any(inner is body for inner in part.walk()):  # (else: the body's other forms, its pictures)
                shown = part.get_body(preferencelist=("plain", "html"))
                lines += ["", _part_text(shown)] if shown is not None else []
        elif part.get_content_maintype() == "text" and part.get_content_disposition() != "attachment":
            lines += ["", _part_text(part)]
        elif part.get_filename():
            attachments.append(str(part.get_filename()))
    return lines


def _part_text(part: Any) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset()
    try:
        text = payload.decode(charset or "utf-8", "replace")
    except LookupError:  # an unknown charset name
        text = payload.decode("utf-8", "replace")
    text = text.replace("\x00", "")
    if part.get_content_subtype() == "html":
        return "\n\n".join(section.text for section in html_sections(text))
    return text


# --- Outlook .msg ([MS-OXMSG]) ----------------------------------------------------------------------

# Property ids ([MS-OXPROPS]) of what a message shows, each in a stream "__substg1.0_IIIITTTT": id,
# then type (001F UTF-16, 001E 8-bit in the message's code page, 0102 bytes).
_SUBJECT, _BODY, _HTML_BODY, _DISPLAY_TO, _DISPLAY_CC = 0x0037, 0x1000, 0x1013, 0x0E04, 0x0E03
# Who it is from: the person it was sent for (as Outlook and an .eml's From show), else its sender.
_FROM = ((0x0042, 0x5D02, 0x0065), (0x0C1A, 0x5D01, 0x0C1F))  # (name, SMTP address, address)
_ATTACHMENT_NAMES = (0x3707, 0x3704, 0x3001)  # long file name, file name, display name
_ATTACHED_MESSAGE = "__substg1.0_3701000D"
# Fixed-size properties (in the properties stream): when it was sent, else delivered, else made; the
# code page of its 8-bit strings, and of its HTML body; whether an attachment is hidden (a picture
# in the body).
_TIMES = (0x0039, 0x0E06, 0x3007)
_STRING_CODE_PAGE, _BODY_CODE_PAGE, _HIDDEN = 0x3FFD, 0x3FDE, 0x7FFE
_ATTACHMENT, _RECIPIENT = "__attach_version1.0_#", "__recip_version1.0_#"
# A recipient's type (1 To, 2 Cc, 3 Bcc: not shown), name, SMTP address and address.
_RECIPIENT_TYPE, _RECIPIENT_NAMES = 0x0C15, (0x3001, 0x39FE, 0x3003)
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
# The properties stream's header: a message's, an attached message's, an attachment's.
_HEADER_TOP, _HEADER_ATTACHED, _HEADER_ATTACHMENT = 32, 24, 8
# Windows code pages Python names otherwise.
_CODECS = {
    20127: "ascii", 1200: "utf-16-le", 65001: "utf-8", 20866: "koi8_r", 21866: "koi8_u", 20936: "gb2312",
    54936: "gb18030", 51932: "euc_jp", 50220: "iso2022_jp", 50221: "iso2022_jp", 50222: "iso2022_jp",
    10000: "mac_roman", **{28590 + n: f"iso8859_{n}" for n in range(1, 16)},
}  # fmt: skip


def extract_msg(data: bytes, limits: ExtractLimits) -> list[Section]:
    """An Outlook message saved as .msg; one that is really an .eml under that name is read as one."""
    import olefile

    if not data.startswith(OLE_MAGIC):
        return extract_eml(data, limits)
    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            if not ole.exists(f"__substg1.0_{_SUBJECT:04X}001F") and not ole.exists("__properties_version1.0"):
                raise ExtractionError("not an Outlook message (no message properties in the compound file)")
            # Each storage's attachments and recipients, from one listing of the directory.
            children: dict[tuple[str, ...], set[str]] = {}
            for entry in ole.listdir(streams=True, storages=True):
                for depth, name in enumerate(entry):
                    if name.startswith((_ATTACHMENT, _RECIPIENT)):
                        children.setdefault(tuple(entry[:depth]), set()).add(name)
            message = _OutlookMessage(ole, [], _HEADER_TOP, children)
            subject = heading_title(message.string(_SUBJECT))
            text = TextBudget(limits).take("\n".join(message.lines(depth=0)).strip())
    except BROKEN_BINARY as exc:
        raise ExtractionError(f"corrupt MSG: {type(exc).__name__}: {exc}") from exc
    return [Section(text, heading=(subject,) if subject else ())]


def _codec(code_page: bytes | None) -> str | None:
    if not code_page:
        return None
    number = struct.unpack_from("<I", code_page)[0]
    return _CODECS.get(number, f"cp{number}")


def _decoded(raw: bytes, codec: str | None) -> str:
    """``raw`` in ``codec``, or Windows-1252 where there is none or Python does not know it."""
    try:
        return raw.decode(codec or "cp1252", "replace")
    except LookupError:
        return raw.decode("cp1252", "replace")


class _OutlookMessage:
    """A message, an attached message or an attachment in an open .msg: ``path`` is its storage."""

    def __init__(
        self,
        ole: Any,
        path: list[str],
        header: int,
        children: dict[tuple[str, ...], set[str]],
        codec: str | None = None,
    ) -> None:
        self.ole, self.path, self.children = ole, path, children
        # Fixed-size properties: 16 bytes each, after a header ([MS-OXMSG] 2.4).
        self.fixed: dict[int, bytes] = {}
        stream = "/".join([*path, "__properties_version1.0"])
        if ole.exists(stream):
            raw = ole.openstream(stream).read()
            for offset in range(header, len(raw) - 15, 16):
                self.fixed.setdefault(struct.unpack_from("<I", raw, offset)[0] >> 16, raw[offset + 8 : offset + 16])
        strings, body = _codec(self.fixed.get(_STRING_CODE_PAGE)), _codec(self.fixed.get(_BODY_CODE_PAGE))
        self.string_codec = strings or body or codec  # (an attachment has none of its own)
        self.body_codec = body or self.string_codec

    def _stream(self, name: str) -> bytes | None:
        stream = "/".join([*self.path, name])
        return self.ole.openstream(stream).read() if self.ole.exists(stream) else None

    def string(self, prop: int) -> str:
        unicode = self._stream(f"__substg1.0_{prop:04X}001F")
        if unicode is not None:
            return unicode.decode("utf-16-le", "replace").replace("\x00", "").strip()
        narrow = self._stream(f"__substg1.0_{prop:04X}001E")
        return _decoded(narrow, self.string_codec).replace("\x00", "").strip() if narrow is not None else ""

    def lines(self, depth: int) -> list[str]:
        lines = self.header_lines()
        body = self.string(_BODY)
        if not body:
            html = self._stream(f"__substg1.0_{_HTML_BODY:04X}0102")
            html_text = _decoded(html, self.body_codec) if html is not None else self.string(_HTML_BODY)
            body = "\n\n".join(section.text for section in html_sections(html_text.replace("\x00", "")))
        if body:
            lines += ["", body.replace("\r\n", "\n")]
        names = []
        for attachment in self._children(_ATTACHMENT):
            inner = [*attachment, _ATTACHED_MESSAGE]
            if self.ole.exists("/".join(inner)) and depth < MAX_FORWARDED_DEPTH:
                forwarded = _OutlookMessage(self.ole, inner, _HEADER_ATTACHED, self.children, self.string_codec)
                lines += ["", "Forwarded message:", *forwarded.lines(depth + 1)]
                continue
            named = _OutlookMessage(self.ole, attachment, _HEADER_ATTACHMENT, self.children, self.string_codec)
            hidden = named.fixed.get(_HIDDEN)
            if hidden and hidden[0]:  # a picture shown in the body
                continue
            if label := next((text for prop in _ATTACHMENT_NAMES if (text := named.string(prop))), ""):
                names.append(label)
        if names:
            lines += ["", "Attachments: " + ", ".join(names)]
        return lines

    def _children(self, kind: str) -> list[list[str]]:
        """The storages of this message's attachments or recipients, in order."""
        return [[*self.path, name] for name in sorted(self.children.get(tuple(self.path), ())) if name.startswith(kind)]

    def person(self, props: tuple[int, int, int]) -> str:
        """ "Name <address>" from the (name, SMTP address, address) properties, or what there is of
        it; an address that is not an e-mail address (an Exchange path) is left out."""
        name, address = self.string(props[0]), self.string(props[1]) or self.string(props[2])
        address = address if "@" in address else ""
        return f"{name} <{address}>" if name and address and address != name else name or address

    def header_lines(self) -> list[str]:
        sender = next((found for props in _FROM if (found := self.person(props))), "")
        recipients: dict[int, list[str]] = {1: [], 2: []}  # To, Cc
        for storage in self._children(_RECIPIENT):
            recipient = _OutlookMessage(self.ole, storage, _HEADER_ATTACHMENT, self.children, self.string_codec)
            kind = recipient.fixed.get(_RECIPIENT_TYPE)
            shown = recipients.get(struct.unpack_from("<I", kind)[0] & 0xFF if kind else 1)
            if shown is not None and (label := recipient.person(_RECIPIENT_NAMES)):
                shown.append(label)
        date = ""
        for prop in _TIMES:
            if when := self.fixed.get(prop):
                try:
                    moment = _FILETIME_EPOCH + timedelta(microseconds=struct.unpack_from("<Q", when)[0] // 10)
                    date = email.utils.format_datetime(moment)
                except OverflowError:
                    continue
                break
        to = ", ".join(recipients[1]) or self.string(_DISPLAY_TO)
        cc = ", ".join(recipients[2]) or self.string(_DISPLAY_CC)
        values = (sender, to, cc, date, self.string(_SUBJECT))
        return [f"{header}: {value}" for header, value in zip(_HEADERS, values, strict=True) if value]
