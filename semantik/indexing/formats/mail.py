"""E-mail: a message (.eml) or a mailbox of them (.mbox), with the standard library's parser. Each
message is a section under its subject: its From, To and Date lines, then its body (the plain-text
part, or the HTML part read as text), the other text parts it shows, the messages forwarded with it,
and the names of its attachments."""

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
