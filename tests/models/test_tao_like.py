"""The TAO-export-like graph: TAO 7.3.0's node patterns are there, it runs, its scores separate."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from changenet_trt.cli import main
from changenet_trt.contract import read_contract
from changenet_trt.models.tao_like import LAYER_SCALE, build_tao_like_model


def _constants(model):
    """Name -> ndarray of every initializer and Constant node output."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _shape_values(model):
    """Name -> ndarray of constants and of the Unsqueeze/Concat chains an unfolded export builds
    shapes with (TAO 5.x: Concat(Unsqueeze(Constant 16), Constant [..]))."""
    values = _constants(model)
    for node in model.graph.node:
        if node.op_type == "Unsqueeze" and node.input[0] in values and values[node.input[0]].ndim == 0:
            values[node.output[0]] = values[node.input[0]].reshape(1)
        elif node.op_type == "Concat" and all(name in values for name in node.input):
            values[node.output[0]] = np.concatenate([values[name] for name in node.input])
    return values


def _consumers(model, op_type):
    return [node for node in model.graph.node if node.op_type == op_type]


def _run(model, sample, golden):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input_1": sample, "input_2": golden})[0]


@pytest.mark.parametrize("kind", ["learnable", "euclidean"])
@pytest.mark.parametrize("opset", [12, 17])
def test_static_export_carries_the_batch_where_tao_does(kind, opset):
    model = build_tao_like_model(kind, batch=16, opset=opset)
    consts = _shape_values(model)
    contract = read_contract(model)
    assert contract.static_batch == 16 and contract.output_kind == kind
    # pos.repeat(B, 1, 1, 1) -> Tile [16,1,1,1], once per branch
    tiles = _consumers(model, "Tile")
    assert [consts[n.input[1]].tolist() for n in tiles] == [[16, 1, 1, 1]] * 2
    # cls_token.expand(B, -1, -1) -> Where(Equal(size, -1), 1, size) -> Expand, once per branch
    wheres = _consumers(model, "Where")
    assert len(wheres) == 2 and all(consts[w.input[2]].tolist() == [16, -1, -1] for w in wheres)
    assert all(w.output[0] in [e.input[1] for e in _consumers(model, "Expand")] for w in wheres)
    # the batch baked into Reshape shapes
    reshape_shapes = [consts[n.input[1]].tolist() for n in _consumers(model, "Reshape")]
    assert [16, 256, 2, 8] in reshape_shapes
    # var_mean's unbiased factor from the shape: Shape -> Gather -> ReduceProd -> Cast(FLOAT)
    producers = {out: node for node in model.graph.node for out in node.output}
    casts = [n for n in _consumers(model, "Cast") if producers[n.input[0]].op_type == "ReduceProd"]
    assert len(casts) == 6 and all(n.attribute[0].i == onnx.TensorProto.FLOAT for n in casts)
    chain = producers[producers[casts[0].input[0]].input[0]]
    assert chain.op_type == "Gather" and producers[chain.input[0]].op_type == "Shape"
    ops = {n.op_type for n in model.graph.node}
    assert {"Erf", "Sin", "Cos", "Softmax"} <= ops
    assert ("LayerNormalization" in ops) == (opset == 17)
    # TAO 5.x (opset 12, no folding): shape constants stay Constant nodes, expand keeps ConstantOfShape
    assert ("ConstantOfShape" in ops) == (opset == 12)
    scalar_batch = [n for n in model.graph.node if n.op_type == "Constant" and not n.attribute[0].t.dims
                    and numpy_helper.to_array(n.attribute[0].t).tolist() == 16]
    assert bool(scalar_batch) == (opset == 12)  # the traced int B, unsqueezed into shapes
    gammas = [v for k, v in consts.items() if k.endswith(".gamma")]
    assert gammas and all(np.allclose(g, LAYER_SCALE) for g in gammas)
    if kind == "learnable":
        assert [16, -1, 64, 16] in reshape_shapes  # reshape(B, -1, H/8, W/8): the last 16 = W/8
        assert "Resize" in ops
        assert list(contract.output_shape) == [None, 2]
    else:
        assert list(contract.output_shape) == [None]


@pytest.mark.parametrize("kind", ["learnable", "euclidean"])
def test_dynamic_export_equals_static_row_by_row(kind):
    static = build_tao_like_model(kind, batch=16)
    dynamic = build_tao_like_model(kind, batch=None)
    assert read_contract(dynamic).static_batch is None
    ops = {n.op_type for n in dynamic.graph.node}
    assert {"Shape", "Gather", "Concat", "Tile", "Expand"} <= ops
    rng = np.random.default_rng(1)
    golden = rng.normal(size=(16, 3, 512, 128)).astype(np.float32)
    sample = golden + np.linspace(0, 1, 16, dtype=np.float32).reshape(16, 1, 1, 1) * rng.normal(
        size=golden.shape).astype(np.float32)
    reference = _run(static, sample, golden)
    np.testing.assert_allclose(_run(dynamic, sample, golden), reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_run(dynamic, sample[5:8], golden[5:8]), reference[5:8], rtol=1e-5, atol=1e-6)
    # identical images: no change at all
    same = _run(dynamic, golden[:2], golden[:2])
    if kind == "euclidean":
        assert np.all(same < 1e-4)
    else:
        assert np.all(same[:, 0] > same[:, 1])


def test_deterministic_and_small():
    a = build_tao_like_model("learnable").SerializeToString()
    assert a == build_tao_like_model("learnable").SerializeToString()
    assert a != build_tao_like_model("learnable", seed=1).SerializeToString()
    assert len(a) < 2_000_000
    with pytest.raises(ValueError, match="opset"):
        build_tao_like_model(opset=13)
    with pytest.raises(ValueError, match="kind"):
        build_tao_like_model("softmax")


@pytest.mark.parametrize("kind", ["learnable", "euclidean"])
def test_scores_separate_the_synthetic_pairs(tmp_path_factory, tao_like_models, kind):
    from changenet_trt.data import synth
    from changenet_trt.evaluation.evaluate import evaluate

    data = synth.synthesize(str(tmp_path_factory.mktemp("tao_like_pairs")), pairs=60, defect_rate=0.5, seed=11)
    summary = evaluate(tao_like_models[kind + "_dynamic"], data.csv_path, out_dir=None, progress=False).summary
    assert summary["auc"] >= 0.8


def test_reference_model_command_writes_it(tmp_path, capsys):
    out = str(tmp_path / "tao.onnx")
    assert main(["reference-model", out, "--tao-like", "--kind", "euclidean", "--batch", "16", "--opset", "12"]) == 0
    assert "TAO-export-like" in capsys.readouterr().out
    contract = read_contract(out)
    assert contract.static_batch == 16 and contract.output_kind == "euclidean"
    assert main(["reference-model", str(tmp_path / "x.onnx"), "--tao-like", "--realistic"]) == 2
    assert "choose one" in capsys.readouterr().err
