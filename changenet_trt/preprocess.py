"""Images -> normalised NCHW, written straight into a caller's buffer.

TAO (training and TAO Deploy) feeds RGB images scaled to [0, 1] and normalised with the
ImageNet mean/std; NVIDIA's DeepStream sample for the deployable model uses 0.5/0.5 instead,
so normalisation is a preset with an override.
"""

import os
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np

from .errors import InputError

Image = Union[str, "os.PathLike[str]", np.ndarray]


@dataclass(frozen=True)
class Normalization:
    """Per-channel (R, G, B) ``(x / 255 - mean) / std``."""

    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

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
    """A preset name (``tao``, ``deepstream``), a :class:`Normalization`, or ``None`` (= tao)."""
    if preset is None:
        return PRESETS["tao"]
    if isinstance(preset, Normalization):
        return preset
    if preset in PRESETS:
        return PRESETS[preset]
    raise InputError("unknown normalisation preset", expected=" or ".join(sorted(PRESETS)), found=repr(preset))


def read_image(path: Union[str, "os.PathLike[str]"]) -> np.ndarray:
    """Decode an image file to RGB uint8 ``[H, W, 3]`` (grayscale, RGBA and 16-bit handled)."""
    import cv2

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError("image file not found: {}".format(path))
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InputError("cannot decode image {}".format(path), expected="a PNG/JPEG/BMP/TIFF file")
    return to_rgb8(image, bgr=True, source=path)


def to_rgb8(image: np.ndarray, bgr: bool = False, source: str = "image") -> np.ndarray:
    """Bring any decoded image to RGB uint8 ``[H, W, 3]``.

    ``bgr`` says the channels are in OpenCV's order. 16-bit images are scaled to 8 bits;
    grayscale is replicated to 3 channels; alpha is dropped.
    """
    import cv2

    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError("{} has an unsupported pixel type".format(source), expected="uint8 or uint16", found=str(image.dtype))
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError("{} is not an image".format(source), expected="[H,W], [H,W,3] or [H,W,4]", found=list(image.shape))
    if image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image


def normalize_into(dst: np.ndarray, rgb: np.ndarray, normalization: Normalization) -> None:
    """Write ``rgb`` (uint8 ``[H, W, 3]``, already the model's size) into ``dst`` ``[3, H, W]``.

    ``dst`` may be float32 or float16 (a slice of a runner's buffer); the arithmetic is done
    in float32 per channel plane, so no full-size float64 temporaries appear.
    """
    scale, offset = normalization.scale_offset()
    for channel in range(3):
        plane = rgb[:, :, channel].astype(np.float32)
        plane *= scale[channel, 0, 0]
        plane += offset[channel, 0, 0]
        dst[channel] = plane


def prepare_image(
    image: Image, dst: np.ndarray, normalization: Union[str, Normalization, None] = None
) -> None:
    """Decode/convert one image, resize it to ``dst``'s H x W, normalise into ``dst`` ``[3,H,W]``.

    ``image`` is a file path or a uint8 RGB array ``[H, W, 3]`` (or grayscale ``[H, W]``).
    """
    import cv2

    norm = get_normalization(normalization)
    if isinstance(image, np.ndarray):
        rgb = to_rgb8(image, bgr=False)
    else:
        rgb = read_image(image)
    height, width = dst.shape[1], dst.shape[2]
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    normalize_into(dst, rgb, norm)


def prepare_batch(
    images: Sequence[Image], dst: np.ndarray, normalization: Union[str, Normalization, None] = None
) -> None:
    """Prepare ``len(images)`` images into ``dst[:len(images)]`` (``dst``: ``[N, 3, H, W]``)."""
    for i, image in enumerate(images):
        prepare_image(image, dst[i], normalization)
