"""What TAO 7.3.0's own export wrote (read from the files and the export's manifest): the model
the card describes, exported as TAO exports it, matching torch. These are the patterns the fast
tier's TAO-like generator stands in for."""

import collections

import onnx
import pytest

pytestmark = pytest.mark.tao

NAMES = ["learnable_b16", "learnable_dynamic", "euclidean_b16", "euclidean_dynamic", "learnable_opset12_b16"]


def _ops(path):
    graph = onnx.load(path, load_external_data=False).graph
    return graph, collections.Counter(node.op_type for node in graph.node)


def _batch_dim(value_info):
    dim = value_info.type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else dim.dim_param


@pytest.mark.parametrize("name", NAMES)
def test_the_export_is_the_cards_model_matching_torch(tao_manifest, tao_model, name):
    path = tao_model(name)
    entry = tao_manifest[name]
    # FAN-hybrid-small ChangeNet-Classification: learnable 64.8 M parameters, euclidean 76.3 M.
    expected = {"learnable": 64.8e6, "euclidean": 76.3e6}[entry["architecture"]]
    assert abs(entry["parameters"] - expected) < 0.05e6, entry["parameters"]
    assert entry["ort_max_abs_diff"] <= 1e-5, entry  # ONNX Runtime on the file vs torch on the model
    assert entry["peak_rss_mb"] < 8000, entry
    graph, ops = _ops(path)
    assert [i.name for i in graph.input] == ["input_1", "input_2"] and [o.name for o in graph.output] == ["output"]
    opset = next(o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
    assert opset == entry["opset"]
    for value in list(graph.input) + list(graph.output):
        assert _batch_dim(value) == (16 if entry["batch"] == 16 else "batch"), (value.name, _batch_dim(value))
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 512, 128]
    # FAN's ops: Erf GELU, Softmax attention, in-graph Sin/Cos position encoding, Resize in the decoder.
    assert ops["Erf"] and ops["Softmax"] and ops["Sin"] and ops["Cos"]
    # Opset 17 exports LayerNorm as LayerNormalization; TAO 5.x's opset 12 cannot (TensorRT 8.5's parser
    # has no LayerNormalization either: that export is the one JetPack 5 users have).
    assert bool(ops["LayerNormalization"]) == (opset >= 17)
    # var_mean's N/(N-1) correction of the channel-first LayerNorm: Shape -> Gather -> ReduceProd -> Cast.
    assert ops["ReduceProd"] >= 2


@pytest.mark.parametrize("name", ["learnable_b16", "euclidean_b16"])
def test_the_static_export_bakes_the_batch_into_tile_and_expand(tao_model, name):
    """TAO's default export (batch 16): `pos.repeat(B,1,1,1)` -> a Tile whose repeats hold 16, and
    `cls_token.expand(B,-1,-1)` -> an Expand whose shape comes through Equal/Where from [16,-1,-1]."""
    from onnx import numpy_helper

    graph, ops = _ops(tao_model(name))
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    tile_repeats = [constants.get(n.input[1]) for n in graph.node if n.op_type == "Tile"]
    assert any(r is not None and r.size and r.flat[0] == 16 for r in tile_repeats), tile_repeats
    assert ops["Expand"] and ops["Where"] and ops["Equal"]
    assert any(v.ndim == 1 and v.size == 3 and v[0] == 16 and list(v[1:]) == [-1, -1] for v in constants.values())
