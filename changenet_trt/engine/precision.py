"""Precision as a property of the ONNX model: what every typed (float16 or INT8) graph shares.

TensorRT 11 removed every builder-side precision control (FP16/INT8 flags, layer precision,
calibrators): a network is strongly typed and runs in the types its ONNX graph holds. So the
precision is decided before the build, on the CPU, and proven with ONNX Runtime:
:mod:`changenet_trt.engine.fp16` writes float16 models (:func:`~changenet_trt.engine.fp16.to_fp16`),
:mod:`changenet_trt.engine.int8` explicitly quantized (Q/DQ) ones
(:func:`~changenet_trt.engine.int8.to_int8`). This module holds what both share:

* the report (:class:`PrecisionReport`) and the proof against the float32 original (:func:`prove`);
* node naming, matching and the typed-graph check;
* how a typed model was made, recorded in its metadata (``changenet_trt.precision``,
  :func:`read_made`);
* :func:`graph_precision`: what a graph holds (float16 tensors, Q/DQ, float32 islands), from
  which a TensorRT 8.x build derives its flags.
"""

import fnmatch
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx

from changenet_trt.contract import ContractNames, load_onnx
from changenet_trt.data.pairs import SourceFactory, synthetic_source
from changenet_trt.engine.fp16_check import layer_name
from changenet_trt.errors import BuildError, InputError
from changenet_trt.evaluation.validate import format_report, validate_all
from changenet_trt.files import PathLike, file_sha256

Batch = Tuple[np.ndarray, np.ndarray]  # (golden, sample), each float32 [n, C, H, W]

#: metadata key holding how a typed model was made (JSON)
META_PRECISION = "changenet_trt.precision"
#: pairs the proof runs on when the caller gives no source (synthetic, rendered in memory)
DEFAULT_PROOF_PAIRS = 64
#: layers listed in the report, worst SQNR first
LAYERS_SHOWN = 10
#: calibration methods of the INT8 model (ONNX Runtime's quantizer)
INT8_METHODS = ("entropy", "percentile")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FLOAT16 = 10  # onnx.TensorProto.FLOAT16
FLOAT = 1


@dataclass
class PrecisionReport:
    """What :func:`~changenet_trt.engine.fp16.to_fp16` / :func:`~changenet_trt.engine.int8.to_int8` made and how it compares with the float32 model.

    ``fp32_nodes``: nodes kept float32 (fp16: flagged + user's; int8: excluded from Q/DQ);
    ``flagged``: those ``fp16-check`` flagged, with its reasons; ``validation``: the
    :class:`~changenet_trt.evaluation.validate.ValidationReport` of the typed model (test side)
    against the original (reference side); for float16 it is run with float16 storage
    emulated (:func:`~changenet_trt.engine.fp16.emulate_fp16`), and ``direct`` holds ONNX Runtime's run of the float16
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
def load_model(model: Any) -> Any:
    if hasattr(model, "graph"):
        return model

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


def record_made(proto: Any, made: Dict[str, Any]) -> None:
    for prop in list(proto.metadata_props):
        if prop.key == META_PRECISION:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key = META_PRECISION
    entry.value = json.dumps(made, sort_keys=True)


def provenance(source: str, origin: Optional[PathLike]) -> Dict[str, str]:
    """The sha256 of the model converted and, when it was itself made from another file (a
    static-batch original made dynamic first), that file's sha256 too."""
    made = {"source_sha256": file_sha256(source)}
    if origin is not None:
        made["origin_sha256"] = file_sha256(origin)
    return made


def read_made(model: Any) -> Optional[Dict[str, Any]]:
    """How a typed model was made (the JSON :func:`~changenet_trt.engine.fp16.to_fp16` / :func:`~changenet_trt.engine.int8.to_int8` stored), or None."""
    proto = load_model(model)
    for prop in proto.metadata_props:
        if prop.key == META_PRECISION:
            try:
                return json.loads(prop.value)
            except ValueError:
                return None
    return None


def default_source(pairs: int = DEFAULT_PROOF_PAIRS, seed: int = 0) -> SourceFactory:
    def make(contract: Any, normalization: Any) -> Any:
        return synthetic_source(pairs, contract.input_shape, normalization, seed=seed)

    return make


def prove(typed_paths: Sequence[str], original: str, make_source: SourceFactory, cutoff: Optional[float],
          normalization: Any, batch_size: Optional[int], names: Optional[ContractNames],
          atol: float, rtol: float, threads: Optional[int]) -> List[Any]:
    """``validate`` of each typed model (ONNX Runtime) against the float32 original, which runs once."""
    options = {"threads": threads} if threads else None
    return validate_all(list(typed_paths), original, make_source, cutoff=cutoff, atol=atol, rtol=rtol, max_flips=0,
                        backend="onnxruntime", batch_size=batch_size, normalization=normalization,
                        names=names, engine_options=options)


# -- reading a graph -----------------------------------------------------------------------------
#: ops whose output depends on the shape of their input, not on its values: where shape
#: arithmetic starts (TAO's var_mean exports Shape -> Gather -> ReduceProd -> Cast(float))
SHAPE_OPS = ("Shape", "Size")

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
        if node.op_type in SHAPE_OPS:
            continue
        if any(name in dependent for name in node.input if name):
            dependent.update(name for name in node.output if name)
    return dependent


def float_types(proto: Any) -> Dict[str, int]:
    """tensor name -> ONNX element type for every typed value of the graph (after inference)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    for init in proto.graph.initializer:
        types[init.name] = init.data_type
    return types


def graph_precision(model: Any) -> Dict[str, Any]:
    """What ``model`` (path or ModelProto) holds, for a TensorRT 8.x build to derive its flags.

    ``float16``: any float16 tensor (weight or activation) -> the FP16 flag; ``qdq``: any
    QuantizeLinear/DequantizeLinear -> the INT8 flag; ``fp32_nodes``: in a float16 graph, the
    nodes (other than Casts) that still compute in float32 -> layer precision FLOAT with
    OBEY_PRECISION_CONSTRAINTS (shape arithmetic, which stays float32 in every float16 model,
    is not listed). Node names are TensorRT's layer names (unnamed nodes: ``node_of_<output>``).
    """
    proto = load_model(model)
    qdq = any(node.op_type in QDQ_OPS for node in proto.graph.node)
    types = float_types(proto)
    float16 = any(t == FLOAT16 for t in types.values())
    for node in proto.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == FLOAT16 for a in node.attribute):
            float16 = True
    fp32_nodes: List[str] = []
    if float16:
        dependent = value_dependent(proto)
        for node in proto.graph.node:
            if node.op_type in ("Cast",) + QDQ_OPS:
                continue
            if not any(name in dependent for name in node.output if name):
                continue  # shape arithmetic: TensorRT computes it as shape tensors, not as layers to constrain
            outs = [types.get(name, 0) for name in node.output if name]
            if FLOAT in outs and FLOAT16 not in outs:
                fp32_nodes.append(layer_name(node))
    return {"float16": float16, "qdq": qdq, "fp32_nodes": fp32_nodes}
