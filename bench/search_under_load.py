"""Search latency through the API, idle and while a job indexes on the same server, in one run.

One process runs the server and an in-process worker (as `semantik up` does), so searches and the
job share the model and the cores. First a small collection is indexed; then searches run against it
idle; then a large job starts and the same searches run while it indexes. Goal (Inference issue):
p99 during the job <= 2x idle p99 + 50 ms. Last line: ``RESULT {json}``.

    .venv/bin/python bench/search_under_load.py --files 300 --searches 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _harness import NFCORPUS, load_corpus, running_product, write_corpus


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


async def timed(product: Any, queries: list[str], mode: str) -> list[float]:
    took = []
    for query in queries:
        began = time.perf_counter()
        await product.client.search(query, "small", k=10, mode=mode)
        took.append((time.perf_counter() - began) * 1000)
    return took


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    corpus = load_corpus()
    write_corpus(corpus[:60], tmp / "docs" / "small")
    write_corpus(corpus[60 : 60 + args.files], tmp / "docs" / "large")
    with (NFCORPUS / "queries.jsonl").open(encoding="utf-8") as handle:
        queries = [json.loads(line)["text"] for line in handle][: args.searches]
    overrides = {} if args.backend is None else {"embed_backend": args.backend}
    async with running_product(tmp, tmp / "docs", **overrides) as product:
        embedder = await product.runtime.embedder()
        print(f"model: {embedder.label}")
        job = await product.client.create_job("small", str(tmp / "docs" / "small"))
        await product.client.wait(job["id"], poll_s=0.1)
        await timed(product, queries[:5], args.mode)  # warm up
        idle = await timed(product, queries, args.mode)

        job = await product.client.create_job("large", str(tmp / "docs" / "large"))
        while (await product.client.job(job["id"]))["status"] != "running":
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # the model is busy with the job's batches now
        during: list[float] = []
        while len(during) < len(queries):
            during += await timed(product, queries[len(during) : len(during) + 5], args.mode)
            state = await product.client.job(job["id"])
            if state["status"] != "running":
                print(f"  the job ended after {len(during)} searches: ask for more --files")
                break
        done = await product.client.wait(job["id"], poll_s=0.5)
    idle_p50, idle_p99 = percentiles(idle)
    busy_p50, busy_p99 = percentiles(during)
    goal = 2 * idle_p99 + 50
    print(f"{'':<10}{'searches':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'idle':<10}{len(idle):>10}{idle_p50:>10.1f}{idle_p99:>10.1f}")
    print(f"{'indexing':<10}{len(during):>10}{busy_p50:>10.1f}{busy_p99:>10.1f}")
    print(f"goal: p99 during the job <= {goal:.1f} ms: {'met' if busy_p99 <= goal else 'MISSED'}")
    print(f"job: {done['status']}, {done['chunks']} chunks")
    return {
        "backend": embedder.label,
        "mode": args.mode,
        "idle_p50_ms": round(idle_p50, 1),
        "idle_p99_ms": round(idle_p99, 1),
        "during_p50_ms": round(busy_p50, 1),
        "during_p99_ms": round(busy_p99, 1),
        "goal_ms": round(goal, 1),
        "searches_during": len(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300, help="NFCorpus documents in the job indexed meanwhile")
    parser.add_argument("--searches", type=int, default=40)
    parser.add_argument("--mode", default="hybrid", choices=["hybrid", "dense", "keyword"])
    parser.add_argument("--backend", default=None, help="SEMANTIK_EMBED_BACKEND (default: the product's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
