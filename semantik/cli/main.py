"""The ``semantik`` command: run the product (``up``, ``serve``) and use it (``index``, ``search``)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from semantik.cli import collections as collection_commands
from semantik.cli.common import (
    _api_url,
    _check_exposure,
    _get,
    _print_job_and_exit,
    _run_client,
    _see_through,
    _settings,
    _token,
)
from semantik.store.hybrid import SearchMode


@click.group()
@click.version_option(package_name="semantik")
def main() -> None:
    """Semantik: private semantic search over your documents."""


@main.command()
@click.option("--host", help="Address to listen on [SEMANTIK_HOST, default 127.0.0.1].")
@click.option("--port", type=int, help="Port to listen on [SEMANTIK_PORT, default 8420].")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory [SEMANTIK_DATA_DIR].")
def up(host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Everything on one box: Redis (started if none is configured), the server and a worker, one process."""
    from semantik.cli.up import run_embedded

    settings = _settings(host=host, port=port, data_dir=data_dir)
    _check_exposure(settings)
    asyncio.run(run_embedded(settings))


@main.command()
@click.option("--host", help="Address to listen on [SEMANTIK_HOST].")
@click.option("--port", type=int, help="Port to listen on [SEMANTIK_PORT].")
def serve(host: str | None, port: int | None) -> None:
    """The API server alone; run workers with `arq workers.main.WorkerSettings`."""
    from aiohttp import web

    from semantik.logs import AccessLogger, configure_logging
    from semantik.web.app import create_app

    settings = _settings(host=host, port=port)
    _check_exposure(settings)
    configure_logging(settings)
    click.echo(f"Semantik API on http://{settings.host}:{settings.port}", err=True)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None, access_log_class=AccessLogger)


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--collection", "-c", required=True, help="Collection to index into (created on first use).")
@click.option("--include", multiple=True, help="Glob of files to take (repeatable); default: supported types.")
@click.option("--exclude", multiple=True, help="Glob of files to leave out (repeatable).")
@click.option("--no-recursive", is_flag=True, help="Only the top level of DIRECTORY.")
@click.option("--name", help="A name for the job.")
@click.option("--no-wait", is_flag=True, help="Print the job and return at once.")
@click.option("--follow", "-f", is_flag=True, help="Live progress over the job's WebSocket (files, chunks, rate, ETA).")
@click.option("--url", help="Server URL [SEMANTIK_URL, default http://SEMANTIK_HOST:SEMANTIK_PORT].")
def index(
    directory: Path,
    collection: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    no_recursive: bool,
    name: str | None,
    no_wait: bool,
    follow: bool,
    url: str | None,
) -> None:
    """Index DIRECTORY into a collection through the API, and wait until the job ends."""
    from semantik.cli.client import Client
    from semantik.cli.term import safe

    settings = _settings()
    absolute = str(directory.resolve())

    async def run() -> dict[str, Any]:
        async with Client(_api_url(settings, url), _token(settings)) as client:
            job = await client.create_job(
                collection,
                absolute,
                recursive=not no_recursive,
                include=list(include) or None,
                exclude=list(exclude) or None,
                name=name,
            )
            click.echo(f"job {safe(job['id'])} queued", err=True)
            return dict(await _see_through(client, settings, job, no_wait=no_wait, follow=follow))

    _print_job_and_exit(_run_client(run()))


@main.command()
@click.argument("query")
@click.option("--collection", "-c", required=True)
@click.option("-k", default=5, show_default=True, type=click.IntRange(1, 100), help="How many results.")
@click.option(
    "--mode",
    type=click.Choice([mode.value for mode in SearchMode]),
    default=SearchMode.HYBRID.value,
    show_default=True,
    help="hybrid: keywords and meaning fused; dense: meaning only; keyword: exact terms (BM25) only.",
)
@click.option("--by-document", is_flag=True, help="One result per document: its best chunk, and its other hits.")
@click.option("--under", "under", metavar="FOLDER", help="Only files under this folder (absolute path).")
@click.option(
    "--type", "file_types", multiple=True, metavar="SUFFIX", help="Only this file type (pdf, docx ...); repeat."
)
@click.option("--after", metavar="TIME", help="Only files modified at or after: an ISO date or time (local).")
@click.option("--before", metavar="TIME", help="Only files modified at or before: an ISO date (its end) or time.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON response.")
@click.option("--url", help="Server URL [SEMANTIK_URL].")
def search(
    query: str,
    collection: str,
    k: int,
    mode: str,
    by_document: bool,
    under: str | None,
    file_types: tuple[str, ...],
    after: str | None,
    before: str | None,
    as_json: bool,
    url: str | None,
) -> None:
    """Search a collection and print the best chunks: where each is (file, page, slide, sheet,
    heading), the passage that matched, and the retrievers that found it."""
    from semantik.cli.client import Client

    settings = _settings()
    filters: dict[str, Any] = {}
    if under:
        filters["path_prefix"] = str(Path(under).expanduser().absolute())
    if file_types:
        filters["file_types"] = [kind.lstrip(".") for kind in file_types]
    for name, value in (("modified_after", after), ("modified_before", before)):
        if value:
            filters[name] = _iso_time(value, name.replace("modified_", "--"))

    async def run() -> dict[str, Any]:
        async with Client(_api_url(settings, url), _token(settings)) as client:
            group_by = "document" if by_document else None
            return await client.search(query, collection, k, mode=mode, group_by=group_by, filters=filters)

    response = _run_client(run())
    if as_json:
        click.echo(json.dumps(response, indent=2))  # JSON escapes every control character
        return
    if not response["results"]:
        click.echo("no results")
    for rank, hit in enumerate(response["results"], start=1):
        _print_hit(rank, hit)


def _iso_time(value: str, option: str) -> str:
    """An ISO date or time as the API takes it (with a zone): local time when none is given, as
    the web UI reads its dates; a bare date for ``--before`` means the end of that day."""
    from datetime import datetime, timedelta

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        example = "2026-03-01, 2026-03-01T09:30"
        raise click.BadParameter(f"{value!r} is not an ISO date or time ({example})", param_hint=option) from None
    if option == "--before" and len(value.strip()) == len("2026-03-01"):
        moment += timedelta(days=1, microseconds=-1)
    return (moment if moment.tzinfo else moment.astimezone()).isoformat()


HEADING_SEPARATOR = " \u203a "  # a single right-pointing angle quotation mark between headings


def location_line(hit: dict[str, Any]) -> str:
    """Where a hit is: "/docs/report.pdf · p. 12 · Results > Measurements"."""
    from semantik.cli.term import safe

    parts = [safe(hit["path"])]
    if hit.get("page") is not None:
        parts.append(f"p. {safe(hit['page'])}")
    if hit.get("slide") is not None:
        parts.append(f"slide {safe(hit['slide'])}")
    if hit.get("sheet"):
        parts.append(f"sheet {safe(hit['sheet'])}")
    if hit.get("heading"):
        parts.append(HEADING_SEPARATOR.join(safe(title) for title in hit["heading"]))
    return " · ".join(parts)


def _print_hit(rank: int, hit: dict[str, Any]) -> None:
    from semantik.cli.term import safe

    score = float(hit["score"])
    found_by = "+".join(safe(r) for r in hit.get("retrievers") or [])
    more = hit.get("other_hits")
    click.echo(
        f"{rank}. {score:.3f}  {location_line(hit)}  [chunk {safe(hit['chunk_index'])}]"
        + (f"  [{found_by}]" if found_by else "")
        + (f"  (+{int(more)} more in this document)" if more else "")
    )
    others = [path for path in hit.get("paths") or [] if path != hit["path"]]
    if others:
        click.echo(f"   also at: {', '.join(safe(path) for path in others)}")
    snippet = hit.get("snippet") or {"text": hit["text"], "highlights": []}
    click.echo(f"   {_marked(str(snippet['text']), snippet.get('highlights') or [])}")


def _marked(text: str, highlights: list[list[int]]) -> str:
    """The snippet on one line (whitespace runs as one space), its matched terms in bold where the
    terminal shows it."""
    import re

    from semantik.cli.term import safe

    pieces, position = [], 0
    for start, end in sorted((int(a), int(b)) for a, b in highlights):
        if start < position or end > len(text):
            continue
        pieces += [(text[position:start], False), (text[start:end], True)]
        position = end
    pieces.append((text[position:], False))
    flat = [(safe(re.sub(r"\s+", " ", piece)), bold) for piece, bold in pieces if piece]
    return "".join(click.style(piece, bold=True) if bold else piece for piece, bold in flat).strip()


@main.command()
@click.argument("files", nargs=-1, type=click.Path(allow_dash=True))
@click.option("--job", help="Only lines of this job id.")
@click.option(
    "--level", type=click.Choice(["debug", "info", "warning", "error", "critical"]), help="At least this level."
)
@click.option("--event", help="Only this event name.")
@click.option("--since", help="Only lines newer than this: 10m, 2h, 1d or an ISO time.")
@click.option("--follow", "-f", is_flag=True, help="Keep reading as the files grow.")
@click.option("--json", "as_json", is_flag=True, help="Print matching lines as JSON, not pretty.")
def logs(
    files: tuple[str, ...], job: str | None, level: str | None, event: str | None, since: str | None,
    follow: bool, as_json: bool,
) -> None:  # fmt: skip
    """Filter and pretty-print JSON log lines from FILES (or standard input)."""
    from semantik.cli.logview import Filter, lines_of, parse_since, show

    flt = Filter(job=job, level=level, event=event, since=parse_since(since) if since else None)
    handles = [sys.stdin if name == "-" else open(name, encoding="utf-8", errors="replace") for name in files]  # noqa: SIM115
    try:
        show(lines_of(handles or [sys.stdin], follow), flt, as_json)
    except KeyboardInterrupt:
        pass
    finally:
        for handle in handles:
            if handle is not sys.stdin:
                handle.close()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON of GET /api/monitor.")
@click.option("--url", help="Server URL [SEMANTIK_URL].")
def workers(as_json: bool, url: str | None) -> None:
    """Live workers, the queue, running jobs and recent failures (what GET /api/monitor shows)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from semantik.cli.term import safe
    from semantik.cli.term import safe_markup as m

    data = _get(url, "/api/monitor", as_json)
    if data is None:
        return
    # Everything below comes from the server, and from what workers wrote to Redis: no control
    # characters, no rich markup.
    console = Console()
    table = Table(title="workers")
    for column in ("worker", "device", "current job", "done", "failed", "since"):
        table.add_column(column)
    for w in data.get("workers") or []:
        cells = (
            w["worker_id"],
            w["device"],
            w["current_job"] or "-",
            w["jobs_done"],
            w["jobs_failed"],
            w["started_at"],
        )
        table.add_row(*(Text(safe(cell)) for cell in cells))
    console.print(table)
    queue = data.get("queue") or {}
    console.print(f"queue: {m(queue.get('depth', '?'))} waiting, oldest {m(queue.get('oldest_age_s') or 0)} s;"
                  f" jobs: {m(data['jobs_by_status'])}")  # fmt: skip
    for job in data["running_jobs"]:
        console.print(f"running {m(job['id'])} \\[{m(job['collection'])}]"
                      f" {m(job['files_done'])}/{m(job['files_total'])} files"
                      f" on {m(job['worker_id'])}: {m(job['current_file'] or '')}")  # fmt: skip
    throughput = data.get("throughput") or {}
    console.print(f"throughput: {m(throughput.get('chunks_last_5_min', 0))} chunks in the last 5 minutes")
    for failure in data["recent_failures"]:
        what = failure.get("path") or failure.get("id")
        console.print(f"[red]failed {m(failure['kind'])}[/red] {m(what)}: {m(failure['error'])}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON of GET /api/gpus.")
@click.option("--url", help="Server URL [SEMANTIK_URL].")
def gpus(as_json: bool, url: str | None) -> None:
    """GPU lease slots: free or held (by which worker and job, since when, until when), and waiters."""
    from semantik.cli.term import safe

    data = _get(url, "/api/gpus", as_json)
    if data is None:
        return
    if not data["configured"]:
        click.echo("no GPUs configured (SEMANTIK_GPU_DEVICES is empty): jobs run on the CPU")
        return
    now_ms = data["now_ms"]
    for slot in data["slots"]:
        if slot["state"] == "held":
            held_s = (now_ms - slot["acquired_at_ms"]) / 1000
            left_s = (slot["expires_at_ms"] - now_ms) / 1000
            click.echo(f"{safe(slot['slot'])}  held by {safe(slot['owner'])}  job {safe(slot['job_id'])}"
                       f"  for {held_s:.0f} s, lease expires in {left_s:.0f} s")  # fmt: skip
        else:
            click.echo(f"{safe(slot['slot'])}  free")
    for waiter in data["waiters"]:
        click.echo(f"waiting: {safe(waiter['owner'])}  job {safe(waiter['job_id'])}")


main.add_command(collection_commands.sync)
main.add_command(collection_commands.check)

if __name__ == "__main__":
    main()
