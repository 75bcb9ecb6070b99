"""TensorRT backend: a serialized engine run with pinned host memory, two streams and CUDA events.

Per buffer slot (two, so batch k+1 is copied in while batch k computes) the runner owns, for
every I/O tensor, a page-locked host array and a device buffer sized once at the largest batch
it accepts. A batch goes::

    caller writes rows [:n] of the pinned inputs (input_buffers; the arrays are never rebound)
    submit: H2D rows [:n] -> (wait for the previous batch's compute: one execution context)
            -> set_input_shape (only when n changes) -> execute_async_v3 (or a CUDA graph)
            -> D2H rows [:n]                              all async on the slot's stream
    fetch:  one wait on the slot's last event -> raw output [n, ...] (a copy unless copy=False)

Creating a runner reads the engine's sidecar (contract, profile, the TensorRT and GPU it was
built for) and deserializes nothing; ``activate`` deserializes the engine (its bytes checked
against the sidecar) and allocates. An engine without a sidecar is deserialized at creation, as
only it knows its tensors. A version-compatible engine (sidecar ``version_compatible``) also runs
on a newer TensorRT, or with the lean or dispatch runtime when the full ``tensorrt`` is absent.

CUDA events around each stage give ``last_timing`` (``h2d_ms``, ``compute_ms``, ``d2h_ms``; GPU
time) and ``enqueue_ms`` is the host time of ``submit``. TensorRT and pycuda are imported
lazily (through :mod:`changenet_trt.gpu.trt` and :mod:`changenet_trt.gpu.cuda`).
"""

import hashlib
import logging
import os
import threading
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from packaging.version import InvalidVersion, Version

from changenet_trt import sidecar
from changenet_trt.contract import (
    META_CUTOFF,
    META_PREPROCESS,
    ContractNames,
    ModelContract,
    engine_tensors,
    make_contract,
)
from changenet_trt.errors import EngineError, InputError
from changenet_trt.gpu import cuda as cudalib
from changenet_trt.gpu import trt as trtlib
from changenet_trt.runtime.base import Runner, Timing, now_ms

LOG = logging.getLogger(__name__)
FEATURE = "the TensorRT backend (.engine files)"
_ONNX_SUFFIXES = (".onnx",)


class _Slot:
    """One buffer set: pinned host + device memory per tensor, a stream and its events."""

    def __init__(self) -> None:
        self.host: Dict[str, cudalib.PinnedBuffer] = {}
        self.device: Dict[str, cudalib.DeviceBuffer] = {}
        self.addresses: Dict[str, int] = {}
        self.stream: Optional[cudalib.CudaStream] = None
        # start -> (H2D) -> h2d_done -> [wait] compute_start -> (compute) -> compute_done -> (D2H) -> end
        self.events: Dict[str, cudalib.CudaEvent] = {}
        self.pending: Optional[int] = None
        self.enqueue_ms = 0.0


def _check_engine_file(path: str) -> None:
    """Refuse what cannot be an engine before anything is loaded: no file, no bytes, an ONNX model."""
    if not os.path.isfile(path):
        raise EngineError("engine file not found: {}".format(path))
    if os.path.getsize(path) == 0:
        raise EngineError("engine file is empty: {}".format(path), expected="a serialized TensorRT engine", found="0 bytes")
    if os.path.splitext(path)[1].lower() in _ONNX_SUFFIXES:
        raise EngineError(
            "{} is an ONNX model, not a TensorRT engine".format(path),
            expected="an engine built from it (changenet-trt build), or the onnxruntime backend",
            found="an .onnx file",
        )


def _read_engine_bytes(path: str) -> bytes:
    _check_engine_file(path)
    with open(path, "rb") as handle:
        return handle.read()


def _sidecar_flag(meta: Optional[Any], name: str) -> bool:
    """A build setting the sidecar records (``version_compatible``, ``exclude_lean_runtime``), as a
    field or in its ``flags``; False when absent (older sidecars, engines without one)."""
    if meta is None:
        return False
    value = getattr(meta, name, None)
    if value is None:
        value = (getattr(meta, "flags", None) or {}).get(name)
    return bool(value)


class TensorRTRunner(Runner):
    """Runs a ChangeNet TensorRT engine (``.engine``/``.plan``) on the GPU.

    ``max_batch``: the largest batch (default: the engine profile's max; must lie in the
    profile). ``cuda_graph``: capture ``execute_async_v3`` as a CUDA graph per slot and batch
    size and replay it (falls back, with a warning, when capture fails). ``spin_wait``: wait
    for the GPU by spinning instead of blocking (lower latency, one busy core).
    ``zero_copy``: host buffers mapped into the GPU's address space and read in place, no
    copies (for integrated GPUs such as Jetson). ``data_transfers=False``: skip H2D/D2H
    (trtexec's ``--noDataTransfers``; ``fetch`` then returns stale output rows).
    ``names``: overrides of the names and output kind the engine's sidecar recorded.
    ``device``: CUDA device index. ``lean_library``: the lean runtime library an engine built with
    ``--exclude-lean-runtime`` is loaded through (default: the building release's, see
    :func:`changenet_trt.gpu.trt.lean_library`).
    """

    name = "tensorrt"
    num_slots = 2
    OPTIONS = frozenset({"cuda_graph", "spin_wait", "zero_copy", "data_transfers", "device", "lean_library"})

    def __init__(
        self,
        engine_path: str,
        names: Optional[ContractNames] = None,
        max_batch: Optional[int] = None,
        *,
        cuda_graph: bool = False,
        spin_wait: bool = False,
        zero_copy: bool = False,
        data_transfers: bool = True,
        device: int = 0,
        lean_library: Optional[str] = None,
    ) -> None:
        self.model_path = os.fspath(engine_path)
        self.lean_library = lean_library
        self.cuda_graph = bool(cuda_graph)
        self.spin_wait = bool(spin_wait)
        self.zero_copy = bool(zero_copy)
        self.data_transfers = bool(data_transfers)
        self._lock = threading.RLock()
        _check_engine_file(self.model_path)
        self._sidecar = self._read_sidecar()
        #: the engine runs on a newer TensorRT, or on the lean/dispatch runtime (TensorRT 8.6+)
        self.version_compatible = _sidecar_flag(self._sidecar, "version_compatible")
        self._lean_embedded = not _sidecar_flag(self._sidecar, "exclude_lean_runtime")
        self._trt = trtlib.import_runtime(FEATURE, self.version_compatible, self._lean_embedded)
        self._logger = trtlib.make_logger(self._trt)
        self._ctx = cudalib.primary_context(device)
        if self.zero_copy and not self._ctx.can_map_host_memory:
            raise InputError(
                "zero_copy needs a GPU that can map host memory",
                expected="an integrated GPU (Jetson) or one with CAN_MAP_HOST_MEMORY",
                found=self._ctx.name,
            )
        if self.zero_copy and not self._ctx.integrated:
            LOG.warning("zero_copy on a discrete GPU (%s): every access crosses PCIe; expect it to be slower", self._ctx.name)
        self._check_sidecar()
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._io, self._profile_shapes = self._describe_engine()
        contract = self._read_contract(ContractNames.of(names))
        super().__init__(contract)
        self._inputs: List[str] = list(contract.input_names())
        self._outputs: List[str] = [t["name"] for t in self._io if t["mode"] == "output"]
        self._dtypes = {t["name"]: np.dtype(t["dtype"]) for t in self._io}
        self._low, self._opt, self._high = self._batch_limits()
        self._max_batch = self._choose_max_batch(max_batch)
        self._max_batch_given = max_batch is not None
        self._slots: List[_Slot] = []
        self._context_batch: Optional[int] = None
        self._bound_slot: Optional[int] = None
        self._last_compute: Optional[cudalib.CudaEvent] = None
        self._graphs: Dict[Tuple[int, int], cudalib.CudaGraph] = {}

    # -- loading ----------------------------------------------------------------------------
    def _read_sidecar(self) -> Optional[Any]:
        """The engine's metadata, or ``None`` when it has none (an engine from trtexec)."""
        if not os.path.isfile(sidecar.sidecar_path(self.model_path)):
            LOG.warning("%s has no metadata file (%s); relying on TensorRT's own checks", self.model_path,
                        sidecar.sidecar_path(self.model_path))
            return None
        return sidecar.read_sidecar(self.model_path)

    def _check_sidecar(self) -> None:
        """Refuse an engine whose sidecar names another TensorRT or another GPU (its bytes are
        checked against it when they are loaded). Without a sidecar TensorRT's own version and
        device checks still refuse a foreign engine when it is deserialized."""
        meta = self._sidecar
        if meta is None:
            return
        here = trtlib.version(self._trt)
        trt_version: Optional[str] = str(here)
        if self.version_compatible:
            # a version-compatible engine loads in the release that built it and in later ones
            try:
                built: Optional[Version] = Version(str(meta.trt_version))
            except InvalidVersion:
                built = None
            if built is not None and here < built:
                raise EngineError(
                    "{} is a version-compatible engine of TensorRT {}, which this TensorRT {} is too old "
                    "to run".format(self.model_path, meta.trt_version, here),
                    expected="TensorRT {} or later".format(meta.trt_version),
                    found=str(here),
                )
            trt_version = None
        verdict = sidecar.check_compatible(
            meta, trt_version=trt_version, gpu_name=self._ctx.name, compute_capability=self._ctx.compute_capability
        )
        for warning in verdict.warnings:
            LOG.warning("%s: %s", self.model_path, warning)
        verdict.raise_for_problems(self.model_path)

    def _describe_engine(self) -> Tuple[List[Dict[str, Any]], Dict[str, Tuple[Tuple[int, ...], ...]]]:
        """The engine's I/O tensors and its inputs' profile-0 shapes ``(min, opt, max)``.

        They come from the sidecar, so creating a runner deserializes nothing (activation
        does); an engine without them in a sidecar is deserialized now, as only it knows them.
        """
        meta = self._sidecar
        tensors = [dict(t) for t in (meta.tensors if meta is not None else [])]
        inputs = [t["name"] for t in tensors if t.get("mode") == "input"]
        shapes = dict(meta.profile_shapes) if meta is not None else {}
        if tensors and inputs and all(name in shapes for name in inputs):
            return tensors, {name: tuple(trtlib.dims(s) for s in shapes[name]) for name in inputs}
        self._load_engine()
        tensors = trtlib.io_tensors(self._engine)
        inputs = [t["name"] for t in tensors if t["mode"] == "input"]
        return tensors, {name: trtlib.profile_shapes(self._engine, name, 0) for name in inputs}

    def _model_metadata(self) -> Dict[str, str]:
        """The ONNX-style metadata (recommended cutoff, preprocessing) the sidecar carries."""
        meta = self._sidecar
        if meta is None:
            return {}
        out = {META_PREPROCESS: str(meta.preprocess)} if meta.preprocess else {}
        cutoff = (meta.flags or {}).get("recommended_cutoff")
        if cutoff is not None:
            out[META_CUTOFF] = repr(float(cutoff))
        return out

    def _load_engine(self) -> None:
        """Read the engine file (checked against its sidecar's sha256) and deserialize it."""
        plan = _read_engine_bytes(self.model_path)
        if self._sidecar is not None:
            sidecar.check_compatible(self._sidecar, engine_sha256=hashlib.sha256(plan).hexdigest()).raise_for_problems(
                self.model_path
            )
        trt = self._trt
        # a version-compatible engine that embeds its lean runtime carries host code, which every
        # runtime (full, lean, dispatch) runs only when allowed; it is allowed only for an engine
        # whose bytes were just checked against the sidecar that says it was built so
        host_code = (self.version_compatible and self._lean_embedded
                     and bool(self._sidecar is not None and self._sidecar.engine_sha256))
        with self._ctx.activate():
            runtime = trtlib.create_runtime(trt, FEATURE, allow_host_code=host_code)
            if self.version_compatible and not self._lean_embedded:
                # no lean runtime inside: TensorRT runs it only on the building release's lean runtime
                built = self._sidecar.trt_version if self._sidecar is not None else trtlib.version(trt)
                runtime = trtlib.load_lean_runtime(runtime, self._logger, str(built), self.lean_library)
            with self._logger.capture() as errors:
                engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(
                    "cannot load {} with TensorRT's {} runtime".format(self.model_path, trtlib.runtime_kind(trt)),
                    expected="an engine serialized by TensorRT {} for this GPU ({}), complete and unaltered".format(
                        trtlib.version(trt), self._ctx.name
                    ),
                    found="; ".join(errors[-3:]) if errors else "TensorRT could not deserialize it ({} bytes)".format(
                        len(plan)),
                )
        self._runtime, self._engine = runtime, engine

    def _read_contract(self, names: ContractNames) -> ModelContract:
        inputs, outputs = engine_tensors(self._io)
        meta = self._sidecar
        # the names and kind chosen at build time are the defaults; the caller's win
        built = meta.names if meta else ContractNames()
        return make_contract(inputs, outputs, names.or_else(built), metadata=self._model_metadata())

    def _batch_limits(self) -> Tuple[int, int, int]:
        """``(min, opt, max)`` batch of optimisation profile 0 (static engines: all the same)."""
        static = self.contract.static_batch
        if static is not None:
            return static, static, static
        low, opt, high = 1, None, None
        for name in self._inputs:
            shapes = self._profile_shapes[name]
            low = max(low, shapes[0][0])
            high = shapes[2][0] if high is None else min(high, shapes[2][0])
            opt = shapes[1][0] if opt is None else opt
        assert opt is not None and high is not None
        if low > high:
            raise EngineError("the engine's inputs have no batch size in common", found="min {} > max {}".format(low, high))
        return low, min(max(opt, low), high), high

    def _choose_max_batch(self, max_batch: Optional[int]) -> int:
        static = self.contract.static_batch
        if max_batch is None:
            return self._high
        if static is not None and max_batch != static:
            raise InputError(
                "this engine has a static batch; run it at that batch or build a dynamic-batch engine",
                expected="max_batch {}".format(static),
                found=max_batch,
            )
        if not isinstance(max_batch, (int, np.integer)) or not self._low <= max_batch <= self._high:
            raise InputError(
                "max_batch is outside the engine's optimisation profile",
                expected="{} <= max_batch <= {}".format(self._low, self._high),
                found=max_batch,
            )
        return int(max_batch)

    # -- batch limits -----------------------------------------------------------------------
    @property
    def batch_range(self) -> Tuple[int, int]:
        # a static engine runs any smaller batch padded to its own (only n rows are copied)
        low = 1 if self.contract.static_batch is not None else self._low
        return (low, self._max_batch)

    @property
    def preferred_batch(self) -> int:
        """The batch ``predict`` cuts inputs into: ``max_batch`` when given (a static engine's
        own batch), else the profile's opt batch."""
        if self.contract.static_batch is not None or self._max_batch_given:
            return self._max_batch
        return self._opt

    @property
    def profile(self) -> Tuple[int, int, int]:
        """``(min, opt, max)`` batch of the engine's optimisation profile."""
        return (self._low, self._opt, self._high)

    def check_batch(self, batch: int) -> None:
        low, high = self.batch_range
        if not isinstance(batch, (int, np.integer)) or not low <= batch <= high:
            raise InputError(
                "batch size outside what this engine accepts (optimisation profile {}..{}, opt {}{})".format(
                    self._low, self._high, self._opt,
                    "; buffers sized for {}".format(self._max_batch) if self._max_batch < self._high else "",
                ),
                expected="{} <= batch <= {}".format(low, high),
                found=batch,
            )

    # -- life cycle -------------------------------------------------------------------------
    def _activate(self) -> None:
        ctx = self._ctx
        try:
            with ctx.activate():
                if self._engine is None:
                    self._load_engine()
                    self._check_tensors()
                with self._logger.capture() as errors:
                    context = self._engine.create_execution_context()
                if context is None:
                    raise EngineError(
                        "TensorRT could not create an execution context for {}".format(self.model_path),
                        found="; ".join(errors[-3:]) or "out of device memory?",
                    )
                self._context = context
                shapes = self._set_batch(self._max_batch)
                blocking = not self.spin_wait
                for _ in range(self.num_slots):
                    slot = _Slot()
                    self._slots.append(slot)
                    for name in self._inputs + self._outputs:
                        wanted = name in self._inputs or name == self.contract.output
                        if wanted:
                            slot.host[name] = ctx.pinned(shapes[name], self._dtypes[name], mapped=self.zero_copy)
                        if wanted and self.zero_copy:
                            slot.addresses[name] = int(slot.host[name].device_address)  # type: ignore[arg-type]
                        else:
                            nbytes = int(np.prod(shapes[name], dtype=np.int64)) * self._dtypes[name].itemsize
                            slot.device[name] = ctx.device_buffer(max(nbytes, 1))
                            slot.addresses[name] = slot.device[name].address
                    slot.stream = ctx.stream()
                    for event in ("start", "h2d_done", "compute_start", "compute_done", "end"):
                        slot.events[event] = ctx.event(timing=True, blocking=blocking)
        except BaseException:
            self._release()
            raise

    def _check_tensors(self) -> None:
        """The deserialized engine must have the tensors its sidecar promised (the contract and
        buffer sizes were made from them)."""
        found = trtlib.io_tensors(self._engine)
        if found != self._io:
            raise EngineError(
                "{} does not have the tensors its metadata describes".format(self.model_path),
                expected=self._io,
                found=found,
            )

    def _set_batch(self, batch: int) -> Dict[str, Tuple[int, ...]]:
        """``set_input_shape`` for every input at ``batch``; return every I/O tensor's shape."""
        for name in self._inputs:
            shape = (batch,) + tuple(self.contract.input_shape)
            trtlib.call(
                self._logger,
                "set_input_shape('{}', {})".format(name, list(shape)),
                self._context.set_input_shape,
                name,
                shape,
                error=InputError,
            )
        self._context_batch = batch
        shapes = {}
        for name in self._inputs + self._outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(
                    "TensorRT cannot size tensor '{}' at batch {}".format(name, batch),
                    expected="static dimensions once the inputs are set",
                    found=trtlib.describe_shape(shape),
                )
            shapes[name] = shape
        return shapes

    def _deactivate(self) -> None:
        self._release()

    def _release(self) -> None:
        """Wait for in-flight work, then free graphs, buffers, streams, events and TensorRT objects."""
        with self._lock, self._ctx.activate():
            first_error: Optional[BaseException] = None
            for slot in self._slots:
                if slot.stream is not None:
                    try:  # nothing may still write into memory that is about to be freed
                        slot.stream.synchronize()
                    except BaseException as exc:
                        first_error = first_error or exc
            for graph in self._graphs.values():
                graph.free()
            self._graphs = {}
            for slot in self._slots:
                for event in slot.events.values():
                    event.close()
                for buffer in list(slot.host.values()) + list(slot.device.values()):  # type: ignore[operator]
                    buffer.free()
                if slot.stream is not None:
                    slot.stream.close()
            self._slots = []
            self._last_compute = None
            self._context_batch = None
            self._bound_slot = None
            # TensorRT frees its device memory as these go: context, then engine, then runtime
            self._context = None
            self._engine = None
            self._runtime = None
        if first_error is not None:
            raise first_error

    # -- inference --------------------------------------------------------------------------
    def input_buffers(self, batch: int, slot: int = 0) -> Dict[str, np.ndarray]:
        """Views ``[batch, C, H, W]`` of ``slot``'s pinned input arrays (the engine's dtype)."""
        self._require_active()
        self.check_batch(batch)
        self.check_slot(slot)
        host = self._slots[slot].host
        return {name: host[name].array[:batch] for name in self._inputs}  # type: ignore[index]

    def submit(self, batch: int, slot: int = 0) -> None:
        """Queue H2D, inference and D2H of rows ``[:batch]`` of ``slot`` on its stream."""
        start = now_ms()
        with self._lock:
            self._require_active()
            self.check_batch(batch)
            self.check_slot(slot)
            state = self._slots[slot]
            if state.pending is not None:
                raise InputError("slot {} was submitted twice without a fetch in between".format(slot))
            run_batch = self.contract.static_batch or int(batch)
            stream = state.stream
            assert stream is not None
            events = state.events
            copies = self.data_transfers and not self.zero_copy
            with self._ctx.activate():
                events["start"].record(stream)
                if copies:
                    for name in self._inputs:
                        state.device[name].upload(state.host[name].array[:batch], stream)  # type: ignore[index]
                events["h2d_done"].record(stream)
                # one execution context: its scratch memory allows one inference at a time
                if self._last_compute is not None and self._last_compute is not events["compute_done"]:
                    stream.wait(self._last_compute)
                events["compute_start"].record(stream)
                self._enqueue(slot, run_batch)
                events["compute_done"].record(stream)
                self._last_compute = events["compute_done"]
                if copies:
                    name = self.contract.output
                    state.device[name].download(state.host[name].array[:batch], stream)  # type: ignore[index]
                events["end"].record(stream)
            state.pending = int(batch)
            state.enqueue_ms = now_ms() - start

    def _enqueue(self, slot: int, batch: int) -> None:
        """Inference of ``batch`` rows on ``slot``'s stream: a graph replay or ``execute_async_v3``."""
        state = self._slots[slot]
        stream = state.stream
        assert stream is not None
        graph = self._graphs.get((slot, batch)) if self.cuda_graph else None
        if graph is not None:
            graph.launch(stream)
            return
        if self._context_batch != batch:
            self._set_batch(batch)
        if self._bound_slot != slot:
            for name, address in state.addresses.items():
                trtlib.call(self._logger, "set_tensor_address('{}')".format(name), self._context.set_tensor_address,
                            name, address)
            self._bound_slot = slot
        self._execute(stream)
        if self.cuda_graph:
            # captured after one normal run at this shape, as TensorRT requires
            try:
                self._graphs[(slot, batch)] = self._ctx.capture_graph(stream, lambda: self._execute(stream))
            except cudalib.GraphCaptureError as exc:
                self.cuda_graph = False
                warnings.warn(
                    "CUDA graph capture failed ({}); running without CUDA graphs".format(exc), RuntimeWarning, stacklevel=4
                )

    def _execute(self, stream: cudalib.CudaStream) -> None:
        trtlib.call(self._logger, "execute_async_v3 on {}".format(self.model_path), self._context.execute_async_v3,
                    stream.handle)

    def fetch(self, slot: int = 0, copy: bool = True) -> np.ndarray:
        """Wait for ``slot``'s batch (one event wait); return its raw output ``[batch, ...]``."""
        self._require_active()
        self.check_slot(slot)
        state = self._slots[slot]
        batch = state.pending
        if batch is None:
            raise InputError("nothing was submitted on slot {}".format(slot))
        events = state.events
        with self._ctx.activate():
            events["end"].synchronize()
            timing = Timing(
                enqueue_ms=state.enqueue_ms,
                h2d_ms=events["h2d_done"].ms_since(events["start"]),
                compute_ms=events["compute_done"].ms_since(events["compute_start"]),
                d2h_ms=events["end"].ms_since(events["compute_done"]),
            )
        state.pending = None
        self.last_timing = timing
        rows = state.host[self.contract.output].array[:batch]  # type: ignore[index]
        return rows.copy() if copy else rows

    def __repr__(self) -> str:
        return "TensorRTRunner({!r}, batch {}..{}, {} I/O{}{}{})".format(
            self.model_path,
            self.batch_range[0],
            self.batch_range[1],
            self.contract.input_dtype,
            ", cuda_graph" if self.cuda_graph else "",
            ", zero_copy" if self.zero_copy else "",
            ", spin_wait" if self.spin_wait else "",
        )

