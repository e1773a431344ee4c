"""The one route table: every path the server answers, with what its OpenAPI description says about
it (summary, request model, success statuses, query parameters). ``create_app`` registers it and
``openapi.spec`` describes it, so the two cannot drift."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from semantik.domain import FileStatus, JobStatus
from semantik.web import openapi, views, ws
from semantik.web.models import CollectionCreate, CollectionUpdate, JobCreate, SearchRequest, SourceCreate, SourceUpdate
from semantik.web.openapi import Query, Route


def _enum(values: type[JobStatus] | type[FileStatus]) -> dict[str, Any]:
    return {"type": "string", "enum": [member.value for member in values]}


def _int(low: int, high: int, default: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, "default": default}


_PAGE = (Query("offset", "How many to skip", _int(0, 10**9, 0)),)
_JOB_QUERY = (
    Query("status", "Only jobs in this state", _enum(JobStatus)),
    Query("limit", "At most this many", _int(0, views.MAX_JOBS_LISTED, 100)),
    *_PAGE,
)
_FILE_QUERY = (
    Query("status", "Only files in this state", _enum(FileStatus)),
    Query("limit", "At most this many", _int(0, views.MAX_FILES_LISTED, 1000)),
    *_PAGE,
)
_JOB_WS_QUERY = (
    Query("stay", "Keep the socket open after the job ends (1, true or yes)", {"type": "string"}),
    Query("after_seq", "The last seq this client saw (it gets a fresh snapshot)", {"type": "integer", "minimum": 0}),
)
_OK = {200: ("OK", None)}
_SWITCH = {101: ("Switching to the WebSocket protocol", None)}


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.spec(ROUTES))


ROUTES: list[Route] = [
    Route("GET", "/api/health", views.health, "Health of the server and its backing services", _OK, public=True),
    Route("POST", "/api/jobs", views.create_job, "Create an embedding job for a directory", {201: ("Queued", "Job")},
          request=JobCreate),
    Route("GET", "/api/jobs", views.list_jobs, "List jobs, newest first", _OK, query=_JOB_QUERY),
    Route("POST", "/api/jobs/ping", views.ping_worker, "Round trip through the queue to a worker", _OK,
          query=(Query("timeout_s", "How long to wait for a worker", _int(0, 120, 10)),)),
    Route("GET", "/api/jobs/{job_id}", views.get_job, "One job, with its failed files", {200: ("OK", "Job")}),
    Route("GET", "/api/jobs/{job_id}/files", views.list_job_files, "The files of a job", _OK, query=_FILE_QUERY),
    Route("POST", "/api/jobs/{job_id}/cancel", views.cancel_job, "Cancel a queued or running job",
          {200: ("Was queued: cancelled now", "Job"), 202: ("Running: stops within a batch", "Job")}),
    Route("POST", "/api/jobs/{job_id}/retry", views.retry_job, "Run a failed, cancelled or errored job again",
          {202: ("Queued again", "Job")}),
    Route("GET", "/api/jobs/{job_id}/ws", ws.job_socket, "WebSocket: snapshot, then the job's events", _SWITCH,
          query=_JOB_WS_QUERY),
    Route("GET", "/api/ws/jobs", ws.all_jobs_socket, "WebSocket: snapshot, then every job's events", _SWITCH),
    Route("GET", "/api/collections", views.list_collections, "List collections with document and chunk counts", _OK),
    Route("POST", "/api/collections", views.create_collection, "Create an empty collection",
          {201: ("Created", "Collection")}, request=CollectionCreate),
    Route("GET", "/api/collections/{name}", views.get_collection, "One collection", {200: ("OK", "Collection")}),
    Route("PATCH", "/api/collections/{name}", views.update_collection, "Set or clear the collection's sync schedule",
          {200: ("OK", "Collection")}, request=CollectionUpdate),
    Route("DELETE", "/api/collections/{name}", views.delete_collection,
          "Delete a collection: its vectors, sources, jobs and files (409 while a job of it runs)", _OK),
    Route("GET", "/api/collections/{name}/sources", views.list_sources, "The folders the collection mirrors", _OK),
    Route("POST", "/api/collections/{name}/sources", views.add_source, "Add a folder for the collection to mirror",
          {201: ("Added", "Source")}, request=SourceCreate),
    Route("PATCH", "/api/collections/{name}/sources/{source_id}", views.update_source,
          "Watch a source for changes, or stop", {200: ("OK", "Source")}, request=SourceUpdate),
    Route("DELETE", "/api/collections/{name}/sources/{source_id}", views.remove_source,
          "Remove a source and the vectors only it had (409 while a job of the collection runs)", _OK),
    Route("POST", "/api/collections/{name}/sync", views.sync_collection,
          "Sync the collection with its folders: additions, changes, moves, deletions (409 while a job runs)",
          {202: ("Queued", "Job")}),
    Route("GET", "/api/collections/{name}/check", views.check_collection,
          "Consistency: vectors without a file, indexed files without vectors, files gone from disk", _OK),
    Route("POST", "/api/search", views.search, "Search a collection by meaning", {200: ("OK", "SearchResponse")},
          request=SearchRequest),
    Route("GET", "/api/monitor", views.monitor_view, "Workers, queue, running jobs, failures, throughput", _OK),
    Route("GET", "/api/gpus", views.gpus, "GPU lease slots (holder, job, since, expiry) and waiters", _OK),
    Route("GET", "/api/openapi.json", openapi_json, "This description", _OK),
    Route("GET", "/metrics", views.metrics, "Prometheus metrics (text format)", _OK),
]  # fmt: skip
