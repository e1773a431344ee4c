"""Rich Text Format with striprtf: the text, without its control words and groups."""

from __future__ import annotations

import re

from semantik.indexing.formats.base import ExtractionError, ExtractLimits, Section

# Outside a picture: an escaped character, the control word \binN (N raw bytes follow it, after one
# optional space), or the start of a picture group ({\pict).
_OUTSIDE = re.compile(rb"\\(?:[\\{}]|bin(\d{1,10}) ?)|(\{[ \r\n]*\\pict(?![a-z]))")
# Inside one: the same escapes and \binN, and the braces that open and close its groups.
_INSIDE = re.compile(rb"\\(?:[\\{}]|bin(\d{1,10}) ?)|([{}])")


def extract_rtf(data: bytes, limits: ExtractLimits) -> list[Section]:
    from striprtf.striprtf import rtf_to_text

    if not data.lstrip().startswith(b"{\\rtf"):
        raise ExtractionError("corrupt RTF: it does not start with {\\rtf")
    # RTF is 7-bit by definition; anything else is escaped (\'xx, \uN) and decoded by striprtf.
    text: str = rtf_to_text(_without_pictures(data).decode("latin-1"), encoding="cp1252", errors="replace")  # type: ignore[no-untyped-call]
    return [Section(text)] if text.strip() else []


def _without_pictures(data: bytes) -> bytes:
    """The RTF less its pictures (``{\\pict ...}`` groups, hex or raw) and the raw bytes of every
    other ``\\binN``: they are not text, and a brace or backslash among raw bytes would derail the
    parser. striprtf has its own pass for pictures, run when a text holds both "\\pict" and
    "\\bin" anywhere (a paper-bin control word such as ``\\binfsxn`` will do): it drops a picture's
    closing brace, and everything after a picture inside ``{\\*\\shppict ...}`` (how Word writes
    them) was lost. With the pictures gone here, that pass has nothing to do."""
    parts, kept_from, at = [], 0, 0
    while (found := _OUTSIDE.search(data, at)) is not None:
        at = found.end()
        if found.group(1) is not None:  # raw bytes: skipped
            parts.append(data[kept_from : found.start()])
            at = kept_from = min(len(data), at + int(found.group(1)))
        elif found.group(2) is not None:  # a picture: skipped to its closing brace
            parts.append(data[kept_from : found.start()])
            at = kept_from = _group_end(data, at)
    parts.append(data[kept_from:])
    return b"".join(parts)


def _group_end(data: bytes, at: int) -> int:
    """Where the group that was opened just before ``at`` ends (past its closing brace; the end of
    the data if it never closes)."""
    depth = 1
    while (found := _INSIDE.search(data, at)) is not None:
        at = found.end()
        if found.group(1) is not None:
            at = min(len(data), at + int(found.group(1)))
        elif found.group(2) == b"{":
            depth += 1
        elif found.group(2) == b"}":
            depth -= 1
            if depth == 0:
                return at
    return len(data)
