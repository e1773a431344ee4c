"""Retrieval quality on BEIR NFCorpus (test split) through the full product path.

Indexes every document as a job through the API (one file per document, title + " " + text), runs
the test queries through POST /api/search in `--mode` hybrid (the default), dense or keyword,
scores a document by its best chunk, and prints the mode and nDCG@10 as pytrec_eval's ndcg_cut_10
computes it (graded relevance, linear gain). MTEB's published figure for all-MiniLM-L6-v2 (dense)
is 0.3159. `--exact` instead embeds whole documents with plain
sentence-transformers and searches exactly: a check of the scoring code itself (expect 0.3159 fp32).

    .venv/bin/python bench/quality.py                 # the product path, hybrid search (the default)
    .venv/bin/python bench/quality.py --mode dense    # dense only (keyword: BM25 only)
    .venv/bin/python bench/quality.py --exact --dtype fp32
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _harness import NFCORPUS, load_corpus, running_product, write_corpus

MTEB_NDCG10 = 0.3159


def load_queries(data: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with (data / "qrels" / "test.tsv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            qrels[row["query-id"]][row["corpus-id"]] = int(row["score"])
    with (data / "queries.jsonl").open(encoding="utf-8") as handle:
        queries = {q["_id"]: q["text"] for q in map(json.loads, handle) if q["_id"] in qrels}
    return queries, dict(qrels)


def ndcg_at_10(ranking: dict[str, float], judged: dict[str, int]) -> float:
    """pytrec_eval ndcg_cut_10: gain = relevance, discount log2(rank + 1), ideal from all judgements."""
    top = sorted(ranking.items(), key=lambda item: (-item[1], item[0]))[:10]
    dcg = sum(judged.get(doc, 0) / math.log2(rank + 2) for rank, (doc, _) in enumerate(top))
    ideal = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:10]
    idcg = sum(rel / math.log2(rank + 2) for rank, rel in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mean_ndcg(rankings: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    scores = [ndcg_at_10(rankings.get(qid, {}), judged) for qid, judged in qrels.items() if any(judged.values())]
    return statistics.mean(scores)


async def product_path(args: argparse.Namespace, docs: list[dict[str, str]], queries: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_corpus(docs, tmp / "docs")
        async with running_product(tmp, tmp / "docs", embed_dtype=args.dtype, embed_backend=args.backend) as product:
            started = time.perf_counter()
            job = await product.client.create_job("nfcorpus", str(tmp / "docs"))
            done = await product.client.wait(job["id"], poll_s=0.25)
            index_s = time.perf_counter() - started
            assert done["status"] == "completed", done
            rankings: dict[str, dict[str, float]] = {}
            latencies_ms = []
            for qid, text in queries.items():
                began = time.perf_counter()
                response = await product.client.search(text, "nfcorpus", k=args.k, mode=args.mode)
                latencies_ms.append((time.perf_counter() - began) * 1000)
                best: dict[str, float] = {}
                for hit in response["results"]:
                    doc_id = Path(hit["path"]).stem
                    best[doc_id] = max(best.get(doc_id, -1.0), hit["score"])
                rankings[qid] = best
    ordered = sorted(latencies_ms)
    print(f"documents {done['files_done']}  chunks {done['chunks']}  backend {args.backend}  dtype {args.dtype}")
    print(f"indexing: {index_s:.1f} s end to end, {done['chunks'] / index_s:.1f} chunks/s")
    print(f"search ({len(queries)} queries, k={args.k}, mode {args.mode}): p50 {ordered[len(ordered) // 2]:.1f} ms,"
          f" p99 {ordered[int(len(ordered) * 0.99)]:.1f} ms")  # fmt: skip
    report(rankings, args)


def exact_path(args: argparse.Namespace, docs: list[dict[str, str]], queries: dict[str, str]) -> None:
    from semantik.inference.embedder import Embedder, default_model_path

    embedder = Embedder(default_model_path(), device="cpu", dtype=args.dtype, backend=args.backend, batch_size=32)
    started = time.perf_counter()
    doc_vectors = embedder.encode_sync([f"{d['title']} {d['text']}".strip() for d in docs])
    print(f"exact: {len(docs)} documents embedded whole in {time.perf_counter() - started:.1f} s ({embedder.label})")
    ids = [d["_id"] for d in docs]
    query_ids = list(queries)
    scores = embedder.encode_sync([queries[q] for q in query_ids]) @ doc_vectors.T
    rankings = {}
    for row, qid in enumerate(query_ids):
        top = np.argsort(-scores[row])[: args.k]
        rankings[qid] = {ids[i]: float(scores[row, i]) for i in top}
    report(rankings, args)


def report(rankings: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    _, qrels = load_queries(args.data)
    qrels = {qid: judged for qid, judged in qrels.items() if qid in rankings}
    mode = "exact dense" if args.exact else args.mode
    print(f"mode {mode}  nDCG@10 = {mean_ndcg(rankings, qrels):.4f}  over {len(qrels)} queries"
          f"   (MTEB published, dense: {MTEB_NDCG10})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=NFCORPUS)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "openvino"])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--mode", default="hybrid", choices=["hybrid", "dense", "keyword"], help="search mode (the product path)"
    )
    parser.add_argument("--exact", action="store_true", help="plain sentence-transformers, exact search")
    parser.add_argument("--quick", action="store_true", help="first 300 documents and their queries only")
    args = parser.parse_args()

    docs = load_corpus(args.data)
    queries, qrels = load_queries(args.data)
    if args.quick:
        docs = docs[:300]
        kept = {d["_id"] for d in docs}
        queries = {q: t for q, t in queries.items() if any(doc in kept and rel for doc, rel in qrels[q].items())}
    if args.exact:
        exact_path(args, docs, queries)
    else:
        asyncio.run(product_path(args, docs, queries))


if __name__ == "__main__":
    main()
