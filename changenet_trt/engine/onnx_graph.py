"""Reading an ONNX graph: node attributes, small constant values and static shapes.

Shapes come from ONNX's own shape inference, run on a copy without the large weights.
"""

from typing import Any, Dict, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from changenet_trt.errors import BuildError


def node_attr(node: Any, name: str, default: Any = None) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def constant_arrays(graph: Any, limit: Optional[int]) -> Dict[str, np.ndarray]:
    """Initializers and Constant outputs (those of at most ``limit`` elements, or all when None)."""
    out: Dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if limit is None or int(np.prod(init.dims)) <= limit:
            out[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value":
                value = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_int", "value_ints"):
                value = np.array(node_attr(node, attr.name), dtype=np.int64)
            elif attr.name in ("value_float", "value_floats"):
                value = np.array(node_attr(node, attr.name), dtype=np.float32)
            else:
                continue
            if limit is None or value.size <= limit:
                out[node.output[0]] = value
    return out


def static_shapes(model: Any, known: Dict[str, np.ndarray], small_elements: int) -> Dict[str, Tuple[int, ...]]:
    """Every tensor's static shape from ONNX shape inference, run on a copy whose large weights
    (over ``small_elements`` elements) are typed graph inputs (only their
    shapes matter), so a 300 MB model is not copied. Nodes
    whose small outputs are ``known`` values become Constants there (ONNX's data propagation
    stops at Where, so an Expand behind Equal/Where would have no shape otherwise)."""
    graph = model.graph
    shapes: Dict[str, Tuple[int, ...]] = {}
    light_nodes = []
    for node in graph.node:
        if node.op_type != "Constant" and node.output and all(o in known for o in node.output):
            light_nodes += [onnx.helper.make_node("Constant", [], [o], value=numpy_helper.from_array(known[o], o))
                            for o in node.output]
        else:
            light_nodes.append(node)
    inputs = list(graph.input)
    small = []
    for init in graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
        if int(np.prod(init.dims)) <= small_elements:
            small.append(init)
        else:
            inputs.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light_graph = onnx.helper.make_graph(light_nodes, graph.name, inputs, graph.output, initializer=small)
    light = onnx.helper.make_model(light_graph, opset_imports=model.opset_import)
    light.ir_version = model.ir_version
    try:
        inferred = shape_inference.infer_shapes(light, data_prop=True)
    except Exception as exc:  # onnx raises its own error types
        raise BuildError("ONNX shape inference fails on the model", found=str(exc).splitlines()[0]) from None
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes
