"""Folder sync at scale: a no-op sync and a 1%-changed sync of N small files, through the API.

The product runs in this process (server, in-process worker, private Redis), as `semantik up` does.
N small text files (one short sentence each, 100 per folder) are indexed once with the real model;
then a sync with nothing changed (every file passed on its stat, none read), then one after 1% of
the files were rewritten, then the watch latency (save -> searchable, delete -> gone; the median of
``--watch-rounds`` notes saved and deleted in turn). Goal (Folder
sync issue): a no-op sync of 100k files in <= 30 s. Last line: ``RESULT {json}``.

    .venv/bin/python bench/sync.py --files 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import Product, running_product

WORDS = [
    "river",
    "harbour",
    "lantern",
    "quartz",
    "meadow",
    "falcon",
    "copper",
    "violin",
    "glacier",
    "orchard",
    "compass",
    "thunder",
    "velvet",
    "saffron",
    "granite",
    "beacon",
    "willow",
    "pepper",
    "marble",
    "canyon",
    "ember",
    "tundra",
    "cobalt",
    "juniper",
]


def sentence(i: int, salt: str = "") -> str:
    picked = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(8)]
    return f"Note {i}{salt}: the {' '.join(picked)} report number {i}."


def make_files(docs: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = docs / f"d{i // 100:04}" / f"note{i:06}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sentence(i), encoding="utf-8")
        paths.append(path)
    return paths


async def timed_sync(product: Product, collection: str) -> tuple[float, dict[str, Any]]:
    began = time.perf_counter()
    job = await product.client.request("POST", f"/api/collections/{collection}/sync")
    done = await product.client.wait(job["id"], poll_s=0.05)
    return time.perf_counter() - began, done


# Notes saved into the watched folder one at a time, each with a query that finds it first.
WATCHED = [
    ("zebra.txt", "Zebra stripes confuse biting flies, which land on them less often.", "zebra stripes biting flies"),
    ("octopus.txt", "An octopus tastes what it touches through the suckers it has.", "octopus tastes with suckers"),
    ("basalt.txt", "Basalt columns form as thick lava cools and cracks into hexagons.", "basalt columns hexagons"),
    ("kiln.txt", "A kiln fires clay pots slowly so that trapped steam cannot crack them.", "kiln firing clay pots"),
    ("lichen.txt", "Lichen is a fungus living together with an alga on bare rock.", "lichen fungus and alga"),
]


async def watch_latency(product: Product, docs: Path, collection: str, rounds: int) -> tuple[list[float], list[float]]:
    """Save -> first hit and delete -> gone, for ``rounds`` notes in turn (seconds each)."""
    sources = await product.client.request("GET", f"/api/collections/{collection}/sources")
    source_id = sources["sources"][0]["id"]
    await product.client.request("PATCH", f"/api/collections/{collection}/sources/{source_id}", {"watch": True})
    lease = product.settings.redis_names.watch_lease(source_id)
    redis = product.runtime.settings.redis_url
    from redis.asyncio import Redis

    client = Redis.from_url(str(redis))
    try:
        while not await client.exists(lease):
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    saves, deletes = [], []
    for name, text, query in (WATCHED * rounds)[:rounds]:
        target = docs / "watched" / name

        async def top(query: str = query) -> str | None:
            hits = (await product.client.search(query, collection, k=1))["results"]
            return hits[0]["path"] if hits else None

        began = time.perf_counter()
        target.parent.mkdir(exist_ok=True)
        target.write_text(text, encoding="utf-8")
        while await top() != str(target):
            await asyncio.sleep(0.05)
        saves.append(time.perf_counter() - began)
        began = time.perf_counter()
        target.unlink()
        while await top() == str(target):
            await asyncio.sleep(0.05)
        deletes.append(time.perf_counter() - began)
        await asyncio.sleep(1.0)  # apart from the last change's debounce and sync
    return saves, deletes


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    docs = tmp / "docs"
    began = time.perf_counter()
    paths = make_files(docs, args.files)
    print(f"wrote {len(paths)} files in {time.perf_counter() - began:.1f} s")
    overrides = {"model_cache_dir": args.model_cache} if args.model_cache else {}
    async with running_product(tmp, docs, **overrides) as product:
        print(f"model: {(await product.runtime.embedder()).label}")
        began = time.perf_counter()
        job = await product.client.create_job("sync", str(docs))
        first = await product.client.wait(job["id"], poll_s=0.5)
        index_s = time.perf_counter() - began
        print(f"indexed: {first['files_done']} files in {index_s:.1f} s ({first['files_done'] / index_s:.0f} files/s)")

        noop_s, noop = await timed_sync(product, "sync")
        print(f"no-op sync: {noop_s:.2f} s ({args.files / noop_s:.0f} files/s), unchanged {noop['files_unchanged']}")

        changed = paths[:: max(1, round(1 / args.changed))]
        for i, path in enumerate(changed):
            path.write_text(sentence(i, salt=" revised"), encoding="utf-8")
        changed_s, after = await timed_sync(product, "sync")
        print(
            f"{len(changed)} changed ({args.changed:.0%}): {changed_s:.2f} s ({args.files / changed_s:.0f} files/s),"
            f" embedded {after['files_done']}, unchanged {after['files_unchanged']}"
        )
        report = await product.client.request("GET", "/api/collections/sync/check")
        print("check:", {k: report[k] for k in ("vectors_without_file", "files_without_vectors", "files_missing")})
        saves, deletes = await watch_latency(product, docs, "sync", args.watch_rounds)
        save_s, delete_s = statistics.median(saves), statistics.median(deletes)
        print(
            f"watch ({len(saves)} notes, median): save -> searchable {save_s:.2f} s, delete -> gone {delete_s:.2f} s"
            f"  (saves {' '.join(f'{x:.2f}' for x in saves)}; deletes {' '.join(f'{x:.2f}' for x in deletes)})"
        )
    return {
        "files": args.files,
        "index_s": round(index_s, 1),
        "noop_sync_s": round(noop_s, 2),
        "noop_files_per_s": round(args.files / noop_s),
        "changed_files": len(changed),
        "changed_sync_s": round(changed_s, 2),
        "changed_files_per_s": round(args.files / changed_s),
        "check_ok": report["ok"],
        "watch_save_s": round(save_s, 2),
        "watch_delete_s": round(delete_s, 2),
    }


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        return f"{model}, {len(__import__('os').sched_getaffinity(0))} cores"
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--changed", type=float, default=0.01, help="Share of files rewritten before the 2nd sync.")
    parser.add_argument("--watch-rounds", type=int, default=5, help="Notes saved and deleted in turn (watch latency).")
    parser.add_argument("--model-cache", type=Path, default=None, help="reuse exported models from here")
    args = parser.parse_args()
    print(f"cpu: {cpu()}")
    with tempfile.TemporaryDirectory(prefix="semantik-bench-sync-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    result["cpu"] = cpu()
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
