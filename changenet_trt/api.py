"""The Python inference API: ``load(path)`` -> :class:`Classifier` -> ``predict(golden, sample)``.

::

    import changenet_trt
    with changenet_trt.load("model.onnx", cutoff=0.5) as clf:
        res = clf.predict(golden_paths, sample_paths)
        res.scores    # float32 [N]
        res.defects   # bool [N], score > cutoff
"""

import copy
import logging
import numbers
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, Union

import numpy as np

from changenet_trt.contract import ContractNames, ModelContract, score
from changenet_trt.data.pairs import FillFn
from changenet_trt.data.preprocess import Normalization, get_normalization, prepare_batch
from changenet_trt.errors import EngineError, InputError, ModelContractError
from changenet_trt.runtime.base import Runner, check_batch_size
from changenet_trt.runtime.onnxruntime import OnnxRuntimeRunner
from changenet_trt.runtime.tensorrt import TensorRTRunner
from changenet_trt.runtime.triton import TritonRunner, is_triton_url

_log = logging.getLogger(__name__)
BACKENDS = ("auto", "onnxruntime", "tensorrt", "triton")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

#: fill(golden_dst, sample_dst, start, stop) writes pairs [start, stop) into [n,C,H,W] buffers


@dataclass
class Prediction:
    """Scores and decisions for N golden/sample pairs.

    ``scores``: float32 ``[N]`` (euclidean distance, or softmax probability of "defect");
    ``defects``: bool ``[N]``, ``scores > cutoff`` or invalid; ``raw``: the model's output
    ``[N, ...]``; ``seconds``: wall time of the whole call; ``invalid``: bool ``[N]``, pairs
    whose model output is NaN or Inf (never a pass: they are counted in ``defects`` too).
    """

    scores: np.ndarray
    defects: np.ndarray
    cutoff: float
    raw: np.ndarray
    seconds: float
    invalid: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.invalid is None:
            self.invalid = ~np.isfinite(self.scores)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def decisions(self) -> List[str]:
        """Per pair: ``"pass"``, ``"defect"`` (score > cutoff) or ``"invalid"`` (NaN/Inf output)."""
        assert self.invalid is not None
        return ["invalid" if bad else ("defect" if d else "pass") for bad, d in zip(self.invalid, self.defects)]

    @property
    def invalid_pairs(self) -> List[int]:
        """Indexes of the pairs whose output is NaN or Inf."""
        assert self.invalid is not None
        return [int(i) for i in np.flatnonzero(self.invalid)]

    @property
    def pairs_per_s(self) -> float:
        return len(self) / self.seconds if self.seconds > 0 else float("inf")


def backend_for(path: str, backend: str = "auto") -> str:
    """Which backend runs ``path``: by explicit choice, else by URL scheme or file suffix."""
    if backend not in BACKENDS:
        raise InputError("unknown backend", expected=" or ".join(BACKENDS), found=repr(backend))
    if backend != "auto":
        return backend
    if is_triton_url(path):
        return "triton"
    suffix = os.path.splitext(path)[1].lower()
    if suffix in ONNX_SUFFIXES:
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise InputError(
        "cannot tell the model format from the file name {}".format(path),
        expected="a name ending in {} or {}, or an explicit backend".format(
            "/".join(ONNX_SUFFIXES), "/".join(ENGINE_SUFFIXES)
        ),
        found=repr(suffix or "no suffix"),
    )


#: the runner class of each backend :func:`backend_for` names
RUNNERS: Dict[str, Type[Runner]] = {"onnxruntime": OnnxRuntimeRunner, "tensorrt": TensorRTRunner, "triton": TritonRunner}


def make_runner(
    path: str,
    backend: str = "auto",
    batch_size: Optional[int] = None,
    names: Optional[ContractNames] = None,
    **options: Any
) -> Runner:
    """Create (not activate) the runner for ``path``. ``names``: tensor-name and output-kind
    overrides; ``options`` go to the backend, which declares the ones it takes (``OPTIONS``).

    ``path``: a model file, or Triton URLs (``grpc://HOST:8001/NAME``, ``http://HOST:8000/NAME``;
    several as a list or comma-separated spread the batches over the servers).
    """
    if isinstance(path, (list, tuple)):
        path = ",".join(os.fspath(p) for p in path)
    path = os.fspath(path)
    which = backend_for(path, backend)
    batch_size = check_batch_size(batch_size)
    names = ContractNames.of(names)
    if which != "triton":
        # before the backend's import: a missing file is the thing to fix, not a missing TensorRT
        _check_model_file(path, which)
    cls = RUNNERS[which]
    unknown = sorted(set(options) - cls.OPTIONS)
    if unknown:
        raise InputError("unknown option for the {} backend".format(which), expected=sorted(cls.OPTIONS), found=unknown)
    target: Any = [u.strip() for u in path.split(",") if u.strip()] if which == "triton" else path
    return cls(target, names, batch_size, **options)  # type: ignore[call-arg]


def _check_model_file(path: str, backend: str) -> None:
    """Refuse a model path that is missing, a folder or empty, naming what the backend wanted."""
    if backend == "tensorrt":
        error, kind, what = EngineError, "engine", "a TensorRT engine (.engine/.plan)"
    else:
        error, kind, what = ModelContractError, "model", "an ONNX model (.onnx)"
    if os.path.isdir(path):
        raise error("{} path is a folder, not a file: {}".format(kind, path), expected=what)
    if not os.path.isfile(path):
        raise error("{} file not found: {}".format(kind, path), expected=what)
    if os.path.getsize(path) == 0:
        raise error("{} file is empty: {}".format(kind, path), expected=what, found="0 bytes")
    suffix = os.path.splitext(path)[1].lower()
    if backend == "tensorrt" and suffix in ONNX_SUFFIXES:
        raise error("{} is an ONNX model, not a TensorRT engine".format(path),
                    expected="an engine built from it (changenet-trt build), or the onnxruntime backend")
    if backend == "onnxruntime" and suffix in ENGINE_SUFFIXES:
        raise error("{} is a TensorRT engine (by its name), not an ONNX model".format(path),
                    expected="the ONNX model it was built from, or the tensorrt backend")


def _checked_cutoff(cutoff: Any, output_kind: str) -> float:
    """``cutoff`` as a float; refused when not a finite number (``True`` is not 1.0), a warning when no
    score can cross it."""
    if isinstance(cutoff, (bool, np.bool_)) or not isinstance(cutoff, (numbers.Real, np.number)):
        raise InputError("cutoff must be a number", expected="a finite float such as 0.5", found=repr(cutoff))
    value = float(cutoff)
    if not np.isfinite(value):
        raise InputError("cutoff must be a finite number", found=cutoff)
    if value < 0.0:
        _log.warning("cutoff %g is below every score (%s scores are >= 0): every pair is a defect",
                     value, output_kind)
    elif output_kind == "learnable" and value >= 1.0:
        _log.warning("cutoff %g is not below 1: learnable scores are probabilities in [0, 1], so no pair is "
                     "a defect (a cutoff in percent? 3%% is 0.03)", value)
    return value


class _SlotPool:
    """The runner's buffer slots, lent to one caller at a time (so concurrent callers never
    write into, submit or fetch each other's slots)."""

    def __init__(self, count: int) -> None:
        self._free = list(range(count))
        self._waiting = 0
        self._cond = threading.Condition()

    def acquire(self, most: int) -> List[int]:
        """Block until a slot is free; take up to ``most`` when nobody else is waiting."""
        with self._cond:
            self._waiting += 1
            try:
                while not self._free:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            take = most if self._waiting == 0 else 1
            slots, self._free = self._free[:take], self._free[take:]
            return slots

    def release(self, slots: Sequence[int]) -> None:
        with self._cond:
            self._free.extend(slots)
            self._cond.notify_all()


class Classifier:
    """A loaded ChangeNet model with a cutoff: golden/sample pairs in, scores and decisions out.

    Use :func:`load` to make one. The runner is active while the classifier is open; close it
    (or use ``with``) to free the model and its buffers.

    Thread safety: one classifier may be shared by any number of threads; each ``predict`` /
    ``run_pipeline`` call gets its own scores. The runner's buffer slots are lent to one call
    at a time, so two calls overlap (one preprocesses while the other infers; ONNX Runtime runs
    float32 arrays of concurrent calls at the same time) and further calls wait for a slot.
    ``close`` must not race with calls in flight.
    """

    def __init__(
        self, runner: Runner, cutoff: Optional[float] = None, normalization: Union[str, Normalization, None] = None
    ) -> None:
        self.runner = runner
        # active first: a runner of a served model knows its contract once it has asked the server
        runner.activate()
        try:
            self.contract: ModelContract = runner.contract
            self.cutoff = _checked_cutoff(self.contract.cutoff if cutoff is None else cutoff, self.contract.output_kind)
            self.normalization = get_normalization(
                normalization if normalization is not None else (self.contract.preprocess or "tao")
            )
        except BaseException:
            runner.deactivate()
            raise
        self._slots = _SlotPool(runner.num_slots)

    def with_cutoff(self, cutoff: float) -> "Classifier":
        """This classifier with another cutoff; ``self`` is left as it is.

        The copy shares the loaded model (and is as thread-safe): use it while ``self`` is
        open, and close only one of them.
        """
        other = copy.copy(self)
        other.cutoff = _checked_cutoff(cutoff, self.contract.output_kind)
        return other

    @property
    def batch_size(self) -> int:
        """Pairs per inference batch."""
        return self.runner.preferred_batch

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Classifier({} {}, {} output, batch {}, cutoff {})".format(
            self.runner.name,
            getattr(self.runner, "model_path", "?"),
            self.contract.output_kind,
            self.batch_size,
            self.cutoff,
        )

    # -- prediction -------------------------------------------------------------------------
    def predict(self, golden: Any, sample: Any, check_inputs: bool = False) -> Prediction:
        """Score N golden/sample pairs.

        ``golden`` and ``sample`` are each either a float array ``[N, 3, H, W]`` already
        normalised (float32/float16/float64), or a sequence of N images: file paths or uint8
        RGB arrays ``[H, W, 3]`` (preprocessed with the classifier's normalisation and resized
        to H x W). Both must hold the same N >= 1.

        Non-finite values: a pair whose model output is NaN or Inf is never a pass: it is
        marked ``invalid`` (and counted in ``defects``). When such a pair's input array holds
        NaN/Inf, the call raises InputError naming the pair instead. Arrays in the model's
        dtype are not scanned on the way in (that would cost a full pass over the inputs);
        the output is checked, which cannot see a NaN that the model itself hides (a ReLU, Max
        or Clip can turn NaN into a number). ``check_inputs=True`` scans every input array
        first. Arrays of a wider dtype (float64) are always scanned: values beyond the
        model's dtype range are refused like NaN/Inf.
        """
        start = time.perf_counter()
        golden_src = self._source(golden, "golden", check_inputs)
        sample_src = self._source(sample, "sample", check_inputs)
        count = golden_src.count
        if count != sample_src.count:
            raise InputError("golden and sample must hold the same number of images",
                             found="{} golden, {} sample".format(count, sample_src.count))

        def fill(golden_dst: np.ndarray, sample_dst: np.ndarray, lo: int, hi: int) -> None:
            golden_src.fill(golden_dst, lo, hi)
            sample_src.fill(sample_dst, lo, hi)

        raw = None
        if golden_src.array is not None and sample_src.array is not None:
            raw = self._run_arrays(golden_src.array, sample_src.array, fill)
        if raw is None:
            raw = self.run_pipeline(count, fill)
        bad = ~np.isfinite(raw.reshape(count, -1)).all(axis=1)
        if bad.any():
            for src in (golden_src, sample_src):
                if src.array is not None:
                    rows = np.flatnonzero(bad)
                    _refuse_rows(src.array[rows], src.role, rows, None)
        scores = score(raw, self.contract.output_kind)
        invalid = bad | ~np.isfinite(scores)
        return Prediction(scores, (scores > self.cutoff) | invalid, self.cutoff, raw,
                          time.perf_counter() - start, invalid)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Defect decisions for scores: ``scores > cutoff`` (strictly greater); NaN/Inf is never a pass."""
        scores = np.asarray(scores)
        return (scores > self.cutoff) | ~np.isfinite(scores)

    def _run_arrays(self, golden: np.ndarray, sample: np.ndarray, fill: FillFn) -> Optional[np.ndarray]:
        """Feed the caller's arrays to the runner in place, batch by batch (None: it cannot).

        A batch the runner cannot take in place (a static model's short last batch, which
        needs padding) goes through the buffered pipeline.
        """
        runner = self.runner
        count, step = golden.shape[0], runner.preferred_batch
        names = (self.contract.golden_input, self.contract.sample_input)
        outputs = []
        for lo in range(0, count, step):
            hi = min(lo + step, count)
            out = runner.run_direct({names[0]: golden[lo:hi], names[1]: sample[lo:hi]})
            if out is None:
                if lo == 0:
                    return None

                def fill_tail(golden_dst: np.ndarray, sample_dst: np.ndarray, a: int, b: int, _lo: int = lo) -> None:
                    fill(golden_dst, sample_dst, _lo + a, _lo + b)

                out = self.run_pipeline(hi - lo, fill_tail)
            outputs.append(out)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)

    def run_pipeline(self, count: int, fill: FillFn, on_batch: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Run ``count`` pairs through the runner in batches; return the raw output ``[count, ...]``.

        ``fill(golden_dst, sample_dst, lo, hi)`` writes pairs ``[lo, hi)`` into the runner's
        input buffers (views ``[hi-lo, C, H, W]``). With d >= 2 buffer slots lent to this call
        (every free slot, up to one per batch, when no other call waits), up to d batches are in
        flight: batch k+d-1 is filled while batch k is inferred, so preprocessing overlaps
        inference, and a runner over several servers (one slot each) keeps them all busy; with
        one slot (other threads hold the rest), batches run one after the other.
        ``on_batch(pairs_done)`` is called after each batch (for progress). Thread-safe.
        """
        if count < 1:
            raise InputError("nothing to predict", expected="at least one golden/sample pair", found=count)
        runner = self.runner
        golden_name, sample_name = self.contract.golden_input, self.contract.sample_input
        step = runner.preferred_batch
        chunks = [(lo, min(lo + step, count)) for lo in range(0, count, step)]
        outputs = []
        slots = self._slots.acquire(min(len(chunks), runner.num_slots))
        depth = len(slots)
        in_flight: List[int] = []  # slots submitted and not yet fetched

        def fill_and_submit(index: int) -> None:
            lo, hi = chunks[index]
            slot = slots[index % len(slots)]
            buffers = runner.input_buffers(hi - lo, slot=slot)
            fill(buffers[golden_name], buffers[sample_name], lo, hi)
            runner.submit(hi - lo, slot=slot)
            in_flight.append(slot)

        try:
            for index in range(min(depth - 1, len(chunks))):
                fill_and_submit(index)
            for index in range(len(chunks)):
                ahead = index + depth - 1
                if ahead < len(chunks):
                    # fill batch k+d-1 (into the slot fetched one round ago; with one slot, batch
                    # k itself) while batches k..k+d-2 run, then queue it behind them so the
                    # device never waits for the host
                    fill_and_submit(ahead)
                slot = slots[index % depth]
                outputs.append(runner.fetch(slot=slot))
                in_flight.remove(slot)
                if on_batch is not None:
                    on_batch(chunks[index][1])
        except BaseException:
            # A bad image mid-run must not leave a batch queued: the runner stays usable.
            for slot in in_flight:
                try:
                    runner.fetch(slot=slot)
                except Exception:  # the original error is the one to report
                    pass
            raise
        finally:
            self._slots.release(slots)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)

    def _source(self, images: Any, role: str, check_inputs: bool = False) -> "_Source":
        """How to fill one input from an array or a sequence of images."""
        shape = self.contract.input_shape
        if isinstance(images, np.ndarray) and images.dtype != np.uint8:
            array = images
            if array.ndim != 4 or tuple(array.shape[1:]) != tuple(shape):
                raise InputError(
                    "{} array has the wrong shape".format(role),
                    expected="[N,{},{},{}] normalised float".format(*shape),
                    found="{} {}".format(list(array.shape), array.dtype),
                )
            if not np.issubdtype(array.dtype, np.floating):
                raise InputError(
                    "{} array has the wrong dtype".format(role),
                    expected="float32/float16/float64 (normalised) or uint8 images",
                    found=str(array.dtype),
                )
            if array.shape[0] == 0:
                raise InputError("{} array is empty".format(role), expected="N >= 1", found=list(array.shape))
            model_dtype = np.dtype(self.contract.input_dtype)
            wider = np.issubdtype(model_dtype, np.floating) and array.dtype.itemsize > model_dtype.itemsize
            if check_inputs or wider:
                # a wider dtype is converted: values beyond the model's range would become Inf
                _refuse_rows(array, role, None, float(np.finfo(model_dtype).max) if wider else None)

            def copy_rows(dst: np.ndarray, lo: int, hi: int) -> None:
                np.copyto(dst, array[lo:hi], casting="same_kind")

            return _Source(role, int(array.shape[0]), copy_rows, array)

        if isinstance(images, np.ndarray):  # uint8: [N,H,W,C] images or one [H,W,C]
            if images.ndim == 4 and images.shape[3] not in (1, 3, 4):
                raise InputError(
                    "{} is a uint8 array {}: uint8 arrays are read as images [N,H,W,3]".format(role, list(images.shape)),
                    expected="uint8 [N,H,W,3] RGB images, or a normalised float array [N,{},{},{}]".format(*shape),
                    found="{} channels last".format(images.shape[3]),
                )
            items: Sequence[Any] = list(images) if images.ndim == 4 else [images]
        elif isinstance(images, (str, os.PathLike)):
            items = [images]
        else:
            try:
                items = list(images)
            except TypeError:
                raise InputError(
                    "{} must be an array or a sequence of images".format(role),
                    expected="[N,3,H,W] float array, or a list of paths / uint8 [H,W,3] arrays",
                    found=type(images).__name__,
                ) from None
        if not items:
            raise InputError("{} holds no images".format(role), expected="N >= 1")
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray):
                if (item.dtype not in (np.uint8, np.uint16) or item.ndim not in (2, 3)
                        or (item.ndim == 3 and item.shape[2] not in (1, 3, 4))):
                    raise InputError(
                        "{} image {} is not an image array".format(role, i),
                        expected="uint8 [H,W,3] RGB or [H,W] grayscale",
                        found="{} {}".format(list(item.shape), item.dtype),
                    )
            elif not isinstance(item, (str, os.PathLike)):
                raise InputError(
                    "{} image {} has an unsupported type".format(role, i),
                    expected="a file path or a uint8 array",
                    found=type(item).__name__,
                )
        norm = self.normalization

        def prepare_rows(dst: np.ndarray, lo: int, hi: int) -> None:
            prepare_batch(items[lo:hi], dst, norm)

        return _Source(role, len(items), prepare_rows, None)


@dataclass
class _Source:
    """One input of a ``predict`` call: ``fill(dst, lo, hi)`` writes its rows ``[lo, hi)``;
    ``array`` is the caller's float array when it is one (it may be fed in place)."""

    role: str
    count: int
    fill: Callable[[np.ndarray, int, int], None]
    array: Optional[np.ndarray]


def _refuse_rows(array: np.ndarray, role: str, rows: Optional[np.ndarray], limit: Optional[float]) -> None:
    """Raise InputError naming the pairs of ``array`` ``[n, ...]`` holding NaN/Inf (or ``|x| > limit``).

    ``rows``: the pair numbers of ``array``'s rows (default ``0..n-1``).
    """
    flat = array.reshape(array.shape[0], -1)
    peak = np.abs(flat).max(axis=1)  # NaN propagates through max
    bad = ~np.isfinite(peak) if limit is None else ~(peak <= limit)
    if not bad.any():
        return
    pairs = np.flatnonzero(bad) if rows is None else np.asarray(rows)[bad]
    listed = ", ".join(str(int(p)) for p in pairs[:10]) + (" ..." if len(pairs) > 10 else "")
    what = "NaN or Inf" if limit is None else "NaN, Inf or values beyond the model's {} range (|x| > {:.6g})".format(
        "float16" if limit < 1e5 else "float32", limit)
    raise InputError("{} array holds {}".format(role, what),
                     found="{} {}".format("pair" if len(pairs) == 1 else "{} pairs:".format(len(pairs)), listed))


def load(
    path: Union[str, "os.PathLike[str]", Sequence[str]],
    cutoff: Optional[float] = None,
    backend: str = "auto",
    batch_size: Optional[int] = None,
    normalization: Union[str, Normalization, None] = None,
    sample_input: Optional[str] = None,
    golden_input: Optional[str] = None,
    output: Optional[str] = None,
    output_kind: Optional[str] = None,
    names: Optional[ContractNames] = None,
    **options: Any
) -> Classifier:
    """Load a ChangeNet model (``.onnx``; ``.engine`` with TensorRT) as a :class:`Classifier`.

    ``cutoff``: a pair is a defect when ``score > cutoff`` (default: the model's recommended
    cutoff from its metadata, else 0.5). ``backend``: ``auto`` (by suffix), ``onnxruntime`` or
    ``tensorrt``. ``batch_size``: pairs per batch for dynamic-batch models (default 16; a
    static-batch model always runs at its own batch). ``normalization``: ``tao`` (default),
    ``deepstream`` or a :class:`~changenet_trt.data.preprocess.Normalization`. Tensor names and the
    output kind (the four keywords, or ``names``, a :class:`~changenet_trt.contract.ContractNames`;
    a keyword wins) override what is read from the model. ``options`` go to the backend
    (onnxruntime: ``providers=["cpu"|"cuda"|"tensorrt"]``, ``threads=N``; tensorrt:
    ``cuda_graph``, ``spin_wait``, ``zero_copy``, ``data_transfers``, ``device=N``, ``lean_library=PATH``; triton, for
    ``grpc://HOST:8001/NAME`` / ``http://HOST:8000/NAME`` URLs: ``shared_memory``, ``timeout_s``,
    ``slots``).
    """
    names = ContractNames.of(names, sample_input=sample_input, golden_input=golden_input, output=output,
                             output_kind=output_kind)
    runner = make_runner(path, backend=backend, batch_size=batch_size, names=names, **options)
    return Classifier(runner, cutoff=cutoff, normalization=normalization)
