"""HTTP handlers: parse into a model, call one service function, answer JSON."""

from __future__ import annotations

import codecs
import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from redis.exceptions import RedisError

from semantik.domain import FileStatus, JobStatus
from semantik.errors import BadRequest, NotFound, Unavailable, UnsupportedMediaType, field_error
from semantik.redis_names import PING_FUNCTION
from semantik.sync import queue_sync
from semantik.web import monitor, services
from semantik.web.appkeys import HUB, METRICS, QUEUE, RUNTIME, SETTINGS
from semantik.web.middlewares import has_token, host_allowed
from semantik.web.models import (
    CollectionCreate,
    CollectionUpdate,
    JobCreate,
    SearchRequest,
    SearchResponse,
    SourceCreate,
    SourceUpdate,
)

M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", JobStatus, FileStatus)

MAX_JOBS_LISTED = 1000
MAX_FILES_LISTED = 10_000
MAX_OFFSET = 10**9


async def parse(request: web.Request, model: type[M]) -> M:
    """The JSON body as ``model``. Only ``application/json``: a page of another site can send a
    form or ``text/plain`` without asking (a "simple" request), but never JSON."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"send the body as JSON with Content-Type: application/json (not {request.content_type})"
        )
    charset = request.charset or "utf-8"
    try:
        text = (await request.read()).decode(codecs.lookup(charset).name)
    except LookupError as exc:
        raise BadRequest(f"unknown charset {charset[:40]!r} in Content-Type", code="invalid_charset") from exc
    except (UnicodeError, ValueError) as exc:
        raise BadRequest(f"request body is not valid {charset[:40]}: {str(exc)[:200]}", code="invalid_json") from exc
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:
        raise BadRequest("request body is nested too deeply", code="invalid_json") from exc
    try:
        return model.model_validate(body)
    except RecursionError as exc:
        raise BadRequest("request body is nested too deeply", code="invalid_json") from exc


def _query_int(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= high:
        raise field_error(name, f"{name} must be an integer from 0 to {high}", "invalid_query")
    return value


def _query_enum(request: web.Request, name: str, values: type[E]) -> E | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return values(raw)
    except ValueError:
        allowed = ", ".join(member.value for member in values)
        raise field_error(name, f"{name} must be one of: {allowed}", "invalid_query") from None


def json_out(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return web.json_response(data, status=status)


async def create_job(request: web.Request) -> web.Response:
    job = await services.create_job(request.app[RUNTIME], request.app[QUEUE], await parse(request, JobCreate))
    return json_out(job, status=201)


async def list_jobs(request: web.Request) -> web.Response:
    jobs = await request.app[RUNTIME].jobs.list_jobs(
        status=_query_enum(request, "status", JobStatus),
        limit=_query_int(request, "limit", 100, MAX_JOBS_LISTED),
        offset=_query_int(request, "offset", 0, MAX_OFFSET),
    )
    return json_out({"jobs": [job.model_dump(mode="json") for job in jobs]})


async def get_job(request: web.Request) -> web.Response:
    return json_out(await request.app[RUNTIME].jobs.get_job(request.match_info["job_id"], with_failed_files=True))


async def cancel_job(request: web.Request) -> web.Response:
    job, cancelled = await services.cancel_job(request.app[RUNTIME], request.app[QUEUE], request.match_info["job_id"])
    return json_out(job, status=200 if cancelled else 202)


async def retry_job(request: web.Request) -> web.Response:
    job = await services.retry_job(request.app[RUNTIME], request.app[QUEUE], request.match_info["job_id"])
    return json_out(job, status=202)


async def list_job_files(request: web.Request) -> web.Response:
    store = request.app[RUNTIME].jobs
    job = await store.get_job(request.match_info["job_id"])
    files = await store.list_files(
        job.id,
        status=_query_enum(request, "status", FileStatus),
        limit=_query_int(request, "limit", 1000, MAX_FILES_LISTED),
        offset=_query_int(request, "offset", 0, MAX_OFFSET),
    )
    return json_out({"job_id": job.id, "files": [f.model_dump(mode="json") for f in files]})


async def list_collections(request: web.Request) -> web.Response:
    collections = await request.app[RUNTIME].jobs.list_collections()
    return json_out({"collections": [col.model_dump(mode="json") for col in collections]})


async def create_collection(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    body = await parse(request, CollectionCreate)
    return json_out(await rt.jobs.create_collection(body.name, rt.model_name, rt.model_dim), status=201)


async def get_collection(request: web.Request) -> web.Response:
    return json_out(await request.app[RUNTIME].jobs.get_collection(request.match_info["name"]))


async def update_collection(request: web.Request) -> web.Response:
    body = await parse(request, CollectionUpdate)
    rt = request.app[RUNTIME]
    return json_out(await rt.jobs.set_sync_interval(request.match_info["name"], body.sync_interval_s))


async def delete_collection(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await services.delete_collection(request.app[RUNTIME], name)
    return json_out({"deleted": name})


def _source_id(request: web.Request) -> int:
    raw = request.match_info["source_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"no source {raw[:40]!r}", code="source_not_found")
    return int(raw)


async def list_sources(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    name = request.match_info["name"]
    await rt.jobs.get_collection(name)
    return json_out({"sources": [source.model_dump(mode="json") for source in await rt.sources.of_collection(name)]})


async def add_source(request: web.Request) -> web.Response:
    body = await parse(request, SourceCreate)
    return json_out(await services.add_source(request.app[RUNTIME], request.match_info["name"], body), status=201)


async def update_source(request: web.Request) -> web.Response:
    body = await parse(request, SourceUpdate)
    rt = request.app[RUNTIME]
    return json_out(await rt.sources.set_watch(request.match_info["name"], _source_id(request), body.watch))


async def remove_source(request: web.Request) -> web.Response:
    removed = await services.remove_source(request.app[RUNTIME], request.match_info["name"], _source_id(request))
    return json_out({"removed": removed})


async def sync_collection(request: web.Request) -> web.Response:
    job = await queue_sync(request.app[RUNTIME], request.app[QUEUE], request.match_info["name"])
    return json_out(job, status=202)


async def check_collection(request: web.Request) -> web.Response:
    return json_out(await request.app[RUNTIME].contents.check(request.match_info["name"]))


async def search(request: web.Request) -> web.Response:
    results, took_ms = await services.search(request.app[RUNTIME], await parse(request, SearchRequest))
    request.app[METRICS].search_seconds.observe(took_ms / 1000)
    return json_out(SearchResponse(results=results, took_ms=round(took_ms, 2)))


async def _monitor(request: web.Request) -> dict[str, Any]:
    data = await monitor.snapshot(request.app[RUNTIME], request.app[QUEUE])
    data["ws_clients"] = request.app[HUB].listener_count
    return data


async def monitor_view(request: web.Request) -> web.Response:
    return web.json_response(await _monitor(request))


async def gpus(request: web.Request) -> web.Response:
    return web.json_response(await monitor.gpu_status(request.app[QUEUE], request.app[RUNTIME]))


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render(await _monitor(request))
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def health(request: web.Request) -> web.Response:
    """Healthy or degraded, for anyone (probes need no token, and may name any Host). Details
    (check results with their error texts, the model) only for a caller the server trusts: with
    the token, or, when none is configured, from a Host it answers to."""
    rt = request.app[RUNTIME]
    checks: dict[str, Any] = {}
    try:
        await request.app[QUEUE].ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {exc}"
    try:
        await rt.db.fetchval("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {exc}"
    healthy = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {"status": "ok" if healthy else "degraded"}
    trusted = has_token(request) if request.app[SETTINGS].api_token is not None else host_allowed(request)
    if trusted:
        body.update(checks=checks, model=rt.model_name)
    return web.json_response(body, status=200 if healthy else 503)


async def ping_worker(request: web.Request) -> web.Response:
    """Round trip through the queue: which worker answered, and how long it took."""
    queue = request.app[QUEUE]
    timeout_s = _query_int(request, "timeout_s", 10, 120)
    try:
        job = await queue.enqueue_job(PING_FUNCTION)
    except (RedisError, OSError) as exc:
        raise Unavailable(f"the job queue (Redis) is unavailable: {exc}", code="queue_unavailable") from exc
    if job is None:
        raise Unavailable("could not enqueue the ping job", code="queue_unavailable")
    try:
        result = await job.result(timeout=timeout_s, poll_delay=0.05)
    except TimeoutError as exc:
        raise Unavailable(f"no worker answered within {timeout_s} s", code="no_worker") from exc
    return web.json_response(result)
