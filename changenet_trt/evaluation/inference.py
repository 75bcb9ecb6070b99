"""``changenet-trt infer --csv``: score a TAO-layout data set that has no labels, as TAO's ``inference`` does.

The production line's job: the AOI machine writes today's components as a TAO CSV
(``input_path, golden_path, object_name`` and any columns of its own: a board id, a component
type; a ``label`` column is not needed) with one image per light, and every row gets a score
and a decision. The output CSV is the input CSV, every column in its order and as written,
plus ``score`` and ``decision`` (``pass``, ``defect``, or ``skipped`` with an empty score for
a row that could not be scored: a missing or undecodable light, a NaN/Inf output). Rows keep
their input order, so row k of the output is row k of the input.

Data flow as in :mod:`~changenet_trt.evaluation.evaluate`
(:func:`~changenet_trt.evaluation.evaluate.score_csv` with ``labels=False``), without the metrics.
"""

import csv
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from changenet_trt.data.dataset import Dataset, RowProblem
from changenet_trt.evaluation.evaluate import MAX_LISTED_PROBLEMS, carried_names, score_csv
from changenet_trt.files import PathLike, atomic_open, check_output_file

#: the columns the output adds after the input's own
ADDED_COLUMNS = ["score", "decision"]
SKIPPED = "skipped"


@dataclass
class InferResult:
    """Scores of a data set without labels.

    ``scores``: float32 ``[pairs]`` aligned with ``dataset.pairs`` (NaN where the pair was not
    scored); ``decisions``: ``"pass" | "defect" | "skipped"`` per pair; ``problems``: every row
    set aside (missing files first, then those found while scoring); ``summary``: counts, cutoff,
    speed; ``out``: the CSV written (None when not written).
    """

    dataset: Dataset
    scores: np.ndarray
    decisions: List[str]
    problems: List[RowProblem]
    summary: Dict[str, Any]
    out: Optional[str] = None


def infer_csv(
    model: PathLike,
    csv_path: PathLike,
    images_dir: Optional[PathLike] = None,
    out_csv: Optional[PathLike] = None,
    **scoring: Any
) -> InferResult:
    """Score every row of a TAO-layout CSV (no ``label`` needed); write ``out_csv`` (None: nothing written).

    ``**scoring``: how the set is read and scored, the keywords of
    :func:`~changenet_trt.evaluation.evaluate.score_csv` (``cutoff``, default the model's
    recommended cutoff, else 0.5; ``layout``, ``strict``, ``workers``, ``progress``, ``log``,
    ``classifier``, and :func:`~changenet_trt.api.load`'s options). ``out_csv`` is checked before
    any work and written whole. Raises DatasetError for an unusable CSV (no
    ``input_path``/``golden_path``/``object_name`` column, no usable row).
    """
    if out_csv is not None:
        inputs = [csv_path, model] + ([images_dir] if images_dir is not None else [])
        check_output_file(out_csv, what="scores CSV (--out)", inputs=inputs)
    scored_set = score_csv(model, csv_path, images_dir, labels=False, desc="infer", **scoring)
    dataset, run = scored_set.dataset, scored_set.pairs
    scores = run.scores.astype(np.float32, copy=True)
    scores[sorted(run.failed)] = np.nan
    decisions = [SKIPPED] * len(dataset)
    for index, defect in zip(run.scored, scored_set.decisions.tolist()):
        decisions[index] = "defect" if defect else "pass"
    defects = int(np.count_nonzero(scored_set.decisions))
    summary = dict(scored_set.about)
    summary.update({
        "cutoff": scored_set.cutoff,
        "rows": dataset.rows,
        "scored": len(run.scored),
        "pass": len(run.scored) - defects,
        "defect": defects,
        "skipped": dataset.rows - len(run.scored),
        "seconds": round(run.seconds, 4),
        "pairs_per_s": round(len(dataset) / run.seconds, 2) if run.seconds > 0 else None,
    })
    result = InferResult(dataset, scores, decisions, scored_set.problems, summary)
    if out_csv is not None:
        result.out = write_scores_csv(result, os.fspath(out_csv))
    return result


def write_scores_csv(result: InferResult, path: str) -> str:
    """Every input row, in order, with its columns as read plus ``score`` and ``decision``.

    An input column that is itself named ``score`` or ``decision`` is written as ``score (input)``
    / ``decision (input)``: nothing of the input is lost or hidden.
    """
    dataset = result.dataset
    by_index = {pair.index: k for k, pair in enumerate(dataset.pairs)}
    width = len(dataset.header)
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(carried_names(list(dataset.header), ADDED_COLUMNS) + ADDED_COLUMNS)
        for index, (_, values) in enumerate(dataset.records):
            row = list(values) + [""] * (width - len(values))  # a short row is padded, a long one kept whole
            k = by_index.get(index)
            decision = SKIPPED if k is None else result.decisions[k]
            score = "" if decision == SKIPPED else "{:.8g}".format(float(result.scores[k]))
            writer.writerow(row + [score, decision])
    return path


def format_summary(result: InferResult) -> str:
    """A readable multi-line summary for stdout."""
    s = result.summary
    lines = [
        "model      {} ({}, {} output, batch {})".format(s["model"], s["backend"], s["output_kind"], s["batch_size"]),
        "data       {} ({} rows: {} scored, {} skipped)".format(s["csv"], s["rows"], s["scored"], s["skipped"]),
        "cutoff     {:g} (defect when score > cutoff)".format(s["cutoff"]),
        "decisions  pass {}, defect {}".format(s["pass"], s["defect"]),
        "speed      {} pairs/s ({:.2f} s for {} pairs, decode + inference, {} decode threads)".format(
            s["pairs_per_s"], s["seconds"], len(result.dataset), s["workers"]),
    ]
    if result.problems:
        lines.append("skipped    {} row(s) (decision '{}' in the output):".format(len(result.problems), SKIPPED))
        for problem in result.problems[:MAX_LISTED_PROBLEMS]:
            lines.append("  " + str(problem))
        if len(result.problems) > MAX_LISTED_PROBLEMS:
            lines.append("  ... {} more".format(len(result.problems) - MAX_LISTED_PROBLEMS))
    if result.out:
        lines.append("wrote      {} (every input column, then score and decision)".format(result.out))
    return "\n".join(lines)
