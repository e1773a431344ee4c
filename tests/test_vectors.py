"""The vector store: the embedded engine (Qdrant Edge in its own process), hybrid search, the
Qdrant server path (run against qdrant-client's in-memory mode, which executes the same requests),
durability across kill -9, one process per store, and the migration of local-mode stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_edge import (
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    Fusion,
    Memory,
    Modifier,
    Point,
    Prefetch,
    Query,
    QueryRequest,
    UpdateOperation,
)

from semantik.cli.redis_server import free_port
from semantik.errors import Unavailable
from semantik.settings import Settings
from semantik.store import hybrid
from semantik.store.edge import stored_point_ids
from semantik.store.hybrid import Candidate, CandidateList, Retriever, SearchMode, SearchPlan, fuse, identifier_terms
from semantik.store.server import ServerBackend, query_requests
from semantik.store.vectors import FilePoints, VectorStore, point_id, qdrant_name
from tests.helpers import loop_gaps

# A client for an unreachable server checks the server's version in the background.
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning")

DIM = 16
REPO = Path(__file__).resolve().parents[1]


def files_named(root: Path, name: str) -> list[Path]:
    """The files called ``name`` under ``root`` while an engine writes there: ``os.walk`` passes over
    a temporary directory that goes while it looks (``Path.rglob`` fails on it)."""
    return sorted(Path(folder) / name for folder, _, files in os.walk(root) if name in files)


def top_hit(engine: Any, vector: np.ndarray, collection: str = "c") -> dict[str, Any]:
    """The nearest point to ``vector`` by a dense search of ``collection``."""
    plan = hybrid.plan_search(SearchMode.DENSE, vector=vector.tolist(), query_text=None, k=1)
    hits: list[dict[str, Any]] = engine.search(collection, plan)
    return hits[0]


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[VectorStore]:
    vectors = VectorStore(url=None, api_key=None, path=tmp_path / "vectors", legacy_path=tmp_path / "qdrant")
    yield vectors
    await vectors.close()


TEXTS = [
    "The lighthouse keeper polished the brass lens every evening.",
    "Billing failed with error E4521 after the nightly batch.",
    "Ships at sea follow the light home.",
    "Volcanoes erupt when magma pressure builds up.",
    "Rotate the API keys every ninety days.",
]


async def test_dense_keyword_and_hybrid_search_say_which_retrievers_found_each_hit(store: VectorStore) -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng, len(TEXTS))
    await store.ensure_collection("notes", DIM)
    await store.ensure_collection("notes", DIM)  # twice is fine
    await store.upsert_file("notes", sha256="a" * 64, path="/d/Notes.MD", job_id="j1", texts=TEXTS, vectors=vectors)
    assert await store.count("notes") == len(TEXTS)

    dense = await store.search("notes", vectors[3], 2)  # the old call: dense by default
    assert dense[0].payload["chunk_index"] == 3 and dense[0].retrievers == ("dense",)
    assert dense[0].payload == {
        "path": "/d/Notes.MD",
        "chunk_index": 3,
        "text": TEXTS[3],
        "job_id": "j1",
        "sha256": "a" * 64,
        "file_type": "md",
        "dirs": ["/d", "/"],
    }
    assert dense[0].id == point_id("notes", "a" * 64, 3)

    keyword = await store.search("notes", None, 3, query_text="E4521", mode="keyword")
    assert [h.payload["chunk_index"] for h in keyword] == [1] and keyword[0].retrievers == ("keyword",)

    hybrid_hits = await store.search("notes", vectors[1], 3, query_text="billing error E4521", mode=SearchMode.HYBRID)
    assert hybrid_hits[0].payload["chunk_index"] == 1
    assert hybrid_hits[0].retrievers == ("dense", "keyword") and hybrid_hits[0].exact
    assert all(h.retrievers == ("dense",) for h in hybrid_hits[1:])
    assert hybrid_hits[0].score > hybrid_hits[1].score

    # Stop words only: nothing on the keyword side, the dense side still answers.
    only_dense = await store.search("notes", vectors[0], 2, query_text="the of and", mode="hybrid")
    assert only_dense[0].payload["chunk_index"] == 0 and only_dense[0].retrievers == ("dense",)
    assert await store.search("notes", None, 2, query_text="the", mode="keyword") == []

    # Filters on indexed payload fields.
    assert await store.search("notes", vectors[0], 5, where={"file_type": ["pdf"]}) == []
    assert len(await store.search("notes", vectors[0], 5, where={"file_type": ["md"], "job_id": ["j1"]})) == 5
    with pytest.raises(ValueError, match="cannot filter by"):
        await store.search("notes", vectors[0], 5, where={"text": ["x"]})
    with pytest.raises(ValueError, match="needs the query text"):
        await store.search("notes", vectors[0], 5, mode="hybrid")

    # A collection nothing was indexed into yet.
    assert await store.search("empty", vectors[0], 5, query_text="x", mode="hybrid") == []
    assert await store.count("empty") == 0


async def test_repeat_upserts_overwrite_and_delete_contents_removes_a_files_points(store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    await store.ensure_collection("c", DIM)
    for _ in range(2):
        await store.upsert_file("c", sha256="a" * 64, path="/d/a.txt", job_id="j", texts=TEXTS, vectors=unit(rng, 5))
    await store.upsert_file("c", sha256="b" * 64, path="/d/b", job_id="j", texts=TEXTS[:2], vectors=unit(rng, 2))
    assert await store.count("c") == 7
    hits = await store.search("c", None, 10, query_text="lighthouse", mode="keyword", where={"sha256": ["b" * 64]})
    assert [h.payload["file_type"] for h in hits] == [""]  # no suffix, no type
    await store.delete_contents("c", ["a" * 64])
    await store.delete_contents("c", [])
    assert await store.count("c") == 2
    with pytest.raises(ValueError, match="16-dimension"):
        await store.upsert_file("c", sha256="c" * 64, path="/x", job_id="j", texts=["x"], vectors=unit(rng, 1, 8))
    await store.close()  # it remembers the collections it ensured; a fresh start checks the shard
    with pytest.raises(ValueError, match="holds 16-dimension vectors, not 8"):
        await store.ensure_collection("c", 8)


async def test_searches_while_jobs_write_into_the_same_collection_stay_consistent(store: VectorStore) -> None:
    rng = np.random.default_rng(2)
    await store.ensure_collection("busy", DIM)
    written: set[str] = set()
    errors: list[BaseException] = []
    writers_done = asyncio.Event()

    async def writer(w: int) -> None:
        for f in range(25):
            sha = f"{w:02d}{f:02d}".ljust(64, "0")
            texts = [f"writer{w} file{f} chunk{c} tag{w}x{f}" for c in range(6)]
            await store.upsert_file(
                "busy", sha256=sha, path=f"/w{w}/{f}.txt", job_id=f"j{w}", texts=texts, vectors=unit(rng, 6)
            )
            written.add(f"tag{w}x{f}")
            # Read your own write: the file is searchable as soon as its upsert returned.
            found = await store.search("busy", None, 6, query_text=f"tag{w}x{f}", mode="keyword")
            assert {h.payload["chunk_index"] for h in found} == set(range(6))
            if f % 5 == 4:
                await store.delete_contents("busy", [sha])
                written.discard(f"tag{w}x{f}")

    async def searcher() -> None:
        while not writers_done.is_set():
            for mode in ("dense", "keyword", "hybrid"):
                hits = await store.search("busy", unit(rng, 1)[0], 10, query_text="writer1 chunk3", mode=mode)
                for hit in hits:
                    p = hit.payload
                    assert p["text"].startswith(p["path"].split("/")[1].replace("w", "writer") + " ")
                    assert p["text"].split()[2] == f"chunk{p['chunk_index']}"
                    assert hit.id == point_id("busy", p["sha256"], p["chunk_index"])
            await asyncio.sleep(0)

    async def guarded(coro: Any) -> None:
        try:
            await coro
        except BaseException as exc:
            errors.append(exc)
            raise

    searchers = [asyncio.create_task(guarded(searcher())) for _ in range(2)]
    await asyncio.gather(*(guarded(writer(w)) for w in range(4)))
    writers_done.set()
    await asyncio.gather(*searchers)
    assert errors == []
    assert await store.count("busy") == 4 * 20 * 6


async def test_the_event_loop_never_waits_for_the_engine(store: VectorStore) -> None:
    """Edge holds the GIL for a whole call, an index build included; in its own process it cannot
    stall this loop, and searches find the same points before and after the build."""
    rng = np.random.default_rng(3)
    await store.ensure_collection("big", DIM)
    vectors = unit(rng, 21_000)
    async with loop_gaps(0.005) as stalls:
        for f in range(0, 21_000, 1000):
            texts = [f"chunk {f + i} of the big file" for i in range(1000)]
            await store.upsert_file(
                "big", sha256=f"{f:064d}", path="/big.txt", job_id="j", texts=texts, vectors=vectors[f : f + 1000]
            )
        before = [h.id for h in await store.search("big", vectors[7], 5)]
        await store.optimize("big")
        after = [h.id for h in await store.search("big", vectors[7], 5)]
    stats = await store.stats("big")
    assert stats["points"] == 21_000 and stats["waiting"] == 0 and stats["index_seconds"] > 0
    assert after[0] == before[0] == point_id("big", f"{0:064d}", 7)
    assert max(stalls) < 0.25, max(stalls)


async def test_searches_are_answered_while_the_index_is_built(store: VectorStore) -> None:
    """A build takes the engine's CPU but not the engine: the sealed points are copied into a build
    process, and searches find them (by brute force) while it builds."""
    rng = np.random.default_rng(4)
    dim, n = 384, 25_000
    await store.ensure_collection("big", dim)
    vectors = unit(rng, n, dim)
    for f in range(0, n, 1000):
        texts = [f"chunk {f + i} of file {f}" for i in range(1000)]
        await store.upsert_file(
            "big", sha256=f"{f:064d}", path=f"/big/{f}.txt", job_id="j", texts=texts, vectors=vectors[f : f + 1000]
        )
    wanted = point_id("big", f"{3000:064d}", 7)
    deadline = time.monotonic() + 60
    while not (await store.stats("big"))["building"]:  # writes paused: the engine starts a build
        assert time.monotonic() < deadline, await store.stats("big")
        await asyncio.sleep(0.1)
    answered = 0
    while (await store.stats("big"))["building"]:
        hits = await store.search("big", vectors[3007], 3)
        assert hits[0].id == wanted
        answered += 1
    stats = await store.stats("big")
    assert answered >= 5, answered  # an engine held by the build answers nothing until it ends
    assert stats["points"] == n and stats["waiting"] == 0 and stats["held_seconds"] == 0
    assert (await store.search("big", vectors[3007], 3))[0].id == wanted


# -- one process per store ----------------------------------------------------------------------

HOLDER = (
    "import sys; from pathlib import Path; from semantik.store.edge import lock_store;"
    " lock = lock_store(Path(sys.argv[1])); print('ready', flush=True); sys.stdin.read()"
)


def hold(path: Path) -> subprocess.Popen[bytes]:
    """Another process holding the embedded store (what tests/helpers.py embedded_store_held runs)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"ready"
    return holder


async def test_a_store_held_by_another_process_is_a_clear_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "vectors"
    holder = hold(path)
    store = VectorStore(url=None, api_key=None, path=path)
    try:
        with pytest.raises(Unavailable) as caught:
            await store.count("x")
        assert caught.value.code == "vector_store_busy"
        assert "held by another process" in caught.value.message and "SEMANTIK_QDRANT_URL" in caught.value.message
        # A second store in this very process is another opener too.
        holder.kill()
        holder.wait()
        assert await store.count("x") == 0  # the holder is gone: it opens now
        second = VectorStore(url=None, api_key=None, path=path)
        with pytest.raises(Unavailable, match="held by another process"):
            await second.count("x")
        await second.close()
    finally:
        holder.kill()
        holder.wait()
        await store.close()


async def test_a_killed_engine_answers_unavailable_once_then_restarts_with_every_answered_write(
    store: VectorStore,
) -> None:
    rng = np.random.default_rng(4)
    await store.ensure_collection("k", DIM)
    for f in range(20):
        await store.upsert_file(
            "k", sha256=f"{f:064d}", path=f"/{f}.txt", job_id="j", texts=TEXTS, vectors=unit(rng, 5)
        )
    pid = store.engine_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # no flush, no close: only what the WAL holds
    with pytest.raises(Unavailable) as caught:
        await store.count("k")
    assert caught.value.code == "vector_engine_stopped"
    assert await store.count("k") == 100
    assert store.engine_pid not in (None, pid)


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import numpy as np
    from semantik.store.vectors import VectorStore

    async def main() -> None:
        store = VectorStore(url=None, api_key=None, path=Path(sys.argv[1]))
        await store.ensure_collection("crash", 16)
        rng = np.random.default_rng(0)
        for f in range(100000):
            vectors = rng.standard_normal((10, 16)).astype(np.float32)
            texts = [f"file {f} chunk {c}" for c in range(10)]
            sha = f"{f:064d}"
            await store.upsert_file("crash", sha256=sha, path=f"/{f}.txt", job_id="j", texts=texts, vectors=vectors)
            print("ack", f, store.engine_pid, flush=True)

    asyncio.run(main())
    """
)


async def test_files_answered_before_kill_9_of_the_process_are_all_there(tmp_path: Path) -> None:
    """kill -9 of the server or worker: its engine dies with it (the store is free at once) and every
    file whose upsert_file returned is in the store."""
    path = tmp_path / "vectors"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=REPO)
    assert writer.stdout is not None
    acked, engine_pid = -1, 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline or acked < 5:
        line = writer.stdout.readline().split()
        if line[:1] == [b"ack"]:  # other lines: the store's log
            acked, engine_pid = int(line[1]), int(line[2])
    writer.kill()
    writer.wait()
    for _ in range(100):  # PR_SET_PDEATHSIG: the engine gets SIGKILL with its parent
        if not Path(f"/proc/{engine_pid}").exists():
            break
        await asyncio.sleep(0.05)
    store = VectorStore(url=None, api_key=None, path=path)
    try:
        count = await store.count("crash")
    finally:
        await store.close()
    assert (acked + 1) * 10 <= count <= (acked + 2) * 10, (acked, count)
    ids = stored_point_ids(path, "crash")  # read straight from the shard, as tests/helpers.py does
    assert len(ids) == len(set(ids)) == count


# -- fusion ---------------------------------------------------------------------------------------


def plan_of(*lists: CandidateList, identifiers: list[frozenset[int]] | None = None, k: int = 10) -> SearchPlan:
    return SearchPlan(SearchMode.HYBRID, k, list(lists), {}, 60, identifiers or [])


DENSE = CandidateList(Retriever.DENSE, 50, dense=[1.0])
KEYWORD = CandidateList(Retriever.KEYWORD, 50, sparse=hybrid.Sparse([1], [1.0]), with_sparse=True)


def test_rrf_ties_go_to_documents_both_found_then_to_the_keyword_side() -> None:
    # "d" only dense at rank 0, "w" only keyword at rank 0: both 1/60. "b" is found by both.
    fused = fuse(
        plan_of(DENSE, KEYWORD),
        [[Candidate("d", 0.9), Candidate("b", 0.8)], [Candidate("w", 9.0), Candidate("b", 5.0)]],
    )
    assert [h.id for h in fused] == ["b", "w", "d"]
    assert fused[1].score == fused[2].score == 1 / 60
    assert fused[0].ranks == {"dense": 1, "keyword": 1}


def test_an_identifier_in_the_query_lifts_the_chunks_that_hold_it() -> None:
    # Near-identical notes: the dense side cannot tell them apart and puts the code's note at rank 8;
    # the keyword side has it first. Plain RRF puts note "n0" (dense 0, keyword 1) first.
    notes = [f"n{i}" for i in range(10)]
    dense = [Candidate(n, 0.9 - i / 100) for i, n in enumerate(notes)]
    dense.insert(8, dense.pop(dense.index(next(c for c in dense if c.id == "n5"))))
    code = frozenset({42, 7})
    keyword = [Candidate("n5", 12.0, frozenset({1, 42, 7}))] + [
        Candidate(n, 2.0, frozenset({1})) for n in notes if n != "n5"
    ]
    plain = fuse(plan_of(DENSE, KEYWORD), [dense, keyword])
    assert plain[0].id == "n0"
    lifted = fuse(plan_of(DENSE, KEYWORD, identifiers=[code]), [dense, keyword])
    assert lifted[0].id == "n5" and lifted[0].ranks == {"dense": 8, "keyword": 0, "identifier": 0}


@pytest.mark.parametrize(
    ("query", "terms"),
    [
        ("E4521", ["E4521"]),
        ("what does ERR-451-B mean?", ["ERR-451-B"]),
        ("0x8007000E on install", ["0x8007000E"]),
        ("disk_quota_42 again", ["disk_quota_42"]),
        ("call getUserName twice", ["getUserName"]),
        ("upgrade to v2.3.1.", ["v2.3.1"]),
        ("port 8080 refused", ["8080"]),
        ("plant-based diets and X-Rays", []),
        ("antioxidant content of 300 foods", []),
        ("IGF-1 and cancer", ["IGF-1"]),
    ],
)
def test_identifier_like_terms(query: str, terms: list[str]) -> None:
    assert identifier_terms(query) == terms


def test_our_rrf_is_qdrants_rrf(tmp_path: Path) -> None:
    """Without ties and identifiers, fuse() gives the scores Edge's own Fusion.Rrf gives."""
    rng = np.random.default_rng(5)
    shard = EdgeShard.create(
        str(tmp_path / "s"),
        EdgeConfig(
            vectors={hybrid.DENSE_VECTOR: EdgeVectorParams(size=DIM, distance=Distance.Cosine)},
            sparse_vectors={hybrid.SPARSE_VECTOR: EdgeSparseVectorParams(modifier=Modifier.Idf)},
        ),
    )
    words = [f"w{i}" for i in range(60)]
    vectors = unit(rng, 400)
    texts = [" ".join(rng.choice(words, 12)) for _ in range(400)]
    points = []
    for i in range(400):
        sparse = hybrid.document_sparse(texts[i])
        points.append(Point(i, {hybrid.DENSE_VECTOR: vectors[i].tolist(), hybrid.SPARSE_VECTOR: hybrid_sparse(sparse)}))
    shard.update(UpdateOperation.upsert_points(points))
    for q in range(20):
        text = " ".join(rng.choice(words, 3))
        plan = hybrid.plan_search(SearchMode.HYBRID, vector=vectors[q].tolist(), query_text=text, k=10, candidates=30)
        answers = shard.query_batch(edge_batch(plan))
        ours = fuse(plan, hybrid.collect(plan, answers, lambda p: frozenset()))
        theirs = shard.query(
            QueryRequest(
                limit=10,
                prefetches=[
                    Prefetch(limit=30, query=Query.Nearest(vectors[q].tolist(), using=hybrid.DENSE_VECTOR)),
                    Prefetch(
                        limit=30,
                        query=Query.Nearest(hybrid_sparse(hybrid.query_sparse(text)), using=hybrid.SPARSE_VECTOR),
                    ),
                ],
                query=Fusion.Rrf(k=60),  # type: ignore[arg-type]  # the stub's union leaves Rrf out
            )
        )
        assert np.allclose([h.score for h in ours], [p.score for p in theirs], rtol=1e-6, atol=0)  # Edge sums in f32
    shard.close()


def hybrid_sparse(sparse: hybrid.Sparse) -> Any:
    from qdrant_edge import SparseVector

    return SparseVector(sparse.indices, sparse.values)


def edge_vector(spec: CandidateList) -> Any:
    if spec.dense is not None:
        return spec.dense
    assert spec.sparse is not None
    return hybrid_sparse(spec.sparse)


def edge_batch(plan: SearchPlan) -> Any:
    from qdrant_edge import QueryBatchRequest

    return QueryBatchRequest(
        [
            QueryRequest(limit=spec.limit, query=Query.Nearest(edge_vector(spec), using=spec.using))
            for spec in plan.lists
        ]
    )


# -- the Qdrant server path -----------------------------------------------------------------------


class InMemoryQdrant(AsyncQdrantClient):
    """qdrant-client's in-memory mode, which runs the requests a server would; it ignores payload
    indexes, so this records the ones asked for."""

    def __init__(self) -> None:
        super().__init__(location=":memory:")
        self.indexed: list[tuple[str, str]] = []

    async def create_payload_index(self, collection_name: str, field_name: str, *args: Any, **kwargs: Any) -> Any:
        self.indexed.append((collection_name, field_name))
        return await super().create_payload_index(collection_name, field_name, *args, **kwargs)


@pytest.fixture
async def server() -> AsyncIterator[ServerBackend]:
    backend = ServerBackend(None, None, client=InMemoryQdrant())
    yield backend
    await backend.close()


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning", "ignore:Local mode:UserWarning")
async def test_the_server_path_builds_both_vectors_and_answers_like_the_embedded_engine(
    server: ServerBackend, store: VectorStore
) -> None:
    rng = np.random.default_rng(6)
    vectors = unit(rng, len(TEXTS))
    name = qdrant_name("notes")
    await server.ensure(name, DIM)
    await server.ensure(name, DIM)
    info = await server.client.get_collection(name)
    assert isinstance(info.config.params.vectors, dict)
    assert info.config.params.vectors[hybrid.DENSE_VECTOR].size == DIM
    assert info.config.params.vectors[hybrid.DENSE_VECTOR].distance == models.Distance.COSINE
    assert info.config.params.vectors[hybrid.DENSE_VECTOR].datatype == models.Datatype.FLOAT16
    assert info.config.params.sparse_vectors is not None
    assert info.config.params.sparse_vectors[hybrid.SPARSE_VECTOR].modifier == models.Modifier.IDF
    indexed = set(server.client.indexed)  # type: ignore[attr-defined]
    assert indexed == {(name, f) for f in (*hybrid.INDEXED_FIELDS, *hybrid.RANGE_FIELDS)}

    ids = [point_id("notes", "a" * 64, i) for i in range(len(TEXTS))]
    payloads = [
        {"path": "/n.md", "chunk_index": i, "text": t, "sha256": "a" * 64, "job_id": "j", "file_type": "md"}
        for i, t in enumerate(TEXTS)
    ]
    await server.upsert(name, ids, vectors, payloads)
    await store.ensure_collection("notes", DIM)
    await store.upsert_file("notes", sha256="a" * 64, path="/n.md", job_id="j", texts=TEXTS, vectors=vectors)
    for mode, text in [("dense", None), ("keyword", "lighthouse light ships"), ("hybrid", "error E4521 light")]:
        plan = hybrid.plan_search(SearchMode(mode), vector=vectors[2].tolist(), query_text=text, k=4)
        remote = await server.search(name, plan)
        local = await store.search("notes", vectors[2], 4, query_text=text, mode=mode)
        assert [r["id"] for r in remote] == [h.id for h in local], mode
        assert [r["ranks"] for r in remote] == [dict(h.ranks) for h in local], mode
        # The embedded engine stores float16 vectors, the server float32: scores agree to float16's precision.
        assert np.allclose([r["score"] for r in remote], [h.score for h in local], atol=1e-3), mode
    assert await server.count(name) == 5
    await server.delete(name, "sha256", ["a" * 64])
    assert await server.count(name) == 0
    assert await server.count(qdrant_name("never")) == 0


def test_server_requests_have_the_same_shape_as_the_plan() -> None:
    plan = hybrid.plan_search(
        SearchMode.HYBRID, vector=[0.5] * DIM, query_text="ERR-451-B billing", k=5, where={"file_type": ["pdf", "md"]}
    )
    dense, keyword = query_requests(plan)
    assert (
        dense.using == hybrid.DENSE_VECTOR and dense.limit == hybrid.DEFAULT_CANDIDATES and dense.query == [0.5] * DIM
    )
    assert keyword.using == hybrid.SPARSE_VECTOR and isinstance(keyword.query, models.SparseVector)
    assert keyword.with_vector == [hybrid.SPARSE_VECTOR]  # to see which candidates hold the identifier
    assert dense.with_payload is False and keyword.with_payload is False
    assert (
        dense.filter
        == keyword.filter
        == models.Filter(must=[models.FieldCondition(key="file_type", match=models.MatchAny(any=["pdf", "md"]))])
    )
    (only,) = query_requests(hybrid.plan_search(SearchMode.DENSE, vector=[0.5] * DIM, query_text=None, k=5))
    assert only.limit == 5 and only.with_payload is True


async def test_a_collection_made_by_an_older_semantik_on_the_server_is_refused_with_the_way_forward(
    server: ServerBackend,
) -> None:
    name = qdrant_name("old")
    await server.client.create_collection(
        name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    )
    with pytest.raises(Unavailable) as caught:
        await server.ensure(name, DIM)
    assert (
        caught.value.code == "vector_store_incompatible" and "DELETE /collections/semantik_old" in caught.value.message
    )


async def test_an_unreachable_server_is_a_connection_error(tmp_path: Path) -> None:
    store = VectorStore(url=f"http://127.0.0.1:{free_port()}", api_key=None, path=tmp_path / "unused")
    try:
        with pytest.raises(Exception, match=r"(?i)connect"):
            await store.ensure_collection("x", DIM)
        with pytest.raises(Exception, match=r"(?i)connect"):
            await store.search("x", np.ones(DIM, dtype=np.float32), 3, query_text="x", mode="hybrid")
    finally:
        await store.close()
    assert not (tmp_path / "unused").exists()  # the server path never touches the embedded store


def test_the_store_lives_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, search_rrf_k=30)
    store = VectorStore.from_settings(settings)
    assert store._path == tmp_path / "vectors" and store._legacy == tmp_path / "qdrant"
    assert store.rrf_k == 30 and store.embedded


# -- migration from qdrant-client's local mode ----------------------------------------------------


def old_store(
    path: Path, collection: str, n: int, rng: np.random.Generator
) -> tuple[list[str], npt.NDArray[np.float32], list[dict[str, Any]]]:
    """A store as the previous Semantik wrote it: local mode, unnamed cosine vector, no BM25."""
    client = QdrantClient(path=str(path))
    name = qdrant_name(collection)
    client.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    vectors = unit(rng, n)
    words = ["harbour", "lantern", "magma", "ledger", "invoice", "glacier", "orbit", "pollen"]
    ids, payloads = [], []
    for i in range(n):
        sha = f"{i // 10:064x}"
        payload = {
            "path": f"/docs/{i // 10}.{['txt', 'pdf', 'md'][i // 10 % 3]}",
            "chunk_index": i % 10,
            "text": f"{words[i % 8]} {words[(i * 3) % 8]} item{i}",
            "job_id": "old-job",
            "sha256": sha,
        }
        ids.append(point_id(collection, sha, i % 10))
        payloads.append(payload)
    client.upsert(
        name, points=[models.PointStruct(id=ids[i], vector=vectors[i].tolist(), payload=payloads[i]) for i in range(n)]
    )
    client.close()
    return ids, vectors, payloads


def dense_top(path: Path, collection: str, queries: npt.NDArray[np.float32]) -> list[list[str]]:
    client = QdrantClient(path=str(path))
    try:
        return [
            [str(p.id) for p in client.query_points(qdrant_name(collection), query=q.tolist(), limit=10).points]
            for q in queries
        ]
    finally:
        client.close()


async def test_a_local_mode_store_is_migrated_on_first_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(7)
    legacy = tmp_path / "qdrant"
    ids, vectors, payloads = old_store(legacy, "docs", 350, rng)
    old_store(legacy, "more", 40, rng)
    queries = unit(rng, 5)
    before = dense_top(legacy, "docs", queries)
    (tmp_path / "vectors" / ".migrating" / "docs").mkdir(parents=True)  # a migration that died half-way
    (tmp_path / "vectors" / ".migrating" / "docs" / "junk").write_text("x")

    store = VectorStore(url=None, api_key=None, path=tmp_path / "vectors", legacy_path=legacy)
    try:
        assert await store.count("docs") == 350 and await store.count("more") == 40
        after = [[h.id for h in await store.search("docs", q, 10)] for q in queries]
        assert after == before
        # Payloads as they were, plus file_type; BM25 vectors made from the stored text.
        hits = await store.search("docs", None, 5, query_text="item123", mode="keyword")
        assert hits[0].id == ids[123] and hits[0].payload == {**payloads[123], "file_type": "txt"}
        pdfs = await store.search("docs", queries[0], 100, where={"file_type": ["pdf"]})
        assert len(pdfs) == 100 and {h.payload["path"].rsplit(".")[-1] for h in pdfs} == {"pdf"}
    finally:
        await store.close()

    assert not legacy.exists()
    (moved,) = tmp_path.glob("qdrant.migrated-*")
    assert (moved / "meta.json").exists()  # renamed, never deleted
    assert not (tmp_path / "vectors" / ".migrating" / "docs").exists()
    shard = EdgeShard.load(str(tmp_path / "vectors" / "docs"))
    try:
        records = shard.retrieve(list[Any](ids), with_payload=False, with_vector=True)
        stored = {str(r.id): cast(dict[str, Any], r.vector)[hybrid.DENSE_VECTOR] for r in records}
        # The vectors themselves, not re-embedded, stored as float16 (to its precision: 2^-12 below 1).
        assert np.allclose(np.array([stored[i] for i in ids]), vectors, rtol=0, atol=2.5e-4)
    finally:
        shard.close()
    out = capsys.readouterr().out
    assert "vector_migration_finished" in out and "vector_migration_collection_done" in out

    # Opening again: nothing left to migrate, everything still there.
    again = VectorStore(url=None, api_key=None, path=tmp_path / "vectors", legacy_path=legacy)
    try:
        assert await again.count("docs") == 350
    finally:
        await again.close()


async def test_a_collection_in_both_stores_is_refused_with_the_way_forward(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    legacy = tmp_path / "qdrant"
    new = VectorStore(url=None, api_key=None, path=tmp_path / "vectors")
    await new.ensure_collection("docs", DIM)
    await new.upsert_file("docs", sha256="a" * 64, path="/a.txt", job_id="j", texts=["kept"], vectors=unit(rng, 1))
    await new.close()
    old_store(legacy, "docs", 20, rng)
    store = VectorStore(url=None, api_key=None, path=tmp_path / "vectors", legacy_path=legacy)
    try:
        with pytest.raises(Unavailable) as caught:
            await store.count("docs")
        assert caught.value.code == "vector_store_incompatible" and f"mv {legacy} {legacy}.old" in caught.value.message
    finally:
        await store.close()
    assert (legacy / "meta.json").exists()  # untouched


def settle(engine: Any, limit_s: float = 60.0) -> None:
    """Run the engine's housekeeping as its process does (between requests, and when a build
    process reports) until nothing is due."""
    from multiprocessing.connection import wait

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        due = engine.due_in()
        if due is None and not engine.build_connections():
            return
        if due is None or due > 0:
            wait(engine.build_connections(), timeout=min(due or 0.5, 0.5))
        engine.maintain()
    raise AssertionError("the engine never settled")


def test_a_bulk_load_is_indexed_in_a_build_process_once_writes_pause_or_a_shard_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from semantik.store import collection, edge, shard

    # The policy at a small scale: 100 waiting points make a build worth doing, 400 fill a shard.
    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 100)  # Edge's own threshold, so builds index
    monkeypatch.setattr(collection, "MAX_SEGMENT_POINTS", 400)
    monkeypatch.setattr(collection, "LIMITED_MEMORY_MB", 0)  # full shards whatever this machine's memory
    monkeypatch.setattr(edge, "OPTIMIZE_IDLE_S", 0.5)
    logged: list[tuple[str, dict[str, Any]]] = []
    root = tmp_path / "vectors"
    engine = edge.EdgeEngine(root, log=lambda event, **fields: logged.append((event, fields)))
    try:
        engine.ensure("c", 8)
        rng = np.random.default_rng(1)
        written = 0

        def write(n: int) -> int:
            nonlocal written
            vectors = rng.standard_normal((n, 8)).astype(np.float32)
            ids = [point_id("c", f"{written + i:064x}", 0) for i in range(n)]
            payloads = [
                {"text": f"chunk {written + i}", "path": f"/d/{written + i}", "sha256": f"{written + i:064x}"}
                for i in range(n)
            ]
            backlog = engine.upsert("c", ids, vectors, payloads)
            written += n
            return backlog

        def keyword(n: int) -> list[dict[str, Any]]:
            plan = hybrid.plan_search(SearchMode.KEYWORD, vector=None, query_text=f"chunk {n}", k=1)
            return engine.search("c", plan)

        # Writes keep coming: no build, however many points wait (below a full shard).
        for _ in range(6):
            write(50)
            engine.maintain()
            assert engine.stats("c")["waiting"] == written and not engine.stats("c")["building"]
        due = engine.due_in()
        assert due is not None and 0 < due <= 0.5
        time.sleep(0.6)  # the writes paused: the open shard is sealed and copied into a build process
        engine.maintain()
        assert engine.stats("c")["building"] and engine.stats("c")["shards"] == 2

        # Meanwhile the engine answers from the original, and takes writes, deletes and path changes;
        # those made to the shard being copied reach the copy too.
        assert keyword(7)[0]["payload"]["path"] == "/d/7"
        engine.delete("c", "path", ["/d/5"])
        engine.set_paths("c", f"{9:064x}", ["/moved/9", "/also/9"])
        write(20)  # into the new open shard
        settle(engine)
        stats = engine.stats("c")
        assert stats["waiting"] == 20 and not stats["building"] and stats["held_seconds"] == 0
        assert engine.count("c") == written - 1 and all(h["payload"]["path"] != "/d/5" for h in keyword(5))
        assert keyword(9)[0]["payload"]["paths"] == ["/moved/9", "/also/9"]
        assert keyword(7)[0]["payload"]["path"] == "/d/7" and keyword(310)[0]["payload"]["path"] == "/d/310"

        # A shard that fills is sealed at the write that fills it (the write's points beyond it go to
        # the next one) and built while writes go on.
        assert write(390) == 0
        assert engine.stats("c")["shards"] == 3
        engine.maintain()
        assert engine.stats("c")["building"]
        # Writes that outrun the build: the next full shard waits for it, and the write that sealed
        # it says so (the store's client then holds its writers, not its searches, until it starts).
        assert write(10) == 0
        assert write(390) == 1 and engine.backlog("c") == 1
        settle(engine)
        stats = engine.stats("c")
        assert engine.backlog("c") == 0 and stats["shards"] == 4 and stats["waiting"] == 10
        assert engine.count("c") == written - 1
        builds = [fields for event, fields in logged if event == "vector_index_built"]
        # The first shard (299 points) went into neither later build: with either it exceeds a shard.
        assert [b["reason"] for b in builds] == ["copy", "copy", "copy"]
        assert [b["points"] for b in builds] == [299, 400, 400]
        assert all(isinstance(b["rss_anon_mb"], int) and b["rss_anon_mb"] > 0 for b in builds)
    finally:
        engine.close()
    # Only the shards the manifest names are on disk, and they hold every point once.
    manifest = json.loads((root / ".meta" / "c.json").read_text())["shards"]
    on_disk = sorted(p.parent.name for p in root.rglob("edge_config.json"))
    assert sorted(manifest) == on_disk and not (root / "c").exists()
    ids = stored_point_ids(root, "c")
    assert len(ids) == len(set(ids)) == written - 1


def run_until(engine: Any, done: Any, limit_s: float = 60.0) -> None:
    """Run the engine's housekeeping as its process does until ``done()``."""
    from multiprocessing.connection import wait

    deadline = time.monotonic() + limit_s
    while not done():
        assert time.monotonic() < deadline, "the engine never got there"
        due = engine.due_in()
        wait(engine.build_connections(), timeout=0.05 if due is None else min(max(due, 0.0), 0.05))
        engine.maintain()


def test_built_shards_are_merged_in_pairs_once_writes_pause_and_a_merge_gives_way_to_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a memory limit shards are sealed at half a full shard, so a million chunks were eleven
    graphs for every search to walk. Once writes have paused long enough, neighbouring built shards
    that fit in a full shard together are merged, while the engine answers searches and takes
    deletes and path changes from the originals; a write that would wait behind a merge cancels it
    instead (made again once writes pause); a merge whose build would not fit in the memory left is
    put off. Every point stays, once, with its changes, across a restart."""
    from semantik.store import collection, edge, shard

    # The policy at a small scale: 100 waiting points make a build, a full shard is 400 points, and
    # under the (pretended) memory limit shards are sealed at 200.
    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(collection, "MAX_SEGMENT_POINTS", 400)
    monkeypatch.setattr(collection, "LIMITED_MEMORY_MB", 10**9)
    monkeypatch.setattr(edge, "OPTIMIZE_IDLE_S", 0.2)
    monkeypatch.setattr(edge, "MERGE_IDLE_S", 1.0)
    monkeypatch.setattr(collection, "MERGE_HEADROOM_MB", 0)  # a merge of 400 points needs about 3 MB
    logged: list[tuple[float, str, dict[str, Any]]] = []
    root = tmp_path / "vectors"
    dim = 16
    vectors = unit(np.random.default_rng(21), 1_300, dim)
    written = 0
    last_write = 0.0

    def write(n: int) -> int:
        nonlocal written, last_write
        rows = range(written, written + n)
        backlog = engine.upsert(
            "c",
            [point_id("c", f"{i:064x}", 0) for i in rows],
            vectors[written : written + n],
            [{"text": f"chunk {i}", "path": f"/d/{i}", "sha256": f"{i:064x}"} for i in rows],
        )
        written, last_write = written + n, time.monotonic()
        return backlog

    def events(name: str) -> list[dict[str, Any]]:
        return [fields for _, event, fields in logged if event == name]

    def finds_each(points: range) -> None:
        for i in points:
            hit = top_hit(engine, vectors[i])
            assert hit["payload"]["sha256"] == f"{i:064x}", i

    engine = edge.EdgeEngine(root, log=lambda event, **fields: logged.append((time.monotonic(), event, fields)))
    try:
        engine.ensure("c", dim)
        found = engine.collection("c")
        assert found is not None and found.shard_points == 200
        for _ in range(22):
            write(37)  # 814 points: four shards sealed at 200 each (a write split where one fills), copied, built
        run_until(engine, lambda: found.merging)
        # Only once every shard was built and no write came for MERGE_IDLE_S.
        started = [(at, fields) for at, event, fields in logged if event == "vector_index_build_started"]
        assert [f["reason"] for _, f in started] == ["copy"] * 4 + ["merge"]
        assert started[-1][0] >= last_write + 1.0 and started[-1][1]["points"] == 400
        merging = started[-1][1]["shards"]
        assert merging == [m.name for m in found.members[:2]]  # the first pair: points 0-399
        # Meanwhile: searches answered from the originals, changes replayed onto the merge.
        finds_each(range(0, 800, 37))
        engine.delete("c", "path", ["/d/5"])
        engine.set_paths("c", f"{9:064x}", ["/moved/9"])
        settle(engine)
        assert next(f["shards"] for f in events("vector_index_built") if f["reason"] == "merge") == merging
        stats = engine.stats("c")
        assert stats["shards"] == 3 and engine.count("c") == 813  # two of 400, the open one (14)
        assert top_hit(engine, vectors[9])["payload"]["paths"] == ["/moved/9"]
        assert top_hit(engine, vectors[5])["payload"]["sha256"] != f"{5:064x}"
        finds_each(range(0, 5))
        finds_each(range(6, written, 13))

        # Two more shards of 200; writes that come while they merge cancel the merge.
        for _ in range(11):
            write(37)  # 407: the open shard's 14 and 186 sealed, 200 sealed, 21 in the open one
        run_until(engine, lambda: found.merging)
        assert [m.shard.points for m in found.members] == [399, 400, 200, 200, 21]  # (one deleted)
        assert write(25) == 0 and found.merging  # below the write-ahead (a quarter of a shard): it goes on
        assert write(25) == 0 and not found.merging  # it would have held the writers: cancelled, not waited for
        assert events("vector_merge_cancelled")[-1]["reason"] == "writes"
        finds_each(range(800, written, 17))

        # Not enough memory left for the merge's build: put off, and said so.
        monkeypatch.setattr(collection, "MERGE_HEADROOM_MB", 10**9)
        run_until(engine, lambda: bool(events("vector_merge_deferred")))
        deferred = events("vector_merge_deferred")[-1]
        assert deferred["points"] == 400 and deferred["needed_mb"] >= 10**9 and deferred["available_mb"] > 0
        due = engine.due_in()
        assert not found.merging and (due is None or due > 60)
        # With the memory, an explicit optimize merges at once, and returns with the merged shard
        # warmed (else the first searches after it would wait behind its warm-up).
        monkeypatch.setattr(collection, "MERGE_HEADROOM_MB", 0)
        engine.optimize("c")
        stats = engine.stats("c")
        assert stats["shards"] == 4 and engine.count("c") == written - 1  # 400, 400, 400, open 71
        assert stats["warming"] == 0 and engine.due_in() is None
        merges = [f for f in events("vector_index_built") if f["reason"] == "merge"]
        assert len(merges) == 3 and [f["points"] for f in merges] == [399, 400, 400]
    finally:
        engine.close()
    manifest = json.loads((root / ".meta" / "c.json").read_text())["shards"]
    on_disk = sorted(p.parent.name for p in root.rglob("edge_config.json"))
    assert sorted(manifest) == on_disk
    ids = stored_point_ids(root, "c")
    assert len(ids) == len(set(ids)) == written - 1
    engine = edge.EdgeEngine(root)
    try:
        assert engine.count("c") == written - 1 and engine.stats("c")["shards"] == 4
        finds_each(range(10, written, 29))
        assert top_hit(engine, vectors[9])["payload"]["paths"] == ["/moved/9"]
    finally:
        engine.close()


def one_build_waiting(
    root: Path, monkeypatch: pytest.MonkeyPatch, log: Any
) -> tuple[Any, Any, npt.NDArray[np.float32]]:
    """An engine with 150 points in its first shard, sealed and copied into a build once writes
    pause (after 0.2 s; merges off): the engine, the collection, the vectors."""
    from semantik.store import collection, edge, shard

    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(edge, "OPTIMIZE_IDLE_S", 0.2)
    monkeypatch.setattr(edge, "MERGE_IDLE_S", None)
    vectors = unit(np.random.default_rng(5), 150, 16)
    engine = edge.EdgeEngine(root, log=log)
    engine.ensure("c", 16)
    engine.upsert(
        "c",
        [point_id("c", f"{i:064x}", 0) for i in range(150)],
        vectors,
        [{"text": f"chunk {i}", "path": f"/d/{i}", "sha256": f"{i:064x}"} for i in range(150)],
    )
    found = engine.collection("c")
    assert found is not None
    return engine, found, vectors


def test_a_swap_leaves_closing_and_removing_the_replaced_shard_to_later_steps_and_a_kill_between_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swapping a built copy in holds the engine (opening the copy: 0.5-1.2 s at 100-200k points),
    so closing and removing the shard it replaced come in later steps, each between two requests. A
    search between them is answered from the copy; a process killed before they ran (its files as
    they were) opens with every point and without the replaced shard's directory."""
    from semantik.store import collection, edge

    logged: list[str] = []
    root = tmp_path / "vectors"
    engine, found, vectors = one_build_waiting(root, monkeypatch, lambda event, **fields: logged.append(event))
    try:
        replaced = collection.shard_dir(root, "c", found.members[0].name)
        run_until(engine, lambda: "vector_index_built" in logged)  # the step that swapped the copy in
        assert replaced.is_dir() and engine.due_in() == 0  # not yet closed nor removed
        assert [top_hit(engine, vectors[i])["payload"]["sha256"] for i in (0, 77, 149)] == [
            f"{i:064x}" for i in (0, 77, 149)
        ]
        crashed = tmp_path / "crashed"
        shutil.copytree(root, crashed)  # the files as a kill -9 here would leave them
        settle(engine)
        assert not replaced.exists() and engine.count("c") == 150
    finally:
        engine.close()
    engine = edge.EdgeEngine(crashed)
    try:
        assert engine.count("c") == 150 and top_hit(engine, vectors[42])["payload"]["sha256"] == f"{42:064x}"
        manifest = json.loads((crashed / ".meta" / "c.json").read_text())["shards"]
        assert sorted(manifest) == sorted(p.parent.name for p in crashed.rglob("edge_config.json"))
        assert len(manifest) == 2  # the copy and the open shard: the replaced one is gone
    finally:
        engine.close()


def test_a_replaced_shard_that_fails_to_close_is_logged_and_left_for_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replaced shard that will not close keeps its directory (no removal under an open shard),
    the engine says so and goes on answering; the next open removes the directory."""
    from semantik.store import collection, edge

    logged: list[tuple[str, dict[str, Any]]] = []
    root = tmp_path / "vectors"
    engine, found, vectors = one_build_waiting(
        root, monkeypatch, lambda event, **fields: logged.append((event, fields))
    )
    try:
        first = found.members[0]
        replaced = collection.shard_dir(root, "c", first.name)

        def refuse() -> None:
            raise OSError("device busy")

        monkeypatch.setattr(first.shard, "close", refuse)
        settle(engine)
        failed = [fields for event, fields in logged if event == "vector_shard_retire_failed"]
        assert [(f["shard"], f["error"]) for f in failed] == [(first.name, "OSError: device busy")]
        assert replaced.is_dir() and engine.count("c") == 150
        assert top_hit(engine, vectors[77])["payload"]["sha256"] == f"{77:064x}"
    finally:
        engine.close()
    engine = edge.EdgeEngine(root)
    try:
        assert engine.count("c") == 150 and not replaced.exists()
    finally:
        engine.close()


def test_shards_of_unlike_size_are_not_merged_so_a_small_increment_does_not_rebuild_a_big_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that grows a little each day: each increment is built alone or with a neighbour of
    like size, and an idle engine does not then merge it into a shard over twice its size (which
    would rebuild the big one at every increment); like-sized neighbours are merged, so shards grow
    geometrically."""
    from semantik.store import collection, edge, shard

    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(collection, "MAX_SEGMENT_POINTS", 1_000)
    monkeypatch.setattr(collection, "LIMITED_MEMORY_MB", 0)
    monkeypatch.setattr(collection, "MERGE_HEADROOM_MB", 0)
    monkeypatch.setattr(edge, "OPTIMIZE_IDLE_S", 0.2)
    monkeypatch.setattr(edge, "MERGE_IDLE_S", 0.5)
    logged: list[tuple[str, dict[str, Any]]] = []
    vectors = unit(np.random.default_rng(31), 750, 16)
    written = 0
    engine = edge.EdgeEngine(tmp_path / "vectors", log=lambda event, **fields: logged.append((event, fields)))

    def increment(n: int) -> None:
        nonlocal written
        rows = range(written, written + n)
        engine.upsert(
            "c",
            [point_id("c", f"{i:064x}", 0) for i in rows],
            vectors[written : written + n],
            [{"text": f"chunk {i}", "path": f"/d/{i}", "sha256": f"{i:064x}"} for i in rows],
        )
        written += n
        time.sleep(0.6)  # writes pause: sealed, built, and merged where due
        settle(engine)

    try:
        engine.ensure("c", 16)
        found = engine.collection("c")
        assert found is not None
        increment(500)
        increment(150)  # under half its neighbour: built alone, and left so once idle
        assert [m.shard.points for m in found.members] == [500, 150, 0]
        increment(100)  # like its neighbour: the build takes both (250), then 250 beside 500 is merged
        assert [m.shard.points for m in found.members] == [750, 0]
        reasons = [f["reason"] for e, f in logged if e == "vector_index_built"]
        assert reasons == ["copy", "copy", "copy", "merge"]
        assert engine.count("c") == written
        for i in range(0, written, 23):
            assert top_hit(engine, vectors[i])["payload"]["sha256"] == f"{i:064x}"
    finally:
        engine.close()


def test_a_sealed_shard_is_built_from_a_copy_of_its_files_and_keeps_every_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build copies the sealed shard's files rather than reading its points back. Changes made
    while it copies wait for the copy and reach the built shard; the built shard takes changes after
    the swap and keeps them across a restart; a shard whose files cannot be copied is read back."""
    from semantik.store import collection, edge, shard
    from semantik.store.builder import Build

    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(collection, "MERGE_RATIO", 0)  # each sealed shard built alone ...
    monkeypatch.setattr(edge, "MERGE_IDLE_S", None)  # ... and not merged later
    monkeypatch.setattr(edge, "OPTIMIZE_IDLE_S", 0.2)
    logged: list[tuple[str, dict[str, Any]]] = []
    root = tmp_path / "vectors"
    vectors = unit(np.random.default_rng(8), 400, 16)
    ids = [point_id("c", f"{i:064x}", 0) for i in range(400)]
    payloads = [{"text": f"chunk {i}", "path": f"/d/{i}", "sha256": f"{i:064x}"} for i in range(400)]

    def nearest(engine: edge.EdgeEngine, i: int) -> dict[str, Any]:
        return top_hit(engine, vectors[i])

    def start_build(engine: edge.EdgeEngine) -> Build:
        time.sleep(0.3)  # writes paused: the open shard is sealed and a build starts
        engine.maintain()
        found = engine.collection("c")
        assert found is not None and found.build is not None
        return found.build

    engine = edge.EdgeEngine(root, log=lambda event, **fields: logged.append((event, fields)))
    try:
        engine.ensure("c", 16)
        engine.upsert("c", ids[:200], vectors[:200], payloads[:200])
        build = start_build(engine)
        assert build.via == "clone" and build.state == "cloning"
        engine.delete("c", "path", ["/d/5"])  # waits for the copy of the files, then reaches the copy too
        assert build.state != "cloning"
        engine.set_paths("c", f"{9:064x}", ["/moved/9"])
        moved = {**payloads[11], "path": "/rewritten/11"}
        engine.upsert("c", [ids[11]], vectors[11:12], [moved])  # written again: held once, in the open shard
        engine.upsert("c", ids[200:250], vectors[200:250], payloads[200:250])
        settle(engine)
        built = [f for e, f in logged if e == "vector_index_built"]
        assert [(b["via"], b["points"]) for b in built] == [("clone", 198)]
        built_log = engine.collection("c").members[0].shard.path / "wal"  # type: ignore[union-attr]
        assert sum(resident_bytes(f) for f in built_log.iterdir()) == 0  # read at the swap, then let go
        assert engine.count("c") == 249 and engine.stats("c")["waiting"] == 51
        assert nearest(engine, 5)["id"] != ids[5] and nearest(engine, 9)["payload"]["paths"] == ["/moved/9"]
        assert nearest(engine, 11)["payload"]["path"] == "/rewritten/11"
        engine.delete("c", "path", ["/d/6"])  # the built shard takes changes after the swap
    finally:
        engine.close()
    engine = edge.EdgeEngine(root, log=lambda event, **fields: logged.append((event, fields)))
    try:
        assert engine.count("c") == 248 and nearest(engine, 6)["id"] != ids[6]  # kept across the restart
        assert nearest(engine, 7)["id"] == ids[7] and nearest(engine, 220)["id"] == ids[220]

        # A shard whose files cannot be copied (a link where only files belong; never followed) is
        # read back into the build instead, in the same build.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "keep").write_text("not ours")
        open_dir = engine.collection("c").open_shard.path  # type: ignore[union-attr]
        (open_dir / "segments" / "stray").symlink_to(elsewhere, target_is_directory=True)
        engine.upsert("c", ids[250:], vectors[250:], payloads[250:])
        settle(engine)
        failed = [f for e, f in logged if e == "vector_index_clone_failed"]
        assert len(failed) == 1 and "not a regular file or directory" in failed[0]["reason"]
        assert [f["via"] for e, f in logged if e == "vector_index_built"][-1] == "export"
        assert engine.count("c") == 398 and engine.stats("c")["waiting"] == 0
        assert nearest(engine, 350)["id"] == ids[350] and nearest(engine, 220)["id"] == ids[220]
        assert (elsewhere / "keep").read_text() == "not ours"
    finally:
        engine.close()
    on_disk = stored_point_ids(root, "c")
    assert len(on_disk) == len(set(on_disk)) == 398


def test_a_shard_file_copy_keeps_its_holes_and_refuses_links(tmp_path: Path) -> None:
    """Edge preallocates its log files (32 MB each, mostly unwritten): a build's copy of a shard
    must not write those zeros out, and must not follow a link put where a file was."""
    from semantik.store.builder import copy_file

    source = tmp_path / "open-1"
    with source.open("wb") as handle:
        handle.truncate(32 << 20)
        handle.seek(1 << 20)
        handle.write(b"entry" * 1000)
    copy_file(str(source), tmp_path / "copy")
    copied = tmp_path / "copy"
    assert copied.read_bytes() == source.read_bytes()
    assert copied.stat().st_blocks * 512 <= 1 << 20  # the data, not 32 MB of zeros

    (tmp_path / "link").symlink_to(source)
    with pytest.raises(OSError):
        copy_file(str(tmp_path / "link"), tmp_path / "through-link")
    assert not (tmp_path / "through-link").exists()


def test_a_build_that_dies_or_is_cut_off_loses_nothing_and_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from semantik.store import collection, edge, shard

    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(collection, "BUILD_RETRY_S", 0.3)
    monkeypatch.setattr(edge, "OPTIMIZE_IDLE_S", 0.2)
    logged: list[tuple[str, dict[str, Any]]] = []
    root = tmp_path / "vectors"
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    ids = [point_id("c", f"{i:064x}", 0) for i in range(300)]
    payloads = [{"text": f"chunk {i}", "path": f"/d/{i}", "sha256": f"{i:064x}"} for i in range(300)]
    plan = hybrid.plan_search(SearchMode.DENSE, vector=vectors[42].tolist(), query_text=None, k=1)

    engine = edge.EdgeEngine(root, log=lambda event, **fields: logged.append((event, fields)))
    try:
        engine.ensure("c", 8)
        engine.upsert("c", ids, vectors, payloads)
        time.sleep(0.3)
        engine.maintain()  # sealed, and the build process started
        build = engine.collection("c").build  # type: ignore[union-attr]
        assert build is not None
        build.process.kill()  # the build process dies (out of memory, say)
        build.process.wait()
        engine.maintain()
        assert [e for e, _ in logged if e.startswith("vector_index_build")] == [
            "vector_index_build_started",
            "vector_index_build_failed",
        ]
        assert engine.search("c", plan)[0]["payload"]["path"] == "/d/42"  # answered from the sealed shard
        assert engine.stats("c")["waiting"] == 300 and not build.target.exists()
        settle(engine)  # tried again a moment later
        assert engine.stats("c")["waiting"] == 0 and engine.count("c") == 300

        # A build cut off by the engine's own death leaves a half-written shard; the next start
        # removes it, keeps the sealed shard, and builds it again.
        engine.upsert("c", [point_id("c", "x" * 64, 0)], vectors[:1], [{"text": "x", "path": "/x"}])
        more = [point_id("c", f"{i:064x}", 1) for i in range(150)]
        engine.upsert("c", more, vectors[:150], [{"text": f"more {i}", "path": f"/m/{i}"} for i in range(150)])
        time.sleep(0.3)
        engine.maintain()
        target = engine.collection("c").build.target  # type: ignore[union-attr]
    finally:
        engine.close()  # stops the build as a crash would (and removes what it wrote: put some back)
    (target / "segments").mkdir(parents=True)
    (target / "edge_config.json").write_text("{}")
    # Other strays beside it: a file, and a link to a directory whose contents must survive.
    (target.parent / "97").write_text("left by hand")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not ours")
    (target.parent / "98").symlink_to(elsewhere, target_is_directory=True)
    engine = edge.EdgeEngine(root, log=lambda event, **fields: logged.append((event, fields)))
    try:
        assert engine.count("c") == 451 and not target.exists()
        named = set(engine.read_meta("c")["shards"]) - {"base"}
        assert {p.name for p in target.parent.iterdir()} == named
        assert not (target.parent / "97").exists() and not (target.parent / "98").is_symlink()
        assert (elsewhere / "keep").read_text() == "not ours"
        settle(engine)
        assert engine.stats("c")["waiting"] == 0 and engine.count("c") == 451
        assert engine.search("c", plan)[0]["payload"]["path"] == "/d/42"

        # A shard whose copies keep failing (a memory limit that cannot hold two sets of its points)
        # is indexed in this process instead, once writes and searches pause; writers are told to
        # wait for it meanwhile.
        monkeypatch.setattr(collection, "COPY_ATTEMPTS", 1)
        monkeypatch.setattr(edge, "SEARCH_QUIET_S", 0.2)
        last = [point_id("c", f"{i:064x}", 2) for i in range(120)]
        engine.upsert("c", last, vectors[:120], [{"text": f"last {i}", "path": f"/l/{i}"} for i in range(120)])
        time.sleep(0.3)
        engine.maintain()  # sealed, copy started
        dying = engine.collection("c").build.process  # type: ignore[union-attr]
        dying.kill()
        dying.wait()
        engine.maintain()
        assert engine.backlog("c") == 1 and engine.stats("c")["waiting"] == 120
        settle(engine)
        stats = engine.stats("c")
        assert stats["waiting"] == 0 and stats["held_seconds"] > 0 and engine.backlog("c") == 0
        assert [f["reason"] for e, f in logged if e == "vector_index_built"][-1] == "in_place"
        assert engine.count("c") == 571
    finally:
        engine.close()
    ids_on_disk = stored_point_ids(root, "c")
    assert len(ids_on_disk) == len(set(ids_on_disk)) == 571


def test_vectors_are_stored_as_float16_and_a_float32_store_stays_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards store dense vectors as float16 (half the memory); a store written before, in float32,
    opens and answers beside new float16 shards, and its points move to float16 as builds copy them."""
    from qdrant_edge import VectorStorageDatatype

    from semantik.store import collection, edge, shard

    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(edge, "OPTIMIZE_IDLE_S", 0.2)
    root = tmp_path / "vectors"
    vectors = unit(np.random.default_rng(5), 600, 384)
    ids = [point_id("c", f"{i:064x}", 0) for i in range(600)]
    payloads = [{"text": f"chunk {i}", "path": f"/d/{i}", "sha256": f"{i:064x}"} for i in range(600)]

    def datatypes() -> list[str]:
        found = []
        for config in files_named(root, "edge_config.json"):
            with contextlib.suppress(FileNotFoundError):  # a copy swapped in meanwhile
                found.append(json.loads(config.read_text())["vectors"]["dense"].get("datatype", "float32"))
        return found

    def nearest(i: int) -> dict[str, Any]:
        return top_hit(engine, vectors[i])

    monkeypatch.setattr(shard, "DENSE_DATATYPE", VectorStorageDatatype.Float32)  # an earlier version
    engine = edge.EdgeEngine(root)
    engine.ensure("c", 384)
    engine.upsert("c", ids[:300], vectors[:300], payloads[:300])
    engine.flush()
    engine.close()
    assert datatypes() == ["float32"]

    monkeypatch.setattr(shard, "DENSE_DATATYPE", VectorStorageDatatype.Float16)  # this version
    engine = edge.EdgeEngine(root)
    try:
        assert engine.count("c") == 300 and nearest(7)["id"] == ids[7]
        time.sleep(0.3)
        deadline = time.monotonic() + 30
        while not engine.stats("c")["building"]:  # it warms the shard it opened, then seals and copies it
            assert time.monotonic() < deadline
            engine.maintain()
        # The build process is the one the OOM killer takes first (it is tried again; the engine lives).
        found = engine.collection("c")
        assert found is not None and found.build is not None
        build = found.build
        oom_adj = Path(f"/proc/{build.process.pid}/oom_score_adj")
        deadline = time.monotonic() + 10
        while oom_adj.read_text().strip() != "1000":  # set as the child starts
            assert time.monotonic() < deadline
            time.sleep(0.01)
        engine.upsert("c", ids[300:], vectors[300:], payloads[300:])
        assert set(datatypes()) == {"float16", "float32"}  # the new shard (and the copy being made)
        for i in (7, 299, 300, 599):  # each finds itself, in either shard
            hit = nearest(i)
            assert hit["id"] == ids[i] and abs(hit["score"] - 1.0) < 1e-3
        time.sleep(0.3)
        settle(engine)  # the built copy (float16) replaced the float32 shard
        assert engine.stats("c")["waiting"] == 0 and engine.count("c") == 600
        assert set(datatypes()) == {"float16"}
        for i in range(0, 600, 37):
            hit = nearest(i)
            assert hit["id"] == ids[i] and abs(hit["score"] - 1.0) < 1e-3
    finally:
        engine.close()


def test_an_index_asked_for_is_built_in_place_when_its_copy_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from semantik.store import collection, edge, shard

    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 100)
    logged: list[tuple[str, dict[str, Any]]] = []
    root = tmp_path / "vectors"
    engine = edge.EdgeEngine(root, log=lambda event, **fields: logged.append((event, fields)))
    try:
        engine.ensure("c", 8)
        vectors = np.random.default_rng(6).standard_normal((150, 8)).astype(np.float32)
        ids = [point_id("c", f"{i:064x}", 0) for i in range(150)]
        engine.upsert("c", ids, vectors, [{"text": f"chunk {i}", "path": f"/d/{i}"} for i in range(150)])
        # The build process cannot write its copy (a file where its shard goes): it fails.
        (root / ".shards" / "c").mkdir(parents=True)
        (root / ".shards" / "c" / "2").write_text("in the way")
        engine.optimize("c")
        stats = engine.stats("c")
        assert stats["waiting"] == 0 and stats["held_seconds"] > 0 and engine.count("c") == 150
        events = [(e, f.get("reason")) for e, f in logged if e.startswith("vector_index_buil")]
        assert events == [
            ("vector_index_build_started", "copy"),
            ("vector_index_build_failed", None),
            ("vector_index_built", "asked"),
        ]
        assert top_hit(engine, vectors[7])["payload"]["path"] == "/d/7"
    finally:
        engine.close()


def test_filtered_searches_on_a_built_index_find_the_true_nearest_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An indexed segment has one graph (no per-folder or per-type graphs: they multiplied the build
    time); a filter the payload index cannot answer by exact search (more than FULL_SCAN_POINTS
    match) walks that graph, and still returns what an exact search would."""
    from semantik.store import collection, edge, shard

    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 500)
    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 500)
    monkeypatch.setattr(shard, "FULL_SCAN_POINTS", 100)  # so these filters take the graph
    dim, n = 32, 6_000
    rng = np.random.default_rng(5)
    centres = unit(rng, 60, dim)
    vectors = unit(rng, n, dim) * 0.35 + centres[rng.integers(0, 60, n)]
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    kinds = np.where(np.arange(n) % 8 == 0, "pdf", "txt")
    teams = np.arange(n) % 5
    engine = edge.EdgeEngine(tmp_path / "vectors")
    try:
        engine.ensure("c", dim)
        for start in range(0, n, 1000):
            rows = range(start, start + 1000)
            payloads = [
                {"text": f"chunk {i}", "file_type": str(kinds[i]), **hybrid.path_fields([f"/drive/team{teams[i]}/{i}"])}
                for i in rows
            ]
            ids = [point_id("c", f"{i:064x}", 0) for i in rows]
            engine.upsert("c", ids, vectors[start : start + 1000], payloads)
        engine.optimize("c")
        stats = engine.stats("c")
        assert stats["waiting"] == 0 and stats["indexed_vectors"] >= n  # the searches below walk the graph
        for config_file in files_named(tmp_path / "vectors", "edge_config.json"):
            assert json.loads(config_file.read_text())["hnsw_config"]["payload_m"] == 0

        queries = unit(rng, 40, dim) * 0.5 + vectors[rng.integers(0, n, 40)]
        for where, matches in (
            ({"file_type": ["pdf"]}, kinds == "pdf"),  # 12.5% of the points
            ({"dirs": ["/drive/team3"]}, teams == 3),  # 20%
        ):
            matching = np.flatnonzero(matches)
            found = 0
            for query in queries:
                query = query / np.linalg.norm(query)
                nearest = matching[np.argsort(-(vectors[matching] @ query))[:10]]
                exact = {point_id("c", f"{i:064x}", 0) for i in nearest.tolist()}
                plan = hybrid.plan_search(SearchMode.DENSE, vector=query.tolist(), query_text=None, k=10, where=where)
                hits = engine.search("c", plan)
                ((field, wanted),) = where.items()
                assert len(hits) == 10
                assert all(set(wanted) & set(np.atleast_1d(h["payload"][field])) for h in hits)
                found += len(exact & {str(h["id"]) for h in hits})
            assert found / (10 * len(queries)) >= 0.97, where
    finally:
        engine.close()


def test_a_built_shard_keeps_its_exact_match_indexes_on_disk_and_they_select_after_a_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The indexes deletes and path changes select by (path, sha256, job_id) are kept on disk, the
    ones searches filter by (file type, folders) in memory; once built and opened again from disk,
    each still selects exactly the points it should."""
    from semantik.store import collection, edge, shard

    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 200)
    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 200)
    dim, files, per_file = 16, 60, 10
    rng = np.random.default_rng(11)
    vectors = unit(rng, files * per_file, dim)

    def plan(where: dict[str, list[str]]) -> SearchPlan:
        return hybrid.plan_search(SearchMode.DENSE, vector=vectors[0].tolist(), query_text=None, k=1000, where=where)

    root = tmp_path / "vectors"
    engine = edge.EdgeEngine(root)
    try:
        engine.ensure("c", dim)
        for f in range(files):
            rows = slice(f * per_file, (f + 1) * per_file)
            path = f"/drive/team{f % 4}/{f}.{'pdf' if f % 5 == 0 else 'txt'}"
            texts = [f"chunk {c} of file {f}" for c in range(per_file)]
            payloads = FilePoints(f"{f:064x}", path, f"job{f % 3}", texts, vectors[rows]).payloads()
            engine.upsert("c", [point_id("c", f"{f:064x}", c) for c in range(per_file)], vectors[rows], payloads)
        engine.optimize("c")
        assert engine.stats("c")["waiting"] == 0
    finally:
        engine.close()

    engine = edge.EdgeEngine(root)  # the built segments' indexes are read back from disk
    try:
        assert engine.count("c") == files * per_file
        hits = engine.search("c", plan({"path": ["/drive/team1/13.txt"]}))
        assert sorted(h["payload"]["chunk_index"] for h in hits) == list(range(per_file))
        assert {h["payload"]["sha256"] for h in hits} == {f"{13:064x}"}
        assert len(engine.search("c", plan({"job_id": ["job2"]}))) == 20 * per_file
        assert len(engine.search("c", plan({"file_type": ["pdf"]}))) == 12 * per_file
        assert len(engine.search("c", plan({"dirs": ["/drive/team3"]}))) == 15 * per_file

        engine.set_paths("c", f"{13:064x}", ["/drive/moved/13.txt"])
        assert engine.search("c", plan({"path": ["/drive/team1/13.txt"]})) == []
        assert len(engine.search("c", plan({"path": ["/drive/moved/13.txt"]}))) == per_file
        assert len(engine.search("c", plan({"dirs": ["/drive/team1"]}))) == 14 * per_file

        engine.delete("c", "sha256", [f"{7:064x}", f"{8:064x}"])
        counts = engine.content_counts("c")
        assert len(counts) == files - 2 and f"{7:064x}" not in counts and f"{8:064x}" not in counts
        assert engine.count("c") == (files - 2) * per_file
        assert engine.search("c", plan({"sha256": [f"{7:064x}"]})) == []
    finally:
        engine.close()

    # What the built segments hold, as Edge wrote it (read from their files: opening a shard would
    # first create any index missing).
    built = 0
    for config_file in root.rglob("payload_index/config.json"):
        keyword = {
            name: kind
            for name, kinds in json.loads(config_file.read_text())["indexed_types"].items()
            for kind in kinds
            if kind["index_type"] == "keyword_index"
        }
        assert set(keyword) == set(hybrid.INDEXED_FIELDS)
        if all(kind["mutability"] == "immutable" for kind in keyword.values()):
            built += 1
            on_disk = {name for name, kind in keyword.items() if kind["storage_type"]["mmap"]["is_on_disk"]}
            assert on_disk == {"path", "sha256", "job_id"}
    assert built


def test_a_search_over_many_shards_finds_what_one_exact_search_would_each_point_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection of a dozen shards (a million chunks under a memory limit is eleven) answers a
    dense search with the true nearest chunks across all of them, best first, each once (a point
    written again lives in the open shard only), with its own payload; and a hybrid hit's ranks are
    its places in the dense and keyword lists the same shards give."""
    from semantik.store import collection, edge

    monkeypatch.setattr(collection, "MAX_SEGMENT_POINTS", 100)
    monkeypatch.setattr(collection, "LIMITED_MEMORY_MB", 0)
    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 10**6)  # no builds: every shard searched exactly
    dim, n = 16, 1_200
    rng = np.random.default_rng(11)
    vectors = unit(rng, n, dim)
    words = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet"]

    def payload(i: int, version: int = 0) -> dict[str, Any]:
        return {
            "text": f"note {i} {words[i % 7]} {words[(i * 3) % 7]} v{version}",
            "path": f"/d/{i}",
            "sha256": f"{i:064x}",
        }

    engine = edge.EdgeEngine(tmp_path / "vectors")
    try:
        engine.ensure("c", dim)
        for start in range(0, n, 50):
            rows = range(start, start + 50)
            engine.upsert(
                "c",
                [point_id("c", f"{i:064x}", 0) for i in rows],
                vectors[start : start + 50],
                [payload(i) for i in rows],
            )
        # Points of the first shards written again, with new vectors: they move to the open shard.
        moved = list(range(0, 300, 7))
        vectors[moved] = unit(rng, len(moved), dim)
        engine.upsert(
            "c", [point_id("c", f"{i:064x}", 0) for i in moved], vectors[moved], [payload(i, 1) for i in moved]
        )
        assert engine.stats("c")["shards"] >= 12 and engine.count("c") == n

        by_id = {point_id("c", f"{i:064x}", 0): i for i in range(n)}
        for query in unit(rng, 25, dim):
            hits = engine.search(
                "c", hybrid.plan_search(SearchMode.DENSE, vector=query.tolist(), query_text=None, k=10)
            )
            exact = np.argsort(-(vectors @ query))[:10].tolist()
            assert [by_id[h["id"]] for h in hits] == exact
            for h in hits:
                i = by_id[h["id"]]
                assert h["payload"]["path"] == f"/d/{i}"
                assert h["payload"]["text"].endswith("v1" if i in moved else "v0")

        def places(mode: SearchMode, query: npt.NDArray[np.float32], text: str) -> dict[str, int]:
            plan = hybrid.plan_search(mode, vector=query.tolist(), query_text=text, k=hybrid.DEFAULT_CANDIDATES)
            return {h["id"]: rank for rank, h in enumerate(engine.search("c", plan))}

        texts = ["amber note", "cobalt garnet", "fjord", "dune ember"] * 3
        for query, text in zip(unit(rng, len(texts), dim), texts, strict=True):
            dense, keyword = places(SearchMode.DENSE, query, text), places(SearchMode.KEYWORD, query, text)
            plan = hybrid.plan_search(SearchMode.HYBRID, vector=query.tolist(), query_text=text, k=10)
            hits = engine.search("c", plan)
            assert len(hits) == 10 and len({h["id"] for h in hits}) == 10
            for h in hits:
                assert h["payload"]["path"] == f"/d/{by_id[h['id']]}"
                assert h["ranks"].get("dense") == dense.get(h["id"])
                assert h["ranks"].get("keyword") == keyword.get(h["id"])
    finally:
        engine.close()


async def test_a_store_made_with_the_keyword_index_in_memory_opens_with_it_on_disk(tmp_path: Path) -> None:
    """Stores written before the BM25 index moved to disk (session 9) open, keep every point, answer
    keyword searches, and carry on with the index on disk."""
    old_config = EdgeConfig(
        vectors={hybrid.DENSE_VECTOR: EdgeVectorParams(size=DIM, distance=Distance.Cosine)},
        sparse_vectors={hybrid.SPARSE_VECTOR: EdgeSparseVectorParams(modifier=Modifier.Idf)},
        payload_memory=Memory.Cold,
    )
    shard_dir = tmp_path / "vectors" / "docs"
    shard_dir.parent.mkdir(parents=True)
    shard = EdgeShard.create(str(shard_dir), old_config)
    vectors = unit(np.random.default_rng(3), len(TEXTS))
    points = [
        Point(
            point_id("docs", f"{i:064x}", 0),
            {
                hybrid.DENSE_VECTOR: vectors[i].tolist(),
                hybrid.SPARSE_VECTOR: hybrid_sparse(hybrid.document_sparse(text)),
            },
            {"text": text, "path": f"/d/{i}.txt", "sha256": f"{i:064x}", "chunk_index": 0},
        )
        for i, text in enumerate(TEXTS)
    ]
    shard.update(UpdateOperation.upsert_points(points))
    shard.optimize()
    shard.flush()
    shard.close()

    store = VectorStore(url=None, api_key=None, path=tmp_path / "vectors")
    try:
        assert await store.count("docs") == len(TEXTS)
        hits = await store.search("docs", vectors[0], 2, query_text="error E4521", mode="keyword")
        assert hits[0].payload["text"] == TEXTS[1]
        await store.upsert_file(
            "docs", sha256="f" * 64, path="/d/new.txt", job_id="j", texts=["The keeper logged E4521 too."],
            vectors=vectors[:1],
        )  # fmt: skip
        hits = await store.search("docs", vectors[0], 3, query_text="E4521", mode="keyword")
        assert {h.payload["path"] for h in hits} == {"/d/1.txt", "/d/new.txt"}
    finally:
        await store.close()
    config = json.loads((shard_dir / "edge_config.json").read_text())
    assert config["sparse_vectors"][hybrid.SPARSE_VECTOR]["memory"] == "cold"


async def test_paths_content_counts_and_drop_behave_alike_on_both_engines(
    store: VectorStore, server: ServerBackend
) -> None:
    """What folder sync needs from the store: name every path of a content on its points, count
    points per content (the consistency check), and drop a collection."""
    rng = np.random.default_rng(3)
    vectors = unit(rng, 3)
    await store.ensure_collection("sync", DIM)
    name = qdrant_name("sync")
    await server.ensure(name, DIM)
    for sha, texts in (("a" * 64, TEXTS[:2]), ("b" * 64, TEXTS[2:3])):
        rows = vectors[: len(texts)]
        await store.upsert_file("sync", sha256=sha, path=f"/d/{sha[0]}.txt", job_id="j", texts=texts, vectors=rows)
        ids = [point_id("sync", sha, i) for i in range(len(texts))]
        payloads = [
            {"path": f"/d/{sha[0]}.txt", "chunk_index": i, "text": t, "sha256": sha} for i, t in enumerate(texts)
        ]
        await server.upsert(name, ids, rows, payloads)
    assert await store.content_counts("sync") == await server.content_counts(name) == {"a" * 64: 2, "b" * 64: 1}

    await store.set_paths("sync", "a" * 64, ["/d/a.txt", "/e/copy.txt"])
    await server.set_paths(name, "a" * 64, ["/d/a.txt", "/e/copy.txt"])
    embedded = await store.search("sync", vectors[0], 3)
    plan = hybrid.plan_search(SearchMode.DENSE, vector=vectors[0].tolist(), query_text=None, k=3)
    found = await server.search(name, plan)
    for payloads in ([hit.payload for hit in embedded], [row["payload"] for row in found]):
        by_sha = {p["sha256"]: (p["path"], p.get("paths")) for p in payloads}
        assert by_sha == {"a" * 64: ("/d/a.txt", ["/d/a.txt", "/e/copy.txt"]), "b" * 64: ("/d/b.txt", None)}

    await store.drop("sync")
    await server.drop(name)
    assert await store.count("sync") == await server.count(name) == 0
    assert await store.content_counts("sync") == await server.content_counts(name) == {}


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning", "ignore:Local mode:UserWarning")
async def test_folder_type_and_time_filters_behave_alike_on_both_engines(store: VectorStore) -> None:
    """The search filters: ``dirs`` (every folder above every path of a content, kept by set_paths),
    ``file_type`` and an ``mtime`` range, on Edge and on the server path, through the same store code."""
    remote = VectorStore(url="http://qdrant.invalid:6333", api_key=None, path=Path("/nonexistent"))
    remote._server = ServerBackend(None, None, client=InMemoryQdrant())  # the stand-in for a server
    rng = np.random.default_rng(9)
    vectors = unit(rng, 3)
    files = [("a" * 64, "/docs/reports/q1.pdf", 1_600_000_000.0), ("b" * 64, "/docs/mail/x.eml", 1_700_000_000.0)]
    try:
        for target in (store, remote):
            await target.ensure_collection("f", DIM)
            for (sha, path, mtime), row in zip(files, vectors, strict=False):
                await target.upsert_file(
                    "f", sha256=sha, path=path, job_id="j", texts=[path], vectors=row[None, :], mtime=mtime,
                    locations=[{"page": 3, "heading": ["Results"]}],
                )  # fmt: skip
            await target.set_paths("f", "a" * 64, ["/docs/reports/q1.pdf", "/archive/2020/q1.pdf"])

        async def paths(target: VectorStore, **filters: Any) -> set[str]:
            hits = await target.search("f", vectors[2], 5, **filters)
            return {hit.payload["path"] for hit in hits}

        cases: list[tuple[dict[str, Any], set[str]]] = [
            ({}, {"/docs/reports/q1.pdf", "/docs/mail/x.eml"}),
            ({"where": {"dirs": ["/docs"]}}, {"/docs/reports/q1.pdf", "/docs/mail/x.eml"}),
            ({"where": {"dirs": ["/docs/mail"]}}, {"/docs/mail/x.eml"}),
            ({"where": {"dirs": ["/archive"]}}, {"/docs/reports/q1.pdf"}),  # found at its second path too
            ({"where": {"dirs": ["/docs/rep"]}}, set()),  # a folder, not a string prefix
            ({"where": {"file_type": ["eml"]}}, {"/docs/mail/x.eml"}),
            ({"ranges": {"mtime": (1_650_000_000.0, None)}}, {"/docs/mail/x.eml"}),
            ({"ranges": {"mtime": (None, 1_650_000_000.0)}}, {"/docs/reports/q1.pdf"}),
            ({"where": {"file_type": ["pdf"]}, "ranges": {"mtime": (1_650_000_000.0, None)}}, set()),
        ]
        for filters, expected in cases:
            assert await paths(store, **filters) == expected, filters
            assert await paths(remote, **filters) == expected, ("server", filters)
        hit = (await store.search("f", vectors[0], 1, where={"file_type": ["pdf"]}))[0]
        assert (hit.payload["page"], hit.payload["heading"], hit.payload["mtime"]) == (3, ["Results"], 1_600_000_000.0)
    finally:
        await remote.close()


def test_memory_freed_inside_the_engine_goes_back_to_the_system() -> None:
    """What the engine does after each index build: a build frees hundreds of MB of small blocks,
    which glibc keeps (counted in the process's RSS) until they are trimmed."""
    script = textwrap.dedent(
        """
        import ctypes
        from semantik.proc import anonymous_memory_mb, release_free_memory
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        blocks = [libc.malloc(4000) for _ in range(50_000)]  # 200 MB on the heap
        for block in blocks:
            ctypes.memset(block, 1, 4000)
        top = libc.malloc(4000)  # still in use, above them: free() alone hands nothing back
        ctypes.memset(top, 1, 4000)
        for block in blocks:
            libc.free(block)
        print(anonymous_memory_mb(), release_free_memory())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    before, after = map(int, out.stdout.split())
    assert before >= 190 and after <= before - 150, (before, after)


# -- memory limits ------------------------------------------------------------------------------


def test_the_memory_limit_is_the_lowest_of_the_cgroups_above_and_the_machine(tmp_path: Path) -> None:
    """``memory_limit_mb`` on the files the kernel shows (a tree laid out like /proc and /sys)."""
    from semantik.proc import memory_limit_mb

    def machine(ram_kb: int, cgroup: str) -> Path:
        root = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/meminfo").write_text(f"MemTotal:       {ram_kb} kB\nMemFree:        1000 kB\n")
        (root / "proc/self/cgroup").write_text(cgroup)
        return root

    def limit(path: Path, name: str, value: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(value + "\n")

    # cgroup v2: the service's group says "max", the slice above it 2.5 GB.
    v2 = machine(16 * 2**20, "0::/system.slice/semantik.service\n")
    limit(v2 / "sys/fs/cgroup/system.slice", "memory.max", str(2500 * 2**20))
    limit(v2 / "sys/fs/cgroup/system.slice/semantik.service", "memory.max", "max")
    assert memory_limit_mb(v2) == 2500
    # cgroup v1 (the memory controller's own line), unlimited: the machine's RAM.
    v1 = machine(8 * 2**20, "4:memory:/docker/abc\n1:cpu:/\n")
    limit(v1 / "sys/fs/cgroup/memory/docker/abc", "memory.limit_in_bytes", "9223372036854771712")
    assert memory_limit_mb(v1) == 8192
    limit(v1 / "sys/fs/cgroup/memory/docker/abc", "memory.limit_in_bytes", str(3 * 2**30))
    assert memory_limit_mb(v1) == 3072
    # Nothing readable: unknown.
    assert memory_limit_mb(tmp_path / "nowhere") is None


def test_the_memory_left_for_a_build_is_each_limit_less_what_its_processes_hold(tmp_path: Path) -> None:
    """``memory_available_mb`` (a merge of shards starts only within it) on the files the kernel
    shows: cached file pages count as free, anonymous memory does not, at each limited cgroup."""
    from semantik.proc import memory_available_mb

    def machine(cgroup: str, available_kb: int) -> Path:
        root = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/meminfo").write_text(
            f"MemTotal:       {16 * 2**20} kB\nMemFree:        1000 kB\nMemAvailable:   {available_kb} kB\n"
        )
        (root / "proc/self/cgroup").write_text(cgroup)
        return root

    def group(path: Path, limit_name: str, limit: str, stat: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / limit_name).write_text(limit + "\n")
        (path / "memory.stat").write_text(stat)

    mb = 2**20
    # cgroup v2: 2.5 GB on the slice, 900 MB anonymous in it (and 1.2 GB of cache, which is free).
    v2 = machine("0::/system.slice/semantik.service\n", 12 * 2**20)
    group(v2 / "sys/fs/cgroup/system.slice", "memory.max", str(2500 * mb), f"anon {900 * mb}\nfile {1200 * mb}\n")
    group(v2 / "sys/fs/cgroup/system.slice/semantik.service", "memory.max", "max", f"anon {900 * mb}\n")
    assert memory_available_mb(v2) == 1600
    # cgroup v1: its hierarchical anonymous memory (total_rss), not its own (rss).
    v1 = machine("4:memory:/docker/abc\n1:cpu:/\n", 12 * 2**20)
    group(
        v1 / "sys/fs/cgroup/memory/docker/abc",
        "memory.limit_in_bytes",
        str(3 * 2**30),
        f"cache {500 * mb}\nrss {100 * mb}\ntotal_cache {500 * mb}\ntotal_rss {1024 * mb}\n",
    )
    assert memory_available_mb(v1) == 2048
    # No limit: what the machine has available; and less of that than the cgroup leaves.
    group(v1 / "sys/fs/cgroup/memory/docker/abc", "memory.limit_in_bytes", "9223372036854771712", "total_rss 0\n")
    assert memory_available_mb(v1) == 12 * 1024
    tight = machine("0::/s\n", 700 * 1024)
    group(tight / "sys/fs/cgroup/s", "memory.max", str(2500 * mb), f"anon {900 * mb}\n")
    assert memory_available_mb(tight) == 700
    assert memory_available_mb(tmp_path / "nowhere") is None


def _memory_cgroup(limit_mb: int) -> Path | None:
    """A new memory cgroup of ``limit_mb`` under this process's (None where one cannot be made)."""
    from semantik.proc import memory_cgroup

    group = memory_cgroup()
    if group is None:
        return None
    _, base, name = group
    path = base / f"semantik-test-{os.getpid()}"
    try:
        path.mkdir()
        (path / name).write_text(str(limit_mb * 2**20))
    except OSError:
        with contextlib.suppress(OSError):
            path.rmdir()
        return None
    return path


def test_an_engine_in_a_tight_memory_limit_seals_smaller_shards(tmp_path: Path) -> None:
    """Under a 2 GB cgroup the engine seals (and so copies) shards at half the size: a build process
    copying a full shard beside the engine's unindexed points did not fit in 2.5 GB."""
    from semantik.proc import memory_limit_mb
    from semantik.store.collection import sealed_at
    from semantik.store.shard import MAX_SEGMENT_POINTS

    group = _memory_cgroup(2000)
    if group is None:
        pytest.skip("cannot make a memory cgroup here (needs root and a writable cgroup filesystem)")
    script = (
        "import json, sys; from pathlib import Path; from semantik.store.edge import EdgeEngine;"
        " logged = [];"
        " engine = EdgeEngine(Path(sys.argv[1]), log=lambda e, **f: logged.append([e, f]));"
        " engine.ensure('c', 8); print(json.dumps([logged, engine.collection('c').shard_points])); engine.close()"
    )
    try:

        def run(*, in_group: bool) -> Any:
            def enter() -> None:
                if in_group:
                    (group / "cgroup.procs").write_text(str(os.getpid()))

            out = subprocess.run(
                [sys.executable, "-c", script, str(tmp_path / ("tight" if in_group else "free"))],
                cwd=REPO,
                capture_output=True,
                check=True,
                preexec_fn=enter,
            ).stdout
            return json.loads(out.splitlines()[-1])

        logged, sealed = run(in_group=True)
        assert logged[0] == ["vector_engine_memory", {"limit_mb": 2000, "shard_points": MAX_SEGMENT_POINTS // 2}]
        assert sealed == MAX_SEGMENT_POINTS // 2
        logged, sealed = run(in_group=False)  # as much as this test may use
        assert logged[0] == ["vector_engine_memory", {"limit_mb": memory_limit_mb(), "shard_points": sealed}]
        assert sealed == sealed_at(memory_limit_mb())
    finally:
        group.rmdir()


def resident_bytes(path: Path) -> int:
    """How much of a file is in the page cache now (``mincore`` on a mapping that reads nothing)."""
    import ctypes

    size = path.stat().st_size
    if size == 0:
        return 0
    page = os.sysconf("SC_PAGE_SIZE")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        pages = (ctypes.c_ubyte * (-(-size // page)))()
        try:
            assert libc.mincore(address, size, pages) == 0, ctypes.get_errno()
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return min(size, sum(p & 1 for p in pages) * page)  # the last page counts as the file's tail


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux only")
def test_sealed_shards_logs_leave_memory_once_opened_and_still_take_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edge reads a shard's whole write-ahead log when it opens it; the engine hands the pages of
    the sealed shards' logs back (at 1M points they were 650 MB of a 2.5 GB limit, kept while
    searches' pages were evicted). The open shard's log, which every write goes to, stays; deletes
    and path changes on sealed shards still land and survive a reopen."""
    from semantik.store import collection, edge

    monkeypatch.setattr(collection, "MAX_SEGMENT_POINTS", 100)
    monkeypatch.setattr(collection, "LIMITED_MEMORY_MB", 0)
    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 10**6)
    rng = np.random.default_rng(5)
    n = 450
    vectors = unit(rng, n)
    root = tmp_path / "vectors"
    engine = edge.EdgeEngine(root)
    try:
        engine.ensure("c", DIM)
        for start in range(0, n, 50):
            rows = range(start, start + 50)
            engine.upsert(
                "c",
                [point_id("c", f"{i:064x}", 0) for i in rows],
                vectors[start : start + 50],
                [{"text": f"note {i}", "path": f"/d/{i}", "sha256": f"{i:064x}"} for i in rows],
            )
        assert engine.stats("c")["shards"] == 5
    finally:
        engine.close()

    def logs() -> list[list[Path]]:
        names = collection.shard_names(root, "c")
        assert names is not None and len(names) == 5
        return [sorted((collection.shard_dir(root, "c", name) / "wal").iterdir()) for name in names]

    engine = edge.EdgeEngine(root)
    try:
        assert engine.count("c") == n  # opens the collection
        *sealed, open_log = logs()
        assert sum(resident_bytes(f) for f in open_log) > 0  # read when the shard opened, and kept
        assert [sum(resident_bytes(f) for f in files) for files in sealed] == [0] * 4
        # Changes to sealed shards go to their logs as before.
        engine.delete("c", "sha256", [f"{i:064x}" for i in range(0, 100, 2)])
        engine.set_paths("c", f"{101:064x}", ["/moved/101"])
    finally:
        engine.close()

    engine = edge.EdgeEngine(root)
    try:
        counts = engine.content_counts("c")
        assert len(counts) == n - 50 and not {f"{i:064x}" for i in range(0, 100, 2)} & set(counts)
        assert top_hit(engine, vectors[101])["payload"]["path"] == "/moved/101"
    finally:
        engine.close()


def test_what_searches_read_is_read_ahead_again_after_each_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build's memory can push the pages of other shards' vectors and graphs out of the cache (at
    1M points in a 2.5 GB limit the first searches after a load took 73 page faults each); after
    each swap the engine has the kernel read every built shard's vectors, graph links and payload
    tracker back, so searches do not fault them in one page at a time."""
    from semantik.proc import drop_cached_pages
    from semantik.store import collection, edge, shard

    monkeypatch.setattr(collection, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(shard, "INDEX_AFTER_POINTS", 100)
    monkeypatch.setattr(collection, "MERGE_RATIO", 0)  # each sealed shard built alone ...
    monkeypatch.setattr(edge, "MERGE_IDLE_S", None)  # ... and not merged later
    monkeypatch.setattr(edge, "OPTIMIZE_IDLE_S", 0.2)
    vectors = unit(np.random.default_rng(9), 400, 64)
    ids = [point_id("c", f"{i:064x}", 0) for i in range(400)]
    payloads = [{"text": f"chunk {i}", "path": f"/d/{i}", "sha256": f"{i:064x}"} for i in range(400)]

    def resident(files: list[Path]) -> float:
        return sum(resident_bytes(f) for f in files) / sum(f.stat().st_size for f in files)

    engine = edge.EdgeEngine(tmp_path / "vectors")
    try:
        engine.ensure("c", 64)
        engine.upsert("c", ids[:200], vectors[:200], payloads[:200])
        settle(engine)
        found = engine.collection("c")
        assert found is not None and found.stats()["indexed_vectors"] >= 200
        first = found.members[0].shard
        files = first.searched_files()
        assert {f.parent.name + "/" + f.name for f in files} >= set(shard.SEARCHED_FILES)
        for directory in {f.parent for f in files}:
            drop_cached_pages(directory)
        if resident(files) > 0.1:
            pytest.skip("this kernel keeps the pages (no MADV_PAGEOUT)")

        engine.upsert("c", ids[200:], vectors[200:], payloads[200:])
        settle(engine)  # the next shard is built and swapped in
        assert len([m for m in found.members if m.shard.searched_files()]) >= 2
        deadline = time.monotonic() + 10
        while resident(files) < 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert resident(files) == 1.0
        assert top_hit(engine, vectors[7])["id"] == ids[7]
    finally:
        engine.close()
