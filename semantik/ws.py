"""WebSockets: one job's events (``/api/jobs/{id}/ws``) or every job's (``/api/ws/jobs``).

A socket first listens, then reads a snapshot from the database and sends it, then forwards events
with a ``seq`` above the snapshot's: nothing is missed between the two, and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, web

from semantik import constants as c
from semantik.errors import Forbidden
from semantik.events import envelope
from semantik.hub import Listener
from semantik.keys import HUB, RUNTIME, SOCKETS
from semantik.runtime import Runtime
from semantik.services import field_error

HEARTBEAT_S = 20.0
SNAPSHOT_JOBS = 200
PROTOCOL = "semantik"


def check_origin(request: web.Request) -> None:
    """Browsers send Origin; a page from another site must not drive this API with the user's token."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if urlsplit(origin).netloc.lower() != request.host.lower():
        raise Forbidden(f"WebSocket origin {origin} is not allowed", code="origin_not_allowed")


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in {"1", "true", "yes"}


async def _open(request: web.Request) -> web.WebSocketResponse:
    check_origin(request)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, protocols=(PROTOCOL,), max_msg_size=64 * 1024)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    return ws


async def _serve(ws: web.WebSocketResponse, sender: asyncio.Task[None]) -> None:
    """Read until the client goes (this also answers pings and close frames), then stop the sender."""
    try:
        async for _ in ws:
            pass  # clients have nothing to say; their messages are ignored
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender


async def job_socket(request: web.Request) -> web.WebSocketResponse:
    rt, hub = request.app[RUNTIME], request.app[HUB]
    job_id = request.match_info["job_id"]
    await rt.jobs.get_job(job_id)  # 404 before the upgrade
    # A reconnecting client passes the last seq it saw; the fresh snapshot covers everything up to now.
    after_seq = request.query.get("after_seq", "0")
    if not after_seq.isdigit():
        raise field_error("after_seq", "after_seq must be a non-negative integer", "invalid_query")
    stay = _flag(request, "stay")
    ws = await _open(request)
    listener = hub.listen(job_id)
    try:
        await _serve(ws, asyncio.create_task(_send_job_events(ws, rt, listener, job_id, stay)))
    finally:
        hub.unlisten(listener)
    return ws


async def _job_snapshot(ws: web.WebSocketResponse, rt: Runtime, job_id: str) -> tuple[int, bool]:
    job = await rt.jobs.get_job(job_id, with_failed_files=True)
    await ws.send_json(envelope(c.SNAPSHOT, job_id, job.seq, job.model_dump(mode="json")))
    return job.seq, job.status in c.TERMINAL_STATES


async def _send_job_events(ws: web.WebSocketResponse, rt: Runtime, listener: Listener, job_id: str, stay: bool) -> None:
    last_seq, finished = await _job_snapshot(ws, rt, job_id)
    while not (finished and not stay):
        event = await listener.get()
        if event is None:  # fell behind, or the relay reconnected: start again from the database
            last_seq, finished = await _job_snapshot(ws, rt, job_id)
            continue
        parsed, raw = event
        if parsed["seq"] <= last_seq:
            continue  # already part of the snapshot
        await ws.send_str(raw)
        last_seq = parsed["seq"]
        finished = parsed["type"] in c.TERMINAL_EVENTS
    await ws.close(code=WSCloseCode.OK, message=b"job finished")


async def all_jobs_socket(request: web.Request) -> web.WebSocketResponse:
    rt, hub = request.app[RUNTIME], request.app[HUB]
    ws = await _open(request)
    listener = hub.listen(None)
    try:
        await _serve(ws, asyncio.create_task(_send_all_events(ws, rt, listener)))
    finally:
        hub.unlisten(listener)
    return ws


async def _jobs_snapshot(ws: web.WebSocketResponse, rt: Runtime) -> dict[str, int]:
    jobs = await rt.jobs.list_jobs(limit=SNAPSHOT_JOBS)
    data: dict[str, Any] = {"jobs": [job.model_dump(mode="json") for job in jobs]}
    await ws.send_json(envelope(c.SNAPSHOT, "*", 0, data))
    return {job.id: job.seq for job in jobs}


async def _send_all_events(ws: web.WebSocketResponse, rt: Runtime, listener: Listener) -> None:
    seen = await _jobs_snapshot(ws, rt)
    while True:
        event = await listener.get()
        if event is None:
            seen = await _jobs_snapshot(ws, rt)
            continue
        parsed, raw = event
        if parsed["seq"] <= seen.get(parsed["job_id"], 0):
            continue
        seen[parsed["job_id"]] = parsed["seq"]
        await ws.send_str(raw)


async def close_all(app: web.Application) -> None:
    """On shutdown: tell every client we are going away, rather than dropping the connection."""
    sockets = app[SOCKETS]
    for ws in list(sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def new_socket_set() -> weakref.WeakSet[web.WebSocketResponse]:
    return weakref.WeakSet()
