"""The one module that imports ``tensorrt`` (lazily), and the small helpers every TensorRT user shares.

Nothing here imports TensorRT at module import time, so a CPU-only machine imports it fine.
One code path serves TensorRT 8.5 through 10.x through the name-based API; features newer
than 8.5 are detected with ``hasattr``, versions compared with :mod:`packaging.version`.

* :func:`import_tensorrt` -- the module, or :class:`~changenet_trt.errors.DependencyError`
* :func:`version` / :func:`installed_version` -- TensorRT's version as a ``Version``
* :func:`make_logger` -- a ``trt.ILogger`` that routes TensorRT's log to Python ``logging``
* :func:`to_numpy_dtype` / :func:`from_numpy_dtype` -- ``trt.DataType`` <-> numpy
* :func:`network_flags`, :func:`has_feature`, :func:`check` -- small version-aware helpers
"""

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from packaging.version import Version

from changenet_trt.errors import ChangeNetError, EngineError, missing_dependency

#: logger that receives TensorRT's own messages (``-v`` shows INFO, ``-vv`` VERBOSE)
TRT_LOGGER_NAME = "changenet_trt.tensorrt"

# TensorRT severity name -> Python logging level. TensorRT's INFO is chatty during a build,
# so it stays at INFO (shown with -v) and VERBOSE becomes DEBUG (-vv).
_SEVERITY_LEVELS = {
    "INTERNAL_ERROR": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "VERBOSE": logging.DEBUG,
}

# trt.DataType member name -> numpy dtype name (BF16/FP8/INT4 have no numpy twin).
_NUMPY_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def import_tensorrt(feature: str = "this command") -> Any:
    """Import and return the ``tensorrt`` module; raise DependencyError naming ``feature`` if absent."""
    try:
        import tensorrt  # noqa: F401  (the only place the package imports it)
    except ImportError:
        raise missing_dependency("tensorrt", feature) from None
    return tensorrt


def version(trt: Optional[Any] = None) -> Version:
    """TensorRT's version (of ``trt`` or of the installed module) as a comparable ``Version``."""
    if trt is None:
        trt = import_tensorrt("reading the TensorRT version")
    return Version(str(trt.__version__))


def installed_version() -> Optional[Version]:
    """The installed TensorRT's version, or ``None`` when TensorRT cannot be imported."""
    try:
        return version(import_tensorrt())
    except ChangeNetError:
        return None


def at_least(trt: Any, minimum: str) -> bool:
    """True when ``trt.__version__ >= minimum`` (e.g. ``at_least(trt, "10.0")``)."""
    return version(trt) >= Version(minimum)


def has_feature(obj: Any, name: str) -> bool:
    """Feature detection: does this TensorRT object (module, config, engine...) bind ``name``."""
    return hasattr(obj, name)


def check(ok: Any, what: str, error: type = EngineError, logger: Any = None) -> None:
    """Raise ``error`` when a TensorRT call that reports success with a bool returned False/None.

    The message names the call and, when ``logger`` captured them, TensorRT's last errors.
    """
    if ok:
        return
    details = logger.last_errors() if logger is not None else []
    found = "; ".join(details) if details else "TensorRT reported failure (run with -v for its log)"
    raise error("TensorRT failed: {}".format(what), found=found)


_LOGGER_CLASSES: Dict[int, type] = {}


def make_logger(trt: Any, name: str = TRT_LOGGER_NAME) -> Any:
    """A ``trt.ILogger`` instance that forwards every message to ``logging.getLogger(name)``.

    It also keeps the last error messages (``last_errors()``), so failures can be explained
    in one line. The subclass is built on first use because ``trt.ILogger`` only exists once
    TensorRT is imported.
    """
    cls = _LOGGER_CLASSES.get(id(trt))
    if cls is None or cls.__bases__[0] is not trt.ILogger:
        cls = _build_logger_class(trt)
        _LOGGER_CLASSES[id(trt)] = cls
    return cls(name)


def _build_logger_class(trt: Any) -> type:
    class PythonLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        """Routes TensorRT's log to Python logging; remembers the last errors."""

        def __init__(self, name: str) -> None:
            trt.ILogger.__init__(self)  # pybind11 requires the base __init__
            self.logger = logging.getLogger(name)
            self._errors: List[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = _SEVERITY_LEVELS.get(getattr(severity, "name", str(severity)), logging.WARNING)
            if level >= logging.ERROR:
                self._errors = (self._errors + [str(msg).strip()])[-3:]
            if self.logger.isEnabledFor(level):
                self.logger.log(level, "%s", str(msg).rstrip())

        def last_errors(self) -> List[str]:
            return list(self._errors)

        def clear_errors(self) -> None:
            self._errors = []

    return PythonLogger


def to_numpy_dtype(dtype: Any) -> np.dtype:
    """``trt.DataType`` -> ``numpy.dtype``; EngineError for types numpy cannot hold (BF16, FP8)."""
    name = getattr(dtype, "name", str(dtype))
    if name not in _NUMPY_DTYPES:
        raise EngineError(
            "TensorRT data type {} has no numpy equivalent".format(name),
            expected=", ".join(sorted(_NUMPY_DTYPES)),
            found=name,
        )
    return np.dtype(_NUMPY_DTYPES[name])


def from_numpy_dtype(trt: Any, dtype: Any) -> Any:
    """``numpy.dtype`` (or its name) -> ``trt.DataType`` of module ``trt``."""
    wanted = np.dtype(dtype).name
    for trt_name, np_name in _NUMPY_DTYPES.items():
        if np_name == wanted and hasattr(trt.DataType, trt_name):
            return getattr(trt.DataType, trt_name)
    raise EngineError("no TensorRT data type for numpy dtype {}".format(wanted))


def dtype_name(dtype: Any) -> str:
    """A readable name for a ``trt.DataType`` (numpy's name when it has one: float32, float16...)."""
    name = getattr(dtype, "name", str(dtype))
    return _NUMPY_DTYPES.get(name, name.lower())


def dims(shape: Any) -> Tuple[int, ...]:
    """``trt.Dims`` (or any sequence) -> a tuple of ints (``-1`` marks a dynamic dimension)."""
    return tuple(int(d) for d in shape)


def network_flags(trt: Any) -> int:
    """``create_network`` flags: explicit batch before TensorRT 10 (the ONNX parser needs it);
    nothing from 10 on, where every network is explicit-batch and the flag is deprecated."""
    if version(trt) < Version("10.0"):
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def io_tensors(engine: Any) -> List[Dict[str, Any]]:
    """Every I/O tensor of an engine: ``{"name", "mode" ("input"/"output"), "shape", "dtype"}``.

    ``shape`` holds ``-1`` for dynamic dimensions; ``dtype`` is a numpy dtype name.
    """
    out = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = engine.get_tensor_mode(name)
        out.append(
            {
                "name": name,
                "mode": "input" if getattr(mode, "name", "") == "INPUT" else "output",
                "shape": list(dims(engine.get_tensor_shape(name))),
                "dtype": dtype_name(engine.get_tensor_dtype(name)),
            }
        )
    return out


def profile_shapes(engine: Any, name: str, profile_index: int = 0) -> Tuple[Tuple[int, ...], ...]:
    """``(min, opt, max)`` shapes of input ``name`` in an engine's optimisation profile."""
    shapes = engine.get_tensor_profile_shape(name, profile_index)
    return tuple(dims(s) for s in shapes)


def describe_shape(shape: Sequence[int]) -> str:
    """``(-1, 3, 512, 128)`` -> ``"[?,3,512,128]"`` (``-1``, a dynamic dimension, shown as ``?``)."""
    return "[" + ",".join("?" if int(d) < 0 else str(int(d)) for d in shape) + "]"
