"""prepare: static batch -> dynamic batch on real ONNX files, proven with onnxruntime; refusals."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from changenet_trt.cli import main
from changenet_trt.contract import read_contract
from changenet_trt.engine.prepare import ATOL, RTOL, prepare_model, proof_pairs
from changenet_trt.errors import BuildError, ModelContractError


def _run(path, golden, sample):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_2": golden, "input_1": sample})[0]


@pytest.mark.parametrize(
    "variant", ["learnable_static16", "euclidean_static16", "learnable_static16_opset12"]
)
def test_static_reference_models_become_dynamic_and_equal(variant, reference_models, tmp_path):
    source = reference_models[variant]
    out = str(tmp_path / "dynamic.onnx")
    report = prepare_model(source, out)

    assert report.original_batch == 16 and report.rewritten
    assert read_contract(out).static_batch is None
    # the Reshape that carries the batch was rewritten, as were both inputs and the output
    assert any("Reshape shape constant 'embed.shape' [16, 8192] -> [0, 8192]" in c for c in report.changes)
    assert sum("batch dimension 16 -> 'batch'" in c for c in report.changes) == 3
    # equal to the original at its own batch, right rows at 1, 3, 17 and 32
    assert [c.batch for c in report.checks] == [1, 3, 16, 17, 32] and all(c.ok for c in report.checks)

    # independently of the report: rows at batch 5 equal the original's rows at batch 16
    contract = read_contract(source)
    golden, sample = proof_pairs(contract, 16, seed=7)
    reference = _run(source, golden, sample)
    got = _run(out, golden[:5], sample[:5])
    np.testing.assert_allclose(got, reference[:5], rtol=RTOL, atol=ATOL)


def test_dynamic_model_is_proven_and_written_unchanged(reference_models, tmp_path):
    out = str(tmp_path / "same.onnx")
    report = prepare_model(reference_models["euclidean_rank2"], out)
    assert report.original_batch is None and not report.rewritten and report.changes == []
    assert all(c.ok for c in report.checks)
    assert onnx.load(out).graph == onnx.load(reference_models["euclidean_rank2"]).graph


def _static_model(path, body, batch=16, out_shape=(16, 2)):
    """A tiny two-input model: diff = sample - golden, pooled to [B, 4], then ``body``."""
    nodes = [
        helper.make_node("Sub", ["input_1", "input_2"], ["diff"]),
        helper.make_node("AveragePool", ["diff"], ["pooled"], kernel_shape=[256, 64], strides=[256, 64]),
        helper.make_node("Reshape", ["pooled", "flat.shape"], ["flat"]),
    ]
    inits = [numpy_helper.from_array(np.array([batch, 12], dtype=np.int64), "flat.shape")]
    more_nodes, more_inits = body()
    graph = helper.make_graph(
        nodes + more_nodes,
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, 3, 512, 128]) for n in ("input_1", "input_2")],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape))],
        initializer=inits + more_inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _head(extra_nodes=(), source="flat"):
    def body():
        weight = numpy_helper.from_array(np.linspace(-1, 1, 24, dtype=np.float32).reshape(12, 2), "fc.w")
        return list(extra_nodes) + [helper.make_node("MatMul", [source, "fc.w"], ["output"])], [weight]
    return body


def test_refuses_a_graph_that_mixes_rows_across_the_batch(tmp_path):
    # subtracting the batch mean makes every row depend on the others
    mix = [
        helper.make_node("ReduceMean", ["flat"], ["batch_mean"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["flat", "batch_mean"], ["centered"]),
    ]
    path = _static_model(str(tmp_path / "mix.onnx"), _head(mix, source="centered"))
    out = tmp_path / "never.onnx"
    with pytest.raises(BuildError) as info:
        prepare_model(path, str(out))
    text = str(info.value)
    assert "ReduceMean 'batch_mean' reads the batch but none of its outputs carries it" in text
    assert "mixes rows across the batch" in text
    assert not out.exists()


def test_the_proof_refuses_rows_that_differ(tmp_path, monkeypatch):
    # an analysis that missed the mixing: the proof still catches it
    from changenet_trt.engine import prepare

    mix = [
        helper.make_node("ReduceMean", ["flat"], ["batch_mean"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["flat", "batch_mean"], ["centered"]),
    ]
    path = _static_model(str(tmp_path / "mix.onnx"), _head(mix, source="centered"))
    original = onnx.load(path)

    def blind(proto, batch, contract):
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        for vi in list(model.graph.input) + list(model.graph.output):
            vi.type.tensor_type.shape.dim[0].dim_param = "batch"
        for init in model.graph.initializer:
            if init.name == "flat.shape":
                init.CopyFrom(numpy_helper.from_array(np.array([0, 12], dtype=np.int64), "flat.shape"))
        return model, []

    monkeypatch.setattr(prepare, "make_dynamic", blind)
    with pytest.raises(BuildError) as info:
        prepare_model(original, str(tmp_path / "never.onnx"))
    text = str(info.value)
    assert "mixes rows across the batch" in text and "batch 1" in text and "max |diff|" in text


def test_refuses_when_the_batch_hides_in_a_constant_no_rewrite_reaches(tmp_path):
    # [16,12] -> [4,48] -> [16,12]: the batch is folded into another dimension
    fold = [
        helper.make_node("Reshape", ["flat", "fold.shape"], ["folded"]),
        helper.make_node("Reshape", ["folded", "unfold.shape"], ["unfolded"]),
    ]

    def body():
        nodes, inits = _head(fold, source="unfolded")()
        inits += [numpy_helper.from_array(np.array([4, 48], dtype=np.int64), "fold.shape"),
                  numpy_helper.from_array(np.array([16, 12], dtype=np.int64), "unfold.shape")]
        return nodes, inits

    path = _static_model(str(tmp_path / "fold.onnx"), body)
    with pytest.raises(BuildError) as info:
        prepare_model(path, str(tmp_path / "never.onnx"))
    text = str(info.value)
    assert "Reshape 'folded' reads the batch but none of its outputs carries it" in text
    assert "merges the batch into another dimension" in text


def test_an_expand_shape_that_carries_the_batch_follows_it(tmp_path):
    # a bias broadcast to [16, 12] by Expand: the 16 becomes the runtime batch
    def body():
        nodes = [
            helper.make_node("Expand", ["bias", "bias.shape"], ["bias16"]),
            helper.make_node("Add", ["flat", "bias16"], ["biased"]),
        ]
        head_nodes, inits = _head(source="biased")()
        inits += [numpy_helper.from_array(np.ones((1, 12), dtype=np.float32), "bias"),
                  numpy_helper.from_array(np.array([16, 12], dtype=np.int64), "bias.shape")]
        return nodes + head_nodes, inits

    path = _static_model(str(tmp_path / "expand.onnx"), body)
    report = prepare_model(path, str(tmp_path / "dyn.onnx"))
    assert any(c.startswith("Expand input 'bias.shape' [16, 12]: the batch at [0] now follows the input")
               for c in report.changes)
    assert all(c.ok for c in report.checks)


def test_refusal_names_a_weight_whose_shape_holds_the_batch(tmp_path):
    # a per-row bias [16, 12] cannot follow another batch
    def body():
        head_nodes, inits = _head(source="biased")()
        inits.append(numpy_helper.from_array(np.ones((16, 12), dtype=np.float32), "row_bias"))
        return [helper.make_node("Add", ["flat", "row_bias"], ["biased"], name="add_row_bias")] + head_nodes, inits

    path = _static_model(str(tmp_path / "rowbias.onnx"), body)
    with pytest.raises(BuildError) as info:
        prepare_model(path, str(tmp_path / "never.onnx"))
    text = str(info.value)
    assert text.startswith("cannot make a dynamic batch for {}".format(path))
    assert "the constant 'row_bias' holds the batch in its shape (axis 0 of [16, 12]), used by Add 'add_row_bias'" in text


def test_reshape_with_an_inferred_dim_and_a_constant_node(tmp_path):
    # shape [16, -1] arrives through a Constant node: the batch becomes 0 ("copy the input dim")
    def body():
        nodes = [
            helper.make_node("Constant", [], ["again.shape"], value=numpy_helper.from_array(
                np.array([16, -1], dtype=np.int64), "again.value")),
            helper.make_node("Reshape", ["flat", "again.shape"], ["again"]),
        ]
        head_nodes, inits = _head(source="again")()
        return nodes + head_nodes, inits

    path = _static_model(str(tmp_path / "const.onnx"), body)
    report = prepare_model(path, str(tmp_path / "dyn.onnx"))
    assert any("'again.shape' [16, -1] -> [0, -1]" in c for c in report.changes)
    assert all(c.ok for c in report.checks)


def test_not_a_changenet_model_is_refused(tmp_path):
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]))
    path = str(tmp_path / "relu.onnx")
    onnx.save(model, path)
    with pytest.raises(ModelContractError):
        prepare_model(path, str(tmp_path / "out.onnx"))


def test_cli_prepare_prints_the_proof_and_refuses_in_one_line(reference_models, tmp_path, capsys):
    out = tmp_path / "p.onnx"
    assert main(["prepare", reference_models["learnable_static16"], "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "static batch 16 rewritten" in printed and "proof at batch 32" in printed and "tolerance" in printed
    assert out.exists()

    mix = [helper.make_node("ReduceMean", ["flat"], ["m"], axes=[0], keepdims=1),
           helper.make_node("Sub", ["flat", "m"], ["c"])]
    bad = _static_model(str(tmp_path / "mix.onnx"), _head(mix, source="c"))
    assert main(["prepare", bad, "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot make a dynamic batch") and err.count("\n") == 1
    assert "Traceback" not in err


def test_constant_of_shape_slice_and_concat_of_shapes_follow_the_batch(tmp_path):
    # ConstantOfShape([16, 12]) as a per-row offset, Range(0, 16) as a column, Slice ends [16] on
    # the batch axis, a Reshape shape made by Concat([16], [12]): the batch in four places
    def body():
        nodes = [
            helper.make_node("ConstantOfShape", ["offset.shape"], ["offset"], name="offset",
                             value=numpy_helper.from_array(np.array([0.25], dtype=np.float32))),
            helper.make_node("Add", ["flat", "offset"], ["offset_rows"]),
            # Range(0, 16, 1) as a [16, 1] column (times zero): its length is the batch
            helper.make_node("Range", ["range.start", "range.limit", "range.delta"], ["row_ids"], name="row_ids"),
            helper.make_node("Cast", ["row_ids"], ["row_ids_float"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["row_ids_float", "one"], ["row_column"]),
            helper.make_node("Mul", ["row_column", "zero_float"], ["zero_column"]),
            helper.make_node("Add", ["offset_rows", "zero_column"], ["shifted"]),
            helper.make_node("Slice", ["shifted", "zero", "rows.end", "zero"], ["sliced"], name="rows"),
            helper.make_node("Concat", ["batch.part", "feature.part"], ["again.shape"], axis=0, name="again.shape"),
            helper.make_node("Reshape", ["sliced", "again.shape"], ["again"]),
        ]
        head_nodes, inits = _head(source="again")()
        inits += [numpy_helper.from_array(np.array([16, 12], dtype=np.int64), "offset.shape"),
                  numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
                  numpy_helper.from_array(np.array([16], dtype=np.int64), "rows.end"),
                  numpy_helper.from_array(np.array([16], dtype=np.int64), "batch.part"),
                  numpy_helper.from_array(np.array([12], dtype=np.int64), "feature.part"),
                  numpy_helper.from_array(np.array(0, dtype=np.int64), "range.start"),
                  numpy_helper.from_array(np.array(16, dtype=np.int64), "range.limit"),
                  numpy_helper.from_array(np.array(1, dtype=np.int64), "range.delta"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
                  numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero_float")]
        return nodes + head_nodes, inits

    path = _static_model(str(tmp_path / "shapes.onnx"), body)
    report = prepare_model(path, str(tmp_path / "dyn.onnx"))
    assert all(c.ok for c in report.checks)
    for text in ("ConstantOfShape input 'offset.shape' [16, 12]: the batch at [0]",
                 "Slice input 'rows.end' [16]: the batch at [0]",
                 "Concat input 'batch.part' [16]: the batch at [0]",
                 "Range input 'range.limit' [16]: the batch at [0]"):
        assert any(c.startswith(text) for c in report.changes), text
    assert not any("'feature.part'" in c or "'zero'" in c or "'range.start'" in c for c in report.changes)
