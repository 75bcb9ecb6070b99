import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from changenet_trt.contract import ContractNames, TensorInfo, make_contract, read_contract, score
from changenet_trt.errors import InputError, ModelContractError
from changenet_trt.models.reference import build_reference_model


@pytest.mark.parametrize(
    "variant, kind, static, opset, out_shape",
    [
        ("learnable_dynamic", "learnable", None, 17, [None, 2]),
        ("learnable_static16", "learnable", 16, 17, [None, 2]),
        ("euclidean_dynamic", "euclidean", None, 17, [None]),
        ("euclidean_static16", "euclidean", 16, 17, [None]),
        ("euclidean_rank2", "euclidean", None, 17, [None, 1]),
        ("learnable_opset12", "learnable", None, 12, [None, 2]),
        ("learnable_static16_opset12", "learnable", 16, 12, [None, 2]),
    ],
)
def test_reference_variants(reference_models, variant, kind, static, opset, out_shape):
    c = read_contract(reference_models[variant])
    assert c.sample_input == "input_1" and c.golden_input == "input_2" and c.output == "output"
    assert c.output_kind == kind
    assert c.static_batch == static
    assert c.dynamic_batch == (static is None)
    assert c.opset == opset
    assert c.input_shape == (3, 512, 128)
    assert c.input_dtype == "float32"
    assert list(c.output_shape) == out_shape
    assert c.preprocess == "tao"
    assert c.recommended_cutoff is not None
    d = c.to_dict()
    assert d["static_batch"] == static and d["input_shape"] == [3, 512, 128]


def _model(inputs, outputs, nodes=None, opset=17):
    """A tiny graph with the given (name, elem_type, shape) inputs/outputs; outputs come from Identity of input 0."""
    vi_in = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    vi_out = [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs]
    if nodes is None:
        nodes = [helper.make_node("Identity", [inputs[0][0]], [o[0]]) for o in outputs]
    graph = helper.make_graph(nodes, "g", vi_in, vi_out)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


F = TensorProto.FLOAT
IMG = ["B", 3, 512, 128]


def test_renamed_inputs_are_refused_with_the_names_found_then_accepted_with_overrides():
    m = _model([("golden", F, IMG), ("test", F, IMG)], [("score", F, ["B", 2])])
    with pytest.raises(ModelContractError) as err:
        read_contract(m)
    text = str(err.value)
    assert "input_1" in text and "'golden'" in text and "'test'" in text and "--sample-input" in text
    c = read_contract(m, ContractNames(sample_input="test", golden_input="golden"))
    assert (c.sample_input, c.golden_input, c.output, c.output_kind) == ("test", "golden", "score", "learnable")


@pytest.mark.parametrize(
    "inputs, outputs, fragment",
    [
        ([("input_1", F, [1, 3, 512]), ("input_2", F, [1, 3, 512])], [("output", F, [1, 2])], "rank 4"),
        ([("input_1", F, ["B", 1, 512, 128]), ("input_2", F, ["B", 1, 512, 128])], [("output", F, ["B", 2])], "3 channels"),
        ([("input_1", F, ["B", 3, "h", 128]), ("input_2", F, ["B", 3, "h", 128])], [("output", F, ["B", 2])], "static height"),
        ([("input_1", TensorProto.INT64, IMG), ("input_2", TensorProto.INT64, IMG)], [("output", F, ["B", 2])], "element type"),
        ([("input_1", F, IMG), ("input_2", F, ["B", 3, 256, 256])], [("output", F, ["B", 2])], "same shape"),
        ([("input_1", F, IMG), ("input_2", F, IMG)], [("output", F, ["B", 3])], "output kind"),
        ([("input_1", F, [16, 3, 512, 128]), ("input_2", F, [16, 3, 512, 128])], [("output", F, [8, 2])], "batch does not match"),
        ([("input_1", F, IMG), ("input_2", F, IMG), ("input_3", F, IMG)], [("output", F, ["B", 2])], "other than"),
        ([("input_1", F, IMG), ("input_2", F, IMG)], [("a", F, ["B", 2]), ("b", F, ["B", 2])], "no output tensor named 'output'"),
    ],
)
def test_malformed_models_are_refused_with_expected_and_found(inputs, outputs, fragment):
    with pytest.raises(ModelContractError) as err:
        read_contract(_model(inputs, outputs))
    assert fragment in str(err.value)
    assert "expected" in str(err.value) or "found" in str(err.value)


def test_output_kind_override():
    m = _model([("input_1", F, IMG), ("input_2", F, IMG)], [("output", F, ["B", 2])])
    with pytest.raises(ModelContractError, match="cannot be read as 'euclidean'"):
        read_contract(m, ContractNames(output_kind="euclidean"))
    with pytest.raises(ModelContractError, match="unknown output kind"):
        read_contract(m, ContractNames(output_kind="cosine"))
    # An output of unknown rank can be declared by the user.
    m2 = _model([("input_1", F, IMG), ("input_2", F, IMG)], [("output", F, None)])
    with pytest.raises(ModelContractError, match="cannot tell the output kind"):
        read_contract(m2)
    assert read_contract(m2, ContractNames(output_kind="learnable")).output_kind == "learnable"


def test_multiple_outputs_pick_by_name():
    m = _model([("input_1", F, IMG), ("input_2", F, IMG)], [("output", F, ["B"]), ("embedding", F, ["B", 64])])
    assert read_contract(m).output == "output"
    with pytest.raises(ModelContractError, match="no output tensor named 'nope'"):
        read_contract(m, ContractNames(output="nope"))


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not protobuf \x00\xff" * 10)
    with pytest.raises(ModelContractError, match="cannot read .* as an ONNX model"):
        read_contract(str(bad))
    with pytest.raises(ModelContractError, match="not found"):
        read_contract(str(tmp_path / "missing.onnx"))


def test_float16_inputs_are_accepted():
    m = _model([("input_1", TensorProto.FLOAT16, IMG), ("input_2", TensorProto.FLOAT16, IMG)], [("output", TensorProto.FLOAT16, ["B", 2])])
    assert read_contract(m).input_dtype == "float16"


def test_make_contract_from_engine_style_shapes():
    inputs = [TensorInfo("input_1", (None, 3, 512, 128), "float16"), TensorInfo("input_2", (None, 3, 512, 128), "float16")]
    c = make_contract(inputs, [TensorInfo("output", (None, 1), "float32")])
    assert c.output_kind == "euclidean" and c.static_batch is None and c.input_dtype == "float16"


def test_score_learnable_is_softmax_column_1_and_never_overflows():
    logits = np.array([[0.0, 0.0], [1.0, 3.0], [5.0, -2.0], [-1000.0, 1000.0], [1000.0, -1000.0]], np.float32)
    expected = np.exp(logits[:3, 1]) / np.exp(logits[:3]).sum(axis=1)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = score(logits, "learnable")
    assert s.dtype == np.float32 and s.shape == (5,)
    np.testing.assert_allclose(s[:3], expected, rtol=1e-6)
    assert s[3] == 1.0 and s[4] == 0.0


def test_score_euclidean_accepts_b_and_b1():
    np.testing.assert_array_equal(score(np.array([0.5, 2.0]), "euclidean"), [0.5, 2.0])
    np.testing.assert_array_equal(score(np.array([[0.5], [2.0]]), "euclidean"), [0.5, 2.0])
    with pytest.raises(InputError):
        score(np.zeros((2, 2)), "euclidean")
    with pytest.raises(InputError):
        score(np.zeros((2,)), "learnable")


def test_reference_model_is_small_and_valid():
    m = build_reference_model()
    assert m.ByteSize() < 4 * 1024 * 1024
    onnx.checker.check_model(m)


def test_contract_names_drop_nones_and_are_frozen():
    import dataclasses

    names = ContractNames.of({"sample_input": "test", "golden_input": None}, output=None, output_kind="learnable")
    assert names == ContractNames(sample_input="test", output_kind="learnable")
    assert names.as_dict() == {"sample_input": "test", "output_kind": "learnable"}
    assert names and not names.is_empty
    empty = ContractNames.of(None)
    assert not empty and empty.is_empty and empty.as_dict() == {}
    assert ContractNames.of(names) == names  # a ContractNames passes through
    assert ContractNames.of(names, sample_input="other").sample_input == "other"
    assert ContractNames.of(names, sample_input=None) == names  # a None keyword keeps the value
    assert names.or_else(ContractNames(sample_input="x", output="y")) == ContractNames("test", None, "y", "learnable")
    with pytest.raises(dataclasses.FrozenInstanceError):
        names.output = "logits"  # type: ignore[misc]
    with pytest.raises(InputError, match="unknown contract name key") as err:
        ContractNames.of({"sample": "test"})
    assert "sample_input" in str(err.value) and "sample" in str(err.value)
    with pytest.raises(InputError, match="must be text"):
        ContractNames.of(output=3)
    with pytest.raises(InputError, match="must be a ContractNames or a dict"):
        ContractNames.of(["input_1"])


def test_contract_names_read_back_what_a_contract_resolved(reference_models):
    contract = read_contract(reference_models["learnable_dynamic"])
    assert contract.names == ContractNames("input_1", "input_2", "output", "learnable")
    assert read_contract(reference_models["learnable_dynamic"], contract.names) == contract
