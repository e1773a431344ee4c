"""Folder sync: a collection mirrors its folders (additions, changes, moves, copies, deletions) on
demand and on a schedule; its sources are managed through the API; a check counts what is out of step.

Real folders, a real worker with the real model, the embedded vector store.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from arq.connections import ArqRedis
from arq.worker import Worker

from semantik.indexing.watch import Watchers
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.store.db import MIGRATIONS
from tests.helpers import (
    JobView,
    assert_error,
    count_points,
    create_job,
    job_view,
    run_burst,
    wait_for_job,
    wait_until,
    write,
)

NOTES = {
    "alpha.txt": "Alpacas are shorn once a year in spring; their fleece is spun into yarn.",
    "bravo.md": "# Budget\n\nThe travel budget for the Berlin office is reviewed every quarter.",
    "charlie.txt": "Chess openings: the Sicilian defence answers e4 with c5 and fights for the centre.",
    "delta/deep.txt": "Deep-sea anglerfish lure prey with a glowing bioluminescent esca.",
}


def make_notes(docs: Path) -> None:
    for name, text in NOTES.items():
        write(docs / name, text)


async def search(api: TestClient[Any, Any], query: str, collection: str = "team", k: int = 10) -> list[dict[str, Any]]:
    response = await api.post("/api/search", json={"query": query, "collection": collection, "k": k})
    assert response.status == 200, await response.text()
    return list((await response.json())["results"])


async def files_of(api: TestClient[Any, Any], job_id: str) -> dict[str, dict[str, Any]]:
    response = await api.get(f"/api/jobs/{job_id}/files")
    assert response.status == 200, await response.text()
    return {Path(f["path"]).name: f for f in (await response.json())["files"]}


async def sync(api: TestClient[Any, Any], collection: str = "team") -> JobView:
    response = await api.post(f"/api/collections/{collection}/sync")
    assert response.status == 202, await response.text()
    job = dict(await response.json())
    assert job["kind"] == "sync" and job["status"] == "queued"
    return job


async def check(api: TestClient[Any, Any], collection: str = "team") -> dict[str, Any]:
    response = await api.get(f"/api/collections/{collection}/check")
    assert response.status == 200, await response.text()
    return dict(await response.json())


def assert_in_step(report: dict[str, Any]) -> None:
    counts = (report["vectors_without_file"], report["files_without_vectors"], report["files_missing"])
    assert counts == (0, 0, 0) and report["ok"], report


async def test_a_sync_mirrors_additions_changes_moves_copies_and_deletions(
    api: TestClient[Any, Any], docs: Path, run_worker: Any, runtime: Runtime
) -> None:
    make_notes(docs)
    first = await create_job(api, docs, "team")
    await run_worker()
    assert (await job_view(api, first["id"]))["status"] == "completed"
    assert await count_points(runtime, "team") == 4
    assert_in_step(await check(api))

    write(docs / "echo.txt", "Echolocation lets bats hunt moths in complete darkness.")  # new
    write(docs / "bravo.md", "# Budget\n\nThe Berlin office's travel budget is frozen until March.")  # changed
    os.makedirs(docs / "games")
    os.rename(docs / "charlie.txt", docs / "games" / "chess.txt")  # moved, same content
    (docs / "delta" / "deep.txt").unlink()  # deleted
    shutil.copy(docs / "alpha.txt", docs / "alpaca-copy.txt")  # a copy of an indexed file

    job = await sync(api)
    await run_worker()
    done = await job_view(api, job["id"])
    files = await files_of(api, job["id"])
    assert done["status"] == "completed", (done, files)
    # Only the new and the changed file were embedded; alpha.txt was not even read.
    assert (done["files_done"], done["chunks"], done["files_removed"], done["files_unchanged"]) == (2, 2, 1, 1), done
    assert done["files_total"] == 5 and done["files_skipped"] == 3
    assert files["echo.txt"]["status"] == files["bravo.md"]["status"] == "done"
    assert files["deep.txt"]["status"] == "removed"
    assert files["chess.txt"]["status"] == "skipped"
    assert files["chess.txt"]["error"].startswith(f"moved from {docs / 'charlie.txt'}"), files["chess.txt"]
    assert "charlie.txt" not in files  # the move is told once, on its new path
    assert files["alpaca-copy.txt"]["error"].startswith(f"same content as {docs / 'alpha.txt'}")
    assert "alpha.txt" not in files  # unchanged: no row in a sync, only the count

    # alpha (shared by its copy), bravo (new version), chess (moved) and echo: one point each.
    assert await count_points(runtime, "team") == 4
    best = (await search(api, "when is the Berlin travel budget frozen", k=1))[0]
    assert best["path"] == str(docs / "bravo.md") and "frozen" in best["text"]
    assert not any("reviewed every quarter" in hit["text"] for hit in await search(api, "budget reviewed quarterly"))
    assert not any(hit["path"].endswith("deep.txt") for hit in await search(api, "anglerfish glowing lure"))
    chess = (await search(api, "Sicilian defence chess opening", k=1))[0]
    assert (chess["path"], chess["paths"]) == (str(docs / "games" / "chess.txt"), [str(docs / "games" / "chess.txt")])
    alpaca = (await search(api, "alpaca fleece yarn", k=1))[0]
    assert alpaca["paths"] == [str(docs / "alpaca-copy.txt"), str(docs / "alpha.txt")]  # every copy is findable
    assert (await search(api, "bats hunting moths in the dark", k=1))[0]["path"] == str(docs / "echo.txt")
    assert_in_step(await check(api))

    # Deleting one copy keeps the content for the other; deleting the other removes it.
    (docs / "alpha.txt").unlink()
    await sync(api)
    await run_worker()
    alpaca = (await search(api, "alpaca fleece yarn", k=1))[0]
    assert alpaca["paths"] == [str(docs / "alpaca-copy.txt")] and alpaca["path"] == str(docs / "alpaca-copy.txt")
    (docs / "alpaca-copy.txt").unlink()
    gone = await sync(api)
    await run_worker()
    assert (await job_view(api, gone["id"]))["files_removed"] == 1
    assert not any("fleece" in hit["text"] for hit in await search(api, "alpaca fleece yarn"))
    assert await count_points(runtime, "team") == 3
    assert_in_step(await check(api))


async def test_an_unchanged_folder_is_not_read_and_a_touched_file_is_not_embedded_again(
    api: TestClient[Any, Any], docs: Path, run_worker: Any
) -> None:
    make_notes(docs)
    await create_job(api, docs, "team")
    await run_worker()
    noop = await sync(api)
    await run_worker()
    job = await job_view(api, noop["id"])
    assert (job["status"], job["files_total"], job["files_unchanged"], job["files_done"]) == ("completed", 4, 4, 0)
    assert await files_of(api, noop["id"]) == {}  # nothing was read, so nothing to list

    os.utime(docs / "alpha.txt")  # a new mtime, same bytes: read and hashed, not embedded
    touched = await sync(api)
    await run_worker()
    job = await job_view(api, touched["id"])
    files = await files_of(api, touched["id"])
    assert (job["files_unchanged"], job["files_done"], job["chunks"]) == (3, 0, 0), job
    assert (files["alpha.txt"]["status"], files["alpha.txt"]["error"]) == ("skipped", "unchanged since last indexed")

    # The same folder indexed again by a person is one source, and lists every file it found.
    again = await create_job(api, docs, "team")
    await run_worker()
    sources = (await (await api.get("/api/collections/team/sources")).json())["sources"]
    assert len(sources) == 1 and sources[0]["files"] == sources[0]["indexed"] == 4
    listed = await files_of(api, again["id"])
    assert {f["error"] for f in listed.values()} == {"unchanged since last indexed"} and len(listed) == 4


async def test_sync_is_refused_with_the_reason(api: TestClient[Any, Any], docs: Path) -> None:
    missing = await api.post("/api/collections/nope/sync")
    assert missing.status == 404
    assert_error(await missing.json(), "collection_not_found")
    assert (await api.post("/api/collections", json={"name": "empty"})).status == 201
    no_sources = await api.post("/api/collections/empty/sync")
    assert no_sources.status == 409
    assert_error(await no_sources.json(), "no_sources")

    make_notes(docs)
    queued = await create_job(api, docs, "team")  # no worker: it stays queued
    busy = await api.post("/api/collections/team/sync")
    assert busy.status == 409
    error = assert_error(await busy.json(), "sync_running")
    assert error["details"] == {"job_id": queued["id"]}
    assert len((await (await api.get("/api/jobs")).json())["jobs"]) == 1  # the refusal left nothing behind


async def test_sources_are_added_listed_and_removed_with_their_vectors(
    api: TestClient[Any, Any], docs: Path, run_worker: Any, runtime: Runtime
) -> None:
    shared = "A shared checklist: lock the doors, water the plants, feed the cat."
    write(docs / "home" / "notes.txt", "The boiler is serviced every October by the landlord.")
    write(docs / "home" / "checklist.txt", shared)
    write(docs / "work" / "standup.md", "# Standup\n\nThe team meets at 9:30 in the small meeting room.")
    write(docs / "work" / "checklist.txt", shared)
    await create_job(api, docs / "home", "team")
    await run_worker()

    added = await api.post("/api/collections/team/sources", json={"directory": str(docs / "work")})
    assert added.status == 201, await added.text()
    work = await added.json()
    assert (work["directory"], work["recursive"], work["watch"], work["files"]) == (str(docs / "work"), True, False, 0)
    again = await api.post("/api/collections/team/sources", json={"directory": str(docs / "work")})
    assert again.status == 409
    assert_error(await again.json(), "source_exists")
    outside = await api.post("/api/collections/team/sources", json={"directory": "/etc"})
    assert outside.status == 403
    assert_error(await outside.json(), "path_not_allowed")
    gone = await api.post("/api/collections/team/sources", json={"directory": str(docs / "nowhere")})
    assert gone.status == 422
    await sync(api)
    await run_worker()
    sources = (await (await api.get("/api/collections/team/sources")).json())["sources"]
    assert [(s["directory"], s["files"], s["indexed"]) for s in sources] == [
        (str(docs / "home"), 2, 2),
        (str(docs / "work"), 2, 2),
    ]
    checklist = (await search(api, "water the plants and feed the cat", k=1))[0]
    assert checklist["paths"] == [str(docs / "home" / "checklist.txt"), str(docs / "work" / "checklist.txt")]
    assert await count_points(runtime, "team") == 3

    removed = await api.delete(f"/api/collections/team/sources/{work['id']}")
    assert removed.status == 200, await removed.text()
    assert (await removed.json())["removed"] == {"files": 2, "contents_removed": 1}  # standup; the checklist stays
    assert not any("Standup" in hit["text"] for hit in await search(api, "when does the team meet for standup"))
    checklist = (await search(api, "water the plants and feed the cat", k=1))[0]
    assert checklist["paths"] == [str(docs / "home" / "checklist.txt")]
    assert await count_points(runtime, "team") == 2
    assert_in_step(await check(api))
    missing = await api.delete(f"/api/collections/team/sources/{work['id']}")
    assert missing.status == 404
    assert_error(await missing.json(), "source_not_found")

    queued = await create_job(api, docs / "home", "team")
    busy = await api.delete("/api/collections/team")
    assert busy.status == 409
    assert assert_error(await busy.json(), "collection_busy")["details"] == {"job_id": queued["id"]}
    await run_worker()
    deleted = await api.delete("/api/collections/team")
    assert deleted.status == 200, await deleted.text()
    assert (await api.get("/api/collections/team")).status == 404
    assert (await api.post("/api/search", json={"query": "boiler", "collection": "team"})).status == 404
    assert (await api.get(f"/api/jobs/{queued['id']}")).status == 404
    assert await count_points(runtime, "team") == 0
    # The name is free again, and starts empty.
    await create_job(api, docs / "work", "team")
    await run_worker()
    assert [hit["path"] for hit in await search(api, "boiler serviced in October")] == [] or all(
        "home" not in hit["path"] for hit in await search(api, "boiler serviced in October")
    )


async def test_a_scheduled_sync_picks_up_changes_by_itself(
    api: TestClient[Any, Any], docs: Path, run_worker: Any, background_worker: Worker
) -> None:
    make_notes(docs)
    first = await create_job(api, docs, "team")
    await wait_for_job(api, first["id"])
    for bad in (5, "soon", -1, 0.5):
        refused = await api.patch("/api/collections/team", json={"sync_interval_s": bad})
        assert refused.status == 422, bad
    scheduled = await api.patch("/api/collections/team", json={"sync_interval_s": 10})
    assert scheduled.status == 200 and (await scheduled.json())["sync_interval_s"] == 10
    write(docs / "foxtrot.txt", "Foxtrot is a ballroom dance in 4/4 time with long, flowing movements.")

    async def found() -> list[dict[str, Any]] | None:
        hits = await search(api, "ballroom dance with flowing movements", k=1)
        return hits if hits and hits[0]["path"].endswith("foxtrot.txt") else None

    await wait_until(found, 60, "the scheduled sync to index foxtrot.txt")
    jobs = (await (await api.get("/api/jobs")).json())["jobs"]
    assert any(job["kind"] == "sync" and job["name"] == "scheduled sync" for job in jobs)
    cleared = await api.patch("/api/collections/team", json={"sync_interval_s": None})
    assert (await cleared.json())["sync_interval_s"] is None

    async def quiet() -> bool:  # no sync left running when the worker stops
        listed = (await (await api.get("/api/jobs")).json())["jobs"]
        return all(job["status"] not in ("queued", "running") for job in listed)

    await wait_until(quiet, 60, "the last scheduled sync to end")


async def test_a_watched_folder_is_searchable_within_seconds_of_a_save_and_a_delete(
    api: TestClient[Any, Any], docs: Path, background_worker: Worker, runtime: Runtime
) -> None:
    make_notes(docs)
    first = await create_job(api, docs, "team")
    await wait_for_job(api, first["id"])
    (source,) = (await (await api.get("/api/collections/team/sources")).json())["sources"]
    watched = await api.patch(f"/api/collections/team/sources/{source['id']}", json={"watch": True})
    assert watched.status == 200 and (await watched.json())["watch"] is True
    lease = runtime.settings.redis_names.watch_lease(source["id"])
    redis = background_worker.pool

    async def leased() -> bool:
        return bool(await redis.exists(lease))

    await wait_until(leased, 30, "a worker to take the watch lease")

    async def best_path(query: str) -> str | None:
        hits = await search(api, query, k=1)
        return hits[0]["path"] if hits else None

    saved_at = time.monotonic()
    write(docs / "golf.txt", "Golf handicaps let players of different abilities compete on equal terms.")

    async def saved() -> bool:
        return await best_path("golf handicap for unequal players") == str(docs / "golf.txt")

    await wait_until(saved, 10, "the saved file to be searchable")
    save_s = time.monotonic() - saved_at
    deleted_at = time.monotonic()
    (docs / "golf.txt").unlink()

    async def deleted() -> bool:
        return await best_path("golf handicap for unequal players") != str(docs / "golf.txt")

    await wait_until(deleted, 10, "the deleted file to leave search")
    delete_s = time.monotonic() - deleted_at
    assert save_s < 10 and delete_s < 10, (save_s, delete_s)
    jobs = (await (await api.get("/api/jobs")).json())["jobs"]
    assert any(job["name"] == "watch" for job in jobs)

    stopped = await api.patch(f"/api/collections/team/sources/{source['id']}", json={"watch": False})
    assert (await stopped.json())["watch"] is False

    async def released() -> bool:
        return not await redis.exists(lease)

    await wait_until(released, 30, "the watcher to stop and give its lease back")


async def test_an_older_database_is_upgraded_and_its_first_sync_embeds_nothing(
    settings: Settings, docs: Path, make_api: Any
) -> None:
    """A data dir written before folder sync: its jobs' folders become sources, what they indexed
    becomes their files, and the first sync reads each file once and embeds nothing unchanged."""
    texts = {
        "kept.txt": "Kept notes about the lighthouse keeper's logbook.",
        "gone.txt": "A note deleted since.",
        "old/early.txt": "An early memo about the harbour crane, indexed by a job long since cleaned up.",
    }
    hashes = {}
    for name, text in texts.items():
        hashes[name] = hashlib.sha256(write(docs / name, text).read_bytes()).hexdigest()
    settings.data_dir.mkdir(parents=True)
    with sqlite3.connect(settings.db_path) as old:  # the schema as the previous version left it
        old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for number, script in enumerate(MIGRATIONS[:4], start=1):
            old.executescript(script)
            old.execute("INSERT INTO schema_version VALUES (?)", (number,))
        now = "2026-11-01T00:00:00.000Z"
        old.execute("INSERT INTO collections VALUES ('legacy', 'all-MiniLM-L6-v2', 384, ?)", (now,))
        old.execute(
            "INSERT INTO jobs (id, collection, directory, recursive, status, files_total, files_done, created_at)"
            " VALUES ('old-job', 'legacy', ?, 0, 'completed', 2, 2, ?)",
            (str(docs), now),
        )
        for name, sha in hashes.items():
            if name.startswith("old/"):  # its job is gone (retention), and no other reads its folder
                old.execute(
                    "INSERT INTO documents VALUES ('legacy', ?, ?, 1, 'gone-job', ?)", (sha, str(docs / name), now)
                )
                continue
            old.execute(
                "INSERT INTO files (job_id, path, size, mtime, sha256, status, chunks, updated_at)"
                " VALUES ('old-job', ?, 10, 0, ?, 'done', 1, ?)",
                (str(docs / name), sha, now),
            )
            old.execute("INSERT INTO documents VALUES ('legacy', ?, ?, 1, 'old-job', ?)", (sha, str(docs / name), now))
        old.execute(
            "INSERT INTO jobs (id, collection, directory, recursive, include, status, created_at)"
            " VALUES ('old-old', 'legacy', ?, 1, '[\"*.txt\"]', 'completed', ?)",
            (str(docs / "elsewhere"), now),
        )
    (docs / "gone.txt").unlink()
    api, runtime = await make_api()
    (docs / "elsewhere").mkdir()
    sources = (await (await api.get("/api/collections/legacy/sources")).json())["sources"]
    assert [(s["directory"], s["recursive"], s["include"], s["files"]) for s in sources] == [
        (str(docs), False, None, 2),  # not old/early.txt: this source does not read subfolders
        (str(docs / "elsewhere"), True, ["*.txt"], 0),
    ]
    # The vectors the old version stored for those files.
    embedder = await runtime.embedder()
    await runtime.vectors.ensure_collection("legacy", embedder.dim)
    for name, text in texts.items():
        vectors = await embedder.encode([text])
        await runtime.vectors.upsert_file(
            "legacy", sha256=hashes[name], path=str(docs / name), job_id="old-job", texts=[text], vectors=vectors
        )

    before = await search(api, "lighthouse keeper logbook", "legacy")
    assert before[0]["modified"] is None  # the old version stored no modification time

    job = await sync(api, "legacy")
    await run_burst(runtime)
    done = await job_view(api, job["id"])
    files = await files_of(api, job["id"])
    assert (done["status"], done["files_done"], done["files_removed"], done["chunks"]) == ("completed", 0, 1, 0), done
    # The upgrade marked every content a file refers to: the sync named its paths again, now with
    # the file's modification time, so the search filters find old content without re-embedding it.
    recent = await api.post(
        "/api/search",
        json={
            "query": "lighthouse keeper logbook",
            "collection": "legacy",
            "filters": {"modified_after": "2000-01-01T00:00:00Z"},
        },
    )
    found = (await recent.json())["results"]
    assert found and found[0]["path"] == str(docs / "kept.txt") and found[0]["modified"] is not None, found
    assert files["kept.txt"]["error"] == "unchanged since last indexed" and files["gone.txt"]["status"] == "removed"
    hits = await search(api, "lighthouse keeper logbook", "legacy")
    assert hits[0]["path"] == str(docs / "kept.txt") and str(docs / "gone.txt") not in [h["path"] for h in hits]
    # What no source reads is not thrown away: still searchable, and the check points at it.
    early = str(docs / "old" / "early.txt")
    assert (await search(api, "memo about the harbour crane", "legacy", k=1))[0]["path"] == early
    report = await check(api, "legacy")
    assert (report["vectors_without_file"], report["files_without_vectors"]) == (1, 0), report
    # Indexing its folder again adopts it: nothing is embedded twice.
    again = await create_job(api, docs / "old", "legacy")
    await run_burst(runtime)
    adopted = await job_view(api, again["id"])
    assert (adopted["status"], adopted["files_done"], adopted["chunks"]) == ("completed", 0, 0), adopted
    assert (await files_of(api, again["id"]))["early.txt"]["error"] == "unchanged since last indexed"
    assert_in_step(await check(api, "legacy"))


async def test_overlapping_sources_see_one_file_and_its_old_version_goes(
    api: TestClient[Any, Any], docs: Path, run_worker: Any
) -> None:
    write(docs / "sub" / "plan.txt", "The migration plan moves the archive to the new cluster in May.")
    write(docs / "top.txt", "Top-level notes about the office coffee machine.")
    await create_job(api, docs, "team")
    await run_worker()
    added = await api.post("/api/collections/team/sources", json={"directory": str(docs / "sub")})
    assert added.status == 201
    await sync(api)
    await run_worker()
    write(docs / "sub" / "plan.txt", "The migration plan was postponed: the archive stays where it is until autumn.")
    changed = await sync(api)
    await run_worker()
    assert (await job_view(api, changed["id"]))["files_done"] == 1  # one file, read once, for both sources
    texts = [hit["text"] for hit in await search(api, "when does the archive move to the new cluster")]
    assert not any("in May" in text for text in texts), texts
    assert any("postponed" in text for text in texts)
    assert_in_step(await check(api))


async def test_one_worker_watches_a_source_and_another_takes_over_when_it_stops(
    api: TestClient[Any, Any], docs: Path, runtime: Runtime, redis_url: str
) -> None:
    make_notes(docs)
    await create_job(api, docs, "team")  # no worker needed: the source exists once the job does
    (source,) = (await (await api.get("/api/collections/team/sources")).json())["sources"]
    await api.patch(f"/api/collections/team/sources/{source['id']}", json={"watch": True})
    redis = ArqRedis.from_url(redis_url)
    first, second = Watchers(runtime, redis, "worker-1"), Watchers(runtime, redis, "worker-2")
    try:
        await first.start()
        await second.start()

        async def one_watches() -> bool:
            return len(first.watching + second.watching) == 1

        await wait_until(one_watches, 20, "one of the two workers to watch the source")
        holder, other = (first, second) if first.watching else (second, first)
        lease = runtime.settings.redis_names.watch_lease(source["id"])
        assert (await redis.get(lease)) == (b"worker-1" if holder is first else b"worker-2")
        await holder.stop()  # the worker stops: its lease goes with it

        async def taken_over() -> bool:
            return other.watching == [source["id"]] and not holder.watching

        await wait_until(taken_over, 20, "the other worker to take the source over")
    finally:
        await first.stop()
        await second.stop()
        await redis.aclose()
