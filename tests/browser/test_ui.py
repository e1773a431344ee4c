"""The web UI in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

Screenshots of every page go to `.screenshots/` at the repository root (git-ignored).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from pydantic import SecretStr
from redis.asyncio import Redis

from semantik.domain import EventType
from semantik.events.hub import text_frame
from semantik.events.publish import envelope
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.app import create_app
from semantik.web.appkeys import HUB
from tests.conftest import RuntimeFactory, WorkerStarter
from tests.helpers import write

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]  # fmt: skip
SHOTS = Path(__file__).resolve().parents[2] / ".screenshots"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        await launched.close()


@pytest.fixture
async def server(aiohttp_server: Any, settings: Settings, runtime: Runtime, start_worker: WorkerStarter) -> str:
    start_worker(runtime)
    srv = await aiohttp_server(create_app(settings, runtime=runtime))
    return str(srv.make_url("")).rstrip("/")


async def open_page(browser: Browser, url: str, width: int = 1280) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return page, errors


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def create_from_form(page: Page, collection: str, directory: str) -> None:
    await page.get_by_label("Collection").fill(collection)
    await page.get_by_label("Directory").fill(directory)
    await page.get_by_role("button", name="Start job").click()


def corpus(docs: Path) -> None:
    write(docs / "volcanoes.md", "# Volcanoes\n\nMagma rises through the crust and erupts as lava and ash.")
    write(docs / "baking.txt", "Sourdough bread needs flour, water, salt and a lively starter.")
    write(docs / "finance.txt", "Compound interest makes savings grow exponentially over decades.")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")


async def test_create_watch_search_and_monitor(browser: Browser, server: str, docs: Path) -> None:
    corpus(docs)
    page, errors = await open_page(browser, server + "/#/jobs")
    await expect(page.get_by_text("No jobs yet")).to_be_visible()
    await shot(page, "jobs-empty")
    await create_from_form(page, "ui", str(docs))
    await expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    await expect(page.locator(".status")).to_have_text("completed with errors", timeout=60_000)
    await expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    await expect(page.locator("#files")).to_have_text("4/4")
    await expect(page.locator("ul.failures")).to_contain_text("broken.pdf")
    await shot(page, "job-detail")

    await page.get_by_role("link", name="Jobs", exact=True).click()
    await expect(page.locator("tbody tr")).to_have_count(1)
    await expect(page.locator("tbody")).to_contain_text("completed with errors")
    await shot(page, "jobs-list")

    await page.get_by_role("link", name="Search").click()
    await expect(page.get_by_label("Collection")).to_have_value("ui")
    await page.get_by_label("Query").fill("what happens when a volcano erupts")
    await page.keyboard.press("Enter")  # keyboard works: the form submits on Enter
    first = page.locator(".hit").first
    await expect(first).to_contain_text("volcanoes.md")
    await expect(first.locator("mark").first).to_be_visible()
    await expect(page.locator("#s-status")).to_contain_text("results in")
    await shot(page, "search")

    await page.get_by_role("link", name="Monitor").click()
    await expect(page.get_by_text("Workers alive")).to_be_visible()
    await expect(page.locator("table")).to_contain_text("cpu/")
    await expect(page.locator("ul.failures")).to_contain_text("broken.pdf")
    await shot(page, "monitor")
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.get_by_role("link", name="Jobs", exact=True).click()
    await expect(page.locator("tbody tr")).to_have_count(1)
    await shot(page, "jobs-phone")
    assert errors == []


async def test_validation_error_next_to_the_field(browser: Browser, server: str, docs: Path, tmp_path: Path) -> None:
    page, errors = await open_page(browser, server + "/#/jobs")
    await create_from_form(page, "ui", str(tmp_path / "elsewhere"))
    await expect(page.locator("#e-directory")).to_contain_text("outside the allowed roots")
    await expect(page.get_by_label("Directory")).to_have_attribute("aria-invalid", "true")
    await create_from_form(page, "bad name!", str(docs))
    await expect(page.locator("#e-collection")).to_contain_text("letters, digits")
    await shot(page, "jobs-validation")
    assert errors == [] or all("422" in e or "403" in e for e in errors)


async def test_cancel_a_running_job(browser: Browser, server: str, docs: Path) -> None:
    for i in range(80):
        write(docs / f"long{i:03}.txt", f"Paragraph {i} about a long and winding history. " * 150)
    page, _ = await open_page(browser, server + "/#/jobs")
    await create_from_form(page, "slow", str(docs))
    await expect(page.locator(".status")).to_have_text("running", timeout=60_000)
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.locator(".status")).to_have_text("cancelled", timeout=30_000)
    await expect(page.get_by_role("button", name="Retry")).to_be_enabled()
    await shot(page, "job-cancelled")


async def test_sync_button_mirrors_the_folder_and_copies_show_every_path(
    browser: Browser, server: str, docs: Path
) -> None:
    corpus(docs)
    page, errors = await open_page(browser, server + "/#/jobs")
    await create_from_form(page, "ui", str(docs))
    await expect(page.locator(".status")).to_have_text("completed with errors", timeout=60_000)
    (docs / "finance.txt").unlink()
    write(docs / "tides.txt", "Tides rise and fall twice a day, pulled by the moon's gravity.")
    (docs / "baking-copy.txt").write_text((docs / "baking.txt").read_text())
    await page.get_by_role("link", name="Search").click()
    await expect(page.get_by_label("Collection")).to_have_value("ui")
    await page.get_by_role("button", name="Sync").click()
    await expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    await expect(page.locator(".status")).to_have_text(re.compile("completed"), timeout=60_000)
    await expect(page.locator("#sync-counts")).to_have_text(re.compile(r"^\d+ / 1$"))  # finance.txt removed
    await page.get_by_role("link", name="Search").click()
    await page.get_by_label("Query").fill("sourdough starter flour and salt")
    await page.keyboard.press("Enter")
    first = page.locator(".hit").first
    await expect(first).to_contain_text("baking")
    await expect(first.locator(".also")).to_contain_text("baking")  # the copy is named beside the original
    await page.get_by_label("Query").fill("savings and compound interest")
    await page.keyboard.press("Enter")
    await expect(page.locator("#s-status")).to_contain_text("results in")
    await expect(page.locator("#results")).not_to_contain_text("finance.txt")
    await shot(page, "search-after-sync")
    assert errors == []


async def test_hits_show_their_place_the_marked_passage_and_take_filters(
    browser: Browser, server: str, docs: Path
) -> None:
    corpus_dir = Path(__file__).resolve().parents[1] / "corpus"
    for name in ("report.pdf", "slides.pptx", "notes.md", "report.docx"):
        shutil.copyfile(corpus_dir / name, docs / name)
    page, errors = await open_page(browser, server + "/#/jobs")
    await create_from_form(page, "docs", str(docs))
    await expect(page.locator(".status")).to_have_text("completed", timeout=60_000)
    await page.get_by_role("link", name="Search").click()
    await page.get_by_label("Query").fill("teal pangolin survey")
    await page.keyboard.press("Enter")
    first = page.locator(".hit").first
    await expect(first.locator(".place")).to_have_text("report.pdf · p. 2 · Results \u203a Measurements")
    await expect(first.locator("mark")).to_have_text(["teal", "pangolin", "survey"])
    await shot(page, "search-place")
    await page.get_by_text("Filters").click()
    await page.get_by_label("File types").fill("pptx")
    await page.get_by_label("Query").fill("quarter review budget")
    await page.keyboard.press("Enter")
    await expect(page.locator("#s-status")).to_contain_text("results in")
    await expect(page.locator(".hit .place")).to_contain_text(["slides.pptx · slide"])
    await expect(page.locator(".hit .place .name")).not_to_contain_text(["report", "notes"])
    await page.get_by_label("File types").fill("")
    await page.get_by_label("One result per document").check()
    await page.get_by_label("Query").fill("harbour authority equipment inspection")
    await page.keyboard.press("Enter")
    await expect(page.locator("#s-status")).to_contain_text("results in")
    names = await page.locator(".hit .place .name").all_inner_texts()
    assert len(names) == len(set(names)), names
    await expect(page.locator(".hit .more").first).to_contain_text("more in this document")
    await shot(page, "search-by-document")
    assert errors == []


async def test_token_prompt(browser: Browser, aiohttp_server: Any, make_runtime: RuntimeFactory) -> None:
    runtime = await make_runtime(api_token=SecretStr("ui-token-0123456789"))
    srv = await aiohttp_server(create_app(runtime.settings, runtime=runtime))
    page, _ = await open_page(browser, str(srv.make_url("/#/jobs")))
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await shot(page, "token-prompt")
    await page.get_by_role("textbox", name="Token").fill("ui-token-0123456789")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_text("No jobs yet")).to_be_visible()


HOSTILE = "<img src=x onerror=window.__pwned=1><b class=injected>bold</b>"


async def test_hostile_fields_are_shown_as_text(
    browser: Browser, aiohttp_server: Any, settings: Settings, runtime: Runtime, docs: Path
) -> None:
    """Every field the UI shows is text, numbers included: an event whose counters hold HTML (the
    relay drops such events; here they are handed to the sockets directly, as if one got through)
    and a worker record in Redis whose fields do."""
    srv = await aiohttp_server(create_app(settings, runtime=runtime))
    hub = srv.app[HUB]
    url = str(srv.make_url("")).rstrip("/")
    write(docs / "a.txt", "text")
    created, _ = await runtime.jobs.create_job(collection="ui", directory=str(docs), recursive=True, include=None,
                                               exclude=None, name=None, model="m", dim=runtime.model_dim)  # fmt: skip
    job_id = created.id
    data = {key: HOSTILE for key in ("files_total", "files_done", "files_failed", "files_skipped", "chunks",
                                     "rate_chunks_s", "eta_s", "current_file", "status", "path", "error")}  # fmt: skip
    seq = [100]

    def inject(kind: EventType) -> None:
        seq[0] += 1
        text = json.dumps(envelope(kind, job_id, seq[0], data))
        event = (json.loads(text), text, text_frame(text.encode()))
        for listener in [*hub._by_job.get(job_id, ()), *hub._everything]:
            listener.offer(event)

    page, errors = await open_page(browser, f"{url}/#/jobs/{job_id}")
    await expect(page.locator(".status")).to_have_text("queued")
    inject(EventType.FILE_FAILED)
    await expect(page.locator("#files")).to_contain_text("<img")
    await expect(page.locator("ul.failures")).to_contain_text("<b class=injected>bold</b>")
    await page.get_by_role("link", name="Jobs", exact=True).click()
    await expect(page.locator("tbody tr")).to_have_count(1)
    inject(EventType.PROGRESS)
    await expect(page.locator("tbody")).to_contain_text("<b class=injected>")

    client = Redis.from_url(settings.effective_redis_url)
    await client.hset(settings.redis_names.worker("w1"), mapping={"worker_id": HOSTILE, "device": HOSTILE,
                      "pid": "1", "jobs_done": HOSTILE, "jobs_failed": "0", "started_at": HOSTILE,
                      "current_job": HOSTILE})  # fmt: skip
    await client.aclose()
    await page.get_by_role("link", name="Monitor").click()
    await expect(page.locator("table")).to_contain_text("<b class=injected>")
    await shot(page, "hostile-monitor")

    assert await page.locator(".injected").count() == 0 and await page.locator("img").count() == 0
    assert await page.evaluate("window.__pwned") is None
    assert errors == []
