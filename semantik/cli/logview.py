"""``semantik logs``: filter and pretty-print Semantik's JSON log lines (server, workers, CLI)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import click

from semantik.cli.term import safe

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
FOLLOW_POLL_S = 0.25
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_COLORS = {"debug": "bright_black", "info": "green", "warning": "yellow", "error": "red", "critical": "red"}
_HEAD = ("ts", "level", "event")


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``10m``, ``2h``, ``1d``, ``30s``, or an ISO timestamp."""
    match = _DURATION.match(value.strip())
    if match:
        delta = timedelta(**{_UNITS[match[2]]: float(match[1])})
        return (now or datetime.now(UTC)) - delta
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: use 10m, 2h, 1d or an ISO time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class Filter:
    job: str | None = None
    level: str | None = None
    event: str | None = None
    since: datetime | None = None

    @property
    def active(self) -> bool:
        return any(value is not None for value in (self.job, self.level, self.event, self.since))

    def accepts(self, record: dict[str, Any]) -> bool:
        if self.job and record.get("job_id") != self.job:
            return False
        if self.level and LEVELS.get(str(record.get("level", "")).lower(), 0) < LEVELS[self.level]:
            return False
        if self.event and record.get("event") != self.event:
            return False
        if self.since:
            try:
                ts = datetime.fromisoformat(str(record.get("ts", "")).replace("Z", "+00:00"))
            except ValueError:
                return False
            if ts < self.since:
                return False
        return True


def parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def pretty(record: dict[str, Any], color: bool = True) -> str:
    """One record on one line (its exception below it). Every value is shown with its control
    characters escaped: a file name or an error text may hold terminal escape sequences."""

    def style(text: str, **styles: Any) -> str:
        return click.style(text, **styles) if color else text

    level = safe(record.get("level", "")).lower()
    head = f"{safe(record.get('ts', '')):<27} " + style(f"{level:<8}", fg=_COLORS.get(level)) + " "
    head += style(safe(record.get("event", "")), bold=True)
    rest = " ".join(
        f"{safe(key)}={safe(value)}" for key, value in record.items() if key not in _HEAD and key != "exception"
    )
    text = f"{head} {rest}".rstrip()
    if "exception" in record:
        text += "\n" + safe(record["exception"], lines=True)
    return text


def lines_of(handles: list[TextIO], follow: bool) -> Iterator[str]:
    for handle in handles:
        yield from handle
    while follow:
        got = False
        for handle in handles:
            for line in iter(handle.readline, ""):
                got = True
                yield line
        if not got:
            time.sleep(FOLLOW_POLL_S)


def show(lines: Iterable[str], flt: Filter, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Write the matching records (JSON, or pretty with colours on a terminal) to ``out``."""
    shown = 0
    color = out.isatty()
    for line in lines:
        record = parse(line)
        if record is None:
            if not flt.active and line.strip():
                out.write(safe(line.rstrip("\r\n")) + "\n")  # not ours: pass it through, made harmless
            continue
        if not flt.accepts(record):
            continue
        out.write((json.dumps(record) if as_json else pretty(record, color)) + "\n")
        out.flush()
        shown += 1
    return shown
