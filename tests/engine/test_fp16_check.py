"""fp16-check: float16 range analysis of ONNX models on real preprocessed pairs (CPU)."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from changenet_trt.data.pairs import synthetic_source
from changenet_trt.engine import fp16_check
from changenet_trt.models.reference import OVERFLOW_NODES, write_reference_model


@pytest.fixture(scope="module")
def pair_batches():
    """Six synthetic PCB pairs (three defects, three PASS), preprocessed, in batches of 4 and 2."""
    source = synthetic_source(6, (3, 512, 128), "tao", seed=3, defect_rate=0.5)
    golden = np.zeros((6, 3, 512, 128), dtype=np.float32)
    sample = np.zeros_like(golden)
    source.fill(golden, sample, 0, 6)
    assert int(source.labels.sum()) == 3
    return [(golden[:4], sample[:4]), (golden[4:], sample[4:])]


@pytest.fixture(scope="module")
def overflow_model(tmp_path_factory):
    return write_reference_model(str(tmp_path_factory.mktemp("fp16") / "overflow.onnx"), fp16_overflow=True)


def _by_name(tensors):
    return {t.name: t for t in tensors}


def _exposed_run(model, name, batches):
    """``name`` computed by a plain ONNX Runtime session (no fusions, as fp16-check runs)."""
    import onnxruntime as ort

    proto = onnx.load(model)
    proto.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([name], {"input_2": g, "input_1": s})[0] for g, s in batches])


def test_planted_overflow_is_found_and_named(overflow_model, pair_batches):
    report = fp16_check.check_model(overflow_model, pair_batches)
    assert report.pairs == 6
    assert [t.name for t in report.overflow] == ["head.sq_scaled"]
    hit = report.overflow[0]
    assert (hit.node, hit.op_type) == ("overflow/square", "Mul")
    assert hit.max_abs > fp16_check.FP16_MAX
    assert 0 < hit.overflow < hit.elements
    # the producer and its consumer (which would read the value back as float16) are listed
    assert [(layer.layer, layer.op_type) for layer in report.layers] == [
        ("overflow/square", "Mul"),
        ("overflow/scale_down", "Mul"),
    ]
    assert OVERFLOW_NODES[1:] == ("overflow/square", "overflow/scale_down")
    why = "head.sq_scaled, whose |x| reaches {:.4g} > 65504".format(hit.max_abs)
    assert [layer.reasons for layer in report.layers] == [["produces " + why], ["reads " + why]]


def test_overflow_stats_match_a_direct_computation(overflow_model, pair_batches):
    """The counted overflow equals what the exposed tensor really holds."""
    stacked = _exposed_run(overflow_model, "head.sq_scaled", pair_batches)
    report = fp16_check.check_model(overflow_model, pair_batches)
    hit = _by_name(report.tensors)["head.sq_scaled"]
    assert hit.elements == stacked.size
    assert hit.overflow == int((np.abs(stacked) > 65504).sum())
    assert hit.max_abs == pytest.approx(float(np.abs(stacked).max()))
    # every pair overflows somewhere, PASS pairs too (the planted scale works on real inputs)
    assert (np.abs(stacked).reshape(6, -1).max(axis=1) > 65504).all()


@pytest.mark.parametrize("kind", ["learnable", "euclidean"])
def test_clean_reference_model_has_no_overflow(tmp_path, pair_batches, kind):
    model = write_reference_model(str(tmp_path / "clean.onnx"), kind=kind)
    report = fp16_check.check_model(model, pair_batches)
    assert report.overflow == []
    assert report.layers == []
    # every float activation of the graph was measured, named after TensorRT's parser rule
    names = _by_name(report.tensors)
    assert "head.sq" in names and "sample.conv" in names and "output" in names
    assert names["sample.conv"].node == "node_of_sample.conv"
    assert names["sample.conv"].op_type == "Conv"
    assert "embed.shape" not in names  # int64 initializer, not an activation
    # no tensor of the clean model loses more than plain float16 rounding in L2 terms
    assert max(t.rel_error for t in report.tensors) < 1e-3


def test_underflow_reported_is_what_the_tensor_holds(tmp_path, pair_batches):
    """head.sq (squared embedding differences) holds tiny values: the counts must be real."""
    model = write_reference_model(str(tmp_path / "clean.onnx"))
    report = fp16_check.check_model(model, pair_batches)
    stats = _by_name(report.tensors)["head.sq"]
    x = _exposed_run(model, "head.sq", pair_batches).ravel()
    nonzero = x[x != 0]
    flushed = int((nonzero.astype(np.float16) == 0).sum())
    assert stats.nonzero == nonzero.size
    assert stats.underflow == flushed
    assert stats.underflow > 0  # identical golden/sample regions give squares below 3e-8
    err = x.astype(np.float64) - x.astype(np.float16).astype(np.float64)
    assert stats.rel_error == pytest.approx(np.sqrt((err ** 2).sum() / (x.astype(np.float64) ** 2).sum()))


def test_static_batch_model_pads_and_counts_only_real_pairs(tmp_path, pair_batches):
    model = write_reference_model(str(tmp_path / "static.onnx"), batch=16, fp16_overflow=True)
    report = fp16_check.check_model(model, pair_batches)
    dynamic = fp16_check.check_model(
        write_reference_model(str(tmp_path / "dyn.onnx"), fp16_overflow=True), pair_batches
    )
    assert report.pairs == 6
    a, b = _by_name(report.tensors)["head.sq_scaled"], _by_name(dynamic.tensors)["head.sq_scaled"]
    assert a.elements == b.elements and a.overflow == b.overflow


def _tiny_model(path, scale, weight=None):
    """input_1/input_2 -> Sub -> Mul(scale) named 'amplify' -> ReduceMean -> output [B,1]."""
    inits = [numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale")]
    nodes = [
        helper.make_node("Sub", ["input_1", "input_2"], ["d"], name="diff"),
        helper.make_node("Mul", ["d", "scale"], ["amp"], name="amplify"),
        helper.make_node("ReduceMean", ["amp"], ["output"], axes=[1, 2, 3], keepdims=0, name="reduce"),
    ]
    if weight is not None:
        inits.append(numpy_helper.from_array(np.array(weight, dtype=np.float32), "big"))
        nodes[1] = helper.make_node("Mul", ["d", "big"], ["amp"], name="amplify")
    shape = ["batch", 3, 512, 128]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("input_1", "input_2")],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_precision_loss_threshold_flags_tiny_tensors(tmp_path, pair_batches):
    model = _tiny_model(str(tmp_path / "tiny.onnx"), 1e-6)
    report = fp16_check.check_model(model, pair_batches, max_rel_error=1e-2)
    amp = _by_name(report.tensors)["amp"]
    assert not amp.out_of_range and amp.rel_error > 1e-2  # |d| <= 5 -> |amp| <= 5e-6: subnormal
    assert [layer.layer for layer in report.layers] == ["amplify", "reduce"]
    worst = max(t.rel_error for t in report.tensors)
    loose = fp16_check.check_model(model, pair_batches, max_rel_error=worst * 1.01)
    assert loose.layers == []


def test_weight_beyond_fp16_range_flags_its_consumer(tmp_path, pair_batches):
    model = _tiny_model(str(tmp_path / "w.onnx"), 1.0, weight=1e5)
    report = fp16_check.check_model(model, pair_batches)
    assert [w.name for w in report.weights if w.out_of_range] == ["big"]
    flagged = {layer.layer: layer.reasons for layer in report.layers}
    assert "amplify" in flagged and any("weight big" in why for why in flagged["amplify"])


def test_layer_list_file_format(tmp_path, overflow_model, pair_batches):
    report = fp16_check.check_model(overflow_model, pair_batches)
    path = fp16_check.write_layer_list(report, str(tmp_path / "layers.txt"))
    lines = open(path).read().splitlines()
    names = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert names == ["overflow/square", "overflow/scale_down"]
    json_path = fp16_check.write_json(report, str(tmp_path / "r.json"))
    data = json.load(open(json_path))
    assert data["overflow"] == ["head.sq_scaled"]
    assert [layer["layer"] for layer in data["fp32_layers"]] == names


def test_empty_list_when_nothing_flagged(tmp_path, pair_batches):
    report = fp16_check.check_model(write_reference_model(str(tmp_path / "c.onnx")), pair_batches)
    path = fp16_check.write_layer_list(report, str(tmp_path / "none.txt"))
    lines = open(path).read().splitlines()
    assert lines and all(line.startswith("#") for line in lines)


def test_no_pairs_is_a_user_error(overflow_model):
    from changenet_trt.errors import InputError

    with pytest.raises(InputError):
        fp16_check.check_model(overflow_model, [])


def test_layer_name_rule():
    named = helper.make_node("Relu", ["a"], ["b"], name="/blocks.0/act")
    unnamed = helper.make_node("Relu", ["a"], ["b"])
    assert fp16_check.layer_name(named) == "/blocks.0/act"
    assert fp16_check.layer_name(unnamed) == "node_of_b"
