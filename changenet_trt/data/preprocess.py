"""Images -> normalised NCHW, written straight into a caller's buffer.

TAO (training and TAO Deploy) feeds RGB images scaled to [0, 1] and normalised with the
ImageNet mean/std; NVIDIA's DeepStream sample for the deployable model uses 0.5/0.5 instead,
so normalisation is a preset with an override.

A model input ``[3, H, W]`` may be made of several *tiles*: one image per LED light, each
resized to its tile and placed along H (``linear``, TAO's default: 4 x 128x128 -> 512x128) or
in a grid. Every tile is decoded, converted and normalised straight into its window of the
destination (a view of the runner's own input buffer, float32 or float16), one channel plane
at a time: nothing bigger than one decoded light is ever allocated. A model whose inputs are
uint8 (normalisation moved into the graph by ``engine.prepare.add_uint8_input``) gets the RGB
pixels themselves: the graph applies the same ``x * scale + offset`` in float32.

Numerically the result equals TAO Deploy's loader (RGB, float32 resize with bilinear
interpolation, ``(x / 255 - mean) / std``) to float32 rounding.
"""

import math
import os
import threading
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from changenet_trt.errors import InputError
from changenet_trt.threads import ForkSafePool

Image = Union[str, "os.PathLike[str]", np.ndarray]
#: where a tile goes in the model input: (top, left, height, width) in pixels
Box = Tuple[int, int, int, int]
CONCAT_TYPES = ("linear", "grid")


@dataclass(frozen=True)
class Normalization:
    """Per-channel (R, G, B) ``(x / 255 - mean) / std``."""

    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

    def __post_init__(self) -> None:
        try:
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
        except (TypeError, ValueError):
            mean, std = (), ()
        # an infinite std maps every pixel to 0 and a NaN mean poisons every score: refuse them up front
        if (len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std)
                or not all(v > 0 for v in std)):
            raise InputError("unusable normalisation",
                             expected="three finite means and three finite stds > 0 (of x / 255)",
                             found="mean {}, std {}".format(list(self.mean), list(self.std)))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def scale_offset(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(scale, offset)`` float32 ``[3,1,1]`` so that ``x * scale + offset`` normalises uint8 x."""
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(3, 1, 1)
        offset = (-mean / std).astype(np.float32).reshape(3, 1, 1)
        return scale, offset


PRESETS = {
    "tao": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "deepstream": Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def get_normalization(preset: Union[str, Normalization, None]) -> Normalization:
    """A preset name (``tao``, ``deepstream``), custom ``"m_r,m_g,m_b/s_r,s_g,s_b"`` text (see
    :func:`parse_normalization`; an engine's sidecar records it so), a :class:`Normalization`,
    or ``None`` (= tao)."""
    if preset is None:
        return PRESETS["tao"]
    if isinstance(preset, Normalization):
        return preset
    return parse_normalization(preset)


def parse_normalization(text: str) -> Normalization:
    """A preset name, or a custom ``"m_r,m_g,m_b/s_r,s_g,s_b"`` (means / stds of x / 255)."""
    text = text.strip()
    if text in PRESETS:
        return PRESETS[text]
    parts = text.split("/")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        mean = tuple(float(v) for v in parts[0].split(","))
        std = tuple(float(v) for v in parts[1].split(","))
    except ValueError:
        mean, std = (), ()
    if (len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std)
            or not all(s > 0 for s in std)):
        raise InputError(
            "cannot read the normalisation",
            expected="a preset (tao, deepstream) or three finite means / three finite stds > 0 like "
                     "0.5,0.5,0.5/0.25,0.25,0.25",
            found=repr(text),
        )
    return Normalization(mean, std)  # type: ignore[arg-type]


# -- decoding ----------------------------------------------------------------------------------
_JPEG_START = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_complete(data: bytes) -> Optional[Tuple[str, str]]:
    """``(fault, detail)`` when the bytes of a JPEG or PNG file are cut short or corrupt, else None.

    Decoders print such faults to stderr without the file's name (libjpeg's "Premature end of
    JPEG file", libpng's "IDAT: CRC error") and may still return a partly grey image, so they are
    found here first. JPEG: the main image's last scan (SOS, ``FF DA``) must be followed by the
    end-of-image marker ``FF D9`` (entropy-coded data never holds ``FF D9``; a thumbnail or an
    image appended after EOI keeps its own pair). PNG: every chunk must be whole, pass its
    CRC-32, and ``IEND`` must come.
    """
    if data.startswith(_JPEG_START):
        scan = data.rfind(b"\xff\xda")
        if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
            return "truncated JPEG", "no end-of-image marker FFD9 after the last scan ({} bytes)".format(len(data))
        return None
    if not data.startswith(_PNG_SIGNATURE):
        return None
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8]).decode("latin-1")
        end = pos + 12 + length
        if end > len(data):
            return "truncated PNG", "chunk {} ends at byte {}, the file at byte {}".format(kind, end, len(data))
        if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            return "corrupt PNG", "chunk {} at byte {} fails its CRC check".format(kind, pos)
        if kind == "IEND":
            return None
        pos = end
    return "truncated PNG", "no IEND chunk in {} bytes".format(len(data))


class _QuietOpenCV:
    """Silences OpenCV's own log (``[ WARN:0@...] global grfmt_png.cpp ...``) while any thread decodes.

    OpenCV's log level is process-wide: it is lowered when the first decode starts and restored
    when the last one ends, so another thread's OpenCV warnings in that window are not shown.
    A decode that fails raises an error naming the file instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = None  # type: Optional[int]

    @staticmethod
    def _logging() -> Any:
        return getattr(getattr(cv2, "utils", None), "logging", None)

    def __enter__(self) -> None:
        log = self._logging()
        if log is None:
            return
        with self._lock:
            if self._depth == 0:
                self._saved = log.getLogLevel()
                log.setLogLevel(log.LOG_LEVEL_SILENT)
            self._depth += 1

    def __exit__(self, *exc_info: object) -> None:
        log = self._logging()
        if log is None:
            return
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._saved is not None:
                log.setLogLevel(self._saved)


_QUIET_OPENCV = _QuietOpenCV()


def decode_image(path: Union[str, "os.PathLike[str]"]) -> np.ndarray:
    """Decode an image file as OpenCV stores it: uint8/uint16 ``[H,W]``, ``[H,W,3]`` BGR or ``[H,W,4]`` BGRA.

    Raises InputError naming the file when it is missing, empty, cut short (JPEG, PNG), corrupt
    (a PNG chunk failing its CRC) or not an image. The bytes are read here and decoded with
    ``cv2.imdecode`` while OpenCV's log is silenced, so no unattributed decoder line is printed
    for these faults (libjpeg still prints its own warnings about corrupt data inside a whole
    JPEG, which it decodes anyway).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError("image path is a folder, not an image file: {}".format(path),
                         expected="a PNG/JPEG/BMP/TIFF file")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise InputError("image file not found: {}".format(path)) from None
    except OSError as exc:
        raise InputError("cannot read image file {}".format(path), found=exc.strerror or str(exc)) from None
    if not data:
        raise InputError("cannot decode image {}".format(path), expected="a PNG/JPEG/BMP/TIFF file",
                         found="an empty file (0 bytes)")
    fault = check_complete(data)
    if fault is not None:
        raise InputError("cannot decode image {}: {}".format(path, fault[0]), expected="a whole image file", found=fault[1])
    try:
        with _QUIET_OPENCV:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        # e.g. a header declaring more pixels than OpenCV's CV_IO_MAX_IMAGE_PIXELS (2^30 by default)
        raise InputError("cannot decode image {}".format(path), expected="an image OpenCV can decode",
                         found=_opencv_reason(exc, len(data))) from None
    if image is None:
        raise InputError(
            "cannot decode image {}".format(path),
            expected="a PNG/JPEG/BMP/TIFF file",
            found="{} bytes that OpenCV cannot read".format(len(data)),
        )
    return image


def _opencv_reason(exc: Exception, size: int) -> str:
    """OpenCV's own one-line reason (``... in function 'validateInputImageSize'``) without its source location."""
    text = str(getattr(exc, "err", "") or exc).strip().splitlines()
    reason = text[-1].strip() if text else type(exc).__name__
    if "CV_IO_MAX_IMAGE_PIXELS" in str(exc) or "validateInputImageSize" in str(exc):
        reason = "its header declares more pixels than OpenCV decodes (CV_IO_MAX_IMAGE_PIXELS): " + reason
    return "{} ({} bytes)".format(reason, size)


def read_image(path: Union[str, "os.PathLike[str]"]) -> np.ndarray:
    """Decode an image file to RGB uint8 ``[H, W, 3]`` (grayscale, RGBA and 16-bit handled)."""
    path = os.fspath(path)
    return to_rgb8(decode_image(path), bgr=True, source=path)


def to_8bit(image: np.ndarray, source: str = "image") -> np.ndarray:
    """uint8 as is; uint16 scaled to 8 bits by its top byte (what ``x >> 8`` keeps)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    raise InputError("{} has an unsupported pixel type".format(source), expected="uint8 or uint16", found=str(image.dtype))


def _check_layout(image: np.ndarray, source: str) -> None:
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
        if image.shape[0] > 0 and image.shape[1] > 0:
            return
    raise InputError("{} is not an image".format(source), expected="[H,W], [H,W,3] or [H,W,4]", found=list(image.shape))


def to_rgb8(image: np.ndarray, bgr: bool = False, source: str = "image") -> np.ndarray:
    """Bring any decoded image to RGB uint8 ``[H, W, 3]``.

    ``bgr`` says the channels are in OpenCV's order. 16-bit images are scaled to 8 bits;
    grayscale is replicated to 3 channels; alpha is dropped.
    """
    image = to_8bit(image, source)
    _check_layout(image, source)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image


# -- tiles -------------------------------------------------------------------------------------
def tile_boxes(
    count: int, height: int, width: int, concat: str = "linear", grid: Optional[Tuple[int, int]] = None
) -> List[Box]:
    """Windows ``(top, left, h, w)`` of ``count`` tiles in a ``height x width`` model input.

    ``linear`` stacks the tiles along H (TAO: 4 lights x 128 = 512 rows); ``grid`` places them
    row-major in a ``(rows, cols)`` grid (TAO's 2x2 -> 256x256). The input must divide evenly.
    """
    if count < 1:
        raise InputError("at least one image per input is needed", found=count)
    if concat not in CONCAT_TYPES:
        raise InputError("unknown concatenation", expected=" or ".join(CONCAT_TYPES), found=repr(concat))
    if concat == "linear":
        rows, cols = count, 1
    else:
        rows, cols = grid if grid is not None else (2, count // 2 if count % 2 == 0 else count)
        if rows * cols != count:
            raise InputError(
                "the grid does not hold the number of lights",
                expected="rows x cols = {}".format(count),
                found="{}x{}".format(rows, cols),
            )
    if height % rows or width % cols:
        raise InputError(
            "the model input cannot be split into equal tiles",
            expected="{} rows and {} columns of tiles dividing [{}, {}]".format(rows, cols, height, width),
            found="{} / {} and {} / {}".format(height, rows, width, cols),
        )
    tile_h, tile_w = height // rows, width // cols
    return [((i // cols) * tile_h, (i % cols) * tile_w, tile_h, tile_w) for i in range(count)]


class _Scratch(threading.local):
    """Per-thread float32 planes, so float16 destinations round once and nothing is reallocated."""

    def plane(self, h: int, w: int) -> np.ndarray:
        buf = getattr(self, "buf", None)
        if buf is None or buf.size < h * w:
            buf = self.buf = np.empty(h * w, dtype=np.float32)
        return buf[: h * w].reshape(h, w)


_SCRATCH = _Scratch()


@lru_cache(maxsize=16)
def _plane_constants(norm: Normalization) -> Tuple[Tuple[np.float32, ...], Tuple[np.float32, ...]]:
    """Per-channel float32 ``(scale, offset)`` scalars of ``norm`` (computed once per normalisation)."""
    scale, offset = norm.scale_offset()
    return tuple(scale[:, 0, 0]), tuple(offset[:, 0, 0])


def write_normalized(
    dst: np.ndarray,
    image: np.ndarray,
    normalization: Union[str, Normalization, None] = None,
    bgr: bool = True,
    source: str = "image",
) -> None:
    """Normalise one decoded image into ``dst`` ``[3, h, w]`` (float32, float16 or uint8, any strides).

    ``image``: uint8/uint16 ``[H,W]``, ``[H,W,1]``, ``[H,W,3]`` or ``[H,W,4]``; ``bgr`` says
    the colour channels are in OpenCV's order (what :func:`decode_image` returns). An image of
    another size is resized to ``h x w`` in float32 with bilinear interpolation (as TAO
    Deploy does). Each output plane is ``x * scale + offset`` computed in float32.

    A uint8 ``dst`` (a model that normalises in its graph) receives the RGB pixels unchanged;
    ``normalization`` is then the graph's business. A resized image is rounded back to
    uint8 there, so only images already at the tile size match the float path bit for bit.
    """
    norm = get_normalization(normalization)
    if dst.ndim != 3 or dst.shape[0] != 3:
        raise InputError("destination must be [3,H,W]", found=list(dst.shape))
    if dst.dtype not in (np.float32, np.float16, np.uint8):
        raise InputError("destination must be float32, float16 or uint8", found=str(dst.dtype))
    image = to_8bit(np.asarray(image), source)
    _check_layout(image, source)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    height, width = dst.shape[1], dst.shape[2]
    if image.shape[:2] != (height, width):
        # TAO Deploy resizes the float32 image; resizing uint8 would round to integers first.
        channels = image if image.ndim == 2 or image.shape[2] == 3 else image[:, :, :3]
        if channels.shape[0] * channels.shape[1] > LARGE_IMAGE_PIXELS:
            image = _bilinear_samples(channels, height, width)
        else:
            image = cv2.resize(channels.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    if dst.dtype == np.uint8:
        _write_pixels(dst, image, bgr)
        return
    scale, offset = _plane_constants(norm)
    direct = dst.dtype == np.float32
    for channel in range(3):
        if image.ndim == 2:
            plane = image
        else:
            plane = image[:, :, 2 - channel if bgr else channel]
        out = dst[channel] if direct else _SCRATCH.plane(height, width)
        np.multiply(plane, scale[channel], out=out, dtype=np.float32, casting="unsafe")
        np.add(out, offset[channel], out=out)
        if not direct:
            np.copyto(dst[channel], out, casting="same_kind")


#: above this many pixels a light is not converted to float32 whole before its resize (a
#: 20000x20000 light would take 4.8 GB as float32): only the pixels the resize reads are
LARGE_IMAGE_PIXELS = 4 * 1024 * 1024


def _source_taps(source: int, target: int) -> Tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis: first source index ``[target]`` int and its weight
    of the next pixel ``[target]`` float32 (half-pixel centres, clamped at the borders)."""
    position = (np.arange(target, dtype=np.float64) + 0.5) * (source / target) - 0.5
    first = np.floor(position)
    weight = (position - first).astype(np.float32)
    weight[first < 0] = 0.0
    first = np.clip(first, 0, source - 1).astype(np.int64)
    weight[first >= source - 1] = 0.0
    return first, weight


def _bilinear_samples(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(image.astype(float32), (width, height), INTER_LINEAR)`` (to float32 rounding)
    reading only the <= 2 source rows and columns each output pixel uses: memory grows with the
    output, not the input (uint8 ``[H,W]`` or ``[H,W,3]`` in, float32 ``[height,width(,3)]`` out)."""
    rows, row_w = _source_taps(image.shape[0], height)
    cols, col_w = _source_taps(image.shape[1], width)
    last_row, last_col = image.shape[0] - 1, image.shape[1] - 1
    extra = (1,) * (image.ndim - 2)
    row_w = row_w.reshape((-1, 1) + extra)
    col_w = col_w.reshape((1, -1) + extra)

    def taps(r: np.ndarray) -> np.ndarray:
        picked = image[r]  # [height, W(, 3)] uint8: the rows this resize reads
        left = picked[:, cols].astype(np.float32)
        right = picked[:, np.minimum(cols + 1, last_col)].astype(np.float32)
        return left + (right - left) * col_w

    top = taps(rows)
    bottom = taps(np.minimum(rows + 1, last_row))
    return top + (bottom - top) * row_w


def _write_pixels(dst: np.ndarray, image: np.ndarray, bgr: bool) -> None:
    """RGB planes of ``image`` (uint8, or float32 after a resize: rounded) into uint8 ``dst`` ``[3,h,w]``."""
    for channel in range(3):
        plane = image if image.ndim == 2 else image[:, :, 2 - channel if bgr else channel]
        if plane.dtype == np.uint8:
            np.copyto(dst[channel], plane)
        else:
            np.copyto(dst[channel], np.clip(np.rint(plane), 0, 255), casting="unsafe")


def prepare_tiles(
    images: Sequence[Image],
    dst: np.ndarray,
    boxes: Sequence[Box],
    normalization: Union[str, Normalization, None] = None,
) -> None:
    """Decode, resize and normalise ``images[i]`` into window ``boxes[i]`` of ``dst`` ``[3,H,W]``.

    Each image is a file path (decoded with OpenCV, BGR) or an RGB array (uint8/uint16,
    ``[H,W]``/``[H,W,3]``/``[H,W,4]``). Raises InputError naming the first unusable image.
    """
    if len(images) != len(boxes):
        raise InputError("one image per tile is needed", expected=len(boxes), found=len(images))
    norm = get_normalization(normalization)
    for image, (top, left, h, w) in zip(images, boxes):
        window = dst[:, top:top + h, left:left + w]
        if isinstance(image, np.ndarray):
            write_normalized(window, image, norm, bgr=False)
        else:
            path = os.fspath(image)
            write_normalized(window, decode_image(path), norm, bgr=True, source=path)


def prepare_image(
    image: Image, dst: np.ndarray, normalization: Union[str, Normalization, None] = None
) -> None:
    """Decode/convert one image, resize it to ``dst``'s H x W, normalise into ``dst`` ``[3,H,W]``.

    ``image`` is a file path or a uint8 RGB array ``[H, W, 3]`` (or grayscale ``[H, W]``).
    """
    prepare_tiles([image], dst, [(0, 0, dst.shape[1], dst.shape[2])], normalization)


# -- thread pool -------------------------------------------------------------------------------
#: the most decode threads one loader runs: more only add contention (and memory per thread)
MAX_WORKERS = 64


def default_workers() -> int:
    """Decode threads: one per CPU core (OpenCV's decoders release the GIL)."""
    return max(1, min(os.cpu_count() or 1, 16))


def bounded_workers(workers: Optional[int]) -> int:
    """The decode threads actually run for a request of ``workers`` (None: :func:`default_workers`):
    at most :data:`MAX_WORKERS` and at most 4 per CPU core."""
    if workers is None:
        return default_workers()
    if int(workers) < 1:
        raise InputError("the number of decode threads must be positive", found=workers)
    return max(1, min(int(workers), MAX_WORKERS, 4 * (os.cpu_count() or 1)))


_POOL = ForkSafePool(max_workers=default_workers(), thread_name_prefix="changenet-decode")


def shared_pool() -> ForkSafePool:
    """The process-wide decode pool (threads made on first use, :func:`default_workers` of them;
    made again in a forked child)."""
    return _POOL


def prepare_batch(
    images: Sequence[Image],
    dst: np.ndarray,
    normalization: Union[str, Normalization, None] = None,
    pool: Optional[Any] = None,
) -> None:
    """Prepare ``len(images)`` images into ``dst[:len(images)]`` (``dst``: ``[N, 3, H, W]``).

    Several images are decoded in parallel on ``pool`` (default: :func:`shared_pool`).
    """
    norm = get_normalization(normalization)
    if len(images) > dst.shape[0]:
        raise InputError("more images than destination rows", expected="<= {}".format(dst.shape[0]), found=len(images))
    if len(images) <= 1:
        for i, image in enumerate(images):
            prepare_image(image, dst[i], norm)
        return
    executor = pool if pool is not None else shared_pool()
    futures = [executor.submit(prepare_image, image, dst[i], norm) for i, image in enumerate(images)]
    wait_all(futures)


def wait_all(futures: Sequence["Future"]) -> None:
    """Wait for every future (none may still write into a buffer), then raise the first error."""
    first = None  # type: Optional[BaseException]
    for future in futures:
        error = future.exception()
        if error is not None and first is None:
            first = error
    if first is not None:
        raise first
