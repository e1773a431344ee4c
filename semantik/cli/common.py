"""What the CLI's commands share: settings with readable errors, the server's URL and token, one
API conversation with errors turned into clear CLI errors."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from collections.abc import Coroutine
from typing import Any

import click

from semantik.settings import Settings


def _settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:  # one line per bad variable, named as the user set it
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            name = "SEMANTIK_" + "_".join(str(part) for part in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            problems.append(message if message.startswith(name) else f"{name}: {message}")
        raise click.ClickException("invalid settings:\n  " + "\n  ".join(problems)) from exc
    except Exception as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc


def _check_exposure(settings: Settings) -> None:
    host = settings.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and settings.api_token is None:
        raise click.ClickException(
            f"refusing to listen on {host} without SEMANTIK_API_TOKEN: anyone who can reach it could read"
            " your documents. Set a token, or bind to 127.0.0.1."
        )


def _api_url(settings: Settings, url: str | None) -> str:
    return url or os.environ.get("SEMANTIK_URL") or f"http://{settings.host}:{settings.port}"


def _run_client(call: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run one API conversation; API and connection errors become one clear CLI error."""
    from semantik.cli.client import ApiError
    from semantik.cli.term import safe

    try:
        return asyncio.run(call)
    except ApiError as exc:  # the server's message may quote a path or a name: no control characters
        raise click.ClickException(f"{safe(exc.message)} ({safe(exc.code)})") from exc
    except OSError as exc:
        raise click.ClickException(f"cannot reach the server: {safe(exc)}") from exc


def _get(url: str | None, path: str, as_json: bool) -> dict[str, Any] | None:
    """GET an API path; with ``as_json`` print the raw JSON and return None (nothing left to do)."""
    from semantik.cli.client import Client

    settings = _settings()

    async def run() -> dict[str, Any]:
        async with Client(_api_url(settings, url), _token(settings)) as client:
            return dict(await client.request("GET", path))

    data = _run_client(run())
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return None
    return data


def _token(settings: Settings) -> str | None:
    return settings.api_token.get_secret_value() if settings.api_token else None


async def _wait_with_progress(client: Any, job_id: str) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from semantik.cli.term import safe_markup

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]} chunks"),
        TimeRemainingColumn(),
        transient=True,
        console=None,
    ) as progress:
        task = progress.add_task("indexing", total=None, chunks=0)

        def update(job: dict[str, Any]) -> None:
            finished = job["files_done"] + job["files_failed"] + job["files_skipped"]
            progress.update(
                task,
                total=job["files_total"] or None,
                completed=finished,
                chunks=safe_markup(job["chunks"]),
                description=safe_markup(job["status"]),
            )

        await client.wait(job_id, on_update=update)
    return await client.request("GET", f"/api/jobs/{job_id}")  # type: ignore[no-any-return]


async def _see_through(client: Any, settings: Settings, job: dict[str, Any], *, no_wait: bool, follow: bool) -> Any:
    """After a job was queued: return it at once, follow its WebSocket, or wait with a progress bar;
    the job as it ended (or as queued)."""
    if no_wait:
        return job
    if follow:
        from semantik.cli.follow import follow_job

        await follow_job(client.base_url, _token(settings), job["id"])
        return dict(await client.request("GET", f"/api/jobs/{job['id']}"))
    return await _wait_with_progress(client, job["id"])


def _print_job_and_exit(job: dict[str, Any]) -> None:
    """Standard output is exactly the job as JSON; exit 1 if it failed or was cancelled."""
    import sys

    click.echo(json.dumps(job, indent=2))
    if job["status"] in ("failed", "cancelled"):
        sys.exit(1)
