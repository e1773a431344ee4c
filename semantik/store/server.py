"""Vectors on a Qdrant server (``SEMANTIK_QDRANT_URL``): the same collection layout and the same
search plan as the embedded engine (``hybrid.py``), sent with qdrant-client.

A collection ``semantik_<name>`` holds the named dense vector ``dense`` (cosine) and the sparse
vector ``bm25`` with the IDF modifier (the server computes IDF over the collection; the client
makes the BM25 term weights with the same qdrant_edge ``Bm25`` as the embedded engine), and keyword
payload indexes on the fields searches filter and deletes select by. The store creates all of it
on first use, so a fresh server (compose/) needs nothing created by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import AsyncQdrantClient, models

from semantik.errors import Unavailable
from semantik.store import hybrid
from semantik.store.hybrid import DENSE_VECTOR, INDEXED_FIELDS, RANGE_FIELDS, SPARSE_VECTOR, SearchPlan

UPSERT_BATCH = 256
HNSW_EF = 128


def collection_params(dim: int) -> dict[str, Any]:
    """``create_collection`` arguments for a collection of ``dim``-dimension dense vectors."""
    # Dense vectors as float16, as the embedded engine stores them (``shard.DENSE_DATATYPE``): half
    # the memory and disk of float32, recall@10 0.998 against 1.0 at 100k points (docs/benchmarks.md,
    # session 12). A collection made earlier keeps its float32 vectors: the store only creates
    # missing collections.
    dense = models.VectorParams(size=dim, distance=models.Distance.COSINE, datatype=models.Datatype.FLOAT16)
    return {
        "vectors_config": {DENSE_VECTOR: dense},
        "sparse_vectors_config": {SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        "on_disk_payload": True,
    }


def where_filter(where: dict[str, Sequence[str]] | Any, ranges: Any = None) -> models.Filter | None:
    conditions: list[Any] = [
        models.FieldCondition(key=key, match=models.MatchAny(any=list(values))) for key, values in where.items()
    ]
    conditions += [
        models.FieldCondition(key=key, range=models.Range(gte=low, lte=high))
        for key, (low, high) in (ranges or {}).items()
    ]
    return models.Filter(must=conditions) if conditions else None


def query_requests(plan: SearchPlan) -> list[models.QueryRequest]:
    """The plan's candidate lists as one batch (``query_batch_points``)."""
    flt = where_filter(plan.where, plan.ranges)
    requests = []
    for spec in plan.lists:
        query: Any
        if spec.dense is not None:
            query = spec.dense
        else:
            assert spec.sparse is not None
            query = models.SparseVector(indices=spec.sparse.indices, values=spec.sparse.values)
        requests.append(
            models.QueryRequest(
                query=query,
                using=spec.using,
                limit=spec.limit,
                filter=flt,
                params=models.SearchParams(hnsw_ef=max(HNSW_EF, spec.limit)),
                with_payload=not plan.fused,
                with_vector=[SPARSE_VECTOR] if spec.with_sparse else False,
            )
        )
    return requests


def points(
    ids: Sequence[str], vectors: npt.NDArray[np.float32], payloads: Sequence[dict[str, Any]]
) -> list[models.PointStruct]:
    structs = []
    for point_id, vector, payload in zip(ids, vectors, payloads, strict=True):
        named: dict[str, Any] = {DENSE_VECTOR: vector.tolist()}
        sparse = hybrid.document_sparse(str(payload.get("text", "")))
        if sparse.indices:
            named[SPARSE_VECTOR] = models.SparseVector(indices=sparse.indices, values=sparse.values)
        structs.append(models.PointStruct(id=point_id, vector=named, payload=payload))
    return structs


def _sparse_indices(point: models.ScoredPoint) -> frozenset[int]:
    vector = point.vector.get(SPARSE_VECTOR) if isinstance(point.vector, dict) else None
    return frozenset(vector.indices) if isinstance(vector, models.SparseVector) else frozenset()


def check_layout(name: str, info: models.CollectionInfo) -> None:
    vectors = info.config.params.vectors
    sparse = info.config.params.sparse_vectors or {}
    if not isinstance(vectors, dict) or DENSE_VECTOR not in vectors or SPARSE_VECTOR not in sparse:
        raise Unavailable(
            f"the Qdrant collection {name} was made by an older Semantik (one unnamed dense vector, no BM25"
            f" vector); this version needs the named vectors {DENSE_VECTOR!r} and {SPARSE_VECTOR!r}. Delete it on"
            " the server (DELETE /collections/" + name + ") and index the collection's folders again",
            code="vector_store_incompatible",
        )


class ServerBackend:
    def __init__(self, url: str | None, api_key: str | None, *, client: AsyncQdrantClient | None = None) -> None:
        """A backend on the server at ``url``, or on ``client`` (tests give qdrant-client's own
        in-memory mode, which runs the same requests)."""
        self.client = client if client is not None else AsyncQdrantClient(url=url, api_key=api_key, timeout=30)

    async def close(self) -> None:
        await self.client.close()

    async def exists(self, name: str) -> bool:
        return bool(await self.client.collection_exists(name))

    async def ensure(self, name: str, dim: int) -> None:
        if await self.client.collection_exists(name):
            info = await self.client.get_collection(name)
            check_layout(name, info)
            have = set(info.payload_schema or {})
        else:
            have = set()
            try:
                await self.client.create_collection(name, **collection_params(dim))
            except Exception:
                # Another worker may have created it between our check and create.
                if not await self.client.collection_exists(name):
                    raise
        wanted = [(field, models.PayloadSchemaType.KEYWORD) for field in INDEXED_FIELDS]
        wanted += [(field, models.PayloadSchemaType.FLOAT) for field in RANGE_FIELDS]
        for field, schema in wanted:
            if field not in have:  # a collection made by an earlier version lacks the newer ones
                await self.client.create_payload_index(name, field_name=field, field_schema=schema, wait=True)

    async def upsert(
        self, name: str, ids: Sequence[str], vectors: npt.NDArray[np.float32], payloads: Sequence[dict[str, Any]]
    ) -> None:
        for start in range(0, len(ids), UPSERT_BATCH):
            end = start + UPSERT_BATCH
            batch = await asyncio.to_thread(points, ids[start:end], vectors[start:end], payloads[start:end])
            await self.client.upsert(name, points=batch, wait=True)

    async def delete(self, name: str, field: str, values: Sequence[str]) -> None:
        match = models.FieldCondition(key=field, match=models.MatchAny(any=list(values)))
        selector = models.FilterSelector(filter=models.Filter(must=[match]))
        await self.client.delete(name, points_selector=selector, wait=True)

    async def search(self, name: str, plan: SearchPlan) -> list[dict[str, Any]]:
        requests = query_requests(plan)
        live = hybrid.searchable(plan)
        answers: list[list[models.ScoredPoint]] = [[] for _ in plan.lists]
        if live:
            responses = await self.client.query_batch_points(name, requests=[requests[i] for i in live])
            for i, response in zip(live, responses, strict=True):
                answers[i] = list(response.points)
        fused = hybrid.fuse(plan, hybrid.collect(plan, answers, _sparse_indices))
        if plan.fused and fused:
            found = await self.client.retrieve(name, [h.id for h in fused], with_payload=True)
            payloads = {str(r.id): r.payload for r in found}
        else:
            payloads = {str(p.id): p.payload for p in answers[0]}
        return hybrid.rows(fused, payloads)

    async def set_paths(self, name: str, sha256: str, paths: Sequence[str], mtime: float | None = None) -> None:
        match = models.FieldCondition(key="sha256", match=models.MatchAny(any=[sha256]))
        await self.client.set_payload(
            name,
            payload=hybrid.path_fields(paths, mtime),
            points=models.Filter(must=[match]),
            wait=True,
        )

    async def content_counts(self, name: str) -> dict[str, int]:
        if not await self.client.collection_exists(name):
            return {}
        limit = max(int((await self.client.count(name, exact=True)).count), 1)
        answer = await self.client.facet(name, key="sha256", limit=limit, exact=True)
        return {str(hit.value): int(hit.count) for hit in answer.hits if hit.count > 0}  # as the embedded one

    async def drop(self, name: str) -> None:
        if await self.client.collection_exists(name):
            await self.client.delete_collection(name)

    async def count(self, name: str) -> int:
        if not await self.client.collection_exists(name):
            return 0
        return int((await self.client.count(name, exact=True)).count)
