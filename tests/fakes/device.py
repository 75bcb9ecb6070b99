"""A fake CUDA device shared by the TensorRT and pycuda test doubles.

It is strict where the real thing is strict, so runner bugs show up without a GPU:

* device memory is addressed by integers; every access is range-checked against a live
  allocation (a stale or out-of-range pointer raises, as an illegal address would);
* work enqueued on a stream does **not** run until the stream (or an event recorded on it) is
  synchronised, so a runner that reads its output before synchronising reads stale bytes;
* every CUDA call needs a current context in the calling thread (pycuda's autoprimaryctx
  makes it current only in the importing thread), so threading mistakes fail loudly;
* allocations are counted (device, pinned host, streams, events, graphs), so tests can assert
  "no allocation after warm-up" and "nothing left after close".
"""

import itertools
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np


class FakeCudaError(RuntimeError):
    """What a real CUDA error (illegal address, invalid context, ...) would be."""


class FakeStream:
    """An in-order queue of operations that run on ``synchronize``."""

    def __init__(self, device: "FakeDevice", handle: int) -> None:
        self.device = device
        self.handle = handle
        self._queue: List[Callable[[], None]] = []
        self.capturing: Optional[List[Callable[[], None]]] = None
        #: while capturing: the CUstreamCaptureMode (0 global, 1 thread-local, 2 relaxed) and the
        #: thread that began the capture (which CUDA calls the capture forbids depends on both)
        self.capture_mode = 0
        self.capture_thread: Optional[threading.Thread] = None
        self.ops_run = 0

    def enqueue(self, op: Callable[[], None]) -> None:
        with self.device._lock:
            if self.capturing is not None:
                self.capturing.append(op)
            else:
                self._queue.append(op)

    def synchronize(self) -> None:
        self.device.require_context()
        # One GPU runs a stream's work in order, whichever host threads wait on it: draining is
        # serialised device-wide (reentrant: a cross-stream wait drains the other stream here).
        with self.device._lock:
            while self._queue:
                op = self._queue.pop(0)
                op()
                self.ops_run += 1

    def is_done(self) -> bool:
        return not self._queue

    @property
    def pending(self) -> int:
        return len(self._queue)


class FakeDevice:
    """Memory, streams and per-thread contexts of one fake GPU."""

    ALIGN = 256

    def __init__(self, name: str = "Fake GPU (Orin)", compute_capability=(8, 7), integrated: bool = True) -> None:
        self.name = name
        self.compute_capability = tuple(compute_capability)
        self.integrated = integrated
        self.total_memory = 8 << 30
        self.reset()

    def reset(self) -> None:
        # A reset device is a new device: objects made before it (freed later by the garbage
        # collector) must not touch the new counters, so each carries the generation it was
        # made in.
        self.generation = getattr(self, "generation", 0) + 1
        self._allocations: Dict[int, bytearray] = {}
        self._next_address = 0x7F0000000000
        self._streams: Dict[int, FakeStream] = {}
        self._stream_handles = itertools.count(0x5000)
        self._local = threading.local()
        self._lock = threading.RLock()
        self.counts = {
            "device_alloc": 0,
            "device_free": 0,
            "pinned_alloc": 0,
            "pinned_free": 0,
            "stream_create": 0,
            "stream_destroy": 0,
            "event_create": 0,
            "graph_instantiate": 0,
            "graph_launch": 0,
            "htod": 0,
            "dtoh": 0,
        }
        self.live_pinned = 0
        self.live_events = 0
        self.fail_capture = False  # tests set this to make stream capture fail

    # -- contexts ---------------------------------------------------------------------------
    def push_context(self, context: object) -> None:
        stack = self._stack()
        stack.append(context)

    def pop_context(self) -> object:
        stack = self._stack()
        if not stack:
            raise FakeCudaError("cuCtxPopCurrent failed: no context is current in this thread")
        return stack.pop()

    def current_context(self) -> Optional[object]:
        stack = self._stack()
        return stack[-1] if stack else None

    def require_context(self) -> None:
        if self.current_context() is None:
            raise FakeCudaError(
                "invalid device context: no CUDA context is current in thread {!r}".format(
                    threading.current_thread().name
                )
            )

    def _stack(self) -> list:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    # -- memory -----------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        self.require_context()
        if nbytes <= 0:
            raise FakeCudaError("cuMemAlloc failed: size must be positive, got {}".format(nbytes))
        with self._lock:
            address = self._next_address
            self._next_address += (int(nbytes) + self.ALIGN - 1) // self.ALIGN * self.ALIGN + self.ALIGN
            self._allocations[address] = bytearray(int(nbytes))
            self.counts["device_alloc"] += 1
        return address

    def free(self, address: int) -> None:
        self.require_context()
        with self._lock:
            if address not in self._allocations:
                raise FakeCudaError("cuMemFree failed: 0x{:x} is not a live allocation".format(address))
            del self._allocations[address]
            self.counts["device_free"] += 1

    def view(self, address: int, nbytes: int) -> np.ndarray:
        """A uint8 view of ``nbytes`` at ``address`` (may point inside an allocation)."""
        with self._lock:
            for base, block in self._allocations.items():
                if base <= address < base + len(block):
                    offset = address - base
                    if offset + nbytes > len(block):
                        raise FakeCudaError(
                            "illegal address: access of {} bytes at 0x{:x} overruns the {}-byte allocation at 0x{:x}".format(
                                nbytes, address, len(block), base
                            )
                        )
                    return np.frombuffer(block, dtype=np.uint8, count=nbytes, offset=offset)
        raise FakeCudaError("illegal address: 0x{:x} is not in any live device allocation".format(address))

    @property
    def live_allocations(self) -> int:
        return len(self._allocations)

    @property
    def live_bytes(self) -> int:
        return sum(len(b) for b in self._allocations.values())

    # -- streams ----------------------------------------------------------------------------
    def create_stream(self) -> FakeStream:
        self.require_context()
        handle = next(self._stream_handles)
        stream = FakeStream(self, handle)
        self._streams[handle] = stream
        self.counts["stream_create"] += 1
        return stream

    def destroy_stream(self, stream: FakeStream) -> None:
        # Handles restart at every reset: a stream of an earlier test, collected late, may share
        # its handle with a live one, and must not remove it.
        if self._streams.get(stream.handle) is stream:
            del self._streams[stream.handle]
            self.counts["stream_destroy"] += 1

    def stream(self, handle: int) -> FakeStream:
        """The stream behind a raw handle (what TensorRT receives as ``stream_handle``)."""
        try:
            return self._streams[int(handle)]
        except (KeyError, TypeError, ValueError):
            raise FakeCudaError("invalid stream handle {!r}".format(handle)) from None

    @property
    def live_streams(self) -> int:
        return len(self._streams)

    def summary(self) -> Dict[str, int]:
        """Everything still allocated (all zero after a clean teardown)."""
        return {
            "device_allocations": self.live_allocations,
            "pinned_buffers": self.live_pinned,
            "streams": self.live_streams,
        }


#: the one fake GPU the doubles share; tests call DEVICE.reset() between cases
DEVICE = FakeDevice()


def host_clock_ms() -> float:
    return time.perf_counter() * 1000.0
