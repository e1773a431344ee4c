"""The event benchmark runs end to end: a real `semantik serve`, real Redis, real WebSocket clients.

Kept short (its numbers are the benchmark's business, not a test's); what is asserted is what the
script itself checks: every client got every event once, in order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "events.py"


@pytest.mark.parametrize("client", ["picows", "aiohttp"])
def test_events_bench_delivers_every_event_to_every_client(client: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--clients", "150", "--rate", "40", "--seconds", "1", "--client", client],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"150 {client} clients connected" in result.stdout
    assert "deliveries: 6000/6000" in result.stdout
    assert "clients missing events: 0; events out of order or repeated: 0" in result.stdout
    for line in ("raw Redis pub/sub", "publish -> WebSocket client", "GET /api/health meanwhile"):
        assert line in result.stdout


def test_sync_bench_runs_and_its_syncs_leave_the_collection_in_step() -> None:
    """bench/sync.py on a few files: the no-op sync reads none, the changed one embeds only the
    changed files, the check is clean and the watcher picks up a save and a delete."""
    bench = BENCH.with_name("sync.py")
    result = subprocess.run(
        [sys.executable, str(bench), "--files", "60", "--changed", "0.05", "--watch-rounds", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    import json

    figures = json.loads(last.removeprefix("RESULT "))
    assert figures["files"] == 60 and figures["changed_files"] == 3 and figures["check_ok"] is True
    assert "no-op sync:" in result.stdout and "unchanged 60" in result.stdout
    assert "embedded 3, unchanged 57" in result.stdout
    assert figures["watch_save_s"] > 0 and figures["watch_delete_s"] > 0


def test_extract_bench_reads_every_format_it_makes() -> None:
    """bench/extract.py on a few abstracts: every format yields text, PDF pages and slides are
    counted, and its RESULT line parses."""
    import json

    result = subprocess.run(
        [sys.executable, str(BENCH.with_name("extract.py")), "--docs", "40"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    formats = figures["formats"]
    for kind in ("pdf", "docx", "pptx", "xlsx", "epub", "eml", "mbox", "html", "md", "txt", "rtf"):
        assert formats[kind]["files"] == 2 and formats[kind]["chars_per_s"] > 0, (kind, formats[kind])
    # A long abstract can take two PDF pages; every abstract is a slide; every file a sheet.
    assert formats["pdf"]["pages"] >= 40 and formats["pptx"]["pages"] == 40 and formats["xlsx"]["pages"] == 2
