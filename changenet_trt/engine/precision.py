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
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from changenet_trt.engine.fp16_check import DEFAULT_MAX_REL_ERROR, FP16_MAX, FP16_MIN_SUBNORMAL, layer_name
from changenet_trt.errors import BuildError, ChangeNetError, InputError, missing_dependency

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
NO_QDQ_OPS = ("Softmax", "Reshape", "Transpose")
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


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    made = {"source_sha256": _sha256(source)}
    if origin is not None:
        made["origin_sha256"] = _sha256(os.fspath(origin))
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


def _compare(typed_path: str, original: str, make_source: SourceFactory, cutoff: Optional[float],
             normalization: Any, batch_size: Optional[int], contract_overrides: Optional[Dict[str, Any]],
             atol: float, rtol: float, threads: Optional[int]) -> Any:
    """``validate`` of the typed model (ONNX Runtime) against the float32 original."""
    from changenet_trt.evaluation.validate import validate

    options = {"threads": threads} if threads else None
    return validate(typed_path, original, make_source, cutoff=cutoff, atol=atol, rtol=rtol, max_flips=0,
                    backend="onnxruntime", batch_size=batch_size, normalization=normalization,
                    contract_overrides=contract_overrides, engine_options=options)


# -- float16 -------------------------------------------------------------------------------------
def convert_fp16(proto: Any, fp32_nodes: Sequence[str] = ()) -> Any:
    """A float16 copy of ``proto`` (nodes named first) with ``fp32_nodes`` kept float32.

    Inputs and outputs stay float32 (Casts at the edges); weights are clamped to the float16
    range only where they leave it (|x| > 65504 -> 65504, 0 < |x| < 2**-24 -> 2**-24), not at
    onnxconverter-common's defaults (1e4, 1e-7), which would change ordinary weights. No proof:
    see :func:`to_fp16`.
    """
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise missing_dependency("onnxconverter_common", "FP16 model preparation") from None
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    name_nodes(model)
    blocked = list(fp32_nodes)
    blocked += [n for n in _constants_of(model, blocked) if n not in blocked]
    with warnings.catch_warnings():
        # it warns for every weight it clamps, and for the limit itself (2**-24 is exact in float16)
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model, min_positive_val=FP16_MIN_SUBNORMAL, max_finite_val=FP16_MAX, keep_io_types=True,
            node_block_list=blocked)
    return converted


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
) -> PrecisionReport:
    """Write a float16 version of ``model_path`` to ``out_path`` after proving it on real pairs.

    ``fp32_nodes``: node names or fnmatch patterns the user keeps float32 (``@FILE`` lists are
    read by the caller); with ``check_ranges`` the nodes ``fp16-check`` flags on the pairs are
    added. ``make_source(contract, normalization)`` gives the pairs
    (:func:`~changenet_trt.evaluation.validate.dataset_source` for a TAO data set; default:
    64 synthetic pairs). The float16 model must pass ONNX's full check and strict type
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
    original = name_nodes(_load(source))
    overrides = {k: v for k, v in (contract_overrides or {}).items() if v is not None}
    contract = read_contract(source, **overrides)
    make_source = make_source or _default_source()
    user_nodes = match_nodes(original, list(fp32_nodes))
    flagged: Dict[str, List[str]] = {}
    if check_ranges:
        from changenet_trt.data.preprocess import get_normalization

        pairs = make_source(contract, get_normalization(normalization))
        try:
            report = check_model(source, source_batches(pairs, contract.static_batch or PROOF_BATCH,
                                                        contract.input_shape),
                                 contract=contract, max_rel_error=max_rel_error, threads=threads)
        finally:
            pairs.close()
        flagged = {layer.layer: list(layer.reasons) for layer in report.layers}
    present = {node.name for node in original.graph.node}
    unknown = sorted(set(flagged) - present)
    if unknown:  # fp16-check names layers as TensorRT does; after name_nodes they are node names
        raise BuildError("fp16-check flagged layers that are not nodes of the model", found=", ".join(unknown))
    keep = [node.name for node in original.graph.node if node.name in flagged or node.name in user_nodes]
    converted = convert_fp16(original, keep)
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
        validation = _compare(emulated, source, make_source, cutoff, normalization, batch_size, overrides,
                              atol, rtol, threads)
        direct = _compare(candidate, source, make_source, cutoff, normalization, batch_size, overrides,
                          atol, rtol, threads)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    validation.test_model = "{} (float16 storage emulated)".format(output)
    direct.test_model = output
    result = PrecisionReport(source, output, "fp16", keep, validation, flagged=flagged, user_nodes=user_nodes,
                             details={"float32 nodes": "{} ({} flagged by fp16-check, {} yours)".format(
                                 len(keep), len(flagged), len(user_nodes)),
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


def _dedicate_qdq(proto: Any, op_types: Sequence[str]) -> int:
    """Rewire nodes that are not quantized (Softmax, Reshape, Transpose, LayerNorm, Add...) to
    read the float tensor instead of a Q/DQ pair the quantizer shares between all consumers of
    an activation: only ``op_types`` read int8-rounded values, and no Q/DQ sits in front of a
    Softmax/Reshape/Transpose (where it blocks TensorRT's fusions). Returns the rewired inputs."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    rewired = 0
    for node in proto.graph.node:
        if node.op_type in op_types or node.op_type in _QDQ_OPS:
            continue
        for index, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
                rewired += 1
    if rewired:  # pairs nobody reads any more
        used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
        changed = True
        while changed:
            changed = False
            for node in list(proto.graph.node):
                if node.op_type in _QDQ_OPS and not any(out in used for out in node.output):
                    proto.graph.node.remove(node)
                    changed = True
            used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
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


def _reader(batches: Iterable[Batch], contract: Any) -> Any:
    """An ONNX Runtime CalibrationDataReader over ``(golden, sample)`` batches (padded by
    repetition to a static batch)."""
    from onnxruntime.quantization import CalibrationDataReader

    static = contract.static_batch

    class PairReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)
            self.count = 0
            self.pairs = 0

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            for golden, sample in self.batches:
                n = int(golden.shape[0])
                if n == 0:
                    continue
                feed = {}
                for name, array in ((contract.golden_input, golden), (contract.sample_input, sample)):
                    if static is not None and n != static:
                        if n > static:
                            raise InputError("a calibration batch is larger than the model's static batch",
                                             expected=static, found=n)
                        array = np.take(np.asarray(array), np.arange(static) % n, axis=0)
                    feed[name] = np.ascontiguousarray(array, dtype=np.float32)
                self.count += 1
                self.pairs += n
                return feed
            return None

    return PairReader()


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
) -> PrecisionReport:
    """Write an explicitly quantized (QDQ) version of ``model_path`` to ``out_path``.

    ``calib_batches`` yields ``(golden, sample)`` float32 ``[n, C, H, W]`` preprocessed pairs
    (:func:`~changenet_trt.engine.calibration.dataset_batches` reads them from a TAO data set).
    ``method``: ``entropy`` or ``percentile`` (``percentile`` of |x|). Int8 activations and
    weights are symmetric (zero points 0), weights per output channel, scales float32, biases
    float; ``op_types`` get Q/DQ (never Softmax/Reshape/Transpose); the 3-channel stem
    convolution(s) stay float with ``keep_stem_float``, and ``exclude`` (names or patterns) too.
    The result is compared with the float32 model on ``make_source``'s held-back pairs
    (default: 64 synthetic pairs) and reported; it is written either way. ``origin``: as
    :func:`to_fp16`'s. ``extra_made``: more keys for the
    metadata :func:`read_made` returns (the build records the inputs it caches the model by).
    """
    import onnx

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
    extra = {
        "ActivationSymmetric": True,  # zero point 0: TensorRT's int8 is symmetric
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT quantizes biases itself from the weight and input scales
        "CalibTensorRangeSymmetric": True,
        "CalibPercentile": float(percentile),
        # Q/DQ on the inputs of the weighted layers only, as TensorRT's explicit quantization
        # expects: an int8 output would requantize every logit and attention score
        "OpTypesToExcludeOutputQuantization": list(op_types),
    }
    reader = _reader(calib_batches, contract)
    workdir = tempfile.mkdtemp(prefix="changenet-int8-")
    try:
        float_path = os.path.join(workdir, "float.onnx")
        quant_path = os.path.join(workdir, "int8.onnx")
        onnx.save(model, float_path)
        try:
            with _quiet():
                quantize_static(
                    float_path, quant_path, reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types), per_channel=True, reduce_range=False,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                    calibrate_method=CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.Percentile,
                    extra_options=extra)
        except ChangeNetError:  # a data-set error raised inside the reader: the user's to fix
            raise
        except Exception as exc:
            raise BuildError("onnxruntime could not calibrate and quantize {}".format(source),
                             found="{}: {}".format(type(exc).__name__, str(exc).strip().splitlines()[0]
                                                   if str(exc).strip() else "")) from None
        if reader.count == 0:
            raise BuildError("no calibration batch reached the quantizer", expected="at least one (golden, sample) batch",
                             found="0 batches")
        quantized = onnx.load(quant_path)
        _dedicate_qdq(quantized, op_types)
        qdq = graph_precision(quantized)
        if not qdq["qdq"]:
            raise BuildError("the quantizer placed no Q/DQ in {}".format(source),
                             expected="Q/DQ on {} nodes outside the float stem".format(", ".join(op_types)),
                             found="none of those ops left to quantize")
        check_typed(quantized, "INT8 model")
        made = {"precision": "int8", "format": "QDQ", "method": method, "calibration_batches": reader.count,
                "calibration_pairs": reader.pairs, "op_types": list(op_types), "float_nodes": excluded,
                "stem_float": stems, "opset": main_opset(quantized), "symmetric": True, "per_channel": True,
                "bias_quantized": False}
        made.update(_provenance(source, origin))
        if method == "percentile":
            made["percentile"] = float(percentile)
        made.update(extra_made or {})
        _set_meta(quantized, made)
        payload = quantized.SerializeToString()
        with open(quant_path, "wb") as handle:
            handle.write(payload)
        validation = _compare(quant_path, source, make_source or _default_source(), cutoff, normalization,
                              batch_size, overrides, 1e-2, 1e-2, threads)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    validation.test_model = output
    atomic_write(output, payload)
    details = {
        "calibration": "{} on {} pairs ({} batches)".format(
            method if method == "entropy" else "percentile {:g}".format(percentile), reader.pairs, reader.count),
        "Q/DQ on": ", ".join(op_types) + " (symmetric int8, per-channel weights, float32 scales, float biases)",
        "left float": ", ".join(excluded) + (" (3-channel stem convolution)" if stems else "") if excluded else "none",
        "opset": main_opset(quantized),
    }
    for index, change in enumerate(changes):
        details["change {}".format(index + 1)] = change
    return PrecisionReport(source, output, "int8", excluded, validation, user_nodes=[n for n in excluded if n not in stems],
                           details=details)


# -- reading a graph -----------------------------------------------------------------------------
def graph_precision(model: Any) -> Dict[str, Any]:
    """What ``model`` (path or ModelProto) holds, for a TensorRT 8.x build to derive its flags.

    ``float16``: any float16 tensor (weight or activation) -> the FP16 flag; ``qdq``: any
    QuantizeLinear/DequantizeLinear -> the INT8 flag; ``fp32_nodes``: in a float16 graph, the
    nodes (other than Casts) that still compute in float32 -> layer precision FLOAT with
    OBEY_PRECISION_CONSTRAINTS. Node names are TensorRT's layer names (unnamed nodes:
    ``node_of_<output>``).
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
        for node in proto.graph.node:
            if node.op_type in ("Cast",) + _QDQ_OPS:
                continue
            outs = [types.get(name, 0) for name in node.output if name]
            if _FLOAT in outs and _FLOAT16 not in outs:
                fp32_nodes.append(layer_name(node))
    return {"float16": float16, "qdq": qdq, "fp32_nodes": fp32_nodes}
