"""The packaged model as ONNX, exported here from its own weights (no hub, no download) and cached.

Cache layout (``SEMANTIK_MODEL_CACHE_DIR``, default ``<data dir>/models``)::

    <model hash>-torch<version>-ort<version>/
        model-fp32.onnx     BERT + mean pooling + L2 normalisation in one graph
        model-int8-<recipe>.onnx   the same, fused, with int8 weights and plain residual layer
                            norms (``quantize.py``; the recipe: calibration set, weights,
                            target cosine)
        model-openvino-int8-<recipe>.xml/.bin   the fp32 graph statically quantized for OpenVINO
                            by NNCF (``quantize.py``; the recipe adds OpenVINO's and NNCF's versions)
        export.json         what was exported from what, and how long it took
    .lock                   flock: one process exports, the others wait and reuse

The key is the hash of the model's files and the versions of the exporter and the runtime, so a
changed model or an upgraded onnxruntime exports again; an unchanged one never does. Files are
written beside their final name and renamed, so a process killed mid-export leaves nothing that
looks finished.

How the int8 graph is made, and why, is in ``quantize.py``; whether it is faithful enough to run is
measured again by ``choose.py``, not assumed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog


def log() -> Any:
    """A logger made at each use: these events are rare (once per machine or process), and a logger
    cached at its first use would keep whatever configuration was current then."""
    return structlog.get_logger(__name__)


# The files that define the model's behaviour (weights, architecture, tokenizer, pooling).
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "modules.json")
OPSET = 17
# Raise when the exported graph or the quantization changes: the cache key includes it.
EXPORT_VERSION = 5
_hashes: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


class ExportError(Exception):
    """The model cannot be exported (an architecture or pooling this exporter does not handle)."""


def model_hash(model_path: Path) -> str:
    """sha256 over the files that define the model (read once per process while they are unchanged)."""
    files = [(name, model_path / name) for name in (*MODEL_FILES, "1_Pooling/config.json", "sentence_bert_config.json")]
    present = [(name, path) for name, path in files if path.is_file()]
    key = (str(model_path), tuple((name, path.stat().st_size, path.stat().st_mtime_ns) for name, path in present))
    if key not in _hashes:
        digest = hashlib.sha256()
        for name, path in present:
            digest.update(name.encode() + b"\0")
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def runtime_versions() -> str:
    from importlib.metadata import version

    import onnxruntime
    import torch

    return (
        f"x{EXPORT_VERSION}-torch{torch.__version__.split('+')[0]}-tf{version('transformers')}"
        f"-ort{onnxruntime.__version__}"
    )


def cache_dir_for(cache_root: Path, model_path: Path) -> Path:
    return cache_root / f"{model_hash(model_path)[:16]}-{runtime_versions()}"


@contextlib.contextmanager
def _exclusive(cache_root: Path) -> Iterator[None]:
    cache_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (cache_root / ".lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def onnx_model(cache_root: Path, model_path: Path, variant: str) -> Path:
    """The cached ONNX file for ``variant`` (``fp32`` or ``int8``), exported first if missing."""
    if variant not in ("fp32", "int8"):
        raise ExportError(f"no ONNX variant {variant!r} (fp32 or int8)")
    target_dir = cache_dir_for(cache_root, model_path)
    if variant == "fp32":
        return _cached(cache_root, model_path, target_dir / "model-fp32.onnx", None)
    from semantik.inference.quantize import recipe

    # The file name also carries what the int8 graph was made from.
    return _cached(cache_root, model_path, target_dir / f"model-int8-{recipe()}.onnx", "int8")


def openvino_int8_model(cache_root: Path, model_path: Path) -> Path:
    """The cached OpenVINO int8 model (``.xml``; its weights in the ``.bin`` beside it), made first if missing."""
    from semantik.inference.quantize import openvino_recipe

    target = cache_dir_for(cache_root, model_path) / f"model-openvino-int8-{openvino_recipe()}.xml"
    return _cached(cache_root, model_path, target, "openvino-int8")


def _cached(cache_root: Path, model_path: Path, target: Path, variant: str | None) -> Path:
    """``target``, made under the cache lock if missing: the fp32 graph first, then ``variant`` from it."""

    def whole() -> bool:  # an OpenVINO model is two files; its .bin is published first
        return target.is_file() and (target.suffix != ".xml" or target.with_suffix(".bin").is_file())

    if whole():
        return target
    target_dir = target.parent
    with _exclusive(cache_root):
        if whole():  # another process made it while we waited
            return target
        target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in target_dir.glob(".*.tmp*"):  # an export killed half-way
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        fp32 = target_dir / "model-fp32.onnx"
        record = _read_record(target_dir)
        if not fp32.is_file():
            began = time.perf_counter()
            _export_fp32(model_path, fp32)
            record["fp32"] = {"seconds": round(time.perf_counter() - began, 2), "opset": OPSET}
            log().info("model_exported", variant="fp32", path=str(fp32), seconds=record["fp32"]["seconds"])
        if variant is not None:
            record[variant] = _quantize(fp32, target, model_path, variant)
            made = record[variant]
            # ONNX int8: how many activation outlier channels run in fp32 beside int8 (quantize._balance).
            split = (
                {"split_channels": sum(map(len, made["split_channels"].values()))} if "split_channels" in made else {}
            )
            log().info(
                "model_exported",
                variant=variant,
                path=str(target),
                seconds=made["seconds"],
                kept_fp32=len(made["kept_fp32"]),
                min_cosine=made["min_cosine"],
                **split,
            )
        record.update(model=str(model_path), model_sha256=model_hash(model_path), versions=runtime_versions())
        _write_atomic(target_dir / "export.json", json.dumps(record, indent=2).encode())
    return target


def _read_record(target_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((target_dir / "export.json").read_text()))
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    publish(tmp, path)


def publish(tmp: Path, path: Path) -> None:
    """fsync, then rename: after a crash or power loss the final name holds the whole file or nothing."""
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _pooling_mode(model_path: Path) -> str:
    config_path = model_path / "1_Pooling" / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{model_path} has no 1_Pooling/config.json; only mean pooling is exported")
    config = json.loads(config_path.read_text())
    modes = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ExportError(f"{model_path} pools with {modes}; only mean pooling is exported")
    modules = json.loads((model_path / "modules.json").read_text()) if (model_path / "modules.json").is_file() else []
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds and kinds != ["Transformer", "Pooling", "Normalize"]:
        raise ExportError(f"{model_path} has modules {kinds}; only Transformer, Pooling, Normalize are exported")
    return "mean"


def _export_fp32(model_path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModel

    _pooling_mode(model_path)
    bert = AutoModel.from_pretrained(
        str(model_path), local_files_only=True, dtype=torch.float32, attn_implementation="eager"
    )
    bert.eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    sample = torch.ones((2, 8), dtype=torch.int64)
    axes = {0: "batch", 1: "tokens"}
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on ops it rewrites
        torch.onnx.export(
            Pooled(),
            (sample, sample, torch.zeros_like(sample)),
            str(tmp),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    publish(tmp, target)


def _quantize(source: Path, target: Path, model_path: Path, variant: str) -> dict[str, Any]:
    from semantik.inference.quantize import quantize_int8, quantize_openvino_int8

    work = target.with_name(f".{target.name}.{os.getpid()}.tmp.work")
    work.mkdir()
    if variant == "openvino-int8":
        return quantize_openvino_int8(source, target, work, model_path)  # publishes the .bin, then the .xml
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.onnx")
    record = quantize_int8(source, tmp, work, model_path)
    publish(tmp, target)
    return record


class _NoPreprocessingAdvice(logging.Filter):
    """quantize_dynamic advises, on the root logger, a pre-processing step that is for static
    quantization of image models; it would land in every worker's log at the first export."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing before quantization")


logging.getLogger().addFilter(_NoPreprocessingAdvice())
