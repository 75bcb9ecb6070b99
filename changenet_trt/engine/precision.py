"""Precision as a property of the ONNX model: float16 and INT8 (Q/DQ) graphs made on the CPU.

TensorRT 11 removed every builder-side precision control (FP16/INT8 flags, layer precision,
calibrators): a network is strongly typed and runs in the types its ONNX graph holds. So the
precision is decided here, before the build, and proven with ONNX Runtime:

* :func:`to_fp16`: float weights and activations become float16; the model's inputs and outputs
  stay float32; the nodes ``fp16-check`` flags on real pairs (values beyond +-65504, or too much
  float16 rounding) plus the user's list stay float32, with the constants they read. The float16
  model and the original then run on the same pairs; a model whose decisions flip is refused
  unless forced.
* :func:`to_int8`: explicit quantization with ONNX Runtime's ``quantize_static`` in QDQ format,
  set as TensorRT reads it (symmetric int8, per-channel weights, float32 scales, no bias
  quantization, no Q/DQ around Softmax/Reshape/Transpose, opset 13-17), calibrated on real pairs;
  the 3-channel stem convolution(s) stay float. The result is reported against the float32 model
  on held-back pairs (FPR, capture, flips).
* :func:`graph_precision`: what a graph holds (float16 tensors, Q/DQ, float32 islands), from
  which a TensorRT 8.x build derives its flags.

Both writers record how the model was made in its metadata (``changenet_trt.precision``) and
write it atomically.
"""

import contextlib
import fnmatch
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from changenet_trt.engine.fp16_check import DEFAULT_MAX_REL_ERROR, FP16_MAX, FP16_MIN_SUBNORMAL, layer_name
from changenet_trt.errors import BuildError, ChangeNetError, InputError, missing_dependency
from changenet_trt.files import file_sha256
from changenet_trt.threads import release_freed_memory

PathLike = Union[str, "os.PathLike[str]"]
Batch = Tuple[np.ndarray, np.ndarray]  # (golden, sample), each float32 [n, C, H, W]
#: make_source(contract, normalization) -> evaluation.validate.PairSource
SourceFactory = Callable[[Any, Any], Any]

#: metadata key holding how a typed model was made (JSON)
META_PRECISION = "changenet_trt.precision"
#: pairs the proof runs on when the caller gives no source (synthetic, rendered in memory)
DEFAULT_PROOF_PAIRS = 64
#: batch of the range check and the proof
PROOF_BATCH = 16
#: TensorRT 8.5 parses ONNX opsets up to 17; per-channel Q/DQ (DequantizeLinear axis) needs 13
MIN_QDQ_OPSET = 13
MAX_TRT8_OPSET = 17
#: ops that get Q/DQ by default: the ones TensorRT runs in int8 kernels (and where the time goes).
#: Softmax, Reshape and Transpose are left out on purpose: Q/DQ there blocks TensorRT's fusions.
DEFAULT_INT8_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
NO_QDQ_OPS = ("Softmax", "Reshape", "Transpose", "LayerNormalization")
#: pairs per ONNX Runtime run while calibrating or measuring per-layer error: the quantizer
#: exposes every Conv/MatMul/Gemm/Add input of a run at once
CALIB_RUN_PAIRS = 2
#: calibration pairs the per-layer error is measured on (two models, every layer exposed)
LAYER_ERROR_PAIRS = 16
#: layers listed in the report, worst SQNR first
LAYERS_SHOWN = 10
INT8_METHODS = ("entropy", "percentile")
DEFAULT_PERCENTILE = 99.999
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16
_FLOAT = 1


@dataclass
class PrecisionReport:
    """What :func:`to_fp16` / :func:`to_int8` made and how it compares with the float32 model.

    ``fp32_nodes``: nodes kept float32 (fp16: flagged + user's; int8: excluded from Q/DQ);
    ``flagged``: those ``fp16-check`` flagged, with its reasons; ``validation``: the
    :class:`~changenet_trt.evaluation.validate.ValidationReport` of the typed model (test side)
    against the original (reference side); for float16 it is run with float16 storage
    emulated (:func:`emulate_fp16`), and ``direct`` holds ONNX Runtime's run of the float16
    file itself.
    """

    source: str
    output: str
    precision: str
    fp32_nodes: List[str]
    validation: Any
    flagged: Dict[str, List[str]] = field(default_factory=dict)
    user_nodes: List[str] = field(default_factory=list)
    details: Dict[str, Any] = field(default_factory=dict)
    direct: Any = None
    forced: bool = False
    layers: List[Any] = field(default_factory=list)  # int8: LayerError per quantized layer, graph order
    layer_pairs: int = 0

    @property
    def flips(self) -> int:
        return max(self.validation.flips.count, self.direct.flips.count if self.direct is not None else 0)

    def summary_lines(self) -> List[str]:
        from changenet_trt.evaluation.validate import format_report

        lines = ["{} -> {} ({})".format(self.source, self.output, self.precision)]
        for key, value in sorted(self.details.items()):
            lines.append("  {}: {}".format(key, value))
        if self.fp32_nodes:
            lines.append("  kept float32 ({}):".format(len(self.fp32_nodes)))
            for name in self.fp32_nodes:
                why = "; ".join(self.flagged.get(name, [])) or ("your list" if name in self.user_nodes else "")
                lines.append("    {}{}".format(name, ": " + why if why else ""))
        if self.layers:
            worst = sorted(self.layers, key=lambda e: e.sqnr_db)[:LAYERS_SHOWN]
            lines.append("  per-layer output SQNR vs float32 on {} calibration pairs, worst {} of {} quantized "
                         "layers:".format(self.layer_pairs, len(worst), len(self.layers)))
            for error in worst:
                lines.append("    {:>6.1f} dB  {} ({})".format(error.sqnr_db, error.node, error.op_type))
        lines.append("")
        lines += ["  " + line for line in format_report(self.validation)]
        if self.forced and self.flips:
            lines.append("  written although {} decision(s) flip (forced)".format(self.flips))
        return lines


# -- shared helpers ------------------------------------------------------------------------------
def _load(model: Any) -> Any:
    import onnx

    if hasattr(model, "graph"):
        return model
    from changenet_trt.contract import load_onnx

    load_onnx(os.fspath(model))  # a clear error for a missing or unreadable file
    return onnx.load(os.fspath(model))


def name_nodes(proto: Any) -> Any:
    """Give every unnamed node its TensorRT layer name (``node_of_<first output>``), in place.

    Block lists and exclusion lists work on node names, and TensorRT 8.x names the same layers
    this way, so a name here is the layer name a build sees."""
    for node in proto.graph.node:
        if not node.name:
            node.name = layer_name(node)
    return proto


def main_opset(proto: Any) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def check_typed(proto: Any, what: str) -> None:
    """The checks TensorRT's strongly typed parser implies: ONNX's full check and strict,
    type-checked shape inference. Raises BuildError with the first complaint."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise BuildError("the {} is not a consistently typed ONNX graph".format(what),
                         found=str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None


def match_nodes(proto: Any, patterns: Sequence[str]) -> List[str]:
    """Node names matching ``patterns`` (exact, or fnmatch ``*``/``?``), in graph order.

    Raises InputError for a pattern that matches no node (a typo would silently keep nothing)."""
    names = [node.name for node in proto.graph.node]
    chosen = set()
    for pattern in patterns:
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise InputError("no node of the model matches the float32 pattern {!r}".format(pattern),
                             expected="a node name (as fp16-check lists them) or an fnmatch pattern",
                             found="{} nodes, e.g. {}".format(len(names), ", ".join(names[:5])))
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _constants_of(proto: Any, nodes: Sequence[str]) -> List[str]:
    """Constant nodes whose outputs only the ``nodes`` read: they stay float32 with them."""
    keep = set(nodes)
    readers: Dict[str, List[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    found = []
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            users = readers.get(node.output[0], [])
            if users and all(u in keep for u in users):
                found.append(node.name)
    return found


def _set_meta(proto: Any, made: Dict[str, Any]) -> None:
    for prop in list(proto.metadata_props):
        if prop.key == META_PRECISION:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key = META_PRECISION
    entry.value = json.dumps(made, sort_keys=True)


def _provenance(source: str, origin: Optional[PathLike]) -> Dict[str, str]:
    """The sha256 of the model converted and, when it was itself made from another file (a
    static-batch original made dynamic first), that file's sha256 too."""
    made = {"source_sha256": file_sha256(source)}
    if origin is not None:
        made["origin_sha256"] = file_sha256(origin)
    return made


def read_made(model: Any) -> Optional[Dict[str, Any]]:
    """How a typed model was made (the JSON :func:`to_fp16` / :func:`to_int8` stored), or None."""
    proto = _load(model)
    for prop in proto.metadata_props:
        if prop.key == META_PRECISION:
            try:
                return json.loads(prop.value)
            except ValueError:
                return None
    return None


def _default_source(pairs: int = DEFAULT_PROOF_PAIRS, seed: int = 0) -> SourceFactory:
    def make(contract: Any, normalization: Any) -> Any:
        from changenet_trt.evaluation.validate import synthetic_source

        return synthetic_source(pairs, contract.input_shape, normalization, seed=seed)

    return make


def _compare(typed_paths: Sequence[str], original: str, make_source: SourceFactory, cutoff: Optional[float],
             normalization: Any, batch_size: Optional[int], contract_overrides: Optional[Dict[str, Any]],
             atol: float, rtol: float, threads: Optional[int]) -> List[Any]:
    """``validate`` of each typed model (ONNX Runtime) against the float32 original, which runs once."""
    from changenet_trt.evaluation.validate import validate_all

    options = {"threads": threads} if threads else None
    return validate_all(list(typed_paths), original, make_source, cutoff=cutoff, atol=atol, rtol=rtol, max_flips=0,
                        backend="onnxruntime", batch_size=batch_size, normalization=normalization,
                        contract_overrides=contract_overrides, engine_options=options)


# -- float16 -------------------------------------------------------------------------------------
#: ops kept float32 whatever their schema allows: ones whose output type comes from an attribute
#: (random generators, EyeLike) and the ones NVIDIA ModelOpt's AutoCast never lowers
#: (modelopt/onnx/autocast/precisionconverter.py, OP_TYPES_NOT_SUPPORTED_IN_LOW_PRECISION:
#: Upsample, NonMaxSuppression, Celu)
_FLOAT32_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                "Multinomial", "EyeLike", "Upsample", "NonMaxSuppression", "Celu")
#: ops whose output depends on the shape of their input, not on its values: where shape
#: arithmetic starts (TAO's var_mean exports Shape -> Gather -> ReduceProd -> Cast(float))
_SHAPE_OPS = ("Shape", "Size")
_HALF_TYPE = "tensor(float16)"


def value_dependent(proto: Any) -> Set[str]:
    """Names of the tensors whose values depend on the values of a graph input.

    Found by tracing from the inputs through every node except Shape/Size (whose outputs carry
    only a shape): what is left out is shape and index arithmetic (Shape -> Gather ->
    ReduceProd -> Cast(float) for var_mean's N/(N-1), Range-based position tables) or constant
    folding, which float16 must not touch (TensorRT evaluates it as shape tensors or at build
    time, and a float16 element count loses integers above 2048)."""
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    dependent = {vi.name for vi in graph.input if vi.name not in initializers}
    for node in graph.node:  # ONNX keeps nodes in topological order
        if node.op_type in _SHAPE_OPS:
            continue
        if any(name in dependent for name in node.input if name):
            dependent.update(name for name in node.output if name)
    return dependent


def _elem_types(proto: Any) -> Dict[str, int]:
    """tensor name -> ONNX element type, as far as shape inference (non-strict) knows it."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # best effort: unknown types are caught by check_typed afterwards
        inferred = proto.graph
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    for init in proto.graph.initializer:
        types[init.name] = init.data_type
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _half_slots(node: Any, opset: int) -> Tuple[List[Optional[bool]], List[Optional[bool]]]:
    """For each input and output of ``node``: True when its ONNX schema lets it be float16,
    False when it must stay float32 whatever the node computes in (e.g. Resize's ``scales``),
    None when the schema does not allow float16 where it allows float (the node then stays
    float32). Read from the op schema at the model's opset, as ModelOpt's AutoCast finds the
    ops it cannot lower."""
    import onnx

    schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def slots(formals: Sequence[Any], count: int) -> List[Optional[bool]]:
        found: List[Optional[bool]] = []
        for index in range(count):
            if not formals:
                found.append(None)
                continue
            type_str = formals[min(index, len(formals) - 1)].type_str
            types = allowed.get(type_str, {type_str})
            if _HALF_TYPE in types:
                found.append(True)
            elif types == {"tensor(float)"}:
                found.append(False)
            else:
                found.append(None)
        return found

    return slots(schema.inputs, len(node.input)), slots(schema.outputs, len(node.output))


def _half_values(values: np.ndarray) -> np.ndarray:
    """float16 copy of float weights, clamped only where they leave the float16 range
    (|x| > 65504 -> 65504, 0 < |x| < 2**-24 -> 2**-24, signs kept)."""
    values = np.asarray(values, dtype=np.float32)
    magnitude = np.abs(values)
    values = np.where(magnitude > FP16_MAX, np.sign(values) * FP16_MAX, values)
    values = np.where((magnitude > 0) & (magnitude < FP16_MIN_SUBNORMAL), np.sign(values) * FP16_MIN_SUBNORMAL, values)
    return values.astype(np.float16)


@dataclass
class Fp16Plan:
    """Which nodes of a model run in float16 (``half``), which stay float32 and why."""

    half: List[str]
    kept: List[str]  # asked for (fp16-check, the user)
    shape_math: List[str]  # shape/index arithmetic and constant folding (not value dependent)
    unsupported: List[str]  # the op's schema has no float16, or it is in _FLOAT32_OPS


def plan_fp16(proto: Any, fp32_nodes: Sequence[str] = ()) -> Fp16Plan:
    """Classify the float nodes of ``proto`` (nodes named) for :func:`convert_fp16`.

    What stays float32, and why (rules learnt from NVIDIA ModelOpt's AutoCast,
    modelopt/onnx/autocast/nodeclassifier.py and precisionconverter.py; our own code):

    * nodes the caller names: ``fp16-check``'s islands (AutoCast's IORangeRule keeps nodes
      whose reference inputs/outputs leave a range, and its InitializerRangeRule nodes reading
      weights beyond float16; fp16-check measures both, plus float16 rounding loss, which
      catches TAO's 1e-6 layer scale and its channel-first LayerNorm variance) and the user's;
    * shape and index arithmetic, found by tracing value dependence from the inputs
      (:func:`value_dependent`), not by names;
    * ops whose schema has no float16 at the model's opset, and the few AutoCast never lowers;
      inputs the schema fixes to float32 (Resize's ``scales``) stay float32 on a float16 node.
    """
    opset = main_opset(proto)
    types = _elem_types(proto)
    dependent = value_dependent(proto)
    blocked = set(fp32_nodes)
    plan = Fp16Plan([], [], [], [])
    for node in proto.graph.node:
        floats = [n for n in list(node.input) + list(node.output) if n and types.get(n) == _FLOAT]
        if not floats or node.op_type == "Constant":
            continue
        if node.name in blocked:
            plan.kept.append(node.name)
        elif not any(name in dependent for name in node.output if name):
            plan.shape_math.append(node.name)
        elif (node.op_type in _FLOAT32_OPS or node.domain not in ("", "ai.onnx")
              or any(a.type in (5, 10) for a in node.attribute)):  # GRAPH, GRAPHS: If/Loop/Scan bodies
            plan.unsupported.append(node.name)
        elif node.op_type == "Cast" and next((a.i for a in node.attribute if a.name == "to"), 0) != _FLOAT:
            # a value turned into an index (Cast to int) reads float32, as the float model does
            plan.unsupported.append(node.name)
        else:
            ins, outs = _half_slots(node, opset)
            slots = [s for n, s in zip(list(node.input) + list(node.output), ins + outs) if n and types.get(n) == _FLOAT]
            if any(s is None for s in slots):
                plan.unsupported.append(node.name)
            else:
                plan.half.append(node.name)
    # an Identity of a weight (TorchScript writes one per reuse of a shared module's weight, e.g.
    # the Siamese backbone's second call) is the weight itself: float16 when all its readers are
    half = set(plan.half)
    constants = {init.name for init in proto.graph.initializer}
    constants |= {n.output[0] for n in proto.graph.node if n.op_type == "Constant" and n.output}
    readers: Dict[str, List[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    aliases = [node.name for node in proto.graph.node
               if node.op_type == "Identity" and node.name in set(plan.shape_math) and node.input[0] in constants
               and readers.get(node.output[0]) and all(r in half for r in readers[node.output[0]])]
    if aliases:
        moved = set(aliases)
        plan.shape_math = [n for n in plan.shape_math if n not in moved]
        plan.half += aliases
    return plan


def convert_fp16(proto: Any, fp32_nodes: Sequence[str] = ()) -> Any:
    """A float16 copy of ``proto`` (nodes named first) with ``fp32_nodes`` kept float32.

    :func:`plan_fp16` says which nodes compute in float16; their float tensors become float16
    and every other float tensor stays float32. A ``Cast`` is added only where a tensor's type
    and its reader's differ (one per tensor and direction, named ``<tensor>/to_fp16`` or
    ``/to_fp32``); the model's inputs and outputs stay float32. Weights follow their readers
    (a weight read both ways gets a ``<name>/fp16`` copy) and are clamped only where they leave
    the float16 range (|x| > 65504 -> 65504, 0 < |x| < 2**-24 -> 2**-24). Every surviving node
    and tensor keeps its name, except a float16 node writing a graph output, whose tensor is
    then ``<output>/fp16`` before the Cast back. ``value_info`` is kept for the tensors that
    remain, with their new types. No proof: see :func:`to_fp16`.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    name_nodes(model)
    graph = model.graph
    opset = main_opset(model)
    plan = plan_fp16(model, fp32_nodes)
    half = set(plan.half)
    types = _elem_types(model)
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)}
    taken |= {init.name for init in graph.initializer} | {vi.name for vi in graph.input}
    node_names = {node.name for node in graph.node}

    def fresh(base: str, used: Set[str]) -> str:
        name, index = base, 1
        while name in used:
            index += 1
            name = "{}_{}".format(base, index)
        used.add(name)
        return name

    # 1. the type every float tensor is produced in, and the type each reader wants
    produced: Dict[str, int] = {}
    wants: List[Tuple[Any, int, str, int]] = []  # (node, input index, tensor, wanted type)
    for node in graph.node:
        ins, outs = _half_slots(node, opset) if node.name in half else ([None] * len(node.input), [None] * len(node.output))
        for index, name in enumerate(node.output):
            if name and types.get(name) == _FLOAT:
                produced[name] = _FLOAT16 if outs[index] else _FLOAT
        for index, name in enumerate(node.input):
            if name and types.get(name) == _FLOAT and node.op_type not in _SHAPE_OPS:  # those read any type
                wants.append((node, index, name, _FLOAT16 if ins[index] else _FLOAT))
        if node.name in half and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = _FLOAT16
    # 2. constants (initializers and Constant nodes) take the type their readers want
    constants: Dict[str, Any] = {init.name: init for init in graph.initializer if init.data_type == _FLOAT}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == _FLOAT:
                    constants[node.output[0]] = attr.t
    demanded: Dict[str, Set[int]] = {}
    for _, _, name, want in wants:
        if name in constants:
            demanded.setdefault(name, set()).add(want)
    renamed: Dict[Tuple[str, int], str] = {}
    for name, kinds in demanded.items():
        if kinds != {_FLOAT16}:
            if _FLOAT16 in kinds:  # read both ways: a float16 copy beside the float32 original
                copy = fresh(name + "/fp16", taken)
                graph.initializer.append(numpy_helper.from_array(_half_values(numpy_helper.to_array(constants[name])), copy))
                renamed[(name, _FLOAT16)] = copy
            continue
        tensor = constants[name]
        tensor.CopyFrom(numpy_helper.from_array(_half_values(numpy_helper.to_array(tensor)), tensor.name))
        produced[name] = _FLOAT16
    casts: Dict[int, List[Any]] = {}  # id of the producing node (0: graph inputs) -> Casts after it
    # 3. graph outputs stay float32: a float16 producer writes <output>/fp16, a Cast writes the output
    outputs = {vi.name for vi in graph.output}
    for node in graph.node:
        for index, name in enumerate(node.output):
            if name in outputs and produced.get(name) == _FLOAT16:
                inner = fresh(name + "/fp16", taken)
                node.output[index] = inner
                produced[inner] = _FLOAT16
                renamed[(inner, _FLOAT)] = name
                back = helper.make_node("Cast", [inner], [name], to=_FLOAT, name=fresh(name + "/to_fp32", node_names))
                casts.setdefault(id(node), []).append(back)
                for other in graph.node:
                    for i, used in enumerate(other.input):
                        if used == name:
                            other.input[i] = inner
                wants[:] = [(n, i, inner if t == name else t, w) for n, i, t, w in wants]
    # 4. a Cast wherever a reader wants another type than the tensor has
    producer_of = {out: node for node in graph.node for out in node.output if out}
    for node, index, name, want in wants:
        have = produced.get(name, _FLOAT)
        if have == want:
            continue
        key = (name, want)
        if key not in renamed:
            suffix = "/to_fp16" if want == _FLOAT16 else "/to_fp32"
            target = fresh(name + suffix, taken)
            cast = helper.make_node("Cast", [name], [target], to=want, name=fresh(name + suffix, node_names))
            anchor = producer_of.get(name)
            casts.setdefault(id(anchor) if anchor is not None else 0, []).append(cast)
            renamed[key] = target
        node.input[index] = renamed[key]
    nodes = list(casts.get(0, []))
    for node in graph.node:
        nodes.append(node)
        nodes += casts.get(id(node), [])
    del graph.node[:]
    graph.node.extend(nodes)
    # 5. value_info: the tensors that remain, with their new types
    present = {n for node in graph.node for n in node.output}
    kept = []
    for vi in graph.value_info:
        if vi.name in present:
            if produced.get(vi.name) == _FLOAT16:
                vi.type.tensor_type.elem_type = _FLOAT16
            kept.append(vi)
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return model


def _weight_share(typed: Any) -> str:
    """How many of the MatMul/Conv/Gemm weights (initializer elements, through an Identity
    alias too) of ``typed`` are float16."""
    sizes = {init.name: (init.data_type, int(np.prod(init.dims)) if len(init.dims) else 1)
             for init in typed.graph.initializer}
    for node in typed.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in sizes:
            sizes[node.output[0]] = sizes[node.input[0]]
    half = total = 0
    for node in typed.graph.node:
        if node.op_type in ("MatMul", "Conv", "Gemm", "ConvTranspose"):
            for name in node.input[1:2]:
                if name in sizes:
                    dtype, count = sizes[name]
                    total += count
                    half += count if dtype == _FLOAT16 else 0
    return "{:.1%} of {} elements".format(half / total, total) if total else "none"


def emulate_fp16(typed: Any) -> Any:
    """A float32 model that computes like ``typed`` (a float16 model) stores: every float16
    tensor is rounded through float16 (an explicit ``Cast`` to float16 and back), every float16
    weight holds its float16 value, arithmetic runs in float32.

    Why: ONNX Runtime's CPU provider has few float16 kernels; it wraps the others in Casts to
    float32 and then drops the float16 round trips between them, so a float16 model run there
    hides overflow (65504 -> inf) inside a chain of such ops. Explicit Cast pairs in a float32
    graph are kept, so this model shows what float16 storage does (TensorRT keeps float16
    activations between its layers).
    """
    import onnx
    from onnx import helper, numpy_helper

    types = _float16_values(typed)
    model = onnx.ModelProto()
    model.CopyFrom(typed)
    graph = model.graph

    def widen_tensor(tensor: Any) -> None:
        if tensor.data_type == _FLOAT16:
            values = numpy_helper.to_array(tensor).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))

    for init in graph.initializer:
        widen_tensor(init)
    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                widen_tensor(attr.t)
            elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == _FLOAT16:
                attr.i = _FLOAT
        rounded = []
        for index, name in enumerate(node.output):
            if name and types.get(name) == _FLOAT16:
                node.output[index] = name + "/fp32"
                rounded.append(name)
        nodes.append(node)
        for name in rounded:
            nodes.append(helper.make_node("Cast", [name + "/fp32"], [name + "/fp16"], to=_FLOAT16,
                                          name=name + "/round_fp16"))
            nodes.append(helper.make_node("Cast", [name + "/fp16"], [name], to=_FLOAT, name=name + "/back_fp32"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model


def _float16_values(proto: Any) -> Dict[str, int]:
    """tensor name -> ONNX element type for every typed value of the graph (after inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    for init in proto.graph.initializer:
        types[init.name] = init.data_type
    return types


def to_fp16(
    model_path: PathLike,
    out_path: PathLike,
    fp32_nodes: Sequence[str] = (),
    make_source: Optional[SourceFactory] = None,
    check_ranges: bool = True,
    force: bool = False,
    cutoff: Optional[float] = None,
    normalization: Any = None,
    max_rel_error: float = DEFAULT_MAX_REL_ERROR,
    atol: float = 1e-2,
    rtol: float = 1e-2,
    batch_size: Optional[int] = None,
    contract_overrides: Optional[Dict[str, Any]] = None,
    threads: Optional[int] = None,
    origin: Optional[PathLike] = None,
    extra_made: Optional[Dict[str, Any]] = None,
    progress: bool = True,
    analysis_source: Optional[SourceFactory] = None,
    progress_file: Any = None,
) -> PrecisionReport:
    """Write a float16 version of ``model_path`` to ``out_path`` after proving it on real pairs.

    ``fp32_nodes``: node names or fnmatch patterns the user keeps float32 (``@FILE`` lists are
    read by the caller); with ``check_ranges`` the nodes ``fp16-check`` flags on the pairs are
    added. ``make_source(contract, normalization)`` gives the pairs
    (:func:`~changenet_trt.evaluation.validate.dataset_source` for a TAO data set; default:
    64 synthetic pairs); ``analysis_source``, when given, gives fp16-check's pairs instead
    (:mod:`.typed` analyses a data set's first pairs and proves on the rest). The float16 model must pass ONNX's full check and strict type
    inference, then runs beside the original on the same pairs; if any decision flips at the
    cutoff the model is refused (BuildError naming the pairs) unless ``force``. The proof runs
    twice: with float16 storage emulated (:func:`emulate_fp16`; ONNX Runtime's CPU kernels
    would otherwise compute most float16 ops in float32 and hide overflow) and on the float16
    file itself. ``origin``: the file ``model_path`` was made from (e.g. the static-batch
    original of a dynamic model); its sha256 is recorded beside the source's. ``extra_made``:
    more keys for the metadata :func:`read_made` returns (the build records the inputs it caches
    the model by).
    """
    import onnx

    from changenet_trt.contract import read_contract
    from changenet_trt.engine.fp16_check import check_model, source_batches
    from changenet_trt.files import atomic_write, check_output_file

    source = os.fspath(model_path)
    output = check_output_file(out_path, "float16 model", inputs=[source])
    overrides = {k: v for k, v in (contract_overrides or {}).items() if v is not None}
    contract = read_contract(source, **overrides)
    make_source = make_source or _default_source()
    # the user's patterns are checked before minutes of analysis; the model (with its weights) is
    # loaded again after it, so it is not resident while fp16-check holds a run's activations
    user_nodes = match_nodes(name_nodes(_load(source)), list(fp32_nodes))
    flagged: Dict[str, List[str]] = {}
    if check_ranges:
        from changenet_trt.data.preprocess import get_normalization

        pairs = (analysis_source or make_source)(contract, get_normalization(normalization))
        try:
            report = check_model(source, source_batches(pairs, contract.static_batch or PROOF_BATCH,
                                                        contract.input_shape),
                                 contract=contract, max_rel_error=max_rel_error, threads=threads,
                                 total=pairs.count, progress=progress, progress_file=progress_file)
        finally:
            pairs.close()
        flagged = {layer.layer: list(layer.reasons) for layer in report.layers}
    original = name_nodes(_load(source))
    present = {node.name for node in original.graph.node}
    unknown = sorted(set(flagged) - present)
    if unknown:  # fp16-check names layers as TensorRT does; after name_nodes they are node names
        raise BuildError("fp16-check flagged layers that are not nodes of the model", found=", ".join(unknown))
    keep = [node.name for node in original.graph.node if node.name in flagged or node.name in user_nodes]
    converted = convert_fp16(original, keep)
    plan = plan_fp16(original, keep)
    check_typed(converted, "float16 model")
    made = {"precision": "fp16", "fp32_nodes": keep, "flagged": sorted(flagged), "user": list(fp32_nodes),
            "min_positive": FP16_MIN_SUBNORMAL, "max_finite": FP16_MAX, "io": "float32"}
    made.update(_provenance(source, origin))
    made.update(extra_made or {})
    _set_meta(converted, made)
    payload = converted.SerializeToString()
    workdir = tempfile.mkdtemp(prefix="changenet-fp16-")
    try:
        candidate = os.path.join(workdir, "float16.onnx")
        emulated = os.path.join(workdir, "float16-storage.onnx")
        with open(candidate, "wb") as handle:
            handle.write(payload)
        onnx.save(emulate_fp16(converted), emulated)
        validation, direct = _compare([emulated, candidate], source, make_source, cutoff, normalization, batch_size,
                                      overrides, atol, rtol, threads)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    validation.test_model = "{} (float16 storage emulated)".format(output)
    direct.test_model = output
    result = PrecisionReport(source, output, "fp16", keep, validation, flagged=flagged, user_nodes=user_nodes,
                             details={"float32 nodes": "{} ({} flagged by fp16-check, {} yours)".format(
                                 len(keep), len(flagged), len(user_nodes)),
                                 "shape arithmetic kept float32": "{} nodes".format(len(plan.shape_math)),
                                 "MatMul/Conv/Gemm weights in float16": _weight_share(converted),
                                 "raw-output SQNR vs float32": "{:.1f} dB (float16 storage emulated), {:.1f} dB "
                                 "(onnxruntime on the float16 file)".format(validation.raw.sqnr_db, direct.raw.sqnr_db),
                                 "onnxruntime on the float16 file": "{} flips, max |score diff| {:.3g}".format(
                                     direct.flips.count, direct.score.abs_max)},
                             direct=direct, forced=force)
    worst = validation if validation.flips.count >= direct.flips.count else direct
    if worst.flips.count and not force:
        flips = worst.flips
        shown = ", ".join("pair {}{} (float32 {:.4g}, float16 {:.4g})".format(
            i, " " + worst.ids[i] if worst.ids else "", worst.ref_scores[i], worst.test_scores[i])
            for i in flips.indices[:5])
        raise BuildError(
            "the float16 model of {} flips {} decision(s) at cutoff {:g} on {}; not written (keep the "
            "affected layers float32 with --fp32-layers, or force it)".format(
                source, flips.count, flips.cutoff, worst.source),
            expected="0 flips", found=shown + (" ..." if flips.count > 5 else ""))
    atomic_write(output, payload)
    return result


# -- int8 ----------------------------------------------------------------------------------------
def stem_convolutions(proto: Any) -> List[str]:
    """Names of the Conv nodes that read a 3-channel image (weight ``[O, 3, kh, kw]``, one group).

    Their input is the image itself, whose int8 rounding costs the most accuracy for the least
    compute, so INT8 preparation leaves them float."""
    from onnx import numpy_helper

    shapes = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(numpy_helper.to_array(attr.t).shape)
    found = []
    for node in proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = shapes.get(node.input[1])
        if shape is not None and len(shape) >= 2 and shape[1] == 3 and group == 1:
            found.append(node.name)
    return found


def _float_model_for_qdq(proto: Any) -> Tuple[Any, List[str]]:
    """A copy at opset 13..17 with named nodes; returns ``(model, changes)``."""
    import onnx
    from onnx import version_converter

    changes = []
    opset = main_opset(proto)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if opset > MAX_TRT8_OPSET:
        changes.append("opset {} kept (above 17: TensorRT 8.x cannot parse it)".format(opset))
    if opset < MIN_QDQ_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_QDQ_OPSET)
        except Exception as exc:
            raise BuildError("cannot upgrade the model from opset {} to {} for per-channel Q/DQ".format(
                opset, MIN_QDQ_OPSET), found=str(exc).strip().splitlines()[0] if str(exc).strip() else "") from None
        changes.append("opset {} -> {} (per-channel DequantizeLinear needs an axis)".format(opset, MIN_QDQ_OPSET))
    name_nodes(model)
    return model, changes


def residual_adds(proto: Any, weighted: Sequence[str]) -> Dict[str, int]:
    """Add nodes that TensorRT fuses into a weighted layer, with the index of their residual input.

    TensorRT's Q/DQ placement recommendations (Developer Guide, "Explicit Quantization: Q/DQ
    Layer-Placement Recommendations") quantize the residual input of an element-wise Add that
    follows a weighted layer, so the Add runs in the layer's int8 epilogue; NVIDIA ModelOpt's
    ONNX PTQ does the same (modelopt/onnx/quantization/int8.py: ``build_non_residual_input_map``,
    the Add input fused with the Conv/MatMul partition stays float, the other gets Q/DQ). Here
    an Add qualifies when exactly one input comes from a node of ``weighted`` directly or through
    its bias Add; the other input is the residual. FAN's layer-scaled branches (``gamma *
    proj(x)``) put a Mul in between: TensorRT does not fuse those, so they get no Q/DQ."""
    producers = {out: node for node in proto.graph.node for out in node.output if out}
    constants = {init.name for init in proto.graph.initializer}
    for node in proto.graph.node:  # graph order: an Identity of a weight (TorchScript's shared modules) is one too
        if node.op_type == "Constant" or (node.op_type == "Identity" and node.input and node.input[0] in constants):
            constants.update(out for out in node.output if out)
    chosen = set(weighted)

    def from_weighted(name: str) -> bool:
        node = producers.get(name)
        if node is None:
            return False
        if node.name in chosen:
            return True
        # a bias Add (weighted output + constant) belongs to the layer's epilogue
        return (node.op_type == "Add" and len(node.input) == 2 and any(i in constants for i in node.input)
                and any(producers.get(i) is not None and producers[i].name in chosen for i in node.input))

    found: Dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or any(i in constants for i in node.input):
            continue
        fused = [from_weighted(i) for i in node.input]
        if fused.count(True) == 1:
            found[node.name] = fused.index(False)
    return found


def _dedicate_qdq(proto: Any, reads_int8: Dict[str, Optional[Set[int]]]) -> int:
    """Rewire every input not in ``reads_int8`` (node name -> quantized input indices, None for
    all) to the float tensor instead of the Q/DQ pair the quantizer shares between all readers
    of an activation: only the weighted layers and the residual inputs of fused Adds read
    int8-rounded values; Softmax, LayerNorm, GELU, Reshape, Transpose and the rest read float
    (TensorRT's placement guide: Q/DQ in front of them blocks its fusions; ModelOpt keeps
    LayerNorm and the attention Softmax out of its quantizable partitions). Returns the inputs
    rewired; Q/DQ pairs nobody reads any more are removed."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    rewired = 0
    for node in proto.graph.node:
        if node.op_type in _QDQ_OPS:
            continue
        keep = reads_int8.get(node.name, set())
        for index, name in enumerate(node.input):
            if keep is None or index in keep:
                continue
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
                rewired += 1
    if rewired:  # pairs nobody reads any more
        changed = True
        while changed:
            used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
            changed = False
            for node in list(proto.graph.node):
                if node.op_type in _QDQ_OPS and not any(out in used for out in node.output):
                    proto.graph.node.remove(node)
                    changed = True
        names = {name for node in proto.graph.node for name in node.input}
        for init in list(proto.graph.initializer):
            if init.name not in names:
                proto.graph.initializer.remove(init)
    return rewired


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantizer's progress prints and its advice to pre-process (we keep the graph
    as exported on purpose: ORT's pre-processing fuses ops into ORT-only ones)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


class _Spool:
    """Calibration pairs written to disk in runs of ``run_pairs`` pairs (``.npz``, the feed of
    one ONNX Runtime run), so calibration and the per-layer error read them back one run at a
    time: memory is bounded by a run, not by the data set. Static-batch models get each run
    padded to their batch by repeating its pairs."""

    def __init__(self, workdir: str, contract: Any, run_pairs: int) -> None:
        self.workdir = workdir
        self.contract = contract
        self.run_pairs = max(1, int(run_pairs))
        self.files: List[str] = []
        self.rows: List[int] = []
        self.batches = 0

    @property
    def pairs(self) -> int:
        return sum(self.rows)

    def add(self, golden: np.ndarray, sample: np.ndarray) -> None:
        static = self.contract.static_batch
        n = int(golden.shape[0])
        if n == 0:
            return
        if static is not None and n > static:
            raise InputError("a calibration batch is larger than the model's static batch", expected=static, found=n)
        self.batches += 1
        step = static or self.run_pairs
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            feed = {}
            for name, array in ((self.contract.golden_input, golden[lo:hi]), (self.contract.sample_input, sample[lo:hi])):
                array = np.asarray(array)
                if static is not None and hi - lo != static:
                    array = np.take(array, np.arange(static) % (hi - lo), axis=0)
                feed[name] = np.ascontiguousarray(array, dtype=np.float32)
            path = os.path.join(self.workdir, "calibration-{:06d}.npz".format(len(self.files)))
            np.savez(path, **feed)
            self.files.append(path)
            self.rows.append(hi - lo)

    def feed(self, index: int) -> Dict[str, np.ndarray]:
        with np.load(self.files[index]) as data:
            return {name: data[name] for name in data.files}


def _reader(spool: _Spool, bar: Any) -> Any:
    """An ONNX Runtime CalibrationDataReader over the spooled runs. With ``CalibStridedMinMax``
    = 1 the quantizer asks for one run at a time (``set_range``) and folds it into its
    histograms before the next, so no run's intermediates outlive it."""
    from onnxruntime.quantization import CalibrationDataReader

    class SpoolReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start, self.end = 0, len(spool.files)

        def __len__(self) -> int:
            return len(spool.files)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end = int(start_index), min(int(end_index), len(spool.files))

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            if self.start >= self.end:
                return None
            feed = spool.feed(self.start)
            bar.update(spool.rows[self.start])
            self.start += 1
            return feed

    return SpoolReader()


@dataclass
class LayerError:
    """How far a quantized layer's output drifts from float32 (errors of the layers before it
    included): ``sqnr_db`` = 10 log10(sum ref^2 / sum (int8 - ref)^2) over ``pairs`` pairs."""

    node: str
    op_type: str
    tensor: str
    sqnr_db: float


def _session_exposing(model: Any, names: Sequence[str], threads: Optional[int]) -> Any:
    import onnxruntime as ort
    from onnx import helper

    present = {vi.name for vi in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def layer_errors(float_model: Any, quantized: Any, layers: Sequence[Tuple[str, str, str]], spool: _Spool,
                 max_pairs: int, bar: Any, threads: Optional[int] = None) -> Tuple[List[LayerError], int]:
    """Per-layer SQNR of ``quantized`` against ``float_model`` on the first ``max_pairs``
    spooled pairs, one run at a time (running sums only). ``layers``: (node, op type, output
    tensor) of the quantized layers, whose output names the two models share. Returns the
    errors (graph order) and the pairs used."""
    import onnx

    from changenet_trt.evaluation.validate import sqnr_db

    names = [tensor for _, _, tensor in layers]
    ref_session = _session_exposing(onnx.load_from_string(float_model.SerializeToString()), names, threads)
    test_session = _session_exposing(onnx.load_from_string(quantized.SerializeToString()), names, threads)
    signal = {name: 0.0 for name in names}
    noise = {name: 0.0 for name in names}
    used = 0
    for index in range(len(spool.files)):
        if used >= max_pairs:
            break
        feed = spool.feed(index)
        for name, ref, test in zip(names, ref_session.run(names, feed), test_session.run(names, feed)):
            ref = np.asarray(ref, dtype=np.float64)
            diff = np.asarray(test, dtype=np.float64) - ref
            signal[name] += float(np.sum(ref * ref))
            noise[name] += float(np.sum(diff * diff))
        used += spool.rows[index]
        bar.update(spool.rows[index])
    return [LayerError(node, op, tensor, sqnr_db(signal[tensor], noise[tensor])) for node, op, tensor in layers], used


def to_int8(
    model_path: PathLike,
    out_path: PathLike,
    calib_batches: Iterable[Batch],
    method: str = "entropy",
    make_source: Optional[SourceFactory] = None,
    op_types: Sequence[str] = DEFAULT_INT8_OPS,
    keep_stem_float: bool = True,
    exclude: Sequence[str] = (),
    percentile: float = DEFAULT_PERCENTILE,
    cutoff: Optional[float] = None,
    normalization: Any = None,
    batch_size: Optional[int] = None,
    contract_overrides: Optional[Dict[str, Any]] = None,
    threads: Optional[int] = None,
    origin: Optional[PathLike] = None,
    extra_made: Optional[Dict[str, Any]] = None,
    quantize_residuals: bool = True,
    run_pairs: int = CALIB_RUN_PAIRS,
    layer_pairs: int = LAYER_ERROR_PAIRS,
    calib_total: Optional[int] = None,
    progress: bool = True,
    progress_file: Any = None,
) -> PrecisionReport:
    """Write an explicitly quantized (QDQ) version of ``model_path`` to ``out_path``.

    ``calib_batches`` yields ``(golden, sample)`` float32 ``[n, C, H, W]`` preprocessed pairs
    (:func:`~changenet_trt.engine.calibration.dataset_batches` reads them from a TAO data set);
    they are spooled to disk and calibrated ``run_pairs`` pairs per ONNX Runtime run (memory
    bounded by a run, not by the data set; ``calib_total``: pairs expected, for the progress bars,
    tqdm on ``progress_file`` (default stderr), shown only on a terminal and with ``progress``).
    ``method``: ``entropy`` or ``percentile`` (``percentile`` of |x|). Int8 activations and
    weights are symmetric (zero points 0), weights per output channel, scales float32, biases
    float. Placement (TensorRT's Q/DQ placement recommendations, ModelOpt's ONNX PTQ): every
    input of the ``op_types`` nodes (Conv/MatMul/Gemm, the attention MatMuls included, so the
    Softmax output is quantized where it enters a MatMul), the residual input of Adds fused into
    those layers (:func:`residual_adds`, with ``quantize_residuals``), nothing in front of
    Softmax, LayerNorm, GELU, Reshape or Transpose, no layer output. The 3-channel stem
    convolution(s) stay float with ``keep_stem_float``, and ``exclude`` (names or patterns) too.
    Each quantized layer's output is compared with float32 on the first ``layer_pairs``
    calibration pairs (:class:`LayerError`, in ``report.layers`` and the metadata); the model's
    output is compared on ``make_source``'s held-back pairs (default: 64 synthetic pairs). It is
    written either way. ``origin``: as :func:`to_fp16`'s. ``extra_made``: more keys for the
    metadata :func:`read_made` returns (the build records the inputs it caches the model by).
    """
    import onnx
    from tqdm import tqdm

    from changenet_trt.contract import read_contract
    from changenet_trt.files import atomic_write, check_output_file

    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise missing_dependency("onnxruntime", "INT8 model preparation") from None
    if method not in INT8_METHODS:
        raise InputError("unknown calibration method", expected=" or ".join(INT8_METHODS), found=repr(method))
    if not 0 < percentile <= 100:
        raise InputError("the calibration percentile must be in (0, 100]", found=percentile)
    banned = sorted(set(op_types) & set(NO_QDQ_OPS))
    if banned:
        raise InputError("Q/DQ around these ops blocks TensorRT's fusions", expected="none of " + ", ".join(NO_QDQ_OPS),
                         found=", ".join(banned))
    source = os.fspath(model_path)
    output = check_output_file(out_path, "INT8 model", inputs=[source])
    overrides = {k: v for k, v in (contract_overrides or {}).items() if v is not None}
    contract = read_contract(source, **overrides)
    model, changes = _float_model_for_qdq(_load(source))
    stems = stem_convolutions(model) if keep_stem_float else []
    excluded = [n.name for n in model.graph.node if n.name in set(stems) | set(match_nodes(model, list(exclude)))]
    weighted = [n.name for n in model.graph.node if n.op_type in op_types and n.name not in excluded]
    residuals = residual_adds(model, weighted) if quantize_residuals else {}
    reads_int8: Dict[str, Optional[Set[int]]] = {name: None for name in weighted}
    reads_int8.update({name: {index} for name, index in residuals.items()})
    quantize_types = sorted(set(op_types) | ({"Add"} if residuals else set()))
    extra = {
        "ActivationSymmetric": True,  # zero point 0: TensorRT's int8 is symmetric
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT quantizes biases itself from the weight and input scales
        "CalibTensorRangeSymmetric": True,
        "CalibPercentile": float(percentile),
        # one spooled run per collect_data call: the histograms absorb it, its tensors are freed
        "CalibStridedMinMax": 1,
        # Q/DQ on inputs only, as TensorRT's explicit quantization expects: an int8 output would
        # requantize every logit and attention score
        "OpTypesToExcludeOutputQuantization": quantize_types,
    }
    disable = None if progress else True
    workdir = tempfile.mkdtemp(prefix="changenet-int8-")
    try:
        spool = _Spool(workdir, contract, run_pairs)
        with tqdm(total=calib_total, desc="reading calibration pairs", unit="pair", disable=disable, file=progress_file, leave=False) as bar:
            for golden, sample in calib_batches:
                spool.add(golden, sample)
                bar.update(int(golden.shape[0]))
        if not spool.files:
            raise BuildError("no calibration batch reached the quantizer", expected="at least one (golden, sample) batch",
                             found="0 batches")
        float_path = os.path.join(workdir, "float.onnx")
        quant_path = os.path.join(workdir, "int8.onnx")
        onnx.save(model, float_path)
        with tqdm(total=spool.pairs, desc="calibrating (onnxruntime)", unit="pair", disable=disable, file=progress_file,
                  leave=False) as bar:
            try:
                with _quiet():
                    quantize_static(
                        float_path, quant_path, _reader(spool, bar), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=quantize_types, nodes_to_quantize=sorted(reads_int8),
                        per_channel=True, reduce_range=False, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                        calibrate_method=(CalibrationMethod.Entropy if method == "entropy"
                                          else CalibrationMethod.Percentile),
                        extra_options=extra)
            except ChangeNetError:  # a data-set error raised inside the reader: the user's to fix
                raise
            except Exception as exc:
                raise BuildError("onnxruntime could not calibrate and quantize {}".format(source),
                                 found="{}: {}".format(type(exc).__name__, str(exc).strip().splitlines()[0]
                                                       if str(exc).strip() else "")) from None
        release_freed_memory()  # the calibration session's activations, before the next sessions
        quantized = onnx.load(quant_path)
        _dedicate_qdq(quantized, reads_int8)
        qdq = graph_precision(quantized)
        if not qdq["qdq"]:
            raise BuildError("the quantizer placed no Q/DQ in {}".format(source),
                             expected="Q/DQ on {} nodes outside the float stem".format(", ".join(op_types)),
                             found="none of those ops left to quantize")
        check_typed(quantized, "INT8 model")
        present = {node.name: node for node in quantized.graph.node}
        layers = [(name, present[name].op_type, present[name].output[0]) for name in
                  [n.name for n in model.graph.node if n.name in reads_int8] if name in present]
        with tqdm(total=min(layer_pairs, spool.pairs), desc="per-layer error", unit="pair", disable=disable, file=progress_file,
                  leave=False) as bar:
            errors, error_pairs = layer_errors(model, quantized, layers, spool, layer_pairs, bar, threads)
        release_freed_memory()
        made = {"precision": "int8", "format": "QDQ", "method": method, "calibration_batches": spool.batches,
                "calibration_pairs": spool.pairs, "op_types": list(op_types), "float_nodes": excluded,
                "stem_float": stems, "residual_adds": sorted(residuals), "opset": main_opset(quantized),
                "symmetric": True, "per_channel": True, "bias_quantized": False,
                "layer_sqnr_db": {e.node: round(e.sqnr_db, 2) for e in errors}, "layer_error_pairs": error_pairs}
        made.update(_provenance(source, origin))
        if method == "percentile":
            made["percentile"] = float(percentile)
        made.update(extra_made or {})
        _set_meta(quantized, made)
        payload = quantized.SerializeToString()
        with open(quant_path, "wb") as handle:
            handle.write(payload)
        del model, quantized
        release_freed_memory()
        validation, = _compare([quant_path], source, make_source or _default_source(), cutoff, normalization,
                               batch_size, overrides, 1e-2, 1e-2, threads)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    validation.test_model = output
    atomic_write(output, payload)
    details = {
        "calibration": "{} on {} pairs ({} batches, {} pairs per run)".format(
            method if method == "entropy" else "percentile {:g}".format(percentile), spool.pairs, spool.batches,
            spool.run_pairs),
        "Q/DQ on": "inputs of {} {} nodes, residual input of {} fused Adds (symmetric int8, per-channel weights, "
                   "float32 scales, float biases; none before Softmax/LayerNorm/GELU/Reshape/Transpose)".format(
                       len(weighted), "/".join(op_types), len(residuals)),
        "left float": ", ".join(excluded) + (" (3-channel stem convolution)" if stems else "") if excluded else "none",
        "opset": made["opset"],
        "raw-output SQNR vs float32": "{:.1f} dB".format(validation.raw.sqnr_db),
    }
    for index, change in enumerate(changes):
        details["change {}".format(index + 1)] = change
    return PrecisionReport(source, output, "int8", excluded, validation, user_nodes=[n for n in excluded if n not in stems],
                           details=details, layers=errors, layer_pairs=error_pairs)


# -- reading a graph -----------------------------------------------------------------------------
def graph_precision(model: Any) -> Dict[str, Any]:
    """What ``model`` (path or ModelProto) holds, for a TensorRT 8.x build to derive its flags.

    ``float16``: any float16 tensor (weight or activation) -> the FP16 flag; ``qdq``: any
    QuantizeLinear/DequantizeLinear -> the INT8 flag; ``fp32_nodes``: in a float16 graph, the
    nodes (other than Casts) that still compute in float32 -> layer precision FLOAT with
    OBEY_PRECISION_CONSTRAINTS (shape arithmetic, which stays float32 in every float16 model,
    is not listed). Node names are TensorRT's layer names (unnamed nodes: ``node_of_<output>``).
    """
    proto = _load(model)
    qdq = any(node.op_type in _QDQ_OPS for node in proto.graph.node)
    types = _float16_values(proto)
    float16 = any(t == _FLOAT16 for t in types.values())
    for node in proto.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == _FLOAT16 for a in node.attribute):
            float16 = True
    fp32_nodes: List[str] = []
    if float16:
        dependent = value_dependent(proto)
        for node in proto.graph.node:
            if node.op_type in ("Cast",) + _QDQ_OPS:
                continue
            if not any(name in dependent for name in node.output if name):
                continue  # shape arithmetic: TensorRT computes it as shape tensors, not as layers to constrain
            outs = [types.get(name, 0) for name in node.output if name]
            if _FLOAT in outs and _FLOAT16 not in outs:
                fp32_nodes.append(layer_name(node))
    return {"float16": float16, "qdq": qdq, "fp32_nodes": fp32_nodes}
