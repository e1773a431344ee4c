"""What a search asks of a vector engine, whichever engine runs it: the embedded Qdrant Edge shard
or a Qdrant server. Both executors send the same candidate requests (a dense nearest-neighbour list,
a BM25 keyword list, and for identifier-like queries the keyword list of the identifier alone) in one
batch, and both fuse the lists here with reciprocal rank fusion, so a hit knows which retrievers
found it and ties are broken the same way everywhere.

RRF is Qdrant's own formula: a document at 0-based rank ``r`` in a list adds ``1 / (k + r)``. Plain
RRF ignores how decisively a list ranks a document, and that matters for exact identifiers: in
near-identical notes that differ only in an error code, the note holding the code is rank 0 on the
keyword side while the dense side barely tells the notes apart, and a note the dense side happens
to put first (plus a middling keyword rank) outscores it. So a query term that looks like an
identifier (``E4521``, ``ERR-451-B``, ``0x8007000E``, ``disk_quota_42``, ``getUserName``) adds a
third list: the keyword candidates that contain every token of it, in keyword order. Ties left after
that go to documents both retrievers found, then to the keyword side (the dense side returns its
full quota for any query; a keyword hit at least shares a term with it), then to the better rank.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import Any

from qdrant_edge import Bm25, Bm25Config

# Vector names, the same in an Edge shard and in a server collection.
DENSE_VECTOR = "dense"
SPARSE_VECTOR = "bm25"

# BM25 settings shared by documents and queries, shards and servers. A change here changes every
# sparse vector: stores remember it (BM25_SIGNATURE) and refuse to mix two.
BM25_LANGUAGE = "english"
BM25_K = 1.2
BM25_B = 0.75
BM25_AVG_LEN = 256.0
BM25_SIGNATURE = f"bm25:{BM25_LANGUAGE}:k={BM25_K}:b={BM25_B}:avg_len={BM25_AVG_LEN}:word"

# Keyword-indexed payload fields: what searches filter by and deletes select by. ``dirs``: every
# folder above each of a content's paths, so "under this folder" is one exact match.
INDEXED_FIELDS = ("path", "sha256", "job_id", "file_type", "dirs")
# Float-indexed payload fields, filtered by range: ``mtime``, the file's modification time (seconds
# since the epoch) when its content was indexed.
RANGE_FIELDS = ("mtime",)

# Each list of a hybrid search holds this many candidates (at least k).
DEFAULT_CANDIDATES = 50


class SearchMode(StrEnum):
    HYBRID = "hybrid"
    DENSE = "dense"
    KEYWORD = "keyword"


class Retriever(StrEnum):
    DENSE = "dense"
    KEYWORD = "keyword"
    # Internal: keyword candidates holding every token of an identifier-like query term.
    IDENTIFIER = "identifier"


@cache
def bm25() -> Bm25:
    return Bm25(Bm25Config(k=BM25_K, b=BM25_B, avg_len=BM25_AVG_LEN, language=BM25_LANGUAGE))


@dataclass(frozen=True)
class Sparse:
    indices: list[int]
    values: list[float]


def document_sparse(text: str) -> Sparse:
    vector = bm25().embed_document(text)
    return Sparse(list(vector.indices), list(vector.values))


def query_sparse(text: str) -> Sparse:
    vector = bm25().embed_query(text)
    return Sparse(list(vector.indices), list(vector.values))


# A term is identifier-like when it mixes letters and digits (E4521, ERR-451-B, 0x8007000E, IGF-1),
# is a number of 4+ digits, joins parts with _ . / : (disk_quota, v2.3.1, /etc/hosts), or has a
# capital after a lower-case letter (getUserName). Hyphenated words (plant-based, X-Rays) are not.
_TERM = re.compile(r"[^\s\"'`,;()\[\]{}<>?!]+")
_MIXED = re.compile(r"(?=.*[A-Za-z])(?=.*\d)")
_DIGITS = re.compile(r"^\d{4,}$")
_JOINED = re.compile(r"[A-Za-z0-9][_./:][A-Za-z0-9]")
_INNER_CAPITAL = re.compile(r"[a-z][A-Z]")


def identifier_terms(query_text: str) -> list[str]:
    """The query's identifier-like terms (trailing punctuation stripped), in order."""
    terms: list[str] = []
    for raw in _TERM.findall(query_text):
        term = raw.strip(".:-_/")
        if len(term) < 3:
            continue
        if _MIXED.match(term) or _DIGITS.search(term) or _JOINED.search(term) or _INNER_CAPITAL.search(term):
            terms.append(term)
    return terms


@dataclass(frozen=True)
class CandidateList:
    """One nearest-neighbour request: ``dense`` or ``sparse`` query on its named vector."""

    retriever: Retriever
    limit: int
    dense: list[float] | None = None
    sparse: Sparse | None = None
    # Return each candidate's sparse vector (to see which hold an identifier's tokens).
    with_sparse: bool = False

    @property
    def using(self) -> str:
        return DENSE_VECTOR if self.dense is not None else SPARSE_VECTOR


@dataclass(frozen=True)
class SearchPlan:
    """Everything an executor needs: the candidate lists, how many hits, the payload filter
    (field -> accepted values, every field must match), and how to fuse."""

    mode: SearchMode
    k: int
    lists: list[CandidateList]
    where: Mapping[str, Sequence[str]] = field(default_factory=dict)
    rrf_k: int = 60
    # Token sets of the identifier-like query terms (a candidate must hold all tokens of one).
    identifiers: list[frozenset[int]] = field(default_factory=list)
    # Range field -> (at least, at most); None is open.
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @property
    def fused(self) -> bool:
        return len(self.lists) > 1


def plan_search(
    mode: SearchMode,
    *,
    vector: Sequence[float] | None,
    query_text: str | None,
    k: int,
    where: Mapping[str, Sequence[str]] | None = None,
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    rrf_k: int = 60,
    candidates: int = DEFAULT_CANDIDATES,
) -> SearchPlan:
    mode = SearchMode(mode)
    unknown = (set(where or {}) - set(INDEXED_FIELDS)) | (set(ranges or {}) - set(RANGE_FIELDS))
    if unknown:
        raise ValueError(f"cannot filter by {sorted(unknown)}; indexed fields: {[*INDEXED_FIELDS, *RANGE_FIELDS]}")
    if mode in (SearchMode.DENSE, SearchMode.HYBRID) and vector is None:
        raise ValueError(f"a {mode} search needs the query vector")
    if mode in (SearchMode.KEYWORD, SearchMode.HYBRID) and not (query_text or "").strip():
        raise ValueError(f"a {mode} search needs the query text")
    limit = max(k, candidates) if mode is SearchMode.HYBRID else k
    lists: list[CandidateList] = []
    identifiers: list[frozenset[int]] = []
    if mode is not SearchMode.KEYWORD:
        assert vector is not None
        lists.append(CandidateList(Retriever.DENSE, limit, dense=[float(x) for x in vector]))
    if mode is not SearchMode.DENSE:
        assert query_text is not None
        if mode is SearchMode.HYBRID:
            identifiers = [frozenset(query_sparse(term).indices) for term in identifier_terms(query_text)]
            identifiers = [tokens for tokens in identifiers if tokens]
        lists.append(
            CandidateList(Retriever.KEYWORD, limit, sparse=query_sparse(query_text), with_sparse=bool(identifiers))
        )
    return SearchPlan(mode, k, lists, dict(where or {}), rrf_k, identifiers, dict(ranges or {}))


@dataclass(frozen=True)
class Candidate:
    id: str
    score: float
    sparse_indices: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Fused:
    id: str
    score: float
    # Retriever -> 0-based rank in its list.
    ranks: dict[str, int]


_TIE_ORDER = {Retriever.KEYWORD: 0, Retriever.DENSE: 1}


def fuse(plan: SearchPlan, results: Sequence[Sequence[Candidate]]) -> list[Fused]:
    """The plan's lists (``results[i]`` answers ``plan.lists[i]``) as one ranking of at most k.

    One list: its own order and scores. Several: RRF, with the identifier list and tie-breaks
    described in the module docstring."""
    if len(results) != len(plan.lists):
        raise ValueError("one result list per candidate list")
    if not plan.fused:
        only = plan.lists[0].retriever
        return [Fused(c.id, c.score, {only: rank}) for rank, c in enumerate(results[0][: plan.k])]
    ranks: dict[str, dict[str, int]] = {}
    for spec, found in zip(plan.lists, results, strict=True):
        for rank, candidate in enumerate(found):
            ranks.setdefault(candidate.id, {}).setdefault(spec.retriever, rank)
        if spec.retriever is Retriever.KEYWORD and plan.identifiers:
            exact = [c for c in found if any(tokens <= c.sparse_indices for tokens in plan.identifiers)]
            for rank, candidate in enumerate(exact):
                ranks[candidate.id][Retriever.IDENTIFIER] = rank
    scored = [
        Fused(point_id, sum(1.0 / (plan.rrf_k + rank) for rank in found.values()), found)
        for point_id, found in ranks.items()
    ]

    def order(hit: Fused) -> tuple[Any, ...]:
        retrievers = [r for r in hit.ranks if r in _TIE_ORDER]
        best = min(retrievers, key=lambda r: (hit.ranks[r], _TIE_ORDER[Retriever(r)]))
        return (-hit.score, -len(retrievers), _TIE_ORDER[Retriever(best)], hit.ranks[best], hit.id)

    scored.sort(key=order)
    return scored[: plan.k]


def retrievers_of(ranks: Mapping[str, int]) -> tuple[str, ...]:
    """The retrievers (dense, keyword) that found a hit, in a fixed order."""
    return tuple(r.value for r in (Retriever.DENSE, Retriever.KEYWORD) if r in ranks)


def path_fields(paths: Sequence[str], mtime: float | None = None) -> dict[str, Any]:
    """The payload fields that say where a content is: ``path`` (the first), ``paths`` (all),
    ``dirs`` (every folder above them) and, when known, ``mtime`` (its newest file's)."""
    fields: dict[str, Any] = {"path": paths[0], "paths": list(paths), "dirs": folders_of(paths)}
    if mtime is not None:
        fields["mtime"] = mtime
    return fields


def folders_of(paths: Sequence[str]) -> list[str]:
    """Every folder above each path ("/a/b/c.txt" -> "/a/b", "/a", "/"), each once: the payload's
    ``dirs``, which a path-prefix filter matches exactly."""
    found: dict[str, None] = {}
    for path in paths:
        parts = path.split("/")
        for end in range(len(parts) - 1, 0, -1):
            found["/".join(parts[:end]) or "/"] = None
    return list(found)


def file_type(path: str) -> str:
    """The payload's ``file_type``: the file name's suffix without the dot, lower case ("" for none)."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    return suffix.lower() if dot and stem else ""


def searchable(plan: SearchPlan) -> list[int]:
    """Indexes of the plan's lists worth sending: a keyword query of stop words only matches nothing."""
    return [i for i, spec in enumerate(plan.lists) if spec.sparse is None or spec.sparse.indices]


def collect(plan: SearchPlan, answers: Sequence[Sequence[Any]], sparse_of: Any) -> list[list[Candidate]]:
    """Scored points (anything with ``id`` and ``score``; Edge's or qdrant-client's) as candidates;
    ``sparse_of(point)`` gives the token ids of a point asked with its sparse vector."""
    return [
        [Candidate(str(p.id), float(p.score), sparse_of(p) if spec.with_sparse else frozenset()) for p in answer]
        for spec, answer in zip(plan.lists, answers, strict=True)
    ]


def rows(fused: Sequence[Fused], payloads: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The engine's answer: one row per hit whose payload was found (a point deleted between the
    candidate lists and the payload read is left out)."""
    return [
        {
            "id": h.id,
            "score": h.score,
            "ranks": {str(r): n for r, n in h.ranks.items()},
            "payload": dict(payloads[h.id] or {}),
        }
        for h in fused
        if h.id in payloads
    ]
