"""Backends: the ONNX export is made here and cached, every backend gives torch fp32's embeddings,
``auto`` keeps only faithful ones and remembers its measurement, and a query never waits behind an
indexing batch. The real model, real runtimes, real exports; nothing faked."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from structlog.testing import capture_logs

from semantik.inference.backends import (
    ONNX_PIECE,
    STREAM_PIECE,
    BackendUnavailable,
    OnnxBackend,
    OpenVinoBackend,
    Spec,
    int8_dot_product,
    load_backend,
    native_bf16,
)
from semantik.inference.choose import MIN_COSINE, calibration, choose, fingerprint, pick
from semantik.inference.embedder import QUERY_PRIORITY_MAX_WAIT_S, Embedder, default_model_path
from semantik.inference.export import ExportError, cache_dir_for, model_hash, onnx_model
from semantik.inference.quantize import SPLIT_FACTOR, TARGET_COSINE, openvino_recipe, recipe
from semantik.inference.quantize import _balance as balance
from semantik.inference.quantize import _Calibration as Calibration
from semantik.inference.quantize import _channel_maxima as channel_maxima
from semantik.inference.quantize import _fuse as fuse
from semantik.inference.quantize import _quantize as quantize
from semantik.inference.quantize import _unfuse_skip_layer_norms as unfuse_skip_layer_norms
from semantik.settings import Settings

MODEL_DIR = default_model_path()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.sum(a * b, axis=1)
    return result


def test_the_export_is_made_once_per_model_and_runtime_and_logged(tmp_path: Path) -> None:
    with capture_logs() as logs:
        first = onnx_model(tmp_path, MODEL_DIR, "int8")
    exported = [e for e in logs if e["event"] == "model_exported"]
    assert [e["variant"] for e in exported] == ["fp32", "int8"]
    assert all(e["seconds"] > 0 for e in exported)
    # Keyed by the model files' hash and the exporter's and runtime's versions.
    assert first.parent == cache_dir_for(tmp_path, MODEL_DIR)
    assert first.parent.name.startswith(model_hash(MODEL_DIR)[:16] + "-x")
    assert f"-ort{version('onnxruntime')}" in first.parent.name and f"-tf{version('transformers')}" in first.parent.name
    record = json.loads((first.parent / "export.json").read_text())
    assert record["model_sha256"] == model_hash(MODEL_DIR) and record["int8"]["seconds"] > 0
    # int8: fused, signed 7-bit weights, and any feed-forward projection that still loses too much kept
    # in fp32 until every calibration text keeps the target cosine (all-MiniLM-L6-v2: none since the
    # activation outliers are taken out of int8; 2 of 6 before).
    int8 = record["int8"]
    assert int8["fused"] and int8["weight_type"] == "QInt8" and int8["reduce_range"]
    assert int8["target_met"] and int8["min_cosine"] >= TARGET_COSINE
    assert int8["candidates"] == 6 and len(int8["kept_fp32"]) < 6
    assert all(n.endswith("/output/dense/MatMul") and "/attention/" not in n for n in int8["kept_fp32"])
    # The residual layer norms run as plain ops (the fused kernel was the slower) when the graph stays
    # at the target that way, and the graph is what the record says. The int8 kernels differ by CPU:
    # on an AMX Xeon the plain ops gave min cosine 0.99192 against the target's 0.992, and the fused
    # graph was kept (the rewrite itself is checked against ONNX Runtime's kernel below, on any CPU).
    graph = onnx.load(str(first), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    # The feed-forward blocks' outlier channels run beside int8 in fp32 (all-MiniLM-L6-v2 has them in
    # its first layers), and the projections themselves are int8 unless the ranking kept them.
    assert int8["balanced"] and int8["split_channels"] and int8["smoothed_inputs"] > 0
    assert int8["all_int8_min_cosine"]["balanced"] >= int8["all_int8_min_cosine"]["plain"]
    by_name = {node.name: node.op_type for node in graph.node}
    for layer in int8["split_channels"]:
        assert by_name[f"balance{layer}/up"] == by_name[f"balance{layer}/down"] == "MatMul"
    quantized = [n for n, op in by_name.items() if op == "MatMulInteger" and "/output/dense/" in n]
    assert len(quantized) == 12 - len(int8["kept_fp32"])  # 6 attention outputs, 6 feed-forward outputs
    if int8["skip_layer_norms_unfused"]:
        assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    else:
        assert "SkipLayerNormalization" in ops, ops
    assert first.name == f"model-int8-{recipe()}.onnx"
    # Nothing else: no half-written file, no copy quantization made on the way.
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(["export.json", "model-fp32.onnx", first.name])
    mtime = first.stat().st_mtime_ns

    with capture_logs() as logs:
        again = onnx_model(tmp_path, MODEL_DIR, "int8")
    assert again == first and again.stat().st_mtime_ns == mtime
    assert [e for e in logs if e["event"] == "model_exported"] == []


def test_residual_layer_norms_written_as_plain_ops_give_the_same_vectors(tmp_path: Path) -> None:
    # The int8 graph's last step rewrites ONNX Runtime's fused SkipLayerNormalization as Add and
    # LayerNormalization. On the fused fp32 graph, where no quantization hides a difference, every
    # calibration text's vector must come out the same, and what it rewrites is gone.
    fp32 = onnx_model(tmp_path, MODEL_DIR, "fp32")
    fused, plain = tmp_path / "fused.onnx", tmp_path / "plain.onnx"
    assert fuse(fp32, fused, MODEL_DIR)
    before = {node.op_type for node in onnx.load(str(fused)).graph.node}
    assert "SkipLayerNormalization" in before
    assert unfuse_skip_layer_norms(fused, plain)
    after = [node.op_type for node in onnx.load(str(plain)).graph.node]
    assert "SkipLayerNormalization" not in after and after.count("LayerNormalization") == 12  # 2 in each of 6 layers
    calib = Calibration(MODEL_DIR)
    reference, rewritten = calib.vectors(fused), calib.vectors(plain)
    assert reference.shape == rewritten.shape and len(reference) >= 32
    assert float(np.abs(reference - rewritten).max()) < 1e-5
    # A graph with nothing to rewrite is left alone.
    assert not unfuse_skip_layer_norms(plain, tmp_path / "again.onnx")
    assert not (tmp_path / "again.onnx").exists()


def test_outlier_channels_taken_out_of_int8_keep_the_vectors_and_make_int8_more_faithful(tmp_path: Path) -> None:
    # The feed-forward blocks' few outlier channels (one reaches 25 where most stay under 5) run beside
    # the int8 matmuls in fp32, and the inputs of the first projections are scaled to the rest's
    # range (their weights scaled back). In fp32 nothing changes; in int8 the rewritten graph, every
    # projection quantized, stays closer to fp32 than the graph as it was.
    fp32 = onnx_model(tmp_path, MODEL_DIR, "fp32")
    fused, balanced = tmp_path / "fused.onnx", tmp_path / "balanced.onnx"
    assert fuse(fp32, fused, MODEL_DIR)
    calib = Calibration(MODEL_DIR)
    record = balance(fused, balanced, MODEL_DIR, calib)
    assert record is not None and record["split_channels"], record
    # The channels split are the ones that stand out on the calibration set, and only those.
    gelus = [node.output[0] for node in onnx.load(str(fused)).graph.node if node.op_type == "BiasGelu"]
    peaks = channel_maxima(fused, gelus, calib)
    for layer, name in enumerate(gelus):
        limit = SPLIT_FACTOR * np.percentile(peaks[name], 99)
        assert sorted(record["split_channels"].get(str(layer), [])) == sorted(np.flatnonzero(peaks[name] > limit))
    onnx.checker.check_model(str(balanced))  # among others: its nodes in an order that runs
    reference = calib.vectors(fused)
    assert float(np.abs(calib.vectors(balanced) - reference).max()) < 1e-5
    plain_int8, balanced_int8 = tmp_path / "plain-int8.onnx", tmp_path / "balanced-int8.onnx"
    quantize(fused, plain_int8)
    quantize(balanced, balanced_int8, nodes_to_exclude=record["fp32_nodes"])
    plain_worst = float(cosines(calib.vectors(plain_int8), reference).min())
    balanced_worst = float(cosines(calib.vectors(balanced_int8), reference).min())
    assert balanced_worst > plain_worst + 0.002, (balanced_worst, plain_worst)
    assert balanced_worst >= TARGET_COSINE
    # A graph without a feed-forward block it knows is left alone.
    assert balance(plain_int8, tmp_path / "again.onnx", MODEL_DIR, calib) is None
    assert not (tmp_path / "again.onnx").exists()


def test_the_rewrite_matches_onnx_runtimes_fused_kernel_with_bias_and_the_sum_taken_on(tmp_path: Path) -> None:
    # A small graph with what the model's graph lacks: a bias input, and the fused op's fourth
    # output (input + skip + bias) taken by a later node. Both graphs run in ONNX Runtime.
    from onnx import TensorProto, helper, numpy_helper

    from semantik.inference.backends import onnx_session

    rng = np.random.default_rng(7)
    weights = {name: rng.standard_normal(8).astype(np.float32) for name in ("gamma", "beta", "bias")}

    def graph(path: Path, outputs: list[str]) -> Path:
        fused = helper.make_node(
            "SkipLayerNormalization",
            ["x", "skip", "gamma", "beta", "bias"],
            outputs,
            domain="com.microsoft",
            epsilon=1e-5,
            name="fused",
        )
        later = helper.make_node("Add", [outputs[0], outputs[3]], ["y"], name="later")
        tensor: list[str | int | None] = ["batch", "tokens", 8]
        model = helper.make_model(
            helper.make_graph(
                [fused, later],
                "g",
                [helper.make_tensor_value_info(n, TensorProto.FLOAT, tensor) for n in ("x", "skip")],
                [helper.make_tensor_value_info(n, TensorProto.FLOAT, tensor) for n in ("y", *outputs[1:3]) if n],
                [numpy_helper.from_array(v, k) for k, v in weights.items()],
            ),
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        )
        onnx.save(model, str(path))
        return path

    feeds = {name: rng.standard_normal((2, 5, 8)).astype(np.float32) * 3 for name in ("x", "skip")}
    fused = graph(tmp_path / "fused.onnx", ["normed", "", "", "sum"])
    assert unfuse_skip_layer_norms(fused, tmp_path / "plain.onnx")
    plain = onnx.load(str(tmp_path / "plain.onnx"))
    assert [n.op_type for n in plain.graph.node] == ["Add", "Add", "Identity", "LayerNormalization", "Add"]
    expected = onnx_session(fused).run(["y"], feeds)[0]
    got = onnx_session(tmp_path / "plain.onnx").run(["y"], feeds)[0]
    assert float(np.abs(expected - got).max()) < 1e-5
    # A graph that reads the mean the fused op gives out is not rewritten (and nothing is written).
    with_mean = graph(tmp_path / "mean.onnx", ["normed", "mean", "", "sum"])
    assert not unfuse_skip_layer_norms(with_mean, tmp_path / "not.onnx")
    assert not (tmp_path / "not.onnx").exists()


def test_the_openvino_int8_model_is_made_once_checked_and_phones_nobody(tmp_path: Path) -> None:
    # A fresh process with its own home, as a worker on a new machine: it makes the OpenVINO int8
    # model (NNCF, in a child process) and runs it.
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from semantik.inference.backends import Spec, load_backend\n"
        "from semantik.inference.embedder import default_model_path\n"
        "backend = load_backend(Spec('openvino', 'int8'), default_model_path(), Path(sys.argv[1]))\n"
        "from openvino.tools.ovc import telemetry_utils\n"
        "print(json.dumps({'vector': backend.encode(['a query about vitamin D']).tolist(),\n"
        "                  'telemetry': telemetry_utils.tm.__name__}))\n"
    )
    env = {**os.environ, "HOME": str(home)}

    def run() -> tuple[dict[str, Any], str]:
        done = subprocess.run(
            [sys.executable, "-c", script, str(cache)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr

    answer, logged = run()
    # The export logged itself, and nothing of NNCF's progress bars reached the log.
    made = [line for line in logged.splitlines() if "model_exported" in line and "variant=openvino-int8" in line]
    assert len(made) == 1 and "Statistics collection" not in logged
    vector = np.asarray(answer["vector"])
    assert vector.shape == (1, 384) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
    # OpenVINO's and NNCF's telemetry (a Google Analytics event at import, a client id under
    # ~/intel) stayed off: OpenVINO fell back to its no-op stub, and nothing was written in the home.
    assert answer["telemetry"].endswith("telemetry_stub")
    assert not (home / "intel").exists()

    directory = cache_dir_for(cache, MODEL_DIR)
    record = json.loads((directory / "export.json").read_text())["openvino-int8"]
    assert record["seconds"] > 0 and record["method"].startswith("nncf static")
    if int8_dot_product():  # where auto considers it: faithful on every calibration text, nothing kept fp32
        assert record["target_met"] and record["min_cosine"] >= TARGET_COSINE and record["kept_fp32"] == []
    stem = f"model-openvino-int8-{openvino_recipe()}"
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["export.json", "model-fp32.onnx", f"{stem}.xml", f"{stem}.bin"]
    )
    mtime = (directory / f"{stem}.bin").stat().st_mtime_ns

    # A second process reuses it.
    again, logged = run()
    assert "model_exported" not in logged and np.allclose(again["vector"], answer["vector"], atol=1e-6)
    assert (directory / f"{stem}.bin").stat().st_mtime_ns == mtime


def test_a_model_this_exporter_cannot_handle_is_refused_and_auto_keeps_torch(tmp_path: Path) -> None:
    model = tmp_path / "cls-model"
    shutil.copytree(MODEL_DIR, model, ignore=shutil.ignore_patterns("model.safetensors"))
    os.symlink(MODEL_DIR / "model.safetensors", model / "model.safetensors")
    pooling = json.loads((model / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (model / "1_Pooling" / "config.json").write_text(json.dumps(pooling))

    with pytest.raises(ExportError, match="only mean pooling"):
        onnx_model(tmp_path / "cache", model, "fp32")
    with pytest.raises(BackendUnavailable, match="only mean pooling"):
        load_backend(Spec("onnx", "fp32"), model, tmp_path / "cache")
    choice = choose(model, tmp_path / "cache", specs=[Spec("torch", "fp32"), Spec("onnx", "fp32")])
    assert choice.spec == Spec("torch", "fp32") and list(choice.measured) == ["torch-fp32"]


def test_every_backend_gives_the_embeddings_sentence_transformers_gives(model_cache: Path) -> None:
    from sentence_transformers import SentenceTransformer

    passages, queries = calibration()
    texts = passages + queries
    # The product before backends: sentence-transformers' own encode, fp32.
    reference = SentenceTransformer(str(MODEL_DIR), device="cpu", local_files_only=True).encode(
        texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True
    )
    specs = [Spec("torch", "fp32"), Spec("onnx", "fp32"), Spec("openvino", "fp32"), Spec("onnx", "int8")]
    if native_bf16():
        specs += [Spec("torch", "bf16"), Spec("openvino", "bf16")]
    if int8_dot_product():  # a candidate for auto only there (without VNNI it runs slower than fp32)
        specs.append(Spec("openvino", "int8"))
    for spec in specs:
        backend = load_backend(spec, MODEL_DIR, model_cache)
        assert backend.dim == 384 and backend.max_seq_length == 256
        vectors = np.concatenate([backend.encode(texts[i : i + 16]) for i in range(0, len(texts), 16)])
        assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        similarity = cosines(vectors, reference)
        if spec.dtype == "fp32":
            assert similarity.min() > 0.9999, spec
        elif spec.dtype == "int8":  # made to keep auto's bar on every calibration text, on any CPU
            assert similarity.min() >= MIN_COSINE and similarity.mean() > 0.993, (spec, similarity.min())
        else:  # bf16: close, and whether close enough is auto's call (next test)
            assert similarity.min() > 0.95 and similarity.mean() > 0.98, (spec, similarity.min())
    # int8 on text it was not tuned on (the calibration set chose what stays fp32): this product's
    # own code and docstrings.
    held_out = held_out_chunks()
    reference = SentenceTransformer(str(MODEL_DIR), device="cpu", local_files_only=True).encode(
        held_out, batch_size=16, normalize_embeddings=True, convert_to_numpy=True
    )
    for spec in [s for s in specs if s.dtype == "int8"]:
        int8 = load_backend(spec, MODEL_DIR, model_cache)
        vectors = np.concatenate([int8.encode(held_out[i : i + 16]) for i in range(0, len(held_out), 16)])
        similarity = cosines(vectors, reference)
        assert similarity.min() > 0.985 and similarity.mean() > 0.992, (spec, similarity.min(), similarity.mean())
    # A text longer than the model reads is cut where sentence-transformers cuts it.
    long_text = " ".join(passages) * 3
    onnx = load_backend(Spec("onnx", "fp32"), MODEL_DIR, model_cache)
    assert cosines(onnx.encode([long_text]), reference_of(long_text)).min() > 0.9999


def held_out_chunks() -> list[str]:
    from semantik.indexing.chunk import chunker_for

    chunker = chunker_for(MODEL_DIR, 256, 32)
    files = sorted((Path(__file__).parents[1] / "semantik").rglob("*.py"))
    return [chunk for path in files for chunk in chunker.chunk(path.read_text())][:96]


def reference_of(text: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODEL_DIR), device="cpu", local_files_only=True)
    return np.asarray(model.encode([text], normalize_embeddings=True))


def test_auto_picks_the_fastest_faithful_backend_and_remembers_it(tmp_path: Path, model_cache: Path) -> None:
    specs = [Spec("torch", "fp32"), Spec("onnx", "fp32"), Spec("onnx", "int8")]
    exported = onnx_model(model_cache, MODEL_DIR, "int8").parent  # the exports, not the choice
    shutil.copytree(exported, tmp_path / exported.name)
    # int8 weights never keep cosine 0.999 to fp32 on every calibration text (0.992-0.993 measured),
    # so at that bar it is refused however fast it runs.
    strict = 0.999
    with capture_logs() as logs:
        choice = choose(MODEL_DIR, tmp_path, specs=specs, min_cosine=strict)
    assert not choice.cached and choice.backend is not None
    assert set(choice.measured) == {"torch-fp32", "onnx-fp32", "onnx-int8"}
    assert choice.measured["onnx-int8"]["faithful"] is False
    assert choice.measured["onnx-int8"]["min_cosine"] < strict
    faithful = {name: m for name, m in choice.measured.items() if m["faithful"]}
    assert set(faithful) == {"torch-fp32", "onnx-fp32"}
    fastest = max(faithful, key=lambda name: faithful[name]["chunks_per_s"])

    def searches_go_first(name: str) -> bool:  # its queries never wait for an indexing run
        return bool(choice.measured[name]["preemptible"] or choice.measured[name]["own_query_path"])

    if choice.spec.name != fastest:  # only a near-equal one whose searches never wait for indexing
        assert searches_go_first(choice.spec.name) and not searches_go_first(fastest)
        assert faithful[choice.spec.name]["chunks_per_s"] * 1.15 >= faithful[fastest]["chunks_per_s"]
    assert searches_go_first("onnx-fp32") and not searches_go_first("torch-fp32")
    assert [e["backend"] for e in logs if e["event"] == "embed_backend_measured"] == [
        "torch-fp32",
        "onnx-fp32",
        "onnx-int8",
    ]

    record = tmp_path / "choices" / f"{fingerprint(MODEL_DIR, specs, strict)}.json"
    saved = json.loads(record.read_text())
    assert saved["chosen"]["backend"] == choice.spec.backend and saved["measured"] == choice.measured

    with capture_logs() as logs:
        again = choose(MODEL_DIR, tmp_path, specs=specs, min_cosine=strict)
    assert again.cached and again.spec == choice.spec and again.measured == choice.measured
    assert [e for e in logs if e["event"] == "embed_backend_measured"] == []  # nothing measured again
    assert again.backend is not None and again.backend.encode(["loaded"]).shape == (1, 384)

    # A remembered winner that no longer loads here is measured again, not a model that fails to load.
    saved["chosen"] = {"backend": "onnx", "dtype": "fp32", "device": "cuda"}
    record.write_text(json.dumps(saved))
    with capture_logs() as logs:
        fresh = choose(MODEL_DIR, tmp_path, specs=specs, min_cosine=strict)
    stale = [e for e in logs if e["event"] == "embed_backend_choice_stale"]
    assert stale and stale[0]["backend"] == "onnx-fp32" and "CPU" in stale[0]["error"]
    assert not fresh.cached and fresh.backend is not None and fresh.spec.device == "cpu"
    assert [e["backend"] for e in logs if e["event"] == "embed_backend_measured"] == [
        "torch-fp32",
        "onnx-fp32",
        "onnx-int8",
    ]
    assert json.loads(record.read_text())["chosen"]["device"] == "cpu"


def test_among_near_equal_backends_auto_prefers_one_that_keeps_a_job_fast() -> None:
    """The figures are ones ``auto`` measured: an AMX Xeon (session 17), where torch bf16 and
    OpenVINO int8 tied and a job then indexed twice as fast on OpenVINO; and a Zen 4."""

    def chosen(
        rates: dict[str, float],
        preemptible: tuple[str, ...] = ("onnx-fp32", "onnx-int8"),
        own_query_path: tuple[str, ...] = ("openvino-bf16", "openvino-int8"),
    ) -> str:
        measured = {
            name: {"chunks_per_s": rate, "preemptible": name in preemptible, "own_query_path": name in own_query_path}
            for name, rate in rates.items()
        }
        ones = [(rate, Spec(*name.split("-")), name) for name, rate in rates.items()]
        return pick(ones, measured)[2]  # type: ignore[arg-type,return-value]

    amx = {"torch-fp32": 38.0, "torch-bf16": 142.1, "onnx-int8": 60.4, "openvino-bf16": 138.0, "openvino-int8": 142.0}
    assert chosen(amx) == "openvino-int8"  # the fastest of those whose searches wait for no batch
    assert chosen({**amx, "torch-bf16": 164.0}) == "torch-bf16"  # more than 15% ahead: speed wins
    # Searches that wait for no indexing batch (ONNX Runtime stops it; OpenVINO has its own path)
    # come before torch's, and between those two, speed decides.
    assert chosen({**amx, "onnx-int8": 130.0}) == "openvino-int8"
    assert chosen({**amx, "onnx-int8": 130.0}, own_query_path=()) == "onnx-int8"
    assert chosen({"torch-bf16": 150.0, "onnx-int8": 131.0}) == "onnx-int8"
    zen4 = {"torch-fp32": 30.1, "torch-bf16": 61.2, "onnx-int8": 52.0, "openvino-int8": 114.5}
    assert chosen(zen4) == "openvino-int8"


def test_settings_refuse_a_precision_the_backend_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMANTIK_EMBED_BACKEND", "onnx")
    monkeypatch.setenv("SEMANTIK_EMBED_DTYPE", "bf16")
    with pytest.raises(ValueError, match="SEMANTIK_EMBED_DTYPE=bf16 cannot run on SEMANTIK_EMBED_BACKEND=onnx"):
        Settings()
    monkeypatch.setenv("SEMANTIK_EMBED_DTYPE", "int8")
    assert Settings().embed_dtype == "int8"
    monkeypatch.setenv("SEMANTIK_EMBED_BACKEND", "tensorflow")
    with pytest.raises(ValueError, match="embed_backend"):
        Settings()


def test_explicit_settings_pick_without_measuring(model_cache: Path) -> None:
    with capture_logs() as logs:
        embedder = Embedder(MODEL_DIR, device="cpu", backend="onnx", dtype="int8", cache_dir=model_cache)
    try:
        assert embedder.label == "cpu/onnx-int8"
        assert [e for e in logs if e["event"] == "embed_backend_measured"] == []
    finally:
        embedder.close()


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-one-core", "openvino"])
async def test_a_query_does_not_wait_for_an_indexing_batch(model_cache: Path, backend: str) -> None:
    embedder = Embedder(
        MODEL_DIR, device="cpu", backend=backend.split("-")[0], dtype="fp32", batch_size=32, cache_dir=model_cache
    )
    if backend == "onnx-one-core":  # as on a machine with one core: no streams, and a query stops the batch
        embedder.model = OnnxBackend(Spec("onnx", "fp32"), MODEL_DIR, model_cache, stream_per_core=False)
    try:
        passages, queries = calibration()
        # Enough passages for about 4 s of model time on this machine, whatever its speed.
        began = time.perf_counter()
        embedder.model.encode(passages[:8])
        per_passage = (time.perf_counter() - began) / 8
        batch = [passages[i % len(passages)] + f" ({i})" for i in range(max(16, int(4.0 / per_passage)))]
        idle = embedder.encode_query_sync(queries[:1])

        indexing = asyncio.ensure_future(embedder.encode(batch))
        await asyncio.sleep(0.3)  # the indexing thread is inside the batch now
        assert not indexing.done()
        for query_text in queries[:3]:
            query = await embedder.encode_query([query_text])
            # The query came back while the indexing call was still running: it did not queue behind it.
            assert not indexing.done()
        assert cosines(query, embedder.encode_query_sync(queries[2:3])).min() > 0.9999
        assert cosines(await embedder.encode_query(queries[:1]), idle).min() > 0.9999
        vectors = await indexing
        if backend == "onnx-one-core":  # ONNX Runtime stops the sub-batch in flight and runs it again later
            assert embedder.preemptions >= 1

        # Sorted by length and cut into sub-batches inside, the call still answers in the caller's order.
        plain = np.concatenate([embedder.model.encode([text]) for text in batch])
        assert vectors.shape == plain.shape and cosines(vectors, plain).min() > 0.9999
    finally:
        embedder.close()


async def test_indexing_waits_while_a_search_runs_but_not_for_long(model_cache: Path) -> None:
    """A search holds indexing from its query's encoding to its last snippet (``search_first``), so
    the vector search does not share the cores with a new sub-batch; a search that never ends does
    not stall the job for more than ``QUERY_PRIORITY_MAX_WAIT_S``."""
    embedder = Embedder(MODEL_DIR, device="cpu", backend="onnx", dtype="fp32", batch_size=8, cache_dir=model_cache)
    try:
        passages, _ = calibration()
        began = time.perf_counter()
        alone = await embedder.encode(passages[:8])
        took = time.perf_counter() - began
        with embedder.search_first():
            indexing = asyncio.ensure_future(embedder.encode(passages[:8]))
            await asyncio.sleep(0.5)
            assert not indexing.done()  # waiting for the search to end
        began = time.perf_counter()
        assert cosines(await indexing, alone).min() > 0.9999
        assert time.perf_counter() - began < 0.5 + 3 * took  # and going on as soon as it did

        with embedder.search_first():  # a search held past the bound
            began = time.perf_counter()
            await embedder.encode(passages[:8])
            assert QUERY_PRIORITY_MAX_WAIT_S <= time.perf_counter() - began < QUERY_PRIORITY_MAX_WAIT_S + 1 + 3 * took
    finally:
        embedder.close()


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
async def test_a_search_pauses_indexing_on_streams_between_pieces(model_cache: Path, backend: str) -> None:
    """On a stream per core one indexing call runs many pieces: a search that starts during the call
    holds the pieces not yet started (``search_first``), so the vector search and snippets after its
    query do not share the cores with indexing either."""
    embedder = Embedder(MODEL_DIR, device="cpu", backend=backend, dtype="fp32", batch_size=1000, cache_dir=model_cache)
    try:
        if backend == "openvino":  # as on AMX
            embedder.model = OpenVinoBackend(Spec(backend, "fp32"), MODEL_DIR, model_cache, stream_per_core=True)
        assert embedder.model.whole_batches  # no sub-batches: one call, the pieces are the backend's
        if embedder.model.streams < 2:
            pytest.skip("one core: one stream")
        # When each piece got past the wait for searches (the real wait runs; this only notes the time).
        wait = embedder._wait_for_queries
        started: list[float] = []

        def noted() -> None:
            wait()
            started.append(time.monotonic())

        embedder._wait_for_queries = noted  # type: ignore[method-assign]
        passages, _ = calibration()
        texts = [passages[i % len(passages)] + f" ({i})" for i in range(96)]
        indexing = asyncio.ensure_future(embedder.encode(texts))
        deadline = time.monotonic() + 60
        while len(started) < 4 and not indexing.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # part-way through its pieces
        assert len(started) >= 4 and not indexing.done()  # the wait runs before each piece, not once a call
        with embedder.search_first():
            held = time.monotonic()
            await asyncio.sleep(1.0)
            released = time.monotonic()
            assert not indexing.done()
        await indexing
        assert len(started) > 10
        # Pieces already past the wait when the search began may start a moment later; none after.
        assert not [t for t in started if held + 0.1 < t < released]
        assert [t for t in started if t >= released]  # and the call went on after the search
    finally:
        embedder.close()


@pytest.mark.parametrize("backend", ["torch", "openvino", "openvino-streams", "onnx"])
def test_a_query_answers_while_one_whole_indexing_batch_runs(model_cache: Path, backend: str) -> None:
    """None of these stops a model call part-way: torch runs the query beside it, on the same cores;
    OpenVINO on a model compiled for queries (on the indexing model the query waited for the whole
    batch), also while indexing runs a stream per core (as on AMX); ONNX Runtime with a stream per
    core on the query's own thread. Either way the query's vectors are the ones indexing gives."""
    if backend == "openvino-streams":
        model: Any = OpenVinoBackend(Spec("openvino", "fp32"), MODEL_DIR, model_cache, stream_per_core=True)
    else:
        model = load_backend(Spec(backend, "fp32"), MODEL_DIR, model_cache)
    if backend in ("openvino-streams", "onnx") and model.streams < 2:
        pytest.skip("one core: one stream")
    passages, queries = calibration()
    began = time.perf_counter()
    model.encode(passages[:8])
    per_passage = (time.perf_counter() - began) / 8
    batch = [passages[i % len(passages)] + f" ({i})" for i in range(max(16, int(3.0 / per_passage)))]
    started, finished = threading.Event(), threading.Event()

    def index() -> None:
        started.set()
        model.encode(batch)  # one model call (on streams: its pieces)
        finished.set()

    indexing = threading.Thread(target=index)
    indexing.start()
    try:
        started.wait()
        time.sleep(0.3)  # inside the call now
        assert not finished.is_set()
        answered = [model.encode_query([text]) for text in queries[:3]]
        assert not finished.is_set()  # all three answered while the one batch was still running
    finally:
        indexing.join()
    alone = model.encode(queries[:3])
    assert cosines(np.concatenate(answered), alone).min() > 0.9999


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
async def test_chunks_indexed_by_their_token_ids_get_their_texts_vectors(model_cache: Path, backend: str) -> None:
    """A job hands the model each chunk's token ids from the chunker (no second tokenization); the
    indexing call sorts its texts and cuts them into sub-batches or pieces, and the ids must follow
    their texts."""
    from semantik.indexing.chunk import chunker_for
    from semantik.indexing.formats.base import Section

    embedder = Embedder(MODEL_DIR, device="cpu", backend=backend, dtype="fp32", batch_size=8, cache_dir=model_cache)
    try:
        passages, _ = calibration()
        chunks = chunker_for(MODEL_DIR, 64, 8).chunk_sections([Section(text) for text in passages])
        assert len({len(chunk.text) for chunk in chunks}) > 20  # lengths vary: the call reorders them
        texts = [chunk.text for chunk in chunks]
        tokens = [None if i % 7 == 3 else chunk.tokens for i, chunk in enumerate(chunks)]  # a few without
        assert sum(ids is not None for ids in tokens) > len(tokens) // 2
        by_ids = await embedder.encode(texts, tokens)
        by_text = await embedder.encode(texts)
        assert by_ids.shape == by_text.shape and cosines(by_ids, by_text).min() > 0.99999
        # The ids decide, and follow their texts through the sort and the sub-batches: each text
        # given another chunk's ids (every one has ids here) gets that chunk's vector.
        with_ids = [i for i, chunk in enumerate(chunks) if chunk.tokens is not None]
        shifted = with_ids[1:] + with_ids[:1]
        moved = await embedder.encode([texts[i] for i in with_ids], [chunks[j].tokens for j in shifted])
        assert cosines(moved, by_text[shifted]).min() > 0.99999
    finally:
        embedder.close()


@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_indexing_on_a_stream_per_core_answers_in_order_with_each_texts_ids(model_cache: Path, backend: str) -> None:
    """Where a backend indexes on a stream per core (OpenVINO on AMX, ONNX Runtime on two cores or
    more), a call's texts go to the streams in pieces and the pieces finish in any order: every
    text still gets its own vector, in the caller's order, and token ids follow their texts into
    the pieces."""
    from semantik.indexing.chunk import chunker_for
    from semantik.indexing.formats.base import Section

    kind: Any = OpenVinoBackend if backend == "openvino" else OnnxBackend
    piece = STREAM_PIECE if backend == "openvino" else ONNX_PIECE
    streams = kind(Spec(backend, "fp32"), MODEL_DIR, model_cache, stream_per_core=True)
    single = kind(Spec(backend, "fp32"), MODEL_DIR, model_cache, stream_per_core=False)
    if streams.streams < 2:
        pytest.skip("one core: one stream")
    passages, _ = calibration()
    chunks = chunker_for(MODEL_DIR, 64, 8).chunk_sections([Section(text) for text in passages])
    # Longest first, as the embedder calls it, with a short text in the middle: pieces of very
    # different lengths, so the second stream finishes its pieces before the first.
    chunks = sorted(chunks, key=lambda chunk: -len(chunk.text))[: 5 * STREAM_PIECE + 3]
    chunks.insert(piece + 1, chunks.pop())
    texts = [chunk.text for chunk in chunks]
    one_by_one = np.concatenate([single.encode([text]) for text in texts])
    assert cosines(streams.encode(texts), one_by_one).min() > 0.9999
    assert cosines(single.encode(texts), one_by_one).min() > 0.9999
    with_ids = [i for i, chunk in enumerate(chunks) if chunk.tokens is not None]
    assert len(with_ids) > len(chunks) // 2
    shifted = with_ids[1:] + with_ids[:1]  # each text given another chunk's ids gets that chunk's vector
    moved = streams.encode([texts[i] for i in with_ids], tokens=[chunks[j].tokens for j in shifted])
    assert cosines(moved, one_by_one[shifted]).min() > 0.9999
    assert streams.encode(texts[:1]).shape == (1, 384)  # fewer texts than a piece: one request


def test_on_one_core_onnx_runtime_runs_one_batch_and_stops_it_for_a_query(model_cache: Path) -> None:
    """A process allowed one core (its CPU affinity, as a container with one CPU gives) gets no
    streams: ONNX Runtime runs a call as one run and a query stops it (``preempt``)."""
    code = (
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "from semantik.inference.backends import OnnxBackend, Spec\n"
        "from semantik.inference.embedder import default_model_path\n"
        "b = OnnxBackend(Spec('onnx', 'fp32'), default_model_path(), Path(sys.argv[1]))\n"
        "v = b.encode(['one', 'two words', 'and three words'])\n"
        "print(json.dumps([b.streams, b.preemptible, b.own_query_path, b.whole_batches, list(v.shape)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_cache)], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [1, True, False, False, [3, 384]]
    here = OnnxBackend(Spec("onnx", "fp32"), MODEL_DIR, model_cache)
    if os.cpu_count() and len(os.sched_getaffinity(0)) > 1:  # and more than one: streams, queries apart
        assert (here.streams, here.preemptible, here.own_query_path) == (len(os.sched_getaffinity(0)), False, True)


async def test_empty_inputs_give_empty_answers(model_cache: Path) -> None:
    embedder = Embedder(MODEL_DIR, device="cpu", backend="torch", dtype="fp32", cache_dir=model_cache)
    try:
        assert (await embedder.encode([])).shape == (0, 384)
        assert (await embedder.encode_query([])).shape == (0, 384)
    finally:
        embedder.close()
