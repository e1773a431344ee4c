"""Request id, auth and the one error shape: ``{"error": {"code", "message", "details"?}}``."""

from __future__ import annotations

import hmac
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from semantik.errors import SemantikError, Unauthorized, Unavailable, ValidationFailed
from semantik.web.appkeys import SETTINGS

log = structlog.get_logger(__name__)

# Paths that answer without a token: the health probe and the static UI shell.
PUBLIC_PATHS = frozenset({"/api/health"})
WS_TOKEN_PREFIX = "bearer."


def error_response(error: SemantikError) -> web.Response:
    return web.json_response(error.to_json(), status=error.status)


def validation_details(exc: ValidationError) -> list[dict[str, object]]:
    return [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex[:16]
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        response = await handler(request)
        response.headers["X-Request-ID"] = request_id
        return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SemantikError as exc:
        return error_response(exc)
    except ValidationError as exc:
        return error_response(ValidationFailed("request body is invalid", details=validation_details(exc)))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return web.json_response(
            {"error": {"code": code, "message": exc.text or exc.reason}},
            status=exc.status,
            headers=_safe_headers(exc),
        )
    # redis-py's ConnectionError and TimeoutError are not the built-in ones: name them too.
    except (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("dependency_unavailable", path=request.path, error=str(exc))
        return error_response(Unavailable(f"a backing service is unavailable: {exc}"))
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return error_response(SemantikError("internal server error; see the server log"))


def _safe_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "www-authenticate"}}


def presented_token(request: web.Request) -> str | None:
    """The token from ``Authorization: Bearer``, or, for browsers' WebSockets (which cannot set
    headers), from a ``bearer.<token>`` entry in ``Sec-WebSocket-Protocol``. Never from the URL."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip()
    for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith(WS_TOKEN_PREFIX):
            return protocol[len(WS_TOKEN_PREFIX) :]
    return None


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[SETTINGS].api_token
    protected = request.path.startswith("/api/") or request.path == "/metrics"
    if token is None or not protected or request.path in PUBLIC_PATHS:
        return await handler(request)
    given = presented_token(request)
    if given is None or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Unauthorized("missing or wrong API token (Authorization: Bearer <SEMANTIK_API_TOKEN>)")
    return await handler(request)
