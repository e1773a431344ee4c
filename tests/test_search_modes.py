"""Search modes through the API and the CLI: hybrid (the default) finds exact identifiers that dense
search alone misses, and every hit says which retrievers found it.

The corpus is the case from issue 14: near-identical incident notes that differ only in their node
and error code, where dense MiniLM retrieval put the right note first about 1 time in 5.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.app import create_app
from tests.helpers import new_job, wait_for_job, write

REPO = Path(__file__).resolve().parents[1]
COLLECTION = "incidents"
CODES = ["E4101", "E4217", "E4332", "E4458", "E4563", "E4679", "E4784", "E4890", "E4926", "E4015"]
UNRELATED = {
    "lunch.txt": "The team lunch moved to Thursday; the new Thai place near the station takes reservations.",
    "garden.md": "# Garden\n\nTomatoes need full sun and regular watering in the summer months.",
    "budget.txt": "The quarterly budget review found that travel costs were over plan by twelve percent.",
}


def note_name(code: str) -> str:
    return f"incident-{code.lower()}.txt"


def incident_corpus(docs: Path) -> None:
    for node, code in enumerate(CODES, start=1):
        write(docs / note_name(code), f"Disk alarm on node {node}: error code {code}, rebooted and restored.")
    for name, text in UNRELATED.items():
        write(docs / name, text)


async def index(api: TestClient[Any, Any], docs: Path, run_worker: Callable[[], Awaitable[Any]]) -> None:
    incident_corpus(docs)
    job_id = await new_job(api, docs, COLLECTION)
    await run_worker()
    job = await wait_for_job(api, job_id)
    assert job["status"] == "completed" and job["files_done"] == len(CODES) + len(UNRELATED), job


async def search(api: TestClient[Any, Any], query: str, **extra: Any) -> list[dict[str, Any]]:
    response = await api.post("/api/search", json={"query": query, "collection": COLLECTION, **extra})
    assert response.status == 200, await response.text()
    results: list[dict[str, Any]] = (await response.json())["results"]
    return results


def names(results: list[dict[str, Any]]) -> list[str]:
    return [Path(hit["path"]).name for hit in results]


async def test_each_mode_ranks_and_labels_its_hits(
    api: TestClient[Any, Any], docs: Path, run_worker: Callable[[], Awaitable[Any]], runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    await index(api, docs, run_worker)
    total = len(CODES) + len(UNRELATED)

    for code in CODES:
        # Hybrid: the note holding the code first, for every code, bare or in a sentence; the
        # dense side returns every chunk of this small collection, so the note is found by both.
        for query in (code, f"what happened with error {code}?"):
            hybrid = await search(api, query, mode="hybrid", k=5)
            assert names(hybrid)[0] == note_name(code), (query, names(hybrid))
            assert hybrid[0]["retrievers"] == ["dense", "keyword"], (query, hybrid[0])
            assert all(hit["retrievers"] in (["dense"], ["dense", "keyword"]) for hit in hybrid), hybrid
        # Default mode is hybrid: an exact code query finds its note through the keyword side too.
        default = await search(api, code, k=5)
        assert names(default)[0] == note_name(code), names(default)
        assert "keyword" in default[0]["retrievers"], default[0]

    # Dense: a full list, each hit found by the dense retriever only.
    dense = await search(api, "E4217", mode="dense", k=total)
    assert len(dense) == total
    assert all(hit["retrievers"] == ["dense"] for hit in dense), dense
    assert [hit["score"] for hit in dense] == sorted((hit["score"] for hit in dense), reverse=True)

    # Keyword: only keyword hits, and the query is never embedded (no model needed).
    async def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a keyword search must not embed the query")

    monkeypatch.setattr(runtime, "embedder", no_model)
    for code in CODES:
        keyword = await search(api, code, mode="keyword", k=5)
        assert names(keyword) == [note_name(code)], (code, names(keyword))  # only that note holds the code
        assert keyword[0]["retrievers"] == ["keyword"]
        sentence = await search(api, f"error code {code}", mode="keyword", k=total)
        assert names(sentence)[0] == note_name(code), (code, names(sentence))
        assert all(hit["retrievers"] == ["keyword"] for hit in sentence), sentence
        assert set(names(sentence)).isdisjoint(UNRELATED)  # they share no term with the query
    assert await search(api, "tomatoes watering", mode="keyword") != []


@pytest.mark.parametrize("mode", ["semantic", "HYBRID ", "", 1, None])
async def test_an_invalid_mode_is_422_in_the_error_shape(api: TestClient[Any, Any], mode: Any) -> None:
    response = await api.post("/api/search", json={"query": "E4217", "collection": COLLECTION, "mode": mode})
    assert response.status == 422, await response.text()
    body = await response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "validation_error", body
    assert [detail["loc"] for detail in body["error"]["details"]] == [["mode"]], body


async def test_openapi_lists_the_modes_and_the_retrievers(api: TestClient[Any, Any]) -> None:
    schemas = (await (await api.get("/api/openapi.json")).json())["components"]["schemas"]
    mode = schemas["SearchRequest"]["properties"]["mode"]
    assert mode["default"] == "hybrid"
    assert schemas[mode["$ref"].rsplit("/", 1)[-1]]["enum"] == ["hybrid", "dense", "keyword"]
    retrievers = schemas["SearchHit"]["properties"]["retrievers"]
    assert retrievers["items"]["enum"] == ["dense", "keyword"]


async def run_cli(*args: str, url: str) -> tuple[int, str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEMANTIK_")}
    env.update(HF_HUB_OFFLINE="1", SEMANTIK_URL=url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "semantik.cli", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_mode_prints_the_code_note_first_with_its_retrievers(
    aiohttp_server: Callable[..., Awaitable[TestServer]], api: TestClient[Any, Any], settings: Settings,
    runtime: Runtime, docs: Path, run_worker: Callable[[], Awaitable[Any]],
) -> None:  # fmt: skip
    await index(api, docs, run_worker)
    app: web.Application = create_app(settings, runtime=runtime)
    server = await aiohttp_server(app)
    url = f"http://{server.host}:{server.port}"

    code, out, err = await run_cli("search", "E4679", "-c", COLLECTION, "--mode", "keyword", url=url)
    assert code == 0, (out, err)
    ranked = [line for line in out.splitlines() if line[:1].isdigit()]
    assert ranked and ranked[0].startswith("1. "), out
    assert str(docs / note_name("E4679")) in ranked[0] and ranked[0].endswith("[keyword]"), out
    assert "error code E4679" in out

    code, out, err = await run_cli("search", "E4679", "-c", COLLECTION, url=url)  # hybrid by default
    assert code == 0, (out, err)
    ranked = [line for line in out.splitlines() if line[:1].isdigit()]
    assert str(docs / note_name("E4679")) in ranked[0] and ranked[0].endswith("[dense+keyword]"), out
    assert all(line.endswith(("[dense]", "[dense+keyword]")) for line in ranked), out

    code, out, err = await run_cli("search", "E4679", "-c", COLLECTION, "--mode", "fuzzy", url=url)
    assert code == 2 and "fuzzy" in err, (code, out, err)
