"""Which backend runs the model: the fastest faithful one on this machine, measured once and cached.

``SEMANTIK_EMBED_BACKEND`` and ``SEMANTIK_EMBED_DTYPE`` narrow the candidates; when more than one
is left, each runs a fixed calibration set of real text (``calibration.json``: NFCorpus passages and
queries, README paragraphs) and the fastest whose every embedding keeps cosine >= ``MIN_COSINE`` to
torch fp32 wins (among those within ``SAME_SPEED`` of it, the best by ``tie_rank``). The measurement
(a few seconds) is cached under the model cache directory, keyed by a fingerprint of the CPU (model
name, flags, usable cores), the library versions, the model's hash and the calibration set, so it
runs once per machine; ``choices/<fingerprint>.json`` holds
every figure and the reason (delete it to measure again).

On CUDA there is nothing to measure: torch fp16 (or the dtype asked for), as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from semantik.inference.backends import (
    Backend,
    BackendUnavailable,
    Spec,
    bf16_instructions,
    cpu_flags,
    cpu_threads,
    int8_dot_product,
    load_backend,
    native_bf16,
)
from semantik.inference.export import EXPORT_VERSION, model_hash


def log() -> Any:
    """A logger made at each use: these events are rare (once per machine or process), and a logger
    cached at its first use would keep whatever configuration was current then."""
    return structlog.get_logger(__name__)


MIN_COSINE = 0.99
REFERENCE = Spec("torch", "fp32")
CALIBRATION_BATCH = 16
WARM_UP = 4
# Rates within this factor count as the same speed (two timings of one backend differ by up to ~10%).
SAME_SPEED = 1.15
# 3: near-equal candidates ranked by tie_rank; 4: OpenVINO ranks with ONNX Runtime there (its queries
# have their own model) and queries are measured on the query path; 5: a stream per core (ONNX Runtime
# on two cores or more, OpenVINO where AMX runs it), faster there. A choice made earlier is measured again.
LAYOUT = 5


@dataclass
class Choice:
    spec: Spec
    reason: str
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    cached: bool = False
    backend: Backend | None = None  # the loaded winner, when this process measured it


def calibration() -> tuple[list[str], list[str]]:
    data = json.loads(resources.files("semantik.inference").joinpath("calibration.json").read_text("utf-8"))
    return list(data["passages"]), list(data["queries"])


def candidates(device: str, backend: str = "auto", dtype: str = "auto") -> list[Spec]:
    """What may run here, narrowed by the settings; torch fp32 always comes first when allowed."""
    if device.startswith("cuda"):
        # The GPU path is torch; a CPU-only precision (int8) means the GPU's default there.
        return [Spec("torch", dtype if dtype in ("fp32", "bf16", "fp16") else "fp16", device)]
    if dtype == "fp16":
        dtype = "auto"  # fp16 is the GPUs' precision; the CPU (the server's queries) runs its own best
    specs = [Spec("torch", "fp32"), Spec("onnx", "fp32"), Spec("onnx", "int8"), Spec("openvino", "fp32")]
    if native_bf16() or dtype == "bf16":  # emulated bf16 is slower than fp32: only when asked for
        specs.insert(1, Spec("torch", "bf16"))
    # OpenVINO's bf16 and int8 only where they pay (bf16 instructions; VNNI), unless asked for by name.
    if bf16_instructions() or (backend == "openvino" and dtype == "bf16"):
        specs.append(Spec("openvino", "bf16"))
    if int8_dot_product() or (backend == "openvino" and dtype == "int8"):
        specs.append(Spec("openvino", "int8"))
    if backend != "auto":
        specs = [s for s in specs if s.backend == backend]
    if dtype != "auto":
        specs = [s for s in specs if s.dtype == dtype]
    elif backend == "torch":
        # torch with dtype auto: bf16 where the CPU has it natively (2.5-3x fp32, same quality), else fp32.
        specs = [Spec("torch", "bf16" if native_bf16() else "fp32")]
    return specs


def _library_versions() -> str:
    parts = []
    for name in ("torch", "transformers", "sentence-transformers", "onnxruntime", "openvino", "nncf", "tokenizers"):
        try:
            parts.append(f"{name}={version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name}=-")
    return ",".join(parts)


def cpu_fingerprint() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    return f"{model}|{' '.join(sorted(cpu_flags()))}|threads={cpu_threads()}"


def fingerprint(model_path: Path, specs: list[Spec], min_cosine: float = MIN_COSINE) -> str:
    passages, queries = calibration()
    digest = hashlib.sha256()
    for part in (
        f"layout={LAYOUT},export={EXPORT_VERSION}",
        cpu_fingerprint(),
        _library_versions(),
        model_hash(model_path),
        json.dumps([passages, queries]),
        ",".join(s.name for s in specs),
        f"min_cosine={min_cosine}",
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:24]


def _encode_all(encode: Callable[[list[str]], npt.NDArray[np.float32]], texts: list[str]) -> npt.NDArray[np.float32]:
    return np.concatenate([encode(texts[i : i + CALIBRATION_BATCH]) for i in range(0, len(texts), CALIBRATION_BATCH)])


def _measure(backend: Backend, passages: list[str], queries: list[str]) -> tuple[float, npt.NDArray[np.float32]]:
    """Chunks/s (the better of a full pass and a half pass, so a moment of other load counts less)
    and the vectors of every calibration text."""
    backend.encode(passages[:WARM_UP])  # first-call allocations, graph initialisation
    began = time.perf_counter()
    vectors = _encode_all(backend.encode, passages)
    best = len(passages) / (time.perf_counter() - began)
    half = passages[: len(passages) // 2]
    began = time.perf_counter()
    _encode_all(backend.encode, half)
    best = max(best, len(half) / (time.perf_counter() - began))
    return best, np.concatenate([vectors, _encode_all(backend.encode_query, queries)])


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # one process measures; the others wait and read
        yield


def choose(
    model_path: Path,
    cache_root: Path,
    *,
    device: str = "cpu",
    backend: str = "auto",
    dtype: str = "auto",
    specs: list[Spec] | None = None,
    min_cosine: float = MIN_COSINE,
    load: Callable[[Spec], Backend] | None = None,
) -> Choice:
    """The backend to run; ``specs`` replaces the candidates (tests, benchmarks). ``load`` loads a
    remembered choice (default ``load_backend``; the embedder passes one that reuses a model this
    process already loaded)."""
    specs = specs if specs is not None else candidates(device, backend, dtype)
    if dtype != "auto":
        # A precision asked for by name runs even below the bar (its cosine is still measured and
        # logged): with several backends able to run it, the fastest of them.
        min_cosine = -1.0
    if not specs:
        raise BackendUnavailable(f"no {backend} backend runs {dtype} on {device}")
    if len(specs) == 1:
        return Choice(specs[0], "the only candidate for these settings")
    key = fingerprint(model_path, specs, min_cosine)
    record_path = cache_root / "choices" / f"{key}.json"
    with _locked(cache_root / "choices" / ".lock"):
        cached: Choice | None = None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(record_path.read_text())
            cached = Choice(Spec(**record["chosen"]), record["reason"], record["measured"], cached=True)
        if cached is not None:
            # The remembered winner may no longer load (a runtime uninstalled, its export removed):
            # then the candidates are measured again, instead of the model failing to load.
            try:
                cached.backend = load(cached.spec) if load else load_backend(cached.spec, model_path, cache_root)
            except BackendUnavailable as exc:
                log().warning("embed_backend_choice_stale", backend=cached.spec.name, error=str(exc))
            else:
                log().info("embed_backend_chosen", backend=cached.spec.name, cached=True, reason=cached.reason)
                return cached
        choice = _measure_all(model_path, cache_root, specs, min_cosine)
        record = {
            "chosen": {"backend": choice.spec.backend, "dtype": choice.spec.dtype, "device": choice.spec.device},
            "reason": choice.reason,
            "measured": choice.measured,
            "cpu": cpu_fingerprint().split("|")[0],
            "libraries": _library_versions(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = record_path.with_name(f".{record_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, record_path)
    return choice


# Why a candidate that is not the fastest won, by its ``tie_rank`` (0 or 1: one that loses on
# speed always ranks above the fastest).
TIE_REASONS = (
    "its searches wait for no indexing batch",
    "not torch: its own thread pool shares the cores with the rest of a job better",
)


def tie_rank(spec: Spec, measured: dict[str, dict[str, Any]]) -> int:
    """Among backends within ``SAME_SPEED`` of the fastest, which is preferred (lower first).

    0: one whose queries wait for no indexing run, because it stops the run (ONNX Runtime) or runs
    queries on a model of their own (OpenVINO): searches during a job stay fast (measured: p99 42 ms
    against 143 ms for one that made queries wait, same machine).
    1: any runtime but torch. torch's calls stall when the rest of a job (extraction, the vector
    engine) has the cores: on an AMX Xeon torch bf16 and OpenVINO int8 measured the same here
    (142.1 and 142.0 chunks/s), yet a job indexed 60-62 chunks/s on torch against 115-117 on OpenVINO.
    2: torch."""
    if measured[spec.name].get("preemptible") or measured[spec.name].get("own_query_path"):
        return 0
    return 1 if spec.backend != "torch" else 2


def pick(
    faithful_ones: list[tuple[float, Spec, Backend]], measured: dict[str, dict[str, Any]]
) -> tuple[float, Spec, Backend]:
    """The candidate to run: of those within ``SAME_SPEED`` of the fastest, the best by ``tie_rank``,
    then the fastest."""
    fastest = max(item[0] for item in faithful_ones)
    close = [item for item in faithful_ones if item[0] * SAME_SPEED >= fastest]
    return min(close, key=lambda item: (tie_rank(item[1], measured), -item[0]))


def _measure_all(model_path: Path, cache_root: Path, specs: list[Spec], min_cosine: float) -> Choice:
    passages, queries = calibration()
    began = time.perf_counter()
    measured: dict[str, dict[str, Any]] = {}
    reference: npt.NDArray[np.float32] | None = None
    if REFERENCE not in specs:
        reference = _measure(load_backend(REFERENCE, model_path, cache_root), passages, queries)[1]
    faithful_ones: list[tuple[float, Spec, Backend]] = []
    for spec in sorted(specs, key=lambda s: s != REFERENCE):  # the reference first
        try:
            loaded = load_backend(spec, model_path, cache_root)
            rate, vectors = _measure(loaded, passages, queries)
        except BackendUnavailable as exc:
            log().info("embed_backend_unavailable", backend=spec.name, reason=str(exc))
            continue
        except Exception as exc:  # a broken optional runtime must not stop the model from loading
            if spec == REFERENCE:
                raise
            log().warning("embed_backend_failed", backend=spec.name, error=f"{type(exc).__name__}: {exc}")
            continue
        if reference is None:
            reference = vectors
        cosine = np.sum(vectors * reference, axis=1)
        faithful = bool(cosine.min() >= min_cosine)
        measured[spec.name] = {
            "chunks_per_s": round(rate, 1),
            "min_cosine": round(float(cosine.min()), 4),
            "mean_cosine": round(float(cosine.mean()), 4),
            "faithful": faithful,
        }
        log().info("embed_backend_measured", backend=spec.name, **measured[spec.name])
        measured[spec.name]["preemptible"] = bool(getattr(loaded, "preemptible", False))
        measured[spec.name]["own_query_path"] = bool(getattr(loaded, "own_query_path", False))
        if faithful:
            faithful_ones.append((rate, spec, loaded))
        del loaded
        gc.collect()
    if not faithful_ones:
        raise BackendUnavailable(f"no candidate is faithful (cosine >= {min_cosine} to torch fp32): {measured}")
    rate, spec, winner = pick(faithful_ones, measured)
    fastest = max(faithful_ones, key=lambda item: item[0])[1]
    others = [f"{name} {m['chunks_per_s']}/s" for name, m in measured.items() if name != spec.name]
    why = (
        "fastest faithful backend"
        if spec == fastest
        else f"faithful, within {round((SAME_SPEED - 1) * 100)}% of the fastest ({fastest.name}) and"
        f" {TIE_REASONS[tie_rank(spec, measured)]}"
    )
    reason = (
        f"{why}: {rate:.1f} chunks/s, min cosine {measured[spec.name]['min_cosine']}"
        f" to torch fp32 (others: {', '.join(others) or 'none'})"
    )
    log().info(
        "embed_backend_chosen",
        backend=spec.name,
        cached=False,
        reason=reason,
        seconds=round(time.perf_counter() - began, 1),
    )
    return Choice(spec, reason, measured, backend=winner)
