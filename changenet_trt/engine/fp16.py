"""Float16 models: float weights and activations become float16, made and proven on the CPU.

:func:`to_fp16`: the model's inputs and outputs stay float32; the nodes ``fp16-check`` flags on
real pairs (values beyond +-65504, or too much float16 rounding) plus the user's list stay
float32, with the constants they read; shape arithmetic stays float32 (:func:`plan_fp16`). The
float16 model and the original then run on the same pairs; a model whose decisions flip is
refused unless forced. What the model holds and how it was made: :mod:`.precision`.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from changenet_trt.contract import ContractNames, read_contract
from changenet_trt.data.pairs import SourceFactory
from changenet_trt.data.preprocess import get_normalization
from changenet_trt.engine.fp16_check import (
    DEFAULT_MAX_REL_ERROR,
    FP16_MAX,
    FP16_MIN_SUBNORMAL,
    check_model,
    source_batches,
)
from changenet_trt.engine.precision import (
    FLOAT,
    FLOAT16,
    SHAPE_OPS,
    PrecisionReport,
    check_typed,
    default_source,
    float_types,
    load_model,
    main_opset,
    match_nodes,
    name_nodes,
    prove,
    provenance,
    record_made,
    value_dependent,
)
from changenet_trt.errors import BuildError
from changenet_trt.files import PathLike, atomic_write, check_output_file

#: batch of the range check (fp16-check) when the model's batch is dynamic
PROOF_BATCH = 16

#: ops kept float32 whatever their schema allows: ones whose output type comes from an attribute
#: (random generators, EyeLike) and the ones NVIDIA ModelOpt's AutoCast never lowers
#: (modelopt/onnx/autocast/precisionconverter.py, OP_TYPES_NOT_SUPPORTED_IN_LOW_PRECISION:
#: Upsample, NonMaxSuppression, Celu)
_FLOAT32_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                "Multinomial", "EyeLike", "Upsample", "NonMaxSuppression", "Celu")
_HALF_TYPE = "tensor(float16)"
#: ops that only move a weight's elements about (exact in float16): a weight read through them
#: follows their readers' type
WEIGHT_LAYOUT_OPS = ("Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _elem_types(proto: Any) -> Dict[str, int]:
    """tensor name -> ONNX element type, as far as shape inference (non-strict) knows it."""
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
        floats = [n for n in list(node.input) + list(node.output) if n and types.get(n) == FLOAT]
        if not floats or node.op_type == "Constant":
            continue
        if node.name in blocked:
            plan.kept.append(node.name)
        elif not any(name in dependent for name in node.output if name):
            plan.shape_math.append(node.name)
        elif (node.op_type in _FLOAT32_OPS or node.domain not in ("", "ai.onnx")
              or any(a.type in (5, 10) for a in node.attribute)):  # GRAPH, GRAPHS: If/Loop/Scan bodies
            plan.unsupported.append(node.name)
        elif node.op_type == "Cast" and next((a.i for a in node.attribute if a.name == "to"), 0) != FLOAT:
            # a value turned into an index (Cast to int) reads float32, as the float model does
            plan.unsupported.append(node.name)
        else:
            ins, outs = _half_slots(node, opset)
            slots = [s for n, s in zip(list(node.input) + list(node.output), ins + outs) if n and types.get(n) == FLOAT]
            if any(s is None for s in slots):
                plan.unsupported.append(node.name)
            else:
                plan.half.append(node.name)
    # a weight only moved about on its way to its readers is the weight itself: float16 when all
    # its readers are. An Identity (TorchScript writes one per reuse of a shared module's weight,
    # e.g. the Siamese backbone's second call), and in an export without constant folding (TAO
    # 5.x, opset 12) the Transpose of every Linear weight, chained too. Kept float32 as constant
    # folding, they would leave the weight stored float32 behind a Cast to float16.
    half = set(plan.half)
    folding = set(plan.shape_math)
    weights = {init.name for init in proto.graph.initializer}
    weights |= {n.output[0] for n in proto.graph.node if n.op_type == "Constant" and n.output}
    readers: Dict[str, List[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    moves = []
    for node in proto.graph.node:  # graph order: a chain's links follow its weight
        if node.op_type in WEIGHT_LAYOUT_OPS and node.name in folding and node.input and node.input[0] in weights:
            moves.append(node)
            weights.add(node.output[0])  # the moved weight is a weight for the next link
    moved = []
    for node in reversed(moves):  # readers first
        if readers.get(node.output[0]) and all(r in half for r in readers[node.output[0]]):
            half.add(node.name)
            moved.append(node.name)
    if moved:
        plan.shape_math = [n for n in plan.shape_math if n not in half]
        plan.half += moved[::-1]
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
            if name and types.get(name) == FLOAT:
                produced[name] = FLOAT16 if outs[index] else FLOAT
        for index, name in enumerate(node.input):
            if name and types.get(name) == FLOAT and node.op_type not in SHAPE_OPS:  # those read any type
                wants.append((node, index, name, FLOAT16 if ins[index] else FLOAT))
        if node.name in half and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = FLOAT16
    # 2. constants (initializers and Constant nodes) take the type their readers want
    constants: Dict[str, Any] = {init.name: init for init in graph.initializer if init.data_type == FLOAT}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    constants[node.output[0]] = attr.t
    demanded: Dict[str, Set[int]] = {}
    for _, _, name, want in wants:
        if name in constants:
            demanded.setdefault(name, set()).add(want)
    renamed: Dict[Tuple[str, int], str] = {}
    for name, kinds in demanded.items():
        if kinds != {FLOAT16}:
            if FLOAT16 in kinds:  # read both ways: a float16 copy beside the float32 original
                copy = fresh(name + "/fp16", taken)
                graph.initializer.append(numpy_helper.from_array(_half_values(numpy_helper.to_array(constants[name])), copy))
                renamed[(name, FLOAT16)] = copy
            continue
        tensor = constants[name]
        tensor.CopyFrom(numpy_helper.from_array(_half_values(numpy_helper.to_array(tensor)), tensor.name))
        produced[name] = FLOAT16
    casts: Dict[int, List[Any]] = {}  # id of the producing node (0: graph inputs) -> Casts after it
    # 3. graph outputs stay float32: a float16 producer writes <output>/fp16, a Cast writes the output
    outputs = {vi.name for vi in graph.output}
    for node in graph.node:
        for index, name in enumerate(node.output):
            if name in outputs and produced.get(name) == FLOAT16:
                inner = fresh(name + "/fp16", taken)
                node.output[index] = inner
                produced[inner] = FLOAT16
                renamed[(inner, FLOAT)] = name
                back = helper.make_node("Cast", [inner], [name], to=FLOAT, name=fresh(name + "/to_fp32", node_names))
                casts.setdefault(id(node), []).append(back)
                for other in graph.node:
                    for i, used in enumerate(other.input):
                        if used == name:
                            other.input[i] = inner
                wants[:] = [(n, i, inner if t == name else t, w) for n, i, t, w in wants]
    # 4. a Cast wherever a reader wants another type than the tensor has
    producer_of = {out: node for node in graph.node for out in node.output if out}
    for node, index, name, want in wants:
        have = produced.get(name, FLOAT)
        if have == want:
            continue
        key = (name, want)
        if key not in renamed:
            suffix = "/to_fp16" if want == FLOAT16 else "/to_fp32"
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
            if produced.get(vi.name) == FLOAT16:
                vi.type.tensor_type.elem_type = FLOAT16
            kept.append(vi)
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return model


def _weight_share(typed: Any) -> str:
    """How many of the MatMul/Conv/Gemm weights (initializer elements, through the ops that
    only move them about, and a Cast, too) of ``typed`` are float16, as stored."""
    sizes = {init.name: (init.data_type, int(np.prod(init.dims)) if len(init.dims) else 1)
             for init in typed.graph.initializer}
    for node in typed.graph.node:
        if node.op_type in WEIGHT_LAYOUT_OPS + ("Cast",) and node.input and node.input[0] in sizes:
            sizes[node.output[0]] = sizes[node.input[0]]
    half = total = 0
    for node in typed.graph.node:
        if node.op_type in ("MatMul", "Conv", "Gemm", "ConvTranspose"):
            for name in node.input[1:2]:
                if name in sizes:
                    dtype, count = sizes[name]
                    total += count
                    half += count if dtype == FLOAT16 else 0
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
    types = float_types(typed)
    model = onnx.ModelProto()
    model.CopyFrom(typed)
    graph = model.graph

    def widen_tensor(tensor: Any) -> None:
        if tensor.data_type == FLOAT16:
            values = numpy_helper.to_array(tensor).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))

    for init in graph.initializer:
        widen_tensor(init)
    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                widen_tensor(attr.t)
            elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == FLOAT16:
                attr.i = FLOAT
        rounded = []
        for index, name in enumerate(node.output):
            if name and types.get(name) == FLOAT16:
                node.output[index] = name + "/fp32"
                rounded.append(name)
        nodes.append(node)
        for name in rounded:
            nodes.append(helper.make_node("Cast", [name + "/fp32"], [name + "/fp16"], to=FLOAT16,
                                          name=name + "/round_fp16"))
            nodes.append(helper.make_node("Cast", [name + "/fp16"], [name], to=FLOAT, name=name + "/back_fp32"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model


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
    names: Optional[ContractNames] = None,
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
    (:func:`~changenet_trt.data.pairs.dataset_source` for a TAO data set; default:
    64 synthetic pairs); ``analysis_source``, when given, gives fp16-check's pairs instead
    (:mod:`.typed` analyses a data set's first pairs and proves on the rest). The float16 model must pass ONNX's full check and strict type
    inference, then runs beside the original on the same pairs; if any decision flips at the
    cutoff the model is refused (BuildError naming the pairs) unless ``force``. The proof runs
    twice: with float16 storage emulated (:func:`emulate_fp16`; ONNX Runtime's CPU kernels
    would otherwise compute most float16 ops in float32 and hide overflow) and on the float16
    file itself. ``origin``: the file ``model_path`` was made from (e.g. the static-batch
    original of a dynamic model); its sha256 is recorded beside the source's. ``extra_made``:
    more keys for the metadata :func:`~changenet_trt.engine.precision.read_made` returns (the build records the inputs it caches
    the model by).
    """
    source = os.fspath(model_path)
    output = check_output_file(out_path, "float16 model", inputs=[source])
    names = ContractNames.of(names)
    contract = read_contract(source, names)
    make_source = make_source or default_source()
    # the user's patterns are checked before minutes of analysis; the model (with its weights) is
    # loaded again after it, so it is not resident while fp16-check holds a run's activations
    user_nodes = match_nodes(name_nodes(load_model(source)), list(fp32_nodes))
    flagged: Dict[str, List[str]] = {}
    if check_ranges:
        pairs = (analysis_source or make_source)(contract, get_normalization(normalization))
        try:
            report = check_model(source, source_batches(pairs, contract.static_batch or PROOF_BATCH,
                                                        contract.input_shape),
                                 contract=contract, max_rel_error=max_rel_error, threads=threads,
                                 total=pairs.count, progress=progress, progress_file=progress_file)
        finally:
            pairs.close()
        flagged = {layer.layer: list(layer.reasons) for layer in report.layers}
    original = name_nodes(load_model(source))
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
    made.update(provenance(source, origin))
    made.update(extra_made or {})
    record_made(converted, made)
    payload = converted.SerializeToString()
    workdir = tempfile.mkdtemp(prefix="changenet-fp16-")
    try:
        candidate = os.path.join(workdir, "float16.onnx")
        emulated = os.path.join(workdir, "float16-storage.onnx")
        with open(candidate, "wb") as handle:
            handle.write(payload)
        onnx.save(emulate_fp16(converted), emulated)
        validation, direct = prove([emulated, candidate], source, make_source, cutoff, normalization, batch_size,
                                   names, atol, rtol, threads)
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
