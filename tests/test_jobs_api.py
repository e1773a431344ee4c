"""A job through the API with a real worker, the real model and embedded Qdrant; then search it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from semantik.runtime import Runtime
from tests.helpers import JobView, count_points, create_job, write
from tests.helpers import job_view as get_job

TOPICS = {
    "biology.txt": "Mitochondria are the powerhouse of the cell: they make ATP by oxidative phosphorylation.",
    "baking/sourdough.md": "# Sourdough\n\nBake sourdough bread from flour, water, salt and a lively starter culture.",
    "space/rockets.html": "<html><head><title>Rockets</title><script>var hidden = 'javascript noise';</script>"
    "</head><body><h1>Rockets</h1><p>Liquid-fuel rockets burn kerosene with liquid oxygen to reach orbit.</p>"
    "</body></html>",
    "law/contracts.txt": "A contract needs an offer, acceptance and consideration to be enforceable in court.",
}


def make_corpus(docs: Path) -> None:
    for name, text in TOPICS.items():
        write(docs / name, text)


async def post_job(api: TestClient[Any, Any], docs: Path, collection: str = "team", **extra: Any) -> JobView:
    return await create_job(api, docs, collection, **extra)


async def search(api: TestClient[Any, Any], query: str, k: int = 5) -> list[dict[str, Any]]:
    response = await api.post("/api/search", json={"query": query, "collection": "team", "k": k})
    assert response.status == 200, await response.text()
    return list((await response.json())["results"])


async def test_job_lifecycle_and_search(api: TestClient[Any, Any], docs: Path, run_worker: Any) -> None:
    make_corpus(docs)
    job = await post_job(api, docs, name="first")
    assert job["status"] == "queued"
    assert job["collection"] == "team" and job["name"] == "first"
    assert job["files_total"] == 0  # the request never walks the folder

    await run_worker()

    done = await get_job(api, job["id"])
    assert done["status"] == "completed", done
    assert (done["files_total"], done["files_done"], done["files_failed"], done["files_skipped"]) == (4, 4, 0, 0)
    assert done["chunks"] == 4
    assert done["started_at"] and done["finished_at"] and done["error"] is None

    results = await search(api, "how do cells produce energy?")
    assert results[0]["path"] == str(docs / "biology.txt")
    assert results[0]["chunk_index"] == 0
    assert "ATP" in results[0]["text"]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    rockets = await search(api, "spacecraft propellant", k=1)
    assert rockets[0]["path"].endswith("rockets.html")
    assert "javascript noise" not in rockets[0]["text"]  # scripts are not text

    files = await (await api.get(f"/api/jobs/{job['id']}/files")).json()
    assert sorted(f["path"] for f in files["files"]) == sorted(str(docs / name) for name in TOPICS)
    assert all(f["status"] == "done" and f["chunks"] == 1 and len(f["sha256"]) == 64 for f in files["files"])

    collections = await (await api.get("/api/collections")).json()
    assert collections["collections"] == [
        {
            "name": "team",
            "model": "all-MiniLM-L6-v2",
            "dim": 384,
            "created_at": collections["collections"][0]["created_at"],
            "documents": 4,
            "chunks": 4,
            "sources": 1,
            "sync_interval_s": None,
        }
    ]
    listed = await (await api.get("/api/jobs")).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]


async def test_rerun_on_unchanged_folder_indexes_nothing_new(
    api: TestClient[Any, Any], docs: Path, run_worker: Any, runtime: Runtime
) -> None:
    make_corpus(docs)
    first = await post_job(api, docs)
    await run_worker()
    assert (await get_job(api, first["id"]))["status"] == "completed"
    points = await count_points(runtime, "team")
    assert points == 4

    second = await post_job(api, docs)
    await run_worker()
    again = await get_job(api, second["id"])
    assert again["status"] == "completed"
    assert (again["files_total"], again["files_done"], again["files_skipped"], again["chunks"]) == (4, 0, 4, 0)
    files = (await (await api.get(f"/api/jobs/{second['id']}/files")).json())["files"]
    assert {f["error"] for f in files} == {"unchanged since last indexed"}
    assert await count_points(runtime, "team") == points


async def test_changed_file_replaces_its_old_vectors(
    api: TestClient[Any, Any], docs: Path, run_worker: Any, runtime: Runtime
) -> None:
    make_corpus(docs)
    await post_job(api, docs)
    await run_worker()
    write(docs / "biology.txt", "Photosynthesis in chloroplasts turns sunlight, water and carbon dioxide into sugar.")
    job = await post_job(api, docs)
    await run_worker()
    done = await get_job(api, job["id"])
    assert (done["files_done"], done["files_skipped"]) == (1, 3)
    assert await count_points(runtime, "team") == 4  # the old version's point is gone, not duplicated
    best = (await search(api, "how do plants use sunlight", k=1))[0]
    assert best["path"] == str(docs / "biology.txt") and "chloroplasts" in best["text"]
    texts = [hit["text"] for hit in await search(api, "mitochondria ATP", k=10)]
    assert not any("Mitochondria" in text for text in texts)


async def test_corrupt_file_fails_that_file_not_the_job(api: TestClient[Any, Any], docs: Path, run_worker: Any) -> None:
    make_corpus(docs)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf at all\n%%EOF")
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02\x03 binary junk \x00\xff")
    (docs / "empty.md").write_text("   \n\n ")
    job = await post_job(api, docs)
    await run_worker()
    done = await get_job(api, job["id"])
    assert done["status"] == "completed_with_errors"
    assert (done["files_total"], done["files_done"], done["files_failed"], done["files_skipped"]) == (7, 4, 2, 1)
    reasons = {Path(f["path"]).name: f["error"] for f in done["failed_files"]}
    assert set(reasons) == {"broken.pdf", "binary.txt"}
    assert "PDF" in reasons["broken.pdf"]
    assert "binary" in reasons["binary.txt"]
    skipped = (await (await api.get(f"/api/jobs/{job['id']}/files?status=skipped")).json())["files"]
    assert [(Path(f["path"]).name, f["error"]) for f in skipped] == [("empty.md", "no text to index")]
    assert (await search(api, "bread starter culture", k=1))[0]["path"].endswith("sourdough.md")


async def test_include_exclude_and_non_recursive(api: TestClient[Any, Any], docs: Path, run_worker: Any) -> None:
    make_corpus(docs)
    job = await post_job(api, docs, include=["*.txt", "*.md"], exclude=["law/*"])
    flat = await post_job(api, docs, recursive=False, collection="flat")
    await run_worker()
    files = (await (await api.get(f"/api/jobs/{job['id']}/files")).json())["files"]
    assert sorted(Path(f["path"]).name for f in files) == ["biology.txt", "sourdough.md"]
    flat_files = (await (await api.get(f"/api/jobs/{flat['id']}/files")).json())["files"]
    assert [Path(f["path"]).name for f in flat_files] == ["biology.txt"]


async def test_directory_removed_before_the_worker_runs_fails_the_job(
    api: TestClient[Any, Any], docs: Path, run_worker: Any
) -> None:
    target = docs / "gone"
    write(target / "a.txt", "some text")
    job = await post_job(api, target)
    (target / "a.txt").unlink()
    target.rmdir()
    await run_worker()
    done = await get_job(api, job["id"])
    assert done["status"] == "failed"
    assert "does not exist" in done["error"]
