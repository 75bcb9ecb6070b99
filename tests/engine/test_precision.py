"""Precision in the ONNX graph (engine/precision.py): float16 with float32 islands, INT8 Q/DQ."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from changenet_trt.data.pairs import dataset_source
from changenet_trt.data.synth import synthesize
from changenet_trt.engine import fp16, int8, precision
from changenet_trt.engine.calibration import dataset_batches
from changenet_trt.errors import BuildError, InputError
from changenet_trt.models.reference import OVERFLOW_NODES, write_reference_model

PAIRS = 24


def synthetic(pairs=PAIRS, seed=3):
    def make(contract, normalization):
        from changenet_trt.data.pairs import synthetic_source

        return synthetic_source(pairs, contract.input_shape, normalization, seed=seed)

    return make


@pytest.fixture(scope="module")
def overflow_model(tmp_path_factory):
    return write_reference_model(str(tmp_path_factory.mktemp("fp16") / "overflow.onnx"), kind="learnable",
                                 fp16_overflow=True)


def _strictly_typed(path):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model


def test_fp16_keeps_the_overflow_chain_float32_and_keeps_every_decision(overflow_model, tmp_path):
    out = str(tmp_path / "fp16.onnx")
    report = fp16.to_fp16(overflow_model, out, make_source=synthetic())
    # fp16-check flagged the planted overflow: its producer and its consumer stay float32
    assert {"overflow/square", "overflow/scale_down"} <= set(report.fp32_nodes)
    assert "overflow/scale_up" not in report.fp32_nodes
    assert report.flips == 0 and report.validation.flips.count == 0 and report.direct.flips.count == 0
    assert report.validation.pairs == PAIRS
    assert report.validation.metrics["onnx"] == report.validation.metrics["engine"]
    model = _strictly_typed(out)
    held = precision.graph_precision(model)
    assert held["float16"] and not held["qdq"]
    assert {"overflow/square", "overflow/scale_down"} <= set(held["fp32_nodes"])
    assert "overflow/scale_up" not in held["fp32_nodes"]
    # inputs and outputs stay float32, weights outside the islands are float16
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in list(model.graph.input) + list(model.graph.output))
    weights = {i.name: i.data_type for i in model.graph.initializer}
    assert weights["backbone.conv.weight"] == onnx.TensorProto.FLOAT16
    assert weights["overflow.unscale"] == onnx.TensorProto.FLOAT  # the constant the island reads
    assert precision.read_made(out)["fp32_nodes"] == report.fp32_nodes
    # ONNX Runtime runs the written file
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    x = np.zeros((2, 3, 512, 128), dtype=np.float32)
    assert sess.run(None, {"input_1": x, "input_2": x})[0].shape == (2, 2)


def test_fp16_without_the_float32_islands_flips_decisions_and_is_refused(overflow_model, tmp_path):
    out = tmp_path / "fp16.onnx"
    with pytest.raises(BuildError, match=r"flips \d+ decision") as info:
        fp16.to_fp16(overflow_model, str(out), make_source=synthetic(), check_ranges=False)
    assert "pair " in str(info.value)
    assert not out.exists()
    forced = fp16.to_fp16(overflow_model, str(out), make_source=synthetic(), check_ranges=False, force=True)
    assert out.exists() and forced.fp32_nodes == []
    # every PASS pair's distance squares past 65504: float16 calls them all defects
    assert forced.validation.flips.count == forced.validation.metrics["onnx"]["tn"] > 0
    assert forced.validation.metrics["engine"]["fpr"] == 1.0
    assert precision.graph_precision(str(out))["fp32_nodes"] == []


def test_emulated_storage_shows_the_overflow_onnxruntime_hides(overflow_model):
    # ORT's CPU provider computes float16 Mul in float32 and drops the round trips between such
    # ops, so the float16 file alone would not show the planted overflow
    typed = fp16.convert_fp16(onnx.load(overflow_model))
    rng = np.random.default_rng(0)
    golden = rng.normal(size=(2, 3, 512, 128)).astype(np.float32)
    feed = {"input_1": golden + 0.5 * rng.normal(size=golden.shape).astype(np.float32), "input_2": golden}
    direct = ort.InferenceSession(typed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    emulated_model = fp16.emulate_fp16(typed)
    onnx.checker.check_model(emulated_model, full_check=True)
    emulated = ort.InferenceSession(emulated_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert np.isfinite(direct).all()
    assert np.isinf(emulated).all()


def test_fp16_user_list_adds_nodes_and_a_typo_is_refused(overflow_model, tmp_path):
    out = str(tmp_path / "fp16.onnx")
    report = fp16.to_fp16(overflow_model, out, fp32_nodes=["node_of_head.*"], make_source=synthetic(8))
    assert "node_of_head.rms" in report.fp32_nodes and "node_of_head.rms" in report.user_nodes
    assert set(OVERFLOW_NODES[1:]) <= set(report.fp32_nodes)
    _strictly_typed(out)
    with pytest.raises(InputError, match="no node of the model matches"):
        fp16.to_fp16(overflow_model, out, fp32_nodes=["no_such_layer"], make_source=synthetic(8))


def test_fp16_refuses_to_overwrite_its_input(overflow_model):
    with pytest.raises(InputError, match="also an input"):
        fp16.to_fp16(overflow_model, overflow_model, make_source=synthetic(8))


# -- int8 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tao_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    calib = synthesize(str(root / "calib"), pairs=16, seed=11)
    held = synthesize(str(root / "held"), pairs=16, seed=12)
    return calib, held


def _arrays(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_int8_writes_symmetric_per_channel_qdq_that_onnxruntime_runs(method, tao_pairs, tmp_path):
    calib, held = tao_pairs
    source = write_reference_model(str(tmp_path / "ref12.onnx"), kind="learnable", opset=12)
    count, batches = dataset_batches(calib.csv_path, (3, 512, 128), 8, images_dir=calib.images_dir)
    assert count == 2
    out = str(tmp_path / "int8.onnx")
    report = int8.to_int8(source, out, batches, method=method,
                               make_source=lambda c, norm: dataset_source(held.csv_path, held.images_dir,
                                                                          c.input_shape, norm))
    model = _strictly_typed(out)
    assert precision.main_opset(model) == 13  # upgraded from 12 for per-channel Q/DQ
    assert precision.graph_precision(model) == {"float16": False, "qdq": True, "fp32_nodes": []}
    arrays = _arrays(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    dq_nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert dq_nodes and q_nodes
    for node in dq_nodes + q_nodes:
        scale, zero = arrays[node.input[1]], arrays[node.input[2]]
        assert scale.dtype == np.float32 and (scale > 0).all()
        assert zero.dtype == np.int8 and not zero.any()  # symmetric: zero points 0
    weight_dq = [n for n in dq_nodes if n.input[0] in arrays]
    assert weight_dq and all(arrays[n.input[1]].size > 1 for n in weight_dq)  # one scale per channel
    # biases stay float; the 3-channel stem convolutions read float weights and float images
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert node.name in report.fp32_nodes
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)
        if node.op_type == "Gemm":
            assert producers[node.input[1]].op_type == "DequantizeLinear" and node.input[2] in arrays
        if node.op_type in int8.NO_QDQ_OPS:
            assert all(producers.get(i) is None or producers[i].op_type not in ("DequantizeLinear", "QuantizeLinear")
                       for i in node.input)
    assert set(report.fp32_nodes) == set(int8.stem_convolutions(model)) == {"node_of_sample.conv", "node_of_golden.conv"}
    made = precision.read_made(out)
    assert made["method"] == method and made["calibration_pairs"] == 16
    # validate's report on the held-back pairs: FPR and capture of both models
    metrics = report.validation.metrics
    assert set(metrics) == {"onnx", "engine"} and report.validation.pairs == 16
    for side in metrics.values():
        assert 0.0 <= side["fpr"] <= 1.0 and 0.0 <= side["defect_capture"] <= 1.0
    assert any("FPR" in line for line in report.summary_lines())
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    x = np.ones((3, 3, 512, 128), dtype=np.float32)
    assert np.isfinite(sess.run(None, {"input_1": x, "input_2": x})[0]).all()


def test_int8_refuses_qdq_on_softmax_reshape_transpose_and_empty_calibration(tmp_path):
    source = write_reference_model(str(tmp_path / "ref.onnx"), kind="learnable")
    with pytest.raises(InputError, match="Q/DQ around these ops"):
        int8.to_int8(source, str(tmp_path / "q.onnx"), [], op_types=("Gemm", "Softmax"))
    with pytest.raises(InputError, match="calibration method"):
        int8.to_int8(source, str(tmp_path / "q.onnx"), [], method="minmax")
    with pytest.raises(BuildError):
        int8.to_int8(source, str(tmp_path / "q.onnx"), iter([]))
    assert not os.path.exists(tmp_path / "q.onnx")


def test_graph_precision_of_a_float32_model(tmp_path):
    source = write_reference_model(str(tmp_path / "ref.onnx"), kind="euclidean")
    assert precision.graph_precision(source) == {"float16": False, "qdq": False, "fp32_nodes": []}
    assert precision.read_made(source) is None
