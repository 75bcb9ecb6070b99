"""What a ChangeNet-Classification model looks like, and how its raw output becomes a score.

TAO exports a Siamese network with two image inputs and one output:

* ``input_1``: the **sample** (test) image, float32 ``[B, 3, H, W]`` (TAO: H=512, W=128)
* ``input_2``: the **golden** (reference) image, same shape and dtype
* ``output``: ``[B]`` or ``[B, 1]`` (``euclidean``: the embedding distance) or ``[B, 2]``
  (``learnable``: raw logits, no softmax in the graph)

The batch is either dynamic or static (TAO's shipped specs export a static 16). Tensors are
always mapped by name, never by position; every name can be overridden.
"""

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto

from changenet_trt.errors import InputError, ModelContractError

DEFAULT_SAMPLE_INPUT = "input_1"
DEFAULT_GOLDEN_INPUT = "input_2"
DEFAULT_OUTPUT = "output"
OUTPUT_KINDS = ("euclidean", "learnable")
DEFAULT_CUTOFF = 0.5

# ONNX metadata keys our own reference models carry; TAO exports do not have them.
META_CUTOFF = "changenet_trt.cutoff"
META_PREPROCESS = "changenet_trt.data.preprocess"

_SUPPORTED_DTYPES = ("float32", "float16", "uint8")
#: output element types a score can be read from (an int64 argmax or a bool is not a score)
_SCORE_DTYPES = ("float32", "float16", "float64")
_log = logging.getLogger(__name__)
_warned: Set[str] = set()


def _warn_once(text: str) -> None:
    """Log ``text`` as a warning the first time this process meets it (contracts are read often)."""
    if text not in _warned:
        _warned.add(text)
        _log.warning(text)


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one tensor. ``shape`` holds ``None`` for a dynamic dimension."""

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: str


def engine_tensors(records: Sequence[Dict[str, Any]]) -> Tuple[List[TensorInfo], List[TensorInfo]]:
    """``(inputs, outputs)`` of an engine's I/O records, ``{"name", "mode" ("input"/"output"),
    "shape" (-1: dynamic), "dtype"}``, as :func:`changenet_trt.gpu.trt.io_tensors` reads them from
    an engine and its sidecar keeps them."""
    inputs, outputs = [], []  # type: List[TensorInfo], List[TensorInfo]
    for record in records:
        shape = tuple(None if int(d) < 0 else int(d) for d in record["shape"])
        info = TensorInfo(record["name"], shape, str(record["dtype"]))
        (inputs if record.get("mode", "").lower().startswith("in") else outputs).append(info)
    return inputs, outputs


@dataclass(frozen=True)
class ModelContract:
    """The facts a runner needs about a ChangeNet model.

    ``input_shape`` is ``(C, H, W)`` of each image input; ``static_batch`` is the fixed batch
    size or ``None`` when the batch is dynamic; ``input_dtype`` is ``"float32"``,
    ``"float16"`` or ``"uint8"`` (RGB pixels; the graph normalises); ``output_shape`` has ``None`` in the batch position.
    """

    sample_input: str
    golden_input: str
    output: str
    output_kind: str
    static_batch: Optional[int]
    input_shape: Tuple[int, int, int]
    input_dtype: str
    output_shape: Tuple[Optional[int], ...]
    opset: Optional[int] = None
    recommended_cutoff: Optional[float] = None
    preprocess: Optional[str] = None
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def dynamic_batch(self) -> bool:
        return self.static_batch is None

    @property
    def cutoff(self) -> float:
        """The cutoff a model recommends (from its metadata), else :data:`DEFAULT_CUTOFF`."""
        return DEFAULT_CUTOFF if self.recommended_cutoff is None else self.recommended_cutoff

    @property
    def names(self) -> "ContractNames":
        """The names and output kind this contract resolved, as overrides that read it again."""
        return ContractNames(self.sample_input, self.golden_input, self.output, self.output_kind)

    def input_names(self) -> Tuple[str, str]:
        """``(golden_input, sample_input)`` in the API's argument order."""
        return (self.golden_input, self.sample_input)

    def batch_shape(self, batch: int) -> Tuple[int, int, int, int]:
        """The NCHW shape of one image input at ``batch``."""
        return (batch,) + tuple(self.input_shape)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-friendly view (the ``inspect --json`` schema)."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["output_shape"] = list(self.output_shape)
        data["dynamic_batch"] = self.dynamic_batch
        return data


def _dtype_from_onnx(elem_type: int) -> str:
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:  # unknown / undefined element type
        return "onnx-type-{}".format(elem_type)


def _tensor_info(value_info: Any) -> TensorInfo:
    tensor_type = value_info.type.tensor_type
    dims: List[Optional[int]] = []
    for dim in tensor_type.shape.dim:
        dims.append(dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None)
    return TensorInfo(value_info.name, tuple(dims), _dtype_from_onnx(tensor_type.elem_type))


def load_onnx(model: Union[str, "os.PathLike[str]", Any]) -> Any:
    """Load an ONNX ModelProto from a path (or pass one through), with a clear error."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = os.fspath(model)
    if os.path.isdir(path):
        raise ModelContractError("model path is a folder, not an ONNX file: {}".format(path))
    if not os.path.isfile(path):
        raise ModelContractError("model file not found: {}".format(path))
    if os.path.getsize(path) == 0:
        raise ModelContractError("model file is empty: {}".format(path), expected="an ONNX model (.onnx)",
                                 found="0 bytes")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelContractError(
            "cannot read {} as an ONNX model".format(path),
            expected="a protobuf ONNX file (.onnx)",
            found="{}: {}".format(type(exc).__name__, exc),
        ) from None
    check_external_data(proto, path)
    return proto


def check_external_data(proto: Any, path: str) -> None:
    """Refuse, with one error, weights stored outside the model's folder or beyond their file's end.

    ONNX Runtime and onnx refuse an external-data location that leaves the model's folder
    (``../x.bin``, an absolute path, a link out of it) and a ``length`` past the end of the file;
    both would otherwise fail later with their own tracebacks (or, for a claimed 4 GiB, try to
    read it). Checked on the graph's initializers and Constant nodes, without reading the data.
    """
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    tensors = list(proto.graph.initializer) + [
        attribute.t for node in proto.graph.node if node.op_type == "Constant"
        for attribute in node.attribute if attribute.HasField("t")]
    for tensor in tensors:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = os.path.realpath(os.path.join(folder, location))
        where = "{}: tensor '{}' keeps its data in {!r}".format(path, tensor.name, location)
        if not location or os.path.isabs(location) or not target.startswith(folder + os.sep):
            raise ModelContractError("{}, outside the model's folder {}".format(where, folder),
                                     expected="external data files inside the model's folder (as ONNX Runtime "
                                              "and onnx require)")
        if not os.path.isfile(target):
            raise ModelContractError("{}, which does not exist".format(where),
                                     expected="the model's external data files next to it")
        try:
            offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelContractError("{} with an unreadable offset or length".format(where),
                                     found="offset {!r}, length {!r}".format(info.get("offset"), info.get("length"))
                                     ) from None
        size = os.path.getsize(target)
        end = offset + (length if length is not None else 0)
        if offset < 0 or (length is not None and length < 0) or end > size:
            raise ModelContractError("{}, bytes {}..{} of a {}-byte file".format(where, offset, end, size),
                                     expected="offset + length within the external data file")


@dataclass(frozen=True)
class ContractNames:
    """The user's overrides of a model's tensor names and output kind; None keeps the default.

    ``sample_input``, ``golden_input``, ``output``: tensor names (default TAO's ``input_1``,
    ``input_2`` and the single output); ``output_kind``: ``euclidean`` or ``learnable`` (default:
    what the output shape says). Empty (false) when nothing is overridden.
    """

    sample_input: Optional[str] = None
    golden_input: Optional[str] = None
    output: Optional[str] = None
    output_kind: Optional[str] = None

    @classmethod
    def of(cls, names: Union["ContractNames", Dict[str, Optional[str]], None] = None,
           **keywords: Optional[str]) -> "ContractNames":
        """``names`` (a ContractNames, a dict of the four keywords, or None) updated by ``keywords``;
        keys whose value is None (or empty) are dropped, so they keep the earlier value or the default."""
        if isinstance(names, ContractNames):
            given = names.as_dict()
        elif names is None or isinstance(names, dict):
            given = dict(names or {})
        else:
            raise InputError("contract names must be a ContractNames or a dict",
                             expected="ContractNames(sample_input=..., golden_input=..., output=..., output_kind=...)",
                             found=type(names).__name__)
        given.update((key, value) for key, value in keywords.items() if value is not None)
        unknown = sorted(set(given) - set(CONTRACT_NAME_KEYS))
        if unknown:
            raise InputError("unknown contract name key", expected=", ".join(CONTRACT_NAME_KEYS),
                             found=", ".join(map(str, unknown)))
        for key, value in given.items():
            if value is not None and not isinstance(value, str):  # a str subclass is text too
                raise InputError("contract name {} must be text".format(key), expected="a str or None",
                                 found=repr(value))
        # an empty name is no tensor's: it keeps the default as None does
        return cls(**{key: value for key, value in given.items() if value})

    def as_dict(self) -> Dict[str, str]:
        """The overrides given, keyed by field name (no None values)."""
        return {key: getattr(self, key) for key in CONTRACT_NAME_KEYS if getattr(self, key) is not None}

    def or_else(self, fallback: "ContractNames") -> "ContractNames":
        """These names, with ``fallback``'s for the ones not given."""
        return ContractNames.of(fallback, **self.as_dict())

    @property
    def is_empty(self) -> bool:
        return not self.as_dict()

    def __bool__(self) -> bool:
        return not self.is_empty


#: the fields of :class:`ContractNames`, in order
CONTRACT_NAME_KEYS = ("sample_input", "golden_input", "output", "output_kind")


def read_contract(
    model: Union[str, "os.PathLike[str]", Any],
    names: Optional[ContractNames] = None,
) -> ModelContract:
    """Read the contract of an ONNX model (path or ``onnx.ModelProto``).

    ``names``: the user's overrides; names default to TAO's (``input_1`` sample, ``input_2``
    golden, the single output) and ``output_kind`` to what the output shape says. Raises
    ModelContractError with what was expected and what the model has when it does not fit.
    """
    proto = load_onnx(model)
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [_tensor_info(vi) for vi in graph.input if vi.name not in initializers]
    outputs = [_tensor_info(vi) for vi in graph.output]
    opset = None
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    meta = {prop.key: prop.value for prop in proto.metadata_props}
    return make_contract(inputs, outputs, names, opset=opset, metadata=meta)


def _pick(tensors: Sequence[TensorInfo], name: str, role: str, flag: str) -> TensorInfo:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise ModelContractError(
        "the model has no {} tensor named '{}' (set another name with {})".format(role, name, flag),
        expected="'{}'".format(name),
        found=", ".join("'{}' {}".format(t.name, _fmt_shape(t.shape)) for t in tensors) or "no tensors",
    )


def _fmt_shape(shape: Sequence[Optional[int]]) -> str:
    return "[" + ",".join("B" if d is None else str(d) for d in shape) + "]"


def make_contract(
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    names: Optional[ContractNames] = None,
    opset: Optional[int] = None,
    metadata: Optional[Dict[str, str]] = None,
) -> ModelContract:
    """Check tensor descriptions (from ONNX or from an engine) against the ChangeNet contract;
    ``names``: the user's overrides, as :func:`read_contract`'s."""
    names = ContractNames.of(names)
    sample_input, golden_input = names.sample_input, names.golden_input
    output, output_kind = names.output, names.output_kind
    sample_name = sample_input or DEFAULT_SAMPLE_INPUT
    golden_name = golden_input or DEFAULT_GOLDEN_INPUT
    if sample_name == golden_name:
        raise ModelContractError(
            "sample and golden inputs must be different tensors", found="both '{}'".format(sample_name)
        )
    sample = _pick(inputs, sample_name, "sample input", "--sample-input")
    golden = _pick(inputs, golden_name, "golden input", "--golden-input")
    extra_inputs = [t.name for t in inputs if t.name not in (sample_name, golden_name)]
    if extra_inputs:
        raise ModelContractError(
            "the model has inputs other than the sample and golden images",
            expected="exactly two inputs ('{}', '{}')".format(sample_name, golden_name),
            found=", ".join(t.name for t in inputs),
        )

    for tensor, role in ((sample, "sample"), (golden, "golden")):
        if len(tensor.shape) != 4:
            raise ModelContractError(
                "{} input '{}' is not an NCHW image tensor".format(role, tensor.name),
                expected="rank 4 [B,3,H,W]",
                found=_fmt_shape(tensor.shape),
            )
        if tensor.shape[1] != 3 or tensor.shape[2] is None or tensor.shape[3] is None:
            raise ModelContractError(
                "{} input '{}' must have 3 channels and a static height and width".format(role, tensor.name),
                expected="[B,3,H,W] with H, W fixed (TAO: [B,3,512,128])",
                found=_fmt_shape(tensor.shape),
            )
        if tensor.dtype not in _SUPPORTED_DTYPES:
            raise ModelContractError(
                "{} input '{}' has an unsupported element type".format(role, tensor.name),
                expected=" or ".join(_SUPPORTED_DTYPES),
                found=tensor.dtype,
            )
    if sample.shape != golden.shape or sample.dtype != golden.dtype:
        raise ModelContractError(
            "sample and golden inputs must have the same shape and dtype",
            expected="{} {} for both".format(_fmt_shape(sample.shape), sample.dtype),
            found="golden {} {}".format(_fmt_shape(golden.shape), golden.dtype),
        )

    if output is None:
        if len(outputs) == 1:
            out = outputs[0]
        else:
            out = _pick(outputs, DEFAULT_OUTPUT, "output", "--output")
    else:
        out = _pick(outputs, output, "output", "--output")

    if out.dtype not in _SCORE_DTYPES:
        raise ModelContractError(
            "output '{}' is not a floating-point score".format(out.name),
            expected="{} (a distance or logits)".format(" or ".join(_SCORE_DTYPES)),
            found=out.dtype,
        )
    static_batch = sample.shape[0]
    if out.shape and out.shape[0] is not None and out.shape[0] != static_batch:
        raise ModelContractError(
            "output '{}' batch does not match the inputs' batch".format(out.name),
            expected="batch {}".format("B" if static_batch is None else static_batch),
            found=_fmt_shape(out.shape),
        )
    detected = _output_kind_from_shape(out)
    if output_kind is not None:
        if output_kind not in OUTPUT_KINDS:
            raise ModelContractError(
                "unknown output kind", expected=" or ".join(OUTPUT_KINDS), found=repr(output_kind)
            )
        if detected is not None and detected != output_kind:
            raise ModelContractError(
                "output '{}' cannot be read as '{}'".format(out.name, output_kind),
                expected="[B] or [B,1] for euclidean, [B,2] for learnable",
                found=_fmt_shape(out.shape),
            )
        kind = output_kind
    elif detected is None:
        raise ModelContractError(
            "cannot tell the output kind from output '{}'".format(out.name),
            expected="[B] or [B,1] (euclidean distance) or [B,2] (learnable logits)",
            found=_fmt_shape(out.shape),
        )
    else:
        kind = detected

    meta = dict(metadata or {})
    cutoff = None
    if META_CUTOFF in meta:
        text = meta.pop(META_CUTOFF)
        try:
            cutoff = float(text)
        except ValueError:
            cutoff = None
        if cutoff is None or not math.isfinite(cutoff):
            cutoff = None
            _warn_once("the model's metadata {} is {!r}, not a finite number: it is ignored and the default "
                       "cutoff {:g} is used (pass a cutoff to choose one)".format(META_CUTOFF, text, DEFAULT_CUTOFF))
    return ModelContract(
        sample_input=sample.name,
        golden_input=golden.name,
        output=out.name,
        output_kind=kind,
        static_batch=static_batch,
        input_shape=(int(sample.shape[1]), int(sample.shape[2]), int(sample.shape[3])),  # type: ignore[arg-type]
        input_dtype=sample.dtype,
        output_shape=(None,) + tuple(out.shape[1:]),
        opset=opset,
        recommended_cutoff=cutoff,
        preprocess=meta.pop(META_PREPROCESS, None),
        extra=meta,
    )


def _output_kind_from_shape(out: TensorInfo) -> Optional[str]:
    rank = len(out.shape)
    if rank == 1 or (rank == 2 and out.shape[1] == 1):
        return "euclidean"
    if rank == 2 and out.shape[1] == 2:
        return "learnable"
    return None


def score(raw: np.ndarray, output_kind: str) -> np.ndarray:
    """Turn a raw model output into one float32 score per pair.

    ``raw`` is ``[B]``/``[B,1]`` (euclidean: the score is the distance) or ``[B,2]``
    (learnable logits: the score is softmax(logits)[:, 1], the probability of a defect,
    computed as a numerically stable sigmoid of the logit difference).
    """
    raw = np.asarray(raw)
    if output_kind == "euclidean":
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if raw.ndim != 1:
            raise InputError("euclidean output must be [B] or [B,1]", found=list(raw.shape))
        return raw.astype(np.float32)
    if output_kind == "learnable":
        if raw.ndim != 2 or raw.shape[1] != 2:
            raise InputError("learnable output must be [B,2] logits", found=list(raw.shape))
        diff = raw[:, 1].astype(np.float64) - raw[:, 0].astype(np.float64)
        # sigmoid(d) == softmax([l0, l1])[1] == exp(-log(1 + exp(-d))); logaddexp never
        # overflows, and two ufuncs on [B] cost less than masking by sign on every predict
        with np.errstate(invalid="ignore"):  # a NaN logit gives a NaN score, which callers mark invalid
            return np.exp(-np.logaddexp(0.0, -diff)).astype(np.float32)
    raise InputError("unknown output kind", expected=" or ".join(OUTPUT_KINDS), found=repr(output_kind))
