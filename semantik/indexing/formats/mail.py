"""E-mail: a message (.eml) or a mailbox of them (.mbox), with the standard library's parser. Each
message is a section under its subject: its From, To and Date lines, then its body (the plain-text
part, or the HTML part read as text) and the names of its attachments."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

from semantik.indexing.formats.base import (
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
    lines = [f"{name}: {message[name]}" for name in ("From", "To", "Cc", "Date", "Subject") if message.get(name)]
    body = message.get_body(preferencelist=("plain", "html"))
    if body is not None:
        content = _part_text(body)
        lines += ["", content]
    attachments = [part.get_filename() for part in message.iter_attachments() if part.get_filename()]
    if attachments:
        lines += ["", "Attachments: " + ", ".join(str(name) for name in attachments)]
    text = budget.take("\n".join(lines).strip())
    return Section(text, heading=(subject,) if subject else ())


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
