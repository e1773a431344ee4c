"""``semantik sync`` and ``semantik check``: keep a collection in step with its folders."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from semantik.cli.common import _api_url, _print_job_and_exit, _run_client, _see_through, _settings, _token


@click.command()
@click.argument("collection")
@click.option("--no-wait", is_flag=True, help="Print the job and return at once.")
@click.option("--follow", "-f", is_flag=True, help="Live progress over the job's WebSocket.")
@click.option("--url", help="Server URL [SEMANTIK_URL].")
def sync(collection: str, no_wait: bool, follow: bool, url: str | None) -> None:
    """Make COLLECTION mirror its folders: index new and changed files, follow moves, drop deleted ones."""
    from semantik.cli.client import Client
    from semantik.cli.term import safe

    settings = _settings()

    async def run() -> dict[str, Any]:
        async with Client(_api_url(settings, url), _token(settings)) as client:
            job = dict(await client.request("POST", f"/api/collections/{collection}/sync"))
            click.echo(f"sync job {safe(job['id'])} queued", err=True)
            return dict(await _see_through(client, settings, job, no_wait=no_wait, follow=follow))

    _print_job_and_exit(_run_client(run()))


@click.command()
@click.argument("collection")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON of GET /api/collections/NAME/check.")
@click.option("--url", help="Server URL [SEMANTIK_URL].")
def check(collection: str, as_json: bool, url: str | None) -> None:
    """Count what is out of step in COLLECTION: vectors without a file, indexed files without
    vectors, files gone from disk. Exits 1 unless all three are zero."""
    from semantik.cli.client import Client
    from semantik.cli.term import safe

    settings = _settings()

    async def run() -> dict[str, Any]:
        async with Client(_api_url(settings, url), _token(settings)) as client:
            return dict(await client.request("GET", f"/api/collections/{collection}/check"))

    report = _run_client(run())
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"{safe(collection)}: {report['points']} points, {report['files']} files remembered")
        for key, label in (
            ("vectors_without_file", "vectors without a file"),
            ("files_without_vectors", "indexed files without their vectors"),
            ("files_missing", "files gone from disk (not synced yet)"),
        ):
            click.echo(f"  {label}: {report[key]}")
            for example in report["examples"][key]:
                click.echo(f"    {safe(example)}")
        click.echo("in step" if report["ok"] else f"out of step: run `semantik sync {safe(collection)}`")
    if not report["ok"]:
        sys.exit(1)
