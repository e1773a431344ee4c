"""Hostile pages and hostile folders against the web surface (issue "Hostile folders and hostile
pages", section "The web surface"): every test here reproduces one finding against the real app."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import structlog
from aiohttp.test_utils import TestClient
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis
from rich.console import Console

from semantik.cli.follow import follow_job
from semantik.cli.logview import Filter, show
from semantik.cli.redis_server import RedisServer, free_port
from semantik.domain import EventType
from semantik.events.hub import EventHub
from semantik.events.publish import envelope
from semantik.logs import configure_logging
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.app import create_app
from tests.conftest import ApiFactory
from tests.helpers import assert_error, new_job, wait_for_job, write

TOKEN = "a-long-enough-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIN = Path(sys.executable).parent
ESC = "\x1b"
HOSTILE = "\x1b]0;pwned\x07 and \x1b[31mred\x1b[0m"


async def job_count(runtime: Runtime) -> int:
    return int(await runtime.db.fetchval("SELECT COUNT(*) FROM jobs"))


def own_origin(api: TestClient[Any, Any]) -> str:
    return f"http://{api.server.host}:{api.server.port}"


# -- 1. cross-site requests and DNS rebinding ------------------------------------------------------


async def test_a_simple_cross_site_post_creates_nothing(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path
) -> None:
    """A page on any site can POST text/plain (a "simple request", no preflight): it must not
    create a job, with or without the Origin header the browser sends."""
    write(docs / "a.txt", "some text")
    body = json.dumps({"collection": "c", "directory": str(docs)})
    foreign = await api.post(
        "/api/jobs", data=body, headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}
    )
    assert foreign.status == 403
    assert_error(await foreign.json(), "origin_not_allowed")
    for path, payload in (("/api/jobs", body), ("/api/collections", '{"name": "n"}'),
                          ("/api/search", '{"query": "q", "collection": "c"}')):  # fmt: skip
        plain = await api.post(path, data=payload, headers={"Content-Type": "text/plain"})
        assert plain.status == 415, path
        assert_error(await plain.json(), "unsupported_media_type")
        missing = await api.post(path, data=payload.encode())  # no Content-Type at all
        assert missing.status == 415, path
    assert await job_count(runtime) == 0
    assert (await (await api.get("/api/collections")).json())["collections"] == []
    # The UI's own requests (same origin, JSON) still work.
    same = await api.post("/api/jobs", json=json.loads(body), headers={"Origin": own_origin(api)})
    assert same.status == 201, await same.text()


async def test_state_changing_requests_from_another_origin_are_refused(
    api: TestClient[Any, Any], runtime: Runtime, docs: Path
) -> None:
    job_id = await new_job(api, docs)
    port = api.server.port
    assert port is not None
    for origin in ("http://evil.example", "null", f"https://127.0.0.1:{port}", f"http://localhost:{port}",
                   f"http://127.0.0.1:{port + 1}", f"ftp://127.0.0.1:{port}", "http://127.0.0.1:notaport"):  # fmt: skip
        response = await api.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": origin})
        assert response.status == 403, origin
        assert_error(await response.json(), "origin_not_allowed")
    assert (await (await api.get(f"/api/jobs/{job_id}")).json())["status"] == "queued"
    response = await api.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": own_origin(api)})
    assert response.status == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8420", "127.0.0.1.evil.example", "evil@127.0.0.1",
                                  "127.0.0.1/x", "", "localhost.evil.example"])  # fmt: skip
async def test_a_foreign_host_header_is_refused(api: TestClient[Any, Any], host: str) -> None:
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, so the browser sends Host: evil.example."""
    for path in ("/api/jobs", "/", "/static/app.js", "/metrics"):
        response = await api.get(path, headers={"Host": host})
        assert response.status == 421, (host, path)
        assert_error(await response.json(), "host_not_allowed")


@pytest.mark.parametrize("host", ["localhost", "localhost:1234", "LOCALHOST:8420", "127.0.0.1", "127.0.0.1:8420",
                                  "[::1]", "[::1]:8420", "127.0.0.2:80"])  # fmt: skip
async def test_loopback_hosts_are_accepted(api: TestClient[Any, Any], host: str) -> None:
    response = await api.get("/api/jobs", headers={"Host": host})
    assert response.status == 200, (host, await response.text())


async def test_public_url_and_a_non_loopback_host_are_accepted(make_api: ApiFactory) -> None:
    api, _ = await make_api(public_url="https://search.example.org", api_token=SecretStr(TOKEN))
    assert (await api.get("/api/jobs", headers={**AUTH, "Host": "search.example.org"})).status == 200
    assert (await api.get("/api/jobs", headers={**AUTH, "Host": "evil.example"})).status == 421
    # Behind a TLS proxy: the page's origin is the public URL even though this hop is plain HTTP.
    proxied = {**AUTH, "Host": "search.example.org", "Origin": "https://search.example.org"}
    ok = await api.post("/api/collections", json={"name": "n"}, headers=proxied)
    assert ok.status == 201, await ok.text()
    bad = await api.post("/api/collections", json={"name": "m"},
                         headers={**AUTH, "Origin": "http://search.example.org"})  # fmt: skip
    assert bad.status == 403
    named, _ = await make_api(host="10.1.2.3", api_token=SecretStr(TOKEN))
    assert (await named.get("/api/jobs", headers={**AUTH, "Host": "10.1.2.3:8420"})).status == 200
    assert (await named.get("/api/jobs", headers={**AUTH, "Host": "10.9.9.9:8420"})).status == 421
    # Bound to every interface: any address literal is how the server was reached (a name cannot
    # be rebound to it), but names still need SEMANTIK_PUBLIC_URL.
    wildcard, _ = await make_api(host="0.0.0.0", api_token=SecretStr(TOKEN))
    assert (await wildcard.get("/api/jobs", headers={**AUTH, "Host": "192.168.1.5:8420"})).status == 200
    refused = await wildcard.get("/api/jobs", headers={**AUTH, "Host": "files.lan:8420"})
    assert refused.status == 421
    assert "SEMANTIK_PUBLIC_URL" in (await refused.json())["error"]["message"]


async def test_health_answers_probes_with_any_host_but_tells_them_nothing(api: TestClient[Any, Any]) -> None:
    response = await api.get("/api/health", headers={"Host": "semantik-api:8420"})
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
    assert "checks" in await (await api.get("/api/health")).json()  # from this machine: the details


async def test_websocket_origin_is_checked_against_the_allowlist_not_the_host(api: TestClient[Any, Any]) -> None:
    """The old check compared Origin with the (attacker-chosen) Host and ignored the scheme."""
    for headers, status in (
        ({"Host": "evil.example", "Origin": "http://evil.example"}, 421),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": f"https://{api.server.host}:{api.server.port}"}, 403),
        ({"Origin": "null"}, 403),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await api.ws_connect("/api/ws/jobs", headers=headers)
        assert refused.value.status == status, headers
    async with api.ws_connect("/api/ws/jobs", headers={"Origin": own_origin(api)}) as ws:
        assert (await ws.receive_json(timeout=30))["type"] == EventType.SNAPSHOT


# -- 2. tokens ---------------------------------------------------------------------------------------


def test_an_empty_or_short_token_is_refused() -> None:
    for weak in ("", "0123456789"):
        with pytest.raises(ValidationError, match="at least 16 bytes"):
            Settings(api_token=weak)  # type: ignore[arg-type]
    assert Settings(api_token="x" * 16).api_token is not None  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["serve", "up"])
@pytest.mark.parametrize("token", ["", "short-token"])
def test_serve_and_up_refuse_a_weak_token_with_a_clear_message(command: str, token: str, tmp_path: Path) -> None:
    env = {**os.environ, "SEMANTIK_DATA_DIR": str(tmp_path), "SEMANTIK_API_TOKEN": token}
    result = subprocess.run([str(BIN / "semantik"), command, "--port", str(free_port())], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0
    assert "SEMANTIK_API_TOKEN" in result.stderr and "16 bytes" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "errors.pydantic.dev" not in result.stderr


async def test_the_websocket_subprotocol_token_is_not_accepted_on_rest_requests(make_api: ApiFactory) -> None:
    api, _ = await make_api(api_token=SecretStr(TOKEN))
    response = await api.get("/api/jobs", headers={"Sec-WebSocket-Protocol": f"semantik, bearer.{TOKEN}"})
    assert response.status == 401
    assert_error(await response.json(), "unauthorized")
    async with api.ws_connect("/api/ws/jobs", protocols=("semantik", f"bearer.{TOKEN}")) as ws:
        assert ws.protocol == "semantik"
        assert (await ws.receive_json(timeout=30))["type"] == EventType.SNAPSHOT


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("aiohttp"):  # what any other handler (pytest's, a syslog one) gets
            self.lines.append(f"{record.getMessage()} {record.__dict__}")


@pytest.mark.usefixtures("restore_logging")
async def test_the_token_never_reaches_a_log_line(make_api: ApiFactory, tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging(Settings(data_dir=tmp_path, log_format="json", log_level="debug"), stream=out)
    raw = _Records()
    logging.getLogger().addHandler(raw)
    api, _ = await make_api(api_token=SecretStr(TOKEN))
    async with api.ws_connect("/api/ws/jobs", protocols=("semantik", f"bearer.{TOKEN}")) as ws:
        await ws.receive_json(timeout=30)
    for protocols in ((f"bearer.{TOKEN}",), ("chat", f"bearer.{TOKEN}")):  # aiohttp logs protocols that don't overlap
        try:
            async with api.ws_connect("/api/ws/jobs", protocols=protocols) as ws:
                await ws.receive(timeout=30)
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status in (400, 401)
    await api.get("/api/jobs", headers={"Sec-WebSocket-Protocol": f"bearer.{TOKEN}"})
    # Whatever logs it (a library warning, our own line), the token is redacted.
    logging.getLogger("aiohttp.websocket").warning("client protocols %r", [f"bearer.{TOKEN}"])
    structlog.get_logger("semantik.test").warning("header_seen", value=f"Bearer {TOKEN}")
    logging.getLogger("semantik.test").warning("redis at redis://:%s@127.0.0.1:1/0", TOKEN)
    written = out.getvalue()
    assert "header_seen" in written and "client protocols" in written and "redis at" in written
    assert TOKEN not in written
    assert raw.lines and not [line for line in raw.lines if TOKEN in line]


# -- 3. the UI and the event relay ------------------------------------------------------------------


def _event(**changes: Any) -> str:
    event = envelope(EventType.PROGRESS, "job-1", 3, {"status": "running", "files_done": 1, "chunks": 2})
    event.update(changes)
    return json.dumps(event)


@pytest.mark.parametrize(
    "raw",
    [
        _event(type="<img src=x onerror=alert(1)>"),
        _event(type="snapshot"),
        _event(job_id="x" * 500),
        _event(job_id="../../api/jobs"),
        _event(job_id=7),
        _event(seq="1"),
        _event(seq=True),
        _event(seq=1.5),
        _event(ts=5),
        _event(data=[1]),
        _event(data={"files_done": "<img src=x onerror=alert(1)>"}),
        _event(data={"chunks": 1.5}),
        _event(data={"files_total": True}),
        _event(data={"status": "<b>owned</b>"}),
        _event(data={"rate_chunks_s": "fast"}),
        _event(data={"current_file": 5}),
        _event(extra="field"),
        json.dumps([1, 2]),
        "{not json",
        b"\xff\xfe",
    ],
)
async def test_the_relay_drops_events_of_the_wrong_shape(raw: str | bytes) -> None:
    hub = EventHub("redis://127.0.0.1:1/0", "semantik:events:job:*")  # dispatch only
    listener = hub.listen(None)
    with structlog.testing.capture_logs() as logs:
        await hub.dispatch(raw)
    assert not listener._items, raw
    assert [entry["event"] for entry in logs] == ["event_malformed"]
    await hub.dispatch(_event())
    assert len(listener._items) == 1  # a well-formed one still goes through


async def test_the_managed_redis_needs_its_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        assert server.password and len(server.password) >= 16
        assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
        anonymous = redis.Redis(port=server.port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.publish("semantik:events:job:x", "{}")
        anonymous.close()
        assert redis.Redis.from_url(server.url).ping()
        assert server.process is not None
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert server.password.encode() not in cmdline  # `ps` shows every user the command line
        assert server.password not in (server.directory / "redis.log").read_text()
        assert stat.S_IMODE(server.directory.stat().st_mode) == 0o700
    finally:
        server.stop()
    client = Redis.from_url(server.url)  # restarted on the same port: same password
    server.start()
    try:
        assert await client.ping()
    finally:
        await client.aclose()
        server.stop()


# -- 4. inputs that used to be 500s ---------------------------------------------------------------


async def test_bodies_that_used_to_crash_the_server_are_400(api: TestClient[Any, Any], runtime: Runtime) -> None:
    charset = await api.post("/api/jobs", data=b'{"collection": "c"}',
                             headers={"Content-Type": "application/json; charset=bogus"})  # fmt: skip
    assert charset.status == 400
    assert_error(await charset.json(), "invalid_charset")
    deep = await api.post("/api/jobs", data=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert deep.status == 400
    assert_error(await deep.json(), "invalid_json")
    deep_object = await api.post("/api/search", data=b'{"a":' * 50_000, headers={"Content-Type": "application/json"})
    assert deep_object.status == 400
    latin = await api.post("/api/collections", data='{"name": "caf\xe9"}'.encode("latin-1"),
                           headers={"Content-Type": "application/json; charset=latin-1"})  # fmt: skip
    assert latin.status == 422  # decoded as declared; the name is then invalid, not a crash
    assert await job_count(runtime) == 0


async def test_impossible_directories_are_422(api: TestClient[Any, Any], runtime: Runtime, docs: Path) -> None:
    response = await api.post("/api/jobs", json={"collection": "c", "directory": str(docs) + "/a\u0000b"})
    assert response.status == 422
    assert_error(await response.json(), "invalid_directory")
    real = docs / "real"
    real.mkdir()
    target = real
    for i in range(1100):  # a chain longer than any resolver follows
        link = docs / f"l{i:04}"
        link.symlink_to(target)
        target = link
    response = await api.post("/api/jobs", json={"collection": "c", "directory": str(target)})
    assert response.status == 422
    assert_error(await response.json(), "invalid_directory")
    loop = docs / "loop"
    loop.symlink_to(loop)
    response = await api.post("/api/jobs", json={"collection": "c", "directory": str(loop / "x")})
    assert response.status == 422
    assert await job_count(runtime) == 0


async def test_glob_patterns_are_bounded(api: TestClient[Any, Any], runtime: Runtime, docs: Path) -> None:
    started = time.monotonic()
    for body in ({"include": ["[" * 10_000]}, {"exclude": ["*" * 257]}, {"include": [f"*.{i}" for i in range(33)]},
                 {"include": ["a\u0000b"]}):  # fmt: skip
        response = await api.post("/api/jobs", json={"collection": "c", "directory": str(docs), **body})
        assert response.status == 422, body
        assert_error(await response.json(), "validation_error")
    assert time.monotonic() - started < 10
    ok = await api.post("/api/jobs", json={"collection": "c", "directory": str(docs), "include": ["[" * 256],
                                           "exclude": [f"*.{i}" for i in range(32)]})  # fmt: skip
    assert ok.status == 201
    assert await job_count(runtime) == 1


async def test_health_without_the_token_shows_no_internals(make_api: ApiFactory) -> None:
    port = free_port()
    api, _ = await make_api(api_token=SecretStr(TOKEN), redis_url=f"redis://127.0.0.1:{port}/0")
    response = await api.get("/api/health")
    assert response.status == 503
    assert await response.json() == {"status": "degraded"}
    detailed = await api.get("/api/health", headers=AUTH)
    assert detailed.status == 503
    body = await detailed.json()
    assert body["checks"]["redis"].startswith("unavailable") and body["checks"]["database"] == "ok"
    wrong = await api.get("/api/health", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert await wrong.json() == {"status": "degraded"}


# -- 5. files on disk --------------------------------------------------------------------------------


async def test_the_data_dir_and_databases_are_private_whatever_the_umask(settings: Settings, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        data = tmp_path / "fresh" / "data"
        runtime = Runtime(settings.model_copy(update={"data_dir": data}))
        await runtime.open()
        try:
            await runtime.jobs.create_collection("c", "m", 3)  # the WAL and shared-memory files exist now
            assert stat.S_IMODE(data.stat().st_mode) == 0o700
            for name in ("semantik.db", "semantik.db-wal", "semantik.db-shm"):
                path = data / name
                assert path.exists(), name
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        finally:
            await runtime.close()
        server = RedisServer(data / "redis")
        server.start()
        server.stop()
        assert stat.S_IMODE((data / "redis").stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "redis" / "redis.log").stat().st_mode) == 0o600
    finally:
        os.umask(old)


async def test_an_existing_open_data_dir_is_tightened(settings: Settings, tmp_path: Path) -> None:
    data = tmp_path / "old"
    data.mkdir()
    data.chmod(0o755)
    runtime = Runtime(settings.model_copy(update={"data_dir": data}))
    await runtime.open()
    await runtime.close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "semantik.db").stat().st_mode) == 0o600


# -- 6. the terminal ----------------------------------------------------------------------------------


async def _cli(*args: str, url: str) -> tuple[int, bytes]:
    env = {**os.environ, "SEMANTIK_URL": url, "COLUMNS": "200"}
    env.pop("SEMANTIK_API_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "semantik.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    return await process.wait(), out


async def test_the_cli_prints_no_terminal_escapes_from_documents_names_or_the_server(
    aiohttp_server: Any, settings: Settings, runtime: Runtime, docs: Path, tmp_path: Path, run_worker: Any
) -> None:
    write(docs / f"volcano {HOSTILE}.txt", f"Volcanoes erupt lava and ash. {HOSTILE} Magma rises.")
    (docs / f"broken {HOSTILE}.pdf").write_bytes(b"%PDF-1.4 not really")
    server = await aiohttp_server(create_app(settings, runtime=runtime))
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        created = await session.post(f"{url}/api/jobs", json={"collection": "c", "directory": str(docs)})
        job_id = (await created.json())["id"]
    await run_worker()
    job = await wait_for_job(runtime, job_id)
    assert job["files_failed"] == 1
    names = settings.redis_names
    client = Redis.from_url(settings.effective_redis_url)
    record = {"worker_id": f"evil{ESC}[2J", "device": f"cpu{ESC}]0;x\x07", "pid": "1", "jobs_done": "2",
              "jobs_failed": "0", "started_at": "now", "current_job": ""}  # fmt: skip
    await client.hset(names.worker(f"evil{ESC}[2J"), mapping=record)
    await client.aclose()

    code, out = await _cli("search", "volcano lava", "-c", "c", url=url)
    assert code == 0, out
    assert b"Volcanoes erupt" in out and b"pwned" in out  # shown, but harmless
    assert ESC.encode() not in out and b"\x07" not in out
    code, out = await _cli("workers", url=url)
    assert code == 0, out
    assert b"evil" in out and ESC.encode() not in out
    outside = tmp_path / f"outside {ESC}[31m"  # the server's 403 names the folder
    outside.mkdir()
    code, out = await _cli("index", str(outside), "-c", "c", url=url)
    assert code != 0 and b"outside the allowed roots" in out and ESC.encode() not in out, out

    shown = io.StringIO()
    await follow_job(url, None, job_id, console=Console(file=shown, force_terminal=False, width=200))
    assert "broken" in shown.getvalue() and ESC not in shown.getvalue() and "\x07" not in shown.getvalue()


def test_logs_pretty_output_has_no_terminal_escapes_but_its_own_colours() -> None:
    line = json.dumps({"event": f"file_failed{ESC}[2J", "level": "error", "ts": "2026-01-01T00:00:00Z",
                       "file": f"/docs/{HOSTILE}.txt", "exception": f"Traceback\n  boom {ESC}]0;x\x07"})  # fmt: skip
    lines = [line + "\n", f"not ours {ESC}[31m\n"]
    out = io.StringIO()  # not a terminal: no colours at all
    show(lines, Filter(), as_json=False, out=out)
    text = out.getvalue()
    assert "file_failed" in text and "pwned" in text and "not ours" in text
    assert ESC not in text and "\x07" not in text
    assert "Traceback\n  boom" in text  # the exception keeps its lines

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    show(lines, Filter(), as_json=False, out=out)
    text = out.getvalue()
    assert ESC + "[" in text  # its own colours, on a terminal
    for hostile in (ESC + "[2J", ESC + "]0;", ESC + "[31mred", "\x07"):
        assert hostile not in text
