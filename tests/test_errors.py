"""Every error path answers in one JSON shape with the right status, and a bad request changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from semantik.cli.redis_server import free_port
from semantik.runtime import Runtime
from tests.conftest import ApiFactory
from tests.helpers import assert_error, write


async def job_count(runtime: Runtime) -> int:
    return int(await runtime.db.fetchval("SELECT COUNT(*) FROM jobs"))


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {("collection",), ("directory",)}),
        ({"collection": "bad name!", "directory": "/x"}, {("collection",)}),
        ({"collection": "ok", "directory": 5}, {("directory",)}),
        ({"collection": "ok", "directory": "/x", "recursive": "maybe"}, {("recursive",)}),
        ({"collection": "ok", "directory": "/x", "include": "*.txt"}, {("include",)}),
        ({"collection": "ok", "directory": "/x", "surprise": 1}, {("surprise",)}),
    ],
)
async def test_invalid_job_bodies_are_422_with_field_errors(
    api: TestClient[Any, Any], runtime: Runtime, body: dict[str, Any], fields: set[tuple[str, ...]]
) -> None:
    response = await api.post("/api/jobs", json=body)
    assert response.status == 422
    error = assert_error(await response.json(), "validation_error")
    assert {tuple(d["loc"]) for d in error["details"]} == fields
    assert await job_count(runtime) == 0


async def test_malformed_json_is_400(api: TestClient[Any, Any], runtime: Runtime) -> None:
    response = await api.post("/api/jobs", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert_error(await response.json(), "invalid_json")
    assert await job_count(runtime) == 0


async def test_directory_outside_allowed_roots_is_403_and_changes_nothing(
    api: TestClient[Any, Any], runtime: Runtime, tmp_path: Path, docs: Path
) -> None:
    outside = tmp_path / "private"
    write(outside / "secret.txt", "do not index me")
    escape = docs / "link-out"
    escape.symlink_to(outside)
    for directory in (str(outside), str(docs / ".." / "private"), str(escape), "/etc"):
        response = await api.post("/api/jobs", json={"collection": "c", "directory": directory})
        assert response.status == 403, directory
        error = assert_error(await response.json(), "path_not_allowed")
        assert error["details"]["allowed_roots"] == [str(docs)]
    assert await job_count(runtime) == 0
    assert (await (await api.get("/api/collections")).json())["collections"] == []


async def test_relative_or_missing_directory_is_422(api: TestClient[Any, Any], runtime: Runtime, docs: Path) -> None:
    response = await api.post("/api/jobs", json={"collection": "c", "directory": "docs"})
    assert response.status == 422
    assert_error(await response.json(), "path_not_absolute")
    response = await api.post("/api/jobs", json={"collection": "c", "directory": str(docs / "nope")})
    assert response.status == 422
    error = assert_error(await response.json(), "directory_not_found")
    assert error["details"][0]["loc"] == ["directory"]
    assert await job_count(runtime) == 0


async def test_not_found_paths(api: TestClient[Any, Any]) -> None:
    assert_error(await (await api.get("/api/jobs/no-such-job")).json(), "job_not_found")
    assert (await api.get("/api/jobs/no-such-job")).status == 404
    assert (await api.get("/api/jobs/no-such-job/files")).status == 404
    response = await api.get("/api/collections/missing")
    assert response.status == 404
    assert_error(await response.json(), "collection_not_found")
    response = await api.post("/api/search", json={"query": "q", "collection": "missing"})
    assert response.status == 404
    assert_error(await response.json(), "collection_not_found")
    response = await api.get("/api/definitely/not/here")
    assert response.status == 404
    assert_error(await response.json(), "not_found")


async def test_method_not_allowed_is_405_json(api: TestClient[Any, Any]) -> None:
    response = await api.delete("/api/collections")
    assert response.status == 405
    assert_error(await response.json(), "method_not_allowed")


async def test_collection_create_then_conflict(api: TestClient[Any, Any]) -> None:
    response = await api.post("/api/collections", json={"name": "notes"})
    assert response.status == 201
    created = await response.json()
    assert (created["name"], created["dim"], created["documents"]) == ("notes", 384, 0)
    response = await api.post("/api/collections", json={"name": "notes"})
    assert response.status == 409
    assert_error(await response.json(), "collection_exists")
    # An existing but empty collection searches to nothing rather than failing.
    response = await api.post("/api/search", json={"query": "anything", "collection": "notes"})
    assert response.status == 200
    assert (await response.json())["results"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "q", "collection": "c", "k": 0}, "k"),
        ({"query": "q", "collection": "c", "k": 101}, "k"),
        ({"query": "", "collection": "c"}, "query"),
        ({"collection": "c"}, "query"),
    ],
)
async def test_search_validation(api: TestClient[Any, Any], body: dict[str, Any], field: str) -> None:
    response = await api.post("/api/search", json=body)
    assert response.status == 422
    error = assert_error(await response.json(), "validation_error")
    assert [d["loc"] for d in error["details"]] == [[field]]


async def test_bad_query_parameters_are_422(api: TestClient[Any, Any]) -> None:
    response = await api.get("/api/jobs?limit=lots")
    assert response.status == 422
    assert_error(await response.json(), "invalid_query")


async def test_redis_down_gives_503_and_leaves_nothing_behind(make_api: ApiFactory, docs: Path) -> None:
    api, _ = await make_api(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    write(docs / "a.txt", "text")
    response = await api.post("/api/jobs", json={"collection": "c", "directory": str(docs)})
    assert response.status == 503
    assert_error(await response.json(), "queue_unavailable")
    assert (await (await api.get("/api/jobs")).json())["jobs"] == []  # a refused request changes nothing
    assert (await (await api.get("/api/collections")).json())["collections"] == []
    health = await api.get("/api/health")
    assert health.status == 503
    assert (await health.json())["checks"]["redis"].startswith("unavailable")


async def test_token_required_when_configured(make_api: ApiFactory) -> None:
    api, _ = await make_api(api_token=SecretStr("s3cret-token-0123456"))
    for method, path in (
        ("GET", "/api/jobs"),
        ("POST", "/api/jobs"),
        ("POST", "/api/search"),
        ("GET", "/api/collections"),
        ("GET", "/api/jobs/x/files"),
    ):
        response = await api.request(method, path)
        assert response.status == 401, path
        assert_error(await response.json(), "unauthorized")
        wrong = await api.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
    ok = await api.get("/api/jobs", headers={"Authorization": "Bearer s3cret-token-0123456"})
    assert ok.status == 200
    assert (await api.get("/api/health")).status == 200  # probes need no token
