"""The Python inference API: ``load(path)`` -> :class:`Classifier` -> ``predict(golden, sample)``.

::

    import changenet_trt
    with changenet_trt.load("model.onnx", cutoff=0.5) as clf:
        res = clf.predict(golden_paths, sample_paths)
        res.scores    # float32 [N]
        res.defects   # bool [N], score > cutoff
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from changenet_trt.contract import ModelContract, read_contract, score
from changenet_trt.data.preprocess import Normalization, get_normalization, prepare_batch
from changenet_trt.errors import InputError
from changenet_trt.runtime.base import Runner

BACKENDS = ("auto", "onnxruntime", "tensorrt", "triton")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

#: fill(golden_dst, sample_dst, start, stop) writes pairs [start, stop) into [n,C,H,W] buffers
FillFn = Callable[[np.ndarray, np.ndarray, int, int], None]


@dataclass
class Prediction:
    """Scores and decisions for N golden/sample pairs.

    ``scores``: float32 ``[N]`` (euclidean distance, or softmax probability of "defect");
    ``defects``: bool ``[N]``, ``scores > cutoff``; ``raw``: the model's output ``[N, ...]``;
    ``seconds``: wall time of the whole call.
    """

    scores: np.ndarray
    defects: np.ndarray
    cutoff: float
    raw: np.ndarray
    seconds: float

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def pairs_per_s(self) -> float:
        return len(self) / self.seconds if self.seconds > 0 else float("inf")


def backend_for(path: str, backend: str = "auto") -> str:
    """Which backend runs ``path``: by explicit choice, else by URL scheme or file suffix."""
    from changenet_trt.runtime.triton import is_triton_url

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


def make_runner(
    path: str,
    backend: str = "auto",
    batch_size: Optional[int] = None,
    sample_input: Optional[str] = None,
    golden_input: Optional[str] = None,
    output: Optional[str] = None,
    output_kind: Optional[str] = None,
    **options: Any
) -> Runner:
    """Create (not activate) the runner for ``path``. ``options`` go to the backend.

    ``path``: a model file, or Triton URLs (``grpc://HOST:8001/NAME``, ``http://HOST:8000/NAME``;
    several as a list or comma-separated spread the batches over the servers).
    """
    if isinstance(path, (list, tuple)):
        path = ",".join(os.fspath(p) for p in path)
    path = os.fspath(path)
    which = backend_for(path, backend)
    if which == "triton":
        from changenet_trt.runtime.triton import TritonRunner

        allowed = {"shared_memory", "timeout_s", "slots"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InputError("unknown option for the triton backend", expected=sorted(allowed), found=unknown)
        return TritonRunner([u.strip() for u in path.split(",") if u.strip()], max_batch=batch_size,
                            sample_input=sample_input, golden_input=golden_input, output=output,
                            output_kind=output_kind, **options)
    if which == "onnxruntime":
        from changenet_trt.runtime.onnxruntime import OnnxRuntimeRunner

        contract = read_contract(
            path, sample_input=sample_input, golden_input=golden_input, output=output, output_kind=output_kind
        )
        allowed = {"providers", "threads"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InputError("unknown option for the onnxruntime backend", expected=sorted(allowed), found=unknown)
        return OnnxRuntimeRunner(path, contract=contract, max_batch=batch_size, **options)
    from changenet_trt.runtime.tensorrt import TensorRTRunner

    allowed = {"cuda_graph", "spin_wait", "zero_copy", "data_transfers", "device"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError("unknown option for the tensorrt backend", expected=sorted(allowed), found=unknown)
    return TensorRTRunner(
        path,
        max_batch=batch_size,
        sample_input=sample_input,
        golden_input=golden_input,
        output=output,
        output_kind=output_kind,
        **options
    )


class Classifier:
    """A loaded ChangeNet model with a cutoff: golden/sample pairs in, scores and decisions out.

    Use :func:`load` to make one. The runner is active while the classifier is open; close it
    (or use ``with``) to free the model and its buffers.
    """

    def __init__(
        self, runner: Runner, cutoff: Optional[float] = None, normalization: Union[str, Normalization, None] = None
    ) -> None:
        self.runner = runner
        self.contract: ModelContract = runner.contract
        self.cutoff = float(self.contract.cutoff if cutoff is None else cutoff)
        if not np.isfinite(self.cutoff):
            raise InputError("cutoff must be a finite number", found=cutoff)
        self.normalization = get_normalization(
            normalization if normalization is not None else (self.contract.preprocess or "tao")
        )
        self.runner.activate()

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
    def predict(self, golden: Any, sample: Any) -> Prediction:
        """Score N golden/sample pairs.

        ``golden`` and ``sample`` are each either a float array ``[N, 3, H, W]`` already
        normalised (float32/float16/float64), or a sequence of N images: file paths or uint8
        RGB arrays ``[H, W, 3]`` (preprocessed with the classifier's normalisation and resized
        to H x W). Both must hold the same N >= 1.
        """
        start = time.perf_counter()
        golden_fill, n_golden = self._source(golden, "golden")
        sample_fill, n_sample = self._source(sample, "sample")
        if n_golden != n_sample:
            raise InputError("golden and sample must hold the same number of images", found="{} golden, {} sample".format(n_golden, n_sample))

        def fill(golden_dst: np.ndarray, sample_dst: np.ndarray, lo: int, hi: int) -> None:
            golden_fill(golden_dst, lo, hi)
            sample_fill(sample_dst, lo, hi)

        raw = self.run_pipeline(n_golden, fill)
        scores = score(raw, self.contract.output_kind)
        return Prediction(scores, scores > self.cutoff, self.cutoff, raw, time.perf_counter() - start)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Defect decisions for scores: ``scores > cutoff`` (strictly greater)."""
        return np.asarray(scores) > self.cutoff

    def run_pipeline(self, count: int, fill: FillFn, on_batch: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Run ``count`` pairs through the runner in batches; return the raw output ``[count, ...]``.

        ``fill(golden_dst, sample_dst, lo, hi)`` writes pairs ``[lo, hi)`` into the runner's
        input buffers (views ``[hi-lo, C, H, W]``). Batch k+1 is filled on a helper thread
        while batch k is inferred (two buffer slots), so preprocessing overlaps inference.
        ``on_batch(pairs_done)`` is called after each batch (for progress).
        """
        if count < 1:
            raise InputError("nothing to predict", expected="at least one golden/sample pair", found=count)
        runner = self.runner
        golden_name, sample_name = self.contract.golden_input, self.contract.sample_input
        step = runner.preferred_batch
        chunks = [(lo, min(lo + step, count)) for lo in range(0, count, step)]
        outputs = []

        def fill_slot(index: int) -> None:
            lo, hi = chunks[index]
            buffers = runner.input_buffers(hi - lo, slot=index % runner.num_slots)
            fill(buffers[golden_name], buffers[sample_name], lo, hi)

        in_flight: List[int] = []  # slots submitted and not yet fetched

        def submit(index: int) -> None:
            slot = index % runner.num_slots
            runner.submit(chunks[index][1] - chunks[index][0], slot=slot)
            in_flight.append(slot)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="changenet-fill") as pool:
            try:
                fill_slot(0)
                submit(0)
                for index in range(len(chunks)):
                    nxt = index + 1
                    if nxt < len(chunks):
                        # Fill batch k+1 (the slot fetched one round ago) while batch k runs,
                        # then queue it behind k so the device never waits for the host.
                        pool.submit(fill_slot, nxt).result()
                        submit(nxt)
                    slot = index % runner.num_slots
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
        return np.concatenate(outputs, axis=0)

    def _source(self, images: Any, role: str) -> "tuple":
        """Return ``(fill(dst, lo, hi), N)`` for an array or a sequence of images."""
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
            if not np.isfinite(array).all():
                bad = int(np.flatnonzero(~np.isfinite(array).reshape(array.shape[0], -1).all(axis=1))[0])
                raise InputError("{} array holds NaN or Inf".format(role), found="first in pair {}".format(bad))

            def copy_rows(dst: np.ndarray, lo: int, hi: int) -> None:
                np.copyto(dst, array[lo:hi], casting="same_kind")

            return copy_rows, int(array.shape[0])

        if isinstance(images, np.ndarray):  # uint8: [N,H,W,3] images or one [H,W,3]
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
                if item.dtype not in (np.uint8, np.uint16) or item.ndim not in (2, 3):
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

        return prepare_rows, len(items)


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
    **options: Any
) -> Classifier:
    """Load a ChangeNet model (``.onnx``; ``.engine`` with TensorRT) as a :class:`Classifier`.

    ``cutoff``: a pair is a defect when ``score > cutoff`` (default: the model's recommended
    cutoff from its metadata, else 0.5). ``backend``: ``auto`` (by suffix), ``onnxruntime`` or
    ``tensorrt``. ``batch_size``: pairs per batch for dynamic-batch models (default 16; a
    static-batch model always runs at its own batch). ``normalization``: ``tao`` (default),
    ``deepstream`` or a :class:`~changenet_trt.data.preprocess.Normalization`. Tensor names and the
    output kind override what is read from the model. ``options`` go to the backend
    (onnxruntime: ``providers=["cpu"|"cuda"|"tensorrt"]``, ``threads=N``; tensorrt:
    ``cuda_graph``, ``spin_wait``, ``zero_copy``, ``data_transfers``, ``device=N``; triton, for
    ``grpc://HOST:8001/NAME`` / ``http://HOST:8000/NAME`` URLs: ``shared_memory``, ``timeout_s``,
    ``slots``).
    """
    runner = make_runner(
        path,
        backend=backend,
        batch_size=batch_size,
        sample_input=sample_input,
        golden_input=golden_input,
        output=output,
        output_kind=output_kind,
        **options
    )
    return Classifier(runner, cutoff=cutoff, normalization=normalization)
