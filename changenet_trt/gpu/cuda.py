"""CUDA for the TensorRT runner: the only module that touches pycuda.

* One **primary context** per GPU (the context the CUDA runtime, and so TensorRT, uses), retained
  as ``pycuda.autoprimaryctx`` does but never left current: every call here pushes it for its
  own duration and pops it again, so any thread may call (``with ctx.activate():`` batches
  several calls under one push). ``pycuda.autoinit`` is never used: TensorRT runs in whatever
  context is current, so a context of its own would work in one thread, but autoinit makes a
  new (non-primary) context current only in the importing thread and until exit. Any other
  thread (a server worker, a decode pool) has no context current, and a library that uses the
  CUDA runtime there (cudart binds the device's primary context) works in another context than
  the buffers were allocated in. The primary context is the one every thread and library shares.
* **Pinned host buffers** (page-locked numpy arrays, optionally mapped into the device address
  space for zero-copy on integrated GPUs), **device buffers**, **streams**, **events** and
  **CUDA graphs**, each allocated once and freed explicitly with ``free()`` / ``close()``.

pycuda has no stream capture, so graphs go through the CUDA driver library (``libcuda``) with
ctypes, on the streams pycuda created (both share the same driver and context).

pycuda and libcuda are loaded lazily: this module imports on a CPU-only machine.
"""

import ctypes
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from changenet_trt.errors import ChangeNetError, DependencyError, InputError, optional_import

FEATURE = "the TensorRT backend"

# CUstreamCaptureMode: only this thread's CUDA calls may disturb the capture (as trtexec does).
_CAPTURE_MODE_THREAD_LOCAL = 1
_CUDA_SUCCESS = 0


class CudaError(ChangeNetError):
    """A CUDA operation failed in a way the user can act on (no device, out of memory, ...)."""


class GraphCaptureError(Exception):
    """Capturing a CUDA graph failed; the message says why (the caller falls back to streams)."""


def import_driver() -> Any:
    """``pycuda.driver``, or a :class:`~changenet_trt.errors.DependencyError` with the install hint."""
    return optional_import("pycuda.driver", FEATURE)


def _to_int_tuple(shape: Sequence[int]) -> Tuple[int, ...]:
    return tuple(int(d) for d in shape)


class CudaContext:
    """The primary context of one GPU, shared by every runner in the process.

    Use :func:`primary_context` to get it. ``activate()`` makes it current in the calling
    thread for a ``with`` block (re-entrant; nested blocks push once).
    """

    def __init__(self, ordinal: int = 0) -> None:
        driver = import_driver()
        driver.init()
        count = driver.Device.count()
        if not 0 <= ordinal < count:
            raise CudaError(
                "no such CUDA device",
                expected="a device index in 0..{}".format(count - 1) if count else "at least one CUDA GPU",
                found=ordinal,
            )
        self.driver = driver
        self.ordinal = ordinal
        self.device = driver.Device(ordinal)
        self._context = self.device.retain_primary_context()
        self._local = threading.local()
        attr = driver.device_attribute
        #: GPU name, e.g. "Orin" or "Tesla T4"
        self.name = str(self.device.name())
        #: (major, minor)
        self.compute_capability = _to_int_tuple(self.device.compute_capability())
        #: True on Jetson (memory shared with the CPU)
        self.integrated = bool(self.device.get_attribute(attr.INTEGRATED))
        #: pinned host memory can be mapped into the device address space
        self.can_map_host_memory = bool(self.device.get_attribute(attr.CAN_MAP_HOST_MEMORY))
        #: bytes of device memory
        self.total_memory = int(self.device.total_memory())

    def __repr__(self) -> str:
        return "CudaContext(device {} '{}', sm_{}{}{})".format(
            self.ordinal, self.name, self.compute_capability[0], self.compute_capability[1],
            ", integrated" if self.integrated else "",
        )

    # -- making the context current --------------------------------------------------------
    @contextmanager
    def activate(self) -> Iterator["CudaContext"]:
        """Make the primary context current in this thread for the ``with`` block."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._context.push()
        self._local.depth = depth + 1
        try:
            yield self
        finally:
            self._local.depth = depth
            if depth == 0:
                self.driver.Context.pop()

    def synchronize(self) -> None:
        """Wait for all work on the device (only for teardown and tests; runners use events)."""
        with self.activate():
            self.driver.Context.synchronize()

    # -- allocations ------------------------------------------------------------------------
    def pinned(self, shape: Sequence[int], dtype: Any, mapped: bool = False) -> "PinnedBuffer":
        """A page-locked host array (``mapped``: also addressable by the device, for zero-copy)."""
        return PinnedBuffer(self, shape, dtype, mapped=mapped)

    def device_buffer(self, nbytes: int) -> "DeviceBuffer":
        """``nbytes`` of device memory."""
        return DeviceBuffer(self, nbytes)

    def stream(self) -> "CudaStream":
        """A new stream (in-order queue of copies and kernels)."""
        return CudaStream(self)

    def event(self, timing: bool = True, blocking: bool = True) -> "CudaEvent":
        """A new event. ``blocking``: ``synchronize`` sleeps instead of spinning on the CPU."""
        return CudaEvent(self, timing=timing, blocking=blocking)

    def capture_graph(self, stream: "CudaStream", enqueue: Callable[[], None]) -> "CudaGraph":
        """Record the work ``enqueue()`` puts on ``stream`` as a CUDA graph (nothing runs).

        Raises :class:`GraphCaptureError` with the reason when capture is unsupported or fails;
        the stream is left usable.
        """
        return CudaGraph.capture(self, stream, enqueue)


_CONTEXTS: Dict[int, CudaContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def primary_context(ordinal: int = 0) -> CudaContext:
    """The process-wide :class:`CudaContext` of GPU ``ordinal`` (created on first use).

    It stays retained for the life of the process, as with ``pycuda.autoprimaryctx``: engines,
    buffers and graphs come and go, the context does not (the driver frees it at exit).
    """
    driver = import_driver()
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(ordinal)
        # a different pycuda.driver module (reloaded) means the old context is not its own
        if ctx is None or ctx.driver is not driver:
            ctx = _CONTEXTS[ordinal] = CudaContext(ordinal)
        return ctx


class PinnedBuffer:
    """A page-locked host array of ``shape``/``dtype``, allocated once.

    Write into ``array`` (``np.copyto``, slicing); never rebind it: an async copy from any
    other (pageable) array would silently run synchronously. With ``mapped=True`` the device
    reads and writes the same memory at ``device_address`` (zero-copy). ``free()`` releases
    it; views of ``array`` must not be used afterwards.
    """

    def __init__(self, ctx: CudaContext, shape: Sequence[int], dtype: Any, mapped: bool = False) -> None:
        self.ctx = ctx
        self.mapped = bool(mapped)
        driver = ctx.driver
        if self.mapped and not ctx.can_map_host_memory:
            raise CudaError(
                "zero-copy needs host memory the GPU can map",
                expected="a device with CAN_MAP_HOST_MEMORY (integrated GPUs such as Jetson)",
                found=ctx.name,
            )
        flags = driver.host_alloc_flags.DEVICEMAP if self.mapped else 0
        with ctx.activate():
            self.array: Optional[np.ndarray] = driver.pagelocked_empty(
                _to_int_tuple(shape), np.dtype(dtype), mem_flags=flags
            )
            self.device_address: Optional[int] = (
                int(self.array.base.get_device_pointer()) if self.mapped else None
            )
        self.nbytes = int(self.array.nbytes)

    def free(self) -> None:
        """Unpin and free the memory (idempotent)."""
        array, self.array = self.array, None
        if array is not None:
            with self.ctx.activate():
                array.base.free()
            self.device_address = None


class DeviceBuffer:
    """``nbytes`` of device memory at the integer ``address``; ``free()`` releases it."""

    def __init__(self, ctx: CudaContext, nbytes: int) -> None:
        if nbytes <= 0:
            raise InputError("a device buffer needs a positive size", found=nbytes)
        self.ctx = ctx
        self.nbytes = int(nbytes)
        with ctx.activate():
            self._allocation: Any = ctx.driver.mem_alloc(self.nbytes)
        self.address = int(self._allocation)

    def _check(self, host: np.ndarray, what: str) -> None:
        if self._allocation is None:
            raise CudaError("{} on a freed device buffer".format(what))
        if not host.flags.c_contiguous:
            raise InputError("{} needs a C-contiguous host array".format(what), found=str(host.strides))
        if host.nbytes > self.nbytes:
            raise InputError(
                "{} of more bytes than the device buffer holds".format(what),
                expected="<= {} bytes".format(self.nbytes),
                found="{} bytes".format(host.nbytes),
            )

    def upload(self, host: np.ndarray, stream: "CudaStream") -> None:
        """Queue a copy of ``host`` (a pinned array or a first-rows view of one) to the buffer's start."""
        self._check(host, "host-to-device copy")
        with self.ctx.activate():
            self.ctx.driver.memcpy_htod_async(self.address, host, stream.stream)

    def download(self, host: np.ndarray, stream: "CudaStream") -> None:
        """Queue a copy of the buffer's first ``host.nbytes`` bytes into ``host`` (pinned)."""
        self._check(host, "device-to-host copy")
        with self.ctx.activate():
            self.ctx.driver.memcpy_dtoh_async(host, self.address, stream.stream)

    def free(self) -> None:
        """Free the device memory (idempotent)."""
        allocation, self._allocation = self._allocation, None
        if allocation is not None:
            with self.ctx.activate():
                allocation.free()


class CudaStream:
    """A CUDA stream; ``handle`` is the raw ``cudaStream_t`` TensorRT takes."""

    def __init__(self, ctx: CudaContext) -> None:
        self.ctx = ctx
        with ctx.activate():
            self.stream: Any = ctx.driver.Stream()
        self.handle = int(self.stream.handle)

    def synchronize(self) -> None:
        with self.ctx.activate():
            self.stream.synchronize()

    def wait(self, event: "CudaEvent") -> None:
        """Make later work on this stream wait for ``event``'s last record (no host wait)."""
        with self.ctx.activate():
            self.stream.wait_for_event(event.event)

    def close(self) -> None:
        """Destroy the stream (pycuda destroys it when its last reference goes; drop it here,
        with the context current, so the destructor never runs in a thread without it)."""
        if self.stream is not None:
            with self.ctx.activate():
                self.stream = None


class CudaEvent:
    """A CUDA event: record it on a stream, wait for it, time between two of them."""

    def __init__(self, ctx: CudaContext, timing: bool = True, blocking: bool = True) -> None:
        self.ctx = ctx
        flags = ctx.driver.event_flags
        value = 0
        if blocking:
            value |= int(flags.BLOCKING_SYNC)
        if not timing:
            value |= int(flags.DISABLE_TIMING)
        with ctx.activate():
            self.event: Any = ctx.driver.Event(value)

    def record(self, stream: CudaStream) -> None:
        with self.ctx.activate():
            self.event.record(stream.stream)

    def synchronize(self) -> None:
        """Block the calling thread until the work recorded before this event is done."""
        with self.ctx.activate():
            self.event.synchronize()

    def query(self) -> bool:
        """True when the recorded work is done (never blocks)."""
        with self.ctx.activate():
            return bool(self.event.query())

    def ms_since(self, start: "CudaEvent") -> float:
        """Milliseconds of GPU time from ``start`` to this event (both completed)."""
        with self.ctx.activate():
            return float(self.event.time_since(start.event))

    def close(self) -> None:
        if self.event is not None:
            with self.ctx.activate():
                self.event = None


# -- CUDA graphs through the driver library --------------------------------------------------
_DRIVER_LIBRARY: Optional[Any] = None
_DRIVER_LIBRARY_LOCK = threading.Lock()


def _open_driver_library() -> Any:
    """``ctypes.CDLL`` of the CUDA driver library (the one pycuda already loaded)."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    errors: List[str] = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    raise GraphCaptureError("cannot load the CUDA driver library: {}".format("; ".join(errors)))


def _initialise(lib: Any) -> Tuple[Optional[str], int]:
    """``cuInit`` and ``cuDeviceGetCount`` through the driver library: ``(problem, GPU count)``,
    ``problem`` None when both answer."""
    try:
        init, count_devices = lib.cuInit, lib.cuDeviceGetCount
    except AttributeError as exc:
        return "the CUDA driver library is incomplete ({})".format(exc), 0
    init.argtypes, init.restype = [ctypes.c_uint], ctypes.c_int
    count_devices.argtypes, count_devices.restype = [ctypes.POINTER(ctypes.c_int)], ctypes.c_int
    code = init(0)
    if code != _CUDA_SUCCESS:
        return "the CUDA driver does not initialise (cuInit: {})".format(_error_name(lib, code)), 0
    count = ctypes.c_int(0)
    code = count_devices(ctypes.pointer(count))
    if code != _CUDA_SUCCESS:
        return "the CUDA driver cannot count GPUs (cuDeviceGetCount: {})".format(_error_name(lib, code)), 0
    return None, int(count.value)


def driver_problem() -> Optional[str]:
    """Why CUDA cannot be used on this machine (no driver library, ``cuInit`` fails, no GPU), or
    ``None`` when it can. Asked through the driver library with ctypes, so it answers without
    pycuda or TensorRT, and before anything creates a TensorRT Runtime or Builder (which crash
    the process when CUDA cannot initialise)."""
    try:
        lib = _open_driver_library()
    except GraphCaptureError as exc:
        return "no CUDA driver ({})".format(exc)
    problem, count = _initialise(lib)
    if problem is None and count < 1:
        return "the CUDA driver sees no GPU"
    return problem


# cuDeviceGetAttribute codes (cuda.h, CUdevice_attribute)
_CU_ATTR_INTEGRATED = 18
_CU_ATTR_CC_MAJOR = 75
_CU_ATTR_CC_MINOR = 76


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device: its ``name``, ``compute_capability`` (``(8, 7)``; empty when unknown),
    driver ``index``, memory in MiB and whether it is ``integrated`` (a Jetson's shared memory)."""

    name: str = "unknown"
    compute_capability: Tuple[int, ...] = ()
    index: int = 0
    memory_mib: int = 0
    integrated: bool = False

    @property
    def known(self) -> bool:
        return bool(self.compute_capability)

    @property
    def capability(self) -> str:
        """``"8.7"``, or ``"unknown"``."""
        return ".".join(str(v) for v in self.compute_capability) if self.known else "unknown"


@dataclass
class CudaInfo:
    """What the driver library says: its version (``"12.2"``) and devices; ``error`` when it could not say."""

    driver: Optional[str] = None
    gpus: List[GpuInfo] = field(default_factory=list)
    error: Optional[str] = None


def probe_driver() -> CudaInfo:
    """The driver's version and every device it sees, asked through the driver library with
    ctypes (no pycuda, no TensorRT needed); never raises: a broken install is the ``error``."""
    try:
        lib = _open_driver_library()
    except GraphCaptureError as exc:
        return CudaInfo(error="no CUDA driver ({})".format(exc))
    info = CudaInfo()
    try:
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == _CUDA_SUCCESS and version.value > 0:
            info.driver = "{}.{}".format(version.value // 1000, (version.value % 1000) // 10)
        info.error, count = _initialise(lib)
        for index in range(count):
            device = ctypes.c_int(0)
            if lib.cuDeviceGet(ctypes.byref(device), index) != _CUDA_SUCCESS:
                continue
            name = ctypes.create_string_buffer(256)
            lib.cuDeviceGetName(name, 256, device)
            values = {}
            for attr in (_CU_ATTR_CC_MAJOR, _CU_ATTR_CC_MINOR, _CU_ATTR_INTEGRATED):
                value = ctypes.c_int(0)
                lib.cuDeviceGetAttribute(ctypes.byref(value), attr, device)
                values[attr] = value.value
            memory = ctypes.c_size_t(0)
            total = getattr(lib, "cuDeviceTotalMem_v2", None) or lib.cuDeviceTotalMem
            total(ctypes.byref(memory), device)
            info.gpus.append(GpuInfo(
                name=name.value.decode("utf-8", "replace"),
                compute_capability=(values[_CU_ATTR_CC_MAJOR], values[_CU_ATTR_CC_MINOR]),
                index=index, memory_mib=int(memory.value >> 20), integrated=bool(values[_CU_ATTR_INTEGRATED])))
    except Exception as exc:  # a broken driver install must not crash the report
        info.error = "CUDA driver query failed: {}: {}".format(type(exc).__name__, exc)
    return info


def current_gpu() -> GpuInfo:
    """Name and compute capability of GPU 0 through pycuda's primary context; unknown without
    pycuda or a GPU."""
    try:
        ctx = primary_context()
        return GpuInfo(ctx.name, tuple(ctx.compute_capability))
    except ChangeNetError:
        return GpuInfo()


def pycuda_version() -> str:
    """pycuda's version, ``"not found"``, or ``"broken (<error>)"`` for an install that fails to
    import; never raises."""
    try:
        pycuda = optional_import("pycuda", "the environment report")
    except DependencyError:
        return "not found"
    except Exception as exc:  # there but failing to import (bad install)
        return "broken ({}: {})".format(type(exc).__name__, exc)
    return str(getattr(pycuda, "VERSION_TEXT", "installed (version unknown)"))


def require_driver(feature: str = FEATURE) -> None:
    """Raise :class:`CudaError` saying what is missing when CUDA cannot be used here."""
    problem = driver_problem()
    if problem is not None:
        raise CudaError("{} needs an NVIDIA GPU with a working CUDA driver".format(feature), found=problem)


def _driver_library() -> Any:
    global _DRIVER_LIBRARY
    with _DRIVER_LIBRARY_LOCK:
        if _DRIVER_LIBRARY is None:
            lib = _open_driver_library()
            for name, argtypes in (
                ("cuStreamBeginCapture_v2", [ctypes.c_void_p, ctypes.c_int]),
                ("cuStreamEndCapture", [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]),
                ("cuGraphInstantiateWithFlags", [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_ulonglong]),
                ("cuGraphLaunch", [ctypes.c_void_p, ctypes.c_void_p]),
                ("cuGraphExecDestroy", [ctypes.c_void_p]),
                ("cuGraphDestroy", [ctypes.c_void_p]),
                ("cuGetErrorName", [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]),
            ):
                try:
                    function = getattr(lib, name)
                except AttributeError:
                    # cuGraphInstantiateWithFlags needs CUDA 11.4 (JetPack 5); older drivers: no graphs
                    raise GraphCaptureError("the CUDA driver has no {} (too old for graphs)".format(name)) from None
                function.argtypes = argtypes
                function.restype = ctypes.c_int
            _DRIVER_LIBRARY = lib
        return _DRIVER_LIBRARY


def _error_name(lib: Any, code: int) -> str:
    name = ctypes.c_char_p()
    if lib.cuGetErrorName(code, ctypes.pointer(name)) == _CUDA_SUCCESS and name.value:
        return "{} ({})".format(name.value.decode(), code)
    return "CUDA error {}".format(code)


class CudaGraph:
    """An instantiated CUDA graph (the captured work of one stream), launched on a stream."""

    def __init__(self, ctx: CudaContext, lib: Any, graph: int, graph_exec: int) -> None:
        self.ctx = ctx
        self._lib = lib
        self._graph: Optional[int] = graph
        self._exec: Optional[int] = graph_exec

    @classmethod
    def capture(cls, ctx: CudaContext, stream: CudaStream, enqueue: Callable[[], None]) -> "CudaGraph":
        lib = _driver_library()
        handle = ctypes.c_void_p(stream.handle)
        with ctx.activate():
            code = lib.cuStreamBeginCapture_v2(handle, _CAPTURE_MODE_THREAD_LOCAL)
            if code != _CUDA_SUCCESS:
                raise GraphCaptureError("cuStreamBeginCapture failed: {}".format(_error_name(lib, code)))
            graph = ctypes.c_void_p()
            failure: Optional[BaseException] = None
            try:
                enqueue()
            except BaseException as exc:  # end the capture whatever happened, then report
                failure = exc
            code = lib.cuStreamEndCapture(handle, ctypes.pointer(graph))
            if failure is not None or code != _CUDA_SUCCESS:
                if graph.value:
                    lib.cuGraphDestroy(graph)
                if failure is not None:
                    if not isinstance(failure, Exception):
                        raise failure
                    raise GraphCaptureError("enqueue during capture failed: {}".format(failure)) from failure
                raise GraphCaptureError("cuStreamEndCapture failed: {}".format(_error_name(lib, code)))
            graph_exec = ctypes.c_void_p()
            code = lib.cuGraphInstantiateWithFlags(ctypes.pointer(graph_exec), graph, 0)
            if code != _CUDA_SUCCESS:
                lib.cuGraphDestroy(graph)
                raise GraphCaptureError("cuGraphInstantiate failed: {}".format(_error_name(lib, code)))
        return cls(ctx, lib, int(graph.value or 0), int(graph_exec.value or 0))

    def launch(self, stream: CudaStream) -> None:
        if self._exec is None:
            raise CudaError("launch of a freed CUDA graph")
        with self.ctx.activate():
            code = self._lib.cuGraphLaunch(ctypes.c_void_p(self._exec), ctypes.c_void_p(stream.handle))
        if code != _CUDA_SUCCESS:
            raise CudaError("cuGraphLaunch failed: {}".format(_error_name(self._lib, code)))

    def free(self) -> None:
        """Destroy the executable graph and the graph (idempotent)."""
        graph_exec, graph = self._exec, self._graph
        self._exec = self._graph = None
        with self.ctx.activate():
            if graph_exec is not None:
                self._lib.cuGraphExecDestroy(ctypes.c_void_p(graph_exec))
            if graph is not None:
                self._lib.cuGraphDestroy(ctypes.c_void_p(graph))
