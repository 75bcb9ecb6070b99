"""Builder side of the fake: Builder, INetworkDefinition (from the ONNX parser), IBuilderConfig,
IOptimizationProfile, ITimingCache, INT8 calibrators and IProgressMonitor.

It validates as TensorRT does (profiles against the network's static dims, explicit batch for
the 8.x ONNX parser, DLA cores, calibration profile for dynamic INT8) and RECORDS everything a
build was given in ``api.builds[-1]`` so tests can assert on it.
"""

import json
import struct
import sys
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

from ..device import DEVICE, FakeCudaError
from . import _plan
from ._api import FakeTensorRTError, Strict
from ._runtime import Dims, dla_cores, register_logger, require_logger

# ONNX op -> TensorRT layer type (what the real parser mostly produces)
_LAYER_TYPES = {
    "Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION",
    "AveragePool": "POOLING", "MaxPool": "POOLING", "GlobalAveragePool": "REDUCE", "GlobalMaxPool": "REDUCE",
    "Relu": "ACTIVATION", "Sigmoid": "ACTIVATION", "Tanh": "ACTIVATION", "LeakyRelu": "ACTIVATION",
    "Clip": "ACTIVATION", "HardSigmoid": "ACTIVATION", "Elu": "ACTIVATION", "Softplus": "ACTIVATION",
    "Reshape": "SHUFFLE", "Flatten": "SHUFFLE", "Transpose": "SHUFFLE", "Squeeze": "SHUFFLE", "Unsqueeze": "SHUFFLE",
    "Add": "ELEMENTWISE", "Sub": "ELEMENTWISE", "Mul": "ELEMENTWISE", "Div": "ELEMENTWISE", "Pow": "ELEMENTWISE",
    "Max": "ELEMENTWISE", "Min": "ELEMENTWISE", "Equal": "ELEMENTWISE", "Greater": "ELEMENTWISE", "Less": "ELEMENTWISE",
    "ReduceMean": "REDUCE", "ReduceMax": "REDUCE", "ReduceMin": "REDUCE", "ReduceSum": "REDUCE", "ReduceL2": "REDUCE",
    "Sqrt": "UNARY", "Abs": "UNARY", "Exp": "UNARY", "Log": "UNARY", "Neg": "UNARY", "Erf": "UNARY", "Reciprocal": "UNARY",
    "Concat": "CONCATENATION", "Gemm": "MATRIX_MULTIPLY", "MatMul": "MATRIX_MULTIPLY",
    "Softmax": "SOFTMAX", "Constant": "CONSTANT", "Identity": "IDENTITY", "Cast": "IDENTITY",
    "Gather": "GATHER", "Slice": "SLICE", "Shape": "SHAPE", "Resize": "RESIZE", "Where": "SELECT",
    "BatchNormalization": "SCALE", "Pad": "PADDING", "Expand": "SLICE", "Split": "SLICE", "TopK": "TOPK",
    "LayerNormalization": "NORMALIZATION", "InstanceNormalization": "NORMALIZATION",
    # explicit quantization (TensorRT 8.0+: IQuantizeLayer / IDequantizeLayer)
    "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE",
}
# layer types the fake DLA accepts (the rest needs GPU fallback)
_DLA_TYPES = {"CONVOLUTION", "DECONVOLUTION", "POOLING", "ACTIVATION", "ELEMENTWISE", "SCALE", "CONCATENATION",
              "SOFTMAX", "SHUFFLE", "CONSTANT", "IDENTITY", "PADDING", "RESIZE", "SLICE"}

TIMING_MAGIC = b"FAKE-TRT-TCACHE\x00"


def _version_tag(api: Any) -> str:
    v = api.version
    if v.major >= 10:
        return str(v.major * 10000 + v.minor * 100 + v.micro)
    return str(v.major * 1000 + v.minor * 100 + v.micro)


# -- network ------------------------------------------------------------------------------------
class ITensor(Strict):
    def __init__(self, name: str, shape: List[int], dtype: Any, is_input: bool = False) -> None:
        self._name = name
        self._shape = Dims(shape)
        self._dtype = dtype
        self._is_input = is_input
        self._is_output = False

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)

    @property
    def shape(self) -> Dims:
        return self._shape

    @shape.setter
    def shape(self, value: Any) -> None:
        self._shape = Dims(value)

    @property
    def dtype(self) -> Any:
        return self._dtype

    @dtype.setter
    def dtype(self, value: Any) -> None:
        self._dtype = value

    @property
    def is_network_input(self) -> bool:
        return self._is_input

    @property
    def is_network_output(self) -> bool:
        return self._is_output

    @property
    def location(self) -> Any:
        return self._api.module.TensorLocation.DEVICE


_REMOVED_IN_11 = (None, "11.0")


class ILayer(Strict):
    # TensorRT 11: precision comes from the tensor types of a strongly typed network
    _versions = {name: _REMOVED_IN_11 for name in ("precision", "precision_is_set", "reset_precision",
                                                   "set_output_type", "output_type_is_set", "reset_output_type")}

    def __init__(self, name: str, layer_type: Any, inputs: List[ITensor], outputs: List[ITensor], op: str) -> None:
        self._name = name
        self._type = layer_type
        self._inputs = inputs
        self._outputs = outputs
        self._op = op
        self._precision = self._api.module.DataType.FLOAT
        self._precision_set = False
        self._output_types: Dict[int, Any] = {}

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)

    @property
    def type(self) -> Any:
        return self._type

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> Optional[ITensor]:
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> Optional[ITensor]:
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    @property
    def precision(self) -> Any:
        return self._precision

    @precision.setter
    def precision(self, value: Any) -> None:
        if not isinstance(value, self._api.module.DataType):
            raise TypeError("precision must be a tensorrt.DataType, got {!r}".format(value))
        self._precision = value
        self._precision_set = True

    @property
    def precision_is_set(self) -> bool:
        return self._precision_set

    def reset_precision(self) -> None:
        self._precision = self._api.module.DataType.FLOAT
        self._precision_set = False

    def set_output_type(self, index: int, dtype: Any) -> None:
        if not 0 <= int(index) < len(self._outputs):
            raise FakeTensorRTError("set_output_type: output index {} out of range for layer {}".format(index, self._name))
        if not isinstance(dtype, self._api.module.DataType):
            raise TypeError("set_output_type: dtype must be a tensorrt.DataType")
        self._output_types[int(index)] = dtype

    def get_output_type(self, index: int) -> Any:
        return self._output_types.get(int(index), self._api.module.DataType.FLOAT)

    def output_type_is_set(self, index: int) -> bool:
        return int(index) in self._output_types

    def reset_output_type(self, index: int) -> None:
        self._output_types.pop(int(index), None)


class INetworkDefinition(Strict):
    _versions = {"has_explicit_precision": (None, "10.0")}

    def __init__(self, flags: int) -> None:
        self._flags = int(flags)
        self._inputs: List[ITensor] = []
        self._outputs: List[ITensor] = []
        self._layers: List[ILayer] = []
        self._name = "Unnamed Network 0"
        self._onnx: Optional[bytes] = None

    @property
    def _explicit_batch(self) -> bool:
        if self._api.at_least("10.0"):
            return True
        return bool(self._flags & (1 << int(self._api.module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)))

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    @property
    def _strongly_typed(self) -> bool:
        """TensorRT 11: always; 10.x: when created with NetworkDefinitionCreationFlag.STRONGLY_TYPED."""
        if self._api.at_least("11.0"):
            return True
        flag = getattr(self._api.module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return flag is not None and bool(self._flags & (1 << int(flag)))

    @property
    def has_implicit_batch_dimension(self) -> bool:
        return not self._explicit_batch

    @property
    def has_explicit_precision(self) -> bool:
        return False

    def get_layer(self, index: int) -> Optional[ILayer]:
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def get_input(self, index: int) -> Optional[ITensor]:
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> Optional[ITensor]:
        return self._outputs[index] if 0 <= index < len(self._outputs) else None

    def mark_output(self, tensor: ITensor) -> None:
        tensor._is_output = True
        if tensor not in self._outputs:
            self._outputs.append(tensor)


class ParserError(Strict):
    _versions = {"node_name": ("10.0", None), "node_operator": ("10.0", None)}

    def __init__(self, code: Any, desc: str, node: int = -1, node_name: str = "", op: str = "") -> None:
        self._code = code
        self._desc = desc
        self._node = node
        self._node_name = node_name
        self._op = op

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._node_name

    def node_operator(self) -> str:
        return self._op

    def file(self) -> str:
        return "ModelImporter.cpp"

    def line(self) -> int:
        return 0

    def func(self) -> str:
        return "parseGraph"

    def __str__(self) -> str:
        return "In node {} ({}): {}".format(self._node, self._op, self._desc)


class OnnxParser(Strict):
    def __init__(self, network: INetworkDefinition, logger: Any) -> None:
        require_logger(self._api, logger, "OnnxParser")
        if not isinstance(network, self._api.module.INetworkDefinition):
            raise TypeError("OnnxParser(): network must be a tensorrt.INetworkDefinition")
        self._network = network
        self._logger = logger
        self._errors: List[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> Optional[ParserError]:
        return self._errors[index] if 0 <= index < len(self._errors) else None

    def clear_errors(self) -> None:
        self._errors = []

    def supports_operator(self, op_name: str) -> bool:
        return op_name in _LAYER_TYPES

    def _fail(self, code: str, desc: str, node: int = -1, node_name: str = "", op: str = "") -> bool:
        err = self._api.cls("ParserError")(getattr(self._api.module.ErrorCode, code), desc, node, node_name, op)
        self._errors.append(err)
        self._api.emit(self._logger, "ERROR", "ModelImporter.cpp: " + str(err))
        return False

    def parse_from_file(self, model: str) -> bool:
        try:
            with open(model, "rb") as handle:
                data = handle.read()
        except OSError:
            return self._fail("MODEL_DESERIALIZE_FAILED", "Failed to open file: {}".format(model))
        return self.parse(data, model)

    def parse(self, model: Any, path: Optional[str] = None) -> bool:
        import onnx

        api = self._api
        mod = api.module
        net = self._network
        if not net._explicit_batch:
            return self._fail("INVALID_GRAPH", "Assertion failed: !mImporterCtx.network()->hasImplicitBatchDimension() "
                              "&& \"This version of the ONNX parser only supports TensorRT INetworkDefinitions with an "
                              "explicit batch dimension. Please ensure the network was initialized with the explicit "
                              "batch flag.\"")
        data = bytes(memoryview(model))
        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:  # protobuf DecodeError
            return self._fail("MODEL_DESERIALIZE_FAILED", "Failed to parse ONNX model: {}".format(exc))
        if not proto.graph.node:
            return self._fail("INVALID_GRAPH", "The ONNX model has no nodes")
        for index, node in enumerate(proto.graph.node):
            if node.op_type not in _LAYER_TYPES or node.domain not in ("", "ai.onnx"):
                return self._fail("UNSUPPORTED_NODE", "No importer registered for op: {}".format(node.op_type),
                                  index, node.name, node.op_type)
        inferred = onnx.shape_inference.infer_shapes(proto)
        elem = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info)
                + list(inferred.graph.input) + list(inferred.graph.output)}
        inits = {i.name for i in proto.graph.initializer}
        inputs, outputs = _plan.onnx_io(data)
        tensors: Dict[str, ITensor] = {}
        tensor_cls = api.cls("ITensor")

        def trt_dtype(name: str) -> Any:
            np_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem.get(name, 1)))
            return {"float32": mod.DataType.FLOAT, "float16": mod.DataType.HALF, "int32": mod.DataType.INT32,
                    "int8": mod.DataType.INT8, "bool": mod.DataType.BOOL, "uint8": mod.DataType.UINT8}.get(
                        np_dtype.name, mod.DataType.INT32)

        for t in inputs:
            tensor = tensor_cls(t["name"], t["shape"], trt_dtype(t["name"]), is_input=True)
            tensors[t["name"]] = tensor
            net._inputs.append(tensor)
        layer_cls = api.cls("ILayer")
        for node in proto.graph.node:
            ins = [tensors[n] for n in node.input if n in tensors and n not in inits]
            outs = []
            for n in node.output:
                tensor = tensor_cls(n, [], trt_dtype(n))
                tensors[n] = tensor
                outs.append(tensor)
            name = node.name or "node_of_{}".format(node.output[0])
            net._layers.append(layer_cls(name, getattr(mod.LayerType, _LAYER_TYPES[node.op_type]), ins, outs, node.op_type))
        for t in outputs:
            tensor = tensors[t["name"]]
            tensor.shape = t["shape"]
            net.mark_output(tensor)
        net._onnx = data
        return True


# -- profiles, timing cache, calibrators, progress ----------------------------------------------
class IOptimizationProfile(Strict):
    def __init__(self) -> None:
        self._shapes: Dict[str, List[Dims]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 (TensorRT's names)
        lo, mid, hi = Dims(min), Dims(opt), Dims(max)
        if len(lo) != len(mid):
            raise FakeTensorRTError("Shape provided for opt is inconsistent with other shapes.")
        if len(lo) != len(hi):
            raise FakeTensorRTError("Shape provided for max is inconsistent with other shapes.")
        if any(d < 0 for d in lo):
            raise FakeTensorRTError("Shape provided for min is inconsistent with other shapes.")
        if any(a > b for a, b in zip(lo, mid)):
            raise FakeTensorRTError("Shape provided for opt is inconsistent with other shapes.")
        if any(a > b for a, b in zip(mid, hi)):
            raise FakeTensorRTError("Shape provided for max is inconsistent with other shapes.")
        self._shapes[input] = [lo, mid, hi]

    def get_shape(self, input: str) -> List[Dims]:  # noqa: A002
        return list(self._shapes.get(input, []))

    def __bool__(self) -> bool:
        return True


class ITimingCache(Strict):
    def __init__(self, entries: Dict[str, str], origin: Dict[str, Any]) -> None:
        self._entries = dict(entries)
        self._origin = dict(origin)

    def serialize(self) -> Any:
        head = json.dumps({"origin": self._origin, "entries": self._entries}, sort_keys=True).encode()
        return self._api.cls("IHostMemory")(TIMING_MAGIC + struct.pack("<I", len(head)) + head)

    def combine(self, input_cache: "ITimingCache", ignore_mismatch: bool) -> bool:
        if input_cache._origin != self._origin and not ignore_mismatch:
            return False
        self._entries.update(input_cache._entries)
        return True

    def reset(self) -> bool:
        self._entries.clear()
        return True


class IInt8Calibrator(Strict):
    """Base of Python calibrators (subclasses must call the base ``__init__``)."""

    _algorithm = "LEGACY_CALIBRATION"

    def __init__(self) -> None:
        object.__setattr__(self, "_calibrator_init", True)

    def get_algorithm(self) -> Any:
        return getattr(self._api.module.CalibrationAlgoType, self._algorithm)

    def get_batch_size(self) -> int:
        raise FakeTensorRTError('Tried to call pure virtual function "IInt8Calibrator::get_batch_size"')

    def get_batch(self, names: List[str]) -> Any:
        raise FakeTensorRTError('Tried to call pure virtual function "IInt8Calibrator::get_batch"')

    def read_calibration_cache(self) -> Any:
        raise FakeTensorRTError('Tried to call pure virtual function "IInt8Calibrator::read_calibration_cache"')

    def write_calibration_cache(self, cache: Any) -> None:
        raise FakeTensorRTError('Tried to call pure virtual function "IInt8Calibrator::write_calibration_cache"')


class IInt8EntropyCalibrator2(IInt8Calibrator):
    _algorithm = "ENTROPY_CALIBRATION_2"


class IInt8EntropyCalibrator(IInt8Calibrator):
    _algorithm = "ENTROPY_CALIBRATION"


class IInt8MinMaxCalibrator(IInt8Calibrator):
    _algorithm = "MINMAX_CALIBRATION"


class IProgressMonitor(Strict):
    """TensorRT 10's build progress callback (subclasses call the base ``__init__``)."""

    def __init__(self) -> None:
        object.__setattr__(self, "_monitor_init", True)

    def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
        raise FakeTensorRTError('Tried to call pure virtual function "IProgressMonitor::phase_start"')

    def step_complete(self, phase_name: str, step: int) -> bool:
        raise FakeTensorRTError('Tried to call pure virtual function "IProgressMonitor::step_complete"')

    def phase_finish(self, phase_name: str) -> None:
        raise FakeTensorRTError('Tried to call pure virtual function "IProgressMonitor::phase_finish"')


# -- builder config ----------------------------------------------------------------------------
_DEPRECATED_10_1 = "Deprecated in TensorRT 10.1. Superseded by explicit quantization."


class IBuilderConfig(Strict):
    _versions = {
        "builder_optimization_level": ("8.6", None),
        "hardware_compatibility_level": ("8.6", None),
        "max_aux_streams": ("8.6", None),
        "progress_monitor": ("10.0", None),
        "int8_calibrator": _REMOVED_IN_11,
        "set_calibration_profile": _REMOVED_IN_11,
        "get_calibration_profile": _REMOVED_IN_11,
    }

    def __init__(self) -> None:
        mod = self._api.module
        self._flags: Dict[str, bool] = {}
        self._pools: Dict[str, int] = {}
        self._profiles: List[IOptimizationProfile] = []
        self._calibration_profile: Optional[IOptimizationProfile] = None
        self._calibrator: Any = None
        self._timing_cache: Optional[ITimingCache] = None
        self._timing_cache_ignore_mismatch: Optional[bool] = None
        self._opt_level = 3
        self._hw_compat = None
        self._aux_streams = -1
        self._dla_core = -1
        self._device_type = mod.DeviceType.GPU
        self._verbosity = mod.ProfilingVerbosity.LAYER_NAMES_ONLY
        self._monitor: Any = None
        self._avg_timing = 1
        # TensorRT enables TF32 by default on Ampere and newer
        if hasattr(mod.BuilderFlag, "TF32"):
            self._flags["TF32"] = True

    def _warn_deprecated(self, what: str) -> None:
        if self._api.at_least("10.1"):
            warnings.warn("{}: {}".format(what, _DEPRECATED_10_1), DeprecationWarning, stacklevel=3)

    # flags
    def set_flag(self, flag: Any) -> None:
        self._flags[self._flag_name(flag)] = True

    def clear_flag(self, flag: Any) -> None:
        self._flags[self._flag_name(flag)] = False

    def get_flag(self, flag: Any) -> bool:
        return self._flags.get(self._flag_name(flag), False)

    def _flag_name(self, flag: Any) -> str:
        if not isinstance(flag, self._api.module.BuilderFlag):
            raise TypeError("flag must be a tensorrt.BuilderFlag, got {!r}".format(flag))
        return flag.name

    @property
    def flags(self) -> int:
        mod = self._api.module
        return sum(1 << int(getattr(mod.BuilderFlag, n)) for n, on in self._flags.items() if on)

    @flags.setter
    def flags(self, value: int) -> None:
        self._flags = {m.name: bool(int(value) & (1 << int(m))) for m in self._api.module.BuilderFlag}

    # memory pools
    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        if not isinstance(pool, self._api.module.MemoryPoolType):
            raise TypeError("pool must be a tensorrt.MemoryPoolType")
        if int(pool_size) < 0:
            raise FakeTensorRTError("pool size must be non-negative")
        self._pools[pool.name] = int(pool_size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(pool.name, DEVICE.total_memory if pool.name == "WORKSPACE" else 0)

    # profiles
    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not isinstance(profile, self._api.module.IOptimizationProfile) or not profile._shapes:
            self._api.log.append(("ERROR", "add_optimization_profile: invalid or empty optimization profile"))
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self._warn_deprecated("set_calibration_profile")
        self._calibration_profile = profile
        return True

    def get_calibration_profile(self) -> Optional[IOptimizationProfile]:
        self._warn_deprecated("get_calibration_profile")
        return self._calibration_profile

    @property
    def int8_calibrator(self) -> Any:
        self._warn_deprecated("int8_calibrator")
        return self._calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, calibrator: Any) -> None:
        self._warn_deprecated("int8_calibrator")
        if calibrator is not None:
            if not isinstance(calibrator, self._api.module.IInt8Calibrator):
                raise TypeError("int8_calibrator must be a tensorrt.IInt8Calibrator")
            if not getattr(calibrator, "_calibrator_init", False):
                raise TypeError("tensorrt.IInt8Calibrator.__init__() must be called when overriding __init__")
        self._calibrator = calibrator

    # timing cache
    def create_timing_cache(self, serialized_timing_cache: Any) -> Optional[ITimingCache]:
        api = self._api
        data = bytes(memoryview(serialized_timing_cache))
        origin = {"trt_version": api.version_string, "compute_capability": list(DEVICE.compute_capability)}
        if not data:
            return api.cls("ITimingCache")({}, origin)
        if not data.startswith(TIMING_MAGIC) or len(data) < len(TIMING_MAGIC) + 4:
            api.log.append(("ERROR", "create_timing_cache: the serialized timing cache is invalid"))
            return None
        (n,) = struct.unpack("<I", data[len(TIMING_MAGIC): len(TIMING_MAGIC) + 4])
        try:
            payload = json.loads(data[len(TIMING_MAGIC) + 4: len(TIMING_MAGIC) + 4 + n].decode())
        except ValueError:
            api.log.append(("ERROR", "create_timing_cache: the serialized timing cache is truncated"))
            return None
        return api.cls("ITimingCache")(payload["entries"], payload["origin"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        api = self._api
        here = {"trt_version": api.version_string, "compute_capability": list(DEVICE.compute_capability)}
        if cache._origin != here and not ignore_mismatch:
            api.log.append(("ERROR", "set_timing_cache: the timing cache was created for {} and cannot be used "
                                     "with {}".format(cache._origin, here)))
            return False
        self._timing_cache = cache
        self._timing_cache_ignore_mismatch = bool(ignore_mismatch)
        return True

    def get_timing_cache(self) -> Optional[ITimingCache]:
        return self._timing_cache

    # 8.6+ knobs
    @property
    def builder_optimization_level(self) -> int:
        return self._opt_level

    @builder_optimization_level.setter
    def builder_optimization_level(self, value: int) -> None:
        if not 0 <= int(value) <= 5:
            raise FakeTensorRTError("builder_optimization_level must be in [0, 5], got {}".format(value))
        self._opt_level = int(value)

    @property
    def hardware_compatibility_level(self) -> Any:
        return self._hw_compat if self._hw_compat is not None else self._api.module.HardwareCompatibilityLevel.NONE

    @hardware_compatibility_level.setter
    def hardware_compatibility_level(self, value: Any) -> None:
        self._hw_compat = value

    @property
    def max_aux_streams(self) -> int:
        return self._aux_streams

    @max_aux_streams.setter
    def max_aux_streams(self, value: int) -> None:
        self._aux_streams = int(value)

    @property
    def progress_monitor(self) -> Any:
        return self._monitor

    @progress_monitor.setter
    def progress_monitor(self, monitor: Any) -> None:
        if monitor is not None:
            if not isinstance(monitor, self._api.module.IProgressMonitor):
                raise TypeError("progress_monitor must be a tensorrt.IProgressMonitor")
            if not getattr(monitor, "_monitor_init", False):
                raise TypeError("tensorrt.IProgressMonitor.__init__() must be called when overriding __init__")
        self._monitor = monitor

    # device, profiling
    @property
    def default_device_type(self) -> Any:
        return self._device_type

    @default_device_type.setter
    def default_device_type(self, value: Any) -> None:
        if not isinstance(value, self._api.module.DeviceType):
            raise TypeError("default_device_type must be a tensorrt.DeviceType")
        self._device_type = value

    @property
    def DLA_core(self) -> int:  # noqa: N802 (TensorRT's name)
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, value: int) -> None:  # noqa: N802
        self._dla_core = int(value)

    @property
    def profiling_verbosity(self) -> Any:
        return self._verbosity

    @profiling_verbosity.setter
    def profiling_verbosity(self, value: Any) -> None:
        if not isinstance(value, self._api.module.ProfilingVerbosity):
            raise TypeError("profiling_verbosity must be a tensorrt.ProfilingVerbosity")
        self._verbosity = value

    @property
    def avg_timing_iterations(self) -> int:
        return self._avg_timing

    @avg_timing_iterations.setter
    def avg_timing_iterations(self, value: int) -> None:
        self._avg_timing = int(value)


# -- builder -----------------------------------------------------------------------------------
class Builder(Strict):
    # TensorRT 11 dropped these; a caller decides from the compute capability
    _versions = {name: _REMOVED_IN_11 for name in ("platform_has_fast_fp16", "platform_has_fast_int8",
                                                   "platform_has_tf32")}

    def __init__(self, logger: Any) -> None:
        self._logger = register_logger(self._api, logger, "createInferBuilder")
        self._max_threads = 1

    @property
    def logger(self) -> Any:
        return self._logger

    @property
    def max_threads(self) -> int:
        return self._max_threads

    @max_threads.setter
    def max_threads(self, value: int) -> None:
        self._max_threads = int(value)

    @property
    def platform_has_fast_fp16(self) -> bool:
        cc = tuple(DEVICE.compute_capability)
        return cc >= (5, 3) and cc != (6, 1)

    @property
    def platform_has_fast_int8(self) -> bool:
        return tuple(DEVICE.compute_capability) >= (6, 1)

    @property
    def platform_has_tf32(self) -> bool:
        return tuple(DEVICE.compute_capability) >= (8, 0)

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802
        return dla_cores(self._api)

    @property
    def max_DLA_batch_size(self) -> int:  # noqa: N802
        return 32 if dla_cores(self._api) else 1

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        api = self._api
        mod = api.module
        known = 0
        for member in mod.NetworkDefinitionCreationFlag:
            known |= 1 << int(member)
        if int(flags) & ~known:
            raise FakeTensorRTError("create_network: unknown network creation flags 0x{:x}".format(int(flags)))
        network = api.cls("INetworkDefinition")(int(flags))
        return network

    def create_builder_config(self) -> IBuilderConfig:
        return self._api.cls("IBuilderConfig")()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return self._api.cls("IOptimizationProfile")()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> Optional[Any]:
        api = self._api
        mod = api.module
        if not isinstance(network, mod.INetworkDefinition) or not isinstance(config, mod.IBuilderConfig):
            raise TypeError("build_serialized_network(): incompatible function arguments")
        record: Dict[str, Any] = {
            "network_flags": network._flags,
            "explicit_batch_flag": bool(network._flags & 1),
            "inputs": {t.name: list(t.shape) for t in network._inputs},
            "flags": sorted(n for n, on in config._flags.items() if on),
            "pool_limits": dict(config._pools),
            "profiles": [{k: [list(s) for s in v] for k, v in p._shapes.items()} for p in config._profiles],
            "calibration_profile": None if config._calibration_profile is None else {
                k: [list(s) for s in v] for k, v in config._calibration_profile._shapes.items()},
            "builder_optimization_level": config._opt_level if api.at_least("8.6") else None,
            "default_device_type": config._device_type.name,
            "dla_core": config._dla_core,
            "profiling_verbosity": config._verbosity.name,
            "precision_constraints": {},
            "output_types": {},
            "timing_cache": None,
            "calibrator_calls": [],
            "calibration_batches": 0,
            "progress": [],
            "strongly_typed": network._strongly_typed,
            "typed_precision": None,
            "result": None,
        }
        api.builds.append(record)

        def fail(message: str) -> None:
            record["result"] = "error: " + message
            api.emit(self._logger, "ERROR", message)

        if api.settings.get("fail_build"):
            fail(str(api.settings["fail_build"]))
            return None
        if network._onnx is None:
            raise FakeTensorRTError("the fake builds only networks populated by OnnxParser")
        if not network._outputs:
            fail("4: [network.cpp::validate::2789] Error Code 4: Internal Error (Network must have at least one output)")
            return None
        api.emit(self._logger, "INFO", "[MemUsageChange] Init builder kernel library: CPU +0, GPU +0, now: CPU 0, GPU 0 (MiB)")

        # -- profiles against the network -----------------------------------------------------------
        dynamic = [t for t in network._inputs if any(d == -1 for d in t.shape)]
        if dynamic and not config._profiles:
            fail("4: [network.cpp::validate::3084] Error Code 4: Internal Error (Network has dynamic or shape "
                 "inputs, but no optimization profile has been defined.)")
            return None
        input_names = {t.name for t in network._inputs}
        for index, profile in enumerate(config._profiles):
            for name in profile._shapes:
                if name not in input_names:
                    fail("4: [network.cpp::validate] Error Code 4: Internal Error (optimization profile {} sets "
                         "dimensions for '{}', which is not a network input)".format(index, name))
                    return None
            for tensor in network._inputs:
                shapes = profile._shapes.get(tensor.name)
                if shapes is None:
                    if tensor in dynamic:
                        fail("4: [network.cpp::validate::3100] Error Code 4: Internal Error ({}: dynamic input is "
                             "missing dimensions in profile {}.)".format(tensor.name, index))
                        return None
                    continue
                if len(shapes[0]) != len(tensor.shape):
                    fail("4: [network.cpp::validate] Error Code 4: Internal Error ({}: profile {} has rank {} but "
                         "the network input has rank {}.)".format(tensor.name, index, len(shapes[0]), len(tensor.shape)))
                    return None
                for axis, fixed in enumerate(tensor.shape):
                    if fixed != -1 and not (shapes[0][axis] == shapes[1][axis] == shapes[2][axis] == fixed):
                        fail("4: [network.cpp::validate::3062] Error Code 4: Internal Error ({}: for dimension "
                             "number {} in profile {} does not match network definition (got min={}, opt={}, max={}), "
                             "expected min=opt=max={}).)".format(tensor.name, axis, index, shapes[0][axis],
                                                                 shapes[1][axis], shapes[2][axis], fixed))
                        return None

        flags = set(record["flags"])
        if network._strongly_typed:
            # the ONNX tensor types decide; TensorRT 10 refuses precision hints on such a network
            weak = sorted(flags & {"FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS",
                                   "PREFER_PRECISION_CONSTRAINTS"})
            if weak:
                fail("4: [network.cpp::validate] Error Code 4: API Usage Error (BuilderFlag::k{} cannot be set "
                     "for a strongly typed network.)".format(weak[0]))
                return None
            hinted = [layer.name for layer in network._layers if layer._precision_set or layer._output_types]
            if hinted:
                fail("4: Error Code 4: API Usage Error (layer {}: setPrecision/setOutputType are not allowed in a "
                     "strongly typed network.)".format(hinted[0]))
                return None
            record["typed_precision"] = _plan.typed_precision(network._onnx)
        if "FP16" in flags and not self.platform_has_fast_fp16:
            api.emit(self._logger, "WARNING", "Half2 support requested on hardware without native FP16 support, "
                     "performance will be negatively affected.")

        # -- precision constraints ----------------------------------------------------------------
        constrained = {}
        output_types = {}
        for layer in network._layers:
            if layer._precision_set:
                constrained[layer.name] = layer._precision.name
            if layer._output_types:
                output_types[layer.name] = {i: t.name for i, t in layer._output_types.items()}
        obey = "OBEY_PRECISION_CONSTRAINTS" in flags
        prefer = "PREFER_PRECISION_CONSTRAINTS" in flags
        record["precision_constraints"] = constrained
        record["output_types"] = output_types
        record["constraints_mode"] = "obey" if obey else "prefer" if prefer else "ignored"
        if (constrained or output_types) and not (obey or prefer):
            api.emit(self._logger, "WARNING", "Layer precision or output type constraints are set but neither "
                     "BuilderFlag.OBEY_PRECISION_CONSTRAINTS nor PREFER_PRECISION_CONSTRAINTS is set: they are ignored.")

        # -- DLA ---------------------------------------------------------------------------------------
        if config._device_type == mod.DeviceType.DLA:
            cores = dla_cores(api)
            if not 0 <= config._dla_core < cores:
                fail("2: [builder.cpp::buildSerializedNetwork] Error Code 2: Internal Error (DLA core {} requested "
                     "but the platform has {} DLA core(s).)".format(config._dla_core, cores))
                return None
            typed_low = network._strongly_typed and any((record["typed_precision"] or {}).values())
            if not ({"FP16", "INT8"} & flags) and not typed_low:
                fail("2: Error Code 2: Internal Error (DLA requires FP16 or INT8 precision; enable BuilderFlag.FP16"
                     "{}.)".format(" or give the strongly typed network float16/Q/DQ tensors"
                                   if network._strongly_typed else ""))
                return None
            on_gpu = [layer.name for layer in network._layers if layer._type.name not in _DLA_TYPES]
            # DLA runs static shapes only: a dynamic input counts as static when every profile pins
            # it (min = opt = max); otherwise nothing runs on DLA and every layer falls back
            ranged = any(list(shapes[0]) != list(shapes[2]) for profile in config._profiles
                         for shapes in profile._shapes.values())
            if dynamic and (ranged or not config._profiles):
                on_gpu = [layer.name for layer in network._layers]
            if on_gpu and "GPU_FALLBACK" not in flags:
                fail("2: Error Code 2: Internal Error (Layer {} cannot run on DLA and GPU fallback is not "
                     "enabled (BuilderFlag.GPU_FALLBACK).)".format(on_gpu[0]))
                return None
            for name in on_gpu:
                api.emit(self._logger, "WARNING", "Layer '{}' (or dynamic shapes) not supported on DLA, falling "
                         "back to GPU.".format(name))
            record["dla_gpu_fallback_layers"] = on_gpu
            record["dla_layers"] = [layer.name for layer in network._layers if layer.name not in on_gpu]

        # -- INT8 calibration ----------------------------------------------------------------------
        calibrated = False
        if "INT8" in flags:
            qdq = any(layer._op in ("QuantizeLinear", "DequantizeLinear") for layer in network._layers)
            if config._calibrator is None and not qdq:
                api.emit(self._logger, "WARNING", "Calibrator is not being used. Users must provide dynamic range "
                         "for all tensors that are not Int32 or Bool.")
            elif config._calibrator is not None:
                ok = self._calibrate(network, config, record)
                if not ok:
                    return None
                calibrated = True

        # -- progress -------------------------------------------------------------------------------
        monitor = config._monitor if api.at_least("10.0") else None
        if monitor is not None:
            phase = "Building engine"
            monitor.phase_start(phase, None, len(network._layers))
            record["progress"].append(("start", phase, len(network._layers)))
            for step in range(len(network._layers)):
                keep_going = monitor.step_complete(phase, step)
                record["progress"].append(("step", step))
                if keep_going is False:
                    monitor.phase_finish(phase)
                    fail("4: Error Code 4: Internal Error (Build was cancelled by the progress monitor.)")
                    return None
            monitor.phase_finish(phase)
            record["progress"].append(("finish", phase))

        # -- timing cache ---------------------------------------------------------------------------
        typed = record["typed_precision"] or {}
        precision = ("int8" if "INT8" in flags or typed.get("qdq") else
                     "fp16" if "FP16" in flags or typed.get("float16") else "fp32")
        keys = ["{}|{}|{}".format(layer._type.name, layer.name, precision) for layer in network._layers]
        cache = config._timing_cache
        if cache is not None and "DISABLE_TIMING_CACHE" not in flags:
            hits = sum(1 for k in keys if k in cache._entries)
            for k in keys:
                cache._entries.setdefault(k, "tactic-{}".format(abs(hash(k)) % 1000))
            record["timing_cache"] = {"hits": hits, "misses": len(keys) - hits,
                                      "ignore_mismatch": config._timing_cache_ignore_mismatch}

        # -- the plan -----------------------------------------------------------------------------
        io_dtypes = {t.name: _np_name(t.dtype) for t in network._inputs + network._outputs}
        fp32_layers = [n for n, p in constrained.items() if p == "FLOAT"] if (obey or prefer) else []
        profiles = [{k: [list(s) for s in v] for k, v in p._shapes.items()} for p in config._profiles]
        if not profiles:
            profiles = [{t.name: [list(t.shape)] * 3 for t in network._inputs}]
        header = _plan.header_for(
            network._onnx,
            api.version_string,
            DEVICE.compute_capability,
            DEVICE.name,
            profiles,
            io_dtypes=io_dtypes,
            flags=sorted(flags),
            fp32_layers=fp32_layers,
            dla_core=config._dla_core if config._device_type == mod.DeviceType.DLA else None,
            calibrated=calibrated,
            num_layers=len(network._layers),
            workspace=config._pools.get("WORKSPACE"),
        )
        header["strongly_typed"] = network._strongly_typed
        record["result"] = "ok"
        api.emit(self._logger, "INFO", "Engine generation completed")
        return api.cls("IHostMemory")(_plan.encode(header, network._onnx))

    def _calibrate(self, network: INetworkDefinition, config: IBuilderConfig, record: Dict[str, Any]) -> bool:
        """Drive the user's calibrator as TensorRT does; False (error logged) when it fails."""
        api = self._api
        calibrator = config._calibrator
        calls = record["calibrator_calls"]
        dynamic = any(any(d == -1 for d in t.shape) for t in network._inputs)
        profile = config._calibration_profile
        if dynamic and profile is None:
            record["result"] = "error: no calibration profile"
            api.emit(self._logger, "ERROR", "4: [builderConfig.cpp] Error Code 4: Internal Error (Calibration "
                     "profile must be set (IBuilderConfig.set_calibration_profile) to calibrate a network with "
                     "dynamic shapes.)")
            return False

        def guarded(name: str, *args: Any) -> Any:
            # TensorRT's trampolines print Python exceptions and carry on with a failure value.
            try:
                return getattr(calibrator, name)(*args)
            except Exception as exc:  # noqa: BLE001 (mirrors the C++ catch-all)
                calls.append(("exception", name, "{}: {}".format(type(exc).__name__, exc)))
                print("[ERROR] Exception caught in {}(): {}".format(name, exc), file=sys.stderr)
                return None

        calls.append(("get_batch_size",))
        batch_size = guarded("get_batch_size")
        calls.append(("read_calibration_cache",))
        cache = guarded("read_calibration_cache")
        header = "TRT-{}-{}".format(_version_tag(api), _algo_text(calibrator.get_algorithm().name))
        names = [t.name for t in network._inputs]
        if cache is not None and len(bytes(memoryview(cache))) > 0:
            text = bytes(memoryview(cache)).decode("latin-1")
            lines = text.splitlines()
            if lines and lines[0] == header and all(any(line.startswith(n + ":") for line in lines) for n in names):
                record["calibration_cache"] = "used"
                return True
            api.emit(self._logger, "WARNING", "The calibration cache does not match this TensorRT version, "
                     "algorithm or network ({!r}); recalibrating.".format(lines[0] if lines else ""))
            record["calibration_cache"] = "rejected"
        shapes = {}
        for t in network._inputs:
            if profile is not None and t.name in profile._shapes:
                shapes[t.name] = tuple(profile._shapes[t.name][1])
            else:
                shapes[t.name] = tuple(t.shape)
        ranges: Dict[str, float] = {}
        while True:
            calls.append(("get_batch", list(names)))
            pointers = guarded("get_batch", list(names))
            if pointers is None or len(pointers) == 0:
                break
            if len(pointers) != len(names):
                record["result"] = "error: get_batch returned {} pointers for {} inputs".format(len(pointers), len(names))
                api.emit(self._logger, "ERROR", "Calibrator get_batch returned {} pointers, expected {}".format(
                    len(pointers), len(names)))
                return False
            feeds = {}
            try:
                for name, pointer in zip(names, pointers):
                    if not isinstance(pointer, (int, np.integer)):
                        raise TypeError("get_batch must return device pointers (int), got {}".format(type(pointer).__name__))
                    dtype = np.dtype(_np_name(next(t.dtype for t in network._inputs if t.name == name)))
                    raw = DEVICE.view(int(pointer), _plan.volume(shapes[name]) * dtype.itemsize)
                    feeds[name] = raw.view(dtype).reshape(shapes[name]).copy()
            except (FakeCudaError, TypeError) as exc:
                record["result"] = "error: {}".format(exc)
                api.emit(self._logger, "ERROR", "1: [calibrator.cpp::calibrate] Error Code 1: Cuda Runtime ({})".format(exc))
                return False
            for name, value in feeds.items():
                ranges[name] = max(ranges.get(name, 0.0), float(np.abs(value).max()) if value.size else 0.0)
            outs = _plan.run(network._onnx, feeds, fp16_compute=False)
            for name, value in outs.items():
                ranges[name] = max(ranges.get(name, 0.0), float(np.abs(value).max()) if value.size else 0.0)
            record["calibration_batches"] += 1
        if record["calibration_batches"] == 0:
            record["result"] = "error: no calibration batches"
            api.emit(self._logger, "ERROR", "4: [standardEngineBuilder.cpp::initCalibrationParams::1460] Error Code "
                     "4: Internal Error (Calibration failure occurred with no scaling factors detected. This could be "
                     "due to no int8 calibrator or insufficient custom scales for network layers. Please see int8 "
                     "sample to setup calibration correctly.)")
            return False
        lines = [header] + ["{}: {}".format(n, struct.pack(">f", max(r, 1e-8) / 127.0).hex()) for n, r in sorted(ranges.items())]
        blob = ("\n".join(lines) + "\n").encode("latin-1")
        calls.append(("write_calibration_cache", len(blob)))
        guarded("write_calibration_cache", memoryview(blob))
        record["calibration_cache"] = "written"
        record["calibration_batch_size"] = batch_size
        return True


def _algo_text(name: str) -> str:
    return {"ENTROPY_CALIBRATION_2": "EntropyCalibration2", "ENTROPY_CALIBRATION": "EntropyCalibration",
            "MINMAX_CALIBRATION": "MinMaxCalibration", "LEGACY_CALIBRATION": "LegacyCalibration"}[name]


def _np_name(dtype: Any) -> str:
    return {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT8": "int8", "BOOL": "bool",
            "UINT8": "uint8"}.get(dtype.name, "float32")
