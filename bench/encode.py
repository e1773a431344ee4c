"""Every embedding backend available here on the same NFCorpus chunks, in one run.

Prints chunks/s (the median of ``--rounds`` passes, taken in turn across backends), min and mean
cosine to torch fp32 for each, and which one ``auto`` picks (the product's own selection, measured
afresh in a temporary cache). Last line: ``RESULT {json}`` with ``backends`` (name -> chunks/s),
``chosen``, ``ratio_auto_vs_torch_fp32``, ``min_cosine`` (and ``ratio_auto_vs_torch_bf16`` where torch
bf16 runs).

    .venv/bin/python bench/encode.py --chunks 512
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import load_corpus

from semantik.indexing.chunk import chunker_for
from semantik.inference.backends import Backend, BackendUnavailable, Spec, load_backend
from semantik.inference.choose import candidates, choose
from semantik.inference.embedder import default_model_path


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni")]
    return f"{fields.get('Model name', '?').strip()}, {len(wanted) and ' '.join(wanted)}"


def nfcorpus_chunks(model_path: Path, count: int) -> list[str]:
    """The first ``count`` NFCorpus chunks, as the product chunks them, sorted by length as the
    pipeline batches them (less padding)."""
    chunker = chunker_for(model_path, 256, 32)
    chunks: list[str] = []
    for doc in load_corpus():
        chunks.extend(chunker.chunk(f"{doc['title']} {doc['text']}".strip()))
        if len(chunks) >= count:
            break
    return sorted(chunks[:count], key=len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=512, help="NFCorpus chunks to encode per backend")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per backend, taken in turn")
    args = parser.parse_args()
    if args.rounds < 1 or args.chunks < 1:
        parser.error("--rounds and --chunks must be at least 1")

    model_path = default_model_path()
    chunks = nfcorpus_chunks(model_path, args.chunks)
    print(f"CPU: {cpu_line()}")
    mean_chars = np.mean([len(c) for c in chunks])
    print(f"{len(chunks)} NFCorpus chunks (mean {mean_chars:.0f} characters), batch {args.batch_size}")

    with tempfile.TemporaryDirectory() as cache_name:
        cache = Path(cache_name)
        rates: dict[str, float] = {}
        cosines: dict[str, tuple[float, float]] = {}
        loaded = {}
        for spec in [Spec("torch", "fp32"), *[s for s in candidates("cpu") if s != Spec("torch", "fp32")]]:
            try:
                loaded[spec.name] = load_backend(spec, model_path, cache)
            except BackendUnavailable as exc:
                print(f"{spec.name:<16}  unavailable: {exc}")
                continue
            loaded[spec.name].encode(chunks[: args.batch_size])  # warm up

        def encode_all(backend: Backend) -> np.ndarray:
            return np.concatenate(
                [backend.encode(chunks[i : i + args.batch_size]) for i in range(0, len(chunks), args.batch_size)]
            )

        # Rounds in turn (torch, onnx, ..., torch, onnx, ...) so a spell of load on a shared host
        # falls on every backend alike; each backend's median round counts.
        runs: dict[str, list[float]] = {name: [] for name in loaded}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            for name, backend in loaded.items():
                began = time.perf_counter()
                vectors[name] = encode_all(backend)
                runs[name].append(len(chunks) / (time.perf_counter() - began))
        print(f"{'backend':<16}{'chunks/s':>10}{'min cos':>10}{'mean cos':>10}  rounds")
        reference = vectors.get("torch-fp32", next(iter(vectors.values())))
        for name in loaded:
            rates[name] = round(float(np.median(runs[name])), 1)
            cos = np.sum(vectors[name] * reference, axis=1)
            cosines[name] = (float(cos.min()), float(cos.mean()))
            each = " ".join(f"{r:.1f}" for r in runs[name])
            print(f"{name:<16}{rates[name]:>10.1f}{cos.min():>10.4f}{cos.mean():>10.4f}  {each}")
        loaded.clear()
        del backend

        began = time.perf_counter()
        choice = choose(model_path, cache, device="cpu")
        took = time.perf_counter() - began
        print(f"auto measured {len(choice.measured)} candidates in {took:.1f} s: {choice.measured}")
        print(f"auto chose {choice.spec.name}: {choice.reason}")
    chosen = choice.spec.name
    result = {
        "cpu": cpu_line(),
        "chunks": len(chunks),
        "backends": rates,
        "cosine": {k: {"min": round(v[0], 4), "mean": round(v[1], 4)} for k, v in cosines.items()},
        "chosen": chosen,
        "ratio_auto_vs_torch_fp32": round(rates.get(chosen, 0.0) / rates["torch-fp32"], 2),
        "min_cosine": round(cosines.get(chosen, (0.0, 0.0))[0], 4),
    }
    if "torch-bf16" in rates:  # the goal where bf16 is native: auto >= 1.2x torch bf16
        result["ratio_auto_vs_torch_bf16"] = round(rates.get(chosen, 0.0) / rates["torch-bf16"], 2)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
