"""Rich Text Format with striprtf: the text, without its control words and groups."""

from __future__ import annotations

from semantik.indexing.formats.base import ExtractionError, ExtractLimits, Section


def extract_rtf(data: bytes, limits: ExtractLimits) -> list[Section]:
    from striprtf.striprtf import rtf_to_text

    if not data.lstrip().startswith(b"{\\rtf"):
        raise ExtractionError("corrupt RTF: it does not start with {\\rtf")
    # RTF is 7-bit by definition; anything else is escaped (\'xx, \uN) and decoded by striprtf.
    text: str = rtf_to_text(data.decode("latin-1"), encoding="cp1252", errors="replace")  # type: ignore[no-untyped-call]
    return [Section(text)] if text.strip() else []
