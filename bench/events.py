"""WebSocket fan-out: N clients on one job, a publisher at a fixed rate; latency publish → receive.

Runs `semantik serve` as a subprocess (its own private Redis, SQLite in a temp dir), connects N
WebSocket clients to one job from this process, publishes job events straight to Redis at a fixed
rate, and prints p50/p99/max latency and deliveries/s, beside raw Redis pub/sub latency measured in
the same run. Every client checks that it got every event exactly once, in order. Meanwhile a probe
times `GET /api/health` to show whether REST stays responsive during the fan-out.
Goal: p99 < 50 ms with 1,000 clients.

The clients share this machine's cores with the server, so their own cost is part of every figure.
`--client picows` (default) receives with picows (a C WebSocket client) and parses each event's JSON
on arrival: close to what the server alone costs. `--client aiohttp` uses aiohttp's client (one
task, one future and one `receive` per message), which costs the client process several times more.

    .venv/bin/python bench/events.py --clients 1000 --rate 20 --seconds 10
    .venv/bin/python bench/events.py --clients 1000 --client aiohttp
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semantik.cli.redis_server import RedisServer, free_port
from semantik.domain import EventType
from semantik.events.publish import EventPublisher, envelope
from semantik.redis_names import RedisNames

CONNECT_BATCH = 100
PROBE_INTERVAL_S = 0.02


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(name: str, latencies_ms: list[float]) -> None:
    print(
        f"{name:<28} n={len(latencies_ms):>8}  p50={percentile(latencies_ms, 0.50):7.2f} ms"
        f"  p99={percentile(latencies_ms, 0.99):7.2f} ms  max={max(latencies_ms, default=float('nan')):7.2f} ms"
    )


@dataclass
class Tally:
    """What one client received after its snapshot."""

    expected: int
    received: int = 0
    last_seq: int = 1  # the snapshot's (job_queued)
    out_of_order: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    snapshot: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, event: dict[str, Any], received_at: float, latencies: list[float]) -> None:
        if event["type"] == EventType.SNAPSHOT:
            self.snapshot.set()
            return
        latencies.append((received_at - event["data"]["sent"]) * 1000)
        if event["seq"] != self.last_seq + 1:
            self.out_of_order += 1
        self.last_seq = event["seq"]
        self.received += 1
        if self.received >= self.expected:
            self.done.set()


Connect = Callable[[str, Tally, list[float]], Awaitable[Callable[[], Awaitable[None]]]]


async def connect_picows(url: str, tally: Tally, latencies: list[float]) -> Callable[[], Awaitable[None]]:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    class Listener(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                received_at = time.time()
                tally.take(json.loads(frame.get_payload_as_bytes()), received_at, latencies)

    transport, _ = await ws_connect(Listener, url)

    async def close() -> None:
        transport.send_close()
        transport.disconnect()

    return close


def aiohttp_connector(session: aiohttp.ClientSession) -> Connect:
    async def connect(url: str, tally: Tally, latencies: list[float]) -> Callable[[], Awaitable[None]]:
        ws = await session.ws_connect(url, heartbeat=None)

        async def read() -> None:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    received_at = time.time()
                    tally.take(json.loads(message.data), received_at, latencies)

        reader = asyncio.create_task(read())

        async def close() -> None:
            await ws.close()
            reader.cancel()

        return close

    return connect


async def raw_pubsub_latency(redis_url: str, count: int) -> list[float]:
    publisher, subscriber = Redis.from_url(redis_url), Redis.from_url(redis_url)
    pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("bench:raw")
    latencies: list[float] = []

    async def receive() -> None:
        async for message in pubsub.listen():
            latencies.append((time.time() - float(message["data"])) * 1000)
            if len(latencies) == count:
                return

    receiver = asyncio.create_task(receive())
    await asyncio.sleep(0.1)
    for _ in range(count):
        await publisher.publish("bench:raw", repr(time.time()))
        await asyncio.sleep(0.001)
    await asyncio.wait_for(receiver, 30)
    await pubsub.aclose()
    await publisher.aclose()
    await subscriber.aclose()
    return latencies


async def wait_healthy(session: aiohttp.ClientSession, base: str) -> None:
    for _ in range(300):
        try:
            async with session.get(base + "/api/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("server did not become healthy")


async def probe_rest(session: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> list[float]:
    """GET /api/health every PROBE_INTERVAL_S until ``stop``; the latencies in ms."""
    latencies: list[float] = []
    while not stop.is_set():
        started = time.perf_counter()
        async with session.get(base + "/api/health") as response:
            await response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(PROBE_INTERVAL_S)
    return latencies


async def run(args: argparse.Namespace, redis_url: str, base: str, docs: Path) -> None:
    connector = aiohttp.TCPConnector(limit=0)  # the default pool stops at 100 connections
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_healthy(session, base)
        async with session.post(base + "/api/jobs", json={"collection": "bench", "directory": str(docs)}) as r:
            job_id = (await r.json())["id"]
        ws_url = base.replace("http", "ws", 1) + f"/api/jobs/{job_id}/ws?stay=1"
        connect = connect_picows if args.client == "picows" else aiohttp_connector(session)

        total = int(args.rate * args.seconds)
        latencies: list[float] = []
        tallies = [Tally(total) for _ in range(args.clients)]
        closers: list[Callable[[], Awaitable[None]]] = []
        started = time.perf_counter()
        for start in range(0, args.clients, CONNECT_BATCH):
            batch = tallies[start : start + CONNECT_BATCH]
            closers.extend(await asyncio.gather(*(connect(ws_url, tally, latencies) for tally in batch)))
        await asyncio.wait_for(asyncio.gather(*(tally.snapshot.wait() for tally in tallies)), 60)
        print(f"{len(closers)} {args.client} clients connected in {time.perf_counter() - started:.1f} s")

        stop_probe = asyncio.Event()
        probe = asyncio.create_task(probe_rest(session, base, stop_probe))
        redis = Redis.from_url(redis_url)
        publisher = EventPublisher(redis, RedisNames())
        interval_s = 1 / args.rate
        begin = time.perf_counter()
        for seq in range(2, total + 2):
            await publisher.publish(envelope(EventType.FILE_COMPLETED, job_id, seq, {"sent": time.time()}))
            await asyncio.sleep(max(0.0, begin + (seq - 1) * interval_s - time.perf_counter()))
        await asyncio.wait([asyncio.create_task(tally.done.wait()) for tally in tallies], timeout=30)
        elapsed_s = time.perf_counter() - begin
        stop_probe.set()
        rest = await probe
        await redis.aclose()
        for close in closers:
            await close()

    raw = await raw_pubsub_latency(redis_url, 2000)
    print(f"\npublisher: {total} events at {args.rate:g}/s to {args.clients} clients over {elapsed_s:.1f} s")
    report("raw Redis pub/sub", raw)
    report("publish -> WebSocket client", latencies)
    report("GET /api/health meanwhile", rest)
    expected = total * args.clients
    print(f"deliveries: {len(latencies)}/{expected} ({len(latencies) / elapsed_s:,.0f}/s)")
    missing = sum(1 for tally in tallies if tally.received < total)
    disordered = sum(tally.out_of_order for tally in tallies)
    print(f"clients missing events: {missing}; events out of order or repeated: {disordered}")
    if missing or disordered:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client", choices=("picows", "aiohttp"), default="picows")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = root / "docs"
        docs.mkdir()
        redis_server = RedisServer(root / "redis")
        redis_server.start()
        port = free_port()
        env = {
            **os.environ,
            "SEMANTIK_DATA_DIR": str(root / "data"),
            "SEMANTIK_ALLOWED_ROOTS": str(docs),
            "SEMANTIK_REDIS_URL": redis_server.url,
            "SEMANTIK_PORT": str(port),
            "SEMANTIK_LOG_LEVEL": "warning",
        }
        server = subprocess.Popen([sys.executable, "-m", "semantik.cli", "serve"], env=env)
        try:
            asyncio.run(run(args, redis_server.url, f"http://127.0.0.1:{port}", docs))
        finally:
            server.terminate()
            server.wait(30)
            redis_server.stop()


if __name__ == "__main__":
    main()
