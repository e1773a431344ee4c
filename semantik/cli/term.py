"""Text for a terminal: what the CLI prints from documents, file names, logs or the server.

A document or a file name can hold terminal control sequences (``ESC ]0;title BEL`` sets the window
title, ``ESC [2J`` clears the screen, some terminals do worse). Every such text is shown with its
control characters escaped (``\\x1b``), and, where rich renders it, with its markup escaped too.
"""

from __future__ import annotations

import re

from rich.markup import escape

# C0 controls but tab (and newline, which the caller may keep), DEL, C1 controls, and the
# bidirectional overrides and isolates that reorder what is shown.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_AND_LINES = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: object, *, lines: bool = False) -> str:
    """``value`` as text with every control character shown as an escape; ``lines`` keeps
    newlines (a traceback), otherwise they are escaped too (one record, one line)."""
    return (_CONTROL if lines else _CONTROL_AND_LINES).sub(_escaped, str(value))


def safe_markup(value: object, *, lines: bool = False) -> str:
    """``safe``, and with rich's markup escaped: for text inside a string rich renders as markup."""
    return escape(safe(value, lines=lines))
