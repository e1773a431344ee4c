"""Hostile files through the real extraction processes: each fails alone, with a reason naming its
limit, and neither the worker nor the next file notices. Every file is real and generated here;
nothing is mocked. The last test runs a few of them beside normal notes through the API."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp.test_utils import TestClient

from semantik.indexing import sandbox, sandbox_child
from semantik.indexing.extract import ExtractionError
from semantik.indexing.sandbox import ExtractPool, SandboxConfig, extraction_pool
from semantik.inference.embedder import default_model_path
from semantik.settings import Settings
from semantik.store.engine import EngineProcess
from tests.conftest import RuntimeFactory
from tests.helpers import create_job, job_view, loop_gaps, wait_until, write
from tests.test_extract import docx_with_body, page_tree_bomb_pdf, slow_pdf, zip_bomb_docx

NOTE = "Rotate the deploy keys every ninety days and record who holds each one."


class PoolFactory(Protocol):
    def __call__(self, size: int = ..., **overrides: Any) -> ExtractPool: ...


@pytest.fixture
def settings(tmp_path: Path, docs: Path, redis_url: str) -> Settings:
    """The suite's settings with limits a test can reach in seconds (used by ``api`` and ``run_worker``)."""
    return Settings(
        data_dir=tmp_path / "data",
        allowed_roots=[docs],
        redis_url=redis_url,
        worker_poll_delay_s=0.05,
        log_format="json",
        extract_timeout_s=5,
        extract_max_unzipped_mb=64,
        extract_max_chars=10**9,  # slow.pdf must run into the time limit, not this one
    )


@pytest.fixture
async def make_pool(tmp_path: Path, docs: Path) -> AsyncIterator[PoolFactory]:
    pools: list[ExtractPool] = []

    def make(size: int = 1, **overrides: Any) -> ExtractPool:
        settings = Settings(data_dir=tmp_path / "data", allowed_roots=[docs], **overrides)
        pool = ExtractPool(SandboxConfig.from_settings(settings, default_model_path()), size)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


async def extract(pool: ExtractPool, path: Path | str | bytes) -> list[str]:
    """What the pipeline does with one file: read (hash), then extract its chunks."""
    async with pool.lease() as extraction:
        await extraction.read(os.fsencode(path) if isinstance(path, Path) else path)
        return [chunk.text for chunk in await extraction.extract()]


async def failure(pool: ExtractPool, path: Path) -> tuple[str, float]:
    """The reason ``path`` fails with, and how long that took."""
    began = time.monotonic()
    with pytest.raises(ExtractionError) as failed:
        await extract(pool, path)
    return str(failed.value), time.monotonic() - began


def all_gone(pids: list[int]) -> Callable[[], bool]:
    return lambda: all(process_gone(pid) for pid in pids)


def process_gone(pid: int) -> bool:
    """It has exited (a zombie whose parent is gone counts: only init can reap it). A process reaped
    between opening its status and reading it fails the read with ESRCH: gone too."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


def own_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_children_are_lean_and_load_no_model(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool(size=2)
    write(docs / "note.txt", NOTE)
    assert await extract(pool, docs / "note.txt") == [NOTE]
    async with pool.lease() as first, pool.lease() as second:
        assert {first.pid, second.pid} == set(pool.pids) and first.pid != os.getpid()
        for pid in pool.pids:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "torch" not in maps and "transformers" not in maps
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            assert int(status["VmSize"].split()[0]) < 512 * 1024  # KiB: far below the 2048 MB limit
            assert status["Threads"].strip() == "1"


async def test_names_that_are_not_utf8_reach_the_child_intact(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool()
    raw = os.fsencode(docs) + b"/r\xe9sum\xe9.txt"  # Latin-1 bytes: a str with surrogate escapes here
    with open(raw, "wb") as out:
        out.write(NOTE.encode())
    assert await extract(pool, os.fsdecode(raw)) == [NOTE]


def test_children_die_with_their_worker(docs: Path) -> None:
    # A worker that gets SIGKILL runs no cleanup: its children, even one deep in a file, must not
    # outlive it (an idle one would see its pipe close; a busy one would not).
    (docs / "slow.pdf").write_bytes(slow_pdf(pages=20))
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from semantik.indexing.sandbox import ExtractPool, SandboxConfig\n"
        "from semantik.inference.embedder import default_model_path\n"
        "from semantik.settings import Settings\n"
        "async def main():\n"
        "    settings = Settings(allowed_roots=[Path(sys.argv[1]).parent])\n"
        "    pool = ExtractPool(SandboxConfig.from_settings(settings, default_model_path()), 1)\n"
        "    async with pool.lease() as extraction:\n"
        "        await extraction.read(sys.argv[1])\n"
        "        busy = asyncio.create_task(extraction.extract())\n"
        "        await asyncio.sleep(0.3)\n"
        "        print('child', extraction.pid, flush=True)\n"
        "        await busy\n"
        "asyncio.run(main())\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script, str(docs / "slow.pdf")], stdout=subprocess.PIPE)
    try:
        assert worker.stdout is not None
        lines = iter(worker.stdout.readline, b"")
        pid = next(int(line.split()[1]) for line in lines if line.startswith(b"child "))
        assert not process_gone(pid)
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 10
    while not process_gone(pid):
        assert time.monotonic() < deadline, f"child {pid} outlived its worker"
        time.sleep(0.05)


async def test_zip_bomb_docx_fails_naming_the_limit_and_harms_nothing(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool(extract_max_unzipped_mb=64)
    bomb = zip_bomb_docx(docs / "bomb.docx", unzipped_mb=300)  # 300 MB of <w:p/>
    assert bomb.stat().st_size < 1024 * 1024
    write(docs / "note.txt", NOTE)
    assert await extract(pool, docs / "note.txt") == [NOTE]
    (pid,) = pool.pids
    rss_before = own_rss_mb()
    reason, took_s = await failure(pool, bomb)
    assert reason == "would unzip to more than 64 MB (SEMANTIK_EXTRACT_MAX_UNZIPPED_MB)"
    assert took_s < 10
    assert own_rss_mb() - rss_before < 50  # the worker never held the inflated document
    assert await extract(pool, docs / "note.txt") == [NOTE]
    assert pool.pids == [pid]  # a refusal is not a crash: the same process goes on


async def test_page_tree_bomb_pdf_fails_on_the_page_limit_quickly(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool()
    write(docs / "note.txt", NOTE)
    await extract(pool, docs / "note.txt")  # the process is up: what follows times the file alone
    (docs / "pages.pdf").write_bytes(page_tree_bomb_pdf(declared_count=1))  # 90,000 pages, /Count 1
    reason, took_s = await failure(pool, docs / "pages.pdf")
    assert reason == "more than 5000 pages (SEMANTIK_EXTRACT_MAX_PAGES)"
    assert took_s < 2


async def test_file_swapped_for_a_fifo_after_the_scan_fails_without_hanging(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool()
    path = write(docs / "notes.txt", NOTE)  # what the scan saw
    path.unlink()
    os.mkfifo(path)  # what the worker finds: opening it to read would wait for a writer forever
    reason, took_s = await asyncio.wait_for(failure(pool, path), 30)
    assert reason == "not a regular file (fifo)"
    assert took_s < 10


async def test_file_swapped_for_a_symlink_to_dev_zero_fails(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool()
    path = write(docs / "notes.txt", NOTE)
    path.unlink()
    path.symlink_to("/dev/zero")
    reason, _ = await asyncio.wait_for(failure(pool, path), 30)
    assert reason == "leads outside the allowed roots (SEMANTIK_ALLOWED_ROOTS)"


async def test_file_or_folder_swapped_for_a_symlink_out_of_the_roots_is_refused(
    make_pool: PoolFactory, docs: Path, tmp_path: Path
) -> None:
    pool = make_pool()
    outside = tmp_path / "outside"
    secret = write(outside / "plan.txt", "The acquisition closes on Friday; tell nobody.")
    file = write(docs / "plan.txt", NOTE)  # what the scan saw
    in_folder = write(docs / "team" / "plan.txt", NOTE)
    file.unlink()
    file.symlink_to(secret)  # then the file became a link to a secret...
    shutil.rmtree(docs / "team")
    (docs / "team").symlink_to(outside)  # ...and the folder a link to the secret's folder
    for path in (file, in_folder):
        with pytest.raises(ExtractionError) as refused:
            await extract(pool, path)
        assert str(refused.value) == "leads outside the allowed roots (SEMANTIK_ALLOWED_ROOTS)"


async def test_eight_megabytes_on_one_line_keep_chunks_small_and_the_loop_free(
    make_pool: PoolFactory, docs: Path
) -> None:
    pool = make_pool(chunk_max_chars=2000)
    rng = random.Random(3)
    words = ["alpha", "beta", "gamma", "3.14159", "e-mail", "naïve", "zeta"]
    text = " ".join(rng.choice(words) for _ in range(1_300_000)) + " " + "x" * 300_000 + " the end"
    write(docs / "one-line.txt", text)
    assert len(text) > 8_000_000
    async with loop_gaps(0.01) as gaps:
        chunks = await extract(pool, docs / "one-line.txt")
    assert max(len(chunk) for chunk in chunks) <= 2000
    assert "".join(chunk for chunk in chunks if set(chunk) == {"x"}) == "x" * 300_000  # the run, all of it
    assert chunks[-1].endswith("the end")
    assert len(gaps) > 50 and max(gaps) < 0.5, max(gaps)


async def test_extraction_past_the_timeout_is_killed_and_replaced(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool(extract_timeout_s=2, extract_max_chars=10**9)
    (docs / "slow.pdf").write_bytes(slow_pdf(pages=20))  # valid, ~20 s of text extraction
    write(docs / "note.txt", NOTE)
    assert await extract(pool, docs / "note.txt") == [NOTE]
    (pid,) = pool.pids
    reason, took_s = await failure(pool, docs / "slow.pdf")
    assert reason == "extraction took longer than 2 s (SEMANTIK_EXTRACT_TIMEOUT_S)"
    assert took_s < 6
    await wait_until(lambda: process_gone(pid), 10, f"process {pid} to be gone")
    assert await extract(pool, docs / "note.txt") == [NOTE]  # on a fresh process
    assert pool.pids and pid not in pool.pids


async def test_a_child_killed_mid_file_fails_that_file_only(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool()
    (docs / "slow.pdf").write_bytes(slow_pdf(pages=20))
    write(docs / "note.txt", NOTE)
    async with pool.lease() as extraction:
        await extraction.read(str(docs / "slow.pdf"))
        busy = asyncio.create_task(extraction.extract())
        await asyncio.sleep(0.5)
        assert not busy.done()
        os.kill(extraction.pid, signal.SIGKILL)  # as the kernel's OOM killer would
        with pytest.raises(ExtractionError) as failed:
            await busy
    assert str(failed.value) == (
        "the extraction process was killed (SIGKILL): it probably needs more than 2048 MB of memory"
        " (SEMANTIK_EXTRACT_MEMORY_MB)"
    )
    assert await extract(pool, docs / "note.txt") == [NOTE]


async def test_cancelling_the_awaiting_task_kills_the_child(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool()
    (docs / "slow.pdf").write_bytes(slow_pdf(pages=20))
    write(docs / "note.txt", NOTE)
    await extract(pool, docs / "note.txt")
    (pid,) = pool.pids
    job = asyncio.create_task(extract(pool, docs / "slow.pdf"))
    await asyncio.sleep(0.5)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    await wait_until(lambda: process_gone(pid), 5, f"process {pid} to be gone")
    assert await extract(pool, docs / "note.txt") == [NOTE]


async def test_a_file_that_needs_more_memory_than_the_limit_fails_with_it(make_pool: PoolFactory, docs: Path) -> None:
    pool = make_pool(extract_memory_mb=256)
    rng = random.Random(9)
    # About 50 MB of paragraphs, 10 MB on disk: lxml's tree of it needs far more than 256 MB.
    body = (
        b"".join(b"<w:p><w:r><w:t>%d %d</w:t></w:r></w:p>" % (rng.getrandbits(40), n) for n in range(10_000))
        for _ in range(100)
    )
    docx_with_body(docs / "large.docx", body)
    write(docs / "note.txt", NOTE)
    reason, _ = await failure(pool, docs / "large.docx")
    assert reason == "needs more than 256 MB of memory (SEMANTIK_EXTRACT_MEMORY_MB)"
    assert await extract(pool, docs / "note.txt") == [NOTE]


async def test_extraction_processes_stay_a_while_after_the_last_job(make_runtime: RuntimeFactory, docs: Path) -> None:
    """Jobs running at once share one pool. The next job within SEMANTIK_EXTRACT_IDLE_S finds its
    processes started (no half-second start); then they are killed, and a later job starts fresh ones."""
    write(docs / "note.txt", NOTE)
    runtime = await make_runtime(extract_idle_s=4.0)
    shared = extraction_pool(runtime)
    assert extraction_pool(runtime) is shared
    async with shared.use() as pool, shared.use() as same:
        assert same is pool  # jobs running on one worker share its processes
        assert await extract(pool, docs / "note.txt") == [NOTE]
        await wait_until(lambda: len(pool.pids) == 2, 30, "both processes")
        pids = pool.pids
    await asyncio.sleep(1.0)
    assert not any(process_gone(pid) for pid in pids)
    async with shared.use() as again:
        assert again is pool and again.pids == pids
        assert await extract(again, docs / "note.txt") == [NOTE]
    idle_from = time.monotonic()
    await wait_until(lambda: all(process_gone(pid) for pid in pids), 10, f"processes {pids} to be gone")
    assert time.monotonic() - idle_from >= 3.5  # kept SEMANTIK_EXTRACT_IDLE_S after the last job
    with pytest.raises(ExtractionError, match="shutting down"):
        await extract(pool, docs / "note.txt")
    async with shared.use() as fresh:
        assert await extract(fresh, docs / "note.txt") == [NOTE]
        assert not set(fresh.pids) & set(pids)


async def test_without_idle_time_or_with_the_runtime_closing_the_processes_go_at_once(
    make_runtime: RuntimeFactory, docs: Path
) -> None:
    write(docs / "note.txt", NOTE)
    for idle_s, close_runtime in ((0.0, False), (300.0, True)):
        runtime = await make_runtime(extract_idle_s=idle_s)
        async with extraction_pool(runtime).use() as pool:
            assert await extract(pool, docs / "note.txt") == [NOTE]
            await wait_until(lambda: len(pool.pids) == 2, 30, "both processes")
            pids = pool.pids
        if close_runtime:
            await runtime.close()
        await wait_until(all_gone(pids), 5, f"processes {pids} to be gone")


async def test_a_process_that_grew_is_replaced_when_its_pool_goes_idle(
    make_runtime: RuntimeFactory, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process left holding a large file's memory is not kept idle with it: a fresh one replaces it
    (grown by more than ``IDLE_GROWTH_MB``; set here to half of what this file adds)."""
    write(docs / "note.txt", NOTE)
    write(docs / "large.txt", " ".join(f"word{n}" for n in range(600_000)))
    shared = extraction_pool(await make_runtime(extract_idle_s=300.0, extract_workers=1, extract_timeout_s=60))
    async with shared.use() as pool:
        await pool.started()
        first = pool.pids
        fresh_mb = sandbox._rss_mb(first[0])
        assert await extract(pool, docs / "note.txt") == [NOTE]
    async with shared.use() as pool:
        assert pool.pids == first  # an ordinary process is kept as it is
        assert len(await extract(pool, docs / "large.txt")) > 1000
        assert pool.pids == first  # not retired for nearing its memory limit: kept so far
        grown_mb = sandbox._rss_mb(first[0])
        assert grown_mb > fresh_mb + 20, (fresh_mb, grown_mb)
        monkeypatch.setattr(sandbox, "IDLE_GROWTH_MB", (grown_mb - fresh_mb) / 2)
    await wait_until(lambda: process_gone(first[0]), 5, "the grown process to go")
    await wait_until(lambda: pool.pids and pool.pids != first, 30, "a fresh process")
    await pool.started()
    fresh = pool.pids
    assert sandbox._rss_mb(fresh[0]) < (fresh_mb + grown_mb) / 2
    async with shared.use() as pool:
        assert pool.pids == fresh
        assert await extract(pool, docs / "note.txt") == [NOTE]


async def test_a_large_flat_page_is_read_whole_in_time(make_pool: PoolFactory, docs: Path) -> None:
    """100,000 paragraphs side by side (4.6 MB of HTML): every one extracted, well within the time
    limit. It ran past it when a line break was inserted into the page's tree beside each block."""
    pool = make_pool()
    paragraphs = [f"paragraph p{n} <b>of</b> the <i>export</i>" for n in range(100_000)]
    write(docs / "export.html", "<html><body>" + "".join(f"<p>{p}</p>" for p in paragraphs) + "</body></html>")
    text = "\n".join(await extract(pool, docs / "export.html"))
    assert all(f"paragraph p{n} of the export" in text for n in range(0, 100_000, 997)), text[:300]
    assert "paragraph p99999 of the export" in text


async def test_a_job_with_hostile_files_beside_notes(
    api: TestClient[Any, Any], docs: Path, run_worker: Callable[[], Awaitable[Any]]
) -> None:
    notes = {
        "keys.txt": NOTE,
        "garden.md": "# Garden\n\nWater the tomatoes in the evening and mulch the beds against the heat.",
        "bread.txt": "Sourdough needs a lively starter, a long cold proof and a very hot oven.",
    }
    for name, text in notes.items():
        write(docs / name, text)
    zip_bomb_docx(docs / "bomb.docx", unzipped_mb=300)
    (docs / "pages.pdf").write_bytes(page_tree_bomb_pdf())
    (docs / "slow.pdf").write_bytes(slow_pdf(pages=30))
    write(docs / "run.txt", "Base64 follows. " + "QUJD" * 5000 + " and then " + "a" * 20_000)
    job = await create_job(api, docs, "hostile")

    await run_worker()

    done = await job_view(api, job["id"])
    listing = await (await api.get(f"/api/jobs/{job['id']}/files")).json()
    files = {Path(f["path"]).name: (f["status"], f["error"]) for f in listing["files"]}
    assert done["status"] == "completed_with_errors", (done, files)
    assert files["bomb.docx"] == ("failed", "would unzip to more than 64 MB (SEMANTIK_EXTRACT_MAX_UNZIPPED_MB)")
    assert files["pages.pdf"] == ("failed", "more than 5000 pages (SEMANTIK_EXTRACT_MAX_PAGES)")
    assert files["slow.pdf"] == ("failed", "extraction took longer than 5 s (SEMANTIK_EXTRACT_TIMEOUT_S)")
    assert {name: files[name] for name in [*notes, "run.txt"]} == {name: ("done", None) for name in [*notes, "run.txt"]}
    assert {f["path"] for f in done["failed_files"]} == {str(docs / n) for n in ("bomb.docx", "pages.pdf", "slow.pdf")}
    for query, name in [("how often do we rotate keys?", "keys.txt"), ("baking bread", "bread.txt")]:
        response = await api.post("/api/search", json={"query": query, "collection": "hostile", "k": 3})
        results = (await response.json())["results"]
        assert Path(results[0]["path"]).name == name, results
    response = await api.post("/api/search", json={"query": "aaaa", "collection": "hostile", "k": 100})
    assert all(len(result["text"]) <= 4000 for result in (await response.json())["results"])


async def test_a_child_that_cannot_start_fails_the_file_with_why(docs: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", allowed_roots=[docs])
    pool = ExtractPool(SandboxConfig.from_settings(settings, tmp_path / "no-model"), 1)
    write(docs / "note.txt", NOTE)
    try:
        with pytest.raises(ExtractionError, match=r"did not start: .* \(model folder .*no-model\)"):
            await extract(pool, docs / "note.txt")
    finally:
        pool.close()


async def test_a_small_text_file_comes_with_its_read_and_other_files_wait_for_extract(
    make_pool: PoolFactory, docs: Path
) -> None:
    """One request for a small note: its chunks arrive with its hash, so extracting them needs no
    process at all (the child is killed in between). A PDF, or a text file past ``AT_ONCE_BYTES``,
    still takes its own ``extract``; a small text file that cannot be extracted gets its hash from
    ``read`` and fails in ``extract``, with the reason it always had."""
    pool = make_pool()
    write(docs / "note.txt", NOTE)
    (docs / "slow.pdf").write_bytes(slow_pdf(pages=1))
    write(docs / "long.txt", (NOTE + "\n") * (sandbox_child.AT_ONCE_BYTES // len(NOTE) + 1))
    binary = b"\x00\x01\x02 not text"
    (docs / "binary.txt").write_bytes(binary)

    async def read_then_kill(path: Path) -> list[Any]:
        async with pool.lease() as extraction:
            await extraction.read(str(path))
            pid = extraction.pid
            os.kill(pid, signal.SIGKILL)
            await wait_until(lambda: pid not in pool.pids, 10, "the child's death to reach the pool")
            return await extraction.extract()

    assert [chunk.text for chunk in await read_then_kill(docs / "note.txt")] == [NOTE]
    for path in (docs / "slow.pdf", docs / "long.txt"):
        with pytest.raises(ExtractionError, match=r"killed \(SIGKILL\)"):
            await read_then_kill(path)
    async with pool.lease() as extraction:
        assert await extraction.read(str(docs / "binary.txt")) == hashlib.sha256(binary).hexdigest()
        with pytest.raises(ExtractionError, match=r"^binary content \(NUL bytes\) in a text file$"):
            await extraction.extract()
    assert await extract(pool, docs / "note.txt") == [NOTE]


async def test_children_run_this_code_whatever_folder_the_worker_runs_in(
    make_pool: PoolFactory, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started in a folder that holds another package called semantik (a checkout, a
    user's files): its extraction processes and its vector engine still run this code."""
    shadow = tmp_path / "cwd" / "semantik"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('the package in the current folder ran')\n")
    monkeypatch.chdir(shadow.parent)
    write(docs / "note.txt", NOTE)
    assert await extract(make_pool(), docs / "note.txt") == [NOTE]
    engine = EngineProcess(tmp_path / "vectors")
    await engine.start()
    await engine.close()
