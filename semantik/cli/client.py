"""A small async client for the REST API, used by the CLI and the benchmarks."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import aiohttp

from semantik.domain import TERMINAL_STATES


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 300) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._session.close()

    async def request(self, method: str, path: str, json: Any = None) -> Any:
        async with self._session.request(method, self.base_url + path, json=json) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            if response.status >= 400:
                error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
                raise ApiError(
                    response.status,
                    error.get("code", "http_error"),
                    error.get("message", response.reason or ""),
                    error.get("details"),
                )
            return body

    async def create_job(self, collection: str, directory: str, **options: Any) -> dict[str, Any]:
        body = {
            "collection": collection,
            "directory": directory,
            **{k: v for k, v in options.items() if v is not None},
        }
        return dict(await self.request("POST", "/api/jobs", body))

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/api/jobs/{job_id}"))

    async def wait(self, job_id: str, poll_s: float = 0.5, on_update: Any = None) -> dict[str, Any]:
        while True:
            job = await self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL_STATES:
                return job
            await asyncio.sleep(poll_s)

    async def search(
        self,
        query: str,
        collection: str,
        k: int = 10,
        mode: str | None = None,
        *,
        group_by: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """POST /api/search; ``mode`` hybrid, dense or keyword (None: the server's default, hybrid);
        ``group_by`` chunk or document; ``filters`` as the API takes them (path_prefix, file_types,
        modified_after, modified_before)."""
        body: dict[str, Any] = {"query": query, "collection": collection, "k": k}
        if mode is not None:
            body["mode"] = mode
        if group_by is not None:
            body["group_by"] = group_by
        if filters:
            body["filters"] = filters
        return dict(await self.request("POST", "/api/search", body))
