"""WebSockets: one job's events (``/api/jobs/{id}/ws``) or every job's (``/api/ws/jobs``).

A socket first listens, then reads a snapshot from the database and sends it, then forwards events
with a ``seq`` above the snapshot's: nothing is missed between the two, and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

from aiohttp import WSCloseCode, web

from semantik.domain import TERMINAL_EVENTS, TERMINAL_STATES, EventType
from semantik.errors import BadRequest, field_error
from semantik.events.hub import Event, Listener
from semantik.events.publish import envelope
from semantik.runtime import Runtime
from semantik.web.appkeys import HUB, RUNTIME, SOCKETS

HEARTBEAT_S = 20.0
SNAPSHOT_JOBS = 200
PROTOCOL = "semantik"


def check_protocols(request: web.Request) -> None:
    """A client that offers subprotocols must offer ours. (Otherwise aiohttp would log the offered
    list, which holds ``bearer.<token>``; and a browser would drop the connection anyway.) The
    Origin of an upgrade is checked with every other request's (``middlewares.same_site``)."""
    header = request.headers.get("Sec-WebSocket-Protocol")
    if header is not None and PROTOCOL not in {protocol.strip() for protocol in header.split(",")}:
        raise BadRequest(
            f"offer the {PROTOCOL!r} WebSocket subprotocol (with 'bearer.<token>' when a token is needed)",
            code="unsupported_subprotocol",
        )


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in {"1", "true", "yes"}


async def _open(request: web.Request) -> web.WebSocketResponse:
    check_protocols(request)
    # No per-message compression: every client then gets byte-identical frames (hub.text_frame).
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, protocols=(PROTOCOL,), max_msg_size=64 * 1024, compress=False)
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
    await ws.send_json(envelope(EventType.SNAPSHOT, job_id, job.seq, job.model_dump(mode="json")))
    return job.seq, job.status in TERMINAL_STATES


async def _next(ws: web.WebSocketResponse, listener: Listener) -> Event | None:
    """Wait for the next queued event, letting the relay write straight to the socket meanwhile."""
    writer = ws._writer  # the relay writes prepared frames to the transport while we idle
    listener.transport = writer.transport if writer is not None else None
    try:
        return await listener.get()
    finally:
        listener.transport = None


async def _send_job_events(ws: web.WebSocketResponse, rt: Runtime, listener: Listener, job_id: str, stay: bool) -> None:
    last_seq, finished = await _job_snapshot(ws, rt, job_id)
    listener.last_seq[job_id] = last_seq
    while not (finished and not stay):
        event = await _next(ws, listener)
        if listener.finished:
            break  # the terminal event went out directly
        if event is None:  # fell behind, or the relay reconnected: start again from the database
            listener.last_seq[job_id], finished = await _job_snapshot(ws, rt, job_id)
            continue
        parsed, raw, _ = event
        if parsed["seq"] <= listener.last_seq[job_id]:
            continue  # already part of the snapshot
        await ws.send_str(raw)
        listener.last_seq[job_id] = parsed["seq"]
        finished = parsed["type"] in TERMINAL_EVENTS
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


async def _jobs_snapshot(ws: web.WebSocketResponse, rt: Runtime, listener: Listener) -> None:
    jobs = await rt.jobs.list_jobs(limit=SNAPSHOT_JOBS)
    data: dict[str, Any] = {"jobs": [job.model_dump(mode="json") for job in jobs]}
    await ws.send_json(envelope(EventType.SNAPSHOT, "*", 0, data))
    listener.last_seq.clear()
    listener.last_seq.update({job.id: job.seq for job in jobs})


async def _send_all_events(ws: web.WebSocketResponse, rt: Runtime, listener: Listener) -> None:
    await _jobs_snapshot(ws, rt, listener)
    while True:
        event = await _next(ws, listener)
        if event is None:
            await _jobs_snapshot(ws, rt, listener)
            continue
        parsed, raw, _ = event
        if parsed["seq"] <= listener.last_seq.get(parsed["job_id"], 0):
            continue
        listener.last_seq[parsed["job_id"]] = parsed["seq"]
        await ws.send_str(raw)


async def close_all(app: web.Application) -> None:
    """On shutdown: tell every client we are going away, rather than dropping the connection."""
    sockets = app[SOCKETS]
    for ws in list(sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def new_socket_set() -> weakref.WeakSet[web.WebSocketResponse]:
    return weakref.WeakSet()
