"""WebSocket fan-out: N clients on one job, a publisher at a fixed rate; latency publish → receive.

Runs `semantik serve` as a subprocess (its own private Redis, SQLite in a temp dir), connects N
WebSocket clients to one job from this process, publishes job events straight to Redis at a fixed
rate, and prints p50/p99/max latency and deliveries/s, beside raw Redis pub/sub latency measured in
the same run. Goal: p99 < 50 ms with 1,000 clients.

    .venv/bin/python bench/events.py --clients 1000 --rate 20 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from semantik import constants as c
from semantik.events import EventPublisher, envelope
from semantik.redis_server import RedisServer, free_port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(name: str, latencies_ms: list[float]) -> None:
    print(
        f"{name:<28} n={len(latencies_ms):>8}  p50={percentile(latencies_ms, 0.50):7.2f} ms"
        f"  p99={percentile(latencies_ms, 0.99):7.2f} ms  max={max(latencies_ms, default=float('nan')):7.2f} ms"
    )


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


async def wait_healthy(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(base + "/api/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not become healthy")


async def run(args: argparse.Namespace, redis_url: str, base: str, docs: Path) -> None:
    await wait_healthy(base)
    connector = aiohttp.TCPConnector(limit=0)  # the default pool stops at 100 connections
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(base + "/api/jobs", json={"collection": "bench", "directory": str(docs)}) as r:
            job_id = (await r.json())["id"]
        ws_url = base.replace("http", "ws", 1) + f"/api/jobs/{job_id}/ws?stay=1"
        sockets = []
        started = time.perf_counter()
        for start in range(0, args.clients, 100):
            batch = [session.ws_connect(ws_url, heartbeat=None) for _ in range(start, min(start + 100, args.clients))]
            sockets.extend(await asyncio.gather(*batch))
        await asyncio.gather(*(ws.receive_json() for ws in sockets))  # snapshots
        print(f"{len(sockets)} clients connected in {time.perf_counter() - started:.1f} s")

        total = int(args.rate * args.seconds)
        latencies: list[float] = []
        received = [0] * len(sockets)

        async def client(index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            while received[index] < total:
                message = await ws.receive(timeout=args.seconds + 30)
                if message.type != aiohttp.WSMsgType.TEXT:
                    return
                event = json.loads(message.data)
                latencies.append((time.time() - event["data"]["sent"]) * 1000)
                received[index] += 1

        readers = [asyncio.create_task(client(i, ws)) for i, ws in enumerate(sockets)]
        redis = Redis.from_url(redis_url)
        publisher = EventPublisher(redis)
        interval_s = 1 / args.rate
        begin = time.perf_counter()
        for seq in range(2, total + 2):
            await publisher.publish(envelope(c.FILE_COMPLETED, job_id, seq, {"sent": time.time()}))
            await asyncio.sleep(max(0.0, begin + (seq - 1) * interval_s - time.perf_counter()))
        await asyncio.wait(readers, timeout=args.seconds + 30)
        elapsed_s = time.perf_counter() - begin
        await redis.aclose()
        for ws in sockets:
            await ws.close()

    raw = await raw_pubsub_latency(redis_url, 2000)
    print(f"\npublisher: {total} events at {args.rate}/s to {args.clients} clients over {elapsed_s:.1f} s")
    report("raw Redis pub/sub", raw)
    report("publish -> WebSocket client", latencies)
    expected = total * args.clients
    print(f"deliveries: {len(latencies)}/{expected} ({len(latencies) / elapsed_s:,.0f}/s)")
    print(f"mean per client: {statistics.mean(received):.1f}/{total}; clients missing events: "
          f"{sum(1 for n in received if n < total)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
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
