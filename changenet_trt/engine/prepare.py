"""ONNX preparation on the CPU: static batch -> dynamic batch, proven with ONNX Runtime.

TAO's shipped specs export a static batch (16). A TensorRT profile 1:16:32 needs a dynamic
batch, so :func:`prepare_model` rewrites the graph where that is safe:

* the batch dimension of both inputs and of the output becomes the symbol ``batch``;
* every constant that carries the batch is found by propagating the inputs' first dimension
  through the graph (:mod:`changenet_trt.engine.batch_analysis`), never by its value: Reshape
  shapes get ``0`` or ``-1`` there, Tile repeats, Expand shapes (also behind Equal/Where),
  ConstantOfShape, Range, Slice bounds and Concats of shapes get the runtime batch; the other
  16s (TAO's W/8) stay as they are;
* stale intermediate shapes (``value_info``) are dropped.

Then it PROVES the result: the same deterministic pairs go through the original at its own
batch and through the rewritten model at that batch and at 1, 3, 17 and 32; every output row
must match (``|new - old| <= atol + rtol * |old|``). A graph that mixes rows across the batch,
or hides the batch where no rewrite reaches, is refused with the reason and the node.
"""

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from changenet_trt.contract import META_PREPROCESS, ContractNames, ModelContract, load_onnx, read_contract
from changenet_trt.data.preprocess import get_normalization
from changenet_trt.engine.dynamic_batch import make_dynamic_batch
from changenet_trt.errors import BuildError
from changenet_trt.files import PathLike, atomic_write, check_output_file
from changenet_trt.threads import release_freed_memory

BATCH_SYMBOL = "batch"
DEFAULT_PROOF_BATCHES = (1, 3, 17, 32)
#: |prepared - original| <= ATOL + RTOL * |original|, elementwise, float32 on the CPU
ATOL = 1e-5
RTOL = 1e-4
#: batch the original runs at for the proof when it is already dynamic
DYNAMIC_REFERENCE_BATCH = 16



@dataclass
class BatchCheck:
    """One proof run: ``batch`` rows compared; worst absolute difference and its row."""

    batch: int
    max_abs_diff: float
    worst_row: int
    ok: bool


@dataclass
class PrepareReport:
    """What :func:`prepare_model` did and how it proved it."""

    source: str
    output: str
    original_batch: Optional[int]
    rewritten: bool
    changes: List[str] = field(default_factory=list)
    checks: List[BatchCheck] = field(default_factory=list)
    atol: float = ATOL
    rtol: float = RTOL
    contract: Optional[ModelContract] = None

    @property
    def tolerance(self) -> str:
        return "|prepared - original| <= {:g} + {:g} * |original|".format(self.atol, self.rtol)

    def summary_lines(self) -> List[str]:
        lines = []
        if self.original_batch is None:
            lines.append("{}: batch already dynamic; no rewrite needed".format(self.source))
        else:
            lines.append("{}: static batch {} rewritten to a dynamic batch".format(self.source, self.original_batch))
        lines += ["  " + c for c in self.changes]
        for check in self.checks:
            lines.append("  proof at batch {:>2}: max |diff| = {:.3g} (row {}) {}".format(
                check.batch, check.max_abs_diff, check.worst_row, "ok" if check.ok else "FAILED"))
        lines.append("  tolerance: {}".format(self.tolerance))
        lines.append("  wrote {}".format(self.output))
        return lines


# -- rewriting -----------------------------------------------------------------------------------
def make_dynamic(proto: Any, batch: int, contract: ModelContract) -> Tuple[Any, List[str]]:
    """A copy of ``proto`` with the static ``batch`` made dynamic; returns ``(model, changes)``.

    What carries the batch is found by propagation from the inputs' first dimension and rewritten
    (:mod:`changenet_trt.engine.dynamic_batch`); the inputs' and the output's first dimension
    become ``batch``; stale ``value_info`` is dropped. Raises BuildError naming the node when the
    batch reaches a place no rewrite can serve.
    """
    io_names = (contract.sample_input, contract.golden_input, contract.output)
    for vi in list(proto.graph.input) + list(proto.graph.output):
        if vi.name not in io_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value == batch) and \
                not dims[0].HasField("dim_param"):
            raise BuildError(
                "cannot make the batch of '{}' dynamic".format(vi.name),
                expected="batch {} in the first dimension".format(batch),
                found=[d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims],
            )
    model, changes = make_dynamic_batch(proto, batch, [contract.sample_input, contract.golden_input],
                                        [contract.output])
    graph = model.graph
    io_changes = []
    for vi in list(graph.input) + list(graph.output):
        if vi.name not in io_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].Clear()
            dims[0].dim_param = BATCH_SYMBOL
            io_changes.append("{} '{}': batch dimension {} -> '{}'".format(
                "output" if vi.name == contract.output else "input", vi.name, batch, BATCH_SYMBOL))
    changes = io_changes + changes
    if len(graph.value_info):
        changes.append("dropped {} intermediate shape annotation(s) (value_info) that named the old batch".format(
            len(graph.value_info)))
        del graph.value_info[:]
    return model, changes


# -- proving ----------------------------------------------------------------------------------------
def _session(model: Any) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures are reported as BuildError, not on stderr
    options.intra_op_num_threads = 2
    # no arena: each run returns its intermediates, so the peak is one batch's, not the largest kept
    options.enable_cpu_mem_arena = False
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def proof_pairs(contract: ModelContract, count: int, seed: int = 20240611) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic ``(golden, sample)`` ``[count, C, H, W]`` in the input dtype, normalised-image-like.

    Sample = golden + a row-dependent change, so every row has a different output.
    """
    rng = np.random.default_rng(seed)
    shape = (count,) + tuple(contract.input_shape)
    golden = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    strength = np.linspace(0.0, 1.5, count, dtype=np.float32).reshape(count, 1, 1, 1)
    sample = golden + strength * rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    dtype = np.dtype(contract.input_dtype)
    return golden.astype(dtype), sample.astype(dtype)


def _run_chunks(sess: Any, contract: ModelContract, golden: np.ndarray, sample: np.ndarray, chunk: int) -> np.ndarray:
    """Outputs for all rows, running ``chunk`` rows at a time (the last chunk padded by repetition)."""
    outs = []
    for lo in range(0, len(golden), chunk):
        hi = min(lo + chunk, len(golden))
        idx = np.arange(lo, lo + chunk)
        idx[idx >= hi] = hi - 1  # pad with the last real row; padded rows are dropped below
        feed = {contract.golden_input: golden[idx], contract.sample_input: sample[idx]}
        out = np.asarray(sess.run([contract.output], feed)[0])
        if out.ndim == 0 or out.shape[0] != chunk:
            raise BuildError(
                "the model returns {} output rows for a batch of {}: its output batch is not its input "
                "batch".format(out.shape[0] if out.ndim else 0, chunk))
        outs.append(out[: hi - lo])
    return np.concatenate(outs, axis=0)


def prove(
    original: Any,
    prepared: Any,
    contract: ModelContract,
    batches: Sequence[int] = DEFAULT_PROOF_BATCHES,
    atol: float = ATOL,
    rtol: float = RTOL,
    original_batch: Optional[int] = None,
) -> List[BatchCheck]:
    """Compare ``prepared`` at each of ``batches`` with ``original`` at its own batch, row by row.

    Raises BuildError with the reason when ONNX Runtime cannot run the prepared model at a
    batch or a row differs beyond the tolerance.
    """
    rows = max(batches)
    golden, sample = proof_pairs(contract, rows)
    ref_batch = original_batch or DYNAMIC_REFERENCE_BATCH
    try:
        reference = _run_chunks(_session(original), contract, golden, sample, ref_batch)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BuildError("onnxruntime cannot run the original model at batch {}".format(ref_batch),
                         found="{}: {}".format(type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")) from None
    # the original's session is gone before the prepared one starts: one model's memory at a time
    sess = _session(prepared)
    checks = []
    for batch in batches:
        try:
            out = _run_chunks(sess, contract, golden[:batch], sample[:batch], batch)
        except BuildError as exc:
            raise BuildError("the rewritten model is wrong at batch {}: {}".format(batch, exc)) from None
        except Exception as exc:
            raise BuildError(
                "the rewritten model does not run at batch {}: a node still assumes the old batch".format(batch),
                found="onnxruntime: {}".format(str(exc).splitlines()[0] if str(exc) else type(exc).__name__),
            ) from None
        ref = reference[:batch]
        if out.shape != ref.shape:
            raise BuildError("the rewritten model's output has the wrong shape at batch {}".format(batch),
                             expected=list(ref.shape), found=list(out.shape))
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64)).reshape(batch, -1)
        limit = atol + rtol * np.abs(ref.astype(np.float64)).reshape(batch, -1)
        row_diff = diff.max(axis=1)
        worst = int(np.argmax(row_diff))
        ok = bool((diff <= limit).all()) and bool(np.isfinite(out).all())
        checks.append(BatchCheck(batch, float(row_diff[worst]), worst, ok))
    del sess
    release_freed_memory()  # both sessions' pages back before the caller's next step
    return checks


# -- the command ------------------------------------------------------------------------------------
def prepare_model(
    model: PathLike,
    output: PathLike,
    batches: Sequence[int] = DEFAULT_PROOF_BATCHES,
    atol: float = ATOL,
    rtol: float = RTOL,
    names: Optional[ContractNames] = None,
) -> PrepareReport:
    """Check the contract, make the batch dynamic if it is static, prove it, write ``output``.

    A model that is already dynamic is proven the same way (against itself at batch 16) and
    written unchanged. Raises ModelContractError (not a ChangeNet model) or BuildError (the
    batch cannot be made dynamic, with the reason). ``names``: the user's
    :class:`~changenet_trt.contract.ContractNames`.
    """
    source = os.fspath(model) if not isinstance(model, onnx.ModelProto) else ""
    check_output_file(output, what="prepared ONNX file", inputs=[source] if source else [])
    proto = load_onnx(model)
    contract = read_contract(proto, names)
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise BuildError("proof batches must be positive", found=list(batches))
    static = contract.static_batch
    if static is None:
        prepared, changes = proto, []
    else:
        batches = sorted(set(batches) | {static})  # equal to the original at its own batch, too
        try:
            prepared, changes = make_dynamic(proto, static, contract)
        except BuildError as exc:
            raise BuildError("cannot make a dynamic batch for {}: {}".format(source, exc)) from None
    try:
        onnx.checker.check_model(prepared)
    except Exception as exc:
        raise BuildError("the rewritten model is not valid ONNX", found=str(exc).splitlines()[0]) from None
    try:
        checks = prove(proto, prepared, contract, batches, atol, rtol, original_batch=static)
    except BuildError as exc:
        raise BuildError("cannot prove a dynamic batch for {}: {}".format(source, exc)) from None
    failed = [c for c in checks if not c.ok]
    if failed:
        first = failed[0]
        why = ("the graph mixes rows across the batch (or carries the batch where no rewrite reaches)"
               if static else "the model's rows depend on the batch they are run in")
        raise BuildError(
            "cannot prove a dynamic batch for {}: outputs at batch {} differ from the original at batch {} "
            "({})".format(source, first.batch, static or DYNAMIC_REFERENCE_BATCH, why),
            expected="|prepared - original| <= {:g} + {:g} * |original| on every row".format(atol, rtol),
            found="max |diff| {:.3g} at row {}".format(first.max_abs_diff, first.worst_row),
        )
    out_path = os.fspath(output)
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    onnx.save(prepared, out_path)
    return PrepareReport(
        source=source,
        output=out_path,
        original_batch=static,
        rewritten=static is not None,
        changes=changes,
        checks=checks,
        atol=atol,
        rtol=rtol,
        contract=read_contract(prepared, names),
    )


# -- uint8 input: normalisation moved into the graph ------------------------------------------------
#: metadata key of a model whose inputs are uint8 pixels: "mean=r,g,b std=r,g,b" it applies itself
META_UINT8_NORMALIZATION = "changenet_trt.uint8_input"
#: |uint8 model - float model| <= UINT8_ATOL + RTOL * |float model|: the graph's Cast/Mul/Add are the
#: float path's own float32 operations, so the outputs agree to float32 rounding
UINT8_ATOL = 1e-6


@dataclass
class Uint8Report:
    """What :func:`add_uint8_input` wrote and how it proved it (worst output difference)."""

    source: str
    output: str
    normalization: str
    pairs: int
    max_abs_diff: float
    contract: Optional[ModelContract] = None

    def summary_lines(self) -> List[str]:
        return [
            "{}: inputs are now uint8 RGB pixels [B,3,H,W]; the graph applies '{}' normalisation".format(
                self.source, self.normalization),
            "  proof on {} pairs: max |uint8 model - float model| = {:.3g}".format(self.pairs, self.max_abs_diff),
            "  wrote {}".format(self.output),
        ]


def uint8_input_model(proto: Any, contract: ModelContract, normalization: Any) -> Any:
    """A copy of ``proto`` whose two image inputs are uint8 ``[B,3,H,W]`` RGB pixels.

    Each input gets ``Cast(float32) -> Mul(scale) -> Add(offset)`` in front (the same float32
    operations as :func:`changenet_trt.data.preprocess.write_normalized`, ``scale = 1/(255 std)``,
    ``offset = -mean/std``; then a Cast to float16 for a float16 model), and every node that read the
    input reads the normalised tensor. The batch (static or dynamic) is kept.
    """
    if contract.input_dtype not in ("float32", "float16"):
        raise BuildError("the model's inputs are not float images", expected="float32 or float16 inputs",
                         found=contract.input_dtype)
    norm = get_normalization(normalization)
    scale, offset = norm.scale_offset()
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    prefix = "uint8_input"
    graph.initializer.extend([
        numpy_helper.from_array(scale.reshape(1, 3, 1, 1), prefix + "/scale"),
        numpy_helper.from_array(offset.reshape(1, 3, 1, 1), prefix + "/offset"),
    ])
    front = []
    renamed = {}
    for vi in graph.input:
        if vi.name not in (contract.sample_input, contract.golden_input):
            continue
        name = vi.name
        pixels, scaled, normalised = name + "/float", name + "/scaled", name + "/normalized"
        front += [
            helper.make_node("Cast", [name], [pixels], to=TensorProto.FLOAT, name=prefix + "/" + name + "/cast"),
            helper.make_node("Mul", [pixels, prefix + "/scale"], [scaled], name=prefix + "/" + name + "/scale"),
            helper.make_node("Add", [scaled, prefix + "/offset"], [normalised], name=prefix + "/" + name + "/offset"),
        ]
        if contract.input_dtype == "float16":
            half = name + "/half"
            front.append(helper.make_node("Cast", [normalised], [half], to=TensorProto.FLOAT16,
                                          name=prefix + "/" + name + "/half"))
            normalised = half
        renamed[name] = normalised
        vi.type.tensor_type.elem_type = TensorProto.UINT8
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise BuildError("cannot add a uint8 front to a model with subgraphs (If/Loop/Scan)",
                                 found="node '{}' ({})".format(node.name, node.op_type))
    nodes = front + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    props = {p.key: p.value for p in model.metadata_props}
    props[META_UINT8_NORMALIZATION] = "mean={} std={}".format(
        ",".join(repr(float(v)) for v in norm.mean), ",".join(repr(float(v)) for v in norm.std))
    if isinstance(normalization, str):
        props[META_PREPROCESS] = normalization
    helper.set_model_props(model, props)
    return model


def add_uint8_input(
    model: PathLike,
    output: PathLike,
    normalization: Any = "tao",
    pairs: int = 8,
    atol: float = UINT8_ATOL,
    rtol: float = RTOL,
    names: Optional[ContractNames] = None,
) -> Uint8Report:
    """Write a copy of ``model`` that takes uint8 RGB pixels and normalises them in the graph.

    ``normalization``: a preset name (``tao``, ``deepstream``) or a
    :class:`~changenet_trt.data.preprocess.Normalization`. Clients then send uint8 NCHW (4x fewer
    bytes than float32). Proven before writing: ``pairs`` random uint8 pairs through the new model
    equal the original fed with the same pixels normalised on the host
    (``|diff| <= atol + rtol * |original|``); BuildError otherwise. The output is written whole
    or not at all. ``names``: as :func:`prepare_model`'s.
    """
    source = os.fspath(model)
    out_path = check_output_file(output, "uint8 model", inputs=[source])
    proto = load_onnx(source)
    contract = read_contract(proto, names)
    if contract.input_dtype == "uint8":
        raise BuildError("{} already takes uint8 inputs".format(source), expected="a float32 or float16 model")
    prepared = uint8_input_model(proto, contract, normalization)
    try:
        onnx.checker.check_model(prepared)
    except Exception as exc:
        raise BuildError("the uint8 model is not valid ONNX", found=str(exc).splitlines()[0]) from None
    norm = get_normalization(normalization)
    rng = np.random.default_rng(20240612)
    shape = (pairs,) + tuple(contract.input_shape)
    golden_px = rng.integers(0, 256, size=shape, dtype=np.uint8)
    sample_px = golden_px.copy()
    sample_px[pairs // 2:] = rng.integers(0, 256, size=(pairs - pairs // 2,) + shape[1:], dtype=np.uint8)
    scale, offset = norm.scale_offset()
    float_dtype = np.dtype(contract.input_dtype)

    def host_normalised(px: np.ndarray) -> np.ndarray:
        return (px.astype(np.float32) * scale + offset).astype(float_dtype)

    chunk = contract.static_batch or pairs
    try:
        reference = _run_chunks(_session(proto), contract, host_normalised(golden_px), host_normalised(sample_px), chunk)
        result = _run_chunks(_session(prepared), contract, golden_px, sample_px, chunk)
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError("onnxruntime cannot run the uint8 model",
                         found="{}: {}".format(type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")) from None
    diff = np.abs(result.astype(np.float64) - reference.astype(np.float64))
    limit = atol + rtol * np.abs(reference.astype(np.float64))
    worst = float(diff.max()) if diff.size else 0.0
    if not (diff <= limit).all():
        raise BuildError(
            "the uint8 model does not reproduce the float model on the same pixels",
            expected="|diff| <= {:g} + {:g} * |original|".format(atol, rtol),
            found="max |diff| {:.3g}".format(worst),
        )
    atomic_write(out_path, prepared.SerializeToString())
    label = normalization if isinstance(normalization, str) else "mean {} std {}".format(norm.mean, norm.std)
    return Uint8Report(source=source, output=out_path, normalization=label, pairs=pairs, max_abs_diff=worst,
                       contract=read_contract(prepared, names))

