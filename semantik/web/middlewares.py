"""Request id, the Host and Origin checks, auth and the one error shape:
``{"error": {"code", "message", "details"?}}``."""

from __future__ import annotations

import hmac
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from semantik.errors import Forbidden, MisdirectedRequest, SemantikError, Unauthorized, Unavailable, ValidationFailed
from semantik.web.appkeys import HOSTS, SETTINGS
from semantik.web.origins import Origin, split_host

log = structlog.get_logger(__name__)

# Paths that answer without a token: the health probe and the static UI shell.
PUBLIC_PATHS = frozenset({"/api/health"})
# Answered whatever the Host (a probe from compose or Kubernetes names the service or the pod's
# address); without a trusted Host or the token it says only whether the server is healthy.
ANY_HOST_PATHS = frozenset({"/api/health"})
WS_TOKEN_PREFIX = "bearer."
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_websocket_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _shown(value: str) -> str:
    """A header value as an error message may quote it: short, printable."""
    return "".join(ch if ch.isprintable() else "?" for ch in value[:100])


def host_allowed(request: web.Request) -> bool:
    """The request names a Host this server answers to (or none: not a browser)."""
    raw = request.headers.get("Host")
    if raw is None:
        return True
    host = split_host(raw)
    return host is not None and request.app[HOSTS].allows_host(host[0])


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


@web.middleware
async def same_site(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a ``Host`` the server does not answer to (DNS rebinding: 421), and a request that
    changes state or opens a WebSocket from a page of another origin (cross-site requests: 403)."""
    policy = request.app[HOSTS]
    raw_host = request.headers.get("Host")
    host = split_host(raw_host) if raw_host is not None else None
    if raw_host is not None and (host is None or not policy.allows_host(host[0])):
        if request.method == "GET" and request.path in ANY_HOST_PATHS:
            return await handler(request)  # the view shows such a caller no details
        raise MisdirectedRequest(
            f"this server does not answer to Host {_shown(raw_host)!r} (allowed: {policy.describe()});"
            " set SEMANTIK_PUBLIC_URL to the URL people reach it by"
        )
    if request.method in STATE_CHANGING or is_websocket_upgrade(request):
        given = request.headers.get("Origin")
        if given is not None:
            origin = Origin.parse(given)
            if origin is None or not policy.allows_origin(origin, request.scheme, host):
                raise Forbidden(
                    f"requests from pages of origin {_shown(given)!r} are not allowed", code="origin_not_allowed"
                )
    return await handler(request)


def presented_token(request: web.Request) -> str | None:
    """The token from ``Authorization: Bearer``, or, for browsers' WebSockets (which cannot set
    headers), from a ``bearer.<token>`` entry in ``Sec-WebSocket-Protocol`` of an upgrade request
    (never of a plain request). Never from the URL."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip()
    if not is_websocket_upgrade(request):
        return None
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
    if not has_token(request):
        raise Unauthorized("missing or wrong API token (Authorization: Bearer <SEMANTIK_API_TOKEN>)")
    return await handler(request)


def has_token(request: web.Request) -> bool:
    """The request carries the configured token (False when none is configured)."""
    token = request.app[SETTINGS].api_token
    given = presented_token(request)
    return (
        token is not None
        and given is not None
        and hmac.compare_digest(given.encode(), token.get_secret_value().encode())
    )
