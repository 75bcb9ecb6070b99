"""The float16 conversion (engine/precision.py convert_fp16) on TAO's export patterns.

TAO's FAN channel-first LayerNorm exports ``torch.var_mean`` as ReduceMean plus
Shape -> Gather -> ReduceProd -> Cast(to=FLOAT) for the N/(N-1) correction; the conversion must
keep that shape arithmetic float32 and every Cast consistent with its readers.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from changenet_trt.cli import main
from changenet_trt.engine import fp16, precision

from helpers import recorded_run_rows


def var_mean_model(opset=17):
    """A conv, a channel-first LayerNorm as TAO exports var_mean, a 1e-6 layer scale, a shared
    weight read by a float32 and a float16 node, a classifier: [B,3,16,16] x2 -> [B,2]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "conv.w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "conv.b"),
             numpy_helper.from_array(np.array([1], np.int64), "chan_index"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(np.full((1, 8, 1, 1), 1e-6, np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(0, 0.2, (2, 8)).astype(np.float32), "fc.w"),
             numpy_helper.from_array(np.zeros(2, np.float32), "fc.b")]
    node = helper.make_node
    nodes = [node("Sub", ["input_1", "input_2"], ["diff"], name="/diff"),
             node("Conv", ["diff", "conv.w", "conv.b"], ["x"], pads=[1, 1, 1, 1], name="/conv"),
             node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=1, name="/norm/ReduceMean"),
             node("Sub", ["x", "mean"], ["d"], name="/norm/Sub"),
             node("Mul", ["d", "d"], ["sq"], name="/norm/Mul"),
             node("ReduceMean", ["sq"], ["var_b"], axes=[1], keepdims=1, name="/norm/ReduceMean_1"),
             node("Shape", ["x"], ["shape"], name="/norm/Shape"),
             node("Gather", ["shape", "chan_index"], ["chans"], axis=0, name="/norm/Gather"),
             node("ReduceProd", ["chans"], ["count"], keepdims=0, name="/norm/ReduceProd"),
             node("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT, name="/norm/Cast"),
             node("Sub", ["count_f", "one"], ["count_m1"], name="/norm/Sub_1"),
             node("Div", ["count_f", "count_m1"], ["corr"], name="/norm/Div"),
             node("Mul", ["var_b", "corr"], ["var"], name="/norm/Mul_1"),
             node("Add", ["var", "eps"], ["var_eps"], name="/norm/Add"),
             node("Sqrt", ["var_eps"], ["std"], name="/norm/Sqrt"),
             node("Div", ["d", "std"], ["normed"], name="/norm/Div_1"),
             node("Mul", ["normed", "gamma"], ["scaled"], name="/ls/Mul"),
             node("Add", ["x", "scaled"], ["res"], name="/Add"),
             node("GlobalAveragePool", ["res"], ["pooled"], name="/pool"),
             node("Flatten", ["pooled"], ["flat"], name="/flatten"),
             node("Gemm", ["flat", "fc.w", "fc.b"], ["output"], transB=1, name="/fc")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3, 16, 16]) for n in ("input_1", "input_2")]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])]
    graph = helper.make_graph(nodes, "var_mean", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _run(model, golden, sample):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_1": sample, "input_2": golden})[0]


def _pairs(n=4):
    rng = np.random.default_rng(1)
    return (rng.normal(size=(n, 3, 16, 16)).astype(np.float32), rng.normal(size=(n, 3, 16, 16)).astype(np.float32))


def test_the_reference_converter_fails_on_var_mean_as_the_issue_says():
    # the failure this module fixes: onnxconverter-common leaves the Cast float32, its readers float16
    float16 = pytest.importorskip("onnxconverter_common.float16")
    old = float16.convert_float_to_float16(var_mean_model(), keep_io_types=True)
    with pytest.raises(Exception, match="/norm/Cast"):
        precision.check_typed(old, "float16 model")


@pytest.mark.parametrize("opset", [12, 17])
def test_var_mean_shape_arithmetic_stays_float32_and_the_graph_is_strictly_typed(opset):
    original = var_mean_model(opset)
    plan = fp16.plan_fp16(precision.name_nodes(var_mean_model(opset)))
    # found by value dependence, not by names: exactly the Shape -> ... -> Div chain
    assert set(plan.shape_math) == {"/norm/Shape", "/norm/Cast", "/norm/Sub_1", "/norm/Div"}  # its float readers/writers
    assert "/norm/Mul_1" in plan.half and "/conv" in plan.half
    typed = fp16.convert_fp16(original)
    precision.check_typed(typed, "float16 model")  # full check + strict typed inference
    by_name = {n.name: n for n in typed.graph.node}
    cast = by_name["/norm/Cast"]
    assert [a.i for a in cast.attribute if a.name == "to"] == [TensorProto.FLOAT]
    # the float16 reader gets the correction through one Cast down
    assert by_name["/norm/Mul_1"].input[1] == "corr/to_fp16"
    assert by_name["corr/to_fp16"].op_type == "Cast"
    # Shape reads the float16 tensor directly (no Cast just to read a shape)
    assert by_name["/norm/Shape"].input[0] == "x"
    # every node and tensor name survives; the output keeps its name (the float16 value is output/fp16)
    assert {n.name for n in original.graph.node} <= set(by_name)
    old_tensors = {t for n in original.graph.node for t in n.output}
    new_tensors = {t for n in typed.graph.node for t in n.output}
    assert old_tensors <= new_tensors
    assert by_name["/fc"].output[0] == "output/fp16" and by_name["output/to_fp32"].output[0] == "output"
    # inputs and outputs stay float32; weights of float16 nodes are float16
    io = list(typed.graph.input) + list(typed.graph.output)
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in io)
    weights = {i.name: i.data_type for i in typed.graph.initializer}
    assert weights["conv.w"] == weights["fc.w"] == weights["gamma"] == TensorProto.FLOAT16
    assert weights["one"] == TensorProto.FLOAT  # read by the float32 shape arithmetic only
    # value_info: no entry for a tensor that is gone, the types of the others are the new ones
    types = fp16._elem_types(typed)
    for vi in typed.graph.value_info:
        assert vi.name in new_tensors
        assert vi.type.tensor_type.elem_type == types[vi.name]
    golden, sample = _pairs()
    ref, out = _run(original, golden, sample), _run(typed, golden, sample)
    assert out.dtype == np.float32 and np.allclose(out, ref, atol=2e-3, rtol=1e-2)


def test_kept_nodes_and_a_weight_read_both_ways():
    original = var_mean_model()
    typed = fp16.convert_fp16(original, ["/ls/Mul"])  # the 1e-6 layer scale, as fp16-check flags it
    precision.check_typed(typed, "float16 model")
    by_name = {n.name: n for n in typed.graph.node}
    assert by_name["/ls/Mul"].input == ["normed/to_fp32", "gamma"]
    assert by_name["/Add"].input[1] == "scaled/to_fp16"
    weights = {i.name: i.data_type for i in typed.graph.initializer}
    assert weights["gamma"] == TensorProto.FLOAT
    held = precision.graph_precision(typed)
    assert held["float16"] and held["fp32_nodes"] == ["/ls/Mul"]  # the shape arithmetic is not listed
    # a weight read by a float32 and a float16 node: the original for one, a float16 copy for the other
    shared = var_mean_model()
    shared.graph.node.append(helper.make_node("Mul", ["var", "eps"], ["var_scaled"], name="/extra"))
    shared.graph.output.append(helper.make_tensor_value_info("var_scaled", TensorProto.FLOAT, ["batch", 1, 16, 16]))
    typed = fp16.convert_fp16(shared, ["/extra"])
    precision.check_typed(typed, "float16 model")
    by_name = {n.name: n for n in typed.graph.node}
    assert by_name["/norm/Add"].input[1] == "eps/fp16" and by_name["/extra"].input[1] == "eps"
    weights = {i.name: i.data_type for i in typed.graph.initializer}
    assert weights["eps"] == TensorProto.FLOAT and weights["eps/fp16"] == TensorProto.FLOAT16


def test_weights_moved_about_in_the_graph_are_stored_float16():
    """TAO 5.x exported opset 12 without constant folding: every Linear weight reaches its MatMul
    through a Transpose (one per Siamese branch), some through a Reshape first. Those are the
    weight itself: stored float16, not kept float32 behind a Cast as constant folding."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (6, 8)).astype(np.float32), "q.w"),
             numpy_helper.from_array(rng.normal(0, 0.2, (2, 3, 6)).astype(np.float32), "p.w"),
             numpy_helper.from_array(np.array([6, 6], np.int64), "p.shape")]
    node = helper.make_node
    nodes = []
    for branch, x in (("", "input_1"), ("_1", "input_2")):
        nodes += [node("Transpose", ["q.w"], ["q.wt" + branch], perm=[1, 0], name="/q{}/Transpose".format(branch)),
                  node("MatMul", [x, "q.wt" + branch], ["q" + branch], name="/q{}/MatMul".format(branch)),
                  node("Reshape", ["p.w", "p.shape"], ["p.w6" + branch], name="/p{}/Reshape".format(branch)),
                  node("Transpose", ["p.w6" + branch], ["p.wt" + branch], perm=[1, 0], name="/p{}/Transpose".format(branch)),
                  node("MatMul", ["q" + branch, "p.wt" + branch], ["p" + branch], name="/p{}/MatMul".format(branch))]
    nodes.append(node("Sub", ["p", "p_1"], ["output"], name="/Sub"))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 8]) for n in ("input_1", "input_2")]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 6])]
    model = helper.make_model(helper.make_graph(nodes, "unfolded", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    typed = fp16.convert_fp16(onnx.shape_inference.infer_shapes(model))
    precision.check_typed(typed, "float16 model")
    weights = {i.name: i.data_type for i in typed.graph.initializer}
    assert weights == {"q.w": TensorProto.FLOAT16, "p.w": TensorProto.FLOAT16, "p.shape": TensorProto.INT64}
    casts = sorted(n.name for n in typed.graph.node if n.op_type == "Cast")
    assert casts == ["input_1/to_fp16", "input_2/to_fp16", "output/to_fp32"]  # none on a weight's way
    assert fp16._weight_share(typed) == "100.0% of {} elements".format(2 * (48 + 36))
    sample, golden = (rng.normal(size=(3, 8)).astype(np.float32) for _ in range(2))
    sess = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (model, typed)]
    reference, half = (s.run(None, {"input_1": sample, "input_2": golden})[0] for s in sess)
    np.testing.assert_allclose(half, reference, atol=1e-2, rtol=1e-2)


def test_weights_are_clamped_only_outside_the_float16_range():
    values = np.array([1e5, -1e5, 1e-9, -1e-9, 0.0, 1e-6, 3.0], dtype=np.float32)
    half = fp16._half_values(values)
    assert half.dtype == np.float16
    assert half[0] == 65504 and half[1] == -65504
    assert half[2] == np.float16(2.0 ** -24) and half[3] == -np.float16(2.0 ** -24)
    assert half[4] == 0 and half[5] == np.float16(1e-6) and half[6] == 3


def test_fp16_check_runs_a_few_pairs_at_a_time_and_its_statistics_do_not_depend_on_it(tmp_path):
    from changenet_trt.contract import ContractNames, read_contract
    from changenet_trt.engine import fp16_check

    path = str(tmp_path / "var_mean.onnx")
    onnx.save(var_mean_model(), path)
    contract = read_contract(path, ContractNames(output_kind="learnable"))
    golden, sample = _pairs(7)
    with recorded_run_rows() as rows:
        few = fp16_check.check_model(path, [(golden, sample)], contract=contract, run_pairs=2, total=7,
                                     progress=False)
        assert rows == [2, 2, 2, 1]  # memory follows the run, not the 7 pairs
        rows.clear()
        whole = fp16_check.check_model(path, [(golden, sample)], contract=contract, run_pairs=7, progress=False)
        assert rows == [7]
    assert few.pairs == whole.pairs == 7
    for a, b in zip(few.tensors, whole.tensors):
        assert a.name == b.name
        if not (b.shape and b.shape[0] == 7):
            continue  # a value without the batch axis (the N/(N-1) scalar) is counted once per run
        assert a.elements == b.elements and a.underflow == b.underflow
        assert a.max_abs == pytest.approx(b.max_abs) and a.rel_error == pytest.approx(b.rel_error, rel=1e-4)
    # the 1e-6 layer scale's output loses most of its digits in float16: flagged, producer and reader
    flagged = {layer.layer for layer in few.layers}
    assert {"/ls/Mul", "/Add"} <= flagged


def test_fp16_check_of_a_static_batch_export_runs_a_few_pairs_at_a_time(tao_like_models, tmp_path, capsys):
    """TAO's default export has a static batch of 16: fp16-check makes it dynamic (proven) so a run
    holds 2 pairs' activations, not 16 (16 x 1.2 GB on the real model), and finds what the dynamic
    export's check finds."""
    from changenet_trt.engine import fp16_check

    static = tao_like_models["learnable_static16"]
    out = tmp_path / "layers.txt"
    # only the exposed-activations session (many outputs) counts, not the proof's
    with recorded_run_rows(lambda names: len(names) > 1) as rows:
        code = main(["fp16-check", static, "--pairs", "5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code in (0, 1)
    assert rows == [2, 2, 1], rows
    assert "static batch 16 made dynamic" in printed
    rng = np.random.default_rng(2)
    pairs = [tuple(rng.normal(size=(3, 3, 512, 128)).astype(np.float32) for _ in range(2))]
    dynamic = fp16_check.check_model(tao_like_models["learnable_dynamic"], pairs, progress=False)
    report = fp16_check.check_model(static, pairs, progress=False)
    assert report.pairs == 3 and "made dynamic" in report.runs
    assert {layer.layer for layer in report.layers} == {layer.layer for layer in dynamic.layers}


def test_sqnr_of_raw_outputs():
    from changenet_trt.evaluation.validate import error_stats, sqnr_db

    ref = np.array([3.0, -4.0])
    assert error_stats(ref, ref).sqnr_db == float("inf")
    # sum ref^2 = 25, sum noise^2 = 0.25 -> 20 dB
    assert error_stats(ref, ref + np.array([0.5, 0.0])).sqnr_db == pytest.approx(20.0)
    assert sqnr_db(0.0, 1.0) == float("-inf")


@pytest.mark.parametrize("variant", ["learnable_dynamic", "euclidean_dynamic", "learnable_static16",
                                     "learnable_static16_opset12", "euclidean_static16_opset12"])
def test_every_tao_like_export_converts_to_a_strictly_typed_float16_graph(tao_like_models, variant):
    original = onnx.load(tao_like_models[variant])
    typed = fp16.convert_fp16(original)
    precision.check_typed(typed, "float16 model")
    plan = fp16.plan_fp16(precision.name_nodes(onnx.load(tao_like_models[variant])))
    ops = {n.name: n.op_type for n in typed.graph.node}
    # var_mean's Cast(to=FLOAT) of the element count stays float32 shape arithmetic
    casts = [n for n in plan.shape_math if ops[n] == "Cast"]
    assert casts
    for name in casts:
        node = next(n for n in typed.graph.node if n.name == name)
        assert [a.i for a in node.attribute if a.name == "to"] == [TensorProto.FLOAT]
    # ReduceProd of a shape is never float16 (it is not even a float node)
    assert not any(ops[n] == "ReduceProd" for n in plan.half)
    assert set(ops) >= {n.name for n in precision.name_nodes(original).graph.node}
    # every weight but the position encoding's (computed from shapes and constants: float32) is float16
    share = float(fp16._weight_share(typed).split("%")[0])
    assert 90 <= share < 100
    golden = np.random.default_rng(0).normal(size=(2, 3, 512, 128)).astype(np.float32)
    sample = golden + np.random.default_rng(1).normal(scale=0.5, size=golden.shape).astype(np.float32)
    feed_batch = 16 if "static" in variant else 2
    g = np.take(golden, np.arange(feed_batch) % 2, axis=0)
    s = np.take(sample, np.arange(feed_batch) % 2, axis=0)
    ref, out = _run(original, g, s), _run(typed, g, s)
    assert np.isfinite(out).all()
    from changenet_trt.evaluation.validate import error_stats

    assert error_stats(ref, out).sqnr_db > 30


def test_to_fp16_on_the_tao_like_export_reports_sqnr_and_weights(tao_like_models, tmp_path, monkeypatch):
    from changenet_trt.evaluation import validate as validation

    out = str(tmp_path / "fp16.onnx")
    loaded = []
    real_load = validation.load
    monkeypatch.setattr(validation, "load", lambda model, *a, **k: loaded.append(str(model)) or real_load(model, *a, **k))
    report = fp16.to_fp16(tao_like_models["learnable_dynamic"], out, make_source=_synthetic(6), progress=False)
    # the float32 original runs once for both proofs (float16 storage emulated, and the file itself)
    assert loaded.count(str(tao_like_models["learnable_dynamic"])) == 1 and len(loaded) == 3, loaded
    assert report.validation.raw.sqnr_db > 30 and report.direct.raw.sqnr_db > 30
    assert "dB" in report.details["raw-output SQNR vs float32"]
    assert report.details["MatMul/Conv/Gemm weights in float16"].endswith("elements")
    assert any("SQNR" in line for line in report.summary_lines())
    # fp16-check's islands: the 1e-6 layer scale loses its digits in float16
    assert any("gamma" in name.lower() or "mul" in name.lower() for name in report.fp32_nodes)
    precision.check_typed(onnx.load(out), "float16 model")


def _synthetic(pairs):
    def make(contract, normalization):
        from changenet_trt.data.pairs import synthetic_source

        return synthetic_source(pairs, contract.input_shape, normalization, seed=5)

    return make


def test_the_long_steps_give_their_memory_back(tao_like_models, tmp_path, monkeypatch):
    """fp16-check, the dynamic-batch proof and the typed model's comparison each release the freed
    heap when their sessions are gone (memory.release_freed_memory), so one step's high-water mark
    is not added to the next's (FP16 prepare of TAO's export peaked at 8.9 GB before, with 4.1 GB of
    fp16-check's freed activations still resident)."""
    from changenet_trt.engine import fp16_check, prepare
    from changenet_trt.evaluation import validate as validation

    released = []
    for module in (fp16_check, prepare, validation):
        monkeypatch.setattr(module, "release_freed_memory", lambda m=module.__name__: released.append(m))
    out = str(tmp_path / "fp16.onnx")
    fp16.to_fp16(tao_like_models["learnable_static16"], out, make_source=_synthetic(3), progress=False)
    # the static export is made dynamic for fp16-check (prepare.prove), checked, then compared: the
    # float32 model, the float16-storage emulation and the float16 file, one session at a time
    assert released == ["changenet_trt.engine.prepare", "changenet_trt.engine.fp16_check"] + [
        "changenet_trt.evaluation.validate"] * 3, released
