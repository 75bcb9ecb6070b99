"""The one small interface every inference backend implements.

A runner owns its input buffers (plain arrays for ONNX Runtime, pinned host memory for
TensorRT), so preprocessing writes straight into them and nothing is copied twice. It has
``num_slots`` independent buffer sets so the caller can fill slot k+1 while slot k runs.

Every runner is made the same way, ``Runner(path, names, max_batch, **options)``: ``names`` the
user's :class:`~changenet_trt.contract.ContractNames`, and ``options`` the backend's own, which the
class lists in ``OPTIONS`` (:func:`changenet_trt.api.make_runner` checks them against it). Making a
runner reads files at most; the model is loaded, the buffers allocated and a server contacted on
``activate``.

Life cycle (as Polygraphy's runners)::

    with runner:                                   # activate() ... deactivate()
        bufs = runner.input_buffers(n, slot=0)     # {name: writable [n,C,H,W] array}
        bufs[contract.golden_input][...] = golden  # or preprocess into it
        runner.submit(n, slot=0)                   # start inference on rows [:n]
        raw = runner.fetch(slot=0)                 # wait; raw output [n, ...]
"""

import abc
import os
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

import numpy as np

from changenet_trt.contract import ModelContract
from changenet_trt.errors import ChangeNetError, InputError


@dataclass
class Timing:
    """Times of the last completed batch, in milliseconds.

    ``enqueue_ms`` is host time spent in ``submit``; ``h2d_ms``/``compute_ms``/``d2h_ms`` come
    from CUDA events on a GPU and from host clocks on CPU (where there is no transfer: 0).
    """

    enqueue_ms: float = 0.0
    h2d_ms: float = 0.0
    compute_ms: float = 0.0
    d2h_ms: float = 0.0

    @property
    def latency_ms(self) -> float:
        return self.h2d_ms + self.compute_ms + self.d2h_ms


class Runner(abc.ABC):
    """Base class: activate / infer / deactivate, usable as a context manager."""

    #: short name used in reports ("onnxruntime", "tensorrt")
    name = "runner"
    #: number of independent input/output buffer sets
    num_slots = 2
    #: the keyword options the constructor takes after ``path, names, max_batch``
    OPTIONS: FrozenSet[str] = frozenset()

    def __init__(self, contract: Optional[ModelContract]) -> None:
        self._contract = contract
        self.is_active = False
        self.last_timing = Timing()

    @property
    def contract(self) -> ModelContract:
        """The model's contract; a runner that reads it from a server knows it once active."""
        if self._contract is None:
            raise ChangeNetError("the {} runner reads its model's contract when it activates: use it as "
                                 "`with runner:` or call activate() first".format(self.name))
        return self._contract

    # -- life cycle -------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc_info: object) -> None:
        self.deactivate()

    @abc.abstractmethod
    def _activate(self) -> None:
        """Load the model and allocate every buffer (nothing is allocated per batch)."""

    @abc.abstractmethod
    def _deactivate(self) -> None:
        """Free everything ``_activate`` allocated."""

    # -- batch limits -----------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def batch_range(self) -> Tuple[int, int]:
        """``(min, max)`` batch this runner accepts in ``input_buffers``/``submit``."""

    @property
    def preferred_batch(self) -> int:
        """The batch ``predict`` cuts inputs into (a static model's own batch, else the max)."""
        return self.batch_range[1]

    def check_batch(self, batch: int) -> None:
        low, high = self.batch_range
        if not isinstance(batch, (int, np.integer)) or not low <= batch <= high:
            raise InputError(
                "batch size outside what the {} runner accepts".format(self.name),
                expected="{} <= batch <= {}".format(low, high),
                found=batch,
            )

    def check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise InputError("no such buffer slot", expected="0..{}".format(self.num_slots - 1), found=slot)

    def _require_active(self) -> None:
        if not self.is_active:
            raise ChangeNetError("the {} runner is not active: use it as `with runner:` or call activate()".format(self.name))

    # -- inference --------------------------------------------------------------------------
    @abc.abstractmethod
    def input_buffers(self, batch: int, slot: int = 0) -> Dict[str, np.ndarray]:
        """Writable views ``{input name: [batch, C, H, W]}`` of the runner's own buffers."""

    @abc.abstractmethod
    def submit(self, batch: int, slot: int = 0) -> None:
        """Start inference on rows ``[:batch]`` of ``slot``'s input buffers."""

    @abc.abstractmethod
    def fetch(self, slot: int = 0, copy: bool = True) -> np.ndarray:
        """Wait for ``slot``'s batch and return its raw output ``[batch, ...]``.

        With ``copy=False`` the array is a view of the runner's buffer, valid until the slot
        is submitted again.
        """

    def run_direct(self, feed: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
        """Run the caller's own arrays ``{input name: [n, C, H, W]}`` in place, without copying
        them into the runner's buffers, and return the raw output ``[n, ...]``; ``None`` when
        this runner cannot (then use the buffers). Where it runs, it is safe to call from
        several threads at once and uses no buffer slot. The default cannot."""
        return None

    def run(self, batch: int, slot: int = 0, copy: bool = True) -> np.ndarray:
        """``submit`` then ``fetch``: one synchronous batch."""
        self.submit(batch, slot)
        return self.fetch(slot, copy=copy)

    def infer(self, feed: Dict[str, np.ndarray], copy: bool = True) -> Dict[str, np.ndarray]:
        """ONNX Runtime-style call: ``{input name: array}`` -> ``{output name: raw output}``.

        Arrays are copied (``np.copyto``) into the runner's buffers; the batch is their first
        dimension.
        """
        self._require_active()
        names = set(self.contract.input_names())
        missing = sorted(names - set(feed))
        unknown = sorted(set(feed) - names)
        if missing or unknown:
            raise InputError(
                "feed does not match the model's inputs",
                expected=sorted(names),
                found=sorted(feed),
            )
        batch: Optional[int] = None
        for name, array in feed.items():
            array = np.asarray(array)
            want = self.contract.input_shape
            if array.ndim != 4 or tuple(array.shape[1:]) != tuple(want):
                raise InputError(
                    "input '{}' has the wrong shape".format(name),
                    expected="[N,{},{},{}]".format(*want),
                    found=list(array.shape),
                )
            if batch is None:
                batch = array.shape[0]
            elif array.shape[0] != batch:
                raise InputError("inputs have different batch sizes", found={k: v.shape[0] for k, v in feed.items()})
        assert batch is not None
        self.check_batch(batch)
        buffers = self.input_buffers(batch)
        for name, array in feed.items():
            np.copyto(buffers[name], array, casting="same_kind")
        return {self.contract.output: self.run(batch, copy=copy)}


class SlotFutures:
    """The batches a runner runs on worker threads: at most one in flight per slot, with the
    host time each submission took (``Timing.enqueue_ms``)."""

    def __init__(self, num_slots: int) -> None:
        self._pending: List[Optional[Future]] = [None] * num_slots
        self._enqueue_ms = [0.0] * num_slots

    def submit(self, worker: Executor, run: Callable[[int, int], Tuple[np.ndarray, Timing]], batch: int,
               slot: int) -> None:
        """Queue ``run(batch, slot)`` on ``worker``; refused while ``slot`` has a batch not fetched."""
        if self._pending[slot] is not None:
            raise InputError("slot {} was submitted twice without a fetch in between".format(slot))
        start = now_ms()
        self._pending[slot] = worker.submit(run, batch, slot)
        self._enqueue_ms[slot] = now_ms() - start

    def result(self, slot: int) -> Tuple[np.ndarray, Timing]:
        """Wait for ``slot``'s batch: ``run``'s output and its timing, with ``enqueue_ms`` filled in."""
        pending = self._pending[slot]
        if pending is None:
            raise InputError("nothing was submitted on slot {}".format(slot))
        self._pending[slot] = None
        result, timing = pending.result()
        timing.enqueue_ms = self._enqueue_ms[slot]
        return result, timing


def available_memory() -> Optional[int]:
    """Bytes of memory the system can still give (Linux ``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_buffer_memory(nbytes: int, batch: int, what: str) -> None:
    """Refuse, before allocating, buffers of ``nbytes`` for ``batch`` pairs that this machine cannot hold.

    ``nbytes`` counts the runner's own buffers only (the model's activations come on top), so
    this refuses only the sizes that cannot work; it does nothing where free memory is unknown.
    """
    free = available_memory()
    if free is not None and nbytes > free:
        raise InputError(
            "batch size {} needs {:.1f} GiB of {} buffers; this machine has {:.1f} GiB available".format(
                batch, nbytes / 2.0 ** 30, what, free / 2.0 ** 30),
            expected="a batch size whose buffers fit in memory (TAO's default is 16)",
            found=batch,
        )


def check_batch_size(batch_size: object) -> Optional[int]:
    """``None`` (the runner's default) or a positive integer; anything else is refused."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError("batch_size must be a positive integer", expected="1, 2, ... (default 16)",
                         found=repr(batch_size))
    return int(batch_size)


def now_ms() -> float:
    """Monotonic host clock in milliseconds."""
    return time.perf_counter() * 1000.0
