"""The ways this machine can run the model, behind one interface.

Every backend turns texts into L2-normalised float32 vectors the way sentence-transformers does
(same tokenizer and truncation, mean pooling, normalisation) and may be called from two threads at
once (the indexing thread and the query thread of ``embedder.py``): tokenizers are per thread, the
model is read-only.

- ``torch``: fp32; bf16 where the CPU has native bf16; fp16 on CUDA (the GPU path).
- ``onnx``: ONNX Runtime on the locally exported graph (``export.py``), fp32 or int8 weights; on
  two cores or more, a stream per core, one text per run.
- ``openvino``: OpenVINO (the ``openvino`` extra): fp32 or bf16 (where native) on the same exported
  fp32 graph, or int8 on that graph statically quantized by NNCF (``quantize.py``; fast with VNNI);
  on AMX, indexing on a stream per core, eight texts per run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog
from tokenizers import Tokenizer

from semantik.inference.export import ExportError, onnx_model, openvino_int8_model

BACKENDS = ("torch", "onnx", "openvino")
# Token ids per text, None where a text has none (``Chunk.tokens``).
TokenIds = Sequence[Sequence[int] | None]
PAD_MULTIPLE = 16
# Texts per request, at most, when OpenVINO runs a stream per core (``OpenVinoBackend``): 8 ran 160
# chunks/s against 150 for 16 and 139 for 32 (int8, AMX Xeon, 2 streams; docs/benchmarks.md, session 30).
STREAM_PIECE = 8
# Texts per run when ONNX Runtime runs a stream per core (``OnnxBackend``): 1 ran int8 at 118-125
# chunks/s against 102-113 for 2 and 78 for 4 (AMX Xeon, 2 cores; docs/benchmarks.md, session 30).
ONNX_PIECE = 1

log = structlog.get_logger(__name__)


class BackendUnavailable(Exception):
    """This backend or precision cannot run here (missing package, no native bf16, no GPU ...)."""


class Preempted(Exception):
    """A preemptible run was stopped part-way so a query could have the cores; run it again."""


@dataclass(frozen=True)
class Spec:
    """One candidate: a backend at a precision on a device."""

    backend: str
    dtype: str
    device: str = "cpu"

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.dtype}"


class Backend(Protocol):
    spec: Spec
    preemptible: bool  # ``preempt`` can stop a run part-way
    # ``encode_query`` runs on a model instance or threads of its own: a query never waits for an
    # indexing run (OpenVINO; ONNX Runtime on a stream per core).
    own_query_path: bool
    # Indexing runs whole batches rather than sub-batches of about ``embedder.SUB_BATCH_S`` where
    # short calls were measured to cost this backend speed on this CPU (OpenVINO on AMX). With
    # ``streams`` > 1 the embedder hands over whole calls instead, whatever this says.
    whole_batches: bool
    # Threads that each run pieces of one call on their own (a stream per core: ONNX Runtime on two
    # cores or more, OpenVINO on AMX); 1: a call is one run at a time. With streams the embedder
    # hands the backend a whole call, and the streams meet at its end only.
    streams: int
    max_seq_length: int
    dim: int

    def encode(
        self,
        texts: list[str],
        preemptible: bool = False,
        tokens: TokenIds | None = None,
        between: Callable[[], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        """One model call (a sub-batch, a batch, or on streams a job's whole call): normalised
        vectors, one row per text, in order. A ``preemptible`` run may raise ``Preempted`` when
        ``preempt`` is called meanwhile (ONNX Runtime on one core only). ``tokens``: the texts'
        token ids where the chunker gave them (``Tokens``), else None. ``between``: called before
        each piece where a backend runs the call in pieces on a stream per core (the embedder's
        wait for searches in flight)."""
        ...

    def encode_query(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Search queries, as ``encode`` (the same vectors), on the query path where there is one."""
        ...

    def preempt(self) -> None:
        """Stop the preemptible run in flight, if any and if this backend can (torch cannot)."""
        ...


def model_max_seq_length(model_path: Path) -> int:
    config = model_path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 512))
    return 512


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def native_bf16() -> bool:
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())  # type: ignore[no-untyped-call]


def import_openvino() -> Any:
    """``openvino``, without its telemetry. Importing openvino (and NNCF) otherwise sends a usage
    event to Google Analytics and writes a client id under ``~/intel`` unless an opt-out file
    exists; a private search engine phones nobody. Both fall back to their built-in no-op stub
    when the ``openvino_telemetry`` package cannot be imported, which is what this arranges."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    elif sys.modules.get("openvino_telemetry") is not None:
        log.warning("openvino_telemetry_loaded", note="openvino was imported before import_openvino()")
    import openvino

    return openvino


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``), read once per process."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    return frozenset()


def int8_dot_product() -> bool:
    """The CPU multiplies int8 in one instruction (AVX-512 VNNI, AVX-VNNI or AMX): where OpenVINO's
    int8 pays (1.9x torch bf16 on Zen 4); without it, it ran slower than OpenVINO fp32."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def matrix_unit() -> bool:
    """The CPU has AMX: tile matrix multiplies, which want big matrices (``OpenVinoBackend``)."""
    return bool({"amx_tile", "amx_int8", "amx_bf16"} & cpu_flags())


def bf16_instructions() -> bool:
    """bf16 arithmetic in hardware (AVX-512 BF16, AMX). torch's check (``native_bf16``) also says
    yes on AVX-512 CPUs without it (Skylake-SP to Ice Lake), where OpenVINO would emulate bf16."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


class Tokens:
    """The model's tokenizer with sentence-transformers' truncation, one copy per thread.

    A batch whose texts all come with their token ids (``Chunk.tokens``, from the chunker) is not
    tokenized again: the ids get the special tokens the tokenizer adds around one text, the same
    truncation and the same padding, so the model's inputs are the same arrays (tested). That was
    1.6 s of the indexing thread's time per 4,647 chunks, during which the other cores idled."""

    def __init__(self, model_path: Path, max_seq_length: int, pad_to_multiple_of: int | None = None) -> None:
        self._json = Tokenizer.from_file(str(model_path / "tokenizer.json")).to_str()
        self._max = max_seq_length
        # Padding past the length the model reads would be cut again: then lengths are not padded.
        self._multiple = pad_to_multiple_of if pad_to_multiple_of and max_seq_length % pad_to_multiple_of == 0 else None
        self._local = threading.local()
        self._template = _single_text_template(self._tokenizer())

    def __call__(self, texts: list[str], tokens: TokenIds | None = None) -> dict[str, npt.NDArray[np.int64]]:
        known = [ids for ids in tokens or () if ids is not None]
        if self._template is not None and texts and len(known) == len(texts):
            return self._from_ids(known)
        return self._encode(texts)

    def _from_ids(self, tokens: Sequence[Sequence[int]]) -> dict[str, npt.NDArray[np.int64]]:
        assert self._template is not None
        prefix, suffix, pad_id = self._template
        keep = max(self._max - len(prefix) - len(suffix), 0)
        lengths = [len(prefix) + min(len(ids), keep) + len(suffix) for ids in tokens]
        width = max(lengths)
        if self._multiple:
            width = -(-width // self._multiple) * self._multiple
        input_ids = np.full((len(tokens), width), pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(tokens), width), dtype=np.int64)
        for row, (ids, length) in enumerate(zip(tokens, lengths, strict=True)):
            content = np.asarray(ids[:keep], dtype=np.int64)
            input_ids[row, : len(prefix)] = prefix
            input_ids[row, len(prefix) : len(prefix) + len(content)] = content
            input_ids[row, len(prefix) + len(content) : length] = suffix
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}

    def _tokenizer(self) -> Tokenizer:
        tokenizer: Tokenizer | None = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = Tokenizer.from_str(self._json)
            tokenizer.enable_truncation(max_length=self._max)
            tokenizer.enable_padding(pad_to_multiple_of=self._multiple)  # to the longest in the batch
            self._local.tokenizer = tokenizer
        return tokenizer

    def _encode(self, texts: list[str]) -> dict[str, npt.NDArray[np.int64]]:
        encoded = self._tokenizer().encode_batch(texts)
        return {
            "input_ids": np.asarray([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encoded], dtype=np.int64),
        }


def _single_text_template(tokenizer: Tokenizer) -> tuple[list[int], list[int], int] | None:
    """The ids the tokenizer puts before and after one text's own (BERT: [CLS] and [SEP]), and its
    padding id; None when it does not simply wrap the text's ids (then every batch is tokenized)."""
    if tokenizer.padding is None:
        return None
    bare = Tokenizer.from_str(tokenizer.to_str())
    bare.no_padding()
    bare.no_truncation()
    plain = bare.encode("a b", add_special_tokens=False)
    full = bare.encode("a b")
    n = len(plain.ids)
    starts = [i for i in range(len(full.ids) - n + 1) if full.ids[i : i + n] == plain.ids]
    if n == 0 or not starts or any(full.type_ids) or any(plain.type_ids):
        return None
    return full.ids[: starts[0]], full.ids[starts[0] + n :], int(tokenizer.padding["pad_id"])


def normalise(vectors: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, 1e-12)
    return out


class TorchBackend:
    preemptible = False
    own_query_path = False  # a query's forward runs beside an indexing one, on the same cores
    whole_batches = False
    streams = 1

    def __init__(self, spec: Spec, model_path: Path, *, max_seq_length: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        on_cpu = not spec.device.startswith("cuda")
        if spec.dtype == "fp16" and on_cpu:
            raise BackendUnavailable("torch fp16 runs on CUDA only (on a CPU: fp32, or bf16)")
        if spec.dtype == "bf16" and on_cpu and not native_bf16():
            log.warning("embed_bf16_emulated", note="this CPU has no native bf16: expect it slower than fp32")
        if spec.dtype not in ("fp32", "bf16", "fp16"):
            raise BackendUnavailable(f"torch has no {spec.dtype}")
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.dtype]
        self.spec = spec
        self.model = SentenceTransformer(
            str(model_path), device=spec.device, local_files_only=True, model_kwargs={"torch_dtype": torch_dtype}
        )
        self.model.eval()
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.max_seq_length = int(self.model.max_seq_length or 512)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 0)
        # On the CPU, lengths padded to a multiple of 16 (the pads masked: same vectors), as for
        # OpenVINO: oneDNN prepares each new input shape (5-18 ms a call measured for bf16), and a
        # job's sub-batches of varied sizes and lengths met a new one at almost every call (its encode
        # path 70 chunks/s unpadded against 80-99 padded; docs/benchmarks.md, session 17).
        self._tokens = Tokens(model_path, self.max_seq_length, pad_to_multiple_of=PAD_MULTIPLE if on_cpu else None)
        self._torch = torch

    def preempt(self) -> None:
        pass  # a torch forward cannot be stopped part-way; indexing sub-batches stay short instead

    def encode(
        self,
        texts: list[str],
        preemptible: bool = False,
        tokens: TokenIds | None = None,
        between: Callable[[], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        torch = self._torch
        features = {k: torch.from_numpy(v).to(self.spec.device) for k, v in self._tokens(texts, tokens).items()}
        with torch.inference_mode():
            out = self.model(features)["sentence_embedding"]
        return normalise(out.float().cpu().numpy())

    def encode_query(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return self.encode(texts)


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU's cores (or ``threads`` of them), with threads that sleep
    rather than spin. With one thread a run runs on its caller's thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would steal the cores from the other thread (queries vs indexing).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def in_pieces(
    pool: ThreadPoolExecutor,
    run: Callable[[list[str], TokenIds | None], npt.NDArray[np.float32]],
    texts: list[str],
    tokens: TokenIds | None,
    piece: int,
    between: Callable[[], None] | None,
) -> npt.NDArray[np.float32]:
    """``texts`` in pieces of ``piece`` (in order: the embedder sorts a call by length, so a piece's
    texts pad little), each to the first of ``pool``'s threads that is free (a thread given short
    texts takes more of them), ``between`` called before each; the vectors in the caller's order. A
    piece's error reaches the caller, and the pieces not yet started are dropped."""

    def one(start: int) -> npt.NDArray[np.float32]:
        if between is not None:  # the embedder's wait for a search in flight
            between()
        end = start + piece
        return run(texts[start:end], None if tokens is None else tokens[start:end])

    return np.concatenate(list(pool.map(one, range(0, len(texts), piece))))


class OnnxBackend:
    """ONNX Runtime on the exported graph, in one of two ways.

    - **A stream per core** (where there are two cores or more): the session runs on one thread, a
      call's texts go one at a time to a thread per core, and a query runs on its own caller's
      thread beside them (``own_query_path``). On an AMX Xeon with 2 cores: int8 118-125 chunks/s
      against 61 for batches of 32 on both cores, fp32 49 against 32 (docs/benchmarks.md, session
      30). One text's activations stay in its core's cache, and no op waits for the other core.
      int8 then quantizes each text's activations on their own (one scale per run), so a text's
      vector no longer depends on what shares its batch.
    - **One run on every core** (one core, or ``stream_per_core=False``): a query stops the
      indexing run in flight (``preempt``) and goes first."""

    def __init__(self, spec: Spec, model_path: Path, cache_root: Path, *, stream_per_core: bool | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency; only a broken install lacks it
            raise BackendUnavailable(f"onnxruntime is not installed: {exc}") from exc
        if spec.device != "cpu":
            raise BackendUnavailable("the ONNX backend runs on the CPU here (the GPU path is torch fp16)")
        try:
            path = onnx_model(cache_root, model_path, spec.dtype)
        except ExportError as exc:
            raise BackendUnavailable(str(exc)) from exc
        self.spec = spec
        by_streams = cpu_threads() > 1 if stream_per_core is None else stream_per_core
        self.streams = cpu_threads() if by_streams else 1
        self.preemptible = not by_streams
        self.own_query_path = self.whole_batches = by_streams
        self.session = onnx_session(path, threads=1 if by_streams else None)
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="onnx-stream") if by_streams else None
        self._ort = ort
        self._lock = threading.Lock()
        self._preemptible: Any = None
        self.max_seq_length = model_max_seq_length(model_path)
        self._tokens = Tokens(model_path, self.max_seq_length)
        self.dim = int(self.encode(["dimension"]).shape[1])

    def preempt(self) -> None:
        with self._lock:
            if self._preemptible is not None:
                self._preemptible.terminate = True  # the run stops between two graph nodes

    def encode(
        self,
        texts: list[str],
        preemptible: bool = False,
        tokens: TokenIds | None = None,
        between: Callable[[], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        if not texts:
            return np.empty((0, getattr(self, "dim", 0)), dtype=np.float32)
        if self._pool is not None:
            return in_pieces(self._pool, self._run, texts, tokens, ONNX_PIECE, between)
        inputs = self._tokens(texts, tokens)
        options = self._ort.RunOptions() if preemptible else None
        if options is not None:
            with self._lock:
                self._preemptible = options
        try:
            (out,) = self.session.run(["embedding"], inputs, options)
        except Exception:
            if options is not None and options.terminate:
                raise Preempted from None
            raise
        finally:
            if options is not None:
                with self._lock:
                    self._preemptible = None
        return normalise(out)

    def encode_query(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if self._pool is None:
            return self.encode(texts)
        return self._run(texts, None)  # on this thread, beside the streams

    def _run(self, texts: list[str], tokens: TokenIds | None) -> npt.NDArray[np.float32]:
        (out,) = self.session.run(["embedding"], self._tokens(texts, tokens))
        return normalise(out)


class OpenVinoBackend:
    """The model compiled twice from one file: once on every core for indexing, once on one thread
    for queries. A compiled model runs one request at a time per stream, and a request cannot be
    stopped part-way (``preempt``), so a query on the indexing model waited for the batch in flight
    (p50 226 ms behind whole batches of 32, int8, AMX Xeon). On its own model a query shares the
    cores with the batch instead: p50 / p99 7.7 / 12.3 ms during whole batches (idle 3.8 / 6.1).
    The second compilation takes about 0.4 s (the process's resident memory did not grow with it).

    Indexing takes more than a sub-batch a call only where AMX runs the model (bf16 and int8 on a
    CPU with AMX; ``whole_batches``), where 20-50 ms sub-batches cost the job's encode path 5-10%
    (int8, session 25). On Zen 4 (AVX-512, no AMX) it was the other way round: whole jobs ran 8-11%
    faster with 50 ms sub-batches, 89.9 / 88.4 chunks/s against 81.1 / 81.9 with whole batches of
    32 (docs/benchmarks.md, session 26). There the indexing model runs a stream per core and takes a
    job's whole call, whose texts go to the streams in pieces (``in_pieces``), each on an infer
    request of its own."""

    preemptible = False
    own_query_path = True

    def __init__(self, spec: Spec, model_path: Path, cache_root: Path, *, stream_per_core: bool | None = None) -> None:
        """``stream_per_core``: indexing on a stream per core (None: where AMX runs the model, as measured)."""
        amx = matrix_unit() and spec.dtype != "fp32"  # fp32 does not run on AMX
        by_streams = amx if stream_per_core is None else stream_per_core
        self.whole_batches = amx or by_streams
        try:
            ov = import_openvino()
        except ImportError as exc:
            raise BackendUnavailable("openvino is not installed (pip install 'semantik[openvino]')") from exc
        if spec.device != "cpu" or spec.dtype not in ("fp32", "bf16", "int8"):
            raise BackendUnavailable("the OpenVINO backend runs fp32, bf16 or int8 on the CPU")
        if spec.dtype == "bf16" and not bf16_instructions():
            raise BackendUnavailable("OpenVINO bf16 needs a CPU with bf16 instructions (AVX-512 BF16 or AMX)")
        try:
            path = onnx_model(cache_root, model_path, "fp32")
            if spec.dtype == "int8":
                path = openvino_int8_model(cache_root, model_path)
        except (ImportError, ExportError) as exc:  # ImportError: nncf, for the int8 model
            raise BackendUnavailable(str(exc)) from exc
        core = ov.Core()
        self.spec = spec
        # int8: what stays in floating point (softmax, layer norms, the kept matmuls) runs in bf16
        # where the CPU has it natively, as OpenVINO's default would (min cosine 0.9942 against
        # 0.9938 in f32, and faster).
        precision = "bf16" if spec.dtype == "bf16" or (spec.dtype == "int8" and bf16_instructions()) else "f32"
        # A query is one short text: one thread runs it about as fast as all of them, and takes one
        # core's share from a batch in flight, not every core's.
        self.compiled, self._query_compiled = (
            core.compile_model(
                str(path),
                "CPU",
                {
                    "INFERENCE_NUM_THREADS": threads,
                    "INFERENCE_PRECISION_HINT": precision,
                    "PERFORMANCE_HINT": hint,
                },
            )
            for threads, hint in ((cpu_threads(), "THROUGHPUT" if by_streams else "LATENCY"), (1, "LATENCY"))
        )
        # With AMX, indexing runs one stream per core (OpenVINO's throughput hint), each on its own
        # pieces of a call, rather than every core on one request: 8-9% more chunks/s on an AMX Xeon
        # with 2 cores, and whole jobs 15-20% faster (docs/benchmarks.md, session 30).
        self.streams = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if by_streams else 1
        # A thread per stream, each running an infer request of its own (``_run``).
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="openvino-stream") if by_streams else None
        self._lock = threading.Lock()
        self._requests: dict[int, list[Any]] = {id(self.compiled): [], id(self._query_compiled): []}
        self.max_seq_length = model_max_seq_length(model_path)
        # OpenVINO prepares its kernels once per input shape (about 14 ms for a new one, measured on
        # int8): lengths padded to a multiple of 16 (the pads masked, so the vectors do not change)
        # keep the shapes few. Without it a job's varied sub-batches ran 18% slower on first sight.
        self._tokens = Tokens(model_path, self.max_seq_length, pad_to_multiple_of=PAD_MULTIPLE)
        self.dim = int(self.encode(["dimension"]).shape[1])

    def preempt(self) -> None:
        # InferRequest.cancel() exists, but a request cancelled mid-graph left the compiled model's
        # dynamic-shape state broken: the next query failed shape inference. Queries have their own
        # compiled model instead.
        pass

    def encode(
        self,
        texts: list[str],
        preemptible: bool = False,
        tokens: TokenIds | None = None,
        between: Callable[[], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        if self._pool is not None and len(texts) > 1:
            # Every stream gets a piece, up to STREAM_PIECE texts each.
            piece = min(STREAM_PIECE, -(-len(texts) // self.streams))
            return in_pieces(self._pool, functools.partial(self._run, self.compiled), texts, tokens, piece, between)
        return self._run(self.compiled, texts, tokens)

    def encode_query(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return self._run(self._query_compiled, texts, None)

    def _run(self, compiled: Any, texts: list[str], tokens: TokenIds | None) -> npt.NDArray[np.float32]:
        if not texts:
            return np.empty((0, getattr(self, "dim", 0)), dtype=np.float32)
        inputs = self._tokens(texts, tokens)
        idle = self._requests[id(compiled)]
        with self._lock:  # one infer request per concurrent caller
            request = idle.pop() if idle else compiled.create_infer_request()
        try:
            return normalise(np.asarray(next(iter(request.infer(inputs).values()))))
        finally:
            with self._lock:
                idle.append(request)


def load_backend(spec: Spec, model_path: Path, cache_root: Path) -> Backend:
    if spec.backend == "torch":
        return TorchBackend(spec, model_path)
    if spec.backend == "onnx":
        return OnnxBackend(spec, model_path, cache_root)
    if spec.backend == "openvino":
        return OpenVinoBackend(spec, model_path, cache_root)
    raise BackendUnavailable(f"unknown backend {spec.backend!r} (one of {', '.join(BACKENDS)})")
