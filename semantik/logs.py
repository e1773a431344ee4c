"""structlog set up once per process: JSON lines by default, console rendering on a terminal.

stdlib loggers (arq, aiohttp, qdrant-client) go through the same processors, so every line has
``event``, ``level`` and ``ts``, plus whatever is bound in contextvars (``job_id``, ``request_id``...).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from semantik.settings import Settings

# arq logs every run of every function at INFO. Routine housekeeping (the orphan sweeper every 10 s,
# the worker's health record every 30 s) would drown what matters, so those lines go to DEBUG.
ROUTINE_ARQ_MARKERS = (":sweep_orphans", "recording health")


class RoutineAtDebug(logging.Filter):
    """Demote arq's lines about routine housekeeping to DEBUG (shown only with SEMANTIK_LOG_LEVEL=debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("arq") and record.levelno == logging.INFO:
            message = record.getMessage()
            if any(marker in message for marker in ROUTINE_ARQ_MARKERS):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


# Secrets that a library may put in a line: the token of an ``Authorization: Bearer`` header or of
# the ``bearer.<token>`` WebSocket subprotocol (aiohttp logs the subprotocols a client offered),
# and the password in a ``redis://:PASSWORD@host`` URL.
_SECRETS = (
    (re.compile(r"(?i)(bearer[.\s:=]+)[^\s'\",;\])}]+"), r"\1[redacted]"),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]*:)[^@\s/'\"]+@"), r"\1[redacted]@"),
)
# Loggers of libraries whose lines may quote request headers; each gets the filter itself, so that
# every handler (not only ours) sees the line redacted.
_LIBRARY_LOGGERS = ("aiohttp.websocket", "aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.client")


def redact(value: Any) -> Any:
    """``value`` with every secret above replaced by ``[redacted]`` (strings inside lists and
    dicts too); anything else unchanged."""
    if isinstance(value, str):
        for pattern, replacement in _SECRETS:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    return value


class RedactSecrets(logging.Filter):
    """Formats a stdlib record's message now, redacted, when it holds a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):  # structlog's own records carry a dict: see redact_event
            try:
                message = record.getMessage()
            except Exception:  # a broken format string is logging's to report, not ours
                return True
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def redact_event(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no secret in any value of the line."""
    return {key: redact(value) for key, value in event_dict.items()}


def redact_secrets_in_logs() -> None:
    """Put the redacting filter on the library loggers that may quote a secret (idempotent)."""
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactSecrets) for existing in logger.filters):
            logger.addFilter(RedactSecrets())


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    use_console = settings.log_format == "console" or (settings.log_format == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty()) if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        # A line below the level is dropped before any processor runs (a job logs every file at debug).
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if not use_console else structlog.processors.StackInfoRenderer(),
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RoutineAtDebug())
    handler.addFilter(RedactSecrets())
    redact_secrets_in_logs()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("arq", "aiohttp", "aiohttp.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for noisy in ("httpx", "httpcore", "sentence_transformers", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class AccessLogger(AbstractAccessLogger):
    """One structured line per request: method, path, status, duration, remote, request id."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "http_request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "remote": request.remote,
                "request_id": response.headers.get("X-Request-ID"),
            },
        )
