"""Small PNG plots drawn with OpenCV (no plotting library): histograms, ROC curves, sweeps.

Every function writes one PNG (8-bit BGR) and returns its path. Axes get "nice" ticks
(1/2/5 x 10^k), a title, axis labels and a legend; colours are fixed per series index so the
same label keeps its colour across plots.
"""

import math
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from changenet_trt.errors import InputError
from changenet_trt.files import PathLike

WIDTH, HEIGHT = 900, 560
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 90, 30, 50, 70
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GRID = (228, 228, 228)
# BGR: blue, orange, green, red, purple, brown, pink, grey, olive, cyan (a colour-blind-safe-ish set)
PALETTE = [
    (180, 119, 31),
    (14, 127, 255),
    (44, 160, 44),
    (40, 39, 214),
    (189, 103, 148),
    (75, 86, 140),
    (194, 119, 227),
    (127, 127, 127),
    (34, 189, 188),
    (207, 190, 23),
]
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def color(index: int) -> Tuple[int, int, int]:
    """The BGR colour of series ``index``."""
    return PALETTE[index % len(PALETTE)]


def nice_ticks(low: float, high: float, count: int = 8) -> List[float]:
    """About ``count`` round tick values covering ``[low, high]`` (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = magnitude * 10
    for factor in (1.0, 2.0, 5.0, 10.0):
        if raw <= factor * magnitude:
            step = factor * magnitude
            break
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return "{:.1e}".format(value)
    return "{:g}".format(round(value, 6))


class Axes:
    """A white canvas with one plot area mapping data ``[x0, x1] x [y0, y1]`` to pixels."""

    def __init__(
        self,
        xlim: Tuple[float, float],
        ylim: Tuple[float, float],
        title: str,
        xlabel: str,
        ylabel: str,
        size: Tuple[int, int] = (WIDTH, HEIGHT),
    ) -> None:
        self.cv2 = cv2
        self.width, self.height = size
        self.image = np.full((self.height, self.width, 3), 255, dtype=np.uint8)
        x0, x1 = float(xlim[0]), float(xlim[1])
        y0, y1 = float(ylim[0]), float(ylim[1])
        if not x1 > x0:
            x0, x1 = x0 - 0.5, x0 + 0.5
        if not y1 > y0:
            y0, y1 = y0 - 0.5, y0 + 0.5
        self.xlim, self.ylim = (x0, x1), (y0, y1)
        self.left, self.right = MARGIN_LEFT, self.width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, self.height - MARGIN_BOTTOM
        self._legend = []  # type: List[Tuple[str, Tuple[int, int, int]]]
        self._frame(title, xlabel, ylabel)

    def px(self, x: np.ndarray) -> np.ndarray:
        x0, x1 = self.xlim
        return self.left + (np.asarray(x, dtype=np.float64) - x0) / (x1 - x0) * (self.right - self.left)

    def py(self, y: np.ndarray) -> np.ndarray:
        y0, y1 = self.ylim
        return self.bottom - (np.asarray(y, dtype=np.float64) - y0) / (y1 - y0) * (self.bottom - self.top)

    def text(self, text: str, org: Tuple[int, int], scale: float = 0.5, thickness: int = 1,
             color_: Tuple[int, int, int] = BLACK, anchor: str = "left") -> None:
        cv2 = self.cv2
        (w, h), _ = cv2.getTextSize(text, FONT, scale, thickness)
        x, y = org
        if anchor == "center":
            x -= w // 2
        elif anchor == "right":
            x -= w
        cv2.putText(self.image, text, (int(x), int(y)), FONT, scale, color_, thickness, cv2.LINE_AA)

    def _frame(self, title: str, xlabel: str, ylabel: str) -> None:
        cv2 = self.cv2
        for value in nice_ticks(*self.xlim):
            x = int(round(float(self.px(value))))
            cv2.line(self.image, (x, self.top), (x, self.bottom), GRID, 1)
            cv2.line(self.image, (x, self.bottom), (x, self.bottom + 5), BLACK, 1)
            self.text(_fmt(value), (x, self.bottom + 22), 0.45, anchor="center")
        for value in nice_ticks(*self.ylim):
            y = int(round(float(self.py(value))))
            cv2.line(self.image, (self.left, y), (self.right, y), GRID, 1)
            cv2.line(self.image, (self.left - 5, y), (self.left, y), BLACK, 1)
            self.text(_fmt(value), (self.left - 9, y + 5), 0.45, anchor="right")
        cv2.rectangle(self.image, (self.left, self.top), (self.right, self.bottom), BLACK, 1)
        self.text(title, (self.width // 2, 32), 0.7, 2, anchor="center")
        self.text(xlabel, ((self.left + self.right) // 2, self.height - 20), 0.55, anchor="center")
        # A vertical y label: draw it on a strip, rotate, paste.
        (w, h), base = cv2.getTextSize(ylabel, FONT, 0.55, 1)
        strip = np.full((h + base + 6, w + 6, 3), 255, dtype=np.uint8)
        cv2.putText(strip, ylabel, (3, h + 3), FONT, 0.55, BLACK, 1, cv2.LINE_AA)
        strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
        sh, sw = strip.shape[:2]
        y0 = max((self.top + self.bottom) // 2 - sh // 2, 0)
        sh = min(sh, self.height - y0)
        self.image[y0:y0 + sh, 8:8 + sw] = strip[:sh]

    def clip(self) -> Tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom

    def polyline(self, xs: np.ndarray, ys: np.ndarray, color_: Tuple[int, int, int], thickness: int = 2,
                 label: Optional[str] = None) -> None:
        cv2 = self.cv2
        points = np.stack([self.px(xs), self.py(ys)], axis=1)
        points = np.round(points).astype(np.int32)
        points[:, 0] = np.clip(points[:, 0], self.left, self.right)
        points[:, 1] = np.clip(points[:, 1], self.top, self.bottom)
        if len(points) >= 2:
            cv2.polylines(self.image, [points.reshape(-1, 1, 2)], False, color_, thickness, cv2.LINE_AA)
        if label:
            self._legend.append((label, color_))

    def bars(self, edges: np.ndarray, heights: np.ndarray, color_: Tuple[int, int, int], alpha: float = 0.45,
             label: Optional[str] = None) -> None:
        """Histogram bars ``[edges[i], edges[i+1]] x [ylim0, heights[i]]``, blended with ``alpha``."""
        cv2 = self.cv2
        overlay = self.image.copy()
        xs = np.round(self.px(edges)).astype(int)
        ys = np.round(self.py(heights)).astype(int)
        base = int(round(float(self.py(self.ylim[0]))))
        outline = []
        for i, top in enumerate(ys):
            x0, x1 = max(xs[i], self.left), min(xs[i + 1], self.right)
            top = int(np.clip(top, self.top, self.bottom))
            if x1 < x0:
                continue
            if heights[i] > self.ylim[0]:
                cv2.rectangle(overlay, (x0, top), (x1, base), color_, -1)
            outline += [(x0, top), (x1, top)]
        cv2.addWeighted(overlay, alpha, self.image, 1.0 - alpha, 0, dst=self.image)
        if outline:
            cv2.polylines(self.image, [np.array(outline, dtype=np.int32).reshape(-1, 1, 2)], False, color_, 1)
        if label:
            self._legend.append((label, color_))

    def vline(self, x: float, color_: Tuple[int, int, int], label: Optional[str] = None) -> None:
        cv2 = self.cv2
        if not self.xlim[0] <= x <= self.xlim[1]:
            return
        xp = int(round(float(self.px(x))))
        # dashed: short segments
        for y in range(self.top, self.bottom, 10):
            cv2.line(self.image, (xp, y), (xp, min(y + 5, self.bottom)), color_, 2)
        if label:
            self._legend.append((label, color_))

    def marker(self, x: float, y: float, color_: Tuple[int, int, int], label: Optional[str] = None) -> None:
        cv2 = self.cv2
        center = (int(round(float(self.px(x)))), int(round(float(self.py(y)))))
        cv2.circle(self.image, center, 6, color_, -1, cv2.LINE_AA)
        cv2.circle(self.image, center, 6, BLACK, 1, cv2.LINE_AA)
        if label:
            self._legend.append((label, color_))

    def legend(self, where: str = "right") -> None:
        if not self._legend:
            return
        cv2 = self.cv2
        widths = [cv2.getTextSize(label, FONT, 0.45, 1)[0][0] for label, _ in self._legend]
        box_w = max(widths) + 40
        box_h = 22 * len(self._legend) + 8
        x0 = self.right - box_w - 10 if where == "right" else self.left + 10
        y0 = self.top + 10 if where != "bottom-right" else self.bottom - box_h - 10
        if where == "bottom-right":
            x0 = self.right - box_w - 10
        cv2.rectangle(self.image, (x0, y0), (x0 + box_w, y0 + box_h), WHITE, -1)
        cv2.rectangle(self.image, (x0, y0), (x0 + box_w, y0 + box_h), (160, 160, 160), 1)
        for i, (label, col) in enumerate(self._legend):
            y = y0 + 18 + 22 * i
            cv2.rectangle(self.image, (x0 + 8, y - 10), (x0 + 26, y), col, -1)
            self.text(label, (x0 + 32, y), 0.45)

    def save(self, path: PathLike) -> str:
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        if not self.cv2.imwrite(path, self.image):
            raise InputError("cannot write plot {}".format(path), expected="a writable .png path")
        return path


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def histogram_png(
    series: Dict[str, np.ndarray],
    path: PathLike,
    title: str,
    xlabel: str,
    bins: int = 50,
    ylabel: str = "count",
    markers: Optional[Dict[str, float]] = None,
    log_x: bool = False,
) -> str:
    """Overlaid histograms of one or more named series, on shared bins, written as a PNG.

    ``series``: ``{label: values}`` (any shape, non-finite values ignored; each label also
    shows its count). ``bins``: number of equal-width bins over the union range of all series.
    ``markers``: ``{label: x}`` vertical dashed lines (e.g. the cutoff). ``log_x`` bins and
    draws ``log10(x)`` (positive values only) for long-tailed data such as latencies.
    Returns ``path``.
    """
    if not series:
        raise InputError("histogram_png needs at least one series", found="an empty dict")
    if bins < 1:
        raise InputError("bins must be positive", found=bins)
    data = {}  # type: Dict[str, np.ndarray]
    for label, values in series.items():
        vals = _finite(values)
        if log_x:
            vals = np.log10(vals[vals > 0])
        data[label] = vals
    nonempty = [v for v in data.values() if v.size]
    if nonempty:
        low = min(float(v.min()) for v in nonempty)
        high = max(float(v.max()) for v in nonempty)
    else:
        low, high = 0.0, 1.0
    marks = {}  # type: Dict[str, float]
    for label, x in (markers or {}).items():
        x = float(x)
        if log_x:
            if x <= 0:
                continue
            x = math.log10(x)
        if math.isfinite(x):
            marks[label] = x
            low, high = min(low, x), max(high, x)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = {label: np.histogram(v, bins=edges)[0] for label, v in data.items()}
    top = max([int(c.max()) for c in counts.values() if c.size] + [1])
    pad = (high - low) * 0.02
    axes = Axes((low - pad, high + pad), (0, top * 1.08), title, "log10 " + xlabel if log_x else xlabel, ylabel)
    for i, (label, c) in enumerate(counts.items()):
        axes.bars(edges, c.astype(np.float64), color(i), label="{} (n={})".format(label, data[label].size))
    for j, (label, x) in enumerate(marks.items()):
        axes.vline(x, BLACK if j == 0 else color(len(counts) + j), label="{} = {}".format(label, _fmt(10 ** x if log_x else x)))
    axes.legend()
    return axes.save(path)


def roc_png(
    fpr: np.ndarray,
    tpr: np.ndarray,
    path: PathLike,
    title: str = "ROC",
    auc: Optional[float] = None,
    points: Optional[Dict[str, Tuple[float, float]]] = None,
    max_fpr: float = 1.0,
) -> str:
    """An ROC curve (x: false-positive rate, y: defect capture), written as a PNG.

    ``fpr``/``tpr``: matching arrays in [0, 1], ordered by falling cutoff. ``points``:
    ``{label: (fpr, tpr)}`` operating points to mark (e.g. the cutoff in use). ``max_fpr``
    < 1 zooms the x axis on the low-FPR end, where inspection models operate.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape or fpr.ndim != 1:
        raise InputError("fpr and tpr must be 1-D arrays of the same length",
                         found="{} and {}".format(list(fpr.shape), list(tpr.shape)))
    axes = Axes((0.0, max_fpr), (0.0, 1.02), title, "false-positive rate (PASS pairs called defect)",
                "defect capture (true-positive rate)")
    if max_fpr >= 1.0:
        axes.polyline(np.array([0.0, 1.0]), np.array([0.0, 1.0]), (190, 190, 190), 1)
    label = "ROC" if auc is None else "ROC (AUC {:.4f})".format(auc)
    if max_fpr < 1.0 and fpr.size:
        # cut the curve at the window's edge instead of squashing the rest onto it
        keep = fpr <= max_fpr
        edge_tpr = float(tpr[keep][-1]) if keep.any() else 0.0
        later = np.flatnonzero(fpr > max_fpr)
        if later.size:
            fpr = np.append(fpr[keep], [max_fpr])
            tpr = np.append(tpr[keep], [edge_tpr])
    axes.polyline(fpr, tpr, color(0), 2, label=label)
    for i, (name, (x, y)) in enumerate((points or {}).items()):
        axes.marker(float(x), float(y), color(i + 3),
                    label="{}: FPR {:.4f}, capture {:.4f}".format(name, float(x), float(y)))
    axes.legend("bottom-right")
    return axes.save(path)


def lines_png(
    x: np.ndarray,
    series: Dict[str, np.ndarray],
    path: PathLike,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: Optional[Tuple[float, float]] = None,
    markers: Optional[Dict[str, float]] = None,
) -> str:
    """Several ``y(x)`` curves on one pair of axes (e.g. FPR and capture against the cutoff)."""
    x = np.asarray(x, dtype=np.float64)
    finite_x = x[np.isfinite(x)]
    if finite_x.size == 0:
        raise InputError("lines_png needs finite x values", found="none")
    ys = {k: np.asarray(v, dtype=np.float64) for k, v in series.items()}
    if ylim is None:
        allv = np.concatenate([v[np.isfinite(v)] for v in ys.values()] + [np.zeros(0)])
        ylim = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
    axes = Axes((float(finite_x.min()), float(finite_x.max())), ylim, title, xlabel, ylabel)
    for i, (label, y) in enumerate(ys.items()):
        keep = np.isfinite(x) & np.isfinite(y)
        axes.polyline(x[keep], y[keep], color(i), 2, label=label)
    for label, value in (markers or {}).items():
        axes.vline(float(value), BLACK, label="{} = {}".format(label, _fmt(float(value))))
    axes.legend()
    return axes.save(path)

