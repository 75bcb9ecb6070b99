"""The rewrite that makes a static-batch ONNX graph follow the runtime batch.

:func:`make_dynamic_batch` rewrites the uses :func:`~changenet_trt.engine.batch_analysis.analyse`
finds: a Reshape shape element becomes ``0`` (copy the input's dimension, when that dimension is
the batch) or ``-1``; any other batch literal is replaced, in
that use only, by a Concat of the runtime batch (``Shape(sample input)[0]``) and the literal's
other elements. Tensor names are kept (the new tensors get ``_dynamic_batch`` names), unused
constants and stale ``value_info`` are dropped. Where the batch reaches a place no rewrite can
serve (a weight whose shape holds the batch, a reduction or Gather across rows, the batch merged
into another dimension, an operator the analysis does not know), :class:`BuildError` names the
node. The caller then proves the result with ONNX Runtime (:mod:`.prepare`).
"""

from typing import Any, Dict, List, Sequence, Set, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from changenet_trt.engine.batch_analysis import analyse
from changenet_trt.engine.onnx_graph import node_attr
from changenet_trt.errors import BuildError

#: tensors the rewrite adds: the runtime batch as a 1-D int64 [B]
BATCH_TENSOR = "changenet_trt/batch"


def make_dynamic_batch(model: Any, batch: int, image_inputs: Sequence[str],
                       outputs: Sequence[str]) -> Tuple[Any, List[str]]:
    """A copy of ``model`` whose batch-carrying constants follow the runtime batch; ``(model, changes)``.

    The I/O dimensions are left to the caller (:func:`changenet_trt.engine.prepare.make_dynamic`).
    """
    found = analyse(model, batch, image_inputs, outputs)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = list(graph.node)
    by_name = {(n.name or n.output[0]): n for n in nodes}
    front: List[Any] = []
    made: Dict[Tuple[str, Tuple[int, ...]], str] = {}
    changes: List[str] = []
    replaced: Set[str] = set()

    def batch_tensor() -> str:
        if not front:
            front.extend([
                helper.make_node("Shape", [image_inputs[0]], [BATCH_TENSOR + "/shape"], name=BATCH_TENSOR + "/Shape"),
                helper.make_node("Gather", [BATCH_TENSOR + "/shape", BATCH_TENSOR + "/index"], [BATCH_TENSOR],
                                 name=BATCH_TENSOR + "/Gather", axis=0),
            ])
            graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), BATCH_TENSOR + "/index"))
        return BATCH_TENSOR

    for use in found.uses:
        node = by_name[use.node]
        values = np.array(use.values, dtype=np.int64)
        if use.op_type == "Reshape" and use.index == 1 and not node_attr(node, "allowzero", 0):
            new_values = values.copy()
            for p in use.positions:
                # 0 copies the input's dimension (the batch, where the input has it there); -1 infers it
                new_values[p] = 0 if p in use.data_batch_axes else -1
            if (new_values == -1).sum() <= 1:
                key = (use.constant, tuple(new_values.tolist()))
                if key not in made:
                    made[key] = _fresh(graph, use.constant + "_dynamic_batch")
                    graph.initializer.append(numpy_helper.from_array(new_values, made[key]))
                    changes.append("Reshape shape constant '{}' {} -> {}".format(
                        use.constant, values.tolist(), new_values.tolist()))
                node.input[use.index] = made[key]
                replaced.add(use.constant)
                continue
        key = (use.constant, tuple(use.positions))
        if key not in made:
            name = _fresh(graph, use.constant + "_dynamic_batch")
            pieces, start = [], 0
            for p in use.positions + [len(values)]:
                if p > start:
                    literal = _fresh(graph, "{}/part{}".format(name, start))
                    graph.initializer.append(numpy_helper.from_array(values[start:p], literal))
                    pieces.append(literal)
                if p < len(values):
                    pieces.append(batch_tensor())
                start = p + 1
            dtype = _dtype_of(model, use.constant)
            concat_out = name if dtype == TensorProto.INT64 and _rank_of(model, use.constant) == 1 else name + "/int64"
            front.append(helper.make_node("Concat", pieces, [concat_out], name=name + "/Concat", axis=0))
            current = concat_out
            if _rank_of(model, use.constant) == 0:
                scalar = name if dtype == TensorProto.INT64 else name + "/scalar"
                graph.initializer.append(numpy_helper.from_array(np.zeros((0,), np.int64), name + "/scalar_shape"))
                front.append(helper.make_node("Reshape", [current, name + "/scalar_shape"], [scalar],
                                              name=name + "/Reshape"))
                current = scalar
            if dtype != TensorProto.INT64:
                front.append(helper.make_node("Cast", [current], [name], name=name + "/Cast", to=dtype))
            made[key] = name
            changes.append("{} input '{}' {}: the batch at {} now follows the input ('{}')".format(
                use.op_type, use.constant, values.tolist(), use.positions, name))
        node.input[use.index] = made[key]
        replaced.add(use.constant)
    del graph.node[:]
    graph.node.extend(front + nodes)
    _drop_unused(graph, replaced)
    return out, changes


def _fresh(graph: Any, name: str) -> str:
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output} | {
        i.name for i in graph.input}
    if name not in taken:
        return name
    k = 1
    while "{}_{}".format(name, k) in taken:
        k += 1
    return "{}_{}".format(name, k)


def _find_constant(model: Any, name: str) -> Tuple[int, Tuple[int, ...]]:
    for init in model.graph.initializer:
        if init.name == name:
            return init.data_type, tuple(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return attr.t.data_type, tuple(attr.t.dims)
                if attr.name == "value_ints":
                    return 7, (len(attr.ints),)
                if attr.name == "value_int":
                    return 7, ()
    raise BuildError("internal: constant '{}' not found".format(name))


def _dtype_of(model: Any, name: str) -> int:
    return _find_constant(model, name)[0]


def _rank_of(model: Any, name: str) -> int:
    return len(_find_constant(model, name)[1])


def _drop_unused(graph: Any, names: Set[str]) -> None:
    """Remove the initializers and Constant nodes among ``names`` that nothing reads any more."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in list(graph.initializer):
        if init.name in names and init.name not in used:
            graph.initializer.remove(init)
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output and node.output[0] in names and node.output[0] not in used:
            graph.node.remove(node)
