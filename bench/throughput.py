"""The same chunks through (a) raw `model.encode` and (b) a full Semantik job; chunks/s and the ratio.

Goal: the full job (scan, read, hash, extract, chunk, embed, upsert, commit) at >= 90% of raw encode.

    .venv/bin/python bench/throughput.py --files 400
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _harness import load_corpus, running_product, write_corpus

from semantik.indexing.chunk import chunker_for
from semantik.inference.embedder import Embedder, default_model_path


def raw_encode(texts: list[str], dtype: str, batch_size: int, chunk_size: int, overlap: int) -> tuple[int, float]:
    embedder = Embedder(default_model_path(), device="cpu", dtype=dtype, batch_size=batch_size)
    chunker = chunker_for(embedder, chunk_size, overlap)
    chunks = [chunk for text in texts for chunk in chunker.chunk(text)]
    embedder.encode_sync(chunks[: batch_size * 2])  # warm up
    started = time.perf_counter()
    for start in range(0, len(chunks), batch_size):
        embedder.encode_sync(chunks[start : start + batch_size])
    return len(chunks), time.perf_counter() - started


async def full_job(tmp: Path, docs: Path, dtype: str, batch_size: int) -> tuple[int, float]:
    async with running_product(tmp, docs, embed_dtype=dtype, embed_batch_size=batch_size) as product:
        started = time.perf_counter()
        job = await product.client.create_job("throughput", str(docs))
        done = await product.client.wait(job["id"], poll_s=0.1)
        wall_s = time.perf_counter() - started
        assert done["status"] == "completed", done
        return int(done["chunks"]), wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    docs_data = load_corpus()[: args.files]
    texts = [f"{doc['title']} {doc['text']}".strip() for doc in docs_data]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_corpus(docs_data, tmp / "docs")
        raw_chunks, raw_s = raw_encode(texts, args.dtype, args.batch_size, 256, 32)
        job_chunks, wall_s = asyncio.run(full_job(tmp, tmp / "docs", args.dtype, args.batch_size))
    raw_rate, job_rate = raw_chunks / raw_s, job_chunks / wall_s
    print(f"files: {args.files}   dtype: {args.dtype}   batch: {args.batch_size}")
    print(f"{'path':<44}{'chunks':>8}{'seconds':>10}{'chunks/s':>10}")
    print(f"{'raw model.encode':<44}{raw_chunks:>8}{raw_s:>10.1f}{raw_rate:>10.1f}")
    print(f"{'full job (POST /api/jobs -> completed)':<44}{job_chunks:>8}{wall_s:>10.1f}{job_rate:>10.1f}")
    print(f"ratio job/raw: {job_rate / raw_rate:.1%}  (goal >= 90%)")


if __name__ == "__main__":
    main()
