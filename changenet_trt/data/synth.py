"""A synthetic PCB inspection data set in TAO's layout (no downloads, deterministic by seed).

Each pair shows one component (resistor, capacitor, diode or IC) on a board: pads, solder,
copper traces, silkscreen and solder-mask texture, rendered from an albedo, a height and a
shininess map under TAO's four lights:

* ``LowAngleLight``: grazing ring light, edges and slopes glow, flat areas stay dark
* ``SolderLight``: tiered colour ring light, flat shiny solder red, steep fillets blue
* ``UniformLight``: diffuse light, plain colours
* ``WhiteLight``: bright white light with glare on metal

The golden and the sample are two captures of two physical boards: PASS samples differ from
their golden only by nuisance (solder-mask texture, part colour, sub-pixel shift and rotation,
illumination, focus blur, sensor noise, JPEG). Defect samples also carry one defect, whose
type is the row's label: MISSING, SHIFTED, ROTATED, TOMBSTONE, POLARITY, BRIDGE, FOREIGN.

Everything is drawn from ``numpy.random.default_rng([seed, index])`` per pair, so a data set
is the same for the same seed whatever the number of threads.
"""

import csv
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from changenet_trt.data.dataset import TAO_LIGHTS
from changenet_trt.data.preprocess import default_workers, wait_all
from changenet_trt.errors import InputError
from changenet_trt.files import check_output_dir

COMPONENTS = ("resistor", "capacitor", "diode", "ic")
DESIGNATORS = {"resistor": "R", "capacitor": "C", "diode": "D", "ic": "U"}
DEFECT_TYPES = ("MISSING", "SHIFTED", "ROTATED", "TOMBSTONE", "POLARITY", "BRIDGE", "FOREIGN")
#: defect types that make sense for each component (no polarity on a resistor, no tombstone on an IC)
VALID_DEFECTS = {
    "resistor": ("MISSING", "SHIFTED", "ROTATED", "TOMBSTONE", "BRIDGE", "FOREIGN"),
    "capacitor": ("MISSING", "SHIFTED", "ROTATED", "TOMBSTONE", "BRIDGE", "FOREIGN"),
    "diode": ("MISSING", "SHIFTED", "ROTATED", "TOMBSTONE", "POLARITY", "BRIDGE", "FOREIGN"),
    "ic": ("MISSING", "SHIFTED", "ROTATED", "POLARITY", "BRIDGE", "FOREIGN"),
}
COMPONENTS_PER_BOARD = 24
CSV_NAME = "dataset.csv"
IMAGES_DIR = "images"

# Colours are RGB in [0, 1].
MASK_GREEN = (0.10, 0.36, 0.17)
TRACE_GREEN = (0.15, 0.47, 0.22)
SILK = (0.88, 0.88, 0.84)
SOLDER = (0.74, 0.74, 0.71)
METAL = (0.82, 0.82, 0.80)
BODY = {
    "resistor": (0.07, 0.07, 0.07),
    "capacitor": (0.62, 0.50, 0.33),
    "diode": (0.09, 0.09, 0.11),
    "ic": (0.10, 0.10, 0.11),
}
SUPERSAMPLE = 4  # sub-pixel bits for cv2 drawing (positions in 1/16 px)


@dataclass(frozen=True)
class Plan:
    """One row to synthesise: where it goes and what it shows."""

    index: int
    board: int
    object_name: str
    component: str
    label: str  # PASS or a defect type


def plan_rows(pairs: int, defect_rate: float, seed: int) -> List[Plan]:
    """Decide every row: exactly ``round(pairs * defect_rate)`` defects at seeded positions,
    components and defect types drawn uniformly (defect types among the component's valid ones)."""
    if pairs < 1:
        raise InputError("pairs must be positive", found=pairs)
    if not 0.0 <= defect_rate <= 1.0:
        raise InputError("defect rate must be between 0 and 1", found=defect_rate)
    rng = np.random.default_rng([int(seed), 0x5EED])
    n_defect = int(round(pairs * defect_rate))
    is_defect = np.zeros(pairs, dtype=bool)
    is_defect[rng.permutation(pairs)[:n_defect]] = True
    counters = {}  # type: Dict[Tuple[int, str], int]
    rows = []
    for index in range(pairs):
        component = COMPONENTS[int(rng.integers(len(COMPONENTS)))]
        choices = VALID_DEFECTS[component]
        label = choices[int(rng.integers(len(choices)))] if is_defect[index] else "PASS"
        board = index // COMPONENTS_PER_BOARD
        prefix = DESIGNATORS[component]
        number = counters.get((board, prefix), 0) + 1
        counters[(board, prefix)] = number
        rows.append(Plan(index, board, "{}{:03d}".format(prefix, number), component, label))
    return rows


# -- geometry ----------------------------------------------------------------------------------
@dataclass
class Part:
    """A component's pose and shape in pixels. Local frame: x along the part's length."""

    kind: str
    cx: float
    cy: float
    angle: float  # degrees
    length: float
    width: float
    pins: int  # IC pins per side
    body: Tuple[float, float, float]
    polarity: int  # +1: marker at +x end, -1 at -x end


def _to_image(part: Part, points: np.ndarray, dx: float = 0.0, dy: float = 0.0, dangle: float = 0.0) -> np.ndarray:
    """Local ``[K,2]`` points -> int32 image points (1/16 px, for cv2's ``shift``)."""
    theta = math.radians(part.angle + dangle)
    c, s = math.cos(theta), math.sin(theta)
    x = part.cx + dx + points[:, 0] * c - points[:, 1] * s
    y = part.cy + dy + points[:, 0] * s + points[:, 1] * c
    return np.round(np.stack([x, y], axis=1) * (1 << SUPERSAMPLE)).astype(np.int32)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


class Canvas:
    """Albedo (RGB), height and shininess maps, drawn with filled polygons."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.albedo = np.zeros((size, size, 3), dtype=np.float32)
        self.height = np.zeros((size, size), dtype=np.float32)
        self.shine = np.zeros((size, size), dtype=np.float32)

    def fill(self, points: np.ndarray, albedo: Sequence[float], height: Optional[float], shine: float,
             add_height: bool = False) -> None:
        pts = points.reshape(-1, 1, 2)
        cv2.fillPoly(self.albedo, [pts], tuple(float(v) for v in albedo), cv2.LINE_8, SUPERSAMPLE)
        if height is not None:
            if add_height:
                mask = np.zeros((self.size, self.size), dtype=np.float32)
                cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_8, SUPERSAMPLE)
                self.height += mask * height
            else:
                cv2.fillPoly(self.height, [pts], float(height), cv2.LINE_8, SUPERSAMPLE)
        cv2.fillPoly(self.shine, [pts], float(shine), cv2.LINE_8, SUPERSAMPLE)

    def line(self, points: np.ndarray, thickness: int, albedo: Sequence[float], height: float, shine: float) -> None:
        pts = points.reshape(-1, 1, 2)
        cv2.polylines(self.albedo, [pts], False, tuple(float(v) for v in albedo), thickness, cv2.LINE_8, SUPERSAMPLE)
        cv2.polylines(self.height, [pts], False, float(height), thickness, cv2.LINE_8, SUPERSAMPLE)
        cv2.polylines(self.shine, [pts], False, float(shine), thickness, cv2.LINE_8, SUPERSAMPLE)


def _smooth_noise(rng: np.random.Generator, size: int, scale: float, amplitude: float) -> np.ndarray:
    small = max(2, int(size / scale))
    noise = rng.normal(0.0, 1.0, (small, small)).astype(np.float32)
    return cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC) * amplitude


def _new_part(rng: np.random.Generator, kind: str, size: int) -> Part:
    if kind == "ic":
        length, width, pins = rng.uniform(50, 64), rng.uniform(32, 40), int(rng.integers(3, 5))
    else:
        length, width, pins = rng.uniform(44, 62), rng.uniform(22, 30), 0
    tint = rng.uniform(0.95, 1.05)
    body = tuple(float(np.clip(c * tint, 0, 1)) for c in BODY[kind])
    return Part(
        kind=kind,
        cx=size / 2 + rng.uniform(-4, 4),
        cy=size / 2 + rng.uniform(-4, 4),
        angle=float(rng.choice([0.0, 90.0, 180.0, 270.0]) + rng.uniform(-1.5, 1.5)),
        length=length,
        width=width,
        pins=pins,
        body=body,  # type: ignore[arg-type]
        polarity=int(rng.choice([-1, 1])),
    )


def _pads(part: Part) -> List[np.ndarray]:
    """Pad rectangles in the local frame."""
    half_l, half_w = part.length / 2, part.width / 2
    if part.kind == "ic":
        pitch = part.length / part.pins
        pads = []
        for side in (-1, 1):
            for k in range(part.pins):
                x = -half_l + pitch * (k + 0.5)
                y0 = side * (half_w + 2)
                y1 = side * (half_w + 14)
                pads.append(_rect(x - pitch * 0.28, min(y0, y1), x + pitch * 0.28, max(y0, y1)))
        return pads
    end = part.length * 0.2
    pads = []
    for sign in (1, -1):
        inner, outer = sign * (half_l - end - 3), sign * (half_l + 3)
        pads.append(_rect(min(inner, outer), -half_w - 3, max(inner, outer), half_w + 3))
    return pads


def _draw_board(canvas: Canvas, part: Part, board_rng: np.random.Generator, unit_rng: np.random.Generator) -> None:
    """Mask colour, traces from the pads to the edge, silkscreen outline, pads with solder.

    ``board_rng`` draws what golden and sample share (the layout); ``unit_rng`` what differs
    between two good boards: each joint's solder finish (brightness) and height.
    """
    size = canvas.size
    canvas.albedo[:] = MASK_GREEN
    canvas.height[:] = 0.0
    canvas.shine[:] = 0.15
    pads = _pads(part)
    # traces: from a few pads straight out to the image border
    for pad in pads[:: max(1, len(pads) // 3)]:
        centre = pad.mean(axis=0)
        direction = np.array([np.sign(centre[0]) or 1.0, 0.0]) if part.kind != "ic" else np.array([0.0, np.sign(centre[1]) or 1.0])
        end = centre + direction * size
        width = int(board_rng.integers(3, 6))
        canvas.line(_to_image(part, np.stack([centre, end])), width, TRACE_GREEN, 0.12, 0.25)
    # silkscreen outline around the footprint
    if board_rng.random() < 0.8:
        half_l, half_w = part.length / 2 + 8, part.width / 2 + (18 if part.kind == "ic" else 8)
        outline = _rect(-half_l, -half_w, half_l, half_w)
        canvas.line(_to_image(part, np.vstack([outline, outline[:1]])), 1, SILK, 0.04, 0.1)
    for pad in pads:
        finish = unit_rng.uniform(0.94, 1.04)
        canvas.fill(_to_image(part, pad), tuple(c * finish for c in SOLDER), 0.22 * unit_rng.uniform(0.92, 1.08), 0.95)


def _draw_part(canvas: Canvas, part: Part, dx: float = 0.0, dy: float = 0.0, dangle: float = 0.0,
               polarity: Optional[int] = None) -> None:
    """Body, terminations or pins, and the polarity marker, moved by (dx, dy, dangle)."""
    half_l, half_w = part.length / 2, part.width / 2
    pol = part.polarity if polarity is None else polarity

    def poly(points: np.ndarray) -> np.ndarray:
        return _to_image(part, points, dx, dy, dangle)

    if part.kind == "ic":
        pitch = part.length / part.pins
        for side in (-1, 1):
            for k in range(part.pins):
                x = -half_l + pitch * (k + 0.5)
                y0, y1 = side * (half_w - 2), side * (half_w + 11)
                canvas.fill(poly(_rect(x - pitch * 0.18, min(y0, y1), x + pitch * 0.18, max(y0, y1))), METAL, 0.45, 0.85)
        canvas.fill(poly(_rect(-half_l, -half_w, half_l, half_w)), part.body, 1.0, 0.1)
        # pin-1 dimple in one corner and the printed marking off-centre towards it: a part
        # turned by 180 degrees (wrong polarity) shows both on the other side
        canvas.fill(poly(_ellipse(pol * (half_l - 8), pol * (half_w - 8), 4.5, 4.5)), (0.45, 0.45, 0.47), 0.9, 0.1)
        mark_x = pol * half_l * 0.15
        canvas.fill(poly(_rect(mark_x - half_l * 0.45, -3.0, mark_x + half_l * 0.45, 3.0)), (0.6, 0.6, 0.6), None, 0.1)
        return
    end = part.length * 0.2
    for sign in (-1, 1):
        x0, x1 = (half_l - end, half_l) if sign > 0 else (-half_l, -half_l + end)
        canvas.fill(poly(_rect(x0, -half_w, x1, half_w)), METAL, 0.8, 0.85)
    height = 1.2 if part.kind == "capacitor" else 1.0
    canvas.fill(poly(_rect(-half_l + end, -half_w, half_l - end, half_w)), part.body, height, 0.1)
    if part.kind == "diode":
        x = pol * (half_l - end - part.length * 0.1)
        canvas.fill(poly(_rect(x - part.length * 0.08, -half_w, x + part.length * 0.08, half_w)), (0.85, 0.85, 0.85), height, 0.2)
    elif part.kind == "resistor":
        canvas.fill(poly(_rect(-half_l * 0.35, -half_w * 0.3, half_l * 0.35, half_w * 0.3)), (0.6, 0.6, 0.6), None, 0.1)


def _draw_defect(canvas: Canvas, part: Part, label: str, rng: np.random.Generator) -> bool:
    """Draw the part with ``label``'s defect; returns False when the part is drawn as usual."""
    half_l, half_w = part.length / 2, part.width / 2
    if label == "MISSING":
        return True  # pads only
    if label == "SHIFTED":
        distance, direction = rng.uniform(8, 14), rng.uniform(0, 2 * math.pi)
        _draw_part(canvas, part, distance * math.cos(direction), distance * math.sin(direction))
        return True
    if label == "ROTATED":
        _draw_part(canvas, part, dangle=float(rng.choice([-1, 1]) * rng.uniform(15, 35)))
        return True
    if label == "POLARITY":
        _draw_part(canvas, part, polarity=-part.polarity)
        return True
    if label == "TOMBSTONE":
        # the part stands on one termination: from above, a tall end cap over one pad
        sign = int(rng.choice([-1, 1]))
        thickness = part.width * 0.55
        x0 = sign * half_l - (thickness if sign > 0 else 0)
        canvas.fill(_to_image(part, _rect(x0, -half_w, x0 + thickness, half_w)), METAL, 2.2, 0.9)
        canvas.fill(_to_image(part, _rect(x0 + thickness * 0.25, -half_w * 0.8, x0 + thickness * 0.75, half_w * 0.8)),
                    part.body, 2.4, 0.1)
        return True
    if label == "BRIDGE":
        _draw_part(canvas, part)
        if part.kind == "ic":
            pitch = part.length / part.pins
            side = int(rng.choice([-1, 1]))
            k = int(rng.integers(0, part.pins - 1))
            x0 = -half_l + pitch * (k + 0.5)
            y = side * (half_w + rng.uniform(7, 10))
            blob = _rect(x0 - 2, y - 5, x0 + pitch + 2, y + 5)
        else:
            sign = int(rng.choice([-1, 1]))
            x = sign * (half_l - part.length * 0.1)
            y = int(rng.choice([-1, 1])) * (half_w + 3)
            blob = _rect(x - 6, min(y, y + np.sign(y) * 20), x + 6, max(y, y + np.sign(y) * 20))
        canvas.fill(_to_image(part, blob), SOLDER, 0.5, 1.0)
        return True
    if label == "FOREIGN":
        _draw_part(canvas, part)
        size = canvas.size
        # debris that contrasts with both the green mask and a dark body: dust, flux, copper
        colour = [(0.90, 0.88, 0.80), (0.88, 0.50, 0.15), (0.80, 0.62, 0.35)][int(rng.integers(3))]
        if rng.random() < 0.5:  # a fibre
            start = rng.uniform(size * 0.25, size * 0.75, 2)
            heading = rng.uniform(0, 2 * math.pi)
            steps = np.cumsum(np.stack([np.cos(heading + rng.normal(0, 0.4, 6)), np.sin(heading + rng.normal(0, 0.4, 6))], axis=1) * 8, axis=0) + start
            pts = np.round(np.vstack([start, steps]) * (1 << SUPERSAMPLE)).astype(np.int32)
            canvas.line(pts, 4, colour, 0.3, 0.2)
        else:  # a particle
            centre = rng.uniform(size * 0.25, size * 0.75, 2)
            radius = rng.uniform(8, 12)
            angles = np.sort(rng.uniform(0, 2 * math.pi, 9))
            radii = radius * rng.uniform(0.6, 1.2, 9)
            pts = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)
            canvas.fill(np.round(pts * (1 << SUPERSAMPLE)).astype(np.int32), colour, 0.4, 0.3)
        return True
    raise InputError("unknown defect type", expected=", ".join(DEFECT_TYPES), found=repr(label))


# -- lights and camera -------------------------------------------------------------------------
def render_lights(canvas: Canvas, lights: Sequence[str]) -> List[np.ndarray]:
    """Float32 RGB ``[S,S,3]`` images in [0, ~1] of ``canvas`` under each named light."""
    height = cv2.GaussianBlur(canvas.height, (0, 0), 1.2)
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    slope = np.sqrt(gx * gx + gy * gy)
    albedo, shine = canvas.albedo, canvas.shine[:, :, None]
    out = []
    for light in lights:
        if light == "LowAngleLight":
            glow = np.clip(slope * 3.0, 0, 1)[:, :, None]
            image = albedo * 0.22 + glow * np.array([0.85, 0.9, 1.0], dtype=np.float32)
        elif light == "SolderLight":
            tilt = np.clip(slope * 4.0, 0, 1)[:, :, None]
            colour = (1 - tilt) * np.array([0.95, 0.25, 0.2], dtype=np.float32) + tilt * np.array([0.2, 0.35, 0.95], dtype=np.float32)
            image = albedo * 0.12 + shine * colour * 0.9
        elif light == "WhiteLight":
            image = albedo * 1.1 + shine * 0.25
        else:  # UniformLight, or any other light name: diffuse
            image = albedo * 0.9 + 0.04
        out.append(image.astype(np.float32))
    return out


@dataclass(frozen=True)
class Camera:
    """Capture nuisance shared by the lights of one capture."""

    dx: float
    dy: float
    rotation: float
    gain: float
    offset: float
    blur: float
    noise: float

    @staticmethod
    def random(rng: np.random.Generator) -> "Camera":
        return Camera(
            dx=rng.uniform(-0.4, 0.4),
            dy=rng.uniform(-0.4, 0.4),
            rotation=rng.uniform(-0.2, 0.2),
            gain=rng.uniform(0.96, 1.04),
            offset=rng.uniform(-0.01, 0.01),
            blur=rng.uniform(0.35, 0.8),
            noise=rng.uniform(0.006, 0.012),
        )

    def capture(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Float RGB -> uint8 RGB through the camera."""
        size = image.shape[0]
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), self.rotation, 1.0)
        matrix[:, 2] += (self.dx, self.dy)
        image = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        image = cv2.GaussianBlur(image, (0, 0), self.blur)
        gain = self.gain * rng.uniform(0.99, 1.01)  # per-light flicker
        # in 8-bit units, in place: (image * gain + offset + noise) * 255, rounded
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        noise *= np.float32(self.noise * 255.0)
        image *= np.float32(gain * 255.0)
        image += noise
        image += np.float32(self.offset * 255.0 + 0.5)
        np.clip(image, 0, 255, out=image)
        return image.astype(np.uint8)


def render_pair(plan: Plan, seed: int, lights: Sequence[str] = TAO_LIGHTS, size: int = 128) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """``(golden, sample)``: uint8 RGB ``[size,size,3]`` images, one per light, for ``plan``."""
    rng = np.random.default_rng([int(seed), int(plan.index), 1])
    part = _new_part(rng, plan.component, size)
    board_seed = int(rng.integers(1 << 31))
    texture = _smooth_noise(rng, size, 12.0, 0.025)
    images = []
    for role in ("golden", "sample"):
        unit_rng = np.random.default_rng([int(seed), int(plan.index), 2 if role == "golden" else 3])
        canvas = Canvas(size)
        _draw_board(canvas, part, np.random.default_rng(board_seed), unit_rng)
        # each capture is of another physical board: its own fine mask texture and part tint
        canvas.albedo += (texture + _smooth_noise(unit_rng, size, 3.0, 0.012))[:, :, None]
        unit = replace(part, body=tuple(float(np.clip(c * unit_rng.uniform(0.97, 1.03), 0, 1)) for c in part.body))
        if role == "sample" and plan.label != "PASS":
            _draw_defect(canvas, unit, plan.label, unit_rng)
        else:
            _draw_part(canvas, unit)
        camera = Camera.random(unit_rng)
        images.append([camera.capture(img, unit_rng) for img in render_lights(canvas, lights)])
    return images[0], images[1]


@dataclass
class SynthResult:
    """What :func:`synthesize` wrote."""

    out_dir: str
    csv_path: str
    images_dir: str
    rows: List[Plan]

    @property
    def counts(self) -> Dict[str, int]:
        counts = {}  # type: Dict[str, int]
        for row in self.rows:
            counts[row.label] = counts.get(row.label, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (kv[0] != "PASS", kv[0])))


def _write(path: str, rgb: np.ndarray, params: List[int]) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise InputError("cannot write image {}".format(path), expected="a writable folder and a known extension")


def synthesize(
    out_dir: str,
    pairs: int = 400,
    defect_rate: float = 0.3,
    seed: int = 0,
    lights: Sequence[str] = TAO_LIGHTS,
    ext: str = ".jpg",
    size: int = 128,
    workers: Optional[int] = None,
    on_pair: Optional[Callable[[int], None]] = None,
    progress: bool = False,
) -> SynthResult:
    """Write ``pairs`` golden/sample pairs in TAO's layout under ``out_dir``.

    Layout: ``out_dir/dataset.csv`` (columns ``input_path, golden_path, label, object_name,
    component``; images folder = ``out_dir``), ``out_dir/images/golden/board_NNN/<object>_<Light><ext>``
    and ``out_dir/images/inspect/board_NNN/...``, plus ``out_dir/synth.json`` (the
    parameters and counts). ``lights`` empty writes one image per object (single-image mode).
    ``on_pair(done)`` reports the pairs written so far; ``progress`` shows a bar on stderr when
    stderr is a terminal.
    """
    check_output_dir(out_dir, what="synth output folder")
    if size < 32:
        raise InputError("image size too small", expected=">= 32", found=size)
    if not ext.startswith("."):
        ext = "." + ext
    if ext.lower() not in (".jpg", ".jpeg", ".png", ".bmp"):
        raise InputError("unsupported image extension", expected=".jpg, .jpeg, .png or .bmp", found=ext)
    rows = plan_rows(pairs, defect_rate, seed)
    images_root = os.path.join(out_dir, IMAGES_DIR)
    os.makedirs(images_root, exist_ok=True)
    boards = sorted({row.board for row in rows})
    for board in boards:
        for role in ("golden", "inspect"):
            os.makedirs(os.path.join(images_root, role, "board_{:03d}".format(board)), exist_ok=True)

    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext.lower() in (".jpg", ".jpeg") else []
    light_names = list(lights) or ["UniformLight"]

    def one(row: Plan) -> None:
        golden, sample = render_pair(row, seed, light_names, size)
        board = "board_{:03d}".format(row.board)
        for role, images in (("golden", golden), ("inspect", sample)):
            folder = os.path.join(images_root, role, board)
            if lights:
                for light, image in zip(lights, images):
                    _write(os.path.join(folder, "{}_{}{}".format(row.object_name, light, ext)), image, params)
            else:
                _write(os.path.join(folder, row.object_name + ext), images[0], params)

    # disable=None: a live bar only when stderr is a terminal (silent in logs and CI)
    with ThreadPoolExecutor(max_workers=int(workers or default_workers())) as pool, \
            tqdm(total=len(rows), desc="synth", unit="pairs", disable=None if progress else True) as bar:
        chunk = 32
        for start in range(0, len(rows), chunk):
            wait_all([pool.submit(one, row) for row in rows[start:start + chunk]])
            done = min(start + chunk, len(rows))
            bar.update(done - start)
            if on_pair is not None:
                on_pair(done)
    csv_path = os.path.join(out_dir, CSV_NAME)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input_path", "golden_path", "label", "object_name", "component"])
        for row in rows:
            board = "board_{:03d}".format(row.board)
            writer.writerow([
                "{}/inspect/{}".format(IMAGES_DIR, board),
                "{}/golden/{}".format(IMAGES_DIR, board),
                row.label,
                row.object_name,
                row.component,
            ])
    result = SynthResult(out_dir, csv_path, out_dir, rows)
    with open(os.path.join(out_dir, "synth.json"), "w") as handle:
        json.dump({"pairs": pairs, "defect_rate": defect_rate, "seed": seed, "lights": list(lights), "ext": ext,
                   "size": size, "counts": result.counts}, handle, indent=2)
        handle.write("\n")
    return result
