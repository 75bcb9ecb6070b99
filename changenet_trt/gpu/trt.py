"""The one module that imports ``tensorrt`` (lazily), and the small helpers every TensorRT user shares.

Nothing here imports TensorRT at module import time, so a CPU-only machine imports it fine.
One code path serves TensorRT 8.5 through 11.x through the name-based API; features newer
than 8.5 are detected with ``hasattr``, versions compared with :mod:`packaging.version`. A
TensorRT outside the tested range (8.5 <= version < 12) is refused with the reason.

* :func:`import_tensorrt` -- the module, or :class:`~changenet_trt.errors.DependencyError`
* :func:`check_supported` -- DependencyError for a TensorRT the package was not tested with
* :func:`version` / :func:`installed_version` -- TensorRT's version as a ``Version``
* :func:`import_runtime` -- ``tensorrt``, or the lean/dispatch runtime for version-compatible engines
* :func:`make_logger` -- the process's ``trt.ILogger`` (routes TensorRT's log to Python ``logging``;
  ``capture()`` attributes errors to one call) and :func:`call` (a checked, attributed call)
* :func:`subclass` -- one cached Python subclass of a TensorRT interface per module
* :func:`create_runtime` / :func:`create_builder` -- only once the CUDA driver is known to work
* :func:`to_numpy_dtype` / :func:`from_numpy_dtype` -- ``trt.DataType`` <-> numpy
* :func:`network_flags`, :func:`has_feature`, :func:`check` -- small version-aware helpers
* :class:`PrecisionPath` -- how a TensorRT release takes precision (the plan, the build and
  ``doctor`` read it from here)
"""

import enum
import importlib.util
import logging
import os
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from packaging.version import Version

from changenet_trt.errors import (
    TENSORRT_INSTALL_HINT,
    ChangeNetError,
    DependencyError,
    EngineError,
    optional_import,
)
from changenet_trt.gpu.cuda import require_driver

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


#: the TensorRT releases the package is tested with: 8.5 <= version < 12 (pyproject.toml bounds it too)
OLDEST_SUPPORTED = Version("8.5")
FIRST_UNTESTED_MAJOR = 12


def check_supported(trt_version: Any, feature: str = "this command") -> Version:
    """``trt_version`` as a Version; DependencyError when it is outside 8.5 <= version < 12.

    A new major release removes API (TensorRT 10 dropped the bindings API, 11 every builder-side
    precision control), so an untested major is refused rather than half-used."""
    found = Version(str(trt_version))
    if found.major >= FIRST_UNTESTED_MAJOR or found < OLDEST_SUPPORTED:
        raise DependencyError(
            "{} needs TensorRT {} to {}.x; TensorRT {} is installed or named, which this release of "
            "changenet-trt was not tested with (expected: tensorrt>={},<{}; found: {})".format(
                feature, OLDEST_SUPPORTED, FIRST_UNTESTED_MAJOR - 1, found, OLDEST_SUPPORTED, FIRST_UNTESTED_MAJOR,
                found))
    return found


def import_tensorrt(feature: str = "this command", check_version: bool = True) -> Any:
    """Import and return the ``tensorrt`` module; raise DependencyError naming ``feature`` if
    absent, or (``check_version``) when its version is outside the tested range."""
    tensorrt = optional_import("tensorrt", feature)
    if check_version:
        check_supported(getattr(tensorrt, "__version__", "0"), feature)
    return tensorrt


#: first TensorRT with strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED)
STRONGLY_TYPED_SINCE = Version("10.0")
#: TensorRT 10 deprecations (its release notes): the INT8 calibrators from 10.1, the FP16/INT8
#: builder flags (weak typing) from 10.12
CALIBRATOR_DEPRECATED_SINCE = Version("10.1")
FLAGS_DEPRECATED_SINCE = Version("10.12")
#: TensorRT 11 removed the INT8 calibrators and every builder-side precision control
NO_PRECISION_CONTROLS_SINCE = Version("11.0")


class PrecisionPath(enum.Enum):
    """How a TensorRT release takes precision, decided by its version (:meth:`of`); the value
    says it in words.

    * 8.5/8.6 (no strong typing): :attr:`DERIVED_FLAGS`;
    * 10.x (STRONGLY_TYPED beside the legacy flags and calibrators): :attr:`TYPED_MODEL`;
    * 11.x (no FP16/INT8 flag, no calibrator: every network strongly typed): :attr:`STRONGLY_TYPED`.
    """

    DERIVED_FLAGS = ("builder flags derived from the typed graph: FP16 when it holds float16 tensors, INT8 when "
                     "it holds Q/DQ, its float32 nodes kept float32 with precision constraints (no strong typing)")
    TYPED_MODEL = ("strongly typed build of the typed model (prepare --precision); the FP16/INT8 flags and the INT8 "
                   "calibrator still exist")
    STRONGLY_TYPED = ("strongly typed: precision from the ONNX graph only (float16 tensors, Q/DQ from prepare "
                      "--precision); no precision flags, no calibrators")

    @classmethod
    def of(cls, trt_version: Any) -> "PrecisionPath":
        """The path of TensorRT ``trt_version`` (a string or ``Version``)."""
        found = Version(str(trt_version))
        if found >= NO_PRECISION_CONTROLS_SINCE:
            return cls.STRONGLY_TYPED
        if found >= STRONGLY_TYPED_SINCE:
            return cls.TYPED_MODEL
        return cls.DERIVED_FLAGS

    @property
    def strongly_typed(self) -> bool:
        """Builds strongly typed networks (precision from the ONNX types)."""
        return self is not PrecisionPath.DERIVED_FLAGS

    @property
    def has_calibrator(self) -> bool:
        """Still binds the INT8 calibrators and the FP16/INT8 builder flags."""
        return self is not PrecisionPath.STRONGLY_TYPED


def installed_description() -> str:
    """The installed TensorRT's version, ``"not found"``, or ``"broken (<error>)"`` for an
    install that fails to import; never raises."""
    try:
        return str(getattr(import_tensorrt("the environment report", check_version=False), "__version__",
                           "installed (version unknown)"))
    except ChangeNetError:
        return "not found"
    except Exception as exc:  # there but failing to import (bad install)
        return "broken ({}: {})".format(type(exc).__name__, exc)


#: runtime-only TensorRT modules (TensorRT 8.6+), each under its package's name and its bindings
#: wheel's name: the lean runtime runs version-compatible engines; the dispatch runtime runs
#: those that embed the lean runtime (built without --exclude-lean-runtime)
LEAN_MODULES = ("tensorrt_lean", "tensorrt_lean_bindings")
DISPATCH_MODULES = ("tensorrt_dispatch", "tensorrt_dispatch_bindings")
LEAN_INSTALL_HINT = (
    "for version-compatible engines the TensorRT lean runtime is enough: "
    "`pip install 'changenet-trt[lean]'` on x86 Linux"
)


def _first_importable(names: Sequence[str], feature: str) -> Optional[Any]:
    for name in names:
        try:
            return optional_import(name, feature)
        except DependencyError:
            continue
    return None


def import_runtime(feature: str, version_compatible: bool = False, lean_runtime_embedded: bool = True) -> Any:
    """The TensorRT module that runs an engine: ``tensorrt`` when installed, else (only for a
    version-compatible engine) the lean runtime, else the dispatch runtime when the engine embeds
    the lean runtime. DependencyError naming what would do when none is there."""
    try:
        full = import_tensorrt(feature, check_version=False)
    except DependencyError as exc:
        if not version_compatible:
            raise
        missing = exc
    else:
        check_supported(getattr(full, "__version__", "0"), feature)
        return full
    module = _first_importable(LEAN_MODULES, feature)
    if module is None and lean_runtime_embedded:
        module = _first_importable(DISPATCH_MODULES, feature)
    if module is None:
        wanted = LEAN_MODULES + (DISPATCH_MODULES if lean_runtime_embedded else ())
        raise DependencyError(
            "{} needs TensorRT: neither 'tensorrt' nor a runtime-only module ({}) is installed ({}; {})".format(
                feature, ", ".join(wanted), LEAN_INSTALL_HINT, TENSORRT_INSTALL_HINT)
        ) from missing
    check_supported(getattr(module, "__version__", "0"), feature)
    return module


def runtime_kind(trt: Any) -> str:
    """``"lean"``, ``"dispatch"`` or ``"full"``: which TensorRT library module ``trt`` binds."""
    name = str(getattr(trt, "__name__", ""))
    if name.startswith("tensorrt_lean"):
        return "lean"
    if name.startswith("tensorrt_dispatch"):
        return "dispatch"
    return "full"


def version(trt: Optional[Any] = None) -> Version:
    """TensorRT's version (of ``trt`` or of the installed module) as a comparable ``Version``."""
    if trt is None:
        trt = import_tensorrt("reading the TensorRT version")
    return Version(str(trt.__version__))


def installed_version() -> Optional[Version]:
    """The installed TensorRT's version (tested or not), or ``None`` when TensorRT cannot be imported."""
    try:
        return version(import_tensorrt(check_version=False))
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


# -- Python subclasses of TensorRT interfaces ---------------------------------------------------------
# (id(module), factory) -> (weak reference to the module, the class). The module is held weakly, so a
# reloaded or replaced module (tests install fresh fakes) gets its own class and never a stale one.
_SUBCLASSES: Dict[Tuple[int, Callable[[Any], type]], Tuple["weakref.ReferenceType[Any]", type]] = {}
_SUBCLASSES_LOCK = threading.Lock()


def subclass(trt: Any, factory: Callable[[Any], type]) -> type:
    """The class ``factory(trt)`` builds (a Python subclass of a TensorRT interface such as
    ``trt.ILogger``, ``trt.IInt8EntropyCalibrator2`` or ``trt.IProgressMonitor``), built once per
    TensorRT module and factory: the interfaces only exist once a module is imported, and
    ``tensorrt``, ``tensorrt_lean`` and ``tensorrt_dispatch`` each have their own."""
    key = (id(trt), factory)
    with _SUBCLASSES_LOCK:
        entry = _SUBCLASSES.get(key)
        if entry is None or entry[0]() is not trt:
            entry = _SUBCLASSES[key] = (weakref.ref(trt), factory(trt))
        return entry[1]


# -- the process-wide TensorRT logger -----------------------------------------------------------------
# TensorRT keeps the first logger given to a Builder, Runtime or Refitter for the whole process and
# ignores later ones (with a warning), so a logger per runner would send later runners' errors to an
# earlier runner's logger, possibly already freed. One logger per TensorRT module, never freed.
_LOGGERS: Dict[int, Tuple["weakref.ReferenceType[Any]", Any]] = {}
_LOGGERS_LOCK = threading.Lock()


def make_logger(trt: Any, name: str = TRT_LOGGER_NAME) -> Any:
    """The process's ``trt.ILogger`` for module ``trt``: it forwards every message to
    ``logging.getLogger(name)`` and attributes errors to calls (``capture()``).

    Every call returns the same object for the same module (``name`` only matters for the
    first call), as TensorRT itself only ever uses the first logger it was given.
    """
    with _LOGGERS_LOCK:
        entry = _LOGGERS.get(id(trt))
        if entry is None or entry[0]() is not trt:
            entry = _LOGGERS[id(trt)] = (weakref.ref(trt), subclass(trt, _logger_class)(name))
        return entry[1]


def _logger_class(trt: Any) -> type:
    class PythonLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        """Routes TensorRT's log to Python logging; attributes errors to the call that caused them."""

        def __init__(self, name: str) -> None:
            trt.ILogger.__init__(self)  # pybind11 requires the base __init__
            self.logger = logging.getLogger(name)
            self._errors: List[str] = []
            self._captures: List[List[str]] = []
            self._errors_lock = threading.Lock()
            self._call_lock = threading.RLock()

        def log(self, severity: Any, msg: str) -> None:
            level = _SEVERITY_LEVELS.get(getattr(severity, "name", str(severity)), logging.WARNING)
            if level >= logging.ERROR:
                text = str(msg).strip()
                with self._errors_lock:
                    self._errors = (self._errors + [text])[-3:]
                    for errors in self._captures:
                        errors.append(text)
            if self.logger.isEnabledFor(level):
                self.logger.log(level, "%s", str(msg).rstrip())

        @contextmanager
        def capture(self) -> Iterator[List[str]]:
            """``with logger.capture() as errors: call()``: ``errors`` receives the errors TensorRT
            logs during the block and nothing else (one attributed call at a time per process)."""
            with self._call_lock:
                errors: List[str] = []
                with self._errors_lock:
                    self._captures.append(errors)
                try:
                    yield errors
                finally:
                    with self._errors_lock:
                        self._captures.remove(errors)

        def last_errors(self) -> List[str]:
            """The last three errors logged in this process (by any call; see ``capture``)."""
            with self._errors_lock:
                return list(self._errors)

        def clear_errors(self) -> None:
            with self._errors_lock:
                self._errors = []

    return PythonLogger


def call(logger: Any, what: str, function: Callable[..., Any], *args: Any, error: type = EngineError) -> Any:
    """``function(*args)`` (a TensorRT call that reports failure with False/None), its errors
    attributed through ``logger.capture()``; raise ``error`` naming ``what`` and TensorRT's reason."""
    with logger.capture() as errors:
        result = function(*args)
    if not result:
        found = "; ".join(errors[-3:]) if errors else "TensorRT reported failure (run with -v for its log)"
        raise error("TensorRT failed: {}".format(what), found=found)
    return result


def create_runtime(trt: Any, feature: str, allow_host_code: bool = False) -> Any:
    """A ``trt.Runtime`` on the process logger, made only once the CUDA driver has been found to
    work (CudaError saying what is missing otherwise: a Runtime made without one crashes).

    ``allow_host_code``: let it run the host code a version-compatible engine embeds (its lean
    runtime, which the dispatch runtime needs); every other runtime refuses host code.
    """
    require_driver(feature)
    runtime = trt.Runtime(make_logger(trt))
    if has_feature(runtime, "engine_host_code_allowed"):
        runtime.engine_host_code_allowed = bool(allow_host_code)
    return runtime


def lean_library(built_version: str) -> str:
    """Where the lean runtime library of TensorRT ``built_version`` is: the ``tensorrt_lean_libs`` wheel's
    copy when that wheel is installed, else its file name for the system loader to find (JetPack and
    NVIDIA's packages install ``libnvinfer_lean.so.<major>``; Windows: ``nvinfer_lean_<major>.dll``)."""
    major = str(built_version).split(".")[0]
    name = "nvinfer_lean_{}.dll".format(major) if os.name == "nt" else "libnvinfer_lean.so.{}".format(major)
    try:
        spec = importlib.util.find_spec("tensorrt_lean_libs")
    except (ImportError, ValueError):
        spec = None
    for folder in (list(spec.submodule_search_locations or []) if spec is not None else []):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return name


def load_lean_runtime(runtime: Any, logger: Any, built_version: str, path: Optional[str] = None) -> Any:
    """The runtime that runs an engine built with VERSION_COMPATIBLE and EXCLUDE_LEAN_RUNTIME: such an
    engine carries no lean runtime, so TensorRT runs it only on ``runtime.load_runtime(<the lean runtime
    library of the release that built it>)`` (IRuntime::loadRuntime, TensorRT 8.6+; "Version
    Compatibility" in TensorRT's developer guide). ``path``: that library (default :func:`lean_library`).
    EngineError when this TensorRT cannot load one or the library is not there."""
    library = path or lean_library(built_version)
    if not has_feature(runtime, "load_runtime"):
        raise EngineError("the engine was built without its lean runtime (--exclude-lean-runtime) and this TensorRT "
                          "cannot load one", expected="TensorRT 8.6 or newer (IRuntime.load_runtime)")
    with logger.capture() as errors:
        lean = runtime.load_runtime(library)
    if lean is None:
        raise EngineError(
            "the engine was built by TensorRT {} without its lean runtime (--exclude-lean-runtime), and that "
            "release's lean runtime library cannot be loaded".format(built_version),
            expected="{} on the library path (TensorRT {}'s lean runtime; pip install 'changenet-trt[lean]' on "
                     "x86, JetPack on a Jetson), or pass lean_library=PATH".format(library, built_version),
            found="; ".join(errors[-2:]) if errors else "TensorRT could not load {}".format(library))
    return lean


def create_builder(trt: Any, feature: str = "building a TensorRT engine") -> Any:
    """A ``trt.Builder`` on the process logger, made only once the CUDA driver works."""
    require_driver(feature)
    return trt.Builder(make_logger(trt))


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
