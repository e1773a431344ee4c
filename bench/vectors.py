"""The vector store on its own: the embedded engine (Qdrant Edge in its process) against
qdrant-client's old local mode, on N synthetic chunks.

Vectors: 384-dimension unit vectors drawn around topics and sub-topics (real embeddings cluster;
uniform random vectors are the worst case for any ANN index, see --uniform). Payloads as the
pipeline writes them, with ~1 KB of text: words from the chunk's topic vocabulary and a Zipf-shaped
common vocabulary, so BM25 has real term statistics. Files of --chunks-per-file chunks, one
``upsert_file`` each, as a job commits them, in a team drive's folders (``file_path``); one file in
eight is a pdf.

Prints: upsert points/s (index builds run in a build process beside the writes), hybrid search while
the engine builds (writes paused: it seals what waits and builds it), the time until every build is
done, dense / keyword / hybrid / filtered (pdf) / folder (a team's) search p50 and p99, search while
another task writes, recall@10 of the index against exact search (numpy, same vectors; also under
the two filters), the engine process's RSS, disk size, and the time from reopening the store to its
first answer; then the old local mode at min(N, --legacy-max) in a child process. Last line:
``RESULT {json}``.

    .venv/bin/python bench/vectors.py --points 100000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from semantik.indexing.pipeline import UPSERTS_IN_FLIGHT
from semantik.proc import memory_cgroup
from semantik.store.vectors import VectorStore, point_id, qdrant_name

DIM = 384
WORDS_PER_CHUNK = 150  # ~1 KB of text
QUERIES = 200
WARMUP = 50
DURING_BUILD_S = 30.0


class Corpus:
    """Deterministic synthetic chunks: batch ``b`` is the same whatever else was generated."""

    def __init__(self, points: int, *, seed: int = 0, uniform: bool = False) -> None:
        self.points, self.seed, self.uniform = points, seed, uniform
        rng = np.random.default_rng(seed)
        self.topics = max(20, points // 500)
        self.centroids = _unit(rng.standard_normal((self.topics, DIM)))
        self.sub = rng.standard_normal((self.topics, 8, DIM)) / np.sqrt(DIM)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        self.common = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(20_000)]
        zipf = 1.0 / np.arange(1, len(self.common) + 1)
        self.zipf = zipf / zipf.sum()
        self.topic_words = [
            ["".join(rng.choice(letters, rng.integers(5, 11))) for _ in range(40)] for _ in range(self.topics)
        ]

    def batch(self, start: int, end: int) -> tuple[npt.NDArray[np.float32], list[str], npt.NDArray[np.int64]]:
        rng = np.random.default_rng((self.seed, start))
        n = end - start
        topic = rng.integers(0, self.topics, n)
        if self.uniform:
            vectors = _unit(rng.standard_normal((n, DIM)))
        else:
            sub = rng.integers(0, 8, n)
            noise = rng.standard_normal((n, DIM)) / np.sqrt(DIM)
            vectors = _unit(self.centroids[topic] + 0.7 * self.sub[topic, sub] + 0.55 * noise)
        common = rng.choice(len(self.common), size=(n, WORDS_PER_CHUNK - 20), p=self.zipf)
        own = rng.integers(0, 40, size=(n, 20))
        texts = []
        for row in range(n):
            words = [self.common[i] for i in common[row]] + [self.topic_words[topic[row]][i] for i in own[row]]
            rng.shuffle(words)
            texts.append(" ".join(words))
        return vectors, texts, topic

    def queries(
        self, vectors: npt.NDArray[np.float32], topics: npt.NDArray[np.int64], n: int
    ) -> tuple[npt.NDArray[np.float32], list[str]]:
        """Queries near stored chunks (a perturbed vector) with three of that chunk's topic words."""
        rng = np.random.default_rng((self.seed, 1 << 40))
        rows = rng.integers(0, len(vectors), n)
        queries = _unit(vectors[rows] + 0.6 * _unit(rng.standard_normal((n, DIM))))
        texts = [" ".join(rng.choice(self.topic_words[int(topics[row])], 3)) for row in rows]
        return queries, texts


TEAMS, PROJECTS = 7, 56


def file_path(file_no: int) -> str:
    """A team drive's layout: 7 team folders of 8 projects each (a project in one team only); one
    file in eight is a pdf, spread over every folder."""
    kind = "pdf" if file_no % 8 == 0 else "txt"
    return f"/drive/team{file_no % TEAMS}/project{file_no % PROJECTS}/{file_no}.{kind}"


def _unit(x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    y: npt.NDArray[np.float32] = np.asarray(x, dtype=np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return y


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.array(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def proc_memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


class MemoryWatch:
    """The engine process's peak anonymous memory (``RssAnon``, sampled every 0.2 s): what it holds
    itself, without the mmapped segment files the kernel can drop (both are in ``VmHWM``); and the
    same for its index build processes, alone and added to the engine's."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.builds_peak, self.total_peak = pid, 0.0, 0.0, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.2):
            with contextlib.suppress(OSError, KeyError):
                engine = proc_memory_mb(self.pid)["RssAnon"]
                builds = 0.0
                for child in children(self.pid):
                    with contextlib.suppress(OSError, KeyError):
                        builds += proc_memory_mb(child)["RssAnon"]
                self.peak = max(self.peak, engine)
                self.builds_peak = max(self.builds_peak, builds)
                self.total_peak = max(self.total_peak, engine + builds)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak


class MemoryCap:
    """A memory cgroup (v2, or v1's memory controller) the engine process starts in: a hard limit on
    everything it and its build processes hold, page cache included, as a container's ``--memory``
    sets. Mapped segment pages are reclaimed under it; anonymous memory beyond it gets a process
    killed. The engine starts inside it (``children``), so it sees the limit as it would in a
    container (it seals smaller shards under a tight one)."""

    def __init__(self, limit_mb: int) -> None:
        group = memory_cgroup()
        if group is None:
            raise SystemExit("--memory-cap-mb: this process has no memory cgroup")
        _, base, limit_file = group
        if limit_file == "memory.max":  # cgroup v2
            self._peak_file, self._events = "memory.peak", "memory.events"
        else:
            self._peak_file, self._events = "memory.max_usage_in_bytes", "memory.failcnt"
        self.base = base
        self.path = base / f"semantik-bench-{os.getpid()}"
        self.path.mkdir()
        (self.path / limit_file).write_text(str(limit_mb * 2**20))
        self.limit_mb = limit_mb

    @contextlib.contextmanager
    def children(self) -> Iterator[None]:
        """Processes started in the block start in the cgroup: this one enters it and leaves after."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))
        try:
            yield
        finally:
            (self.base / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def report(self) -> dict[str, Any]:
        peak = self.path / self._peak_file
        return {
            "limit_mb": self.limit_mb,
            "peak_mb": round(int(peak.read_text()) / 2**20, 1) if peak.exists() else None,
            "events": (self.path / self._events).read_text().split(),
        }


def du_mb(path: Path) -> float:
    """Blocks on disk (the WAL's files are preallocated sparse files)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


def exact_top(vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int = 10) -> list[set[int]]:
    tops: list[set[int]] = []
    for start in range(0, len(queries), 32):
        scores = queries[start : start + 32] @ vectors.T
        idx = np.argpartition(-scores, k, axis=1)[:, :k]
        tops.extend(set(map(int, row)) for row in idx)
    return tops


async def timed_searches(
    store: VectorStore, queries: npt.NDArray[np.float32], texts: list[str], **kw: Any
) -> list[float]:
    samples = []
    for q, text in zip(queries, texts, strict=True):
        began = time.perf_counter()
        await store.search("bench", q, 10, query_text=text, **kw)
        samples.append(time.perf_counter() - began)
    return samples


async def edge(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    corpus = Corpus(args.points, uniform=args.uniform)
    store = VectorStore(url=None, api_key=None, path=root / "vectors")
    cap = MemoryCap(args.memory_cap_mb) if args.memory_cap_mb else None
    with cap.children() if cap is not None else contextlib.nullcontext():
        await store.ensure_collection("bench", DIM)
    pid = store.engine_pid
    assert pid is not None
    vectors = np.empty((args.points, DIM), dtype=np.float32)
    topics = np.empty(args.points, dtype=np.int64)
    ids: dict[str, int] = {}
    per_file = args.chunks_per_file
    slow: list[float] = []
    upsert_s = 0.0
    memory = MemoryWatch(pid)

    async def upsert(f: int, start: int, end: int, texts: list[str], batch_vectors: npt.NDArray[np.float32]) -> None:
        file_no = f // per_file
        sha = f"{file_no:064x}"
        n = min(per_file, end - f)
        call = time.perf_counter()
        await store.upsert_file(
            "bench",
            sha256=sha,
            path=file_path(file_no),
            job_id="bench",
            texts=texts[f - start : f - start + n],
            vectors=batch_vectors[f - start : f - start + n],
        )
        if args.fsync_each_file:
            await store.flush()
        took = time.perf_counter() - call
        if took > 1.0:
            slow.append(took)
        for c in range(n):
            ids[point_id("bench", sha, c)] = f + c

    async def writer(files: list[int], *batch: Any) -> None:  # as a job commits files: args.in_flight at once
        while files:
            await upsert(files.pop(0), *batch)

    for start in range(0, args.points, 4096):
        end = min(args.points, start + 4096)
        batch_vectors, texts, topics[start:end] = corpus.batch(start, end)
        vectors[start:end] = batch_vectors
        files = list(range(start, end, per_file))
        began = time.perf_counter()
        await asyncio.gather(*(writer(files, start, end, texts, batch_vectors) for _ in range(args.in_flight)))
        upsert_s += time.perf_counter() - began
        if (end // 4096) % 25 == 0:
            print(f"  upserted {end:,} points, {end / upsert_s:,.0f}/s", flush=True)
    began = time.perf_counter()
    assert await store.count("bench") == args.points
    upsert_s += time.perf_counter() - began
    # Index builds run in a build process, beside the writes; only an in-place build holds the engine.
    held_s = (await store.stats("bench"))["held_seconds"]
    queries, texts = corpus.queries(vectors, topics, QUERIES + WARMUP)
    began = time.perf_counter()
    # Searches while the engine builds (for up to DURING_BUILD_S: a stream of searches slows the
    # build, which runs at a lower priority): once writes pause it seals what waits and builds it.
    during_build: list[float] = []
    deadline = time.monotonic() + 30
    while not (await store.stats("bench"))["building"] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    deadline = time.monotonic() + DURING_BUILD_S
    while (await store.stats("bench"))["building"] and time.monotonic() < deadline:
        during_build += await timed_searches(store, queries[:10], texts[:10], mode="hybrid")
    await store.optimize("bench")  # the rest, if any: returns once every build is done
    index_s = time.perf_counter() - began
    stats = await store.stats("bench")
    print(
        f"  upsert {upsert_s:.1f} s ({held_s:.1f} s of it holding the engine for an index build,"
        f" {len(slow)} calls > 1 s), then {index_s:.1f} s until every build was done, {stats}",
        flush=True,
    )

    await timed_searches(store, queries[:WARMUP], texts[:WARMUP], mode="hybrid")
    queries, texts = queries[WARMUP:], texts[WARMUP:]
    result: dict[str, Any] = {"points": args.points, "shards": stats.get("shards")}
    if during_build:
        p50, p99 = percentiles(during_build)
        result["hybrid_during_build_p50_ms"], result["hybrid_during_build_p99_ms"] = round(p50, 2), round(p99, 2)
        result["searches_during_build"] = len(during_build)
    modes: list[tuple[str, dict[str, Any]]] = [
        ("dense", {"mode": "dense"}),
        ("keyword", {"mode": "keyword"}),
        ("hybrid", {"mode": "hybrid"}),
        ("filtered", {"mode": "dense", "where": {"file_type": ["pdf"]}}),
        ("filtered_hybrid", {"mode": "hybrid", "where": {"file_type": ["pdf"]}}),
        ("folder", {"mode": "dense", "where": {"dirs": ["/drive/team3"]}}),
    ]
    for name, kw in modes:
        samples = await timed_searches(store, queries, texts, **kw)
        p50, p99 = percentiles(samples)
        result[f"{name}_p50_ms"], result[f"{name}_p99_ms"] = round(p50, 2), round(p99, 2)
        # Where the tail lies: a slow start (pages still cold, a shard still warming) or spread out.
        slowest = sorted(range(len(samples)), key=lambda i: -samples[i])[:5]
        where = ", ".join(f"#{i} {samples[i] * 1000:.1f}" for i in slowest)
        print(f"  {name}: slowest searches (#position ms) {where}")

    truth = exact_top(vectors, queries)
    recalls = []
    for q, want in zip(queries, truth, strict=True):
        hits = await store.search("bench", q, 10)
        recalls.append(len({ids[h.id] for h in hits} & want) / 10)
    result["recall_at_10"] = round(float(np.mean(recalls)), 4)
    # The same under filters (searched on the graph with ACORN: no per-folder graphs are built).
    file_nos = np.arange(args.points) // per_file
    for name, where, rows in (
        ("filtered", {"file_type": ["pdf"]}, np.flatnonzero(file_nos % 8 == 0)),
        ("folder", {"dirs": ["/drive/team3"]}, np.flatnonzero(file_nos % TEAMS == 3)),
    ):
        truth = [{int(rows[i]) for i in top} for top in exact_top(vectors[rows], queries)]
        recalls = []
        for q, want in zip(queries, truth, strict=True):
            hits = await store.search("bench", q, 10, where=where)
            recalls.append(len({ids[h.id] for h in hits} & want) / 10)
        result[f"{name}_recall_at_10"] = round(float(np.mean(recalls)), 4)

    # Searches while another task writes 2% more points into the same collection.
    extra_vectors, extra_texts, _ = corpus.batch(args.points, args.points + max(per_file, args.points // 50))

    async def writer() -> None:
        for f in range(0, len(extra_texts), per_file):
            sha = f"{(args.points + f) // per_file:064x}-extra"
            await store.upsert_file(
                "bench",
                sha256=sha,
                path=f"/extra/{f}.txt",
                job_id="extra",
                texts=extra_texts[f : f + per_file],
                vectors=extra_vectors[f : f + per_file],
            )

    writing = asyncio.create_task(writer())
    during: list[float] = []
    while not writing.done() or not during:
        during += await timed_searches(store, queries[:20], texts[:20], mode="hybrid")
    await writing
    result["hybrid_during_writes_p50_ms"], result["hybrid_during_writes_p99_ms"] = (
        round(x, 2) for x in percentiles(during)
    )

    result["rss_anon_peak_mb"] = round(memory.stop(), 1)
    result["build_rss_anon_peak_mb"] = round(memory.builds_peak, 1)
    result["engine_and_build_rss_anon_peak_mb"] = round(memory.total_peak, 1)
    if cap is not None:
        result["memory_cap"] = cap.report()
    memory = proc_memory_mb(pid)
    result["rss_mb"] = round(memory["VmHWM"], 1)
    result["rss_now_mb"] = round(memory["VmRSS"], 1)
    # Anonymous memory is what the engine holds; file pages are mmapped segments the kernel can drop.
    result["rss_anon_now_mb"] = round(memory["RssAnon"], 1)
    result["rss_file_now_mb"] = round(memory["RssFile"], 1)
    await store.close()
    result["disk_mb"] = round(du_mb(root / "vectors"), 1)
    began = time.perf_counter()
    reopened = VectorStore(url=None, api_key=None, path=root / "vectors")
    with cap.children() if cap is not None else contextlib.nullcontext():
        await reopened.search("bench", queries[0], 10, query_text=texts[0], mode="hybrid")
    result["reopen_s"] = round(time.perf_counter() - began, 3)
    await reopened.close()
    if cap is not None:
        cap.remove()
    # Writes alone; then writes and every index build (those the engine ran meanwhile, the last one).
    result["upsert_per_s"] = round(args.points / (upsert_s - held_s))
    result["index_s"] = round(held_s + index_s, 1)
    result["index_build_s"] = stats.get("index_seconds")
    result["ingest_per_s"] = round(args.points / (upsert_s + index_s))
    return result


def legacy(points: int, root: Path) -> dict[str, Any]:
    """qdrant-client's local mode as Semantik used it before (batches of 256, wait=True)."""
    from qdrant_client import QdrantClient, models

    corpus = Corpus(points)
    path = root / "qdrant"
    client = QdrantClient(path=str(path))
    name = qdrant_name("bench")
    client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    vectors = np.empty((points, DIM), dtype=np.float32)
    topics = np.empty(points, dtype=np.int64)
    upsert_s = 0.0
    for start in range(0, points, 256):
        end = min(points, start + 256)
        batch, texts, topics[start:end] = corpus.batch(start, end)
        vectors[start:end] = batch
        structs = [
            models.PointStruct(
                id=point_id("bench", f"{i:064x}", 0),
                vector=batch[i - start].tolist(),
                payload={"text": texts[i - start], "file_type": "pdf" if i // 16 % 8 == 0 else "txt"},
            )
            for i in range(start, end)
        ]
        began = time.perf_counter()
        client.upsert(name, points=structs, wait=True)
        upsert_s += time.perf_counter() - began
    queries, _ = corpus.queries(vectors, topics, 60)
    samples = []
    for q in queries:
        t = time.perf_counter()
        client.query_points(name, query=q.tolist(), limit=10)
        samples.append(time.perf_counter() - t)
    filtered = []
    for q in queries[:20]:
        t = time.perf_counter()
        client.query_points(
            name,
            query=q.tolist(),
            limit=10,
            query_filter=models.Filter(
                must=[models.FieldCondition(key="file_type", match=models.MatchAny(any=["pdf"]))]
            ),
        )
        filtered.append(time.perf_counter() - t)
    client.close()
    began = time.perf_counter()
    client = QdrantClient(path=str(path))
    client.query_points(name, query=queries[0].tolist(), limit=10)
    reopen_s = time.perf_counter() - began
    client.close()
    p50, p99 = percentiles(samples)
    f50, f99 = percentiles(filtered)
    import resource

    return {
        "points": points,
        "upsert_per_s": round(points / upsert_s),
        "dense_p50_ms": round(p50, 2),
        "dense_p99_ms": round(p99, 2),
        "filtered_p50_ms": round(f50, 2),
        "filtered_p99_ms": round(f99, 2),
        "reopen_s": round(reopen_s, 2),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "disk_mb": round(du_mb(path), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--chunks-per-file", type=int, default=16)
    parser.add_argument("--legacy-max", type=int, default=20_000, help="cap for the old local mode (0: skip it)")
    parser.add_argument("--uniform", action="store_true", help="uniform random vectors instead of clustered ones")
    parser.add_argument(
        "--in-flight", type=int, default=UPSERTS_IN_FLIGHT, help="files upserted at once (default: as a job does)"
    )
    parser.add_argument(
        "--memory-cap-mb", type=int, default=0, help="run the engine in a memory cgroup of this size (needs root)"
    )
    parser.add_argument("--fsync-each-file", action="store_true", help="flush (fsync) after every file's upsert")
    parser.add_argument("--legacy-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        if args.legacy_only:
            print(json.dumps(legacy(args.points, root)))
            return
        print(f"embedded engine (Qdrant Edge), {args.points:,} points of {DIM} dims", flush=True)
        result = asyncio.run(edge(args, root))
        print(json.dumps(result, indent=1))
        shutil.rmtree(root / "vectors", ignore_errors=True)
        if args.legacy_max:
            n = min(args.points, args.legacy_max)
            print(f"old local mode (qdrant-client path=), {n:,} points", flush=True)
            child = subprocess.run(
                [sys.executable, __file__, "--legacy-only", "--points", str(n), "--dir", str(root)],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
            result["legacy"] = json.loads(lines[-1]) if lines else {"error": child.stderr[-500:]}
            print(json.dumps(result["legacy"], indent=1))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
