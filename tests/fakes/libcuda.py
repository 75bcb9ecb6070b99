"""A fake of the few CUDA driver functions ``changenet_trt.gpu.cuda`` calls through ctypes (graphs).

Same names and calling convention as ``libcuda.so``: ctypes arguments in, an integer
``CUresult`` out, results written through ``ctypes.pointer`` arguments. Work enqueued on a
capturing fake stream is recorded instead of queued (``FakeStream.capturing``); launching the
instantiated graph queues the recorded operations again. ``DEVICE.fail_capture`` makes
``cuStreamEndCapture`` report an invalidated capture, as when a captured operation is not
capturable.
"""

import ctypes
import itertools
import threading
from typing import Any, Callable, Dict, List

from fakes.device import DEVICE, FakeCudaError

CUDA_SUCCESS = 0
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_INVALID_CONTEXT = 201
CUDA_ERROR_INVALID_HANDLE = 400
CUDA_ERROR_ILLEGAL_STATE = 401
CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901
CUDA_ERROR_STREAM_CAPTURE_UNMATCHED = 903
CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908

_NAMES = {
    CUDA_SUCCESS: "CUDA_SUCCESS",
    CUDA_ERROR_INVALID_VALUE: "CUDA_ERROR_INVALID_VALUE",
    CUDA_ERROR_NO_DEVICE: "CUDA_ERROR_NO_DEVICE",
    CUDA_ERROR_INVALID_CONTEXT: "CUDA_ERROR_INVALID_CONTEXT",
    CUDA_ERROR_INVALID_HANDLE: "CUDA_ERROR_INVALID_HANDLE",
    CUDA_ERROR_ILLEGAL_STATE: "CUDA_ERROR_ILLEGAL_STATE",
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
    CUDA_ERROR_STREAM_CAPTURE_UNMATCHED: "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED",
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD: "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
}


class _CFunction:
    """A callable with the ``argtypes``/``restype`` attributes of a ctypes function."""

    def __init__(self, body: Callable[..., int]) -> None:
        self._body = body
        self.argtypes: Any = None
        self.restype: Any = ctypes.c_int

    def __call__(self, *args: Any) -> int:
        if self.argtypes is not None and len(args) != len(self.argtypes):
            raise TypeError("this function takes {} arguments ({} given)".format(len(self.argtypes), len(args)))
        return int(self._body(*args))


def _value(arg: Any) -> int:
    """The integer behind a ctypes scalar or a plain int (NULL -> 0)."""
    value = getattr(arg, "value", arg)
    return int(value or 0)


def _store(pointer: Any, value: int) -> None:
    pointer.contents.value = value


class FakeDriverLibrary:
    """What ``ctypes.CDLL("libcuda.so.1")`` gives, for graph capture on the fake device."""

    def __init__(self) -> None:
        self._handles = itertools.count(0x6000)
        self.graphs: Dict[int, List[Callable[[], None]]] = {}
        self.graph_execs: Dict[int, List[Callable[[], None]]] = {}
        self._capture_threads: Dict[int, threading.Thread] = {}
        self.captures_begun = 0
        #: what ``cuInit`` returns (CUDA_ERROR_NO_DEVICE plays a machine whose driver finds no GPU)
        self.init_result = CUDA_SUCCESS
        for name in (
            "cuInit",
            "cuDeviceGetCount",
            "cuStreamBeginCapture_v2",
            "cuStreamEndCapture",
            "cuGraphInstantiateWithFlags",
            "cuGraphLaunch",
            "cuGraphExecDestroy",
            "cuGraphDestroy",
            "cuGetErrorName",
        ):
            setattr(self, name, _CFunction(getattr(self, "_" + name)))

    @property
    def live(self) -> int:
        """Graphs plus executable graphs not yet destroyed."""
        return len(self.graphs) + len(self.graph_execs)

    def _stream(self, handle: Any) -> Any:
        try:
            return DEVICE.stream(_value(handle))
        except FakeCudaError:
            return None

    def _cuInit(self, flags: Any) -> int:
        if _value(flags) != 0:
            return CUDA_ERROR_INVALID_VALUE
        return self.init_result

    def _cuDeviceGetCount(self, count_out: Any) -> int:
        if self.init_result != CUDA_SUCCESS:
            return self.init_result
        _store(count_out, 1)
        return CUDA_SUCCESS

    def _cuStreamBeginCapture_v2(self, handle: Any, mode: Any) -> int:
        if DEVICE.current_context() is None:
            return CUDA_ERROR_INVALID_CONTEXT
        stream = self._stream(handle)
        if stream is None:
            return CUDA_ERROR_INVALID_HANDLE
        if stream.capturing is not None:
            return CUDA_ERROR_ILLEGAL_STATE
        if _value(mode) not in (0, 1, 2):  # GLOBAL, THREAD_LOCAL, RELAXED
            return CUDA_ERROR_INVALID_VALUE
        stream.capturing = []
        stream.capture_mode = _value(mode)
        stream.capture_thread = threading.current_thread()
        self._capture_threads[stream.handle] = threading.current_thread()
        self.captures_begun += 1
        return CUDA_SUCCESS

    def _cuStreamEndCapture(self, handle: Any, graph_out: Any) -> int:
        stream = self._stream(handle)
        if stream is None:
            return CUDA_ERROR_INVALID_HANDLE
        if stream.capturing is None:
            return CUDA_ERROR_STREAM_CAPTURE_UNMATCHED
        if self._capture_threads.get(stream.handle) is not threading.current_thread():
            return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD
        ops, stream.capturing = stream.capturing, None
        stream.capture_thread = None
        del self._capture_threads[stream.handle]
        if DEVICE.fail_capture:
            _store(graph_out, 0)
            return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        graph = next(self._handles)
        self.graphs[graph] = list(ops)
        _store(graph_out, graph)
        return CUDA_SUCCESS

    def _cuGraphInstantiateWithFlags(self, exec_out: Any, graph: Any, flags: Any) -> int:
        if DEVICE.current_context() is None:
            return CUDA_ERROR_INVALID_CONTEXT
        ops = self.graphs.get(_value(graph))
        if ops is None:
            return CUDA_ERROR_INVALID_HANDLE
        graph_exec = next(self._handles)
        self.graph_execs[graph_exec] = list(ops)
        DEVICE.counts["graph_instantiate"] += 1
        _store(exec_out, graph_exec)
        return CUDA_SUCCESS

    def _cuGraphLaunch(self, graph_exec: Any, handle: Any) -> int:
        if DEVICE.current_context() is None:
            return CUDA_ERROR_INVALID_CONTEXT
        ops = self.graph_execs.get(_value(graph_exec))
        stream = self._stream(handle)
        if ops is None or stream is None:
            return CUDA_ERROR_INVALID_HANDLE
        for op in ops:
            stream.enqueue(op)
        DEVICE.counts["graph_launch"] += 1
        return CUDA_SUCCESS

    def _cuGraphExecDestroy(self, graph_exec: Any) -> int:
        if self.graph_execs.pop(_value(graph_exec), None) is None:
            return CUDA_ERROR_INVALID_HANDLE
        return CUDA_SUCCESS

    def _cuGraphDestroy(self, graph: Any) -> int:
        if self.graphs.pop(_value(graph), None) is None:
            return CUDA_ERROR_INVALID_HANDLE
        return CUDA_SUCCESS

    def _cuGetErrorName(self, code: Any, name_out: Any) -> int:
        name = _NAMES.get(_value(code))
        if name is None:
            return CUDA_ERROR_INVALID_VALUE
        name_out.contents.value = name.encode()
        return CUDA_SUCCESS
