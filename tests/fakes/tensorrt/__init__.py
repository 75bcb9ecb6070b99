"""A strict fake of the ``tensorrt`` Python module (name-based API of TensorRT 8.5 - 11.x).

Tests never import this as ``tensorrt`` directly: :func:`make_module` builds a fresh module
object that plays one version (``"8.5"``, ``"8.6"``, ``"10.x"`` or ``"11.x"``), and the fixture
in ``tests/fakes/trt_fixture.py`` installs it as ``sys.modules["tensorrt"]``.

What it binds is a subset of the real module (checked against the committed name lists of
the 10.x and 11.x wheels by tests/gpu/test_tensorrt_names.py): nothing removed in TensorRT 10 exists in
any mode (no bindings API, ``execute_async_v2``, ``build_engine``, ``max_workspace_size``),
8.6+ members are absent when it plays 8.5, and in 11.x mode nothing TensorRT 11 removed exists:
no FP16/INT8/BF16/FP8 builder flags, no OBEY/PREFER_PRECISION_CONSTRAINTS, no
``layer.precision`` or ``set_output_type``, no INT8 calibrators or ``int8_calibrator``, no
``platform_has_fast_*``, no EXPLICIT_BATCH. Every 11.x network is strongly typed: the engine
runs in the types of its ONNX graph (float16 tensors, Q/DQ). ``module._fake`` (an :class:`Api`) holds what
tests read: ``builds`` (one record per build), ``counters``, ``log`` and ``settings``.
"""

from typing import Any, Dict, List, Optional, Sequence

from ..device import DEVICE
from . import _builder, _plan, _runtime
from ._api import MODES, Api, FakeTensorRTError, RecordingModule, make_enum

__all__ = ["MODES", "make_module", "make_fake_engine", "FakeTensorRTError"]

# (member, since, until): values are positions, stable across versions
_ENUMS: Dict[str, List[tuple]] = {
    "DataType": [("FLOAT", None, None), ("HALF", None, None), ("INT8", None, None), ("INT32", None, None),
                 ("BOOL", None, None), ("UINT8", None, None), ("FP8", "8.6", None), ("BF16", "10.0", None),
                 ("INT64", "10.0", None), ("INT4", "10.0", None)],
    "TensorIOMode": [("NONE", None, None), ("INPUT", None, None), ("OUTPUT", None, None)],
    "TensorLocation": [("DEVICE", None, None), ("HOST", None, None)],
    "MemoryPoolType": [("WORKSPACE", None, None), ("DLA_MANAGED_SRAM", None, None), ("DLA_LOCAL_DRAM", None, None),
                       ("DLA_GLOBAL_DRAM", None, None), ("TACTIC_DRAM", "8.6", None),
                       ("TACTIC_SHARED_MEMORY", "10.0", None)],
    # TensorRT 11 removed every builder-side precision control: networks are strongly typed
    "BuilderFlag": [("FP16", None, "11.0"), ("INT8", None, "11.0"), ("DEBUG", None, None), ("GPU_FALLBACK", None, None),
                    ("STRICT_TYPES", None, "8.6"), ("REFIT", None, None), ("DISABLE_TIMING_CACHE", None, None),
                    ("TF32", None, None), ("SPARSE_WEIGHTS", None, None), ("SAFETY_SCOPE", None, None),
                    ("OBEY_PRECISION_CONSTRAINTS", None, "11.0"), ("PREFER_PRECISION_CONSTRAINTS", None, "11.0"),
                    ("DIRECT_IO", None, None), ("REJECT_EMPTY_ALGORITHMS", None, "11.0"),
                    ("ENABLE_TACTIC_HEURISTIC", None, "8.6"), ("VERSION_COMPATIBLE", "8.6", None),
                    ("EXCLUDE_LEAN_RUNTIME", "8.6", None), ("FP8", "8.6", "11.0"), ("BF16", "10.0", "11.0"),
                    ("ERROR_ON_TIMING_CACHE_MISS", "10.0", None), ("DISABLE_COMPILATION_CACHE", "10.0", None),
                    ("STRIP_PLAN", "10.0", None), ("WEIGHT_STREAMING", "10.0", None)],
    "DeviceType": [("GPU", None, None), ("DLA", None, None)],
    "ProfilingVerbosity": [("LAYER_NAMES_ONLY", None, None), ("NONE", None, None), ("DETAILED", None, None)],
    "NetworkDefinitionCreationFlag": [("EXPLICIT_BATCH", None, "11.0"), ("EXPLICIT_PRECISION", None, "10.0"),
                                      ("STRONGLY_TYPED", "10.0", None)],
    "CalibrationAlgoType": [("LEGACY_CALIBRATION", None, "11.0"), ("ENTROPY_CALIBRATION", None, "11.0"),
                            ("ENTROPY_CALIBRATION_2", None, "11.0"), ("MINMAX_CALIBRATION", None, "11.0")],
    "HardwareCompatibilityLevel": [("NONE", "8.6", None), ("AMPERE_PLUS", "8.6", None)],
    "ErrorCode": [("SUCCESS", None, None), ("INTERNAL_ERROR", None, None), ("MEM_ALLOC_FAILED", None, "11.0"),
                  ("MODEL_DESERIALIZE_FAILED", None, None), ("INVALID_VALUE", None, None),
                  ("INVALID_GRAPH", None, None), ("INVALID_NODE", None, None), ("UNSUPPORTED_GRAPH", None, None),
                  ("UNSUPPORTED_NODE", None, None)],
    "LayerType": [(name, since, None) for name, since in (
        ("CONVOLUTION", None), ("ACTIVATION", None), ("POOLING", None), ("SCALE", None), ("SOFTMAX", None),
        ("DECONVOLUTION", None), ("CONCATENATION", None), ("ELEMENTWISE", None), ("PLUGIN", None),
        ("UNARY", None), ("PADDING", None), ("SHUFFLE", None), ("REDUCE", None), ("TOPK", None), ("GATHER", None),
        ("MATRIX_MULTIPLY", None), ("CONSTANT", None), ("IDENTITY", None), ("SLICE", None), ("SHAPE", None),
        ("RESIZE", None), ("SELECT", None), ("QUANTIZE", None), ("DEQUANTIZE", None), ("NORMALIZATION", "8.6"))],
}
_SEVERITIES = [("INTERNAL_ERROR", None, None), ("ERROR", None, None), ("WARNING", None, None),
               ("INFO", None, None), ("VERBOSE", None, None)]

# class -> (since, until) for whole classes
_CLASSES = [
    (_runtime.ILogger, None, None), (_runtime.Logger, None, None), (_runtime.Runtime, None, None),
    (_runtime.ICudaEngine, None, None), (_runtime.IExecutionContext, None, None),
    (_builder.ITensor, None, None), (_builder.ILayer, None, None), (_builder.INetworkDefinition, None, None),
    (_builder.ParserError, None, None), (_builder.OnnxParser, None, None),
    (_builder.IOptimizationProfile, None, None), (_builder.ITimingCache, None, None),
    (_builder.IInt8Calibrator, None, "11.0"), (_builder.IInt8EntropyCalibrator2, None, "11.0"),
    (_builder.IInt8EntropyCalibrator, None, "11.0"), (_builder.IInt8MinMaxCalibrator, None, "11.0"),
    (_builder.IProgressMonitor, "10.0", None), (_builder.IBuilderConfig, None, None), (_builder.Builder, None, None),
]


#: what the runtime-only modules (``tensorrt_lean``, ``tensorrt_dispatch``) lack: everything that builds
_BUILDER_SIDE = {"ITensor", "ILayer", "INetworkDefinition", "ParserError", "OnnxParser", "IBuilderConfig", "Builder",
                 "IInt8Calibrator", "IInt8EntropyCalibrator2", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator"}
RUNTIME_ONLY_MODULES = ("tensorrt_lean", "tensorrt_lean_bindings", "tensorrt_dispatch", "tensorrt_dispatch_bindings")


def make_module(mode: str = "10.x", version: Optional[str] = None, name: str = "tensorrt") -> RecordingModule:
    """A fresh fake ``tensorrt`` module playing ``mode`` (``"8.5"``, ``"8.6"``, ``"10.x"``, ``"11.x"``).

    ``version`` overrides the reported ``__version__`` (e.g. ``"10.0.1"``); its major/minor
    decide which members exist. ``name`` ``"tensorrt_lean"`` or ``"tensorrt_dispatch"`` (or their
    ``_bindings`` names) plays a runtime-only module: no builder, parser or calibrators, and
    only version-compatible engines deserialize.
    """
    if mode not in MODES:
        raise ValueError("mode must be one of {}, not {!r}".format(sorted(MODES), mode))
    if name != "tensorrt" and name not in RUNTIME_ONLY_MODULES:
        raise ValueError("name must be tensorrt or one of {}, not {!r}".format(RUNTIME_ONLY_MODULES, name))
    runtime_only = name != "tensorrt"
    api = Api(version or MODES[mode])
    module = RecordingModule(name, "Fake TensorRT {} (tests only)".format(api.version_string))
    api.module = module
    module.__version__ = api.version_string
    module._fake = api
    for name, members in _ENUMS.items():
        if any(api.has(s, u) for _, s, u in members):
            setattr(module, name, make_enum(api, name, members))
    # Classes: per-module subclasses, so an object of another fake module is refused.
    for base, since, until in _CLASSES:
        if runtime_only and base.__name__ in _BUILDER_SIDE:
            continue
        if api.has(since, until):
            setattr(module, base.__name__, api.specialise(base))
    module.IHostMemory = type("IHostMemory", (_runtime.IHostMemory,), {"_api": api, "__module__": "tensorrt"})
    api.classes["IHostMemory"] = module.IHostMemory
    module.Dims = _runtime.Dims
    module.ILogger.Severity = make_enum(api, "Severity", _SEVERITIES)
    for member in module.ILogger.Severity:
        setattr(module.Logger, member.name, member)
    module.Logger.Severity = module.ILogger.Severity
    dt = module.DataType
    module.float32, module.float16, module.int8, module.int32, module.bool, module.uint8 = (
        dt.FLOAT, dt.HALF, dt.INT8, dt.INT32, dt.BOOL, dt.UINT8)
    if api.at_least("10.0"):
        module.bfloat16, module.int64 = dt.BF16, dt.INT64

    def nptype(trt_type: Any) -> Any:
        import numpy as np

        table = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
                 "UINT8": np.uint8, "INT64": np.int64}
        if trt_type.name not in table:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return table[trt_type.name]

    def volume(iterable: Sequence[int]) -> int:
        return _plan.volume(iterable)

    module.nptype = nptype
    module.volume = volume
    return module


def make_fake_engine(
    onnx_path: str,
    min_batch: int = 1,
    opt_batch: int = 16,
    max_batch: int = 32,
    fp16_io: bool = False,
    version: str = MODES["10.x"],
    fp16: bool = True,
    compute_capability: Optional[Sequence[int]] = None,
    version_compatible: bool = False,
    exclude_lean_runtime: bool = False,
) -> bytes:
    """Serialized fake engine bytes for an ONNX file, without going through the builder.

    One profile ``min/opt/max_batch`` on the batch dimension of every input; ``fp16_io``
    makes every I/O tensor float16 (as an engine built with FP16 I/O formats); ``fp16``
    marks the engine built with the FP16 flag (outputs rounded through float16);
    ``version``/``compute_capability`` default to what the fake device and 10.x mode play;
    ``version_compatible``/``exclude_lean_runtime`` mark it built with those builder flags.
    """
    with open(onnx_path, "rb") as handle:
        onnx_bytes = handle.read()
    inputs, outputs = _plan.onnx_io(onnx_bytes)
    profile = {}
    for t in inputs:
        shapes = []
        for batch in (min_batch, opt_batch, max_batch):
            shapes.append([batch if i == 0 and d == -1 else d for i, d in enumerate(t["shape"])])
        profile[t["name"]] = shapes
    io_dtypes = {t["name"]: "float16" for t in inputs + outputs} if fp16_io else None
    header = _plan.header_for(
        onnx_bytes,
        version,
        compute_capability or DEVICE.compute_capability,
        DEVICE.name,
        [profile],
        io_dtypes=io_dtypes,
        flags=(["FP16"] if fp16 else []) + (["VERSION_COMPATIBLE"] if version_compatible else [])
        + (["EXCLUDE_LEAN_RUNTIME"] if exclude_lean_runtime else []),
        num_layers=0,
    )
    return _plan.encode(header, onnx_bytes)
