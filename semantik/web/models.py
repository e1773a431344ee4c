"""Request and response models of the REST API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from semantik.store.hybrid import SearchMode

COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_K = 100
# Matching a glob costs time that grows with the square of its length (`"[" * 10000` took 13 s per
# file): each pattern is bounded, and so is how many a job may have.
MAX_PATTERN_CHARS = 256
MAX_PATTERNS = 32
# No NUL: no path or file name can hold one (the OS refuses it).
NO_NUL = r"^[^\x00]*$"

Pattern = Annotated[str, Field(max_length=MAX_PATTERN_CHARS, pattern=NO_NUL)]
# The retrievers a hit can name (semantik.store.hybrid.retrievers_of).
RetrieverName = Literal["dense", "keyword"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class JobCreate(_Request):
    collection: str = Field(pattern=COLLECTION_NAME_PATTERN)
    directory: str = Field(min_length=1, max_length=4096)
    recursive: bool = True
    include: list[Pattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    exclude: list[Pattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    name: str | None = Field(default=None, max_length=200)


class CollectionCreate(_Request):
    name: str = Field(pattern=COLLECTION_NAME_PATTERN)


# A schedule shorter than this would keep a large collection syncing without pause.
MIN_SYNC_INTERVAL_S = 10


class CollectionUpdate(_Request):
    sync_interval_s: int | None = Field(
        le=366 * 86400,
        description="Sync every this many seconds (at least 10); 0: never; null: as SEMANTIK_SYNC_INTERVAL_S says",
    )

    @field_validator("sync_interval_s")
    @classmethod
    def _not_too_often(cls, value: int | None) -> int | None:
        if value is not None and (value < 0 or 0 < value < MIN_SYNC_INTERVAL_S):
            raise ValueError(f"sync_interval_s must be 0 (never) or at least {MIN_SYNC_INTERVAL_S} seconds")
        return value


class SourceCreate(_Request):
    directory: str = Field(min_length=1, max_length=4096)
    recursive: bool = True
    include: list[Pattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    exclude: list[Pattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    watch: bool = False


class SourceUpdate(_Request):
    watch: bool


class SearchRequest(_Request):
    query: str = Field(min_length=1, max_length=10_000)
    collection: str = Field(pattern=COLLECTION_NAME_PATTERN)
    k: int = Field(default=10, ge=1, le=MAX_K)
    # hybrid: BM25 keywords and the dense model fused with RRF (NFCorpus nDCG@10 0.3555, dense
    # alone 0.3145); keyword: exact terms only, the query is not embedded.
    mode: SearchMode = Field(
        default=SearchMode.HYBRID, description="hybrid (keywords + meaning, fused), dense (meaning) or keyword (BM25)"
    )


class SearchHit(BaseModel):
    score: float
    path: str
    # Every path this content is found at (copies of one file share their vectors).
    paths: list[str] = Field(default_factory=list)
    chunk_index: int
    text: str
    job_id: str | None = None
    # Which retrievers found it (a hybrid hit may carry both).
    retrievers: list[RetrieverName] = Field(default_factory=list)


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float
