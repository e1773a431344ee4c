"""structlog set up once per process: JSON lines by default, console rendering on a terminal.

stdlib loggers (arq, aiohttp, qdrant-client) go through the same processors, so every line has
``event``, ``level`` and ``ts``, plus whatever is bound in contextvars (``job_id``, ``request_id``...).
"""

from __future__ import annotations

import logging
import sys
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
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if not use_console else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RoutineAtDebug())
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
