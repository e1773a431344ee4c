"""The same chunks through (a) raw `model.encode` and (b) a full Semantik job; chunks/s and the ratio.

Goal: the full job (scan, read, hash, extract, chunk, embed, upsert, commit) at >= 90% of raw encode.

    .venv/bin/python bench/throughput.py --files 400
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _harness import load_corpus, running_product, write_corpus

from semantik.indexing.chunk import chunker_for
from semantik.indexing.pipeline import ENCODE_GROUP
from semantik.inference.embedder import Embedder, default_model_path
from semantik.settings import Settings


def raw_encode(args: argparse.Namespace, texts: list[str], cache: Path) -> tuple[int, float, str, int]:
    """The chosen backend alone, on length-sorted batches: what the model can do here. On a stream
    per core each call is as large as a job's largest (ENCODE_GROUP batches), which the streams take
    in pieces; elsewhere a whole batch (a job runs sub-batches of one at most: an upper bound)."""
    embedder = Embedder(
        default_model_path(),
        device="cpu",
        dtype=args.dtype,
        backend=args.backend,
        batch_size=args.batch_size,
        cache_dir=cache,
    )
    chunker = chunker_for(embedder, 256, 32)
    chunks = sorted((chunk for text in texts for chunk in chunker.chunk(text)), key=len)
    batch_size = args.batch_size * (ENCODE_GROUP if embedder.model.streams > 1 else 1)
    embedder.model.encode(chunks[:batch_size])  # warm up
    started = time.perf_counter()
    for start in range(0, len(chunks), batch_size):
        embedder.model.encode(chunks[start : start + batch_size])
    return len(chunks), time.perf_counter() - started, embedder.label, batch_size


async def full_job(args: argparse.Namespace, tmp: Path, docs: Path, cache: Path) -> tuple[int, float]:
    overrides: dict[str, Any] = {
        "embed_dtype": args.dtype,
        "embed_backend": args.backend,
        "embed_batch_size": args.batch_size,
        "worker_poll_delay_s": Settings.model_fields["worker_poll_delay_s"].default,
    }
    # The worker polls its queue as often as the product's default; the bench watches the job as a
    # user would (twice a second) and takes its duration from the job's own record, from the POST to
    # the end, to the millisecond: polling faster only took the cores from the job it measured.
    async with running_product(tmp, docs, model_cache_dir=cache, **overrides) as product:
        job = await product.client.create_job("throughput", str(docs))
        done = await product.client.wait(job["id"], poll_s=0.5)
        assert done["status"] == "completed", done
        return int(done["chunks"]), iso_s(done["finished_at"]) - iso_s(done["created_at"])


def iso_s(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "openvino"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model-cache", type=Path, default=None, help="reuse exported models from here")
    args = parser.parse_args()

    docs_data = load_corpus()[: args.files]
    texts = [f"{doc['title']} {doc['text']}".strip() for doc in docs_data]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_corpus(docs_data, tmp / "docs")
        cache = args.model_cache or tmp / "models"
        raw_chunks, raw_s, label, call = raw_encode(args, texts, cache)
        job_chunks, wall_s = asyncio.run(full_job(args, tmp, tmp / "docs", cache))
    raw_rate, job_rate = raw_chunks / raw_s, job_chunks / wall_s
    print(f"files: {args.files}   model: {label}   batch: {args.batch_size}")
    print(f"{'path':<44}{'chunks':>8}{'seconds':>10}{'chunks/s':>10}")
    print(f"{f'raw backend encode (calls of {call})':<44}{raw_chunks:>8}{raw_s:>10.1f}{raw_rate:>10.1f}")
    print(f"{'full job (POST /api/jobs -> completed)':<44}{job_chunks:>8}{wall_s:>10.1f}{job_rate:>10.1f}")
    print(f"ratio job/raw: {job_rate / raw_rate:.1%}  (goal >= 90%)")


if __name__ == "__main__":
    main()
