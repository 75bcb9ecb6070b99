"""``changenet-trt eval``: score a TAO-layout data set and report FPR, defect capture and a sweep.

Data flow: CSV -> :func:`~changenet_trt.data.dataset.load_dataset` (rows with missing files are
set aside before anything runs) -> :class:`~changenet_trt.data.dataset.PairLoader` decodes each
batch on a thread pool straight into the runner's input buffers while the previous batch is
inferred (``Classifier.run_pipeline``) -> ``contract.score`` -> ``Classifier.decide`` ->
:mod:`~changenet_trt.evaluation.metrics` -> files in the output folder:

* ``scores.csv``: ``line, object_name, input_path, golden_path, label, score, defect`` (one row
  per scored pair; ``line`` is the CSV line, ``defect`` the decision 0/1), then the CSV's other
  columns as they are, in their order
* ``summary.json``: counts, rates, per-label rates, cutoff sweep, target cutoffs, skipped rows
* ``sweep.csv``: counts and rates at every distinct cutoff
* ``roc.png``, ``scores.png`` (score histograms by label class), ``scores_by_type.png``, ``sweep.png``

The output folder is checked before any work and written as one set: the files go to a staging
folder next to it that then replaces it whole (:func:`changenet_trt.files.atomic_dir`), so an
interrupted run leaves the previous run's set untouched and a finished run leaves no stale file
of an earlier one. A folder holding anything but the set eval last wrote there (judged by the
files' sizes and SHA-256 recorded with that set, not by their names), or holding an input
(the CSV, the model, any image a row names), is refused.
"""

import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, List, Optional

import numpy as np
from tqdm import tqdm

from changenet_trt.api import load
from changenet_trt.contract import score as contract_score
from changenet_trt.data.dataset import (
    Dataset,
    LightLayout,
    PairLoader,
    RowProblem,
    extra_columns,
    load_dataset,
)
from changenet_trt.errors import DatasetError
from changenet_trt.evaluation import plots
from changenet_trt.evaluation.metrics import (
    Sweep,
    auc,
    confusion,
    cutoff_for_capture,
    cutoff_for_fpr,
    per_label,
    sweep,
    tao_metrics,
)
from changenet_trt.files import PathLike, atomic_dir, check_output_dir

MAX_LISTED_PROBLEMS = 20


@dataclass
class EvalResult:
    """Scores of the usable pairs, the summary written to ``summary.json`` and the files written.

    ``scores``/``decisions``: float32/bool ``[pairs]``, aligned with ``scored`` (indexes into
    ``dataset.pairs``); ``problems``: every row set aside (missing files, then undecodable);
    ``sweep``: counts at every distinct cutoff.
    """

    summary: Dict[str, Any]
    scores: np.ndarray
    decisions: np.ndarray
    dataset: Dataset
    scored: List[int]
    problems: List[RowProblem]
    sweep: Sweep
    files: Dict[str, str] = field(default_factory=dict)


def _round(value: Optional[float], digits: int = 6) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def evaluate(
    model: PathLike,
    csv_path: PathLike,
    images_dir: Optional[PathLike] = None,
    out_dir: Optional[PathLike] = "eval-output",
    *,
    target_fpr: Optional[float] = None,
    target_capture: Optional[float] = None,
    plots: bool = True,
    **scoring: Any
) -> EvalResult:
    """Evaluate ``model`` on a TAO-layout data set; write results to ``out_dir`` (None: nothing written).

    ``target_fpr``/``target_capture``: also report the cutoff meeting these rates. ``plots``:
    draw the PNGs. ``**scoring``: how the set is read and scored, the keywords of
    :func:`score_csv` (``cutoff``, ``layout``, ``strict``, ``workers``, ``progress``, ``log``,
    ``classifier``, and :func:`~changenet_trt.api.load`'s options such as ``batch_size``).
    Warnings about the whole run (labels like ``pass`` counted as defects, a layout that
    stretches the lights) are always written, once each, and kept in ``summary["warnings"]``.
    ``out_dir`` is checked before any work, again against every image folder the rows name
    (none may lie in the folder replaced), and written as one set.
    Raises DatasetError for an unusable data set; rows are reported with their CSV line and path.
    """
    inputs = [csv_path, model] + ([images_dir] if images_dir is not None else [])
    if out_dir is not None:
        check_output_dir(out_dir, what="eval output folder", inputs=inputs)

    def check_images(dataset: Dataset) -> None:  # rows may name images anywhere (``../pngs``)
        if out_dir is not None:
            check_output_dir(out_dir, what="eval output folder", inputs=inputs + dataset.image_folders, replaces=True)

    scored_set = score_csv(model, csv_path, images_dir, labels=True, before_scoring=check_images, desc="eval",
                           **scoring)
    dataset, scored = scored_set.dataset, scored_set.pairs.scored
    scores = scored_set.pairs.scores[scored]
    full = sweep(scores, dataset.is_defect[scored])
    summary = _summarize(scored_set, scores, full, target_fpr, target_capture)
    summary["warnings"] = scored_set.warnings
    result = EvalResult(summary, scores, scored_set.decisions, dataset, scored, scored_set.problems, full)
    if out_dir is not None:
        write_outputs(result, os.fspath(out_dir), plots=plots)
    return result


@dataclass
class ScoredSet:
    """A TAO-layout data set scored by one model (:func:`score_csv`): what ``eval`` and ``infer`` share.

    ``pairs``: the scores of every pair (:class:`PairScores`); ``decisions``: bool
    ``[len(pairs.scored)]``, ``score > cutoff`` for the scored pairs; ``problems``: every row set
    aside (missing files first, then those found while scoring); ``about``: the run's facts each
    summary begins with (model, csv, images, layout, backend, output_kind, batch_size, workers);
    ``cutoff``: the one decided with; ``warnings``: warnings about the whole run, once each.
    """

    dataset: Dataset
    pairs: "PairScores"
    decisions: np.ndarray
    problems: List[RowProblem]
    about: Dict[str, Any]
    cutoff: float
    warnings: List[str]


def score_csv(
    model: PathLike,
    csv_path: PathLike,
    images_dir: Optional[PathLike] = None,
    *,
    cutoff: Optional[float] = None,
    layout: Optional[LightLayout] = None,
    strict: bool = False,
    workers: Optional[int] = None,
    progress: bool = True,
    log: Optional[IO[str]] = None,
    classifier: Any = None,
    labels: bool = True,
    before_scoring: Optional[Callable[[Dataset], None]] = None,
    desc: str = "score",
    **load_options: Any
) -> ScoredSet:
    """Read a TAO-layout CSV (rows with missing files set aside), score every pair with ``model``
    and decide each; nothing is written.

    ``cutoff``: decisions are ``score > cutoff`` (default: the model's recommended cutoff).
    ``layout``: lights, extension and concatenation (TAO's defaults); each light's size is the
    model's input split by the layout (512x128 with 4 linear lights -> 128x128). ``strict``:
    stop at the first unusable row instead of skipping it. ``labels``: the CSV must have a
    ``label`` column. ``workers``: decode threads (default: from the CPU count). ``log``: where
    warnings and the progress bar go (default stderr). ``progress``: the progress bar (shown
    only when ``log`` is a terminal) and a line per skipped row as it is found (False, the CLI's
    ``--quiet``: neither; skipped rows are still counted and listed). ``classifier``: an already
    loaded Classifier, left as it is (``cutoff`` applies to this run only); else
    ``load(model, cutoff=cutoff, **load_options)`` is opened and closed here.
    ``before_scoring``: called with the data set once it is read, before the model loads.
    Raises DatasetError for an unusable data set (no usable row, a missing column).
    """
    log = log if log is not None else sys.stderr
    warned = []  # type: List[str]  # warnings about the whole run, once each

    def report(item: RowProblem) -> None:
        if progress:  # --quiet: counted and listed in the summary only
            # tqdm.write clears a live bar, prints the line and redraws the bar below it
            tqdm.write("warning: {}; row skipped".format(item), file=log)

    def warn(text: str) -> None:
        warned.append(text)
        tqdm.write("warning: " + text, file=log)  # above a live bar, if there is one

    dataset = load_dataset(csv_path, images_dir, layout or LightLayout(), check_files=True, strict=strict,
                           on_problem=report, on_warning=warn, labels=labels)
    if before_scoring is not None:
        before_scoring(dataset)
    own = classifier is None
    clf = load(os.fspath(model), cutoff=cutoff, **load_options) if own else classifier
    try:
        if cutoff is not None and not own:
            clf = clf.with_cutoff(cutoff)  # the caller's classifier keeps its own cutoff
        run = score_pairs(dataset, clf, workers=workers, strict=strict, on_problem=report, on_warning=warn,
                          progress=progress, log=log, desc=desc)
        decisions = clf.decide(run.scores[run.scored])
        about = {
            "model": os.fspath(model),
            "csv": dataset.csv_path,
            "images": dataset.images_dir,
            "layout": dataset.layout.describe(),
            "backend": clf.runner.name,
            "output_kind": clf.contract.output_kind,
            "batch_size": clf.batch_size,
            "workers": run.workers,
        }
        used_cutoff = float(clf.cutoff)
    finally:
        if own:
            clf.close()
    problems = dataset.problems + [run.failed[i] for i in sorted(run.failed)]
    return ScoredSet(dataset, run, decisions, problems, about, used_cutoff, warned)


@dataclass
class PairScores:
    """What :func:`score_pairs` gives: ``scores`` float32 ``[pairs]`` (meaningless where ``failed``),
    ``failed`` (pair index -> why it has no score), ``scored`` (the other indexes, ascending),
    ``seconds`` of decoding + inference and the decode ``workers``."""

    scores: np.ndarray
    failed: Dict[int, RowProblem]
    scored: List[int]
    seconds: float
    workers: int


def score_pairs(dataset: Dataset, clf: Any, workers: Optional[int] = None, strict: bool = False,
                on_problem: Any = None, on_warning: Any = None, progress: bool = True,
                log: Optional[IO[str]] = None, desc: str = "score") -> PairScores:
    """Decode and score every pair of ``dataset`` with the loaded Classifier ``clf``.

    Each batch is decoded on ``workers`` threads straight into the runner's buffers while the
    previous one is inferred. A pair that cannot be decoded or whose output is NaN/Inf is in
    ``failed`` (reported through ``on_problem``; with ``strict`` it raises DatasetError).
    Raises DatasetError when no pair at all could be scored.
    """
    log = log if log is not None else sys.stderr
    loader = PairLoader(dataset.pairs, dataset.layout, clf.contract.input_shape, clf.normalization, workers=workers,
                        strict=strict, on_problem=on_problem, on_warning=on_warning)
    # disable=None: a live bar only when ``log`` is a terminal (silent in logs and CI)
    bar = tqdm(total=len(dataset), desc=desc, unit="pairs", file=log, disable=None if progress else True)
    start = time.perf_counter()
    try:
        raw = clf.run_pipeline(len(dataset), loader.fill, on_batch=lambda done: bar.update(done - bar.n))
    finally:
        loader.close()
        bar.close()
    seconds = time.perf_counter() - start
    all_scores = contract_score(raw, clf.contract.output_kind)
    failed = loader.failed
    unscored = ~np.isfinite(raw.reshape(raw.shape[0], -1)).all(axis=1) | ~np.isfinite(all_scores)
    for index in np.flatnonzero(unscored).tolist():
        if index in failed:
            continue
        pair = dataset.pairs[index]
        item = RowProblem(pair.line, pair.object_name, "", "the model's output is NaN or Inf for this pair")
        if strict:
            raise DatasetError("{} (--strict stops at the first unusable row)".format(item))
        failed[index] = item
        if on_problem is not None:
            on_problem(item)
    scored = [i for i in range(len(dataset)) if i not in failed]
    if not scored:
        raise DatasetError("no pair of {} could be decoded and scored".format(dataset.csv_path),
                           found=str(next(iter(failed.values()))))
    return PairScores(all_scores, failed, scored, seconds, loader.workers)


def _summarize(scored_set: ScoredSet, scores: np.ndarray, full: Sweep, target_fpr: Optional[float],
               target_capture: Optional[float]) -> Dict[str, Any]:
    dataset, scored, decisions = scored_set.dataset, scored_set.pairs.scored, scored_set.decisions
    problems, seconds = scored_set.problems, scored_set.pairs.seconds
    truth = dataset.is_defect[scored]
    labels = [dataset.pairs[i].label for i in scored]
    counts = confusion(scores, truth, scored_set.cutoff)
    labels_table = per_label(labels, decisions)
    per_type = {k: v["capture"] for k, v in labels_table.items() if "capture" in v}
    fpr_point = cutoff_for_fpr(full, target_fpr) if target_fpr is not None else None
    capture_point = cutoff_for_capture(full, target_capture) if target_capture is not None else None
    summary = dict(scored_set.about)  # model, data, backend: as infer's summary begins
    summary.update({
        "rows": dataset.rows,
        "pairs": int(scores.size),
        "skipped": len(problems),
        "pass_pairs": int((~truth).sum()),
        "defect_pairs": int(truth.sum()),
        "cutoff": scored_set.cutoff,
        "tp": counts.tp,
        "fp": counts.fp,
        "tn": counts.tn,
        "fn": counts.fn,
        "fpr": _round(counts.fpr),
        "defect_capture": _round(counts.defect_capture),
        "accuracy": _round(counts.accuracy),
        "tao": tao_metrics(counts, "7.2+").to_dict(),
        "tao_7_1": tao_metrics(counts, "<=7.1").to_dict(),
        "auc": _round(auc(scores, truth)),
        "pipeline_pairs": len(dataset),
        "seconds": round(seconds, 4),
        "pairs_per_s": round(len(dataset) / seconds, 2) if seconds > 0 else None,
        "per_defect_type_capture": {k: _round(v) for k, v in per_type.items()},
        "per_label": {k: {kk: (_round(vv) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                      for k, v in labels_table.items()},
        "target_fpr": fpr_point.to_dict() if fpr_point is not None else None,
        "target_capture": capture_point.to_dict() if capture_point is not None else None,
        "sweep": [_sweep_row(c) for c in full.subsample(101)],
        "skipped_rows": [p.to_dict() for p in problems],
    })
    if target_fpr is not None and fpr_point is None:
        summary["target_fpr"] = {"target": "fpr", "target_value": target_fpr, "cutoff": None,
                                 "note": "no PASS pairs: FPR is undefined" if full.n_pass == 0
                                 else "no defect pairs: no capture to maximise"}
    if target_capture is not None and capture_point is None:
        summary["target_capture"] = {"target": "defect_capture", "target_value": target_capture, "cutoff": None,
                                     "note": "no defect pairs: capture is undefined"}
    return summary


def _sweep_row(c: Any) -> Dict[str, Any]:
    return {"cutoff": float(c.cutoff), "fpr": _round(c.fpr), "defect_capture": _round(c.defect_capture),
            "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn}


def write_outputs(result: EvalResult, out_dir: str, plots: bool = True) -> Dict[str, str]:
    """Write scores.csv, sweep.csv, summary.json and (``plots``) the PNGs as ``out_dir``, as one set.

    The set is written into a staging folder that then replaces ``out_dir`` whole: after an
    interruption ``out_dir`` holds the previous set or this one, never a mix.
    """
    check_output_dir(out_dir, what="eval output folder", replaces=True)
    with atomic_dir(out_dir) as staging:
        files = _write_set(result, staging, plots)
        final = {key: os.path.join(out_dir, os.path.basename(path)) for key, path in files.items()}
        result.summary["files"] = dict(final)
        with open(os.path.join(staging, "summary.json"), "w") as handle:
            json.dump(result.summary, handle, indent=2)
            handle.write("\n")
    result.files = final
    return final


def _write_set(result: EvalResult, out_dir: str, plots: bool) -> Dict[str, str]:
    full = result.sweep
    files = {}  # type: Dict[str, str]
    pairs = [result.dataset.pairs[i] for i in result.scored]

    path = os.path.join(out_dir, "scores.csv")
    columns = ["line", "object_name", "input_path", "golden_path", "label", "score", "defect"]
    extras = extra_columns(result.dataset.header)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + carried_names([result.dataset.header[i] for i in extras], columns))
        for pair, s, d in zip(pairs, result.scores, result.decisions):
            values = result.dataset.records[pair.index][1]
            writer.writerow([pair.line, pair.object_name, pair.input_path, pair.golden_path, pair.label,
                             "{:.8g}".format(float(s)), int(d)] + [values[i] if i < len(values) else ""
                                                                   for i in extras])
    files["scores_csv"] = path

    path = os.path.join(out_dir, "sweep.csv")
    fpr, capture = full.fpr, full.capture
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cutoff", "fpr", "defect_capture", "tp", "fp", "tn", "fn"])
        for k in range(len(full)):
            writer.writerow(["{:.9g}".format(full.cutoffs[k]), "{:.6f}".format(fpr[k]), "{:.6f}".format(capture[k]),
                             int(full.tp[k]), int(full.fp[k]), int(full.tn[k]), int(full.fn[k])])
    files["sweep_csv"] = path

    if plots:
        files.update(_plots(result, out_dir, full))
    files["summary_json"] = os.path.join(out_dir, "summary.json")
    return files


def carried_names(names: List[str], taken: List[str]) -> List[str]:
    """The input CSV's column ``names`` as an output writes them next to its own columns ``taken``:
    a name already taken gets `` (input)`` added, so no column is hidden behind another."""
    used = {t.strip().lower() for t in taken}
    return [name + " (input)" if name.strip().lower() in used else name for name in names]


def _plots(result: EvalResult, out_dir: str, full: Sweep) -> Dict[str, str]:
    summary = result.summary
    files = {}
    truth = np.array([result.dataset.pairs[i].is_defect for i in result.scored], dtype=bool)
    scores = result.scores
    cutoff = summary["cutoff"]
    title_model = os.path.basename(summary["model"])
    series = {}
    if (~truth).any():
        series["PASS"] = scores[~truth]
    if truth.any():
        series["defect"] = scores[truth]
    files["scores_png"] = plots.histogram_png(
        series, os.path.join(out_dir, "scores.png"), "Scores, PASS vs defect - {}".format(title_model), "score",
        bins=50, markers={"cutoff": cutoff})
    labels = np.array([result.dataset.pairs[i].label for i in result.scored], dtype=object)
    by_type = {name: scores[labels == name] for name in summary["per_label"]}
    if len(by_type) > 2:
        files["scores_by_type_png"] = plots.histogram_png(
            by_type, os.path.join(out_dir, "scores_by_type.png"), "Scores by defect type - {}".format(title_model),
            "score", bins=50, markers={"cutoff": cutoff})
    if full.n_pass and full.n_defect:
        points = {"cutoff {:.4g}".format(cutoff): (summary["fpr"], summary["defect_capture"])}
        for key in ("target_fpr", "target_capture"):
            point = summary.get(key)
            if point and point.get("cutoff") is not None:
                points["{} {:g} -> cutoff {:.4g}".format(key.replace("_", " "), point["target_value"], point["cutoff"])] = (
                    point["fpr"], point["defect_capture"])
        files["roc_png"] = plots.roc_png(full.fpr[::-1], full.capture[::-1], os.path.join(out_dir, "roc.png"),
                                         "ROC - {}".format(title_model), auc=summary["auc"], points=points)
        # inspection works at a low FPR: also show that end of the curve
        zoom = min(1.0, max(0.02, 4.0 * max(p[0] for p in points.values())))
        if zoom < 0.5:
            files["roc_low_fpr_png"] = plots.roc_png(
                full.fpr[::-1], full.capture[::-1], os.path.join(out_dir, "roc_low_fpr.png"),
                "ROC at FPR <= {:.3g} - {}".format(zoom, title_model), auc=summary["auc"], points=points, max_fpr=zoom)
        finite = full.cutoffs
        files["sweep_png"] = plots.lines_png(
            finite, {"FPR": full.fpr, "defect capture": full.capture}, os.path.join(out_dir, "sweep.png"),
            "FPR and defect capture vs cutoff - {}".format(title_model), "cutoff (defect when score > cutoff)", "rate",
            ylim=(0.0, 1.02), markers={"cutoff": cutoff})
    return files


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else "{:.2f}%".format(100.0 * value)


def format_summary(result: EvalResult) -> str:
    """A readable multi-line summary for stdout."""
    s = result.summary
    lines = [
        "model      {} ({}, {} output, batch {})".format(s["model"], s["backend"], s["output_kind"], s["batch_size"]),
        "data       {} ({} rows: {} scored, {} skipped; {} PASS, {} defect)".format(
            s["csv"], s["rows"], s["pairs"], s["skipped"], s["pass_pairs"], s["defect_pairs"]),
        "cutoff     {:g} (defect when score > cutoff)".format(s["cutoff"]),
        "counts     TP {}  FP {}  TN {}  FN {}".format(s["tp"], s["fp"], s["tn"], s["fn"]),
        "FPR        {}  (FP / PASS pairs)".format(_pct(s["fpr"])),
        "capture    {}  (TP / defect pairs)".format(_pct(s["defect_capture"])),
        "TAO        {}".format(s["tao"]["line"]),
        "           (TAO Deploy 7.2+ evaluate's log line, in %: False Alarm = FP / PASS pairs, False Negative = "
        "FN / defect pairs)",
        "TAO <=7.1  False Alarm {} False Negative {}  (FP and FN / all pairs, in %, as TAO Deploy 7.1 and "
        "earlier logged them)".format(round(s["tao_7_1"]["false_alarm"], 2), round(s["tao_7_1"]["false_negative"], 2)),
        "AUC        {}".format("n/a" if s["auc"] is None else "{:.4f}".format(s["auc"])),
        "speed      {} pairs/s ({:.2f} s for {} pairs, decode + inference, {} decode threads)".format(
            s["pairs_per_s"], s["seconds"], s["pipeline_pairs"], s["workers"]),
    ]
    per_type = s["per_defect_type_capture"]
    if per_type:
        lines.append("by type    " + ", ".join(
            "{} {} ({}/{})".format(k, _pct(v), s["per_label"][k]["called_defect"], s["per_label"][k]["pairs"])
            for k, v in per_type.items()))
    for key in ("target_fpr", "target_capture"):
        point = s.get(key)
        if point:
            if point.get("cutoff") is None:
                lines.append("{:<10} {}".format(key.replace("_", " "), point["note"]))
            else:
                lines.append("{} {:g}: cutoff {:.6g} gives FPR {} and capture {}".format(
                    key.replace("_", " "), point["target_value"], point["cutoff"], _pct(point["fpr"]),
                    _pct(point["defect_capture"])))
    if result.problems:
        lines.append("skipped    {} row(s):".format(len(result.problems)))
        for problem in result.problems[:MAX_LISTED_PROBLEMS]:
            lines.append("  " + str(problem))
        if len(result.problems) > MAX_LISTED_PROBLEMS:
            lines.append("  ... {} more in summary.json".format(len(result.problems) - MAX_LISTED_PROBLEMS))
    if result.files:
        out_dir = os.path.dirname(result.files["summary_json"])
        lines.append("wrote      {}/: {}".format(out_dir, ", ".join(os.path.basename(p) for p in result.files.values())))
    return "\n".join(lines)
