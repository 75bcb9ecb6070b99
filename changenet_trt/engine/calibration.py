"""INT8 calibration: an entropy calibrator fed by the data-set pipeline, and its cache.

TensorRT's post-training INT8 needs activation ranges; :func:`make_calibrator` returns a
``trt.IInt8EntropyCalibrator2`` that feeds real golden/sample pairs (decoded and normalised
exactly as at inference, by :class:`~changenet_trt.data.dataset.PairLoader`) through device
buffers of :mod:`changenet_trt.gpu.cuda`.

The calibration cache (``calibration/<model>.cache``) is reused when present. A small JSON
header next to it (``.cache.json``) records the ONNX sha256, the preprocessing and the input
shape it was made with; a cache made for another model or another preprocessing is refused
with the reason (delete it, or pass another ``--calib-cache``).
"""

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from changenet_trt.data.dataset import PairLoader, load_dataset
from changenet_trt.data.preprocess import PRESETS, get_normalization
from changenet_trt.defaults import CALIBRATION_DIR
from changenet_trt.errors import BuildError, InputError
from changenet_trt.files import PathLike, atomic_write
from changenet_trt.gpu.cuda import primary_context
from changenet_trt.gpu.trt import subclass

HEADER_SUFFIX = ".json"
DEFAULT_CALIB_BATCHES = 32

Batch = Tuple[np.ndarray, np.ndarray]  # (golden, sample), each [n, C, H, W]


def header_path(cache_path: PathLike) -> str:
    return os.fspath(cache_path) + HEADER_SUFFIX


def default_cache_path(onnx_path: PathLike, onnx_sha256: str, directory: str = CALIBRATION_DIR) -> str:
    """``calibration/<model stem>-<sha256[:8]>.cache``."""
    stem = os.path.splitext(os.path.basename(os.fspath(onnx_path)))[0]
    return os.path.join(directory, "{}-{}.cache".format(stem, onnx_sha256[:8]))


def preprocess_description(preset: Optional[str], layout: Any = None) -> Dict[str, Any]:
    """What "the same preprocessing" means for a cache: normalisation values and light layout."""
    norm = get_normalization(preset)
    name = preset if isinstance(preset, str) else next((k for k, v in PRESETS.items() if v == norm), "custom")
    desc: Dict[str, Any] = {"preset": name or "tao", "mean": list(norm.mean), "std": list(norm.std)}
    if layout is not None:
        desc["layout"] = layout.describe()
    return desc


@dataclass
class CacheCheck:
    """``usable``: reuse the cache; ``reason``: why not (None when there is no cache)."""

    exists: bool
    usable: bool
    reason: Optional[str] = None


def check_cache(cache_path: PathLike, onnx_sha256: str, preprocess: Dict[str, Any],
                input_shape: Sequence[int]) -> CacheCheck:
    """Can the calibration cache at ``cache_path`` be reused for this model and preprocessing?

    Raises BuildError (with what differs) when it exists but was made for another ONNX model,
    preprocessing or input shape, or has no readable header.
    """
    path = os.fspath(cache_path)
    if not os.path.isfile(path):
        return CacheCheck(exists=False, usable=False)
    head = header_path(path)
    try:
        with open(head) as handle:
            header = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BuildError(
            "calibration cache {} has no readable header, so it cannot be matched to this model".format(path),
            expected="{} written with the cache".format(head),
            found=str(exc),
        ) from None
    if header.get("onnx_sha256") != onnx_sha256:
        raise BuildError(
            "calibration cache {} was made for another ONNX model; delete it or pass another --calib-cache".format(path),
            expected="onnx sha256 {}...".format(onnx_sha256[:12]),
            found="{}...".format(str(header.get("onnx_sha256"))[:12]),
        )
    made_with = header.get("preprocess") or {}
    # a build that reuses a cache without data has no light layout to compare: skip that key
    if {k: made_with.get(k) for k in preprocess} != preprocess:
        raise BuildError(
            "calibration cache {} was made with other preprocessing; delete it or pass another --calib-cache".format(path),
            expected=json.dumps(preprocess, sort_keys=True),
            found=json.dumps(made_with, sort_keys=True),
        )
    if list(header.get("input_shape", [])) != [int(d) for d in input_shape]:
        raise BuildError(
            "calibration cache {} was made for another input shape".format(path),
            expected=list(input_shape),
            found=header.get("input_shape"),
        )
    return CacheCheck(exists=True, usable=True)


def write_cache(cache_path: PathLike, data: bytes, header: Dict[str, Any]) -> None:
    """Write the cache bytes and their JSON header (each atomically)."""
    atomic_write(cache_path, bytes(data))
    atomic_write(header_path(cache_path), json.dumps(header, indent=2, sort_keys=True) + "\n")


# -- batch sources ---------------------------------------------------------------------------------
def array_batches(golden: np.ndarray, sample: np.ndarray, batch_size: int,
                  max_batches: Optional[int] = None) -> Iterator[Batch]:
    """Full batches of ``batch_size`` rows from already preprocessed ``[N, C, H, W]`` arrays."""
    golden = np.asarray(golden)
    sample = np.asarray(sample)
    if golden.shape != sample.shape or golden.ndim != 4:
        raise InputError("calibration arrays must be two [N,C,H,W] arrays of the same shape",
                         found="golden {}, sample {}".format(list(golden.shape), list(sample.shape)))
    count = len(golden) // batch_size
    if max_batches is not None:
        count = min(count, max_batches)
    for i in range(count):
        lo = i * batch_size
        yield golden[lo: lo + batch_size], sample[lo: lo + batch_size]


def dataset_batches(
    csv_path: PathLike,
    input_shape: Sequence[int],
    batch_size: int,
    max_batches: Optional[int] = DEFAULT_CALIB_BATCHES,
    images_dir: Optional[PathLike] = None,
    layout: Any = None,
    normalization: Any = None,
    workers: Optional[int] = None,
) -> Tuple[int, Iterator[Batch]]:
    """``(number of batches, iterator)`` of calibration batches read from a TAO CSV.

    Pairs are decoded and normalised by the same :class:`~changenet_trt.data.dataset.PairLoader`
    as inference uses. Only full batches are used; PASS and defect pairs are taken in CSV
    order (calibration needs the activation ranges of both).
    """
    data = load_dataset(csv_path, images_dir=images_dir, layout=layout)
    count = len(data.pairs) // batch_size
    if max_batches is not None:
        count = min(count, max_batches)
    if count == 0:
        raise BuildError(
            "not enough pairs in {} for one calibration batch".format(os.fspath(csv_path)),
            expected="at least {} usable pairs (the calibration batch)".format(batch_size),
            found="{} usable pairs".format(len(data.pairs)),
        )
    shape = (batch_size,) + tuple(int(d) for d in input_shape)

    def generate() -> Iterator[Batch]:
        loader = PairLoader(data.pairs, data.layout, tuple(input_shape), normalization=normalization, workers=workers)
        try:
            golden = np.empty(shape, dtype=np.float32)
            sample = np.empty(shape, dtype=np.float32)
            for i in range(count):
                loader.fill(golden, sample, i * batch_size, (i + 1) * batch_size)
                yield golden, sample
        finally:
            loader.close()

    return count, generate()


# -- the TensorRT calibrator ---------------------------------------------------------------------------
def make_calibrator(
    trt: Any,
    batches: Iterator[Batch],
    golden_input: str,
    sample_input: str,
    batch_shape: Sequence[int],
    cache_path: PathLike,
    cache_header: Dict[str, Any],
    use_cache: bool = True,
    dtype: Any = np.float32,
    context: Any = None,
    on_batch: Optional[Callable[[int], None]] = None,
) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` feeding ``batches`` (golden, sample) of ``batch_shape``.

    Device memory comes from :mod:`changenet_trt.gpu.cuda` (``context``: a CudaContext, default
    the primary context of GPU 0). Call ``close()`` after the build; ``error`` holds an
    exception raised while producing a batch (TensorRT itself only prints those).
    ``on_batch(batches_fed)`` is called after each batch handed to TensorRT (for progress).
    """
    cls = subclass(trt, _calibrator_class)
    if context is None:
        context = primary_context()
    return cls(batches, golden_input, sample_input, tuple(int(d) for d in batch_shape), os.fspath(cache_path),
               cache_header, use_cache, np.dtype(dtype), context, on_batch)


def _calibrator_class(trt: Any) -> type:
    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        """Entropy calibration (TensorRT's recommended algorithm for CNNs) on real pairs."""

        def __init__(self, batches: Iterator[Batch], golden_input: str, sample_input: str,
                     batch_shape: Tuple[int, ...], cache_path: str, cache_header: Dict[str, Any],
                     use_cache: bool, dtype: np.dtype, context: Any,
                     on_batch: Optional[Callable[[int], None]] = None) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.names = {"golden": golden_input, "sample": sample_input}
            self.batch_shape = batch_shape
            self.cache_path = cache_path
            self.cache_header = cache_header
            self.use_cache = use_cache
            self.context = context
            self.on_batch = on_batch
            self.batches_fed = 0
            self.cache_written = False
            self.error: Optional[BaseException] = None
            self._stream = context.stream()
            self._host = {role: context.pinned(batch_shape, dtype) for role in self.names}
            nbytes = self._host["golden"].nbytes
            self._device = {role: context.device_buffer(nbytes) for role in self.names}

        def get_batch_size(self) -> int:
            return int(self.batch_shape[0])

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            if self.error is not None:
                return None
            try:
                golden, sample = next(self.batches)
            except StopIteration:
                return None
            except BaseException as exc:  # a data-set error: keep it, TensorRT would only print it
                self.error = exc
                return None
            with self.context.activate():
                for role, array in (("golden", golden), ("sample", sample)):
                    host = self._host[role].array
                    np.copyto(host, array, casting="same_kind")
                    self._device[role].upload(host, self._stream)
                self._stream.synchronize()
            by_name = {self.names[role]: self._device[role].address for role in self.names}
            missing = [n for n in names if n not in by_name]
            if missing:
                self.error = BuildError("TensorRT asked for calibration data of unknown inputs",
                                        expected=", ".join(sorted(by_name)), found=", ".join(missing))
                return None
            self.batches_fed += 1
            if self.on_batch is not None:
                self.on_batch(self.batches_fed)
            return [int(by_name[n]) for n in names]

        def read_calibration_cache(self) -> Optional[bytes]:
            if self.use_cache and os.path.isfile(self.cache_path):
                with open(self.cache_path, "rb") as handle:
                    return handle.read()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            header = dict(self.cache_header)
            header["batches"] = self.batches_fed
            header["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_cache(self.cache_path, bytes(memoryview(cache)), header)
            self.cache_written = True

        def close(self) -> None:
            for buf in list(self._device.values()) + list(self._host.values()):
                buf.free()
            self._device = {}
            self._host = {}
            self._stream.close()

    return EntropyCalibrator
