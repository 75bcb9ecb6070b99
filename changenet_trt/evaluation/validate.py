"""``changenet-trt validate``: a built engine against its ONNX model on the same real pairs.

Both models run through the library's own runners (the engine on TensorRT, the ONNX file on
ONNX Runtime in float32), on the same preprocessed pairs. The report gives per-output error
statistics and, above all, the decisions that flip at the cutoff, with FPR and defect capture
of both when the pairs are labelled. :func:`validate` returns a :class:`ValidationReport`;
``report.passed`` says whether the user's tolerances hold:

* every raw output element satisfies ``|engine - onnx| <= atol + rtol * |onnx|``
  (numpy's ``isclose`` rule);
* at most ``max_flips`` pairs change their decision (``score > cutoff``).
"""

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from changenet_trt.api import load
from changenet_trt.contract import ContractNames, score
from changenet_trt.data.pairs import FillFn, PairSource
from changenet_trt.errors import InputError
from changenet_trt.evaluation.metrics import confusion
from changenet_trt.evaluation.stats import median, percentile
from changenet_trt.files import write_json_report
from changenet_trt.threads import release_freed_memory

DEFAULT_ATOL = 1e-2
DEFAULT_RTOL = 1e-2
DEFAULT_MAX_FLIPS = 0
DEFAULT_PAIRS = 64
#: pairs preprocessed at once (then run through both models): bounds memory at ~100 MB
CHUNK_PAIRS = 64


@dataclass
class ErrorStats:
    """Elementwise error of ``test`` against ``ref`` (same shape). ``rel`` is
    ``|test - ref| / |ref|`` (with ``|ref|`` floored at 1e-12); median and percentiles by trtexec's
    rules (:mod:`changenet_trt.evaluation.stats`: ``inf`` when no element is finite)."""

    shape: List[int]
    elements: int
    abs_max: float
    abs_mean: float
    abs_median: float
    abs_p99: float
    rel_max: float
    rel_mean: float
    rel_p99: float
    worst_index: List[int]  # where |test - ref| is largest
    ref_at_worst: float
    test_at_worst: float
    nonfinite: int  # positions where exactly one side is NaN/Inf, or both but different
    beyond_tolerance: int  # elements failing |test - ref| <= atol + rtol * |ref|
    atol: float
    rtol: float
    #: 10 log10(sum ref^2 / sum (test - ref)^2) over the finite elements, in dB (inf: identical)
    sqnr_db: float = float("inf")


def sqnr_db(signal_sq: float, noise_sq: float) -> float:
    """Signal-to-quantization-noise ratio in dB from ``sum ref^2`` and ``sum (test - ref)^2``
    (inf when there is no noise, -inf when there is no signal)."""
    if noise_sq <= 0:
        return float("inf")
    if signal_sq <= 0:
        return float("-inf")
    return float(10.0 * np.log10(signal_sq / noise_sq))


def error_stats(ref: np.ndarray, test: np.ndarray, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> ErrorStats:
    """Compare two raw outputs of the same shape (float64 arithmetic)."""
    ref = np.asarray(ref, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if ref.shape != test.shape:
        raise InputError("outputs to compare have different shapes", expected=list(ref.shape), found=list(test.shape))
    if ref.size == 0:
        raise InputError("nothing to compare", expected="at least one output element", found=0)
    both_finite = np.isfinite(ref) & np.isfinite(test)
    same_special = ~both_finite & ((ref == test) | (np.isnan(ref) & np.isnan(test)))
    nonfinite = int(np.count_nonzero(~both_finite & ~same_special))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: masked out just below
        diff = np.where(both_finite, np.abs(test - ref), 0.0)
    diff = np.where(both_finite | same_special, diff, np.inf)
    rel = diff / np.maximum(np.abs(np.where(both_finite, ref, 0.0)), 1e-12)
    flat_abs = np.sort(diff, axis=None)
    flat_rel = np.sort(rel, axis=None)
    finite_abs = flat_abs[np.isfinite(flat_abs)]
    finite_rel = flat_rel[np.isfinite(flat_rel)]
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    allowed = atol + rtol * np.abs(np.where(both_finite, ref, 0.0))
    beyond = int(np.count_nonzero(~(diff <= allowed)))
    return ErrorStats(
        shape=[int(d) for d in ref.shape],
        elements=int(ref.size),
        abs_max=float(flat_abs[-1]),
        abs_mean=float(finite_abs.mean()) if finite_abs.size else float("inf"),
        abs_median=median(finite_abs),
        abs_p99=percentile(flat_abs, 99),
        rel_max=float(flat_rel[-1]),
        rel_mean=float(finite_rel.mean()) if finite_rel.size else float("inf"),
        rel_p99=percentile(flat_rel, 99),
        worst_index=[int(i) for i in worst],
        ref_at_worst=float(ref[worst]),
        test_at_worst=float(test[worst]),
        nonfinite=nonfinite,
        beyond_tolerance=beyond,
        atol=float(atol),
        rtol=float(rtol),
        sqnr_db=sqnr_db(float(np.sum(np.where(both_finite, ref, 0.0) ** 2)),
                        float(np.sum(np.where(both_finite, diff, 0.0) ** 2))),
    )


@dataclass
class Flips:
    """Pairs whose decision (``score > cutoff``) differs between the reference and the test.

    ``raised``: the test calls a defect where the reference says pass (new false alarms when
    the reference is right); ``dropped``: the test passes a pair the reference calls a defect
    (missed defects). ``near``: pairs whose reference score lies within the largest observed
    score error of the cutoff (they could flip on other data).
    """

    cutoff: float
    indices: List[int]
    raised: List[int]
    dropped: List[int]
    near: int
    max_score_error: float

    @property
    def count(self) -> int:
        return len(self.indices)


def decision_flips(ref_scores: np.ndarray, test_scores: np.ndarray, cutoff: float) -> Flips:
    """Count decision flips at ``cutoff`` between two score vectors ``[N]`` (float)."""
    ref = np.asarray(ref_scores, dtype=np.float64).ravel()
    test = np.asarray(test_scores, dtype=np.float64).ravel()
    if ref.shape != test.shape:
        raise InputError("score vectors have different lengths", expected=ref.size, found=test.size)
    ref_defect = ref > cutoff
    # NaN compares False: a NaN score is a pass decision, which is what thresholding it gives
    test_defect = test > cutoff
    flipped = np.flatnonzero(ref_defect != test_defect)
    raised = np.flatnonzero(~ref_defect & test_defect)
    dropped = np.flatnonzero(ref_defect & ~test_defect)
    err = np.abs(test - ref)
    err = err[np.isfinite(err)]
    max_err = float(err.max()) if err.size else 0.0
    near = int(np.count_nonzero(np.abs(ref - cutoff) <= max_err)) if max_err > 0 else 0
    return Flips(
        cutoff=float(cutoff),
        indices=[int(i) for i in flipped],
        raised=[int(i) for i in raised],
        dropped=[int(i) for i in dropped],
        near=near,
        max_score_error=max_err,
    )


@dataclass
class ValidationReport:
    """What :func:`validate` measured. ``reference`` is the ONNX (float32) side, ``test`` the
    engine side; ``metrics`` holds FPR/capture per side when the pairs carry labels."""

    test_model: str
    test_backend: str
    reference_model: str
    reference_backend: str
    pairs: int
    source: str
    output_name: str
    output_kind: str
    raw: ErrorStats
    score: ErrorStats
    flips: Flips
    max_flips: int
    ids: List[str] = field(default_factory=list)
    ref_scores: Optional[np.ndarray] = None
    test_scores: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    metrics: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def failures(self) -> List[str]:
        """Why the validation failed (empty when it passed)."""
        why = []
        if self.raw.beyond_tolerance:
            why.append("{} of {} output values beyond atol {:g} + rtol {:g} * |onnx| (max |diff| {:.4g})".format(
                self.raw.beyond_tolerance, self.raw.elements, self.raw.atol, self.raw.rtol, self.raw.abs_max))
        if self.raw.nonfinite:
            why.append("{} output values are NaN/Inf on one side only".format(self.raw.nonfinite))
        if self.flips.count > self.max_flips:
            why.append("{} decision flips at cutoff {:g} (allowed: {})".format(
                self.flips.count, self.flips.cutoff, self.max_flips))
        return why

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> Dict[str, Any]:
        data = {
            "test": {"model": self.test_model, "backend": self.test_backend},
            "reference": {"model": self.reference_model, "backend": self.reference_backend},
            "pairs": self.pairs,
            "source": self.source,
            "output": self.output_name,
            "output_kind": self.output_kind,
            "raw_error": asdict(self.raw),
            "score_error": asdict(self.score),
            "cutoff": self.flips.cutoff,
            "flips": self.flips.count,
            "flips_raised": self.flips.raised,
            "flips_dropped": self.flips.dropped,
            "flipped_pairs": [self._pair_row(i) for i in self.flips.indices],
            "near_cutoff": self.flips.near,
            "max_flips": self.max_flips,
            "metrics": self.metrics,
            "passed": self.passed,
            "failures": self.failures,
        }
        return data

    def _pair_row(self, index: int) -> Dict[str, Any]:
        row = {"index": index}  # type: Dict[str, Any]
        if self.ids:
            row["id"] = self.ids[index]
        if self.ref_scores is not None and self.test_scores is not None:
            row["onnx_score"] = float(self.ref_scores[index])
            row["engine_score"] = float(self.test_scores[index])
        if self.labels is not None:
            row["defect"] = bool(self.labels[index])
        return row


def write_json(report: ValidationReport, path: str) -> str:
    return write_json_report(path, report.to_dict(), what="validate JSON report")


def run_pairs(classifier: Any, count: int, fill: FillFn, chunk: int = CHUNK_PAIRS) -> np.ndarray:
    """Raw outputs ``[count, ...]`` of an active :class:`~changenet_trt.api.Classifier` on ``count``
    pairs, preprocessed ``chunk`` at a time (``fill(golden, sample, lo, hi)`` writes normalised
    float32 ``[hi-lo, C, H, W]``; a pair source fills the same arrays each time it is asked)."""
    if count < 1:
        raise InputError("nothing to validate", expected="at least one pair", found=count)
    shape = tuple(classifier.contract.input_shape)
    step = max(1, int(chunk))
    golden = np.empty((min(step, count),) + shape, dtype=np.float32)
    sample = np.empty_like(golden)
    outputs = []
    for lo in range(0, count, step):
        hi = min(lo + step, count)
        g, s = golden[: hi - lo], sample[: hi - lo]
        fill(g, s, lo, hi)
        outputs.append(classifier.predict(g, s).raw)
    return np.concatenate(outputs, axis=0)


@dataclass(frozen=True)
class _Side:
    """What a report says of one model: its path, backend and contract."""

    model: str
    backend: str
    contract: Any

    @classmethod
    def of(cls, classifier: Any) -> "_Side":
        return cls(getattr(classifier.runner, "model_path", "?"), classifier.runner.name, classifier.contract)


def _check_comparable(reference: _Side, test: _Side) -> None:
    if tuple(test.contract.input_shape) != tuple(reference.contract.input_shape):
        raise InputError(
            "the engine and the ONNX model take different image sizes",
            expected="[B,{},{},{}] (ONNX)".format(*reference.contract.input_shape),
            found="[B,{},{},{}] (engine)".format(*test.contract.input_shape),
        )
    if reference.contract.output_kind != test.contract.output_kind:
        raise InputError(
            "the engine and the ONNX model have different output kinds",
            expected=reference.contract.output_kind,
            found=test.contract.output_kind,
        )


def _finite_for_metrics(scores: np.ndarray, cutoff: float) -> np.ndarray:
    """Scores with NaN/Inf replaced by values that keep their decision (NaN > cutoff is False)."""
    s = np.asarray(scores, dtype=np.float64)
    if np.isfinite(s).all():
        return s
    out = s.copy()
    out[np.isnan(s)] = cutoff - 1.0
    out[np.isposinf(s)] = cutoff + 1.0
    out[np.isneginf(s)] = cutoff - 1.0
    return out


def _check_tolerances(atol: float, rtol: float, max_flips: int) -> None:
    if atol < 0 or rtol < 0:
        raise InputError("tolerances must be >= 0", found="atol {}, rtol {}".format(atol, rtol))
    if max_flips < 0:
        raise InputError("--max-flips must be >= 0", found=max_flips)


def compare(
    reference: Any,
    test: Any,
    source: PairSource,
    cutoff: float,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    max_flips: int = DEFAULT_MAX_FLIPS,
    chunk: int = CHUNK_PAIRS,
) -> ValidationReport:
    """Run ``source``'s pairs through two active classifiers and measure the differences.

    ``reference`` is the ONNX (float32) classifier, ``test`` the engine's; both read the same
    preprocessed pairs. Raw outputs are compared elementwise, scores (``contract.score``) per
    pair, decisions at ``cutoff``.
    """
    _check_tolerances(atol, rtol, max_flips)
    ref, other = _Side.of(reference), _Side.of(test)
    _check_comparable(ref, other)
    ref_raw = run_pairs(reference, source.count, source.fill, chunk)
    test_raw = run_pairs(test, source.count, source.fill, chunk)
    return _report(ref, other, ref_raw, test_raw, source, cutoff, atol, rtol, max_flips)


def _report(reference: _Side, test: _Side, ref_all: np.ndarray, test_all: np.ndarray, source: PairSource,
            cutoff: float, atol: float, rtol: float, max_flips: int) -> ValidationReport:
    """The :class:`ValidationReport` of two models' raw outputs ``[count, ...]`` on ``source``."""
    keep = np.ones(source.count, dtype=bool)
    keep[list(source.failed())] = False
    if not keep.any():
        raise InputError("no pair could be read", expected="at least one readable pair", found="0 of {}".format(source.count))
    ref_raw, test_raw = ref_all[keep], test_all[keep]
    if ref_raw.shape != test_raw.shape:
        raise InputError(
            "the engine and the ONNX model give outputs of different shapes",
            expected=list(ref_raw.shape),
            found=list(test_raw.shape),
        )
    kind = reference.contract.output_kind
    ref_scores = score(ref_raw, kind)
    test_scores = score(test_raw, kind)
    labels = source.labels[keep] if source.labels is not None else None
    ids = [i for i, k in zip(source.ids, keep) if k] if source.ids else []
    metrics = {}
    if labels is not None:
        for side, scores in (("onnx", ref_scores), ("engine", test_scores)):
            metrics[side] = confusion(_finite_for_metrics(scores, cutoff), labels, cutoff).to_dict()
    return ValidationReport(
        test_model=test.model,
        test_backend=test.backend,
        reference_model=reference.model,
        reference_backend=reference.backend,
        pairs=int(keep.sum()),
        source=source.description,
        output_name=reference.contract.output,
        output_kind=kind,
        raw=error_stats(ref_raw, test_raw, atol, rtol),
        score=error_stats(ref_scores, test_scores, atol, rtol),
        flips=decision_flips(ref_scores, test_scores, cutoff),
        max_flips=int(max_flips),
        ids=ids,
        ref_scores=ref_scores,
        test_scores=test_scores,
        labels=labels,
        metrics=metrics,
    )


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else "{:.2%}".format(value)


def format_report(report: ValidationReport, show_flips: int = 10) -> List[str]:
    """Human-readable lines of ``report``."""
    raw, sc, flips = report.raw, report.score, report.flips
    lines = [
        "engine:  {} ({})".format(report.test_model, report.test_backend),
        "onnx:    {} ({}, float32)".format(report.reference_model, report.reference_backend),
        "pairs:   {} ({})".format(report.pairs, report.source),
        "",
        "output '{}' {} ({} values):".format(report.output_name, raw.shape, raw.elements),
        "  |engine - onnx|      max {:.4g}  mean {:.4g}  median {:.4g}  p99 {:.4g}".format(
            raw.abs_max, raw.abs_mean, raw.abs_median, raw.abs_p99),
        "  relative             max {:.4g}  mean {:.4g}  p99 {:.4g}".format(raw.rel_max, raw.rel_mean, raw.rel_p99),
        "  worst at {}: onnx {:.6g}, engine {:.6g}".format(raw.worst_index, raw.ref_at_worst, raw.test_at_worst),
        "  beyond atol {:g} + rtol {:g} * |onnx|: {} of {}".format(raw.atol, raw.rtol, raw.beyond_tolerance, raw.elements),
        "  SQNR {:.1f} dB (10 log10 of sum onnx^2 / sum (engine - onnx)^2)".format(raw.sqnr_db),
    ]
    if raw.nonfinite:
        lines.append("  NaN/Inf on one side only: {} values".format(raw.nonfinite))
    lines += [
        "score ({}):".format("embedding distance" if report.output_kind == "euclidean" else "softmax(logits)[:, 1]"),
        "  |engine - onnx|      max {:.4g}  mean {:.4g}  p99 {:.4g}".format(sc.abs_max, sc.abs_mean, sc.abs_p99),
        "",
        "decisions at cutoff {:g} (defect when score > cutoff):".format(flips.cutoff),
        "  flips: {}  (engine defect / onnx pass: {}, engine pass / onnx defect: {})".format(
            flips.count, len(flips.raised), len(flips.dropped)),
        "  pairs within the largest score error ({:.3g}) of the cutoff: {}".format(flips.max_score_error, flips.near),
    ]
    for index in flips.indices[:show_flips]:
        row = report._pair_row(index)
        label = ""
        if "defect" in row:
            label = ", truth {}".format("defect" if row["defect"] else "pass")
        lines.append("    pair {}{}: onnx {:.6g}, engine {:.6g}{}".format(
            index, " ({})".format(row["id"]) if "id" in row else "", row.get("onnx_score", float("nan")),
            row.get("engine_score", float("nan")), label))
    if flips.count > show_flips:
        lines.append("    ... and {} more (all in --json)".format(flips.count - show_flips))
    if report.metrics:
        onnx_m, engine_m = report.metrics["onnx"], report.metrics["engine"]
        lines += [
            "",
            "  {:<34} {:>12} {:>12}".format("", "onnx", "engine"),
            "  {:<34} {:>12} {:>12}".format("FPR = FP/(FP+TN) on PASS pairs", _pct(onnx_m["fpr"]), _pct(engine_m["fpr"])),
            "  {:<34} {:>12} {:>12}".format("defect capture = TP/(TP+FN)", _pct(onnx_m["defect_capture"]),
                                            _pct(engine_m["defect_capture"])),
            "  {:<34} {:>12} {:>12}".format("TP / FP / TN / FN", "{tp}/{fp}/{tn}/{fn}".format(**onnx_m),
                                            "{tp}/{fp}/{tn}/{fn}".format(**engine_m)),
        ]
    lines.append("")
    if report.passed:
        lines.append("PASS: within atol {:g} / rtol {:g}, {} flip{} (allowed {})".format(
            raw.atol, raw.rtol, flips.count, "" if flips.count == 1 else "s", report.max_flips))
    else:
        lines.append("FAIL: " + "; ".join(report.failures))
    return lines


def validate(engine: str, onnx_model: str, make_source: Callable[[Any, Any], PairSource],
             **options: Any) -> ValidationReport:
    """:func:`validate_all` of the one ``engine``, with its keyword ``options``: its report."""
    return validate_all([engine], onnx_model, make_source, **options)[0]


def validate_all(
    engines: Sequence[str],
    onnx_model: str,
    make_source: Callable[[Any, Any], PairSource],
    *,
    cutoff: Optional[float] = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    max_flips: int = DEFAULT_MAX_FLIPS,
    backend: str = "auto",
    batch_size: Optional[int] = None,
    normalization: Any = None,
    names: Optional[ContractNames] = None,
    engine_options: Optional[Dict[str, Any]] = None,
    chunk: int = CHUNK_PAIRS,
) -> List[ValidationReport]:
    """Validate each of ``engines`` (a TensorRT engine, or any model ``backend`` runs) against
    ``onnx_model`` run by ONNX Runtime in float32 on CPU; one report each.

    ``make_source(contract, normalization)`` returns the :class:`~changenet_trt.data.pairs.PairSource`
    (:func:`~changenet_trt.data.pairs.synthetic_source`, :func:`~changenet_trt.data.pairs.dataset_source`)
    for the ONNX model's contract and normalisation. ``cutoff`` defaults to the ONNX model's
    recommended cutoff; the engines are run with the same cutoff and normalisation. ``atol``,
    ``rtol``: how far an engine's raw output may be from float32's; ``max_flips``: how many
    decisions may differ. ``chunk``: pairs run per step (memory holds a chunk, not the set).

    One model is loaded at a time: the float32 model runs once on the pairs and its raw outputs
    are kept (``[pairs, ...]``, a few KB), then each engine runs on the same pairs, so memory
    holds one session, not all of them (a float16 model and its float16-storage emulation share
    one float32 pass)."""
    _check_tolerances(atol, rtol, max_flips)
    names = ContractNames.of(names)
    with load(onnx_model, cutoff=cutoff, backend="onnxruntime", batch_size=batch_size,
              normalization=normalization, names=names) as classifier:
        reference, cutoff, normalization = _Side.of(classifier), classifier.cutoff, classifier.normalization
        source = make_source(reference.contract, normalization)
        try:
            ref_raw = run_pairs(classifier, source.count, source.fill, chunk)
        except BaseException:
            source.close()
            raise
    release_freed_memory()
    reports = []
    try:
        for engine in engines:
            with load(engine, cutoff=cutoff, backend=backend, batch_size=batch_size, normalization=normalization,
                      names=names, **(engine_options or {})) as classifier:
                test = _Side.of(classifier)
                _check_comparable(reference, test)
                test_raw = run_pairs(classifier, source.count, source.fill, chunk)
            release_freed_memory()  # this session's pages back before the next one
            reports.append(_report(reference, test, ref_raw, test_raw, source, cutoff, atol, rtol, max_flips))
    finally:
        source.close()
    return reports
