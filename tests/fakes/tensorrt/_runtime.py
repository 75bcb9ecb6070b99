"""Runtime side of the fake: loggers, Dims, IHostMemory, Runtime, ICudaEngine, IExecutionContext.

Execution is real: ``execute_async_v3`` enqueues, on the fake device's stream, an operation
that reads the input bytes from device memory, runs the embedded ONNX model with ONNX
Runtime and writes the output bytes back -- when the stream is synchronised, not before.
"""

import os
import weakref
from typing import Any, Dict, List, Optional

import numpy as np
from packaging.version import Version

from ..device import DEVICE, FakeCudaError
from . import _plan
from ._api import FakeTensorRTError, Strict


class Dims(tuple):
    """``trt.Dims``: a sequence of ints, -1 for a dynamic dimension."""

    def __new__(cls, shape: Any = ()) -> "Dims":
        return super().__new__(cls, tuple(int(d) for d in shape))

    def __repr__(self) -> str:
        return "({})".format(", ".join(str(d) for d in self))


class ILogger(Strict):
    """Base of Python loggers; subclasses override ``log(severity, msg)`` and call ``__init__``."""

    def __init__(self) -> None:
        object.__setattr__(self, "_ilogger_init", True)

    def log(self, severity: Any, msg: str) -> None:
        raise FakeTensorRTError('Tried to call pure virtual function "ILogger::log"')


class Logger(ILogger):
    """``trt.Logger(min_severity)``: prints messages at or above ``min_severity``."""

    def __init__(self, min_severity: Any = None) -> None:
        ILogger.__init__(self)
        self._min = min_severity if min_severity is not None else self._api.module.ILogger.Severity.WARNING

    @property
    def min_severity(self) -> Any:
        return self._min

    @min_severity.setter
    def min_severity(self, value: Any) -> None:
        self._min = value

    def log(self, severity: Any, msg: str) -> None:
        if int(severity) <= int(self._min):
            print("[TRT] [{}] {}".format(severity.name[0], msg))


def require_logger(api: Any, logger: Any, who: str) -> None:
    """pybind11 refuses a non-ILogger, or a subclass that skipped ``ILogger.__init__``."""
    if not isinstance(logger, api.module.ILogger):
        raise TypeError("{}(): incompatible constructor arguments; logger must be a tensorrt.ILogger, got {!r}".format(
            who, type(logger).__name__))
    if not getattr(logger, "_ilogger_init", False):
        raise TypeError("tensorrt.ILogger.__init__() must be called when overriding __init__")


# Api -> weak reference to the first logger given to a Builder, Runtime or Refitter of that module.
_REGISTERED: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


class RegisteredLogger:
    """What every Builder, Runtime and Refitter after the first logs through: the logger TensorRT
    registered first. TensorRT holds it as a raw pointer, so it is held weakly here, and logging
    after it was freed raises (where the real library would crash or print through freed memory)."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def log(self, severity: Any, msg: str) -> None:
        logger = _REGISTERED[self._api]()
        if logger is None:
            raise FakeTensorRTError("TensorRT logged '{}' through the first logger it registered, which was freed "
                                    "(the real library uses freed memory here)".format(msg))
        logger.log(severity, msg)


def register_logger(api: Any, logger: Any, who: str) -> Any:
    """TensorRT keeps the first logger given to a Builder, Runtime or Refitter for the process and
    ignores later ones with a warning. Returns what the new object logs through: ``logger`` when it
    is the registered one (kept alive with the object, as pybind11's keep_alive does), else the
    registered logger."""
    require_logger(api, logger, who.replace("createInfer", ""))
    with api.lock:
        first = _REGISTERED.get(api)
        if first is None:
            _REGISTERED[api] = weakref.ref(logger)
            return logger
    if first() is logger:
        return logger
    registered = RegisteredLogger(api)
    api.emit(registered, "WARNING", "The logger passed into {} differs from one already registered for an existing "
             "builder, runtime, or refitter. So the current new logger is ignored, and TensorRT will use the logger "
             "already registered.".format(who))
    return registered


def registered_logger(api: Any) -> Any:
    """The logger TensorRT registered first for ``api``'s module (None: none yet, or freed)."""
    ref = _REGISTERED.get(api)
    return ref() if ref is not None else None


class IHostMemory(bytes):
    """Serialized data returned by TensorRT; supports the buffer protocol, ``nbytes``, ``dtype``."""

    _api: Any

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> Any:
        return self._api.module.DataType.UINT8


class Runtime(Strict):
    """``trt.Runtime(logger)``."""

    _versions = {"engine_host_code_allowed": ("8.6", None), "load_runtime": ("8.6", None)}

    def __init__(self, logger: Any) -> None:
        self._logger = register_logger(self._api, logger, "createInferRuntime")
        self._given_logger = logger
        self._dla_core = -1
        self._host_code = False
        #: the TensorRT release of the lean runtime library load_runtime loaded (None: none)
        self._lean_version: Optional[str] = None

    def load_runtime(self, path: str) -> Optional["Runtime"]:
        """``IRuntime::loadRuntime``: a runtime on the lean runtime library at ``path``, for plans built
        with VERSION_COMPATIBLE and EXCLUDE_LEAN_RUNTIME by that library's release. The libraries the
        fake machine has: ``settings["lean_libraries"]`` (path -> release), by default this release's
        ``libnvinfer_lean.so.<major>`` (by that name or in any folder)."""
        api = self._api
        libraries = api.settings.get("lean_libraries")
        if libraries is None:
            own = "libnvinfer_lean.so.{}".format(api.version.release[0])
            libraries = {str(path): api.version_string} if os.path.basename(str(path)) == own else {}
        if str(path) not in libraries:
            api.emit(self._logger, "ERROR", "1: [runtime.cpp::loadRuntime] Error Code 1: Internal Error (Unable to "
                     "load library: {}: cannot open shared object file: No such file or directory)".format(path))
            return None
        lean = type(self)(self._given_logger)
        lean._lean_version = str(libraries[str(path)])
        api.count("load_runtime")
        return lean

    @property
    def engine_host_code_allowed(self) -> bool:
        return self._host_code

    @engine_host_code_allowed.setter
    def engine_host_code_allowed(self, value: bool) -> None:
        self._host_code = bool(value)

    @property
    def logger(self) -> Any:
        return self._given_logger

    @property
    def num_DLA_cores(self) -> int:
        return dla_cores(self._api)

    @property
    def DLA_core(self) -> int:
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, value: int) -> None:
        self._dla_core = int(value)

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Optional["ICudaEngine"]:
        api = self._api
        api.count("deserialize")
        try:
            data = bytes(memoryview(serialized_engine))
        except TypeError:
            raise TypeError("deserialize_cuda_engine(): incompatible function arguments; expected a buffer") from None
        try:
            header, onnx_bytes = _plan.decode(data)
        except _plan.PlanError as exc:
            api.count("deserialize_failed")
            api.emit(self._logger, "ERROR", "1: [runtime.cpp::parsePlan::314] Error Code 1: Serialization "
                     "(Serialization assertion failed: {}.)".format(exc))
            return None
        problem = self._version_problem(header)
        if problem is not None:
            api.count("deserialize_failed")
            api.emit(self._logger, "ERROR", problem)
            return None
        if tuple(header["compute_capability"]) != tuple(DEVICE.compute_capability):
            api.count("deserialize_failed")
            api.emit(self._logger, "ERROR", "6: The engine plan file is generated on an incompatible device, "
                     "expecting compute {}.{} got compute {}.{}, please rebuild.".format(
                         DEVICE.compute_capability[0], DEVICE.compute_capability[1],
                         header["compute_capability"][0], header["compute_capability"][1]))
            return None
        return api.cls("ICudaEngine")(header, onnx_bytes, data, self._logger)


    def _version_problem(self, header: Dict[str, Any]) -> Optional[str]:
        """Why this runtime cannot run the plan's TensorRT version (None when it can).

        A version-compatible plan (8.6+) runs in its release and later ones; the lean runtime only
        runs version-compatible plans, the dispatch runtime only those that embed the lean runtime;
        a plan that embeds the lean runtime carries host code, which no runtime runs unless allowed."""
        api = self._api
        flags = header.get("flags") or []
        built = header["trt_version"]
        kind = getattr(api.module, "__name__", "tensorrt")
        if "VERSION_COMPATIBLE" not in flags:
            if kind != "tensorrt":
                return ("1: [runtime.cpp::deserializeCudaEngine] Error Code 1: Serialization (the {} runtime only "
                        "runs version-compatible engines; this engine was built without version compatibility.)"
                        .format(kind))
            if built != api.version_string:
                return ("6: The engine plan file is not compatible with this version of TensorRT, expecting library "
                        "version {} got {}, please rebuild.".format(api.version_string, built))
            return None
        if Version(built) > api.version:
            return ("6: The engine plan file is not compatible with this version of TensorRT, expecting library "
                    "version {} or later got {}, please rebuild.".format(api.version_string, built))
        if "EXCLUDE_LEAN_RUNTIME" in flags:
            # TensorRT runs a plan without its lean runtime only on a runtime that loaded the building
            # release's lean runtime library (IRuntime::loadRuntime)
            if self._lean_version is None:
                return ("1: [runtime.cpp::deserializeCudaEngine] Error Code 1: Serialization (the engine was built "
                        "with kEXCLUDE_LEAN_RUNTIME; load the lean runtime of TensorRT {} with "
                        "IRuntime::loadRuntime before deserializing it.)".format(built))
            if self._lean_version != built:
                return ("1: [runtime.cpp::deserializeCudaEngine] Error Code 1: Serialization (the loaded lean "
                        "runtime is TensorRT {}, the engine was built by TensorRT {}.)".format(self._lean_version, built))
            return None
        # a version-compatible plan that embeds its lean runtime carries host code, which any
        # runtime runs only when allowed to (setEngineHostCodeAllowed(true))
        if "EXCLUDE_LEAN_RUNTIME" not in flags and not self._host_code:
            return ("1: [runtime.cpp::deserializeCudaEngine] Error Code 1: Serialization (the engine carries host "
                    "code (its lean runtime) and engine_host_code_allowed is false.)")
        return None


def dla_cores(api: Any) -> int:
    if api.settings.get("dla_cores") is not None:
        return int(api.settings["dla_cores"])
    # Orin and Xavier have two DLA cores; data-centre GPUs none.
    return 2 if DEVICE.integrated and tuple(DEVICE.compute_capability) in ((7, 2), (8, 7)) else 0


class ICudaEngine(Strict):
    """A deserialized fake engine (name-based API only)."""

    _versions = {
        "device_memory_size_v2": ("10.1", None),
        "device_memory_size": (None, "11.0"),
        "hardware_compatibility_level": ("8.6", None),
    }

    def __init__(self, header: Dict[str, Any], onnx_bytes: bytes, plan: bytes, logger: Any) -> None:
        self._header = header
        self._onnx = onnx_bytes
        self._plan = plan
        self._logger = logger
        self._tensors = {t["name"]: t for t in header["tensors"]}
        self._order = [t["name"] for t in header["tensors"]]

    # -- fake-only helpers (underscore: never part of the real API) -----------------------------
    @property
    def _fake_header(self) -> Dict[str, Any]:
        return dict(self._header)

    def _error(self, message: str) -> None:
        self._api.emit(self._logger, "ERROR", message)

    def _tensor(self, name: str, call: str) -> Optional[Dict[str, Any]]:
        tensor = self._tensors.get(name)
        if tensor is None:
            self._error("3: [engine.cpp::{}] Error Code 3: API Usage Error (Parameter check failed, condition: "
                        "tensor name '{}' is not an I/O tensor of this engine.)".format(call, name))
        return tensor

    # -- the bound API ------------------------------------------------------------------------
    @property
    def num_io_tensors(self) -> int:
        return len(self._order)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._header["profiles"])

    @property
    def num_layers(self) -> int:
        return int(self._header.get("num_layers") or 0)

    @property
    def name(self) -> str:
        return "fake-engine-{}".format(self._header["onnx_sha256"][:8])

    @property
    def device_memory_size(self) -> int:
        return self._activation_bytes()

    @property
    def device_memory_size_v2(self) -> int:
        return self._activation_bytes()

    @property
    def refittable(self) -> bool:
        return False

    @property
    def hardware_compatibility_level(self) -> Any:
        return self._api.module.HardwareCompatibilityLevel.NONE

    def _activation_bytes(self) -> int:
        max_batch = 1
        for profile in self._header["profiles"]:
            for shapes in profile.values():
                max_batch = max(max_batch, int(shapes[2][0]))
        return 1 << 20 if max_batch <= 1 else max_batch * (1 << 18)

    def get_tensor_name(self, index: int) -> Optional[str]:
        if not 0 <= int(index) < len(self._order):
            self._error("3: [engine.cpp::getIOTensorName] Error Code 3: API Usage Error (Parameter check "
                        "failed, condition: (index >= 0) && (index < getNbIOTensors()).)")
            return None
        return self._order[int(index)]

    def get_tensor_mode(self, name: str) -> Any:
        modes = self._api.module.TensorIOMode
        tensor = self._tensors.get(name)
        return modes.NONE if tensor is None else getattr(modes, tensor["mode"])

    def get_tensor_shape(self, name: str) -> Dims:
        tensor = self._tensor(name, "getTensorShape")
        return Dims(tensor["shape"]) if tensor else Dims(())

    def get_tensor_dtype(self, name: str) -> Any:
        tensor = self._tensor(name, "getTensorDataType")
        dtypes = self._api.module.DataType
        if tensor is None:
            return dtypes.FLOAT
        return {"float32": dtypes.FLOAT, "float16": dtypes.HALF, "int32": dtypes.INT32, "int8": dtypes.INT8,
                "bool": dtypes.BOOL, "uint8": dtypes.UINT8}[tensor["dtype"]]

    def get_tensor_location(self, name: str) -> Any:
        self._tensor(name, "getTensorLocation")
        return self._api.module.TensorLocation.DEVICE

    def is_shape_inference_io(self, name: str) -> bool:
        self._tensor(name, "isShapeInferenceIO")
        return False

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Dims]:
        tensor = self._tensor(name, "getProfileShape")
        if tensor is None:
            return []
        if tensor["mode"] != "INPUT":
            raise FakeTensorRTError("get_tensor_profile_shape: '{}' is not an input tensor".format(name))
        if not 0 <= int(profile_index) < self.num_optimization_profiles:
            raise FakeTensorRTError("get_tensor_profile_shape: profile index {} out of range".format(profile_index))
        shapes = self._header["profiles"][int(profile_index)][name]
        return [Dims(s) for s in shapes]

    def create_execution_context(self) -> "IExecutionContext":
        self._api.count("contexts")
        return self._api.cls("IExecutionContext")(self)

    def serialize(self) -> IHostMemory:
        return self._api.cls("IHostMemory")(self._plan)


class IExecutionContext(Strict):
    """Shapes and addresses per context; ``execute_async_v3`` runs through ONNX Runtime on sync."""

    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine
        self._shapes: Dict[str, Dims] = {}
        self._addresses: Dict[str, int] = {}
        self._profile = 0
        self._name = ""
        self._debug_sync = False
        #: per-context counters tests can read
        self._stats = {"set_input_shape": 0, "set_tensor_address": 0, "enqueued": 0, "run": 0}

    def _error(self, message: str) -> None:
        self._engine._error(message)

    @property
    def engine(self) -> ICudaEngine:
        return self._engine

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = str(value)

    @property
    def debug_sync(self) -> bool:
        return self._debug_sync

    @debug_sync.setter
    def debug_sync(self, value: bool) -> None:
        self._debug_sync = bool(value)

    @property
    def active_optimization_profile(self) -> int:
        return self._profile

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= int(profile_index) < self._engine.num_optimization_profiles:
            self._error("3: [executionContext.cpp::setOptimizationProfileInternal] Error Code 3: API Usage "
                        "Error (profile index {} out of range)".format(profile_index))
            return False
        if int(profile_index) != self._profile:
            self._profile = int(profile_index)
            self._shapes.clear()
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        api = self._api
        self._stats["set_input_shape"] += 1
        api.count("set_input_shape")
        tensor = self._engine._tensors.get(name)
        wanted = Dims(shape)
        prefix = "3: [executionContext.cpp::setInputShape] Error Code 3: API Usage Error (Parameter check failed, "
        if tensor is None or tensor["mode"] != "INPUT":
            self._error(prefix + "condition: '{}' is not an input tensor of the engine.)".format(name))
            api.count("set_input_shape_failed")
            return False
        static = tensor["shape"]
        if len(wanted) != len(static):
            self._error(prefix + "condition: engineDims.nbDims == dims.nbDims. Rank mismatch for {}: set {} "
                        "dims {}, engine has {}.)".format(name, len(wanted), list(wanted), list(static)))
            api.count("set_input_shape_failed")
            return False
        for got, fixed in zip(wanted, static):
            if fixed != -1 and got != fixed:
                self._error(prefix + "condition: engineDims.d[i] == dims.d[i]. Static dimension mismatch while "
                            "setting input shape for {}. Set dimensions are {}. Expected dimensions are {}.)".format(
                                name, list(wanted), list(static)))
                api.count("set_input_shape_failed")
                return False
        low, _, high = self._engine._header["profiles"][self._profile][name]
        if any(w < lo or w > hi for w, lo, hi in zip(wanted, low, high)):
            self._error(prefix + "condition: satisfyProfile. Set dimension {} for tensor {} does not satisfy any "
                        "optimization profiles. Valid range for profile {}: {}..{}.)".format(
                            list(wanted), name, self._profile, list(low), list(high)))
            api.count("set_input_shape_failed")
            return False
        self._shapes[name] = wanted
        return True

    def _inputs(self) -> List[str]:
        return [n for n in self._engine._order if self._engine._tensors[n]["mode"] == "INPUT"]

    def _outputs(self) -> List[str]:
        return [n for n in self._engine._order if self._engine._tensors[n]["mode"] == "OUTPUT"]

    def get_tensor_shape(self, name: str) -> Dims:
        tensor = self._engine._tensors.get(name)
        if tensor is None:
            self._error("3: [executionContext.cpp::getTensorShape] Error Code 3: API Usage Error (Parameter "
                        "check failed, condition: '{}' is not an I/O tensor.)".format(name))
            return Dims(())
        if tensor["mode"] == "INPUT":
            return self._shapes.get(name, Dims(tensor["shape"]))
        inputs = self._inputs()
        if not all(n in self._shapes for n in inputs):
            return Dims(tensor["shape"])
        batch = self._shapes[inputs[0]][0]
        return Dims(batch if d == -1 else d for d in tensor["shape"])

    def infer_shapes(self) -> List[str]:
        return [n for n in self._inputs() if n not in self._shapes]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._stats["set_tensor_address"] += 1
        self._api.count("set_tensor_address")
        if name not in self._engine._tensors:
            self._error("3: [executionContext.cpp::setTensorAddress] Error Code 3: API Usage Error (Parameter "
                        "check failed, condition: '{}' is not an I/O tensor of the engine.)".format(name))
            return False
        if not isinstance(memory, int) or isinstance(memory, bool):
            raise TypeError("set_tensor_address(): incompatible function arguments; memory must be an int, got "
                            "{}".format(type(memory).__name__))
        if memory == 0:
            self._error("3: [executionContext.cpp::setTensorAddress] Error Code 3: API Usage Error (Parameter "
                        "check failed, condition: address != nullptr for tensor {}.)".format(name))
            return False
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        api = self._api
        prefix = "3: [executionContext.cpp::enqueueV3] Error Code 3: API Usage Error (Parameter check failed, "
        missing_shapes = self.infer_shapes()
        if missing_shapes:
            self._error(prefix + "condition: all input dimensions specified. Input shape of {} not set; call "
                        "set_input_shape before enqueue.)".format(", ".join(missing_shapes)))
            api.count("execute_failed")
            return False
        for name in self._engine._order:
            if name not in self._addresses:
                self._error(prefix + "condition: address is set. Neither address or allocator is set for {} "
                            "tensor {}. Call set_tensor_address before enqueue.)".format(
                                self._engine._tensors[name]["mode"].lower(), name))
                api.count("execute_failed")
                return False
        stream = None
        if int(stream_handle) != 0:
            try:
                stream = DEVICE.stream(int(stream_handle))
            except FakeCudaError as exc:
                self._error("1: [executionContext.cpp::enqueueV3] Error Code 1: Cuda Runtime ({})".format(exc))
                api.count("execute_failed")
                return False
        else:
            api.emit(self._engine._logger, "WARNING", "Using default stream in enqueueV3() may lead to "
                     "performance issues due to additional calls to cudaStreamSynchronize() by TensorRT to ensure "
                     "correct synchronization. Please use non-default stream instead.")
        # Capture everything now: later set_* calls must not change an enqueued execution.
        shapes = {n: tuple(self.get_tensor_shape(n)) for n in self._engine._order}
        addresses = dict(self._addresses)
        engine = self._engine
        # weak typing: the precision flags round outputs through float16; a strongly typed engine
        # computes in its ONNX types, which ONNX Runtime runs as they are (float16 tensors, Q/DQ)
        fp16_compute = "FP16" in engine._header["flags"] or "INT8" in engine._header["flags"]
        stats = self._stats

        def op() -> None:
            feeds = {}
            for name in self._inputs():
                dtype = np.dtype(engine._tensors[name]["dtype"])
                nbytes = _plan.volume(shapes[name]) * dtype.itemsize
                raw = DEVICE.view(addresses[name], nbytes)
                feeds[name] = raw.view(dtype).reshape(shapes[name]).copy()
            results = _plan.run(engine._onnx, feeds, fp16_compute)
            for name in self._outputs():
                dtype = np.dtype(engine._tensors[name]["dtype"])
                value = np.ascontiguousarray(results[name], dtype=dtype)
                if tuple(value.shape) != shapes[name]:
                    raise FakeCudaError("fake engine: output {} has shape {} but the context resolved {}".format(
                        name, value.shape, shapes[name]))
                dst = DEVICE.view(addresses[name], value.nbytes)
                dst[:] = value.reshape(-1).view(np.uint8)
            stats["run"] += 1
            api.count("executions_run")

        stats["enqueued"] += 1
        api.count("executions_enqueued")
        if stream is None:
            op()
        else:
            stream.enqueue(op)
        return True
