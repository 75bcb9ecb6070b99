"""TAO's ChangeNet-Classification data layout: a CSV of golden/sample pairs plus light images.

The CSV has (at least) the columns ``input_path, golden_path, label, object_name`` (``label``
may be absent when the pairs are only scored, as TAO's ``inference`` reads them); any other
column is kept as it is (``Dataset.header``/``records``) for the outputs that carry it. Every value is read as text, so an ``object_name`` like ``0012`` keeps its
leading zeros. ``label == "PASS"`` is a good part, any other label (``MISSING``, ...) a defect
of that type. Light images are found as::

    <images>/<input_path>/<object_name>_<Light><ext>     (sample, one file per light)
    <images>/<golden_path>/<object_name>_<Light><ext>    (golden)
    <images>/<input_path>/<object_name><ext>              (single-image mode: no lights)

TAO's defaults: lights LowAngleLight, SolderLight, UniformLight, WhiteLight (in that order),
extension ``.jpg``, each light resized to 128x128 and stacked along H (``linear``) into the
model's 512x128 input; ``grid`` places the lights in a rows x cols grid instead.

A row whose files are missing or unreadable is a :class:`RowProblem` (CSV line, object, path,
reason): it is skipped, or, with ``strict``, the run stops with a DatasetError.
"""

import csv
import logging
import os
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import cv2
import numpy as np

from changenet_trt.data.preprocess import (
    CONCAT_TYPES,
    Box,
    Normalization,
    bounded_workers,
    decode_image,
    get_normalization,
    tile_boxes,
    wait_all,
    write_normalized,
)
from changenet_trt.errors import ChangeNetError, DatasetError
from changenet_trt.files import PathLike
from changenet_trt.threads import ForkSafePool

TAO_LIGHTS = ("LowAngleLight", "SolderLight", "UniformLight", "WhiteLight")
TAO_EXT = ".jpg"
REQUIRED_COLUMNS = ("input_path", "golden_path", "label", "object_name")
#: the columns a CSV that is only scored (no truth) needs
UNLABELED_COLUMNS = ("input_path", "golden_path", "object_name")
PASS_LABEL = "PASS"
#: labels that a user probably meant as good parts (TAO reads only the exact "PASS" as good)
_GOOD_LOOKING_LABELS = ("PASS", "PASSED", "OK", "GOOD", "NORMAL")
_MODEL_SUFFIXES = (".onnx", ".engine", ".plan", ".trt")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: a light image whose aspect ratio differs this much from its tile's is reported (stretched)
STRETCH_WARNING = 3.0
_log = logging.getLogger(__name__)



@dataclass(frozen=True)
class LightLayout:
    """How one model input is assembled from light images.

    ``lights``: light names in input order (empty: one image per input, named
    ``<object_name><ext>``); ``ext``: file extension with its dot; ``concat``: ``linear``
    (stack along H) or ``grid``; ``grid``: ``(rows, cols)`` for ``grid`` (default 2 x n/2).
    """

    lights: Tuple[str, ...] = TAO_LIGHTS
    ext: str = TAO_EXT
    concat: str = "linear"
    grid: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.concat not in CONCAT_TYPES:
            raise DatasetError("unknown concatenation", expected=" or ".join(CONCAT_TYPES), found=repr(self.concat))
        if len(set(self.lights)) != len(self.lights):
            raise DatasetError("a light is named twice", found=", ".join(self.lights))
        if self.ext and not self.ext.startswith("."):
            object.__setattr__(self, "ext", "." + self.ext)

    @property
    def count(self) -> int:
        """Images per model input (1 in single-image mode)."""
        return max(1, len(self.lights))

    def file_names(self, object_name: str) -> List[str]:
        """File names of one object's images, in input order."""
        if not self.lights:
            return [object_name + self.ext]
        return ["{}_{}{}".format(object_name, light, self.ext) for light in self.lights]

    def boxes(self, height: int, width: int) -> List[Box]:
        """Tile windows ``(top, left, h, w)`` in a ``height x width`` model input."""
        return tile_boxes(self.count, height, width, self.concat, self.grid)

    def describe(self) -> str:
        if not self.lights:
            return "single image per input (<object_name>{})".format(self.ext)
        how = "stacked along H" if self.concat == "linear" else "in a {} grid".format(
            "x".join(str(v) for v in (self.grid or (2, self.count // 2))))
        return "{} lights {} ({}), <object_name>_<Light>{}".format(self.count, how, ", ".join(self.lights), self.ext)


def parse_lights(text: str) -> Tuple[str, ...]:
    """``"A,B,C"`` -> ``("A", "B", "C")``; ``"none"`` or ``""`` -> ``()`` (single-image mode)."""
    text = text.strip()
    if text.lower() in ("", "none", "single"):
        return ()
    lights = tuple(part.strip() for part in text.split(","))
    if any(not light for light in lights):
        raise DatasetError("empty light name in the light list", found=repr(text))
    return lights


def parse_grid(text: str) -> Tuple[int, int]:
    """``"2x2"`` -> ``(2, 2)``."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise DatasetError("cannot read the grid", expected="ROWSxCOLS such as 2x2", found=repr(text)) from None
    if rows < 1 or cols < 1:
        raise DatasetError("grid rows and columns must be positive", found=repr(text))
    return rows, cols


@dataclass(frozen=True)
class Pair:
    """One CSV row: a sample and its golden, with their light files in input order.

    ``index`` is the 0-based data row; ``line`` the row's line number in the CSV file (the
    header is line 1), which is what reports show.
    """

    index: int
    line: int
    object_name: str
    input_path: str
    golden_path: str
    label: str
    sample_files: Tuple[str, ...]
    golden_files: Tuple[str, ...]

    @property
    def is_defect(self) -> bool:
        return self.label != PASS_LABEL


@dataclass(frozen=True)
class RowProblem:
    """A row that cannot be used: its CSV line, object name, the offending path and why."""

    line: int
    object_name: str
    path: str
    reason: str

    def __str__(self) -> str:
        where = "line {}".format(self.line)
        if self.object_name:
            where += " (object {})".format(self.object_name)
        return "{}: {}{}".format(where, self.reason, ": {}".format(self.path) if self.path else "")

    def to_dict(self) -> Dict[str, object]:
        return {"line": self.line, "object_name": self.object_name, "path": self.path, "reason": self.reason}


@dataclass
class Dataset:
    """Usable pairs of a CSV plus the rows that were set aside (``problems``) and one-line ``warnings`` about it.

    ``header``: the CSV's header as written; ``records``: every data row ``(line, values)`` as
    read (``Pair.index`` indexes it), so outputs can carry every input column; ``labelled``:
    whether the CSV has a ``label`` column.
    """

    csv_path: str
    images_dir: str
    layout: LightLayout
    pairs: List[Pair]
    problems: List[RowProblem] = field(default_factory=list)
    rows: int = 0
    warnings: List[str] = field(default_factory=list)
    header: List[str] = field(default_factory=list)
    records: List[Tuple[int, List[str]]] = field(default_factory=list)
    labelled: bool = True
    #: every folder an image of a row lies in, set-aside rows included (outputs must stay out of them)
    image_folders: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def labels(self) -> List[str]:
        return [p.label for p in self.pairs]

    @property
    def is_defect(self) -> np.ndarray:
        """bool ``[N]``: True where the label is not PASS."""
        return np.array([p.is_defect for p in self.pairs], dtype=bool)


def _read_rows(csv_path: str, required: Sequence[str] = REQUIRED_COLUMNS
               ) -> Tuple[Dict[str, int], List[Tuple[int, List[str]]], List[str]]:
    """Header column indexes of the TAO columns present (``required`` must be), the data rows
    with their line numbers, the header."""
    if os.path.isdir(csv_path):
        inside = sorted(n for n in os.listdir(csv_path) if n.lower().endswith(".csv"))
        raise DatasetError("CSV path is a folder, not a CSV file: {}".format(csv_path),
                           expected="the data set's CSV{}".format(
                               " (it holds {})".format(", ".join(inside[:5])) if inside else ""))
    if not os.path.isfile(csv_path):
        raise DatasetError("CSV file not found: {}".format(csv_path))
    if os.path.splitext(csv_path)[1].lower() in _MODEL_SUFFIXES:
        raise DatasetError("{} is a model file, not a CSV".format(csv_path),
                           expected="the data set's CSV (the model is the first argument)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = None  # type: Optional[List[str]]
            rows = []  # type: List[Tuple[int, List[str]]]
            end = 0  # the line the previous record ended on (csv.reader's line_num is a record's last line)
            for values in reader:
                start, end = end + 1, reader.line_num
                swallowed = _swallowed_rows(values, header) if end > start and header is not None else None
                if swallowed is not None:
                    # a stray quote opens a field that swallows every line after it, up to the next quote
                    raise DatasetError(
                        "malformed CSV {}: line {}: a quote opens a field that runs on to line {}, taking in "
                        "what look like rows".format(csv_path, start, end),
                        expected="quotes in pairs (a stray \" makes the lines after it part of one field)",
                        found=repr(swallowed[:60]))
                if not any(v.strip() for v in values):
                    continue  # blank line
                if header is None:
                    header = values
                    continue
                rows.append((start, values))
    except UnicodeDecodeError as exc:
        raise DatasetError("cannot read {} as text".format(csv_path), expected="a UTF-8 CSV file", found=str(exc)) from None
    except csv.Error as exc:
        raise DatasetError("malformed CSV {}: line {} (the record starting there ends at line {})".format(
            csv_path, end + 1, reader.line_num), found=str(exc)) from None
    if header is None:
        raise DatasetError(
            "CSV file {} is empty".format(csv_path),
            expected="a header line with the columns {}".format(", ".join(required)),
            found="no lines",
        )
    names = [h.strip().lower() for h in header]
    columns = {}  # type: Dict[str, int]
    for column in REQUIRED_COLUMNS:
        if column in names:
            columns[column] = names.index(column)
    missing = [c for c in required if c not in columns]
    if missing:
        separator = next((sep for sep in (";", "\t", "|") if len(header) == 1 and sep in header[0]), None)
        raise DatasetError(
            "CSV {} lacks the column(s) {}{}".format(csv_path, ", ".join(missing), "" if separator is None else
                                                    " (its fields are separated by {!r}: save it with commas)".format(separator)),
            expected="a header with {} (TAO's layout; other columns are kept as they are)".format(
                ", ".join(required)),
            found="header {}".format(", ".join(repr(h) for h in header)),
        )
    return columns, rows, header


def _swallowed_rows(values: Sequence[str], header: Sequence[str]) -> Optional[str]:
    """The field of a record that spans lines when a line inside it looks like a whole row (as many
    commas as the header has), i.e. a stray quote took in the rows after it; None for a quoted
    field that merely holds line breaks (a note over several lines)."""
    for value in values:
        inner = value.splitlines()[1:]
        if any(line.count(",") >= len(header) - 1 for line in inner):
            return value
    return None


def load_dataset(
    csv_path: PathLike,
    images_dir: Optional[PathLike] = None,
    layout: Optional[LightLayout] = None,
    check_files: bool = True,
    strict: bool = False,
    on_problem: Optional[Callable[[RowProblem], None]] = None,
    on_warning: Optional[Callable[[str], None]] = None,
    labels: bool = True,
) -> Dataset:
    """Read a TAO CSV and resolve every row's light files.

    ``labels``: the ``label`` column is required (False: the pairs are only scored, as TAO's
    ``inference`` reads them; a ``label`` column, if any, is then kept as any other column and
    ``Pair.label`` is its text, possibly empty).

    ``images_dir`` defaults to the CSV's folder. ``check_files`` tests that every file exists
    (a cheap ``stat`` per file), so rows with missing lights are known before any decoding.
    Rows with a missing file, too few fields or an empty name/label become ``problems``
    (reported through ``on_problem`` once the first usable row is found, then as they come: a
    data set with no usable row raises one error instead of reporting every row); with
    ``strict`` the first one raises DatasetError instead. Raises DatasetError for an
    unreadable/empty CSV, a wrong header, or when no row is usable (saying, where it can tell,
    which extension, lights or images folder the files do have).

    Labels that look like a good part but are not exactly ``PASS`` (``pass``, ``Pass``, ``OK``)
    are counted as defects, as TAO counts them; they are reported once, with counts, through
    ``on_warning`` (default: this module's logger) and kept in ``Dataset.warnings``.
    """
    csv_path = os.fspath(csv_path)
    layout = layout or LightLayout()
    images_dir = os.fspath(images_dir) if images_dir is not None else (os.path.dirname(os.path.abspath(csv_path)))
    if not os.path.isdir(images_dir):
        raise DatasetError("image folder not found: {}".format(images_dir))
    columns, rows, header = _read_rows(csv_path, REQUIRED_COLUMNS if labels else UNLABELED_COLUMNS)
    if not rows:
        raise DatasetError("CSV {} has a header but no data rows".format(csv_path), expected="at least one pair")
    width = max(columns.values()) + 1
    pairs = []  # type: List[Pair]
    problems = []  # type: List[RowProblem]
    first_missing = None  # type: Optional[Tuple[str, List[str]]]

    def problem(item: RowProblem) -> None:
        if strict:
            raise DatasetError("{} (--strict stops at the first unusable row)".format(item))
        problems.append(item)
        if on_problem is not None and pairs:
            on_problem(item)

    folders = set()  # type: Set[str]
    for index, (line, values) in enumerate(rows):
        if len(values) < width:
            problem(RowProblem(line, "", "", "row has {} fields; the columns {} need {}".format(
                len(values), ", ".join(c for c in REQUIRED_COLUMNS if c in columns), width)))
            continue
        object_name = values[columns["object_name"]].strip()
        input_path = values[columns["input_path"]].strip()
        golden_path = values[columns["golden_path"]].strip()
        label = values[columns["label"]].strip() if "label" in columns else ""
        empty = [c for c, v in (("object_name", object_name), ("input_path", input_path),
                                ("golden_path", golden_path), ("label", label)) if not v and (labels or c != "label")]
        if empty:
            problem(RowProblem(line, object_name, "", "empty {}".format(", ".join(empty))))
            continue
        names = layout.file_names(object_name)
        sample_files = tuple(os.path.join(images_dir, input_path, n) for n in names)
        golden_files = tuple(os.path.join(images_dir, golden_path, n) for n in names)
        folders.update(os.path.dirname(p) for p in sample_files + golden_files)
        if check_files:
            missing = [p for p in sample_files + golden_files if not os.path.isfile(p)]
            if missing:
                if first_missing is None:
                    first_missing = (object_name, missing)
                more = " (and {} more)".format(len(missing) - 1) if len(missing) > 1 else ""
                problem(RowProblem(line, object_name, missing[0], "missing file{}".format(more)))
                continue
        if not pairs and on_problem is not None:
            for item in problems:  # held back until a row proved usable
                on_problem(item)
        pairs.append(Pair(index, line, object_name, input_path, golden_path, label, sample_files, golden_files))
    if not pairs:
        hint = None
        if first_missing is not None and len(problems) == len(rows):
            hint = _explain_missing(first_missing[0], first_missing[1], layout, images_dir, csv_path)
        raise DatasetError(
            "no usable pair in {} ({} rows, all set aside){}".format(
                csv_path, len(rows), "" if hint is None else ": " + hint),
            expected="rows whose light files exist under {} as {}".format(images_dir, layout.describe()),
            found=str(problems[0]) if problems else "nothing",
        )
    warnings = _label_warnings(pairs) if labels else []
    for text in warnings:
        (on_warning or _log.warning)(text)
    return Dataset(csv_path, images_dir, layout, pairs, problems, rows=len(rows), warnings=warnings, header=header,
                   records=rows, labelled="label" in columns, image_folders=sorted(folders))


def extra_columns(header: Sequence[str]) -> List[int]:
    """Indexes of the header's columns that are not TAO's four (a ``component``, a board id, ...), in order."""
    return [i for i, name in enumerate(header) if name.strip().lower() not in REQUIRED_COLUMNS]


def _label_warnings(pairs: Sequence[Pair]) -> List[str]:
    """One line naming, with counts, the labels that look like a good part but are not ``PASS``."""
    lookalike = Counter(p.label for p in pairs if p.label != PASS_LABEL and _plain(p.label) in _GOOD_LOOKING_LABELS)
    if not lookalike:
        return []
    counts = ", ".join("{} row(s) labelled {!r}".format(n, label) for label, n in sorted(lookalike.items()))
    return ["{} count as defects: only the label {} (upper case) is a good part, as TAO reads it; "
            "relabel them {} if they are good parts".format(counts, PASS_LABEL, PASS_LABEL)]


def _plain(label: str) -> str:
    """``label`` as a reader sees it: compatibility forms folded (fullwidth ``ＰＡＳＳ`` -> ``PASS``, NFKC),
    invisible format characters (zero-width space, BOM: Unicode category Cf) dropped, upper case."""
    folded = unicodedata.normalize("NFKC", label)
    return "".join(c for c in folded if unicodedata.category(c) != "Cf").strip().upper()


def _explain_missing(
    object_name: str, missing: Sequence[str], layout: LightLayout, images_dir: str, csv_path: str
) -> Optional[str]:
    """Why one row's files are not where ``layout`` looks (another extension or lights, a wrong images folder).

    Called when no row at all is usable, with the first row's missing files: a clue worth one
    folder listing.
    """
    folder = os.path.dirname(missing[0])
    stem, ext = os.path.splitext(object_name)
    if ext.lower() in _IMAGE_SUFFIXES:
        return "object_name {!r} ends with a file extension; TAO's object_name has none (files are {})".format(
            object_name, layout.file_names(stem)[0])
    if "\\" in os.path.relpath(folder, images_dir) and os.sep != "\\":
        return "the CSV's paths use backslashes (Windows): {} is not a folder here".format(
            os.path.relpath(folder, images_dir))
    if not os.path.isdir(folder):
        relative = os.path.relpath(folder, images_dir)
        for root in (os.path.dirname(os.path.abspath(csv_path)), os.path.dirname(os.path.abspath(images_dir))):
            if os.path.isdir(os.path.join(root, relative)) and os.path.abspath(root) != os.path.abspath(images_dir):
                return "the folder {} does not exist, but {} does: the CSV's paths are relative to {} (--images {})".format(
                    folder, os.path.join(root, relative), root, root)
        return "the folder {} does not exist (the CSV's paths are relative to the images folder {})".format(
            folder, images_dir)
    listings = {}  # type: Dict[str, List[str]]

    def names_in(path: str) -> List[str]:
        if path not in listings:
            try:
                listings[path] = sorted(os.listdir(path))
            except OSError:
                listings[path] = []
        return listings[path]

    # the same names with another extension (.png, or .JPG on a case-sensitive file system)
    common: Optional[Set[str]] = None
    for path in missing:
        stem = os.path.splitext(os.path.basename(path))[0]
        found = {os.path.splitext(n)[1] for n in names_in(os.path.dirname(path)) if os.path.splitext(n)[0] == stem}
        common = found if common is None else common & found
        if not common:
            break
    if common:
        ext = sorted(common)[0]
        return "no file has the extension {}, but they exist as {} (--ext {})".format(layout.ext, ext, ext)
    # the object's files under other light names, or as one image
    own = [n for n in names_in(folder) if os.path.splitext(n)[0] == object_name
           or n.startswith(object_name + "_")]
    if not own:
        return None
    single = [n for n in own if os.path.splitext(n)[0] == object_name]
    if single and layout.lights:
        ext = os.path.splitext(single[0])[1]
        return "{} holds {} (one image, no lights): --lights none{}".format(
            folder, single[0], "" if ext == layout.ext else " --ext " + ext)
    lights = sorted({os.path.splitext(n)[0][len(object_name) + 1:] for n in own if n not in single})
    exts = sorted({os.path.splitext(n)[1] for n in own if n not in single})
    return "{} holds {}: its lights are {} (--lights {} in the model's order{})".format(
        folder, ", ".join(own[:6]) + (", ..." if len(own) > 6 else ""), ", ".join(lights), ",".join(lights),
        "" if exts == [layout.ext] else "; --ext " + exts[0])


def layout_warning(layout: LightLayout, height: int, width: int) -> Optional[str]:
    """Why ``layout`` is probably not what a ``height x width`` model input was trained with (None: it fits).

    TAO resizes every light to a square tile: 4 lights stacked along H make 512x128 (128x128
    tiles), the same 4 in a 2x2 grid make 256x256. A layout whose tiles are not square, where the
    other concatenation would make them square, stretches every light (a 256x256 model read
    with 4 linear lights gets 64x256 tiles) and still runs, with scores that mean little.
    """
    if layout.count < 2:
        return None
    try:
        tile_h, tile_w = layout.boxes(height, width)[0][2:]
        other = "grid" if layout.concat == "linear" else "linear"
        other_h, other_w = tile_boxes(layout.count, height, width, other)[0][2:]
    except ChangeNetError:
        return None
    if tile_h == tile_w or other_h != other_w:
        return None
    return ("the model input is {}x{} (HxW) and {} lights {} make {}x{} tiles, each light stretched; "
            "the {} layout makes square {}x{} tiles: did you mean --concat {}?".format(
                height, width, layout.count, "stacked along H (linear)" if layout.concat == "linear" else "in a grid",
                tile_h, tile_w, other, other_h, other_w, other))


class PairLoader:
    """Fills a runner's input buffers with pairs of a :class:`Dataset` (the ``fill`` of ``run_pipeline``).

    ``fill(golden_dst, sample_dst, lo, hi)`` decodes pairs ``[lo, hi)`` of ``pairs`` with
    ``workers`` threads (the caller and ``workers - 1`` helpers, one contiguous share of pairs
    each) straight into the ``[hi-lo, 3, H, W]`` views. A pair whose files cannot be decoded is recorded in
    ``failed`` (index -> RowProblem, reported through ``on_problem``) and its rows are
    zero-filled so the batch still runs; drop its score afterwards. With ``strict`` the first
    such pair raises DatasetError. A layout that probably does not fit the model
    (:func:`layout_warning`) is reported once through ``on_warning`` (default: this module's
    logger) and kept in ``warnings``.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        layout: LightLayout,
        input_shape: Tuple[int, int, int],
        normalization: Union[str, Normalization, None] = None,
        workers: Optional[int] = None,
        strict: bool = False,
        on_problem: Optional[Callable[[RowProblem], None]] = None,
        on_warning: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.pairs = list(pairs)
        self.layout = layout
        self.boxes = layout.boxes(int(input_shape[1]), int(input_shape[2]))
        self._warn = on_warning or _log.warning
        self.warnings = [text for text in [layout_warning(layout, int(input_shape[1]), int(input_shape[2]))] if text]
        for text in self.warnings:
            self._warn(text)
        self._stretch_checked = bool(self.warnings)  # one warning about the layout is enough
        self.normalization = get_normalization(normalization)
        self.strict = strict
        self.on_problem = on_problem
        self.failed = {}  # type: Dict[int, RowProblem]
        self._lock = threading.Lock()

        self._opencv_error = cv2.error
        self.workers = bounded_workers(workers)  # what is reported is what runs
        # the calling thread decodes a share too: workers - 1 helper threads
        self._pool = None  # type: Optional[ForkSafePool]
        if self.workers > 1:
            self._pool = ForkSafePool(max_workers=self.workers - 1, thread_name_prefix="changenet-load")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "PairLoader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _one(self, index: int, golden_dst: np.ndarray, sample_dst: np.ndarray) -> None:
        pair = self.pairs[index]
        path = ""
        try:
            for files, dst in ((pair.golden_files, golden_dst), (pair.sample_files, sample_dst)):
                for path, (top, left, h, w) in zip(files, self.boxes):
                    image = decode_image(path)
                    if not self._stretch_checked:
                        self._check_stretch(image, path, h, w)
                    write_normalized(dst[:, top:top + h, left:left + w], image, self.normalization, source=path)
        except (ChangeNetError, self._opencv_error) as exc:  # OpenCV's own errors: that image, not the run
            golden_dst[...] = 0
            sample_dst[...] = 0
            reason = _reason(exc, path) if isinstance(exc, ChangeNetError) else "OpenCV cannot convert the image ({})".format(
                str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
            item = RowProblem(pair.line, pair.object_name, path, reason)
            if self.strict:
                raise DatasetError("{} (--strict stops at the first unusable row)".format(item)) from None
            with self._lock:
                self.failed[index] = item
            if self.on_problem is not None:
                self.on_problem(item)

    def _check_stretch(self, image: np.ndarray, path: str, tile_h: int, tile_w: int) -> None:
        """Warn once when the first decoded light is stretched well out of shape into its tile."""
        with self._lock:
            if self._stretch_checked:
                return
            self._stretch_checked = True
        height, width = image.shape[:2]
        stretch = (tile_h / tile_w) / (height / width)
        if max(stretch, 1.0 / stretch) < STRETCH_WARNING:
            return
        text = ("the light images are {}x{} (HxW, e.g. {}) but each fills a {}x{} tile of the model input ({}), "
                "stretched {:.1f}x out of shape: the model probably takes other lights (--lights) or another "
                "layout (--concat)".format(height, width, path, tile_h, tile_w, self.layout.describe(),
                                          max(stretch, 1.0 / stretch)))
        self.warnings.append(text)
        self._warn(text)

    def _run(self, start: int, stop: int, lo: int, golden_dst: np.ndarray, sample_dst: np.ndarray) -> None:
        for i in range(start, stop):
            self._one(i, golden_dst[i - lo], sample_dst[i - lo])

    def fill(self, golden_dst: np.ndarray, sample_dst: np.ndarray, lo: int, hi: int) -> None:
        """Write pairs ``[lo, hi)`` into ``golden_dst``/``sample_dst`` ``[hi-lo, 3, H, W]``.

        The range is cut into one contiguous share per worker; the calling thread decodes the
        first share itself while the helper threads decode the others.
        """
        count = hi - lo
        shares = max(1, min(self.workers, count))
        bounds = [lo + count * k // shares for k in range(shares + 1)]
        futures = []
        if self._pool is not None:
            futures = [self._pool.submit(self._run, bounds[k], bounds[k + 1], lo, golden_dst, sample_dst)
                       for k in range(1, shares)]
        try:
            self._run(bounds[0], bounds[1], lo, golden_dst, sample_dst)
        finally:
            wait_all(futures)  # no helper may still write into the buffers when this returns


def _reason(exc: ChangeNetError, path: str) -> str:
    """The error's text without the path (a RowProblem shows the path once, at the end)."""
    text = exc.message.replace(": " + path, "").replace(path + " ", "image ").replace(" " + path, "")
    if exc.found is not None:
        text += " ({})".format(exc.found)
    return text
