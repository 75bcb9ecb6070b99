"""INT8 models: explicit quantization (Q/DQ) placed as TensorRT reads it, calibrated on the CPU.

:func:`to_int8`: ONNX Runtime's ``quantize_static`` in QDQ format, set as TensorRT reads it
(symmetric int8, per-channel weights, float32 scales, no bias quantization, no Q/DQ around
Softmax/Reshape/Transpose, opset 13-17), calibrated on real pairs spooled to disk; the 3-channel
stem convolution(s) stay float. The result is reported against the float32 model on held-back
pairs (FPR, capture, flips) and per quantized layer (SQNR). What the model holds and how it was
made: :mod:`.precision`.
"""

import contextlib
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from tqdm import tqdm

from changenet_trt.contract import ContractNames, read_contract
from changenet_trt.data.pairs import SourceFactory
from changenet_trt.engine.precision import (
    INT8_METHODS,
    QDQ_OPS,
    Batch,
    PrecisionReport,
    check_typed,
    default_source,
    graph_precision,
    load_model,
    main_opset,
    match_nodes,
    name_nodes,
    prove,
    provenance,
    record_made,
)
from changenet_trt.errors import BuildError, ChangeNetError, InputError
from changenet_trt.evaluation.validate import sqnr_db
from changenet_trt.files import PathLike, atomic_write, check_output_file
from changenet_trt.threads import release_freed_memory

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
DEFAULT_PERCENTILE = 99.999


def stem_convolutions(proto: Any) -> List[str]:
    """Names of the Conv nodes that read a 3-channel image (weight ``[O, 3, kh, kw]``, one group).

    Their input is the image itself, whose int8 rounding costs the most accuracy for the least
    compute, so INT8 preparation leaves them float."""
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


def _dedicate_qdq(proto: Any, reads_int8: Dict[str, Optional[Set[int]]], float_model: Any = None,
                  float_nodes: Sequence[str] = ()) -> int:
    """Rewire every input not in ``reads_int8`` (node name -> quantized input indices, None for
    all) to the float tensor instead of the Q/DQ pair the quantizer shares between all readers
    of an activation: only the weighted layers and the residual inputs of fused Adds read
    int8-rounded values; Softmax, LayerNorm, GELU, Reshape, Transpose and the rest read float
    (TensorRT's placement guide: Q/DQ in front of them blocks its fusions; ModelOpt keeps
    LayerNorm and the attention Softmax out of its quantizable partitions). The ``float_nodes``
    (the user's, kept float) also get their weights back from ``float_model`` where the quantizer
    stored them int8 for another reader: the two branches of the Siamese network share every
    weight, so keeping one branch's layer float would otherwise still round its weights. Returns
    the inputs rewired; Q/DQ pairs nobody reads any more are removed."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    float_inputs = {n.name: list(n.input) for n in float_model.graph.node if n.name in set(float_nodes)} \
        if float_model is not None else {}
    float_weights = {init.name: init for init in float_model.graph.initializer} if float_inputs else {}
    present = {init.name for init in proto.graph.initializer}
    rewired = 0
    for node in proto.graph.node:
        if node.op_type in QDQ_OPS:
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
                continue
            original = float_inputs.get(node.name, [])
            weight = original[index] if index < len(original) else None
            if weight in float_weights:  # an int8 weight shared with a quantized reader: this one reads float
                if weight not in present:
                    proto.graph.initializer.append(float_weights[weight])
                    present.add(weight)
                node.input[index] = weight
                rewired += 1
    if rewired:  # pairs nobody reads any more
        changed = True
        while changed:
            used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
            changed = False
            for node in list(proto.graph.node):
                if node.op_type in QDQ_OPS and not any(out in used for out in node.output):
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
    names: Optional[ContractNames] = None,
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
    written either way. ``origin``: as :func:`~changenet_trt.engine.fp16.to_fp16`'s. ``extra_made``: more keys for the
    metadata :func:`~changenet_trt.engine.precision.read_made` returns (the build records the inputs it caches the model by).
    """
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
    names = ContractNames.of(names)
    contract = read_contract(source, names)
    model, changes = _float_model_for_qdq(load_model(source))
    stems = stem_convolutions(model) if keep_stem_float else []
    user_float = match_nodes(model, list(exclude))
    excluded = [n.name for n in model.graph.node if n.name in set(stems) | set(user_float)]
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
        _dedicate_qdq(quantized, reads_int8, model, user_float)
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
        made.update(provenance(source, origin))
        if method == "percentile":
            made["percentile"] = float(percentile)
        made.update(extra_made or {})
        record_made(quantized, made)
        payload = quantized.SerializeToString()
        with open(quant_path, "wb") as handle:
            handle.write(payload)
        del model, quantized
        release_freed_memory()
        validation, = prove([quant_path], source, make_source or default_source(), cutoff, normalization,
                               batch_size, names, 1e-2, 1e-2, threads)
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
