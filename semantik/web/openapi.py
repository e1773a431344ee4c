"""The OpenAPI 3.1 description served at ``/api/openapi.json``, made from the route table
(``semantik.web.routes.ROUTES``): paths, request bodies, success statuses, query parameters, and the
closed sets (job and file states, event types) as enums."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from semantik import __version__
from semantik.domain import Collection, EventType, FileInfo, Job, Source
from semantik.web.models import (
    CollectionCreate,
    CollectionUpdate,
    JobCreate,
    SearchHit,
    SearchRequest,
    SearchResponse,
    SourceCreate,
    SourceUpdate,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Query:
    """A query parameter, as OpenAPI describes it."""

    name: str
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    # Success statuses: status → (description, response schema name or None).
    responses: Mapping[int, tuple[str, str | None]]
    request: type[BaseModel] | None = None
    query: tuple[Query, ...] = ()
    public: bool = False  # answers without the API token


ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}

EVENT_SCHEMA = {
    "type": "object",
    "description": "A job event, as WebSocket clients receive it",
    "properties": {
        "type": {"$ref": "#/components/schemas/EventType"},
        "job_id": {"type": "string"},
        "seq": {"type": "integer"},
        "ts": {"type": "string"},
        "data": {"type": "object"},
    },
    "required": ["type", "job_id", "seq", "ts", "data"],
}

MODELS = (Job, FileInfo, Collection, Source, SearchHit, SearchResponse, JobCreate, CollectionCreate,
          CollectionUpdate, SourceCreate, SourceUpdate, SearchRequest)  # fmt: skip


def _path_parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names]


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": route.summary, "responses": {}}
    parameters = _path_parameters(route.path) + [
        {"name": q.name, "in": "query", "required": False, "description": q.description, "schema": q.schema}
        for q in route.query
    ]
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        ref = {"$ref": f"#/components/schemas/{route.request.__name__}"}
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    for status, (description, schema) in route.responses.items():
        response: dict[str, Any] = {"description": description}
        if schema is not None:
            response["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
        operation["responses"][str(status)] = response
    operation["responses"]["default"] = {
        "description": "Error, in the one shape every error has",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    operation["security"] = [] if route.public else [{"bearer": []}]
    return operation


def spec(routes: Sequence[Route]) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": ERROR_SCHEMA,
        "Event": EVENT_SCHEMA,
        "EventType": {"type": "string", "enum": [member.value for member in EventType]},
    }
    for model in MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Semantik", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
