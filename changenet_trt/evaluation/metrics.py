"""Scores + labels -> the numbers an inspection engineer judges a model by.

A defect is the positive class and a pair is called a defect when ``score > cutoff``
(strictly greater). With TP/FP/TN/FN counted over N scored pairs:

* ``fpr`` (false-positive / false-alarm rate on good parts) = FP / (FP + TN), over PASS pairs
* ``defect_capture`` (true-positive rate, recall) = TP / (TP + FN), over defect pairs
* ``accuracy`` = (TP + TN) / N

TAO Deploy's ``evaluate`` logs its own line, ``Tot Comp N Total Accuracy A False Negative FN%
False Alarm FA% Defect Correctly Captured DC% for Margin M`` (:class:`TaoMetrics`). Its "False
Alarm" and "False Negative" changed meaning in TAO Deploy 7.2: 7.2 and later divide by the PASS
and the defect pairs (False Alarm = our FPR, False Negative = 1 - capture), 7.1 and earlier
divided both by all pairs.

A rate whose denominator is zero is ``None`` (no PASS pairs: no FPR). The *sweep* evaluates
every distinct decision: cutoffs below the lowest score, between each pair of neighbouring
distinct scores (midway) and at the highest score; FPR and capture never rise as the cutoff
rises.
"""

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from changenet_trt.errors import InputError


def _rate(num: int, den: int) -> Optional[float]:
    return float(num) / float(den) if den else None


@dataclass(frozen=True)
class Counts:
    """Confusion counts at one cutoff (defect = positive)."""

    cutoff: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def pairs(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def fpr(self) -> Optional[float]:
        """FP / (FP + TN): the share of PASS pairs called defects."""
        return _rate(self.fp, self.fp + self.tn)

    @property
    def defect_capture(self) -> Optional[float]:
        """TP / (TP + FN): the share of defect pairs called defects."""
        return _rate(self.tp, self.tp + self.fn)

    @property
    def accuracy(self) -> Optional[float]:
        return _rate(self.tp + self.tn, self.pairs)

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)  # type: Dict[str, object]
        data.update(
            fpr=self.fpr, defect_capture=self.defect_capture, accuracy=self.accuracy
        )
        return data


#: TAO Deploy's definitions of its log line: "7.2+" (nvidia-tao-deploy 7.2.0 and 7.3.0) and
#: "<=7.1" (7.1.0 and earlier), read in cv/visual_changenet/classification/utils.py (AOIMetrics)
TAO_DEFINITIONS = ("7.2+", "<=7.1")


@dataclass(frozen=True)
class TaoMetrics:
    """What TAO Deploy's Visual ChangeNet-Classification ``evaluate`` logs, in percent.

    TAO's ``AOIMetrics`` (cv/visual_changenet/classification/utils.py) counts a pair as FAIL when
    ``score > margin`` and computes, over ``tot_pass`` PASS and ``tot_fail`` defect pairs:
    Total Accuracy = (TN + TP) / all, Defect Correctly Captured = TP / tot_fail, and

    * ``7.2+`` (7.2.0, 7.3.0): False Alarm = FP / tot_pass, False Negative = FN / tot_fail; a rate
      with no pairs to count is 0;
    * ``<=7.1`` (7.1.0): False Alarm = FP / all pairs, False Negative = FN / all pairs (and a
      set without defect pairs makes 7.1's evaluate fail on ``int.item()``; 0 here).

    Each value is computed as TAO computes it (float64 ``(a / b) * 100``) so the rounded line
    equals TAO's to the digit.
    """

    definitions: str
    tot_comp: int
    total_accuracy: float
    false_negative: float
    false_alarm: float
    defect_correctly_captured: float
    margin: float

    def log_line(self) -> str:
        """TAO's own text (scripts/evaluate.py: each rate ``round(x, 2)``, the margin as given)."""
        return ("Tot Comp {} Total Accuracy {} False Negative {} False Alarm {} Defect Correctly Captured {} "
                "for Margin {}".format(self.tot_comp, round(self.total_accuracy, 2), round(self.false_negative, 2),
                                       round(self.false_alarm, 2), round(self.defect_correctly_captured, 2),
                                       self.margin))

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)  # type: Dict[str, object]
        data["line"] = self.log_line()
        return data


def tao_metrics(counts: Counts, definitions: str = "7.2+") -> TaoMetrics:
    """TAO Deploy's evaluate numbers for ``counts`` (its margin is ``counts.cutoff``)."""
    if definitions not in TAO_DEFINITIONS:
        raise InputError("unknown TAO definitions", expected=" or ".join(TAO_DEFINITIONS), found=repr(definitions))

    def percent(num: int, den: int) -> float:
        return (float(num) / float(den)) * 100 if den else 0.0

    n_pass, n_defect, total = counts.fp + counts.tn, counts.tp + counts.fn, counts.pairs
    alarm_den, miss_den = (n_pass, n_defect) if definitions == "7.2+" else (total, total)
    return TaoMetrics(definitions, total, percent(counts.tn + counts.tp, total), percent(counts.fn, miss_den),
                      percent(counts.fp, alarm_den), percent(counts.tp, n_defect), float(counts.cutoff))


def _check(scores: np.ndarray, truth: np.ndarray) -> "tuple":
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth).ravel()
    if truth.dtype != bool:
        if not np.isin(truth, (0, 1)).all():
            raise InputError("truth must be booleans (True = defect) or 0/1", found=np.unique(truth)[:5].tolist())
        truth = truth.astype(bool)
    if scores.shape != truth.shape:
        raise InputError("scores and truth differ in length", found="{} scores, {} labels".format(scores.size, truth.size))
    if not np.isfinite(scores).all():
        raise InputError("scores hold NaN or Inf", found="{} non-finite".format(int((~np.isfinite(scores)).sum())))
    return scores, truth


def confusion(scores: np.ndarray, truth: np.ndarray, cutoff: float) -> Counts:
    """Counts at ``cutoff``: ``scores`` float ``[N]``, ``truth`` bool ``[N]`` (True = defect)."""
    scores, truth = _check(scores, truth)
    called = scores > float(cutoff)
    return Counts(
        cutoff=float(cutoff),
        tp=int(np.count_nonzero(called & truth)),
        fp=int(np.count_nonzero(called & ~truth)),
        tn=int(np.count_nonzero(~called & ~truth)),
        fn=int(np.count_nonzero(~called & truth)),
    )


@dataclass
class Sweep:
    """Counts at every distinct decision, cutoffs ascending (arrays of one length ``M + 1``)."""

    cutoffs: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    tn: np.ndarray
    fn: np.ndarray

    def __len__(self) -> int:
        return int(self.cutoffs.size)

    @property
    def n_pass(self) -> int:
        return int(self.fp[0] + self.tn[0])

    @property
    def n_defect(self) -> int:
        return int(self.tp[0] + self.fn[0])

    @property
    def fpr(self) -> np.ndarray:
        """float64 ``[M+1]``; NaN when there are no PASS pairs."""
        return self.fp / self.n_pass if self.n_pass else np.full(len(self), np.nan)

    @property
    def capture(self) -> np.ndarray:
        """float64 ``[M+1]``; NaN when there are no defect pairs."""
        return self.tp / self.n_defect if self.n_defect else np.full(len(self), np.nan)

    def counts(self, k: int) -> Counts:
        return Counts(float(self.cutoffs[k]), int(self.tp[k]), int(self.fp[k]), int(self.tn[k]), int(self.fn[k]))

    def subsample(self, points: int = 101) -> List[Counts]:
        """At most ``points`` rows spread evenly over the sweep (first and last included)."""
        picks = np.unique(np.round(np.linspace(0, len(self) - 1, max(2, points))).astype(int))
        return [self.counts(int(k)) for k in picks]


def candidate_cutoffs(scores: np.ndarray) -> np.ndarray:
    """float64 ascending: just below the lowest score, midway between neighbouring distinct
    scores, and the highest score (at which nothing is called a defect)."""
    unique = np.unique(np.asarray(scores, dtype=np.float64))
    if unique.size == 0:
        raise InputError("no scores to sweep")
    below = unique[0] - max(abs(unique[0]), 1.0) * 1e-6
    mids = (unique[:-1] + unique[1:]) / 2.0
    return np.concatenate([[below], mids, [unique[-1]]])


def sweep(scores: np.ndarray, truth: np.ndarray) -> Sweep:
    """Counts at every :func:`candidate_cutoffs` value of ``scores`` (``truth``: True = defect)."""
    scores, truth = _check(scores, truth)
    cutoffs = candidate_cutoffs(scores)
    pass_sorted = np.sort(scores[~truth])
    defect_sorted = np.sort(scores[truth])
    # pairs with score > c = total - pairs with score <= c
    fp = pass_sorted.size - np.searchsorted(pass_sorted, cutoffs, side="right")
    tp = defect_sorted.size - np.searchsorted(defect_sorted, cutoffs, side="right")
    return Sweep(cutoffs, tp.astype(np.int64), fp.astype(np.int64), (pass_sorted.size - fp).astype(np.int64),
                 (defect_sorted.size - tp).astype(np.int64))


def roc(scores: np.ndarray, truth: np.ndarray) -> "tuple":
    """``(fpr, capture)`` float64 arrays from (1, 1) (lowest cutoff) to (0, 0), for a ROC curve."""
    result = sweep(scores, truth)
    return result.fpr, result.capture


def auc(scores: np.ndarray, truth: np.ndarray) -> Optional[float]:
    """Area under the ROC curve (probability a defect outscores a PASS pair, ties count half);
    ``None`` without both classes."""
    scores, truth = _check(scores, truth)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average ranks over ties (1-based)
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], ranked.size]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class OperatingPoint:
    """The cutoff chosen for a target, and what it gives."""

    target: str
    value: float
    counts: Counts

    def to_dict(self) -> Dict[str, object]:
        return {
            "target": self.target,
            "target_value": self.value,
            "cutoff": self.counts.cutoff,
            "fpr": self.counts.fpr,
            "defect_capture": self.counts.defect_capture,
            "tp": self.counts.tp,
            "fp": self.counts.fp,
            "tn": self.counts.tn,
            "fn": self.counts.fn,
        }


def _check_target(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise InputError("{} must be a rate between 0 and 1".format(name), found=value)


def cutoff_for_fpr(result: Sweep, target: float) -> Optional[OperatingPoint]:
    """The cutoff with the highest capture whose FPR <= ``target``; of the cutoffs that give
    that capture, the highest (the lowest FPR, the widest margin to PASS scores). ``None``
    without PASS pairs, and without defect pairs (no capture to maximise)."""
    _check_target("target FPR", target)
    if result.n_pass == 0 or result.n_defect == 0:
        return None
    # fpr and capture are non-increasing along the sweep; the last cutoff always gives FPR 0.
    ok = np.flatnonzero(result.fpr <= target + 1e-12)
    best = result.capture[ok[0]]
    same_capture = ok[result.capture[ok] >= best - 1e-12]
    return OperatingPoint("fpr", float(target), result.counts(int(same_capture[-1])))


def cutoff_for_capture(result: Sweep, target: float) -> Optional[OperatingPoint]:
    """The highest cutoff whose capture >= ``target`` (so the lowest FPR allowed); ``None``
    without defect pairs."""
    _check_target("target capture", target)
    if result.n_defect == 0:
        return None
    ok = np.flatnonzero(result.capture >= target - 1e-12)
    return OperatingPoint("defect_capture", float(target), result.counts(int(ok[-1])))


def per_label(labels: Sequence[str], decisions: np.ndarray, pass_label: str = "PASS") -> Dict[str, Dict[str, object]]:
    """Per label: pairs, pairs called defect, and the rate (capture for a defect type, FPR for PASS).

    Labels are sorted with PASS first, then by name.
    """
    decisions = np.asarray(decisions, dtype=bool)
    labels = list(labels)
    if len(labels) != decisions.size:
        raise InputError("labels and decisions differ in length", found="{} and {}".format(len(labels), decisions.size))
    out = {}  # type: Dict[str, Dict[str, object]]
    names = sorted(set(labels), key=lambda s: (s != pass_label, s))
    label_arr = np.array(labels, dtype=object)
    for name in names:
        mask = label_arr == name
        n = int(mask.sum())
        called = int(decisions[mask].sum())
        out[name] = {
            "pairs": n,
            "called_defect": called,
            ("fpr" if name == pass_label else "capture"): _rate(called, n),
        }
    return out
