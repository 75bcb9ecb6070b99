"""Fake ``pycuda.driver`` on the shared fake GPU.

Strict where real pycuda and CUDA are strict, so runner bugs show up without a GPU:

* every call needs ``init()`` and a current context in the calling thread;
* objects remember the context they were made in; freeing one (``free()`` or the destructor)
  from a thread where that context is not current and that did not create it fails with
  "cannot activate out-of-thread context", as pycuda's ``scoped_context_activation`` does;
  failures in destructors are printed (as pycuda does) and appended to ``cleanup_failures``;
* async copies are queued on the stream and move the bytes only when the stream runs, reading
  the host array at that time; their host side must be page-locked memory from
  ``pagelocked_empty`` (deliberately stricter than CUDA, which silently makes a pageable
  "async" copy synchronous: the fake turns that performance bug into an error);
* events complete only when their stream runs; timing needs both events completed;
* allocations are counted in ``DEVICE.counts`` / ``DEVICE.live_pinned`` / ``DEVICE.live_events``.
"""

import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from fakes.device import DEVICE, FakeCudaError, host_clock_ms


class Error(Exception):
    pass


class LogicError(Error):
    pass


class LaunchError(Error):
    pass


class MemoryError(Error):
    pass


class RuntimeError(Error):
    pass


#: destructor clean-ups that failed (pycuda prints a warning and leaks the object)
cleanup_failures: List[str] = []

_state = {"initialized": False}
_lock = threading.RLock()


def init(flags: int = 0) -> None:
    _state["initialized"] = True


def get_version() -> Tuple[int, int, int]:
    return (12, 2, 0)


def get_driver_version() -> int:
    return 12020


def _require_init() -> None:
    if not _state["initialized"]:
        raise LogicError("cuInit has not been called (call pycuda.driver.init() first)")


def _require_context(what: str) -> "Context":
    _require_init()
    ctx = DEVICE.current_context()
    if ctx is None:
        raise LogicError(
            "{} failed: invalid device context (no context is current in thread {!r})".format(
                what, threading.current_thread().name
            )
        )
    return ctx  # type: ignore[return-value]


def _capture_forbids_unsafe_calls() -> bool:
    """CUDA's rule for a thread in the default (global) interaction mode: an unsafe call (an
    allocation, a context-wide synchronise) is refused while this thread captures in global or
    thread-local mode, or while another thread captures in global mode; a thread-local
    capture elsewhere does not concern this thread."""
    me = threading.current_thread()
    for stream in list(DEVICE._streams.values()):
        if stream.capturing is None:
            continue
        if stream.capture_thread is me and stream.capture_mode != 2:  # not RELAXED
            return True
        if stream.capture_thread is not me and stream.capture_mode == 0:  # GLOBAL
            return True
    return False


def _refuse_during_capture(what: str) -> None:
    if _capture_forbids_unsafe_calls():
        raise LogicError("{} failed: operation not permitted when stream is capturing".format(what))


def _count(key: str, delta: int = 1) -> None:
    with _lock:
        DEVICE.counts[key] = DEVICE.counts.get(key, 0) + delta


# -- enums -----------------------------------------------------------------------------------
class device_attribute:
    MULTIPROCESSOR_COUNT = 16
    INTEGRATED = 18
    CAN_MAP_HOST_MEMORY = 19
    COMPUTE_CAPABILITY_MAJOR = 75
    COMPUTE_CAPABILITY_MINOR = 76


class event_flags:
    DEFAULT = 0
    BLOCKING_SYNC = 1
    DISABLE_TIMING = 2
    INTERPROCESS = 4


class host_alloc_flags:
    PORTABLE = 1
    DEVICEMAP = 2
    WRITECOMBINED = 4


class ctx_flags:
    SCHED_AUTO = 0
    SCHED_SPIN = 1
    SCHED_YIELD = 2
    SCHED_BLOCKING_SYNC = 4
    BLOCKING_SYNC = 4
    MAP_HOST = 8


# -- device and contexts ----------------------------------------------------------------------
class Device:
    def __init__(self, ordinal: int) -> None:
        _require_init()
        if not 0 <= int(ordinal) < Device.count():
            raise LogicError("cuDeviceGet failed: invalid device ordinal")
        self.ordinal = int(ordinal)

    @staticmethod
    def count() -> int:
        _require_init()
        return 1

    def name(self) -> str:
        return DEVICE.name

    def compute_capability(self) -> Tuple[int, int]:
        return tuple(DEVICE.compute_capability)  # type: ignore[return-value]

    def total_memory(self) -> int:
        return DEVICE.total_memory

    def get_attribute(self, attribute: int) -> int:
        values = {
            device_attribute.MULTIPROCESSOR_COUNT: 16,
            device_attribute.INTEGRATED: int(DEVICE.integrated),
            device_attribute.CAN_MAP_HOST_MEMORY: 1,
            device_attribute.COMPUTE_CAPABILITY_MAJOR: DEVICE.compute_capability[0],
            device_attribute.COMPUTE_CAPABILITY_MINOR: DEVICE.compute_capability[1],
        }
        if attribute not in values:
            raise LogicError("cuDeviceGetAttribute failed: invalid value")
        return values[attribute]

    def retain_primary_context(self) -> "Context":
        return Context(primary=True)

    def make_context(self, flags: int = 0) -> "Context":
        ctx = Context(primary=False)
        ctx.push()
        return ctx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.ordinal == self.ordinal

    def __hash__(self) -> int:
        return hash(("Device", self.ordinal))


class Context:
    """A context; pushing it makes it current in the calling thread only."""

    def __init__(self, primary: bool) -> None:
        self.primary = primary
        self.thread = threading.current_thread()
        self.valid = True
        self.handle = id(self)

    def push(self) -> None:
        if not self.valid:
            raise LogicError("cannot push an invalid (detached) context")
        DEVICE.push_context(self)

    @staticmethod
    def pop() -> None:
        try:
            DEVICE.pop_context()
        except FakeCudaError:
            raise LogicError("context::pop failed: cannot pop non-current context") from None

    @staticmethod
    def get_current() -> Optional["Context"]:
        return DEVICE.current_context()  # type: ignore[return-value]

    @staticmethod
    def get_device() -> Device:
        _require_context("cuCtxGetDevice")
        return Device(0)

    @staticmethod
    def synchronize() -> None:
        _require_context("cuCtxSynchronize")
        _refuse_during_capture("cuCtxSynchronize")
        for stream in list(DEVICE._streams.values()):
            stream.synchronize()

    def detach(self) -> None:
        if not self.valid:
            raise LogicError("context::detach failed: cannot detach from invalid context")
        self.valid = False


class _ContextDependent:
    """What pycuda's ``context_dependent`` + ``scoped_context_activation`` do."""

    def __init__(self, what: str) -> None:
        self._context = _require_context(what)

    def _activate(self, what: str) -> bool:
        """Make our context current for a clean-up; True when it was pushed (pop it after)."""
        ctx = self._context
        if not ctx.valid:
            raise LogicError("{}: cannot activate dead context".format(what))
        if DEVICE.current_context() is ctx:
            return False
        if threading.current_thread() is not ctx.thread:
            raise LogicError("{}: cannot activate out-of-thread context".format(what))
        DEVICE.push_context(ctx)
        return True

    def _cleanup(self, what: str, action: Callable[[], None], in_destructor: bool) -> None:
        try:
            pushed = self._activate(what)
        except LogicError as exc:
            if not in_destructor:
                raise
            message = "PyCUDA WARNING: a clean-up operation failed (dead context maybe?): {}".format(exc)
            cleanup_failures.append(message)
            print(message, file=sys.stderr)
            return
        try:
            action()
        except Exception as exc:
            if not in_destructor:
                raise
            message = "PyCUDA WARNING: a clean-up operation failed: {}: {}".format(what, exc)
            cleanup_failures.append(message)
            print(message, file=sys.stderr)
        finally:
            if pushed:
                DEVICE.pop_context()


# -- device memory -----------------------------------------------------------------------------
class DeviceAllocation(_ContextDependent):
    def __init__(self, nbytes: int) -> None:
        super().__init__("cuMemAlloc")
        _refuse_during_capture("cuMemAlloc")
        try:
            self._address: Optional[int] = DEVICE.malloc(int(nbytes))
        except FakeCudaError as exc:
            raise LogicError(str(exc)) from None
        self._generation = DEVICE.generation

    def __int__(self) -> int:
        if self._address is None:
            raise LogicError("device_allocation: already freed")
        return self._address

    __index__ = __int__

    def free(self) -> None:
        if self._address is None:
            raise LogicError("device_allocation::free failed: invalid handle (already freed)")
        self._cleanup("device_allocation::free", self._free_now, in_destructor=False)

    def _free_now(self) -> None:
        address, self._address = self._address, None
        if self._generation == DEVICE.generation:  # else made before DEVICE.reset()
            DEVICE.free(address)  # type: ignore[arg-type]

    def __del__(self) -> None:
        if getattr(self, "_address", None) is not None:
            self._cleanup("device_allocation destructor", self._free_now, in_destructor=True)


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes)


def mem_get_info() -> Tuple[int, int]:
    _require_context("cuMemGetInfo")
    return (DEVICE.total_memory - DEVICE.live_bytes, DEVICE.total_memory)


# -- page-locked host memory -------------------------------------------------------------------
#: live page-locked blocks: host address -> allocation
_pinned: Dict[int, "HostAllocation"] = {}


class HostAllocation(bytearray):
    """Page-locked host memory; ``pagelocked_empty`` arrays have it as their ``.base``."""

    def _setup(self, flags: int) -> None:
        self._context = _require_context("cuMemHostAlloc")
        self.flags = int(flags)
        self.valid = True
        self.host_address = int(np.frombuffer(self, dtype=np.uint8).ctypes.data) if len(self) else 0
        self._generation = DEVICE.generation
        self.device_address: Optional[int] = None
        with _lock:
            _pinned[self.host_address] = self
            DEVICE.counts["pinned_alloc"] += 1
            DEVICE.live_pinned += 1
        if self.flags & host_alloc_flags.DEVICEMAP:
            # mapped memory: the device reads and writes these very bytes at its own address
            with DEVICE._lock:
                address = DEVICE._next_address
                DEVICE._next_address += (len(self) + DEVICE.ALIGN - 1) // DEVICE.ALIGN * DEVICE.ALIGN + DEVICE.ALIGN
                DEVICE._allocations[address] = self
            self.device_address = address

    def get_device_pointer(self) -> int:
        _require_context("cuMemHostGetDevicePointer")
        if not self.valid:
            raise LogicError("cuMemHostGetDevicePointer failed: invalid value (freed)")
        if self.device_address is None:
            raise LogicError("cuMemHostGetDevicePointer failed: invalid value (not allocated with DEVICEMAP)")
        return self.device_address

    def get_flags(self) -> int:
        return self.flags

    def free(self) -> None:
        if not self.valid:
            raise LogicError("pagelocked_host_allocation::free failed: invalid handle (already freed)")
        _ContextDependent._cleanup(self, "pagelocked_host_allocation::free", self._free_now, in_destructor=False)  # type: ignore[arg-type]

    def _activate(self, what: str) -> bool:
        return _ContextDependent._activate(self, what)  # type: ignore[arg-type]

    def _free_now(self) -> None:
        self.valid = False
        if self._generation != DEVICE.generation:
            return  # made before DEVICE.reset(): that device and its counters are gone
        with _lock:
            _pinned.pop(self.host_address, None)
            DEVICE.counts["pinned_free"] += 1
            DEVICE.live_pinned -= 1
        if self.device_address is not None:
            with DEVICE._lock:
                DEVICE._allocations.pop(self.device_address, None)

    def __del__(self) -> None:
        if getattr(self, "valid", False):
            _ContextDependent._cleanup(self, "pagelocked_host_allocation destructor", self._free_now, in_destructor=True)  # type: ignore[arg-type]

    def __hash__(self) -> int:  # type: ignore[override]
        return id(self)


PagelockedHostAllocation = HostAllocation


def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    """A C-ordered numpy array in new page-locked memory (``.base`` is the allocation)."""
    if order != "C":
        raise LogicError("numpy_empty: only order='C' is supported by the fake")
    _refuse_during_capture("cuMemHostAlloc")
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    block = HostAllocation(max(nbytes, 1))
    block._setup(mem_flags)
    return np.ndarray(shape, dtype=dtype, buffer=block)


def _pinned_block(array: Any, what: str, writable: bool) -> Tuple["HostAllocation", int, int]:
    """The live pinned allocation holding all of ``array``; (block, offset, nbytes)."""
    if not isinstance(array, np.ndarray):
        raise LogicError("{}: the host side must be a numpy array in page-locked memory, got {}".format(what, type(array).__name__))
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        raise BufferError("{}: ndarray is not contiguous".format(what))
    if writable and not array.flags.writeable:
        raise BufferError("{}: destination array is read-only".format(what))
    start = int(array.ctypes.data) if array.size else 0
    nbytes = int(array.nbytes)
    with _lock:
        for base, block in _pinned.items():
            if base <= start and start + nbytes <= base + len(block):
                return block, start - base, nbytes
    raise LogicError(
        "{}: the host array is not page-locked memory from pagelocked_empty (an async copy from "
        "pageable memory would run synchronously; write into the pinned buffer instead of rebinding it)".format(what)
    )


def _stream_of(stream: Optional["Stream"]) -> Optional[Any]:
    if stream is None:
        return None
    if not isinstance(stream, Stream):
        raise LogicError("expected a pycuda.driver.Stream, got {}".format(type(stream).__name__))
    return stream._fake


def _run_or_enqueue(fake_stream: Optional[Any], op: Callable[[], None]) -> None:
    if fake_stream is None:  # the legacy default stream: runs in order, here at once
        op()
    else:
        fake_stream.enqueue(op)


def memcpy_htod_async(dest: Any, src: Any, stream: Optional["Stream"] = None) -> None:
    _require_context("cuMemcpyHtoDAsync")
    block, offset, nbytes = _pinned_block(src, "cuMemcpyHtoDAsync", writable=False)
    address = int(dest)
    DEVICE.view(address, nbytes)  # range check at enqueue time, as the driver validates pointers

    def op() -> None:
        if not block.valid:
            raise FakeCudaError("illegal address: host-to-device copy from freed page-locked memory")
        DEVICE.view(address, nbytes)[:] = np.frombuffer(block, dtype=np.uint8, count=nbytes, offset=offset)

    _count("htod")
    _run_or_enqueue(_stream_of(stream), op)


def memcpy_dtoh_async(dest: Any, src: Any, stream: Optional["Stream"] = None) -> None:
    _require_context("cuMemcpyDtoHAsync")
    block, offset, nbytes = _pinned_block(dest, "cuMemcpyDtoHAsync", writable=True)
    address = int(src)
    DEVICE.view(address, nbytes)

    def op() -> None:
        if not block.valid:
            raise FakeCudaError("illegal address: device-to-host copy into freed page-locked memory")
        np.frombuffer(block, dtype=np.uint8, count=nbytes, offset=offset)[:] = DEVICE.view(address, nbytes)

    _count("dtoh")
    _run_or_enqueue(_stream_of(stream), op)


def memcpy_htod(dest: Any, src: Any) -> None:
    """Synchronous copy (any contiguous host array)."""
    _require_context("cuMemcpyHtoD")
    array = np.ascontiguousarray(src)
    DEVICE.view(int(dest), array.nbytes)[:] = array.reshape(-1).view(np.uint8)
    _count("htod")


def memcpy_dtoh(dest: Any, src: Any) -> None:
    """Synchronous copy into a writable contiguous host array."""
    _require_context("cuMemcpyDtoH")
    if not isinstance(dest, np.ndarray) or not dest.flags.c_contiguous or not dest.flags.writeable:
        raise BufferError("cuMemcpyDtoH: destination must be a writable contiguous array")
    dest.reshape(-1).view(np.uint8)[:] = DEVICE.view(int(src), dest.nbytes)
    _count("dtoh")


# -- streams and events ------------------------------------------------------------------------
class Stream(_ContextDependent):
    def __init__(self, flags: int = 0) -> None:
        super().__init__("cuStreamCreate")
        self._fake = DEVICE.create_stream()
        self.handle = self._fake.handle

    def synchronize(self) -> None:
        _require_context("cuStreamSynchronize")
        if self._fake.capturing is not None:
            raise LogicError("cuStreamSynchronize failed: operation not permitted when stream is capturing")
        self._fake.synchronize()

    def is_done(self) -> bool:
        _require_context("cuStreamQuery")
        return self._fake.is_done()

    def wait_for_event(self, event: "Event") -> None:
        _require_context("cuStreamWaitEvent")
        target = event._recorded
        source = event._stream

        def op() -> None:
            # the GPU would wait here for the other stream to reach the event
            if event._completed < target and source is not None:
                source.synchronize()

        self._fake.enqueue(op)

    def _destroy(self) -> None:
        DEVICE.destroy_stream(self._fake)

    def __del__(self) -> None:
        if getattr(self, "_fake", None) is not None:
            self._cleanup("stream destructor", self._destroy, in_destructor=True)


class Event(_ContextDependent):
    def __init__(self, flags: int = 0) -> None:
        super().__init__("cuEventCreate")
        self.flags = int(flags or 0)
        self._recorded = 0
        self._completed = 0
        self._time_ms: Optional[float] = None
        self._stream: Optional[Any] = None
        with _lock:
            DEVICE.counts["event_create"] += 1
            DEVICE.live_events += 1
        self._generation = DEVICE.generation
        self._alive = True

    def record(self, stream: Optional[Stream] = None) -> "Event":
        _require_context("cuEventRecord")
        self._recorded += 1
        target = self._recorded
        fake_stream = _stream_of(stream)
        self._stream = fake_stream

        def op() -> None:
            self._completed = max(self._completed, target)
            self._time_ms = host_clock_ms()

        _run_or_enqueue(fake_stream, op)
        return self

    def synchronize(self) -> "Event":
        _require_context("cuEventSynchronize")
        if self._completed < self._recorded and self._stream is not None:
            if self._stream.capturing is not None:
                raise LogicError("cuEventSynchronize failed: operation not permitted when stream is capturing")
            self._stream.synchronize()
        return self

    def query(self) -> bool:
        _require_context("cuEventQuery")
        return self._completed >= self._recorded

    def time_since(self, event: "Event") -> float:
        """Milliseconds from ``event`` to ``self``."""
        _require_context("cuEventElapsedTime")
        for ev in (self, event):
            if ev.flags & event_flags.DISABLE_TIMING or ev._recorded == 0:
                raise LogicError("cuEventElapsedTime failed: invalid handle")
            if ev._completed < ev._recorded:
                raise LogicError("cuEventElapsedTime failed: device not ready")
        return float(self._time_ms - event._time_ms)  # type: ignore[operator]

    def time_till(self, event: "Event") -> float:
        return event.time_since(self)

    def _destroy(self) -> None:
        if self._generation != DEVICE.generation:
            return  # made before DEVICE.reset()
        with _lock:
            DEVICE.live_events -= 1

    def __del__(self) -> None:
        if getattr(self, "_alive", False):
            self._alive = False
            self._cleanup("event destructor", self._destroy, in_destructor=True)
