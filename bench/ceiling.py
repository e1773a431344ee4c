"""How much faster int8 can make this model on this CPU: an estimate of the bound its matmuls set.

Dynamic int8 (``SEMANTIK_EMBED_DTYPE=int8`` on ONNX Runtime) speeds up the model's linear layers only;
layer norms, GELU, softmax and attention's own products keep their fp32 cost. This script takes the
encoder's linear layers' real inputs from a torch fp32 pass over NFCorpus chunks (batches as the
pipeline makes them: sorted by length, 32 a batch; the pooler, which the exported graph leaves out,
is not counted) and times, on the same inputs:

- the whole model in torch fp32 (what ``auto`` is compared with);
- the whole model in ONNX Runtime fp32 (the product's exported fp32 graph, with the fusions ONNX
  Runtime makes when it loads it) and those linear layers alone in ONNX Runtime fp32: what ONNX
  Runtime spends outside the linear layers;
- the same layers alone as ONNX Runtime int8 graphs, quantized with the product's settings
  (``quantize.WEIGHTS``: activations quantized per call, 7-bit signed per-channel weights), each
  layer on its own (the product's graph quantizes Q, K and V as one).

If the int8 graph ran everything but its linear layers as the fp32 graph does, it would reach
``torch_whole / (onnx_whole - onnx_linear_fp32 + linear_int8)`` times torch fp32. That is an
estimate, not a measurement of any graph: the product's int8 graph fuses other ops (``QAttention``,
``BiasGelu``), whose cost differs, and keeps 2 of 36 layers in fp32 to stay faithful.
Last line: ``RESULT {json}`` with ``torch_whole_s``, ``onnx_whole_s``, ``onnx_linear_fp32_s``,
``linear_int8_s``, ``linear_speedup``, ``linear_share`` and ``bound_vs_torch_fp32``.

    .venv/bin/python bench/ceiling.py --chunks 256
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from encode import cpu_line, nfcorpus_chunks
from onnx import TensorProto, helper, numpy_helper

from semantik.inference.backends import OnnxBackend, Spec, TorchBackend, cpu_threads, onnx_session
from semantik.inference.embedder import default_model_path
from semantik.inference.quantize import WEIGHTS


def linear_graph(weight: np.ndarray, bias: np.ndarray | None, path: Path) -> None:
    """One linear layer (x @ W^T + b) as an fp32 ONNX graph with any number of rows."""
    out_features, in_features = weight.shape
    inits = [numpy_helper.from_array(np.ascontiguousarray(weight.T), "W")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y" if bias is None else "xw"])]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "b"))
        nodes.append(helper.make_node("Add", ["xw", "b"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", out_features])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def timed(fns: dict[str, Any], rounds: int) -> dict[str, float]:
    """Each function's median time over ``rounds`` rounds, taken in turn (so a spell of load on a
    shared host falls on each alike), after one untimed call each."""
    for fn in fns.values():
        fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            began = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - began)
    return {name: float(np.median(times)) for name, times in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=256, help="NFCorpus chunks per pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, every part in each (medians count)")
    args = parser.parse_args()

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model_path = default_model_path()
    chunks = nfcorpus_chunks(model_path, args.chunks)
    batches = [chunks[i : i + args.batch_size] for i in range(0, len(chunks), args.batch_size)]
    print(f"CPU: {cpu_line()}; {cpu_threads()} threads")

    backend = TorchBackend(Spec("torch", "fp32"), model_path)
    linears = [
        (name, m)
        for name, m in backend.model.named_modules()
        if isinstance(m, torch.nn.Linear) and "pooler" not in name  # (mean pooling: BERT's pooler is not used)
    ]
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name, _ in linears}
    hooks = [
        m.register_forward_hook(
            lambda _m, x, _y, name=name: inputs[name].append(x[0].detach().reshape(-1, x[0].shape[-1]))
        )
        for name, m in linears
    ]

    def whole() -> None:
        for batch in batches:
            backend.encode(batch)

    whole()  # records each linear layer's inputs, batch by batch
    for hook in hooks:
        hook.remove()
    rows = sum(x.shape[0] for x in inputs[linears[0][0]])
    print(f"{len(chunks)} chunks in {len(batches)} batches, {rows:,} token rows; {len(linears)} linear layers")

    with tempfile.TemporaryDirectory() as work_name:
        work = Path(work_name)
        # One run on both cores, batch by batch, as the layers below are timed (not a stream per core).
        onnx_backend = OnnxBackend(Spec("onnx", "fp32"), model_path, work / "cache", stream_per_core=False)
        fp32_sessions, int8_sessions = [], []
        for i, (name, m) in enumerate(linears):
            fp32, int8 = work / f"{i}.onnx", work / f"{i}.int8.onnx"
            bias = None if m.bias is None else m.bias.detach().numpy()
            linear_graph(m.weight.detach().numpy(), bias, fp32)
            quantize_dynamic(
                fp32,
                int8,
                weight_type=QuantType.QInt8,
                per_channel=WEIGHTS["per_channel"],
                reduce_range=WEIGHTS["reduce_range"],
            )
            xs = [x.numpy() for x in inputs[name]]
            fp32_sessions.append((onnx_session(fp32), xs))
            int8_sessions.append((onnx_session(int8), xs))

        def run_all(sessions: list[tuple[Any, list[np.ndarray]]]) -> None:
            for session, xs in sessions:
                for x in xs:
                    session.run(None, {"x": x})

        took = timed(
            {
                "torch": whole,
                "onnx": lambda: [onnx_backend.encode(batch) for batch in batches],
                "fp32": lambda: run_all(fp32_sessions),
                "int8": lambda: run_all(int8_sessions),
            },
            args.rounds,
        )
        torch_whole_s, onnx_whole_s = took["torch"], took["onnx"]
        onnx_linear_fp32_s, linear_int8_s = took["fp32"], took["int8"]

    bound = torch_whole_s / (onnx_whole_s - onnx_linear_fp32_s + linear_int8_s)
    result = {
        "cpu": cpu_line(),
        "chunks": len(chunks),
        "torch_whole_s": round(torch_whole_s, 3),
        "onnx_whole_s": round(onnx_whole_s, 3),
        "onnx_linear_fp32_s": round(onnx_linear_fp32_s, 3),
        "linear_int8_s": round(linear_int8_s, 3),
        "linear_speedup": round(onnx_linear_fp32_s / linear_int8_s, 2),
        "linear_share": round(onnx_linear_fp32_s / onnx_whole_s, 3),
        "bound_vs_torch_fp32": round(bound, 2),
    }
    n = len(chunks)
    print(f"torch fp32, whole model: {torch_whole_s:.3f} s ({n / torch_whole_s:.1f} chunks/s)")
    print(f"ONNX Runtime fp32, whole model: {onnx_whole_s:.3f} s ({n / onnx_whole_s:.1f} chunks/s)")
    print(f"  its linear layers alone: {onnx_linear_fp32_s:.3f} s ({100 * onnx_linear_fp32_s / onnx_whole_s:.0f}%)")
    print(f"  the same layers in int8: {linear_int8_s:.3f} s ({onnx_linear_fp32_s / linear_int8_s:.2f}x faster)")
    print(f"estimated bound on a whole int8 graph: {bound:.2f}x torch fp32 ({n * bound / torch_whole_s:.1f} chunks/s)")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
