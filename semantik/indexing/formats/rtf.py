"""Rich Text Format with striprtf: the text, without its control words and groups."""

from __future__ import annotations

import re

from semantik.indexing.formats.base import ExtractionError, ExtractLimits, Section

# Outside a picture: an escaped character, the control word \binN (N raw bytes follow it, after one
# optional space), a group that is a picture ({\pict), or a picture further into a group.
_OUTSIDE = re.compile(rb"\\(?:[\\{}]|bin(\d{1,10}) ?)|(\{[ \r\n]*\\pict(?![a-z]))|(\\pict(?![a-z]))")
# Inside one: the same escapes and \binN, and the braces that open and close its groups.
_INSIDE = re.compile(rb"\\(?:[\\{}]|bin(\d{1,10}) ?)|([{}])")


def extract_rtf(data: bytes, limits: ExtractLimits) -> list[Section]:
    from striprtf import striprtf
    from striprtf.striprtf import rtf_to_text

    # striprtf's own picture pass runs when the text holds "\pict" and "\bin" anywhere (a paper-bin
    # control word, a path such as C:\\bin): it drops the braces it meets, so the rest of the file
    # was lost, or raises on a "\bin" with no number. Pictures are taken out here instead.
    striprtf.remove_pict_groups = _as_is

    if not data.lstrip().startswith(b"{\\rtf"):
        raise ExtractionError("corrupt RTF: it does not start with {\\rtf")
    # RTF is 7-bit by definition; anything else is escaped (\'xx, \uN) and decoded by striprtf.
    text: str = rtf_to_text(_without_pictures(data).decode("latin-1"), encoding="cp1252", errors="replace")  # type: ignore[no-untyped-call]
    return [Section(text)] if text.strip() else []


def _as_is(text: str) -> str:
    return text


def _without_pictures(data: bytes) -> bytes:
    """The RTF less its pictures (``{\\pict ...}`` groups, hex or raw) and the raw bytes of every
    other ``\\binN``: they are not text, and a brace or backslash among raw bytes would derail the
    parser. (striprtf's own pass for pictures, which this replaces, dropped a picture's closing
    brace, and everything after a picture inside ``{\\*\\shppict ...}``, how Word writes them, was
    lost.)"""
    parts, kept_from, at = [], 0, 0
    while (found := _OUTSIDE.search(data, at)) is not None:
        at = found.end()
        if found.group(1) is not None:  # raw bytes: skipped
            parts.append(data[kept_from : found.start()])
            at = kept_from = min(len(data), at + int(found.group(1)))
        elif found.group(2) is not None:  # a picture: skipped to its closing brace
            parts.append(data[kept_from : found.start()])
            at = kept_from = _group_end(data, at)
        elif found.group(3) is not None:  # the rest of the group is a picture: skipped, not its brace
            parts.append(data[kept_from : found.start()])
            at = _group_end(data, at)
            kept_from = at - 1 if data[at - 1 : at] == b"}" else at
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
