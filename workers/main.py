"""Entry point for the plain arq CLI: ``arq workers.main.WorkerSettings``.

Settings come from the environment (``SEMANTIK_*``), exactly as for the server.
"""

from __future__ import annotations

from typing import Any

from semantik.indexing.worker import worker_options
from semantik.settings import Settings

_options = worker_options(Settings())


class WorkerSettings:
    functions: list[Any] = _options["functions"]
    on_startup = _options["on_startup"]
    on_shutdown = _options["on_shutdown"]
    queue_name: str = _options["queue_name"]
    redis_settings = _options["redis_settings"]
    max_jobs: int = _options["max_jobs"]
    job_timeout: int = _options["job_timeout"]
    poll_delay: float = _options["poll_delay"]
    keep_result: int = _options["keep_result"]
    max_tries: int = _options["max_tries"]
    allow_abort_jobs: bool = _options["allow_abort_jobs"]
    health_check_interval: int = _options["health_check_interval"]
    cron_jobs: list[Any] = _options["cron_jobs"]
