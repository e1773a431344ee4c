"""``create_app(settings)``: the aiohttp application. No I/O happens until it starts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from semantik import openapi, views
from semantik.hub import EventHub
from semantik.keys import HUB, METRICS, QUEUE, RUNTIME, SETTINGS, SOCKETS
from semantik.metrics import Metrics
from semantik.middlewares import auth, errors, request_context
from semantik.queue import make_queue
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.ws import all_jobs_socket, close_all, job_socket, new_socket_set

STATIC_DIR = Path(__file__).parent / "static"
MAX_REQUEST_BODY_BYTES = 1024 * 1024


def _runtime_ctx(shared: Runtime | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        if shared is not None:  # `semantik up`: the in-process worker owns and closes it
            app[RUNTIME] = shared
            yield
            return
        rt = Runtime(app[SETTINGS])
        await rt.open()
        app[RUNTIME] = rt
        yield
        await rt.close()

    return runtime_ctx


async def _queue_ctx(app: web.Application) -> AsyncIterator[None]:
    queue = make_queue(app[SETTINGS])
    app[QUEUE] = queue
    yield
    await queue.aclose(close_connection_pool=True)


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = EventHub(app[SETTINGS].effective_redis_url)
    await hub.start()
    app[HUB] = hub
    yield
    await hub.stop()


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi.spec())


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> web.Application:
    app = web.Application(middlewares=[request_context, errors, auth], client_max_size=MAX_REQUEST_BODY_BYTES)
    app[SETTINGS] = settings
    app[SOCKETS] = new_socket_set()
    app[METRICS] = Metrics()
    app.cleanup_ctx.extend([_runtime_ctx(runtime), _queue_ctx, _hub_ctx])
    app.on_shutdown.append(close_all)
    app.add_routes(
        [
            web.get("/api/health", views.health),
            web.post("/api/jobs", views.create_job),
            web.get("/api/jobs", views.list_jobs),
            web.post("/api/jobs/ping", views.ping_worker),
            web.get("/api/jobs/{job_id}", views.get_job),
            web.get("/api/jobs/{job_id}/files", views.list_job_files),
            web.post("/api/jobs/{job_id}/cancel", views.cancel_job),
            web.post("/api/jobs/{job_id}/retry", views.retry_job),
            web.get("/api/jobs/{job_id}/ws", job_socket),
            web.get("/api/ws/jobs", all_jobs_socket),
            web.get("/api/collections", views.list_collections),
            web.post("/api/collections", views.create_collection),
            web.get("/api/collections/{name}", views.get_collection),
            web.post("/api/search", views.search),
            web.get("/api/monitor", views.monitor_view),
            web.get("/api/gpus", views.gpus),
            web.get("/metrics", views.metrics),
            web.get("/api/openapi.json", _openapi),
            web.get("/", _index),
            web.static("/static", STATIC_DIR),
        ]
    )
    return app
