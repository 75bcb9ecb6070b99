"""The typed model (float16 or INT8 Q/DQ in the graph), made one way for ``prepare`` and ``build``.

Both commands call :func:`make_typed_model`; it decides which pairs each step sees by one rule:

* with a TAO data set, its first ``calib_batches x batch`` pairs are the *analysis* pairs (INT8
  calibration; FP16's ``fp16-check`` range analysis) and the pairs after them are *held back*:
  the typed model is compared with float32 on those only (decisions, FPR/capture, SQNR);
* when no pair is held back (a small data set, or none), the comparison runs on ``proof_pairs``
  synthetic pairs (:func:`~changenet_trt.data.pairs.synthetic_source`);
* FP16 without a data set analyses and proves on the synthetic pairs; INT8 needs real pairs to
  calibrate on (a data set, or ``calibration_batches`` from the API).

Memory is bounded by a run of a few pairs in every step (see :mod:`.fp16`, :mod:`.int8`
and :mod:`.fp16_check`), whatever the data set's size.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from changenet_trt import __version__
from changenet_trt.contract import ContractNames, read_contract
from changenet_trt.data.dataset import load_dataset
from changenet_trt.data.pairs import dataset_source, synthetic_source
from changenet_trt.engine import fp16, int8
from changenet_trt.engine.calibration import dataset_batches
from changenet_trt.engine.options import BuildOptions
from changenet_trt.engine.precision import read_made
from changenet_trt.errors import ChangeNetError, InputError
from changenet_trt.files import PathLike, file_sha256


@dataclass
class TypedPairs:
    """Where the typed model's pairs come from: a TAO data set (``csv`` None for none, its
    ``images`` root, light ``layout``, decode ``workers``), how many of its batches of
    ``batch`` pairs are analysed (``calib_batches``), and the synthetic pairs proved on when
    none are held back (``proof_pairs``)."""

    csv: Optional[str] = None
    images: Optional[str] = None
    layout: Any = None
    workers: Optional[int] = None
    calib_batches: int = 32
    batch: int = 16
    proof_pairs: int = 64
    on_problem: Optional[Callable[[Any], None]] = None


@dataclass
class TypedResult:
    """The :class:`~changenet_trt.engine.precision.PrecisionReport` and where its pairs came from."""

    report: Any
    pairs: List[str] = field(default_factory=list)

    def summary_lines(self) -> List[str]:
        return ["pairs: " + line for line in self.pairs] + self.report.summary_lines()


def _usable_pairs(pairs: TypedPairs) -> int:
    return len(load_dataset(pairs.csv, images_dir=pairs.images, layout=pairs.layout).pairs)


def make_typed_model(
    model: PathLike,
    out: PathLike,
    precision: str,
    pairs: TypedPairs,
    fp32_layers: Sequence[str] = (),
    force: bool = False,
    method: str = "entropy",
    calibration_batches: Optional[Iterable[Tuple[Any, Any]]] = None,
    normalization: Any = None,
    names: Optional[ContractNames] = None,
    origin: Optional[PathLike] = None,
    extra_made: Optional[Dict[str, Any]] = None,
    progress: bool = True,
    progress_file: Any = None,
) -> TypedResult:
    """Write the float16 (``precision`` ``fp16``) or INT8 (``int8``) model of ``model`` (a
    dynamic- or static-batch float32 ONNX) to ``out`` with the pairs of ``pairs`` (see the module
    doc for the rule); ``fp32_layers``: nodes kept float32 (fp16) or float (int8);
    ``calibration_batches``: INT8 calibration ``(golden, sample)`` batches given by the caller
    instead of the data set's; ``progress``/``progress_file``: tqdm bars of the minutes-long steps
    (shown on a terminal only; default stderr). The rest is :func:`~changenet_trt.engine.fp16.to_fp16` /
    :func:`~changenet_trt.engine.int8.to_int8`'s."""
    if precision not in ("fp16", "int8"):
        raise InputError("unknown precision for a typed model", expected="fp16 or int8", found=repr(precision))
    names = ContractNames.of(names)
    contract = read_contract(os.fspath(model), names)
    described: List[str] = []

    def synthetic(note: str) -> Any:
        def make(c: Any, norm: Any) -> Any:
            source = synthetic_source(pairs.proof_pairs, c.input_shape, norm, layout=pairs.layout)
            if source.description + note not in described:
                described.append(source.description + note)
            return source

        return make

    def from_data_set(lo: int, hi: Optional[int]) -> Any:
        def make(c: Any, norm: Any) -> Any:
            source = dataset_source(pairs.csv, pairs.images, c.input_shape, norm, layout=pairs.layout,
                                    on_problem=pairs.on_problem)
            if lo:
                source = source.held_back(lo)
            elif hi is not None:
                source = source.head(hi)
            if source.description not in described:
                described.append(source.description)
            return source

        return make

    analysed = 0
    total = _usable_pairs(pairs) if pairs.csv else 0
    if pairs.csv and calibration_batches is None:
        analysed = min(total, pairs.calib_batches * pairs.batch)
    if pairs.csv and total > analysed:
        proof = from_data_set(analysed, None)
    elif pairs.csv and calibration_batches is None:
        proof = synthetic(" (every pair of {} was analysed; none held back)".format(pairs.csv))
    else:
        proof = synthetic(" (no --calib-csv: give a data set to prove on your own pairs)" if not pairs.csv else "")
    if precision == "fp16":
        analysis = from_data_set(0, analysed) if pairs.csv else None
        report = fp16.to_fp16(
            model, out, fp32_nodes=list(fp32_layers), make_source=proof, analysis_source=analysis, force=force,
            normalization=normalization, names=names, origin=origin, extra_made=extra_made,
            progress=progress, progress_file=progress_file)
        return TypedResult(report, described)
    count: Optional[int] = None
    if calibration_batches is not None:
        batches: Any = calibration_batches
        described.append("calibration batches given by the caller")
    elif pairs.csv:
        count, batches = dataset_batches(pairs.csv, contract.input_shape, pairs.batch, pairs.calib_batches,
                                         images_dir=pairs.images, layout=pairs.layout, normalization=normalization,
                                         workers=pairs.workers)
        described.append("calibration on the first {} pairs of {}".format(count * pairs.batch, pairs.csv))
    else:
        raise InputError("INT8 calibrates its Q/DQ model on real pairs",
                         expected="a TAO data set (--calib-csv CSV [--calib-images DIR])", found="none")
    report = int8.to_int8(
        model, out, batches, method=method, make_source=proof, exclude=list(fp32_layers), normalization=normalization,
        names=names, origin=origin, extra_made=extra_made,
        calib_total=count * pairs.batch if count is not None else None, progress=progress,
        progress_file=progress_file)
    return TypedResult(report, described)


# -- where a build caches the typed model ----------------------------------------------------------
def calibration_digest(options: BuildOptions) -> Optional[str]:
    """sha256 of what the typed model's pairs come from: the CSV's bytes, the images folder,
    the number of batches and the light layout (None without ``--calib-csv``)."""
    if not options.calib_csv:
        return None
    try:
        csv_sha256 = file_sha256(options.calib_csv)
    except OSError as exc:
        raise InputError("cannot read --calib-csv {}".format(options.calib_csv), found=str(exc)) from None
    layout = options.calib_layout.describe() if options.calib_layout is not None else None
    parts = [csv_sha256, os.path.abspath(options.calib_images) if options.calib_images else None,
             options.calib_batches, layout]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def typed_inputs(options: BuildOptions, precision: str, onnx_sha256: str, preprocess: str) -> Dict[str, Any]:
    """What a typed model is made from; the build caches it by this (recorded in its metadata)."""
    inputs: Dict[str, Any] = {
        "source_sha256": onnx_sha256, "precision": precision, "fp32_layers": sorted(options.fp32_layers),
        "calibration": calibration_digest(options), "preprocess": preprocess, "package": __version__,
        "contract": dict(sorted(options.names.as_dict().items())),
    }
    if precision == "int8":
        inputs.update(calib_method=options.calib_method, calib_batch=options.profile.opt)
    elif not options.calib_csv:
        inputs["proof_pairs"] = options.proof_pairs
    return inputs


def typed_path(engines_dir: str, stem: str, precision: str, inputs: Dict[str, Any]) -> str:
    """``engines/<model>.<precision>-<short hash of its inputs>.onnx``."""
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()[:10]
    return os.path.join(engines_dir, "{}.{}-{}.onnx".format(stem, precision, key))


def typed_model_matches(path: str, inputs: Dict[str, Any]) -> bool:
    """Is ``path`` a typed model made from ``inputs`` (reusable)?"""
    if not os.path.isfile(path):
        return False
    try:
        made = read_made(path)
    except ChangeNetError:
        return False
    return bool(made) and made.get("build_inputs") == inputs
