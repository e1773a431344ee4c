"""The OpenAPI description served at ``/api/openapi.json``. ``tests/test_ops.py`` checks it names
exactly the routes the app serves, so it cannot drift."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from semantik import __version__
from semantik.models import Collection, CollectionCreate, FileInfo, Job, JobCreate, SearchHit, SearchRequest

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
            "required": ["code", "message"],
        }
    },
}

ERROR_RESPONSE = {
    "description": "Error, in the one shape every error has",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}

# (method, path) -> (summary, request model, success status, response schema name or None)
ROUTES: dict[tuple[str, str], tuple[str, type[BaseModel] | None, int, str | None]] = {
    ("get", "/api/health"): ("Health of the server and its backing services", None, 200, None),
    ("post", "/api/jobs"): ("Create an embedding job for a directory", JobCreate, 201, "Job"),
    ("get", "/api/jobs"): ("List jobs, newest first (status, limit, offset)", None, 200, None),
    ("post", "/api/jobs/ping"): ("Round trip through the queue to a worker", None, 200, None),
    ("get", "/api/jobs/{job_id}"): ("One job, with its failed files", None, 200, "Job"),
    ("get", "/api/jobs/{job_id}/files"): ("The files of a job (status, limit, offset)", None, 200, None),
    ("post", "/api/jobs/{job_id}/cancel"): ("Cancel a queued or running job", None, 202, "Job"),
    ("post", "/api/jobs/{job_id}/retry"): ("Run a failed, cancelled or errored job again", None, 202, "Job"),
    ("get", "/api/jobs/{job_id}/ws"): ("WebSocket: snapshot, then the job's events", None, 101, None),
    ("get", "/api/ws/jobs"): ("WebSocket: snapshot, then every job's events", None, 101, None),
    ("get", "/api/collections"): ("List collections with document and chunk counts", None, 200, None),
    ("post", "/api/collections"): ("Create an empty collection", CollectionCreate, 201, "Collection"),
    ("get", "/api/collections/{name}"): ("One collection", None, 200, "Collection"),
    ("post", "/api/search"): ("Search a collection by meaning", SearchRequest, 200, None),
    ("get", "/api/monitor"): ("Workers, queue, running jobs, failures, throughput", None, 200, None),
    ("get", "/api/gpus"): ("GPU lease slots (holder, job, since, expiry) and waiters", None, 200, None),
    ("get", "/api/openapi.json"): ("This description", None, 200, None),
    ("get", "/metrics"): ("Prometheus metrics (text format)", None, 200, None),
}


def spec() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for model in (Job, FileInfo, Collection, SearchHit, JobCreate, CollectionCreate, SearchRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths: dict[str, Any] = {}
    for (method, path), (summary, request, status, response) in ROUTES.items():
        operation: dict[str, Any] = {"summary": summary, "responses": {}}
        params = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        if params:
            operation["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                       for p in params]  # fmt: skip
        if request is not None:
            ref = {"$ref": f"#/components/schemas/{request.__name__}"}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        success: dict[str, Any] = {"description": "OK"}
        if response is not None:
            success["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}}
        operation["responses"][str(status)] = success
        error = {
            "description": "Error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        operation["responses"]["default"] = error
        operation["security"] = [] if path == "/api/health" else [{"bearer": []}]
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Semantik", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
