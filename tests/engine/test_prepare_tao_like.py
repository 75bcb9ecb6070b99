"""prepare on graphs with TAO's export patterns (models/tao_like.py): the batch is found by
propagation, the W/8 = 16 reshapes are left alone, and the proof would catch a wrong rewrite."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from changenet_trt.contract import read_contract
from changenet_trt.engine.batch_analysis import analyse
from changenet_trt.engine.dynamic_batch import BATCH_TENSOR
from changenet_trt.engine.prepare import ATOL, RTOL, prepare_model, proof_pairs, prove
from changenet_trt.errors import BuildError

W8_RESHAPE = "/decode_head/linear_c2/Reshape_1"  # reshape(B, -1, H/8, W/8) -> [16, -1, 64, 16]


def _run(model, golden, sample):
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input_2": golden, "input_1": sample})[0]


def _constant_of(model, node_name, index=1):
    node = next(n for n in model.graph.node if n.name == node_name)
    name = node.input[index]
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).tolist()
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t).tolist()
    raise AssertionError("{} reads no constant at input {}".format(node_name, index))


@pytest.mark.parametrize("variant", ["learnable_static16", "euclidean_static16", "learnable_static16_opset12",
                                     "euclidean_static16_opset12"])
def test_tao_static_exports_become_dynamic_and_proven(variant, tao_like_models, tmp_path):
    source = tao_like_models[variant]
    out = str(tmp_path / "dynamic.onnx")
    report = prepare_model(source, out)
    assert report.original_batch == 16 and [c.batch for c in report.checks] == [1, 3, 16, 17, 32]
    assert all(c.ok for c in report.checks)
    if variant.endswith("opset12"):
        # unfolded: the batch is a scalar Constant each shape Unsqueezes and Concats
        assert sum(c.startswith("Unsqueeze input ") and ": the batch at [0]" in c for c in report.changes) >= 6
    else:
        # pos.repeat(B, 1, 1, 1) and cls_token.expand(B, -1, -1), once per branch
        assert sum(c.startswith("Tile input ") and "[16, 1, 1, 1]" in c for c in report.changes) == 2
        assert sum(c.startswith("Where input ") and "[16, -1, -1]" in c for c in report.changes) == 2
    prepared = onnx.load(out)
    onnx.checker.check_model(prepared, full_check=True)
    onnx.shape_inference.infer_shapes(prepared, strict_mode=True)
    assert len(prepared.graph.value_info) == 0
    assert read_contract(prepared).static_batch is None
    if variant == "learnable_static16":
        assert _constant_of(prepared, W8_RESHAPE) == [0, -1, 64, 16]  # the batch became 0, W/8 stayed
    elif variant.startswith("learnable"):  # unfolded: Concat(Unsqueeze(batch), [-1, 64, 16]); W/8 stayed
        shape = next(n for n in prepared.graph.node if n.output[0] == next(
            n for n in prepared.graph.node if n.name == W8_RESHAPE).input[1])
        assert shape.op_type == "Concat" and _constant_of(prepared, shape.name, 1) == [-1, 64, 16]
    # every node of the original keeps its name and its output names
    names = {(n.name, tuple(n.output)) for n in prepared.graph.node}
    assert all((n.name, tuple(n.output)) in names for n in onnx.load(source).graph.node if n.op_type != "Constant")
    # independently of the report: rows at batch 5 equal the original's rows at batch 16
    golden, sample = proof_pairs(read_contract(source), 16, seed=5)
    np.testing.assert_allclose(_run(prepared, golden[:5], sample[:5]), _run(onnx.load(source), golden, sample)[:5],
                               rtol=RTOL, atol=ATOL)


def test_analysis_finds_the_batch_not_the_value_16(tao_like_models):
    model = onnx.load(tao_like_models["learnable_static16"])
    found = analyse(model, 16, ["input_1", "input_2"], ["output"])
    ops = sorted({u.op_type for u in found.uses})
    assert ops == ["Reshape", "Tile", "Where"]
    w8 = [u for u in found.uses if u.node == W8_RESHAPE]
    assert len(w8) == 1 and w8[0].values == [16, -1, 64, 16] and w8[0].positions == [0]  # the batch, not W/8
    # the Equal next to the rewritten Where keeps its literal: its result does not depend on the batch
    assert not any(u.op_type == "Equal" for u in found.uses)
    # the position encoding's [1, 32, 8, 16] flatten holds 16s that are the hidden size
    assert not any(u.values == [1, 32, 8, 16] for u in found.uses)


def test_a_w8_reshape_rewritten_as_if_it_were_the_batch_is_caught(tao_like_models, tmp_path):
    # what a rewrite by value would do: the decoder's 16 (W/8) made to follow the batch
    source = tao_like_models["learnable_static16"]
    out = str(tmp_path / "dynamic.onnx")
    prepare_model(source, out)
    wrong = onnx.load(out)
    node = next(n for n in wrong.graph.node if n.name == W8_RESHAPE)
    wrong.graph.initializer.append(numpy_helper.from_array(np.array([0, -1, 64], np.int64), "wrong/head"))
    concat = helper.make_node("Concat", ["wrong/head", BATCH_TENSOR], ["wrong/shape"], axis=0, name="wrong/Concat")
    node.input[1] = "wrong/shape"
    nodes = list(wrong.graph.node)
    nodes.insert(next(i for i, n in enumerate(nodes) if n.name == W8_RESHAPE), concat)
    del wrong.graph.node[:]
    wrong.graph.node.extend(nodes)
    contract = read_contract(source)
    # equal at batch 16 (the 16 is right there by coincidence), wrong everywhere else
    assert all(c.ok for c in prove(onnx.load(source), wrong, contract, batches=[16], original_batch=16))
    with pytest.raises(BuildError, match="does not run at batch 1"):
        prove(onnx.load(source), wrong, contract, batches=[1, 3], original_batch=16)


def test_batch_hidden_in_a_per_row_weight_is_refused_by_name(tao_like_models, tmp_path):
    model = onnx.load(tao_like_models["euclidean_static16"])
    last = next(n for n in model.graph.node if "output" in n.output)
    last.output[0] = "distance"
    model.graph.initializer.append(numpy_helper.from_array(np.linspace(1, 2, 16, dtype=np.float32), "row_scale"))
    model.graph.node.append(helper.make_node("Mul", ["distance", "row_scale"], ["output"], name="/row_scale/Mul"))
    path = str(tmp_path / "row_scale.onnx")
    onnx.save(model, path)
    with pytest.raises(BuildError) as info:
        prepare_model(path, str(tmp_path / "never.onnx"))
    text = str(info.value)
    assert "the constant 'row_scale' holds the batch in its shape (axis 0 of [16]), used by Mul '/row_scale/Mul'" in text
    assert not (tmp_path / "never.onnx").exists()


def test_batch_taken_by_an_operator_the_analysis_does_not_follow_is_refused(tao_like_models, tmp_path):
    model = onnx.load(tao_like_models["euclidean_static16"])
    last = next(n for n in model.graph.node if "output" in n.output)
    last.output[0] = "distance"
    model.graph.node.append(helper.make_node("Einsum", ["distance"], ["output"], name="/einsum", equation="b->b"))
    path = str(tmp_path / "einsum.onnx")
    onnx.save(model, path)
    with pytest.raises(BuildError, match="the analysis does not follow the batch through Einsum .Einsum '/einsum'."):
        prepare_model(path, str(tmp_path / "never.onnx"))


@pytest.mark.parametrize("kind,batch,opset", [("learnable", 1, 17), ("euclidean", 3, 12)])
def test_other_static_batches_too(kind, batch, opset, tmp_path):
    # a static batch of 1 leaves only positions to tell the batch from other size-1 axes
    from changenet_trt.models.tao_like import write_tao_like_model

    source = write_tao_like_model(str(tmp_path / "static.onnx"), kind=kind, batch=batch, opset=opset)
    report = prepare_model(source, str(tmp_path / "dynamic.onnx"))
    assert report.original_batch == batch and all(c.ok for c in report.checks)
    assert sum(c.startswith("Tile input " if opset == 17 else "Unsqueeze input ") for c in report.changes) >= 2
