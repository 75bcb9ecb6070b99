"""INT8 Q/DQ placement for a transformer (engine/precision.py to_int8) on TAO's export patterns:
Q/DQ on Conv/MatMul/Gemm inputs and the residual input of fused Adds, never in front of Softmax,
LayerNorm, GELU, Reshape or Transpose; calibration in bounded runs; per-layer error reported."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from changenet_trt.data.pairs import synthetic_source
from changenet_trt.engine import int8, precision
from changenet_trt.engine.fp16_check import source_batches

from helpers import recorded_run_rows

SHAPE = (3, 512, 128)


def _residual_graph():
    """x -> Conv -> Add(x) ; x -> MatMul -> Add(bias) -> Add(x) ; x -> MatMul -> Mul(gamma) -> Add(x)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "m"),
             numpy_helper.from_array(np.ones(4, np.float32), "bias"),
             numpy_helper.from_array(np.full(4, 1e-6, np.float32), "gamma")]
    node = helper.make_node
    nodes = [node("Conv", ["x", "w"], ["c"], name="conv"),
             node("Add", ["x", "c"], ["r1"], name="res_conv"),  # residual is input 0
             node("MatMul", ["r1", "m"], ["mm"], name="mm"),
             node("Identity", ["bias"], ["bias_alias"], name="bias_alias"),  # TorchScript's shared-weight alias
             node("Add", ["mm", "bias_alias"], ["mmb"], name="bias_add"),
             node("Add", ["mmb", "r1"], ["r2"], name="res_mm"),  # residual is input 1
             node("MatMul", ["r2", "m"], ["mm2"], name="mm2"),
             node("Mul", ["mm2", "gamma"], ["scaled"], name="layer_scale"),
             node("Add", ["r2", "scaled"], ["y"], name="res_scaled")]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_residual_adds_are_the_ones_fused_into_a_weighted_layer():
    model = _residual_graph()
    found = int8.residual_adds(model, ["conv", "mm", "mm2"])
    # the bias Add is part of the MatMul's epilogue, not a residual; the layer-scaled Add is not fused
    assert found == {"res_conv": 0, "res_mm": 1}
    assert int8.residual_adds(model, ["mm"]) == {"res_mm": 1}


@pytest.fixture(scope="module")
def int8_report(tao_like_models, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("int8") / "int8.onnx")
    source = synthetic_source(6, SHAPE, None, seed=1)
    try:
        with recorded_run_rows() as rows:
            report = int8.to_int8(tao_like_models["learnable_dynamic"], out, source_batches(source, 6, SHAPE),
                                  make_source=_synthetic(8), run_pairs=2, layer_pairs=4, progress=False)
    finally:
        source.close()
    return report, out, rows


def _synthetic(pairs):
    def make(contract, normalization):
        return synthetic_source(pairs, contract.input_shape, normalization, seed=4)

    return make


def test_calibration_and_layer_error_run_a_few_pairs_at_a_time(int8_report):
    report, _, rows = int8_report
    # 6 calibration pairs in one batch: the quantizer and the per-layer error never see more than 2
    assert rows and max(rows[:5]) == 2
    assert report.details["calibration"].startswith("entropy on 6 pairs (1 batches, 2 pairs per run)")
    assert report.layer_pairs == 4


def test_qdq_placement_for_the_transformer_blocks(int8_report):
    _, out, _ = int8_report
    model = onnx.load(out)
    precision.check_typed(model, "INT8 model")
    producers = {o: n for n in model.graph.node for o in n.output}
    readers_of_dq = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in producers and producers[name].op_type == "DequantizeLinear":
                readers_of_dq.setdefault(node.op_type, []).append((node.name, index))
    # int8 values reach only weighted layers and the residual input of fused Adds
    assert set(readers_of_dq) <= {"Conv", "MatMul", "Gemm", "Add"}
    made = precision.read_made(out)
    for name, _index in readers_of_dq.get("Add", []):
        assert name in made["residual_adds"]
    # the attention: both MatMul inputs quantized (the Softmax output where it enters the MatMul)
    softmax_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Softmax"}
    attn = [n for n in model.graph.node if n.op_type == "MatMul" and any(
        producers[i].op_type == "DequantizeLinear" and producers[producers[i].input[0]].input[0] in softmax_outputs
        for i in n.input if i in producers and producers[i].op_type == "DequantizeLinear"
        and producers[i].input[0] in producers)]
    assert attn
    # nothing quantized in front of Softmax, LayerNorm, Erf (GELU), Reshape, Transpose
    for node in model.graph.node:
        if node.op_type in ("Softmax", "LayerNormalization", "Erf", "Reshape", "Transpose", "ReduceMean"):
            assert not any(i in producers and producers[i].op_type == "DequantizeLinear" for i in node.input)


def test_per_layer_error_is_reported_for_every_quantized_layer(int8_report):
    report, out, _ = int8_report
    made = precision.read_made(out)
    quantized = {e.node for e in report.layers}
    assert quantized == set(made["layer_sqnr_db"])
    assert {"Conv", "MatMul", "Gemm"} <= {e.op_type for e in report.layers}
    assert all(np.isfinite(e.sqnr_db) and e.sqnr_db > 0 for e in report.layers)
    lines = report.summary_lines()
    assert any("per-layer output SQNR vs float32 on 4 calibration pairs" in line for line in lines)
    worst = min(report.layers, key=lambda e: e.sqnr_db)
    assert any(worst.node in line and "dB" in line for line in lines)
    assert "dB" in report.details["raw-output SQNR vs float32"]
    assert report.validation.raw.sqnr_db == pytest.approx(float(report.details["raw-output SQNR vs float32"].split()[0]),
                                                          abs=0.05)
