"""FP16 range analysis on CPU: which tensors of an ONNX model would not survive float16.

TensorRT's FP16 mode stores activations as float16 (max 65504, smallest normal 6.1e-5,
smallest subnormal 6.0e-8). Transformer blocks (LayerNorm variances, Softmax inputs,
attention logits) can exceed that range on real images, and tensors whose values all sit
near zero lose most of their digits. This module runs the model with ONNX Runtime in float32
with every intermediate float tensor exposed as an extra graph output, on real preprocessed
pairs, and measures per tensor:

* ``max_abs`` and how many values exceed 65504 (they become inf in float16);
* the float16 relative error ``||x - fp16(x)|| / ||x||`` (L2 over all values and pairs;
  plain rounding of normal values gives about 3e-4);
* how many non-zero values underflow to 0 or land in the subnormal range.

Tensors out of range (or above ``max_rel_error``) name the ONNX nodes that must run in float32:
the producer, and every consumer (TensorRT would otherwise cast the value back to float16 at
the consumer's input). Layer names follow TensorRT's ONNX parser: the node's name, or
``node_of_<first output>`` for an unnamed node. :func:`write_layer_list` writes them in the
format ``build --fp32-layers @FILE`` reads.
"""

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from tqdm import tqdm

from changenet_trt.contract import ModelContract, load_onnx, read_contract
from changenet_trt.engine.prepare import make_dynamic, prove
from changenet_trt.errors import BuildError, InputError, ModelContractError
from changenet_trt.files import atomic_write, check_output_file, write_json_report
from changenet_trt.threads import release_freed_memory

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 2**-14 = 6.1e-5
FP16_MIN_SUBNORMAL = 2.0 ** -24  # 6.0e-8
DEFAULT_MAX_REL_ERROR = 1e-2

_FLOAT_TYPES = (1, 10, 11, 16)  # onnx FLOAT, FLOAT16, DOUBLE, BFLOAT16
_UPDATE_CHUNK = 1 << 20  # elements per statistics slice
#: pairs per ONNX Runtime run while every activation is an output: all of a run's intermediates
#: are alive at once (about 1.2 GB per pair on TAO's FAN-hybrid-small at 512x128), so memory is
#: bounded by this, not by the number of pairs; statistics accumulate run by run
ANALYSIS_PAIRS = 2


def layer_name(node: Any) -> str:
    """The TensorRT layer name of an ONNX node: its name, or ``node_of_<first output>``
    when it has none (the ONNX parser's rule, TensorRT 8.5 to 10.x)."""
    if node.name:
        return node.name
    return "node_of_" + node.output[0] if len(node.output) else ""


@dataclass
class TensorStats:
    """Float16 statistics of one float tensor, accumulated over all pairs.

    Counts are numbers of elements; ``max_abs`` is over finite values; ``rel_error`` is
    ``sqrt(sum (x - fp16(x))^2 / sum x^2)`` over the finite values inside the float16 range.
    """

    name: str
    node: str  # layer name of the producing node ("" for a weight)
    op_type: str  # op of the producing node ("Initializer" for a weight)
    shape: List[int] = field(default_factory=list)  # shape seen in the last batch
    elements: int = 0
    nonfinite: int = 0  # NaN/Inf already in float32
    overflow: int = 0  # finite, |x| > 65504
    nonzero: int = 0
    underflow: int = 0  # non-zero, rounds to 0 in float16
    subnormal: int = 0  # non-zero, |x| < 6.1e-5, not flushed to 0
    max_abs: float = 0.0
    sum_sq: float = 0.0
    err_sq: float = 0.0
    consumers: List[str] = field(default_factory=list)

    @property
    def rel_error(self) -> float:
        return float(np.sqrt(self.err_sq / self.sum_sq)) if self.sum_sq > 0 else 0.0

    @property
    def out_of_range(self) -> bool:
        return self.overflow > 0

    def update(self, array: np.ndarray) -> None:
        x = np.asarray(array)
        self.shape = [int(d) for d in x.shape]
        flat = x.astype(np.float32, copy=False).ravel()
        # in slices, so the float64 temporaries stay small for attention-sized tensors
        for start in range(0, max(flat.size, 1), _UPDATE_CHUNK):
            self._update(flat[start:start + _UPDATE_CHUNK])

    def _update(self, x: np.ndarray) -> None:
        self.elements += x.size
        if x.size == 0:
            return
        mag = np.abs(x)
        finite = np.isfinite(mag)
        if not finite.all():
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            x, mag = x[finite], mag[finite]
            if x.size == 0:
                return
        self.max_abs = max(self.max_abs, float(mag.max()))
        over = mag > FP16_MAX
        n_over = int(np.count_nonzero(over))
        if n_over:
            self.overflow += n_over
            x, mag = x[~over], mag[~over]
        nonzero = mag > 0
        self.nonzero += int(np.count_nonzero(nonzero))
        tiny = nonzero & (mag < FP16_MIN_NORMAL)
        if tiny.any():
            flushed = x[tiny].astype(np.float16) == 0
            self.underflow += int(np.count_nonzero(flushed))
            self.subnormal += int(flushed.size - np.count_nonzero(flushed))
        x64 = x.astype(np.float64)
        err = x64 - x.astype(np.float16).astype(np.float64)
        self.sum_sq += float(np.dot(x64, x64))
        self.err_sq += float(np.dot(err, err))

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["rel_error"] = self.rel_error
        data["out_of_range"] = self.out_of_range
        data["underflow_fraction"] = self.underflow / self.nonzero if self.nonzero else 0.0
        del data["sum_sq"], data["err_sq"]
        return data


@dataclass
class FlaggedLayer:
    """A layer (ONNX node) to keep in float32, and why."""

    layer: str
    op_type: str
    reasons: List[str]


@dataclass
class Fp16Report:
    """Everything :func:`check_model` found. ``tensors`` are activations, ``weights`` float
    initializers; both sorted by name."""

    model: str
    pairs: int
    tensors: List[TensorStats]
    weights: List[TensorStats]
    max_rel_error: float
    layers: List[FlaggedLayer]
    #: how the pairs were run (pairs per run; a static batch made dynamic for it, or why not)
    runs: str = ""

    @property
    def overflow(self) -> List[TensorStats]:
        """Tensors (activations and weights) with values beyond +-65504, largest first."""
        hits = [t for t in self.tensors + self.weights if t.out_of_range]
        return sorted(hits, key=lambda t: -t.max_abs)

    @property
    def nonfinite(self) -> List[TensorStats]:
        return [t for t in self.tensors if t.nonfinite]

    def precision(self, top: Optional[int] = None) -> List[TensorStats]:
        """In-range activations ordered by float16 relative error, worst first."""
        ranked = sorted(
            (t for t in self.tensors if not t.out_of_range and t.sum_sq > 0), key=lambda t: -t.rel_error
        )
        return ranked if top is None else ranked[:top]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model,
            "pairs": self.pairs,
            "fp16_max": FP16_MAX,
            "fp16_min_normal": FP16_MIN_NORMAL,
            "max_rel_error": self.max_rel_error,
            "runs": self.runs,
            "overflow": [t.name for t in self.overflow],
            "fp32_layers": [asdict(layer) for layer in self.layers],
            "tensors": [t.to_dict() for t in self.tensors],
            "weights": [t.to_dict() for t in self.weights],
        }


def _float_tensor_names(proto: Any) -> Tuple[List[str], Dict[str, Any], Dict[str, List[Any]]]:
    """Float activations of the main graph (node outputs), their producers and consumers."""
    graph = proto.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
        known = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.value_info) + list(inferred.output)}
    except Exception:  # shape inference is best effort; unknown types are checked at run time
        known = {}
    producers: Dict[str, Any] = {}
    consumers: Dict[str, List[Any]] = {}
    names = []
    for node in graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
        for name in node.output:
            if not name:
                continue
            producers[name] = node
            elem = known.get(name, 0)
            if elem == 0 or elem in _FLOAT_TYPES:
                names.append(name)
    return names, producers, consumers


def _expose(proto: Any, names: Sequence[str]) -> bytes:
    """Add ``names`` to ``proto``'s graph outputs (type left to the runtime), serialise it."""
    present = {vi.name for vi in proto.graph.output}
    for name in names:
        if name not in present:
            proto.graph.output.append(helper.make_empty_tensor_value_info(name))
    return proto.SerializeToString()


def _runs(n: int, static: Optional[int], run_pairs: int) -> List[Tuple[int, int]]:
    """Row ranges ``[lo, hi)`` of a batch of ``n`` pairs, one per ONNX Runtime run."""
    step = static if static is not None else max(1, int(run_pairs))
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def _dynamic_for_runs(proto: Any, contract: ModelContract, run_pairs: int) -> Tuple[Optional[Any], str]:
    """``proto`` (static batch) made dynamic as ``prepare`` does and proven at ``run_pairs`` against
    its own batch, so that a run holds ``run_pairs`` pairs' activations instead of its whole batch's
    (16 x 1.2 GB on TAO's FAN export). Returns ``(model, note)``; the model is None, and the note
    says why, when the batch cannot be made dynamic."""
    static = contract.static_batch
    try:
        dynamic, _ = make_dynamic(proto, static, contract)
        checks = prove(proto, dynamic, contract, [run_pairs], original_batch=static)
    except BuildError as exc:
        return None, "the whole static batch of {} per run: it cannot be made dynamic ({})".format(static, exc)
    if not all(check.ok for check in checks):
        return None, "the whole static batch of {} per run: its dynamic rewrite differs at batch {}".format(
            static, run_pairs)
    return dynamic, "{} pairs per run (static batch {} made dynamic as prepare does, proven equal at batch {})".format(
        run_pairs, static, run_pairs)


def check_model(
    model: str,
    batches: Iterable[Tuple[np.ndarray, np.ndarray]],
    contract: Optional[ModelContract] = None,
    max_rel_error: float = DEFAULT_MAX_REL_ERROR,
    threads: Optional[int] = None,
    run_pairs: int = ANALYSIS_PAIRS,
    total: Optional[int] = None,
    progress: bool = True,
    progress_file: Any = None,
) -> Fp16Report:
    """Run ``model`` (ONNX path) on float32 ONNX Runtime with every float activation exposed.

    ``batches`` yields ``(golden, sample)`` preprocessed float arrays ``[n, 3, H, W]``.
    Memory is bounded by ``run_pairs`` pairs' intermediates, whatever the number of pairs:
    each batch runs ``run_pairs`` pairs at a time and only running statistics are kept
    (:class:`TensorStats`). A static-batch model is made dynamic for the runs (as ``prepare``
    does, proven first); one whose batch cannot be made dynamic runs its whole batch each time,
    each batch padded with repeats of its pairs (padding rows are not counted where the batch
    axis is visible). ``total``: pairs expected, for the progress bar (tqdm on stderr,
    shown only on a terminal; ``progress=False`` hides it; ``progress_file``: another stream).
    Returns an :class:`Fp16Report`; layers are flagged when a tensor they produce or read
    exceeds 65504 (or its float16 relative error exceeds ``max_rel_error``), or when they read
    a weight beyond 65504.
    """
    if not (max_rel_error > 0):
        raise InputError("--max-rel-error must be positive", found=max_rel_error)
    model = os.fspath(model)
    contract = contract or read_contract(model)
    load_onnx(model)  # a clear error for a missing or unreadable file
    proto = onnx.load(model)  # with external weights, which the check needs
    runs = "{} pairs per run".format(run_pairs)
    if contract.static_batch is not None:
        dynamic, runs = _dynamic_for_runs(proto, contract, run_pairs)
        if dynamic is not None:
            proto, contract = dynamic, replace(contract, static_batch=None)
    names, producers, consumers = _float_tensor_names(proto)
    if not names:
        raise ModelContractError("the model has no float tensors to check", found="{} nodes".format(len(proto.graph.node)))
    weights = _weight_stats(proto, consumers)
    exposed = _expose(proto, names)
    # Only the nodes are needed from here on (for names); drop the weights' memory (a
    # transformer's weights are hundreds of MB, and every activation is about to be held).
    del proto.graph.initializer[:]

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No fusions: every tensor is measured as the ONNX graph defines it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Every activation is an output, so all of them are alive at once; an arena would keep
    # that peak reserved on top of the returned arrays.
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(exposed, sess_options=options, providers=["CPUExecutionProvider"])
    del exposed
    out_names = [o.name for o in session.get_outputs()]
    stats = {
        name: TensorStats(
            name,
            layer_name(producers[name]),
            producers[name].op_type,
            consumers=sorted({layer_name(n) for n in consumers.get(name, [])}),
        )
        for name in names
    }
    static = contract.static_batch
    dtype = np.dtype(contract.input_dtype)
    pairs = 0
    skipped = set()
    bar = tqdm(total=total, desc="fp16-check", unit="pair", disable=None if progress else True, leave=False,
               file=progress_file)
    try:
        for golden, sample in batches:
            n_batch = int(golden.shape[0])
            if static is not None and n_batch > static:
                raise InputError("a batch is larger than the model's static batch", expected=static, found=n_batch)
            for lo, hi in _runs(n_batch, static, run_pairs):
                n = hi - lo
                feed = {}
                for name, array in ((contract.golden_input, golden[lo:hi]), (contract.sample_input, sample[lo:hi])):
                    if static is not None and n < static:
                        # pad with copies of the real pairs, not zeros: a tensor whose batch axis is
                        # folded away (and so cannot be sliced back) then holds only real values
                        array = np.take(np.asarray(array), np.arange(static) % n, axis=0)
                    feed[name] = np.ascontiguousarray(array, dtype=dtype)
                results = session.run(out_names, feed)
                for index, name in enumerate(out_names):
                    value, results[index] = np.asarray(results[index]), None  # free each output once measured
                    entry = stats.get(name)
                    if entry is None:
                        continue
                    if not np.issubdtype(value.dtype, np.floating):
                        skipped.add(name)  # an integer tensor the shape inference could not type
                        continue
                    if static is not None and value.ndim and value.shape[0] == static and n < static:
                        value = value[:n]
                    entry.update(value)
                del results
                pairs += n
                bar.update(n)
    finally:
        bar.close()
    del session
    release_freed_memory()  # every run's activations are gone; give their pages back before the next step
    if pairs == 0:
        raise InputError("fp16-check needs at least one pair", found="0 pairs")
    tensors = sorted((s for name, s in stats.items() if name not in skipped), key=lambda t: t.name)
    return Fp16Report(
        model=model,
        pairs=pairs,
        tensors=tensors,
        weights=weights,
        max_rel_error=max_rel_error,
        runs=runs,
        layers=_flag_layers(proto.graph.node, tensors, weights, producers, consumers, max_rel_error),
    )


def _weight_stats(proto: Any, consumers: Dict[str, List[Any]]) -> List[TensorStats]:
    """Float initializers (and Constant nodes' values) with their float16 statistics."""
    found = []
    for init in proto.graph.initializer:
        if init.data_type not in _FLOAT_TYPES:
            continue
        entry = TensorStats(
            init.name, "", "Initializer", consumers=sorted({layer_name(n) for n in consumers.get(init.name, [])})
        )
        entry.update(numpy_helper.to_array(init))
        found.append(entry)
    return sorted(found, key=lambda t: t.name)


def _flag_layers(
    nodes: Sequence[Any],
    tensors: Sequence[TensorStats],
    weights: Sequence[TensorStats],
    producers: Dict[str, Any],
    consumers: Dict[str, List[Any]],
    max_rel_error: float,
) -> List[FlaggedLayer]:
    """Layers that must run in float32, in graph order, each with its reasons."""
    reasons: Dict[str, List[str]] = {}

    def flag(node: Any, why: str) -> None:
        reasons.setdefault(layer_name(node), [])
        if why not in reasons[layer_name(node)]:
            reasons[layer_name(node)].append(why)

    for t in tensors:
        if t.out_of_range:
            what = "{}, whose |x| reaches {:.4g} > 65504".format(t.name, t.max_abs)
        elif t.rel_error > max_rel_error:
            what = "{}, which loses {:.2%} to float16 rounding/underflow".format(t.name, t.rel_error)
        else:
            continue
        flag(producers[t.name], "produces " + what)
        for node in consumers.get(t.name, []):
            flag(node, "reads " + what)
    for w in weights:
        if w.out_of_range:
            for node in consumers.get(w.name, []):
                flag(node, "reads weight {} with |x| = {:.4g} > 65504".format(w.name, w.max_abs))

    # graph order, so the list reads top to bottom like the model
    order: Dict[str, Tuple[int, str]] = {}
    for index, node in enumerate(nodes):
        order.setdefault(layer_name(node), (index, node.op_type))
    flagged = [FlaggedLayer(name, order[name][1], why) for name, why in reasons.items()]
    return sorted(flagged, key=lambda f: order[f.layer][0])


def write_layer_list(report: Fp16Report, path: str) -> str:
    """Write the flagged layer names, one per line, ``#`` comments with the reasons.

    Names are written literally; they are exact layer names, valid as patterns for
    ``build --fp32-layers @FILE``. An empty list (nothing flagged) holds only comments.
    """
    path = check_output_file(path, what="float32 layer list", inputs=[report.model])
    lines = [
        "# float32 layers for {} (changenet-trt fp16-check on {} pairs)".format(
            os.path.basename(report.model), report.pairs
        ),
        "# use: changenet-trt build {} --fp32-layers @{}".format(report.model, path),
    ]
    if not report.layers:
        lines.append("# no layer needs float32: no tensor leaves the float16 range")
    for layer in report.layers:
        for why in layer.reasons:
            lines.append("# {} ({}): {}".format(layer.layer, layer.op_type, why))
        lines.append(layer.layer)
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def default_list_path(model: str) -> str:
    """``<model without .onnx>.fp32-layers.txt`` next to the model."""
    stem = os.path.splitext(os.fspath(model))[0]
    return stem + ".fp32-layers.txt"


def format_report(report: Fp16Report, top: int = 10) -> List[str]:
    """Human-readable lines of ``report``."""
    lines = [
        "fp16-check: {} on {} pairs: {} float tensors, {} weights".format(
            report.model, report.pairs, len(report.tensors), len(report.weights)
        ),
        "float16: max {:g}, smallest normal {:.2g}, smallest subnormal {:.2g}".format(
            FP16_MAX, FP16_MIN_NORMAL, FP16_MIN_SUBNORMAL
        ),
    ]
    lines += ["runs: " + report.runs] if report.runs else []
    lines.append("")
    overflow = report.overflow
    if overflow:
        lines.append("OUT OF FLOAT16 RANGE ({} tensor{}):".format(len(overflow), "" if len(overflow) == 1 else "s"))
        lines.append("  {:<32} {:<36} {:>10} {:>12}".format("tensor", "node (op)", "max |x|", "> 65504"))
        for t in overflow:
            node = "{} ({})".format(t.node or "-", t.op_type)
            lines.append(
                "  {:<32} {:<36} {:>10.4g} {:>11.3%}".format(t.name, node, t.max_abs, t.overflow / max(t.elements, 1))
            )
    else:
        lines.append("no tensor leaves the float16 range (max |x| <= 65504 everywhere)")
    if report.nonfinite:
        lines.append("")
        lines.append("already NaN/Inf in float32: " + ", ".join(t.name for t in report.nonfinite))
    ranked = [t for t in report.precision(top) if t.rel_error > 0]
    if ranked:
        lines.append("")
        lines.append("MOST FLOAT16 PRECISION LOST (relative L2 error; plain rounding is about 3e-4):")
        lines.append(
            "  {:<32} {:<36} {:>9} {:>10} {:>10}".format("tensor", "node (op)", "rel.err", "underflow", "subnormal")
        )
        for t in ranked:
            node = "{} ({})".format(t.node, t.op_type)
            nz = max(t.nonzero, 1)
            mark = "  > {:g}".format(report.max_rel_error) if t.rel_error > report.max_rel_error else ""
            lines.append(
                "  {:<32} {:<36} {:>9.2e} {:>9.2%} {:>9.2%}{}".format(
                    t.name, node, t.rel_error, t.underflow / nz, t.subnormal / nz, mark
                )
            )
    flushing = [t for t in report.tensors if t.nonzero and t.underflow / t.nonzero >= 0.01]
    if flushing:
        lines.append("")
        lines.append("non-zero values flushed to 0 in float16 (>= 1%): " + ", ".join(
            "{} {:.1%}".format(t.name, t.underflow / t.nonzero) for t in sorted(flushing, key=lambda t: -t.underflow / t.nonzero)
        ))
    bad_weights = [w for w in report.weights if w.out_of_range]
    if bad_weights:
        lines.append("")
        lines.append("weights beyond 65504 (TensorRT clamps them in FP16): " + ", ".join(w.name for w in bad_weights))
    lines.append("")
    if report.layers:
        lines.append("layers to keep in float32 ({}):".format(len(report.layers)))
        for layer in report.layers:
            lines.append("  {} ({}): {}".format(layer.layer, layer.op_type, "; ".join(layer.reasons)))
    else:
        lines.append("no layer needs float32")
    return lines


def write_json(report: Fp16Report, path: str) -> str:
    return write_json_report(path, report.to_dict(), what="fp16-check JSON report", inputs=[report.model])


def source_batches(source: Any, batch: int, input_shape: Sequence[int]) -> Iterable[Tuple[np.ndarray, np.ndarray]]:
    """Yield ``(golden, sample)`` float32 ``[n, C, H, W]`` batches of a
    :class:`~changenet_trt.data.pairs.PairSource`, without the pairs it could not read."""
    shape = tuple(int(d) for d in input_shape)
    golden = np.empty((batch,) + shape, dtype=np.float32)
    sample = np.empty_like(golden)
    for lo in range(0, source.count, batch):
        hi = min(lo + batch, source.count)
        source.fill(golden[: hi - lo], sample[: hi - lo], lo, hi)
        bad = {i - lo for i in source.failed() if lo <= i < hi}
        keep = [i for i in range(hi - lo) if i not in bad]
        if len(keep) == hi - lo:
            yield golden[: hi - lo], sample[: hi - lo]
        elif keep:
            yield golden[keep], sample[keep]
