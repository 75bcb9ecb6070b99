"""ONNX preparation on the CPU: static batch -> dynamic batch, proven with ONNX Runtime.

TAO's shipped specs export a static batch (16). A TensorRT profile 1:16:32 needs a dynamic
batch, so :func:`prepare_model` rewrites the graph where that is safe:

* the batch dimension of both inputs and of the output becomes the symbol ``batch``;
* Reshape shape constants that carry the batch (``[16, 8192]``) get ``-1`` (or ``0``,
  "copy the input's dim", when the constant already has a ``-1``) in the batch position;
* stale intermediate shapes (``value_info``) are dropped.

Then it PROVES the result: the same deterministic pairs go through the original at its own
batch and through the rewritten model at batches 1, 7 and 32; every output row must match
(``|new - old| <= atol + rtol * |old|``). A graph that mixes rows across the batch, or hides
the batch where no rewrite reaches, fails the proof and is refused with the reason.
"""

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from changenet_trt.contract import ModelContract, load_onnx, read_contract
from changenet_trt.errors import BuildError

BATCH_SYMBOL = "batch"
DEFAULT_PROOF_BATCHES = (1, 7, 32)
#: |prepared - original| <= ATOL + RTOL * |original|, elementwise, float32 on the CPU
ATOL = 1e-5
RTOL = 1e-4
#: batch the original runs at for the proof when it is already dynamic
DYNAMIC_REFERENCE_BATCH = 16

PathLike = Union[str, "os.PathLike[str]"]


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
def _constant_values(graph: Any) -> Dict[str, Tuple[str, Any]]:
    """Name -> ("initializer" | "constant", TensorProto) of every constant tensor in ``graph``."""
    out: Dict[str, Tuple[str, Any]] = {init.name: ("initializer", init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = ("constant", attr.t)
    return out


def make_dynamic(proto: Any, batch: int, contract: ModelContract) -> Tuple[Any, List[str]]:
    """A copy of ``proto`` with the static ``batch`` made dynamic; returns ``(model, changes)``.

    Raises BuildError when a batch-carrying place cannot be rewritten (e.g. an input whose
    batch is not the first dimension).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    changes: List[str] = []
    io_names = {contract.sample_input, contract.golden_input, contract.output}
    for vi in list(graph.input) + list(graph.output):
        if vi.name not in io_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        first = dims[0]
        if first.HasField("dim_value") and first.dim_value == batch:
            first.Clear()
            first.dim_param = BATCH_SYMBOL
            changes.append("{} '{}': batch dimension {} -> '{}'".format(
                "input" if vi in graph.input else "output", vi.name, batch, BATCH_SYMBOL))
        elif not first.HasField("dim_param"):
            raise BuildError(
                "cannot make the batch of '{}' dynamic".format(vi.name),
                expected="batch {} in the first dimension".format(batch),
                found=[d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims],
            )
    constants = _constant_values(graph)
    replaced: Dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape_name = node.input[1]
        if shape_name not in constants:
            continue
        if shape_name in replaced:
            node.input[1] = replaced[shape_name]
            continue
        values = numpy_helper.to_array(constants[shape_name][1]).astype(np.int64).reshape(-1)
        if values.size == 0 or int(values[0]) != batch:
            continue
        new_values = values.copy()
        # -1 infers the batch; if a -1 is already there, 0 copies the input's first dimension.
        new_values[0] = 0 if (values[1:] == -1).any() else -1
        new_name = shape_name + "_dynamic_batch"
        graph.initializer.append(numpy_helper.from_array(new_values, new_name))
        node.input[1] = new_name
        replaced[shape_name] = new_name
        changes.append("Reshape shape constant '{}' {} -> {}".format(
            shape_name, values.tolist(), new_values.tolist()))
    # drop constants nobody uses any more
    used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        if init.name in replaced and init.name not in used:
            graph.initializer.remove(init)
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output and node.output[0] in replaced and node.output[0] not in used:
            graph.node.remove(node)
    if len(graph.value_info):
        changes.append("dropped {} intermediate shape annotation(s) (value_info) that named the old batch".format(
            len(graph.value_info)))
        del graph.value_info[:]
    return model, changes


def _batch_constants(proto: Any, batch: int) -> List[str]:
    """Constants (outside Reshape shapes we rewrote) that still contain ``batch`` -- for the reason text."""
    from onnx import numpy_helper

    found = []
    consumers: Dict[str, List[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append("{} '{}'".format(node.op_type, node.name or node.output[0]))
    for name, (_, tensor) in _constant_values(proto.graph).items():
        if tensor.data_type not in (6, 7):  # int32, int64: shapes and indices
            continue
        values = numpy_helper.to_array(tensor).reshape(-1)
        if 0 < values.size <= 8 and batch in values.tolist():
            found.append("'{}' {} used by {}".format(name, values.tolist(), ", ".join(consumers.get(name, ["nothing"]))))
    return found


# -- proving ----------------------------------------------------------------------------------------
def _session(model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures are reported as BuildError, not on stderr
    options.intra_op_num_threads = 2
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
    return checks


# -- the command ------------------------------------------------------------------------------------
def prepare_model(
    model: PathLike,
    output: PathLike,
    batches: Sequence[int] = DEFAULT_PROOF_BATCHES,
    atol: float = ATOL,
    rtol: float = RTOL,
    sample_input: Optional[str] = None,
    golden_input: Optional[str] = None,
    output_name: Optional[str] = None,
    output_kind: Optional[str] = None,
) -> PrepareReport:
    """Check the contract, make the batch dynamic if it is static, prove it, write ``output``.

    A model that is already dynamic is proven the same way (against itself at batch 16) and
    written unchanged. Raises ModelContractError (not a ChangeNet model) or BuildError (the
    batch cannot be made dynamic, with the reason).
    """
    import onnx

    source = os.fspath(model)
    proto = load_onnx(source)
    contract = read_contract(proto, sample_input=sample_input, golden_input=golden_input,
                             output=output_name, output_kind=output_kind)
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise BuildError("proof batches must be positive", found=list(batches))
    static = contract.static_batch
    if static is None:
        prepared, changes = proto, []
    else:
        prepared, changes = make_dynamic(proto, static, contract)
    try:
        onnx.checker.check_model(prepared)
    except Exception as exc:
        raise BuildError("the rewritten model is not valid ONNX", found=str(exc).splitlines()[0]) from None
    try:
        checks = prove(proto, prepared, contract, batches, atol, rtol, original_batch=static)
    except BuildError as exc:
        leftovers = _batch_constants(prepared, static) if static else []
        hint = "; constants that still contain {}: {}".format(static, "; ".join(leftovers)) if leftovers else ""
        raise BuildError("cannot prove a dynamic batch for {}: {}{}".format(source, exc, hint)) from None
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
        contract=read_contract(prepared, sample_input=sample_input, golden_input=golden_input,
                               output=output_name, output_kind=output_kind),
    )
