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
