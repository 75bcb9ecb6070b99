"""Which values of a static-batch ONNX graph carry the batch (the rewrite: :mod:`.dynamic_batch`).

A static export bakes the batch into literals: Reshape shapes (``[16, 256, 8, 48]``), Tile
repeats (``[16, 1, 1, 1]`` from ``pos.repeat(B, 1, 1, 1)``), Expand shapes behind Equal/Where
(``[16, -1, -1]`` from ``cls_token.expand(B, -1, -1)``), ConstantOfShape, Range and Slice
bounds, Concats of shapes. The same graph holds other 16s that are not the batch (TAO's
learnable decoder reshapes to ``[16, -1, 64, 16]``: the first 16 is the batch, the last W/8), so the value says nothing.

:func:`analyse` finds the batch by propagation instead: every dimension of every tensor, and
every element of every small integer tensor (shapes and their arithmetic), is a node of a
union-find; each operator joins what its semantics say are the same quantity (Transpose joins
permuted axes, a broadcasting Add joins aligned axes of equal size, Reshape joins an output
axis with its shape element and with the input axis it keeps, Shape joins its elements with the
input's axes, Gather/Concat/Slice/Unsqueeze/Where move shape elements, Tile/Expand/
ConstantOfShape/Range join their output axes with the shape elements that make them). The class
of the inputs' first dimension (joined with the output's) is the batch. A literal element in
that class is a batch constant and gets rewritten; one use of a constant is tracked apart from
another, so a constant shared by a batch use and a W/8 use is split, not overwritten.

Shapes come from ONNX's own shape inference (on a copy without the large weights) and small
integer values from ONNX's reference evaluator. onnx-graphsurgeon's constant folding would turn
Equal/Where over the batch into a plain constant, but it cannot tell which constants carry the
batch, so the analysis is here and the edits are a few node insertions in place.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
from onnx import TypeProto, helper
from onnx.reference import ReferenceEvaluator

from changenet_trt.engine.onnx_graph import constant_arrays, node_attr, static_shapes
from changenet_trt.errors import BuildError

#: small tensors whose values the analysis evaluates (shape arithmetic), at most this many elements
MAX_VALUE_ELEMENTS = 64

_UNARY = frozenset((
    "Relu", "Sigmoid", "Tanh", "Erf", "Sin", "Cos", "Tan", "Sqrt", "Reciprocal", "Exp", "Log", "Neg", "Abs",
    "Cast", "CastLike", "Identity", "Softmax", "LogSoftmax", "Dropout", "Clip", "LeakyRelu", "Elu", "Selu", "Gelu",
    "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Mish", "Not", "Floor", "Ceil", "Round", "Sign", "IsNaN",
    "IsInf", "CumSum", "LRN", "LayerNormalization", "BatchNormalization", "InstanceNormalization",
    "GroupNormalization", "QuantizeLinear", "DequantizeLinear", "Hardmax", "Asin", "Acos", "Atan", "Sinh", "Cosh",
    "Shrink", "ThresholdedRelu", "Celu", "Swish", "Trilu",
))
_VALUE_PRESERVING = frozenset(("Cast", "CastLike", "Identity", "Floor", "Ceil", "Round", "Abs"))
_BROADCAST = frozenset((
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Mod", "PRelu", "And", "Or", "Xor",
    "BitShift", "Where",
))
_COMPARE = frozenset(("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"))
_SPATIAL = frozenset((
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
    "GlobalLpPool", "DepthToSpace", "SpaceToDepth", "ConvInteger", "QLinearConv", "MaxRoiPool",
))
_REDUCE = frozenset((
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin",
))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: Dict[Any, Any] = {}

    def find(self, key: Any) -> Any:
        parent = self.parent.setdefault(key, key)
        if parent == key:
            return key
        root = self.find(parent)
        self.parent[key] = root
        return root

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


@dataclass
class BatchUse:
    """One use of a constant that carries the batch: ``node`` reads ``constant`` (``values``) as
    its input ``index``; the elements at ``positions`` are the batch."""

    node: str
    op_type: str
    index: int
    constant: str
    values: List[int]
    positions: List[int]
    #: Reshape only: the axes of its data input that are the batch (a 0 there copies it)
    data_batch_axes: List[int] = field(default_factory=list)


@dataclass
class BatchAnalysis:
    """What carries the batch in a static graph (see :func:`analyse`)."""

    batch: int
    uses: List[BatchUse] = field(default_factory=list)


def _empty_type() -> Any:
    """An empty TypeProto: an output whose type the evaluator finds out."""
    return TypeProto()


class _Analyser:
    def __init__(self, model: Any, batch: int, image_inputs: Sequence[str], outputs: Sequence[str]) -> None:
        self.model = model
        self.graph = model.graph
        self.batch = batch
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.constants = constant_arrays(self.graph, MAX_VALUE_ELEMENTS)
        self.constant_names = {init.name for init in self.graph.initializer} | {
            n.output[0] for n in self.graph.node if n.op_type == "Constant" and n.output}
        self.values: Dict[str, np.ndarray] = dict(self.constants)
        # shapes and small values feed each other: infer, evaluate, infer again until both settle
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        for _ in range(8):
            self.shapes = static_shapes(model, {k: v for k, v in self.values.items() if k not in self.constants},
                                        MAX_VALUE_ELEMENTS)
            before = len(self.values)
            for node in self.graph.node:
                if not all(o in self.values for o in node.output):
                    self.evaluate(node)
            if len(self.values) == before:
                break
        self.uf = _UnionFind()
        self.unknown: List[Tuple[Any, str]] = []  # (node, why)
        self.image_inputs = list(image_inputs)
        self.outputs = list(outputs)

    # -- keys -----------------------------------------------------------------------------------
    def dim(self, name: str, axis: int) -> Any:
        return ("d", name, axis)

    def elem(self, node_index: int, input_index: int, name: str, k: int) -> Any:
        """An element of a value: per use for a constant (its uses are rewritten one by one)."""
        if name in self.constant_names:
            return ("u", node_index, input_index, k)
        return ("v", name, k)

    def rank(self, name: str) -> Optional[int]:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def size(self, name: str, axis: int) -> Optional[int]:
        shape = self.shapes.get(name)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        return shape[axis]

    def join_dims(self, a: str, i: int, b: str, j: int) -> None:
        sa, sb = self.size(a, i), self.size(b, j)
        if sa is not None and sa == sb:
            self.uf.union(self.dim(a, i % len(self.shapes[a])), self.dim(b, j % len(self.shapes[b])))

    def value(self, name: str) -> Optional[np.ndarray]:
        return self.values.get(name) if name else None

    # -- values: ONNX's reference evaluator on small integer arithmetic --------------------------
    def evaluate(self, node: Any) -> None:
        if node.op_type == "Shape":
            shape = self.shapes.get(node.input[0])
            if shape is not None:
                start, end = node_attr(node, "start", 0), node_attr(node, "end", None)
                self.values[node.output[0]] = np.array(shape[start:end], dtype=np.int64)
            return
        if node.op_type == "Constant" or not node.input:
            return
        if not all(name == "" or name in self.values for name in node.input):
            return
        if any(self.size_of(out) is None or self.size_of(out) > MAX_VALUE_ELEMENTS for out in node.output):
            return
        feeds = {name: self.values[name] for name in node.input if name}
        # a one-node model, so that the node runs in the graph's opset (Unsqueeze's axes: 12 vs 13)
        graph = helper.make_graph(
            [node], "node",
            [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), None)
             for name, value in feeds.items()],
            [helper.make_value_info(name, _empty_type()) for name in node.output])
        try:
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
            results = ReferenceEvaluator(model).run(None, feeds)
        except Exception:  # an op the reference evaluator cannot run: its value stays unknown
            return
        for name, value in zip(node.output, results):
            self.values[name] = np.asarray(value)

    def size_of(self, name: str) -> Optional[int]:
        shape = self.shapes.get(name)
        return None if shape is None else int(np.prod(shape))

    # -- one operator ----------------------------------------------------------------------------
    def visit(self, index: int, node: Any) -> None:
        op = node.op_type
        ins, outs = list(node.input), list(node.output)
        out = outs[0] if outs else ""
        if op == "Constant":
            return
        if op in _UNARY:
            self.join_all(ins[0], out)
            if op in _VALUE_PRESERVING:
                self.join_values(index, 0, ins[0], out)
        elif op in _BROADCAST or op in _COMPARE:
            self.broadcast([n for n in ins if n], out)
            if op == "Where":
                self.where_values(index, node)
            elif op in ("Mul", "Div", "Add", "Sub"):
                self.identity_arithmetic(index, node)
        elif op in _SPATIAL:
            self.join_dims(ins[0], 0, out, 0)
        elif op == "Resize" or op == "Upsample":
            self.resize(index, node)
        elif op == "Transpose":
            rank = self.rank(ins[0])
            if rank is not None:
                perm = list(node_attr(node, "perm", list(range(rank))[::-1]))
                for i, p in enumerate(perm):
                    self.join_dims(ins[0], p, out, i)
        elif op == "MatMul" or op == "MatMulInteger":
            self.matmul(ins[0], ins[1], out)
        elif op == "Gemm":
            self.join_dims(ins[0], 1 if node_attr(node, "transA", 0) else 0, out, 0)
            if len(ins) > 2 and ins[2]:
                self.broadcast([ins[2]], out)
        elif op in _REDUCE:
            self.reduce(index, node)
        elif op == "Concat":
            self.concat(index, node)
        elif op == "Split":
            self.split(node)
        elif op == "Slice":
            self.slice(index, node)
        elif op == "Gather":
            self.gather(index, node)
        elif op in ("Unsqueeze", "Squeeze"):
            self.squeeze(index, node)
        elif op == "Flatten":
            axis = node_attr(node, "axis", 1)
            if axis == 1:
                self.join_dims(ins[0], 0, out, 0)
        elif op == "Reshape":
            self.reshape(index, node)
        elif op == "Shape":
            start = node_attr(node, "start", 0)
            rank = self.rank(ins[0])
            if rank is not None:
                start = start + rank if start < 0 else start
                for k in range(len(self.values.get(out, []))):
                    self.uf.union(self.elem(index, 0, out, k), self.dim(ins[0], start + k))
        elif op == "Tile":
            self.tile(index, node)
        elif op == "Expand":
            self.expand(index, node)
        elif op == "ConstantOfShape":
            for axis in range(self.rank(out) or 0):
                self.uf.union(self.dim(out, axis), self.elem(index, 0, ins[0], axis))
        elif op == "Range":
            start, delta = self.value(ins[0]), self.value(ins[2])
            if start is not None and delta is not None and int(start) == 0 and int(delta) == 1:
                self.uf.union(self.dim(out, 0), self.elem(index, 1, ins[1], 0))
        elif op == "Pad":
            self.pad(node)
        elif op in ("Size", "NonZero", "TopK", "Einsum", "If", "Loop", "Scan", "ScatterND", "GatherND",
                    "GatherElements", "ScatterElements", "NonMaxSuppression", "OneHot", "Compress", "Unique"):
            self.unknown.append((node, "the analysis does not follow the batch through {}".format(op)))
        else:
            self.unknown.append((node, "the analysis does not know the operator {}".format(op)))

    def join_all(self, a: str, b: str) -> None:
        for axis in range(self.rank(a) or 0):
            self.join_dims(a, axis, b, axis)

    def join_values(self, index: int, input_index: int, a: str, b: str) -> None:
        va, vb = self.value(a), self.value(b)
        if va is None or vb is None or va.size != vb.size:
            return
        for k in range(va.size):
            self.uf.union(self.elem(index, input_index, a, k), ("v", b, k))

    def broadcast(self, inputs: Sequence[str], out: str) -> None:
        out_rank = self.rank(out)
        if out_rank is None:
            return
        for name in inputs:
            rank = self.rank(name)
            if rank is None:
                continue
            for axis in range(rank):
                out_axis = out_rank - rank + axis
                size = self.size(name, axis)
                # a constant's size-1 axis is broadcast, never the batch itself
                if size == 1 and name in self.constant_names:
                    continue
                if size == self.size(out, out_axis):
                    self.join_dims(name, axis, out, out_axis)

    def where_values(self, index: int, node: Any) -> None:
        cond, out = self.value(node.input[0]), node.output[0]
        result = self.value(out)
        if cond is None or result is None or result.ndim > 1:
            return
        cond = np.broadcast_to(cond, result.shape).reshape(-1)
        for k in range(result.size):
            branch = 1 if cond[k] else 2
            value = self.value(node.input[branch])
            if value is not None and value.size == result.size:
                self.uf.union(("v", out, k), self.elem(index, branch, node.input[branch], k))

    def identity_arithmetic(self, index: int, node: Any) -> None:
        """``x * 1``, ``x / 1``, ``x + 0``, ``x - 0`` keep an element; other arithmetic on the batch
        does not carry it (and is refused if the batch reaches it)."""
        out = node.output[0]
        result = self.value(out)
        neutral = {"Mul": 1, "Div": 1, "Add": 0, "Sub": 0}.get(node.op_type)
        if result is None or result.ndim > 1 or neutral is None or len(node.input) != 2:
            return
        for position, name in enumerate(node.input):
            value, other = self.value(name), self.value(node.input[1 - position])
            if value is None or other is None or value.shape != result.shape:
                continue
            if node.op_type in ("Div", "Sub") and position == 1:
                continue
            other = np.broadcast_to(other, result.shape).reshape(-1)
            for k in range(result.size):
                if other[k] == neutral:
                    self.uf.union(("v", out, k), self.elem(index, position, name, k))

    def matmul(self, a: str, b: str, out: str) -> None:
        ra, rb, ro = self.rank(a), self.rank(b), self.rank(out)
        if ra is None or rb is None or ro is None or ra < 2 or rb < 2:
            return
        for name, rank in ((a, ra), (b, rb)):
            for axis in range(rank - 2):
                size = self.size(name, axis)
                if size == 1 and name in self.constant_names:
                    continue
                self.join_dims(name, axis, out, ro - rank + axis)
        self.join_dims(a, ra - 2, out, ro - 2)
        self.join_dims(b, rb - 1, out, ro - 1)

    def axes(self, node: Any, input_index: int = 1) -> Optional[List[int]]:
        axes = node_attr(node, "axes", None)
        if axes is None and len(node.input) > input_index and node.input[input_index]:
            value = self.value(node.input[input_index])
            axes = None if value is None else value.reshape(-1).tolist()
        return None if axes is None else [int(a) for a in axes]

    def reduce(self, index: int, node: Any) -> None:
        data, out = node.input[0], node.output[0]
        rank = self.rank(data)
        if rank is None:
            return
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [int(node_attr(node, "axis", 0))]
        else:
            axes = self.axes(node)
            if axes is None:
                axes = [] if node_attr(node, "noop_with_empty_axes", 0) else list(range(rank))
        axes = [a + rank if a < 0 else a for a in axes]
        keep = node_attr(node, "keepdims", 1)
        position = 0
        for axis in range(rank):
            if axis in axes:
                if keep:
                    position += 1
                continue
            self.join_dims(data, axis, out, position)
            position += 1
        value, result = self.value(data), self.value(out)
        if value is not None and result is not None and value.size == 1 and result.size == 1:
            self.uf.union(("v", out, 0), self.elem(index, 0, data, 0))

    def concat(self, index: int, node: Any) -> None:
        out = node.output[0]
        rank = self.rank(out)
        if rank is None:
            return
        axis = node_attr(node, "axis", 0)
        axis = axis + rank if axis < 0 else axis
        offset = 0
        for position, name in enumerate(node.input):
            for i in range(rank):
                if i != axis:
                    self.join_dims(name, i, out, i)
            value = self.value(name)
            if rank == 1 and value is not None:
                for k in range(value.size):
                    self.uf.union(("v", out, offset + k), self.elem(index, position, name, k))
            offset += self.size(name, axis) or 0

    def split(self, node: Any) -> None:
        rank = self.rank(node.input[0])
        if rank is None:
            return
        axis = node_attr(node, "axis", 0)
        axis = axis + rank if axis < 0 else axis
        for out in node.output:
            for i in range(rank):
                if i != axis:
                    self.join_dims(node.input[0], i, out, i)

    def slice(self, index: int, node: Any) -> None:
        data, out = node.input[0], node.output[0]
        rank = self.rank(data)
        if rank is None:
            return
        if self.opset < 10:
            starts, ends, axes, steps = (node_attr(node, "starts"), node_attr(node, "ends"), node_attr(node, "axes"), None)
            ends_input = None
        else:
            get = [self.value(node.input[i]) if len(node.input) > i and node.input[i] else None for i in range(1, 5)]
            if get[0] is None or get[1] is None:
                return
            starts, ends, axes, steps = get[0].tolist(), get[1].tolist(), None if get[2] is None else get[2].tolist(), \
                None if get[3] is None else get[3].tolist()
            ends_input = node.input[2]
        axes = list(range(len(starts))) if axes is None else [a + rank if a < 0 else a for a in axes]
        steps = [1] * len(starts) if steps is None else steps
        sliced = dict(zip(axes, zip(starts, ends, steps, range(len(axes)))))
        for axis in range(rank):
            if axis not in sliced:
                self.join_dims(data, axis, out, axis)
                continue
            start, end, step, k = sliced[axis]
            size = self.size(data, axis)
            if size is not None and step == 1 and start in (0, -size) and self.size(out, axis) == size:
                self.join_dims(data, axis, out, axis)
                if end == size and ends_input is not None:  # an end equal to the batch is the batch
                    self.uf.union(self.dim(out, axis), self.elem(index, 2, ends_input, k))
        value, result = self.value(data), self.value(out)
        if rank == 1 and value is not None and result is not None and 0 in sliced:
            start, _, step, _ = sliced[0]
            start = max(start + value.size, 0) if start < 0 else min(start, value.size)
            for k in range(result.size):
                self.uf.union(("v", out, k), self.elem(index, 0, data, start + k * step))

    def gather(self, index: int, node: Any) -> None:
        data, indices, out = node.input[0], node.input[1], node.output[0]
        rank, irank = self.rank(data), self.rank(indices)
        if rank is None or irank is None:
            return
        axis = node_attr(node, "axis", 0)
        axis = axis + rank if axis < 0 else axis
        for i in range(axis):
            self.join_dims(data, i, out, i)
        for i in range(irank):
            self.join_dims(indices, i, out, axis + i)
        for i in range(axis + 1, rank):
            self.join_dims(data, i, out, i - 1 + irank)
        value, picks = self.value(data), self.value(indices)
        if rank == 1 and value is not None and picks is not None:
            for k, pick in enumerate(picks.reshape(-1).tolist()):
                self.uf.union(("v", out, k), self.elem(index, 0, data, int(pick) % value.size))

    def squeeze(self, index: int, node: Any) -> None:
        data, out = node.input[0], node.output[0]
        rank, out_rank = self.rank(data), self.rank(out)
        if rank is None or out_rank is None:
            return
        axes = self.axes(node)
        if node.op_type == "Unsqueeze":
            axes = sorted(a + out_rank if a < 0 else a for a in (axes or []))
            kept = [i for i in range(out_rank) if i not in axes]
            for i, o in enumerate(kept):
                self.join_dims(data, i, out, o)
        else:
            if axes is None:
                axes = [i for i in range(rank) if self.size(data, i) == 1]
            axes = [a + rank if a < 0 else a for a in axes]
            kept = [i for i in range(rank) if i not in axes]
            for o, i in enumerate(kept):
                self.join_dims(data, i, out, o)
        value, result = self.value(data), self.value(out)
        if value is not None and result is not None and value.size == result.size:
            for k in range(value.size):
                self.uf.union(("v", out, k), self.elem(index, 0, data, k))

    def reshape(self, index: int, node: Any) -> None:
        data, shape_name, out = node.input[0], node.input[1], node.output[0]
        in_shape, out_shape = self.shapes.get(data), self.shapes.get(out)
        target = self.value(shape_name)
        allow_zero = node_attr(node, "allowzero", 0)
        if target is not None:
            for j, entry in enumerate(target.reshape(-1).tolist()):
                if entry == 0 and not allow_zero:
                    self.join_dims(data, j, out, j)
                elif entry != -1:
                    self.uf.union(self.dim(out, j), self.elem(index, 1, shape_name, j))
        if in_shape is None or out_shape is None:
            return
        # an axis that Reshape keeps: equal size after equal products of the axes before it (a size-1
        # axis only in the same position: [1, 1, X] -> [1, X] keeps axis 0, not axis 1)
        before_in = np.cumprod((1,) + in_shape[:-1]) if in_shape else []
        before_out = np.cumprod((1,) + out_shape[:-1]) if out_shape else []
        for i, size in enumerate(in_shape):
            for j, out_size in enumerate(out_shape):
                if size == out_size and before_in[i] == before_out[j] and (size != 1 or i == j):
                    self.join_dims(data, i, out, j)
        value, result = self.value(data), self.value(out)
        if value is not None and result is not None and value.size == result.size:
            for k in range(value.size):
                self.uf.union(("v", out, k), self.elem(index, 0, data, k))

    def tile(self, index: int, node: Any) -> None:
        data, repeats_name, out = node.input[0], node.input[1], node.output[0]
        repeats = self.value(repeats_name)
        rank = self.rank(data)
        if repeats is None or rank is None:
            return
        for axis, repeat in enumerate(repeats.reshape(-1).tolist()):
            if self.size(data, axis) == 1:
                self.uf.union(self.dim(out, axis), self.elem(index, 1, repeats_name, axis))
            elif repeat == 1:
                self.join_dims(data, axis, out, axis)

    def expand(self, index: int, node: Any) -> None:
        data, shape_name, out = node.input[0], node.input[1], node.output[0]
        target = self.value(shape_name)
        rank, out_rank = self.rank(data), self.rank(out)
        if target is None or rank is None or out_rank is None:
            return
        target = target.reshape(-1).tolist()
        for j in range(out_rank):
            axis = j - (out_rank - rank)
            data_size = self.size(data, axis) if axis >= 0 else 1
            k = j - (out_rank - len(target))
            if k >= 0 and data_size == 1 and target[k] == self.size(out, j):
                self.uf.union(self.dim(out, j), self.elem(index, 1, shape_name, k))
            elif axis >= 0 and data_size == self.size(out, j) and not (data_size == 1 and data in self.constant_names):
                self.join_dims(data, axis, out, j)

    def resize(self, index: int, node: Any) -> None:
        data, out = node.input[0], node.output[0]
        sizes_name = node.input[3] if len(node.input) > 3 and node.input[3] else None
        if sizes_name is not None and self.value(sizes_name) is not None:
            for j in range(self.value(sizes_name).size):
                self.uf.union(self.dim(out, j), self.elem(index, 3, sizes_name, j))
        if self.size(data, 0) == self.size(out, 0):
            self.join_dims(data, 0, out, 0)
            if self.size(data, 1) == self.size(out, 1):
                self.join_dims(data, 1, out, 1)

    def pad(self, node: Any) -> None:
        data, out = node.input[0], node.output[0]
        for axis in range(self.rank(data) or 0):
            if self.size(data, axis) == self.size(out, axis):
                self.join_dims(data, axis, out, axis)

    # -- the whole graph -------------------------------------------------------------------------
    def run(self) -> BatchAnalysis:
        nodes = list(self.graph.node)
        for index, node in enumerate(nodes):
            self.visit(index, node)
        anchors = [self.dim(name, 0) for name in self.image_inputs + self.outputs]
        for key in anchors[1:]:
            self.uf.union(anchors[0], key)
        root = self.uf.find(anchors[0])
        in_batch = [key for key in list(self.uf.parent) if self.uf.find(key) == root]
        rows = {key[1] for key in in_batch if key[0] == "d"}  # tensors with a batch axis
        elements: Dict[str, Set[int]] = {}  # shape values with the batch among their elements
        for key in in_batch:
            if key[0] == "v":
                elements.setdefault(key[1], set()).add(key[2])
        by_use: Dict[Tuple[int, int], List[int]] = {}
        for key in in_batch:
            if key[0] == "u":
                by_use.setdefault((key[1], key[2]), []).append(key[3])
            elif key[0] == "d" and key[1] in self.constant_names:
                users = [n for n in nodes if key[1] in n.input]
                raise BuildError(
                    "cannot make the batch dynamic: the constant '{}' holds the batch in its shape (axis {} of {}), "
                    "used by {}".format(key[1], key[2], list(self.shapes.get(key[1], ())), _names(users)),
                    expected="a batch that comes from the inputs or from shape values that can be rewritten")
            elif key[0] == "d" and self.size(key[1], key[2]) not in (None, self.batch):
                raise BuildError("cannot make the batch dynamic: the analysis joined the batch with axis {} of '{}', "
                                 "of size {}".format(key[2], key[1], self.size(key[1], key[2])),
                                 expected="size {} everywhere the batch is".format(self.batch))
        for node, why in self.unknown:
            if any(name in rows or name in elements for name in node.input):
                raise BuildError("cannot make the batch dynamic: {} ({} '{}') reads a batch-carrying tensor".format(
                    why, node.op_type, node.name or node.output[0]))
        for node in nodes:
            if node.op_type in _COMPARE or node.op_type == "Shape" or not node.output:
                continue  # a comparison's or a Shape's result is no row of the batch (its values are followed)
            label = "{} '{}'".format(node.op_type, node.name or node.output[0])
            outputs_carry = any(name in rows or name in elements for name in node.output)
            if any(name in rows for name in node.input) and not outputs_carry:
                raise BuildError(
                    "cannot make the batch dynamic: {} reads the batch but none of its outputs carries it (it "
                    "mixes rows across the batch, or merges the batch into another dimension)".format(label),
                    expected="every row computed on its own, the batch kept as a dimension of its own")
            if (node.op_type in _BROADCAST or node.op_type in _REDUCE) and node.op_type != "Where" and \
                    any(name in elements for name in node.input) and not outputs_carry:
                raise BuildError(
                    "cannot make the batch dynamic: {} computes a shape value from the batch ({} of {})".format(
                        label, node.op_type, ", ".join("'{}'".format(n) for n in node.input if n in elements)),
                    expected="the batch passed on unchanged (Reshape, Tile, Expand, Concat, Gather of shapes)")
        uses = []
        for (node_index, input_index), positions in sorted(by_use.items()):
            node = nodes[node_index]
            name = node.input[input_index]
            values = self.values[name].reshape(-1).tolist()
            positions = sorted(positions)
            wrong = [values[p] for p in positions if values[p] != self.batch]
            if wrong or self.values[name].ndim > 1:
                raise BuildError("cannot make the batch dynamic: '{}' (input {} of {} '{}') is {}, where the analysis "
                                 "expects the batch {}".format(name, input_index, node.op_type, node.name,
                                                               values, self.batch))
            data_axes = []
            if node.op_type == "Reshape":
                data_axes = [j for j in range(self.rank(node.input[0]) or 0)
                             if self.uf.find(self.dim(node.input[0], j)) == root]
            uses.append(BatchUse(node.name or node.output[0], node.op_type, input_index, name,
                                 [int(v) for v in values], positions, data_axes))
        return BatchAnalysis(self.batch, uses)


def _names(nodes: Iterable[Any]) -> str:
    return ", ".join("{} '{}'".format(n.op_type, n.name or n.output[0]) for n in nodes) or "nothing"


def analyse(model: Any, batch: int, image_inputs: Sequence[str], outputs: Sequence[str]) -> BatchAnalysis:
    """Find every constant use that carries the static ``batch`` of ``model`` (see the module doc).

    ``image_inputs``/``outputs``: the tensors whose first dimension is the batch. Raises
    BuildError naming the node when the batch reaches a place no rewrite can serve.
    """
    return _Analyser(model, batch, image_inputs, outputs).run()
