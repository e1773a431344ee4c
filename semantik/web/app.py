"""``create_app(settings)``: the aiohttp application. No I/O happens until it starts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from semantik.events.hub import EventHub
from semantik.jobqueue import make_queue
from semantik.logs import redact_secrets_in_logs
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.appkeys import HOSTS, HUB, METRICS, QUEUE, RUNTIME, SETTINGS, SOCKETS
from semantik.web.metrics import Metrics
from semantik.web.middlewares import auth, errors, request_context, same_site
from semantik.web.origins import HostPolicy
from semantik.web.routes import ROUTES
from semantik.web.ws import close_all, new_socket_set

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
    settings = app[SETTINGS]
    hub = EventHub(settings.effective_redis_url, settings.redis_names.job_channel_pattern)
    await hub.start()
    app[HUB] = hub
    yield
    await hub.stop()


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> web.Application:
    redact_secrets_in_logs()
    app = web.Application(
        middlewares=[request_context, errors, same_site, auth], client_max_size=MAX_REQUEST_BODY_BYTES
    )
    app[SETTINGS] = settings
    app[HOSTS] = HostPolicy.from_settings(settings)
    app[SOCKETS] = new_socket_set()
    app[METRICS] = Metrics()
    app.cleanup_ctx.extend([_runtime_ctx(runtime), _queue_ctx, _hub_ctx])
    app.on_shutdown.append(close_all)
    app.add_routes([web.route(route.method, route.path, route.handler) for route in ROUTES])
    app.add_routes([web.get("/", _index), web.static("/static", STATIC_DIR)])
    return app
