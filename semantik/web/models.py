"""Request and response models of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

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


class GroupBy(StrEnum):
    CHUNK = "chunk"
    DOCUMENT = "document"


FileType = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,16}$")]


class SearchFilters(_Request):
    """Every given filter must hold. Chunks indexed before a filter's field existed (an earlier
    version) lack it, and are found again once their file is indexed anew."""

    path_prefix: str | None = Field(
        default=None,
        max_length=4096,
        pattern=r"^/[^\x00]*$",
        description="only files under this folder (an absolute path)",
    )
    file_types: list[FileType] | None = Field(
        default=None, max_length=64, description="only these file types: suffixes without the dot (pdf, docx ...)"
    )
    modified_after: AwareDatetime | None = Field(
        default=None, description="file modified at or after (ISO 8601, with zone)"
    )
    modified_before: AwareDatetime | None = Field(
        default=None, description="file modified at or before (ISO 8601, with zone)"
    )

    @field_validator("path_prefix")
    @classmethod
    def _folder(cls, value: str | None) -> str | None:
        return None if value is None else (value.rstrip("/") or "/")

    def where(self) -> dict[str, list[str]]:
        where: dict[str, list[str]] = {}
        if self.path_prefix is not None:
            where["dirs"] = [self.path_prefix]
        if self.file_types:
            where["file_type"] = sorted({kind.lower() for kind in self.file_types})
        return where

    def ranges(self) -> dict[str, tuple[float | None, float | None]]:
        if self.modified_after is None and self.modified_before is None:
            return {}
        after = self.modified_after.timestamp() if self.modified_after else None
        before = self.modified_before.timestamp() if self.modified_before else None
        return {"mtime": (after, before)}


class SearchRequest(_Request):
    query: str = Field(min_length=1, max_length=10_000)
    collection: str = Field(pattern=COLLECTION_NAME_PATTERN)
    k: int = Field(default=10, ge=1, le=MAX_K)
    # hybrid: BM25 keywords and the dense model fused with RRF (NFCorpus nDCG@10 0.3555, dense
    # alone 0.3145); keyword: exact terms only, the query is not embedded.
    mode: SearchMode = Field(
        default=SearchMode.HYBRID, description="hybrid (keywords + meaning, fused), dense (meaning) or keyword (BM25)"
    )
    group_by: GroupBy = Field(
        default=GroupBy.CHUNK,
        description="chunk: the k best chunks; document: the k best documents, each its best chunk and "
        "the count of its other chunks among the candidates (other_hits)",
    )
    filters: SearchFilters = Field(default_factory=SearchFilters)


class Snippet(BaseModel):
    """A passage of the hit's text around the query's terms; ``highlights``: [start, end) offsets
    of the terms in ``text``, in characters (code points, as Python counts them; JavaScript:
    ``Array.from(text)``). Plain text: a client marks it up itself."""

    text: str
    highlights: list[tuple[int, int]] = Field(default_factory=list)


class SearchHit(BaseModel):
    score: float
    path: str
    # Every path this content is found at (copies of one file share their vectors).
    paths: list[str] = Field(default_factory=list)
    chunk_index: int
    text: str
    snippet: Snippet
    # Where the chunk is in its document, where its format has it.
    page: int | None = None
    slide: int | None = None
    sheet: str | None = None
    heading: list[str] = Field(default_factory=list)
    file_type: str | None = None
    modified: datetime | None = Field(default=None, description="the file's modification time when indexed")
    job_id: str | None = None
    # Which retrievers found it (a hybrid hit may carry both).
    retrievers: list[RetrieverName] = Field(default_factory=list)
    # group_by "document": how many more of the document's chunks were among the candidates.
    other_hits: int | None = None

    @staticmethod
    def modified_at(mtime: object) -> datetime | None:
        return datetime.fromtimestamp(mtime, UTC) if isinstance(mtime, int | float) else None


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float
