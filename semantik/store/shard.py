"""One Qdrant Edge shard: how it is configured, how points are made, and the calls the engine makes on it.

Used inside the engine process (``collection.py`` holds a collection's shards, ``engine.py`` runs
them) and in an index build process (``builder.py``). Edge has no background optimizer: points
land in a plain (brute force) appendable segment and ``optimize`` turns waiting points into
HNSW-indexed segments when the collection decides (see ``Collection.maintain``). Dense vectors are
stored as float16 in memory (float32 in shards made before; a shard keeps the type it was made with,
and a build's copy takes this one); payloads and the built BM25 index stay on disk (mmapped, cold:
paged in as searches touch them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_edge import (
    AcornSearchParams,
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FacetRequest,
    FieldCondition,
    Filter,
    HnswIndexConfig,
    KeywordIndexParams,
    MatchAny,
    Memory,
    Modifier,
    PayloadSchemaType,
    Point,
    Query,
    QueryBatchRequest,
    QueryRequest,
    RangeFloat,
    ScrollRequest,
    SearchParams,
    SparseVector,
    UpdateOperation,
    VectorStorageDatatype,
)

from semantik.proc import drop_cached_pages
from semantik.store import hybrid
from semantik.store.hybrid import DENSE_VECTOR, INDEXED_FIELDS, RANGE_FIELDS, SPARSE_VECTOR, SearchPlan

UPDATE_BATCH = 512
# What every dense search reads in each built segment: the dense vectors, the HNSW graph's links, and
# the payload storage's tracker (where each hit's payload lies). Memory-mapped files, read a page at
# a time as searches touch them (Qdrant advises random access), so a shard just opened or swapped in
# answers its first searches with page faults (``Collection`` asks the kernel to read them ahead).
SEARCHED_FILES = (
    "vector_storage-dense/matrix.dat",
    "vector_index-dense/links_compressed.bin",
    "payload_storage/tracker.dat",
)
# Points land in a plain segment; HNSW is built for them once this many wait (when idle, see edge.py) ...
INDEX_AFTER_POINTS = 20_000
# Segments stay below this many points, so one optimize never rebuilds the whole index.
MAX_SEGMENT_POINTS = 200_000
SEGMENTS = 8
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
# No extra HNSW graphs per payload value (Qdrant's ``payload_m``). By default Qdrant builds one for
# every value of every indexed field that holds more than FULL_SCAN_POINTS points: on a drive that
# is a graph for each big folder in ``dirs`` (the root holds every point), each file type and each
# job, so a build did the work several times over (100k points: 72 s against 23 s without them,
# docs/benchmarks.md, session 10), and the engine answers nothing while it builds. Filtered searches
# use ACORN instead (below), which keeps their recall on the one graph.
HNSW_PAYLOAD_M = 0
# A filter matching fewer points than this is answered from the payload index by exact search.
FULL_SCAN_POINTS = 10_000
# Search-time beam in each shard: HNSW_EF_TOTAL shared among the collection's shards, within
# [HNSW_EF_MIN, HNSW_EF], and at least the number of candidates asked for. Each shard only has to find
# its share of the top hits, so many shards need a narrower beam each: at 1M points in 11 shards
# inside a 2.5 GB limit, 64 against 128 gave dense p50 / p99 8.9 / 30.0 ms against 12.7 / 17.2, hybrid
# p50 13.0 against 16.4, recall@10 1.0 either way (pdf filter 0.9965 against 1.0). One shard of 100k
# keeps 128: with 64 its recall@10 fell from 0.998 to 0.988 (docs/benchmarks.md, session 12). The same
# 11 shards searched in the engine's process (Zen 4, session 15): beam 64 / 48 / 32 gave dense p50 8.5
# / 6.6 / 5.3 ms, recall@10 0.9993 / 0.9988 / 0.9953, under the pdf filter 0.9975 / 0.9947 / 0.9883;
# so the floor is 32, and 11 shards get 47.
HNSW_EF = 128
HNSW_EF_MIN = 32
HNSW_EF_TOTAL = 512


def search_beam(shards: int, limit: int) -> int:
    """The HNSW beam (``ef``) for each of ``shards`` shards asked for ``limit`` candidates."""
    return max(limit, HNSW_EF_MIN, min(HNSW_EF, -(-HNSW_EF_TOTAL // max(1, shards))))


# Filtered searches on the graph also visit neighbours' neighbours where the filter drops a direct
# one (ACORN). Qdrant uses it for a filter matching at most 40% of the points (its default bound; above
# that most neighbours pass anyway): without it, and without per-value graphs, recall@10 under a 12.5%
# filter fell to 0.15; with it, 0.999. It costs time: at 1M points 34 ms against 6 ms unfiltered.
ACORN = AcornSearchParams(enable=True)


class EngineError(Exception):
    """An error the engine process reports to its client with a code (see ``engine.py``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Dense vectors stored as float16: half the memory of float32, and searches at least as fast (less to
# read). Measured at 100k points on Zen 5 against float32 in one session: dense p50 / p99 1.21 / 1.64
# ms against 1.87 / 2.91, an index build 20.4 s against 25.0 s, recall@10 0.998 against 1.0
# (docs/benchmarks.md, session 12). Vectors are unit length, so float16's range loses nothing.
DENSE_DATATYPE = VectorStorageDatatype.Float16
# What a shard's edge_config.json says (no key: float32, Qdrant's default), and bytes per value.
DATATYPES = {"float32": VectorStorageDatatype.Float32, "float16": VectorStorageDatatype.Float16}
VALUE_BYTES = {VectorStorageDatatype.Float32: 4, VectorStorageDatatype.Float16: 2}


def kb(points: int, dim: int, datatype: VectorStorageDatatype) -> int:
    """Qdrant sizes segments in KB of dense vectors as stored (float16 takes half)."""
    return max(1, points * dim * VALUE_BYTES[datatype] // 1024)


def stored_datatype(config: Mapping[str, Any]) -> VectorStorageDatatype:
    """The dense vectors' type a shard was made with (its ``edge_config.json``): Edge refuses to
    open a shard with another."""
    name = config["vectors"][DENSE_VECTOR].get("datatype") or "float32"
    if name not in DATATYPES:
        raise EngineError(
            "vector_store_incompatible", f"dense vectors stored as {name!r}, which this version cannot read"
        )
    return DATATYPES[name]


def shard_config(dim: int, index_after: int | None = None, datatype: VectorStorageDatatype | None = None) -> EdgeConfig:
    """The shard's configuration; ``index_after``: points a segment needs to be indexed
    (``INDEX_AFTER_POINTS`` unless given); ``datatype``: the dense vectors' type (``DENSE_DATATYPE``
    unless given)."""
    datatype = DENSE_DATATYPE if datatype is None else datatype
    return EdgeConfig(
        vectors={DENSE_VECTOR: EdgeVectorParams(size=dim, distance=Distance.Cosine, datatype=datatype)},
        # The BM25 index on disk (mmapped), not in the engine's heap: 185 MB less anonymous memory
        # per 300k points, searches as fast (docs/benchmarks.md, session 9).
        sparse_vectors={SPARSE_VECTOR: EdgeSparseVectorParams(modifier=Modifier.Idf, memory=Memory.Cold)},
        payload_memory=Memory.Cold,
        hnsw_config=HnswIndexConfig(
            m=HNSW_M,
            ef_construct=HNSW_EF_CONSTRUCT,
            full_scan_threshold=kb(FULL_SCAN_POINTS, dim, datatype),
            payload_m=HNSW_PAYLOAD_M,
        ),
        optimizers=EdgeOptimizersConfig(
            indexing_threshold=kb(INDEX_AFTER_POINTS if index_after is None else index_after, dim, datatype),
            max_segment_size=kb(MAX_SEGMENT_POINTS, dim, datatype),
            default_segment_number=SEGMENTS,
        ),
    )


def where_filter(
    where: Mapping[str, Sequence[str]], ranges: Mapping[str, tuple[float | None, float | None]] | None = None
) -> Filter | None:
    conditions: list[Any] = [FieldCondition(key=key, match=MatchAny(list(values))) for key, values in where.items()]
    conditions += [
        FieldCondition(key=key, range=RangeFloat(gte=low, lte=high)) for key, (low, high) in (ranges or {}).items()
    ]
    return Filter(must=conditions) if conditions else None


# Keyword indexes kept on disk (mmapped, cold): ``sha256``, which deletes and path changes select one
# content by (a lookup reads a few pages either way), and ``path`` and ``job_id``, which only an
# explicit ``where`` of the API filters by (the web UI filters by neither). The fields searches
# filter by (``file_type``, ``dirs``) stay in memory: on disk, a search filtered to the pdfs ran 25%
# slower. Loaded in memory, the three took half the time Edge needs to open a built shard, which
# holds the engine at every swap and at start (100k points on Zen 3: 0.50 s, 0.24 s with them on
# disk; closing it 0.10 and 0.035 s; 29 MB less anonymous memory; docs/benchmarks.md, session 24).
# (The on-disk index still counts deleted points in its estimate of how many a value selects, so a
# filter on a value most of whose points were deleted may walk the graph where an exact scan would
# do; its facet lists such a value at 0, see ``content_counts``.) A shard made before keeps the
# indexes it has, and so does a copy of its files (``builder.py``); a merge makes a new shard.
COLD_INDEXED_FIELDS = ("path", "sha256", "job_id")


def ensure_indexes(edge: EdgeShard) -> None:
    """The payload indexes searches filter by (keyword and float), created where missing; those of
    ``COLD_INDEXED_FIELDS`` on disk."""
    have = set(edge.info().payload_schema)
    wanted: list[tuple[str, Any]] = [
        (name, KeywordIndexParams(memory=Memory.Cold) if name in COLD_INDEXED_FIELDS else PayloadSchemaType.Keyword)
        for name in INDEXED_FIELDS
    ]
    wanted += [(name, PayloadSchemaType.Float) for name in RANGE_FIELDS]
    missing = [(name, kind) for name, kind in wanted if name not in have]
    for name, kind in missing:
        edge.update(UpdateOperation.create_field_index(name, kind))
    if missing:
        edge.flush()


def search_requests(plan: SearchPlan, *, with_payload: bool, shards: int = 1) -> list[QueryRequest]:
    """The plan's candidate lists worth sending (``hybrid.searchable``), as Edge requests to each of
    ``shards`` shards; ``with_payload``: each candidate's payload comes with it (else they are read
    for the hits)."""
    flt = where_filter(plan.where, plan.ranges)
    requests = []
    for i in hybrid.searchable(plan):
        spec = plan.lists[i]
        if spec.dense is not None:
            query = Query.Nearest(spec.dense, using=DENSE_VECTOR)
        else:
            assert spec.sparse is not None
            query = Query.Nearest(SparseVector(spec.sparse.indices, spec.sparse.values), using=SPARSE_VECTOR)
        requests.append(
            QueryRequest(
                limit=spec.limit,
                query=query,
                filter=flt,
                params=SearchParams(hnsw_ef=search_beam(shards, spec.limit), acorn=ACORN if flt is not None else None),
                with_payload=with_payload,
                with_vector=[SPARSE_VECTOR] if spec.with_sparse else False,
            )
        )
    return requests


def make_points(
    ids: Sequence[str],
    vectors: npt.NDArray[np.float32],
    payloads: Sequence[dict[str, Any]],
    sparse: Sequence[hybrid.Sparse] | None = None,
) -> list[Point]:
    """Edge points; the BM25 vectors are computed from the payloads' text unless given (the store's
    clients compute them, so the one engine process does not)."""
    if sparse is None:
        sparse = [hybrid.document_sparse(str(payload.get("text", ""))) for payload in payloads]
    points = []
    for point_id, vector, payload, terms in zip(ids, vectors, payloads, sparse, strict=True):
        named: dict[str, Any] = {DENSE_VECTOR: vector.tolist()}
        if terms.indices:
            named[SPARSE_VECTOR] = SparseVector(terms.indices, terms.values)
        points.append(Point(point_id, named, payload))
    return points


@dataclass(frozen=True)
class Exported:
    """A page of points read back from a shard (``Shard.export``), to be written into another."""

    ids: list[str]
    vectors: npt.NDArray[np.float32]
    payloads: list[dict[str, Any]]
    sparse: list[hybrid.Sparse]


NO_TERMS = hybrid.Sparse([], [])


class Shard:
    """One open Edge shard and what the engine knows about its indexing."""

    def __init__(self, path: Path, edge: EdgeShard, dim: int, datatype: VectorStorageDatatype) -> None:
        self.path, self.edge, self.dim, self.datatype = path, edge, dim, datatype
        self.points = 0  # an upper bound between counts: re-upserted points count twice
        self.waiting = 0  # dense vectors not in an HNSW index yet (sparse ones are indexed as they come)
        self._recount()
        self.dirty = False

    @classmethod
    def create(cls, path: Path, dim: int, *, index_after: int | None = None) -> Shard:
        edge = EdgeShard.create(str(path), shard_config(dim, index_after))
        ensure_indexes(edge)
        return cls(path, edge, dim, DENSE_DATATYPE)

    @classmethod
    def load(cls, path: Path, *, index_after: int | None = None) -> Shard:
        config = json.loads((path / "edge_config.json").read_text())
        dim = int(config["vectors"][DENSE_VECTOR]["size"])
        # This version's tuning (index thresholds, segment sizes) replaces what the shard was made
        # with; the vectors' type stays.
        datatype = stored_datatype(config)
        edge = EdgeShard.load(str(path), shard_config(dim, index_after, datatype))
        ensure_indexes(edge)  # a shard made by an earlier version lacks the newer ones
        return cls(path, edge, dim, datatype)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        payloads: Sequence[dict[str, Any]],
        sparse: Sequence[hybrid.Sparse] | None = None,
    ) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise EngineError("bad_request", f"vectors of shape {vectors.shape} for a {self.dim}-dimension collection")
        if sparse is not None and len(sparse) != len(ids):
            raise EngineError("bad_request", f"{len(sparse)} keyword vectors for {len(ids)} points")
        for start in range(0, len(ids), UPDATE_BATCH):
            end = start + UPDATE_BATCH
            points = make_points(
                ids[start:end], vectors[start:end], payloads[start:end], None if sparse is None else sparse[start:end]
            )
            self.edge.update(UpdateOperation.upsert_points(points))
        self.waiting += len(ids)
        self.points += len(ids)
        self.dirty = True

    def present(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` this shard holds."""
        return [str(r.id) for r in self.edge.retrieve(list(ids), with_payload=False, with_vector=False)]

    def delete_ids(self, ids: Sequence[str]) -> None:
        self.edge.update(UpdateOperation.delete_points(list(ids)))
        self.dirty = True

    def delete(self, field: str, values: Sequence[str]) -> None:
        self.edge.update(
            UpdateOperation.delete_points_by_filter(
                Filter(must=[FieldCondition(key=field, match=MatchAny(list(values)))])
            )
        )
        self.dirty = True

    def count(self) -> int:
        return int(self.edge.count(CountRequest(exact=True)))

    def set_paths(self, sha256: str, paths: Sequence[str], mtime: float | None = None) -> None:
        """Every point of one content names the paths it is found at (``hybrid.path_fields``)."""
        self.edge.update(
            UpdateOperation.set_payload_by_filter(
                Filter(must=[FieldCondition(key="sha256", match=MatchAny([sha256]))]),
                hybrid.path_fields(paths, mtime),
            )
        )
        self.dirty = True

    def content_counts(self) -> dict[str, int]:
        """Points per content (sha256), exactly; a content with none left is not named (the index on
        disk still lists a value whose points were all deleted, with a count of 0)."""
        limit = max(self.count(), 1)
        answer = self.edge.facet(FacetRequest(key="sha256", limit=limit, exact=True))
        return {str(hit.value): int(hit.count) for hit in answer.hits if hit.count > 0}

    def query(self, requests: Sequence[QueryRequest]) -> list[list[Any]]:
        """Edge's answers to a batch of candidate requests (``search_requests``)."""
        return [list(answer) for answer in self.edge.query_batch(QueryBatchRequest(list(requests)))] if requests else []

    def payloads(self, ids: Sequence[str]) -> dict[str, Any]:
        if not ids:
            return {}
        return {str(r.id): r.payload for r in self.edge.retrieve(list(ids), with_payload=True, with_vector=False)}

    def export(self, offset: Any, limit: int) -> tuple[Exported | None, Any]:
        """One page of points, everything a copy needs (dense and BM25 vectors, payloads), and the
        offset of the next page (None after the last)."""
        records, offset = self.edge.scroll(
            ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=True)
        )
        if not records:
            return None, offset
        ids, dense, sparse, payloads = [], [], [], []
        for record in records:
            vectors: Any = record.vector or {}
            terms = vectors.get(SPARSE_VECTOR)
            ids.append(str(record.id))
            dense.append(vectors[DENSE_VECTOR])
            sparse.append(hybrid.Sparse(list(terms.indices), list(terms.values)) if terms is not None else NO_TERMS)
            payloads.append(dict(record.payload or {}))
        return Exported(ids, np.asarray(dense, dtype=np.float32), payloads, sparse), offset

    def _recount(self) -> None:
        info = self.edge.info()
        self.points = info.points_count
        self.waiting = max(0, 2 * info.points_count - info.indexed_vectors_count)

    def optimize(self) -> bool:
        changed = bool(self.edge.optimize())
        self._recount()
        return changed

    def flush(self) -> None:
        self.edge.flush()
        self.dirty = False

    def searched_files(self) -> list[Path]:
        """The files of ``SEARCHED_FILES`` this shard's segments have."""
        try:
            segments = [d for d in (self.path / "segments").iterdir() if d.is_dir() and not d.is_symlink()]
        except OSError:
            return []
        return [d / name for d in segments for name in SEARCHED_FILES if (d / name).is_file()]

    def release_log(self) -> None:
        """Drop the pages of the shard's write-ahead log from memory (``proc.drop_cached_pages``): a
        sealed shard's log takes a change now and then, but Edge reads it whole when it opens the
        shard (up to 64 MB), and the kernel kept those pages cached while it evicted pages searches
        read again and again: at 1M points in a 2.5 GB limit, 650 MB of logs stayed in memory through
        3,000 searches (docs/benchmarks.md, session 16)."""
        drop_cached_pages(self.path / "wal")

    def close(self) -> None:
        self.edge.close()


def sparse_indices(point: Any) -> frozenset[int]:
    vector = point.vector
    if isinstance(vector, dict) and vector.get(SPARSE_VECTOR) is not None:
        return frozenset(vector[SPARSE_VECTOR].indices)
    return frozenset()
