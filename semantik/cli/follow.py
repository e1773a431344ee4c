"""``semantik index --follow``: a live progress bar driven by the job's WebSocket."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from semantik.cli.term import safe_markup
from semantik.domain import TERMINAL_EVENTS, TERMINAL_STATES, EventType

COUNTERS = ("files_total", "files_done", "files_failed", "files_skipped", "chunks")


def ws_url(base_url: str, job_id: str) -> str:
    return base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + f"/api/jobs/{job_id}/ws"


class _Display:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files · {task.fields[chunks]} chunks · {task.fields[rate]} chunks/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID = self.progress.add_task("queued", total=None, chunks=0, rate="-")
        self.state: dict[str, Any] = {}

    def update(self, data: dict[str, Any], status: str | None = None) -> None:
        self.state.update({key: data[key] for key in COUNTERS if key in data})
        s = self.state
        finished = s.get("files_done", 0) + s.get("files_failed", 0) + s.get("files_skipped", 0)
        fields: dict[str, Any] = {"chunks": safe_markup(s.get("chunks", 0))}
        if isinstance(data.get("rate_chunks_s"), int | float):
            fields["rate"] = f"{data['rate_chunks_s']:.1f}"
        self.progress.update(
            self.task,
            total=s.get("files_total") or None,
            completed=finished,
            description=safe_markup(status or data.get("status") or "running"),
            **fields,
        )


def _print_failure(console: Console, path: object, error: object) -> None:
    """A failed file: its name and the reason may hold anything (control characters, markup)."""
    console.print(f"[red]failed[/red] {safe_markup(path)}: {safe_markup(error)}")


async def follow_job(base_url: str, token: str | None, job_id: str, console: Console | None = None) -> dict[str, Any]:
    """Stream the job's events until it ends; returns the final state (from the terminal event)."""
    console = console or Console(stderr=True)
    display = _Display(console)
    protocols = ["semantik"] + ([f"bearer.{token}"] if token else [])
    final: dict[str, Any] = {}
    with display.progress:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws_url(base_url, job_id), protocols=protocols, heartbeat=30) as ws,
        ):
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(message.data)
                kind, data = event["type"], event["data"]
                if kind == EventType.SNAPSHOT:
                    display.update(data)
                    for failed in data.get("failed_files") or []:
                        _print_failure(console, failed.get("path"), failed.get("error"))
                    final = data
                elif kind == EventType.FILE_FAILED:
                    _print_failure(console, data.get("path"), data.get("error"))
                    display.update(data)
                else:
                    display.update(data)
                if kind in TERMINAL_EVENTS or (kind == EventType.SNAPSHOT and data.get("status") in TERMINAL_STATES):
                    final = data
    return final
