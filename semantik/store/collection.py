"""One collection of the embedded engine: its Edge shards, the one that takes writes, and index
builds that never stop the engine from answering.

A collection is a list of shards, named in its manifest (``.meta/<collection>.json``, key
``shards``): sealed ones, which take no new points, and the last, open one, which takes every
upsert. Points land unindexed and are searched by brute force until their shard is built. The open
shard is sealed (a new, empty one takes its place) once it holds ``MAX_SEGMENT_POINTS`` points (half
that under a memory limit below ``LIMITED_MEMORY_MB``, so a build's copy fits beside the engine), or
once ``INDEX_AFTER_POINTS`` wait and writes paused; a sealed shard is then copied into a new one and
indexed in a child process (``builder.py``) while the engine keeps answering from the original, and
the built copy replaces it. A built shard goes into the next build when it is at most twice the size
of the shard just sealed (and the two fit in one full shard), so a collection grows few shards: one
per full shard's points in a bulk load, a handful more from small increments. Once writes paused for
a minute, neighbouring built shards that fit in one full shard together are merged by a build of
the same kind (``_to_merge``), where the memory left allows: under a memory limit shards are sealed
at half a full shard, and the merges halve the graphs a search walks.

Writes wait when they outpace the builds: an upsert answers how many sealed shards wait for a build
(``backlog``), and the store's client (``vectors.py``) holds further writes, not searches, while one
does. Each unbuilt shard holds its points' BM25 and payload indexes in memory (about 2 KB a point
beside the vectors), so an unbounded queue would outgrow a memory limit.

Searches ask every shard and merge each retriever's candidates by score before fusing them: dense
scores are cosine similarities, the same in every shard; BM25 scores weigh terms by each shard's own
document frequencies, which differ a little between shards of one collection (as between the shards
of a Qdrant server's collection). Deletes and path changes go to every shard (and are replayed onto a
copy being built); an upsert also deletes its ids from the sealed shards, so a point written again
after a crash is never held twice.

A shard holding more than ``COPY_MAX_POINTS`` points (written by a version before this layout,
when a collection was one shard) is too big to copy: its waiting points are indexed in place, which
holds the engine, only once writes paused and searches went quiet (``EdgeEngine.build_due_at``).

Layout under the store's root: ``<collection>/`` is the first shard (``base``; stores from earlier
versions have only it), ``.shards/<collection>/<n>/`` the others. Crash safety: a built copy is
complete and flushed before the manifest names it, and directories the manifest does not name
(a build cut off, a shard replaced just before a crash) are removed when the collection opens.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from semantik.proc import memory_available_mb, prefetch_files, release_free_memory
from semantik.store import hybrid
from semantik.store.builder import Build
from semantik.store.hybrid import SearchPlan
from semantik.store.shard import (
    INDEX_AFTER_POINTS,
    MAX_SEGMENT_POINTS,
    EngineError,
    Shard,
    search_requests,
    sparse_indices,
)

Log = Callable[..., None]

META_DIR = ".meta"
SHARDS_DIR = ".shards"
BASE = "base"
LAYOUT = 1
# A sealed shard above this many points is not copied but indexed in place (see above): one written
# by an earlier version, when a collection was one shard. (A full shard is sealed at exactly its
# size; one sealed by an earlier version at the write that filled it can hold a little more.)
COPY_MAX_POINTS = 2 * MAX_SEGMENT_POINTS
# A sealed shard goes into the next one's build when it is at most this many times its size (and the
# two fit in one shard), and built shards are merged on the same terms (``_to_merge``): shards grow
# as they fill, and a point is rebuilt a few times at most, not once per later build (20k-point
# increments rebuilt into one growing shard: 5.5 builds per point).
MERGE_RATIO = 2
# A shard just opened answers its first searches 3-4x slower than later ones (1M points in six
# shards on Zen 5: dense p50 13.9 ms, 5.2 ms once each shard had answered 100 searches; its pages
# were resident: not page faults). So each shard answers this many searches for random vectors,
# a few at a time between requests, once opened or swapped in. (Steps of about 5 ms instead, one
# search at least, spread the same work over more requests: at a million chunks the dense searches
# right after five merges ran at 15.9 ms p50 against 7.5 with five a step; docs/benchmarks.md,
# session 22.)
WARM_SEARCHES = 100
WARM_STEP = 5
# What every dense search reads (each shard's vectors, graph links and payload tracker:
# ``shard.SEARCHED_FILES``) is read ahead into the page cache when the collection opens and after
# each build's swap, while it takes at most this share of the memory the engine may use. After a
# million-point load in a 2.5 GB limit, 5% of the vectors had been evicted by the builds: the first
# searches took 73 page faults each (dense p50 12.7 ms; 7.9 ms for the same queries again, without
# any: docs/benchmarks.md, session 16).
PREFETCH_SHARE = 0.5
# A build that failed (its child died, the disk filled) is tried again this much later; meanwhile
# the sealed shard answers by brute force. After COPY_ATTEMPTS failed copies the shard is indexed in
# place instead, like an oversized one: a copy needs memory for a second set of the points (1.3 GB
# for 200k), and in a memory limit that cannot hold both the build process is killed.
BUILD_RETRY_S = 60.0
COPY_ATTEMPTS = 2
# While a build runs, writers wait once the open shard holds this many points (at most a quarter of
# a shard), so the points held unindexed (in memory, with their indexes) stay bounded: the shard
# being copied and this many. Letting them fill a whole shard instead was tried (session 14): on two
# cores the writes and the build share the CPU, so the build ran as much longer as the writers went
# on (100k points: 48 s against 28 s), for 2% more upserts/s and 210 MB more engine memory
# (docs/benchmarks.md, "Writers that fill a shard during its build").
WRITE_AHEAD_POINTS = 50_000
# Neighbouring built shards that fit in one full shard together (MAX_SEGMENT_POINTS) are merged into
# one once writes paused for MERGE_IDLE_S (``edge.py``), fewest points first: under a memory limit
# shards are sealed at half a full shard, and a search's time grows with the number of graphs it
# walks, not their size (docs/benchmarks.md, session 19: 1M points in six 200k shards searched in
# 6.2 ms, in eleven 100k shards 10-13.5 ms). A merge is a read-back build (``builder.py``), which
# holds about MERGE_KB_PER_POINT a point it builds; it starts only while that and
# MERGE_HEADROOM_MB are available (``proc.memory_available_mb``: under the engine's cgroup, its limit
# less the anonymous memory held in it), else it is asked again MERGE_RETRY_S later. A merge gives
# way to writes: one that would hold writers (the open shard fills up to the write-ahead while it
# runs) is cancelled, and tried again once writes pause. A merge that failed is tried again
# MERGE_RETRY_S later, up to COPY_ATTEMPTS times for those shards (once, when ``optimize`` asked).
MERGE_KB_PER_POINT = 6.5
MERGE_HEADROOM_MB = 256
MERGE_RETRY_S = 300.0
# Under a memory limit below this (the engine's cgroup's, or the machine's RAM), shards are sealed at
# half of MAX_SEGMENT_POINTS. A build process holds about 6.5 KB per point it copies (1.3 GB for 200k)
# while the engine holds about 3 KB per unindexed point: at a million points in a 2.5 GB cgroup,
# 200k-point copies were OOM-killed in two runs of three, once the engine's own memory had grown
# (docs/benchmarks.md, sessions 11 and 12).
LIMITED_MEMORY_MB = 4096


def sealed_at(memory_mb: int | None) -> int:
    """The points at which the open shard is sealed, for an engine that may use ``memory_mb``
    (``semantik.proc.memory_limit_mb``; None: unknown)."""
    if memory_mb is not None and memory_mb < LIMITED_MEMORY_MB:
        return MAX_SEGMENT_POINTS // 2
    return MAX_SEGMENT_POINTS


def meta_path(root: Path, name: str) -> Path:
    return root / META_DIR / f"{name}.json"


def read_meta(root: Path, name: str) -> dict[str, Any]:
    path = meta_path(root, name)
    return dict(json.loads(path.read_text())) if path.exists() else {}


def write_meta(root: Path, name: str, meta: dict[str, Any]) -> None:
    path = meta_path(root, name)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"layout": LAYOUT, **meta}))
    os.replace(tmp, path)


def shard_dir(root: Path, collection: str, shard: str) -> Path:
    return root / collection if shard == BASE else root / SHARDS_DIR / collection / shard


def remove_collection(root: Path, name: str) -> None:
    """Every directory of a collection and its manifest (its shards must be closed)."""
    for path in (root / name, root / SHARDS_DIR / name):
        if path.exists():
            doomed = path.with_name(f".dropping-{name}")
            shutil.rmtree(doomed, ignore_errors=True)  # left by a removal that was cut off
            os.replace(path, doomed)  # gone from view at once, even if the removal below is cut off
            shutil.rmtree(doomed, ignore_errors=True)
    meta_path(root, name).unlink(missing_ok=True)


def shard_names(root: Path, name: str) -> list[str] | None:
    """The collection's shards, in order (the last takes writes); None when it has none."""
    names = read_meta(root, name).get("shards")
    if names:
        return [str(n) for n in names]
    return [BASE] if (root / name / "edge_config.json").exists() else None


@dataclass
class Member:
    name: str
    shard: Shard


class Collection:
    """The open shards of one collection, and the build in progress if any."""

    def __init__(
        self,
        root: Path,
        name: str,
        members: list[Member],
        log: Log,
        *,
        shard_points: int | None = None,
        memory_mb: int | None = None,
    ) -> None:
        self.root, self.name, self.members, self.log = root, name, members, log
        self.memory_mb = memory_mb  # what the engine may use (``semantik.proc.memory_limit_mb``)
        # The open shard is sealed at this many points (``sealed_at``), and builds merge up to it.
        self.shard_points = MAX_SEGMENT_POINTS if shard_points is None else shard_points
        self.build: Build | None = None
        self.build_reason = "copy"  # or "merge" (``_to_merge``)
        self.building: list[Member] = []  # the sealed shards being copied
        self.replay: list[tuple[str, tuple[Any, ...]]] = []  # changes to replay onto the copy
        self.built: set[str] = set()  # shards a build made (not built again unless merged)
        self.failed: dict[str, int] = {}  # shard -> copies of it that failed
        self.retry_at = 0.0
        self.merge_at = 0.0  # no merge starts before this (``time.monotonic()``): memory was short
        # Shard (id) -> searches still to run to warm it (an empty one needs none).
        self.cold: dict[int, int] = {id(m.shard): WARM_SEARCHES for m in members if m.shard.points}
        # What a swap left to do, one step each between requests (``maintain``): close the shards a
        # build replaced, remove their directories, hand the memory they held back. (shard, step)
        self.retiring: list[tuple[str, Callable[[], object]]] = []
        self.index_seconds = 0.0  # spent building since the collection was opened ...
        self.held_seconds = 0.0  # ... of which the engine answered nothing (indexing in place)

    @classmethod
    def open(
        cls, root: Path, name: str, log: Log, *, shard_points: int | None = None, memory_mb: int | None = None
    ) -> Collection | None:
        names = shard_names(root, name)
        if names is None:
            return None
        _remove_strays(root, name, names)
        members = [Member(n, Shard.load(shard_dir(root, name, n))) for n in names]
        for member in members[:-1]:  # the sealed ones; the open shard's log takes every write
            member.shard.release_log()
        found = cls(root, name, members, log, shard_points=shard_points, memory_mb=memory_mb)
        found.prefetch()
        return found

    @classmethod
    def create(
        cls, root: Path, name: str, dim: int, log: Log, *, shard_points: int | None = None, memory_mb: int | None = None
    ) -> Collection:
        path = shard_dir(root, name, BASE)
        if path.exists():
            shutil.rmtree(path)  # a directory without a config: a creation that died half-way
        return cls(
            root, name, [Member(BASE, Shard.create(path, dim))], log, shard_points=shard_points, memory_mb=memory_mb
        )

    # -- what the engine asks --------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.members[0].shard.dim

    @property
    def open_shard(self) -> Shard:
        return self.members[-1].shard

    @property
    def shards(self) -> list[Shard]:
        return [m.shard for m in self.members]

    @property
    def dirty(self) -> bool:
        return any(s.dirty for s in self.shards)

    @property
    def waiting(self) -> int:
        return sum(s.waiting for s in self.shards)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        payloads: Sequence[dict[str, Any]],
        sparse: Sequence[hybrid.Sparse] | None = None,
    ) -> None:
        # The open shard is sealed at exactly ``shard_points`` (the rest of the write goes to the
        # next one), so two shards sealed under a memory limit make one full shard (``_to_merge``).
        start = 0
        while start < len(ids):
            room = self.shard_points - self.open_shard.points
            end = len(ids) if room <= 0 else min(len(ids), start + room)
            part = slice(start, end)
            self._write(ids[part], vectors[part], payloads[part], None if sparse is None else sparse[part])
            if self.open_shard.points >= self.shard_points:
                self.seal()
            start = end
        if self.merging and self.backlog:  # it would hold the writers: writes first
            self._cancel_merge()

    def _write(
        self,
        ids: Sequence[str],
        vectors: npt.NDArray[np.float32],
        payloads: Sequence[dict[str, Any]],
        sparse: Sequence[hybrid.Sparse] | None,
    ) -> None:
        # A point written again moves to the open shard: its copy in a sealed one goes. Only where
        # it is, so a bulk load of new points changes no sealed shard (one being cloned would wait).
        for shard in self.shards[:-1]:
            present = shard.present(ids)
            if present:
                self._everywhere("delete_ids", (present,), [shard])
        self.open_shard.upsert(ids, vectors, payloads, sparse)

    def delete(self, field: str, values: Sequence[str]) -> None:
        self._everywhere("delete", (field, list(values)), self.shards)

    def set_paths(self, sha256: str, paths: Sequence[str], mtime: float | None = None) -> None:
        self._everywhere("set_paths", (sha256, list(paths), mtime), self.shards)

    def _everywhere(self, op: str, args: tuple[Any, ...], shards: Sequence[Shard]) -> None:
        if self.build is not None and any(m.shard in shards for m in self.building):
            self.build.settle()  # a shard whose files are being copied changes once they are
            if self.build.state == "failed":
                self._build_failed(time.monotonic())
        for shard in shards:
            getattr(shard, op)(*args)
        if self.build is not None:
            self.replay.append((op, args))

    def count(self) -> int:
        return sum(s.count() for s in self.shards)

    def content_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for shard in self.shards:
            for sha, n in shard.content_counts().items():
                counts[sha] = counts.get(sha, 0) + n
        return counts

    def search(self, plan: SearchPlan) -> list[dict[str, Any]]:
        """Every shard's candidates, merged per list by score (each point once), then fused; the
        payloads are read for the hits only (one shard, one list: they come with the candidates)."""
        alone = len(self.members) == 1 and not plan.fused
        requests = search_requests(plan, with_payload=alone, shards=len(self.members))
        live = hybrid.searchable(plan)
        answers: list[list[_Found]] = [[] for _ in plan.lists]
        for shard in self.shards:
            for i, found in zip(live, shard.query(requests), strict=True):
                answers[i].extend(_Found(point.id, float(point.score), point, shard) for point in found)
        if len(self.members) > 1:
            answers = [_best(answer, spec.limit) for answer, spec in zip(answers, plan.lists, strict=True)]
        fused = hybrid.fuse(plan, hybrid.collect(plan, answers, sparse_indices))
        if alone:
            payloads = {str(f.id): f.point.payload for f in answers[0]}
        else:
            kept = {str(f.id): f for answer in answers for f in answer}
            wanted: dict[int, list[str]] = {}
            for hit in fused:
                wanted.setdefault(id(kept[hit.id].shard), []).append(hit.id)
            payloads = {}
            for shard in self.shards:
                payloads.update(shard.payloads(wanted.get(id(shard), [])))
        return hybrid.rows(fused, payloads)

    def prefetch(self) -> int:
        """Ask the kernel to read what every dense search reads (``PREFETCH_SHARE``) and return how
        many bytes were asked for: 0 when it would not fit."""
        files = [path for shard in self.shards for path in shard.searched_files()]
        total = 0
        for path in files:
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        if self.memory_mb is not None and total > PREFETCH_SHARE * self.memory_mb * 2**20:
            self.log("vector_prefetch_skipped", collection=self.name, mb=total >> 20, limit_mb=self.memory_mb)
            return 0
        return prefetch_files(files)

    def stats(self) -> dict[str, Any]:
        infos = [s.edge.info() for s in self.shards]
        return {
            "points": sum(i.points_count for i in infos),
            "segments": sum(i.segments_count for i in infos),
            "indexed_vectors": sum(i.indexed_vectors_count for i in infos),
            "waiting": self.waiting,
            "index_seconds": round(self.index_seconds, 3),
            "held_seconds": round(self.held_seconds, 3),
            "shards": len(infos),
            "building": self.build is not None,
            "warming": len(self.cold),
        }

    def flush(self) -> None:
        for shard in self.shards:
            if shard.dirty:
                shard.flush()

    def close(self) -> None:
        self._cancel_build()
        self._retire_all()
        for shard in self.shards:
            shard.close()

    # -- sealing and building --------------------------------------------------------------------

    def seal(self) -> None:
        """Stop writing to the open shard; a new, empty one takes the writes."""
        name = self._next_name()
        shard = Shard.create(shard_dir(self.root, self.name, name), self.dim)
        self.open_shard.flush()
        self.members.append(Member(name, shard))
        self._save()

    def _next_name(self) -> str:
        taken = [m.name for m in self.members] + ([self.build.target.name] if self.build is not None else [])
        return str(1 + max((int(n) for n in taken if n.isdigit()), default=0))

    def _save(self) -> None:
        meta = read_meta(self.root, self.name)
        meta.setdefault("dim", self.dim)
        write_meta(self.root, self.name, {**meta, "shards": [m.name for m in self.members]})

    def _copyable(self, member: Member) -> bool:
        shard = member.shard
        return (
            shard.waiting >= INDEX_AFTER_POINTS
            and member.name not in self.built
            and shard.points <= COPY_MAX_POINTS
            and self.failed.get(member.name, 0) < COPY_ATTEMPTS
        )

    def _to_copy(self) -> list[Member] | None:
        """The sealed shards the next build copies, or None."""
        for i, member in enumerate(self.members[:-1]):
            if not self._copyable(member):
                continue
            if i > 0:
                before = self.members[i - 1]
                fits = before.shard.points + member.shard.points <= self.shard_points
                if fits and before.shard.points <= MERGE_RATIO * member.shard.points:
                    return [before, member]  # merge a built shard of like size into this build
            return [member]
        return None

    def _to_merge(self) -> list[Member] | None:
        """Two neighbouring sealed shards, built (or too small to build), of like size (the larger
        at most ``MERGE_RATIO`` times the other, so a shard that grows by small increments is not
        rebuilt at each) that fit in one full shard together, and whose builds failed fewer than
        ``COPY_ATTEMPTS`` times: the pair with the fewest points; or None."""
        sealed = self.members[:-1]

        def mergeable(m: Member) -> bool:
            return m.shard.waiting < INDEX_AFTER_POINTS and self.failed.get(m.name, 0) < COPY_ATTEMPTS

        pairs = [
            (a.shard.points + b.shard.points, i)
            for i, (a, b) in enumerate(itertools.pairwise(sealed))
            if a.shard.points + b.shard.points <= MAX_SEGMENT_POINTS
            and max(a.shard.points, b.shard.points) <= MERGE_RATIO * min(a.shard.points, b.shard.points)
            and mergeable(a)
            and mergeable(b)
        ]
        if not pairs:
            return None
        i = min(pairs)[1]
        return sealed[i : i + 2]

    def _merge_that_fits(self, now: float) -> list[Member] | None:
        """The next pair to merge if its build's memory is available now; else None (a pair that does
        not fit is logged and asked again ``MERGE_RETRY_S`` later)."""
        pair = self._to_merge()
        if pair is None or now < self.merge_at:
            return None
        points = sum(m.shard.points for m in pair)
        needed = round(MERGE_KB_PER_POINT * points / 1024) + MERGE_HEADROOM_MB
        available = memory_available_mb()
        if available is not None and available < needed:
            self.merge_at = now + MERGE_RETRY_S
            self.log(
                "vector_merge_deferred",
                collection=self.name,
                shards=[m.name for m in pair],
                points=points,
                needed_mb=needed,
                available_mb=available,
                retry_in_s=MERGE_RETRY_S,
            )
            return None
        return pair

    @property
    def merging(self) -> bool:
        return self.build is not None and self.build_reason == "merge"

    @property
    def write_ahead(self) -> int:
        """Points the open shard takes while a build runs before writers wait (see WRITE_AHEAD_POINTS)."""
        return min(WRITE_AHEAD_POINTS, self.shard_points // 4)

    def _cancel_merge(self) -> None:
        shards = [m.name for m in self.building]
        self.log("vector_merge_cancelled", collection=self.name, shards=shards, reason="writes")
        self._cancel_build()

    def _to_build_in_place(self) -> Member | None:
        """A sealed shard to index in this process: too big to copy, or its copies failed."""
        for member in self.members[:-1]:
            shard = member.shard
            if shard.waiting >= INDEX_AFTER_POINTS and member.name not in self.built and not self._copyable(member):
                return member
        return None

    @property
    def backlog(self) -> int:
        """How far writes are ahead of the builds: sealed shards that wait behind another for their
        build (the next one starts at once) or for one in place, and a full write-ahead while one
        runs."""
        sealed = [m for m in self.members[:-1] if m not in self.building and m.name not in self.built]
        ready = sum(1 for m in sealed if self._copyable(m))
        in_place = sum(1 for m in sealed if m.shard.waiting >= INDEX_AFTER_POINTS and not self._copyable(m))
        if self.build is None:
            return max(0, ready - 1) + in_place
        return ready + in_place + (1 if self.open_shard.points >= self.write_ahead else 0)

    def due(self, now: float, *, idle_at: float, quiet_at: float, settled_at: float | None = None) -> float | None:
        """When ``maintain`` has retiring, warming or building to do (``time.monotonic()``), None
        when nothing waits or a build waits on its child (the engine watches ``self.build.conn``).
        ``settled_at``: when merges may start (None: not at all)."""
        if self.retiring or self.cold:
            return now
        if self.build is not None:
            return now if self.build.due else None
        due = []
        if self._to_copy() is not None:
            due.append(max(now, self.retry_at))
        if self._to_build_in_place() is not None:
            due.append(quiet_at)
        if self.open_shard.waiting >= INDEX_AFTER_POINTS:
            due.append(idle_at)
        if not due and settled_at is not None and self._to_merge() is not None:
            due.append(max(settled_at, self.merge_at))
        return min(due) if due else None

    def maintain(self, now: float, *, idle: bool, quiet: bool, settled: bool = False) -> None:
        """One step: close or remove a shard a build replaced; or warm a shard just opened; or of
        building: take the child's news or hand it a page; or start a build (sealing the open shard
        once writes paused); or index an old oversized shard in place; or, with nothing else to do
        and writes paused long enough (``settled``), merge two built shards."""
        if self.retiring:
            self._retire_one()
            return
        if self.cold:
            self._warm()
            return
        if self.build is not None:
            self._step_build(now)
            return
        if idle and self.open_shard.waiting >= INDEX_AFTER_POINTS:
            self.seal()
        sources = self._to_copy()
        if sources is not None and now >= self.retry_at:
            self._start_build(sources)
            return
        big = self._to_build_in_place()
        if big is not None:
            if quiet:
                self._optimize_in_place(big, reason="in_place")
            return
        if sources is None and settled and self.open_shard.waiting < INDEX_AFTER_POINTS:
            pair = self._merge_that_fits(now)
            if pair is not None:
                self._start_build(pair, reason="merge")

    def _warm(self) -> None:
        key, left = next(iter(self.cold.items()))
        shard = next((s for s in self.shards if id(s) == key), None)
        if shard is None or left <= 0:
            del self.cold[key]
            return
        rng = np.random.default_rng(left)
        for _ in range(min(WARM_STEP, left)):
            vector = rng.standard_normal(self.dim)
            plan = hybrid.plan_search(
                hybrid.SearchMode.DENSE, vector=(vector / np.linalg.norm(vector)).tolist(), query_text=None, k=10
            )
            shard.query(search_requests(plan, with_payload=False, shards=len(self.members)))
        self.cold[key] = left - WARM_STEP

    def _step_build(self, now: float) -> None:
        assert self.build is not None
        self.build.step()
        if self.build.state == "done":
            self._finish_build()
        elif self.build.state == "failed":
            error = self._build_failed(now)
            raise EngineError("vector_index_build_failed", f"building the index of {self.name!r} failed: {error}")

    def _build_failed(self, now: float) -> str:
        """Log a failed build and drop it (tried again ``BUILD_RETRY_S`` later); its error."""
        assert self.build is not None
        error = self.build.error
        for member in self.building:
            self.failed[member.name] = self.failed.get(member.name, 0) + 1
        if self.merging:  # (a merge is not built in place: it is tried again, later, or left)
            self.merge_at = now + MERGE_RETRY_S
        self.log("vector_index_build_failed", collection=self.name, error=error, retry_in_s=BUILD_RETRY_S)
        self._drop_build()
        self.retry_at = now + BUILD_RETRY_S
        return error

    def optimize(self) -> None:
        """Index every waiting point now, merge the built shards that fit (``_to_merge``), warm the
        shards swapped in, and return when done (asked for: benchmarks, tests). Other requests wait
        meanwhile; a copy that fails is built in place, a merge that fails or does not fit in memory
        is left undone."""
        if self.open_shard.waiting >= INDEX_AFTER_POINTS:
            self.seal()
        while True:
            if self.build is None:
                sources = self._to_copy()
                if sources is None:
                    break
                self._start_build(sources)
            self._build_to_the_end()
        while (big := self._to_build_in_place()) is not None:
            self._optimize_in_place(big, reason="asked")  # (marks it built: this ends)
        self.merge_at = 0.0
        while (pair := self._merge_that_fits(time.monotonic())) is not None:
            self._start_build(pair, reason="merge")
            self._build_to_the_end()  # (one that fails is marked failed: not merged again)
        # Done means fast: the shards swapped in are warmed here, not between the searches that
        # follow (five merged shards left cold made a million-point collection's dense p99 74 ms).
        while self.cold:
            self._warm()

    def _retire_all(self) -> None:
        while self.retiring:
            self._retire_one()

    def _retire_one(self) -> None:
        """One step of what a swap left to do. A shard that fails to close keeps its directory (the
        next open removes it: the manifest no longer names it); logged, the rest goes on."""
        shard, step = self.retiring.pop(0)
        try:
            step()
        except Exception as exc:
            if shard:
                self.retiring = [(s, later) for s, later in self.retiring if s != shard]
            self.log(
                "vector_shard_retire_failed", collection=self.name, shard=shard, error=f"{type(exc).__name__}: {exc}"
            )

    def _build_to_the_end(self) -> None:
        """Wait on the running build (if any) and swap it in; one that fails marks its shards failed
        as many times as a copy may fail (logged), so it is not made again."""
        copying = [m.name for m in self.building]
        while self.build is not None:
            if not self.build.due:
                wait([self.build.conn], timeout=1.0)
            try:
                self._step_build(time.monotonic())
            except EngineError:  # logged; asked to index now, so build those in place (``optimize``)
                self.failed.update(dict.fromkeys(copying, COPY_ATTEMPTS))
        self._retire_all()  # (the next build's memory check counts what the replaced shards held)

    def _optimize_in_place(self, member: Member, *, reason: str) -> None:
        began = time.monotonic()
        waiting = member.shard.waiting
        changed = member.shard.optimize()
        member.shard.flush()
        self.built.add(member.name)  # not again (Edge leaves segments below its threshold as they are)
        self.index_seconds += time.monotonic() - began
        self.held_seconds += time.monotonic() - began
        if changed:
            self.prefetch()
            self.log(
                "vector_index_built",
                collection=self.name,
                points=waiting,
                reason=reason,
                seconds=round(time.monotonic() - began, 2),
                rss_anon_mb=release_free_memory(),
            )

    def _start_build(self, sources: list[Member], *, reason: str = "copy") -> None:
        target = shard_dir(self.root, self.name, self._next_name())
        self.building, self.replay, self.build_reason = sources, [], reason
        self.build = Build([m.shard for m in sources], target, self.dim, partial(self.log, collection=self.name))
        self.log(
            "vector_index_build_started",
            collection=self.name,
            points=self.build.points,
            shards=[m.name for m in sources],
            into=target.name,
            via=self.build.via,
            reason=reason,
        )

    def _finish_build(self) -> None:
        assert self.build is not None
        build, sources = self.build, self.building
        began = time.monotonic()
        name = build.target.name
        shard = Shard.load(build.target)
        for op, args in self.replay:
            getattr(shard, op)(*args)
        shard.flush()
        shard.release_log()
        at = self.members.index(sources[0])
        self.members = [m for m in self.members if m not in sources]
        self.members.insert(at, Member(name, shard))
        self._save()  # from here on the copy is the collection's
        self.cold[id(shard)] = WARM_SEARCHES
        self.prefetch()  # the copy, and what the build's memory pushed out of the others
        self.built.add(name)
        # The shards it replaced are closed and removed in later steps, each between two requests:
        # a swap holds the engine, and loading the copy already takes 0.5-1.2 s of it (Edge holds
        # the GIL while it opens a shard); closing and removing two 100k shards took 0.2-0.6 s more.
        # A process killed before then leaves directories the next open removes (``_remove_strays``).
        # (``rss_anon_mb`` below is read before they are closed.)
        for member in sources:
            self.retiring.append((member.name, member.shard.close))
            self.retiring.append((member.name, partial(shutil.rmtree, shard_dir(self.root, self.name, member.name))))
        self.retiring.append(("", release_free_memory))  # what they held, for the next build's memory check
        self._drop_build()
        seconds = time.monotonic() - build.began
        self.index_seconds += seconds
        self.log(
            "vector_index_built",
            collection=self.name,
            points=shard.count(),  # after the changes replayed onto it
            reason=self.build_reason,
            shards=[m.name for m in sources],
            via=build.result.get("via"),
            seconds=round(seconds, 2),
            build_seconds=build.result.get("seconds"),
            swap_seconds=round(time.monotonic() - began, 2),
            rss_anon_mb=release_free_memory(),
        )

    def _drop_build(self) -> None:
        self.build, self.building, self.replay = None, [], []

    def _cancel_build(self) -> None:
        if self.build is not None:
            self.build.cancel()
            self._drop_build()


class _Found(NamedTuple):
    """A candidate from one shard: Edge's point, with its id and score read once (each read of a
    point's ``id`` makes a new UUID: a hybrid search over 11 shards has 1,100 candidates, and reading
    their ids again and again took longer than searching a shard), and the shard its payload is in."""

    id: Any
    score: float
    point: Any
    shard: Shard

    @property
    def vector(self) -> Any:
        return self.point.vector


def _best(found: list[_Found], limit: int) -> list[_Found]:
    """One list's candidates from several shards: each point once, best score first."""
    seen: set[Any] = set()
    best = []
    for candidate in sorted(found, key=lambda f: -f.score):
        if candidate.id not in seen:
            seen.add(candidate.id)
            best.append(candidate)
            if len(best) == limit:
                break
    return best


def _remove_strays(root: Path, name: str, names: list[str]) -> None:
    """Directories the manifest does not name: a build cut off, or a shard replaced by its built
    copy just before the process died."""
    if BASE not in names:
        _remove_path(root / name)
    extra = root / SHARDS_DIR / name
    if extra.is_dir() and not extra.is_symlink():
        for path in extra.iterdir():
            if path.name not in names:
                _remove_path(path)


def _remove_path(path: Path) -> None:
    """A directory with its contents, or a file or link (not what it points to); nothing if absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
