"""int8 weights for the exported graph: fast on a CPU without bf16, and measured to stay faithful.

Five steps, each measured on the calibration set of ``choose.py`` (real passages and queries):

1. ONNX Runtime's BERT fusions (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization)
   on the fp32 graph: the same numbers, fewer passes over memory. A graph they do not recognise is
   quantized unfused.
2. The feed-forward blocks' activation outliers are taken out of what int8 sees (``_balance``), the
   same sums in fp32. int8 activations get one scale per tensor, so one channel far above the rest
   coarsens every other channel's steps: on all-MiniLM-L6-v2 one GELU output channel reaches 14-25
   where the 99th percentile of the channels' maxima is 4-5, and one input channel of the first
   projection reaches 22-30 where that percentile is 5-7.
   - A GELU output channel above ``SPLIT_FACTOR`` times that percentile runs beside the output
     projection in fp32 (a matmul one channel wide each way); in the int8 path its bias becomes so
     negative that GELU gives exactly 0, and its weight row 0 (1-2 channels in 4 of 6 layers).
   - The first projection's input channels above the percentile are scaled down to it (one Mul),
     and the weight rows they meet scaled up by as much (SmoothQuant's move, for the few that stand
     out only).
   The rewritten fp32 graph must give the same vectors (checked at every export), and with every
   projection int8 it must be at least as faithful as the graph without it; else it is dropped.
   With it every projection can be int8: min cosine 0.994 on the calibration set where the graph
   before it, 2 of 6 output projections kept fp32, reached 0.992 (docs/benchmarks.md, session 21).
3. Dynamic quantization with signed 8-bit per-channel weights in reduced (7-bit) range. On AVX2
   without VNNI the u8 x s8 multiply adds pairs in 16 bits; 7-bit weights cannot overflow there
   (full-range signed weights gave min cosine 0.90), and ONNX Runtime's u8 x s8 kernel is the
   faster one (unsigned weights, the earlier choice, ran 1.3x torch fp32 against 1.8x).
4. If the graph still falls below ``TARGET_COSINE`` on some calibration text, the feed-forward output
   projections (the matmuls after GELU) are quantized alone to rank them by the loss each causes, and
   the worst are kept in fp32, one at a time, until every calibration text keeps the target.
5. The fused residual layer norms (``SkipLayerNormalization``) are written back as the plain ops they
   stand for (Add, LayerNormalization), the same sums: ONNX Runtime's fused kernel took 11% of the
   int8 graph's time on an AVX2 Zen 3, where its plain LayerNormalization and Add took a third of
   that; the graph ran 8.4% faster (median of 8 paired passes, docs/benchmarks.md, session 19). They
   are fused for steps 1-4, whose choices were measured that way.

``auto`` still measures the result against torch fp32 and refuses it below ``MIN_COSINE``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from semantik.inference.backends import (
    Tokens,
    import_openvino,
    int8_dot_product,
    model_max_seq_length,
    normalise,
    onnx_session,
)
from semantik.inference.choose import CALIBRATION_BATCH, MIN_COSINE, calibration
from semantik.inference.export import ExportError, publish

# What the export aims for on every calibration text; auto's bar (MIN_COSINE) sits below it, so a
# graph made here is not refused by a few thousandths of timing-independent noise (batch makeup).
TARGET_COSINE = max(0.992, MIN_COSINE)
WEIGHTS = {"weight_type": "QInt8", "per_channel": True, "reduce_range": True}
# Raise when the way the graph is made changes (fusions, what may stay fp32, the ranking).
RECIPE_VERSION = 3


class _Calibration:
    """The calibration texts through one graph, batched as ``auto`` batches them (passages, then
    queries: with one activation scale per batch, int8 results depend on what shares a batch)."""

    def __init__(self, model_path: Path) -> None:
        passages, queries = calibration()
        tokens = Tokens(model_path, model_max_seq_length(model_path))
        # Tokenized once: every graph the export tries reads the same batches.
        self.batches = [
            tokens(texts[i : i + CALIBRATION_BATCH])
            for texts in (passages, queries)
            for i in range(0, len(texts), CALIBRATION_BATCH)
        ]

    def vectors(self, graph: Path) -> npt.NDArray[np.float32]:
        session = onnx_session(graph)
        return normalise(np.concatenate([session.run(["embedding"], batch)[0] for batch in self.batches]))


def recipe() -> str:
    """What shapes the int8 graph besides the model and the runtime: part of its cached file name."""
    passages, queries = calibration()
    parts = [RECIPE_VERSION, WEIGHTS, TARGET_COSINE, SPLIT_FACTOR, SPLIT_MAX, passages, queries]
    digest = hashlib.sha256(json.dumps(parts).encode())
    return digest.hexdigest()[:12]


def _fuse(source: Path, target: Path, model_path: Path) -> bool:
    """Write the fused graph to ``target``; False when the fusions found nothing to fuse."""
    from onnxruntime.transformers import optimizer

    config = json.loads((model_path / "config.json").read_text())
    if config.get("model_type") != "bert":
        return False
    fused = optimizer.optimize_model(
        str(source),
        model_type="bert",
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
        opt_level=0,
    )
    stats = fused.get_fused_operator_statistics()
    if not stats.get("Attention"):
        return False
    fused.save_model_to_file(str(target))
    return True


def _down_projections(graph: Path, model_path: Path) -> list[str]:
    """The matmuls whose weight maps the feed-forward width back to the hidden width."""
    import onnx

    config = json.loads((model_path / "config.json").read_text())
    width, hidden = int(config.get("intermediate_size", 0)), int(config.get("hidden_size", 0))
    model = onnx.load(str(graph), load_external_data=False)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and len(node.input) > 1 and shapes.get(node.input[1]) == (width, hidden)
    ]


# Step 2 of the module docstring: a channel of a feed-forward output projection's input (the GELU
# output) whose largest value on the calibration set exceeds SPLIT_FACTOR times the 99th percentile of
# all channels' largest values runs beside the int8 matmul in fp32; at most SPLIT_MAX channels a
# layer (all-MiniLM-L6-v2: 1-2 in 4 of 6 layers).
SPLIT_FACTOR = 2.0
SPLIT_MAX = 8
# What a masked channel's bias becomes: GELU of anything this far below zero is exactly zero.
_MASK_BIAS = -1.0e4


def _channel_maxima(graph: Path, names: list[str], calib: _Calibration) -> dict[str, npt.NDArray[np.float64]]:
    """The largest magnitude each channel of the tensors ``names`` reaches over the calibration set's
    real tokens (padding left out)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(graph))
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe = graph.with_name("probe.onnx")
    onnx.save(model, str(probe))
    try:
        session = onnx_session(probe)
        maxima: dict[str, npt.NDArray[np.float64]] = {}
        for batch in calib.batches:
            real = batch["attention_mask"].astype(bool)
            for name, values in zip(names, session.run(names, batch), strict=True):
                largest = np.abs(values[real]).max(axis=0).astype(np.float64)
                maxima[name] = np.maximum(maxima[name], largest) if name in maxima else largest
        return maxima
    finally:
        probe.unlink(missing_ok=True)


def _balance(graph: Path, target: Path, model_path: Path, calib: _Calibration) -> dict[str, Any] | None:
    """Write ``graph`` to ``target`` with the feed-forward blocks' activation outliers taken out of
    what int8 sees (step 2 of the module docstring), the same sums in fp32; return what was done, or
    None, writing nothing, when the graph has no feed-forward block this recognises."""
    import onnx
    from onnx import helper, numpy_helper

    config = json.loads((model_path / "config.json").read_text())
    width, hidden = int(config.get("intermediate_size", 0)), int(config.get("hidden_size", 0))
    model = onnx.load(str(graph))
    weights = {init.name: init for init in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def shape(name: str) -> tuple[int, ...]:
        return tuple(weights[name].dims) if name in weights else ()

    blocks = []  # (up MatMul, BiasGelu, down MatMul) of each layer, in graph order
    for down in model.graph.node:
        if down.op_type != "MatMul" or shape(down.input[1]) != (width, hidden):
            continue
        gelu = producer.get(down.input[0])
        up = producer.get(gelu.input[0]) if gelu is not None and gelu.op_type == "BiasGelu" else None
        if gelu is None or up is None or up.op_type != "MatMul" or shape(up.input[1]) != (hidden, width):
            continue
        if len(consumers.get(gelu.output[0], [])) != 1 or shape(gelu.input[1]) != (width,):
            continue
        blocks.append((up, gelu, down))
    if not blocks:
        return None
    maxima = _channel_maxima(graph, [t for up, gelu, _ in blocks for t in (up.input[0], gelu.output[0])], calib)

    def constant(array: npt.NDArray[Any], name: str) -> str:
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    added: dict[int, list[Any]] = {}  # index of a node -> nodes to insert before it
    replaced: set[str] = set()  # weights the rewrite gave new versions of
    split: dict[str, list[int]] = {}
    smoothed = 0
    for layer, (up, gelu, down) in enumerate(blocks):
        name = f"balance{layer}"
        w_up = numpy_helper.to_array(weights[up.input[1]]).astype(np.float32)
        w_down = numpy_helper.to_array(weights[down.input[1]]).astype(np.float32)
        bias = numpy_helper.to_array(weights[gelu.input[1]]).astype(np.float32)
        at = list(model.graph.node).index(up)
        source = up.input[0]
        # The feed-forward output projection: its input's outlier channels run in fp32 beside it. In the
        # int8 path their bias becomes so negative that GELU gives exactly 0, and their weight rows 0.
        peaks = maxima[gelu.output[0]]
        limit = SPLIT_FACTOR * float(np.percentile(peaks, 99))
        channels = [int(c) for c in np.argsort(-peaks)[:SPLIT_MAX] if peaks[c] > limit]
        if channels:
            side = [
                helper.make_node(
                    "MatMul", [source, constant(w_up[:, channels], f"{name}/up_w")], [f"{name}/h"], name=f"{name}/up"
                ),
                helper.make_node(
                    "BiasGelu",
                    [f"{name}/h", constant(bias[channels], f"{name}/bias")],
                    [f"{name}/g"],
                    name=f"{name}/gelu",
                    domain="com.microsoft",
                ),
                helper.make_node(
                    "MatMul",
                    [f"{name}/g", constant(w_down[channels], f"{name}/down_w")],
                    [f"{name}/d"],
                    name=f"{name}/down",
                ),
            ]
            masked_bias, kept_rows = bias.copy(), w_down.copy()
            masked_bias[channels], kept_rows[channels] = _MASK_BIAS, 0.0
            replaced.update((gelu.input[1], down.input[1]))
            gelu.input[1] = constant(masked_bias, f"{name}/masked_bias")
            down.input[1] = constant(kept_rows, f"{name}/down_int8_w")
            total = f"{name}/sum"
            for node in consumers[down.output[0]]:
                node.input[:] = [total if i == down.output[0] else i for i in node.input]
            side.append(helper.make_node("Add", [down.output[0], f"{name}/d"], [total], name=f"{name}/add"))
            added.setdefault(list(model.graph.node).index(down) + 1, []).extend(side)
            split[str(layer)] = channels
        # The feed-forward input projection: channels above the 99th percentile are scaled down to it
        # before int8 sees them, and the weight rows they meet scaled up by as much (the same product).
        peaks = maxima[source]
        scale = np.minimum(1.0, float(np.percentile(peaks, 99)) / np.maximum(peaks, 1e-30)).astype(np.float32)
        if (scale < 1.0).any():
            replaced.add(up.input[1])
            up.input[1] = constant(w_up / scale[:, None], f"{name}/up_int8_w")
            up.input[0] = f"{name}/scaled"
            mul = helper.make_node(
                "Mul", [source, constant(scale, f"{name}/scale")], [f"{name}/scaled"], name=f"{name}/scale"
            )
            added.setdefault(at, []).append(mul)
            smoothed += 1
    if not split and not smoothed:
        return None
    nodes = []
    for index, node in enumerate(model.graph.node):
        nodes.extend(added.get(index, []))
        nodes.append(node)
    nodes.extend(added.get(len(model.graph.node), []))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # Weights the rewrite replaced and nothing reads any more stay out of the file.
    used = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
    kept_weights = [init for init in model.graph.initializer if init.name in used or init.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_weights)
    onnx.save(model, str(target))
    side_paths = [f"balance{layer}/{part}" for layer in map(int, split) for part in ("up", "down")]
    return {"split_channels": split, "smoothed_inputs": smoothed, "fp32_nodes": side_paths}


def _min_mean(vectors: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]) -> tuple[float, float]:
    """The lowest and the mean cosine of unit ``vectors`` to ``reference``, row by row."""
    cosine = np.sum(vectors * reference, axis=1)
    return float(cosine.min()), float(cosine.mean())


def _unfuse_skip_layer_norms(graph: Path, target: Path) -> bool:
    """Write ``graph`` to ``target`` with each ``SkipLayerNormalization`` (ONNX Runtime's fused
    ``LayerNorm(input + skip + bias)``) as the Add and LayerNormalization it stands for (step 5 of
    the module docstring); False, writing nothing, when it has none or one this cannot rewrite."""
    import onnx
    from onnx import helper

    model = onnx.load(str(graph))
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx", 0)) < 17:  # LayerNormalization is an ONNX op from opset 17
        return False
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    nodes: list[Any] = []
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        inputs = list(node.input) + [""] * (5 - len(node.input))
        data, skip, gamma, beta, bias = inputs[:5]
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if not (data and skip and gamma) or {outputs[1], outputs[2]} & used - {""}:
            return False  # (the mean and inverse deviation as outputs: not in these graphs)
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        name = f"{node.name or 'SkipLayerNormalization'}/unfused{rewritten}"  # names need not be unique
        total = f"{name}/sum"
        nodes.append(helper.make_node("Add", [data, skip], [total], name=f"{name}/add"))
        if bias:
            nodes.append(helper.make_node("Add", [total, bias], [f"{name}/sum_bias"], name=f"{name}/add_bias"))
            total = f"{name}/sum_bias"
        if outputs[3]:  # the sum itself, which a later node may take as its residual
            nodes.append(helper.make_node("Identity", [total], [outputs[3]], name=f"{name}/sum_out"))
        norm_inputs = [total, gamma] + ([beta] if beta else [])
        nodes.append(
            helper.make_node(
                "LayerNormalization", norm_inputs, [outputs[0]], name=f"{name}/norm", axis=-1, epsilon=epsilon
            )
        )
        rewritten += 1
    if not rewritten:
        return False
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(target))
    return True


def _quantize(source: Path, target: Path, **selection: Any) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=getattr(QuantType, str(WEIGHTS["weight_type"])),
        per_channel=bool(WEIGHTS["per_channel"]),
        reduce_range=bool(WEIGHTS["reduce_range"]),
        # The fused ops are in ONNX Runtime's own domain, where shape inference finds no types.
        extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
        **selection,
    )


def quantize_int8(fp32: Path, target: Path, work: Path, model_path: Path) -> dict[str, Any]:
    """Write the int8 graph to ``target``, using the empty directory ``work`` on the way (everything
    quantize_dynamic writes beside its input lands there too); return what was done (for export.json)."""
    began = time.perf_counter()
    try:
        calib = _Calibration(model_path)
        reference = calib.vectors(fp32)
        source = work / "fp32.onnx"
        try:
            fused = _fuse(fp32, source, model_path)
            # The fusions must not change the numbers; if they do, quantize the graph as exported.
            fused = fused and _min_mean(calib.vectors(source), reference)[0] > 0.9999
        except Exception as exc:  # an optimizer that trips on a graph costs speed, not the variant
            structlog.get_logger(__name__).warning("model_fusion_failed", error=f"{type(exc).__name__}: {exc}")
            fused = False
        if not fused:
            source.unlink(missing_ok=True)
            shutil.copyfile(fp32, source)
        trial = work / "trial.onnx"
        balance: dict[str, Any] | None = None
        # The every-projection-int8 graph and its (min, mean) cosine, when the guard below made it.
        all_int8: tuple[float, float] | None = None
        try:
            balanced = work / "balanced.onnx"
            balance = _balance(source, balanced, model_path, calib) if fused else None
            # Like the fusions, the rewrite must not change the numbers before int8 does; and it stays
            # only where int8 gains from it (it was measured on all-MiniLM-L6-v2; another model's weights
            # might take the scaled rows worse). Both graphs with every projection int8, the winner kept
            # as the first trial below:
            if balance is not None and _min_mean(calib.vectors(balanced), reference)[0] > 0.9999:
                with_balance, without = work / "trial-balanced.onnx", work / "trial-plain.onnx"
                _quantize(balanced, with_balance, nodes_to_exclude=balance["fp32_nodes"])
                figures = _min_mean(calib.vectors(with_balance), reference)
                _quantize(source, without)
                plain = _min_mean(calib.vectors(without), reference)
                balance["all_int8_min_cosine"], balance["all_int8_min_cosine_without"] = figures[0], plain[0]
                if figures[0] >= plain[0]:
                    os.replace(with_balance, trial)
                    os.replace(balanced, source)
                else:
                    structlog.get_logger(__name__).info("model_balance_not_kept", **balance)
                    balance, figures = None, plain
                    os.replace(without, trial)
                all_int8 = figures
            else:
                balance = None
        except Exception as exc:  # like the fusions: a rewrite that trips costs speed, not the variant
            structlog.get_logger(__name__).warning("model_balance_failed", error=f"{type(exc).__name__}: {exc}")
            balance, all_int8 = None, None
        side_paths: list[str] = balance["fp32_nodes"] if balance else []

        def cosines(**selection: Any) -> tuple[float, float]:
            if "nodes_to_quantize" not in selection:  # the outliers' side paths stay fp32
                selection["nodes_to_exclude"] = [*side_paths, *selection.get("nodes_to_exclude", [])]
            _quantize(source, trial, **selection)
            return _min_mean(calib.vectors(trial), reference)

        kept: list[str] = []
        candidates = _down_projections(source, model_path)
        worst, mean = all_int8 if all_int8 is not None else cosines()
        if worst < TARGET_COSINE and candidates:
            loss = {name: 1.0 - cosines(nodes_to_quantize=[name])[1] for name in candidates}
            for name in sorted(candidates, key=lambda n: -loss[n]):
                kept.append(name)
                worst, mean = cosines(nodes_to_exclude=kept)
                if worst >= TARGET_COSINE:
                    break
        unfused = False
        try:
            if fused and _unfuse_skip_layer_norms(trial, source):  # (the fp32 source is no longer needed)
                unfused_worst, unfused_mean = _min_mean(calib.vectors(source), reference)
                if unfused_worst >= min(worst, TARGET_COSINE):  # the same sums, in another order
                    os.replace(source, trial)
                    worst, mean, unfused = unfused_worst, unfused_mean, True
        except Exception as exc:  # like the fusions: a rewrite that trips costs speed, not the variant
            structlog.get_logger(__name__).warning("model_unfuse_failed", error=f"{type(exc).__name__}: {exc}")
        os.replace(trial, target)
        record = {
            **WEIGHTS,
            "fused": fused,
            "balanced": balance is not None,
            "split_channels": balance["split_channels"] if balance else {},
            "smoothed_inputs": balance["smoothed_inputs"] if balance else 0,
            # Every projection int8, with and without the outliers taken out (rounded down).
            "all_int8_min_cosine": {
                key: math.floor(balance[f"all_int8_min_cosine{suffix}"] * 10_000) / 10_000
                for key, suffix in (("balanced", ""), ("plain", "_without"))
            }
            if balance
            else {},
            "skip_layer_norms_unfused": unfused,
            "candidates": len(candidates),
            "kept_fp32": kept,
            "min_cosine": math.floor(worst * 10_000) / 10_000,  # rounded down: 0.99196 is not 0.992
            "mean_cosine": round(mean, 4),
            "target_met": worst >= TARGET_COSINE,
            "seconds": round(time.perf_counter() - began, 2),
        }
        if not record["target_met"]:
            structlog.get_logger(__name__).warning(
                "model_int8_below_target",
                min_cosine=record["min_cosine"],
                target=TARGET_COSINE,
                note="auto refuses it below its bar; SEMANTIK_EMBED_DTYPE=int8 runs it anyway",
            )
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- OpenVINO int8 --------------------------------------------------------------------------------
#
# On a CPU with VNNI (AVX-512 VNNI, AVX-VNNI, AMX) OpenVINO runs a statically quantized graph --
# int8 activations with scales fixed by calibration, int8 weights -- in its own fused kernels:
# 1.7x torch bf16 measured on Zen 4, where ONNX Runtime's dynamic int8 only matched torch bf16.
# Without VNNI it ran at 0.73x OpenVINO fp32 (session 7, AVX2), so it is a candidate only with VNNI.
#
# NNCF makes the graph (static post-training quantization, its transformer preset, on the same
# calibration batches). It runs in a child process: it prints progress bars on stdout, which would
# land in a worker's JSON log. Its telemetry, like OpenVINO's, is kept off (``import_openvino``).

OPENVINO_RECIPE_VERSION = 1
OPENVINO_QUANTIZE_TIMEOUT_S = 600  # 20 s measured on 2 cores


def openvino_recipe() -> str:
    """Part of the OpenVINO int8 file name: the calibration set, the target, OpenVINO's and NNCF's versions."""
    from importlib.metadata import PackageNotFoundError, version

    passages, queries = calibration()
    try:
        versions = [version("openvino"), version("nncf")]
    except PackageNotFoundError as exc:
        raise ImportError(f"{exc.name} is not installed (pip install 'semantik[openvino]')") from exc
    # What stays fp32 is decided by measurement on the CPU that makes the model; VNNI or not changes it.
    parts = [OPENVINO_RECIPE_VERSION, "nncf-static-transformer", TARGET_COSINE, versions, int8_dot_product()]
    parts += [passages, queries]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def quantize_openvino_int8(fp32: Path, target: Path, work: Path, model_path: Path) -> dict[str, Any]:
    """Write the OpenVINO int8 model to ``target`` (``.xml``, with its ``.bin`` beside it); return the
    record for export.json. Runs NNCF in a child process (see above) that dies with this one and
    writes only in ``work``; anything that goes wrong is an ``ExportError``."""
    import subprocess

    from semantik.proc import module_command

    began = time.perf_counter()
    command, env = module_command("semantik.inference.quantize", str(fp32), str(work), str(model_path))
    try:
        try:
            done = subprocess.run(
                command,
                env={**env, "PYTHONUNBUFFERED": "1"},
                cwd=work,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=OPENVINO_QUANTIZE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ExportError(f"OpenVINO int8 quantization took over {OPENVINO_QUANTIZE_TIMEOUT_S} s") from exc
        try:
            record: dict[str, Any] = json.loads((work / "record.json").read_text())
            for suffix in (".bin", ".xml"):  # the .xml last: its presence means the pair is whole
                publish(work / f"int8{suffix}", target.with_suffix(suffix))
        except (OSError, ValueError) as exc:
            said = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()[-3:]
            raise ExportError(
                f"OpenVINO int8 quantization failed (exit {done.returncode}): {' | '.join(said) or exc}"
            ) from exc
        record["seconds"] = round(time.perf_counter() - began, 2)
        if not record["target_met"]:
            structlog.get_logger(__name__).warning(
                "model_int8_below_target", backend="openvino", min_cosine=record["min_cosine"], target=TARGET_COSINE
            )
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _openvino_child(fp32: Path, work: Path, model_path: Path) -> dict[str, Any]:
    """In the child: quantize with NNCF, check against fp32 on the calibration set, save to ``work``."""
    import logging

    ov = import_openvino()  # first: NNCF, too, then finds no telemetry package
    import nncf

    nncf.set_log_level(logging.ERROR)
    calib = _Calibration(model_path)
    reference = calib.vectors(fp32)
    core = ov.Core()

    def quantized(ignored: list[str]) -> tuple[Any, float, float]:
        model = nncf.quantize(
            core.read_model(str(fp32)),
            nncf.Dataset(calib.batches),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calib.batches),
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        )
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        vectors = normalise(np.concatenate([np.asarray(next(iter(request.infer(b).values()))) for b in calib.batches]))
        return model, *_min_mean(vectors, reference)

    kept: list[str] = []
    model, worst, mean = quantized(kept)
    if worst < TARGET_COSINE:  # the feed-forward output projections lose the most (see above): keep them fp32
        names = {op.get_friendly_name() for op in core.read_model(str(fp32)).get_ops()}
        kept = [name for name in _down_projections(fp32, model_path) if name in names]
        if kept:
            model, worst, mean = quantized(kept)
    ov.save_model(model, str(work / "int8.xml"), compress_to_fp16=False)
    return {
        "method": "nncf static, transformer preset",
        "kept_fp32": kept,
        "min_cosine": math.floor(worst * 10_000) / 10_000,
        "mean_cosine": round(mean, 4),
        "target_met": worst >= TARGET_COSINE,
    }


if __name__ == "__main__":  # the OpenVINO quantization's child process
    import sys

    from semantik.proc import die_with_parent

    die_with_parent()
    _fp32, _work, _model = (Path(arg) for arg in sys.argv[1:4])
    _record = json.dumps(_openvino_child(_fp32, _work, _model))
    (_work / "record.json").write_text(_record)  # last: the parent takes the model only with it
