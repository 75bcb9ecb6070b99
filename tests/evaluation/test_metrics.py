"""Metrics on hand-computed cases, the sweep's monotonicity, target cutoffs."""

import numpy as np
import pytest

from changenet_trt.errors import InputError
from changenet_trt.evaluation.metrics import (
    auc,
    candidate_cutoffs,
    confusion,
    cutoff_for_capture,
    cutoff_for_fpr,
    per_label,
    sweep,
    tao_metrics,
)

# Two PASS pairs (0.1, 0.4) and two defects (0.35, 0.8).
SCORES = np.array([0.1, 0.4, 0.35, 0.8], dtype=np.float32)
TRUTH = np.array([False, False, True, True])


def test_confusion_by_hand():
    counts = confusion(SCORES, TRUTH, cutoff=0.3)
    # called: 0.4 (PASS -> FP), 0.35 and 0.8 (defects -> TP); 0.1 stays PASS (TN)
    assert (counts.tp, counts.fp, counts.tn, counts.fn) == (2, 1, 1, 0)
    assert counts.fpr == pytest.approx(1 / 2)
    assert counts.defect_capture == pytest.approx(1.0)
    assert counts.accuracy == pytest.approx(3 / 4)


def test_tao_log_line_by_hand():
    """TAO Deploy's evaluate line: 7.2+ divides False Alarm by PASS pairs and False Negative by
    defect pairs, <= 7.1 both by all pairs (AOIMetrics.compute in 7.1.0 and 7.3.0)."""
    counts = confusion(np.array([0.1, 0.4, 0.2, 0.35, 0.8, 0.05]), np.array([0, 0, 0, 1, 1, 1]), cutoff=0.3)
    assert (counts.tp, counts.fp, counts.tn, counts.fn) == (2, 1, 2, 1)
    new, old = tao_metrics(counts), tao_metrics(counts, "<=7.1")
    assert new.log_line() == ("Tot Comp 6 Total Accuracy 66.67 False Negative 33.33 False Alarm 33.33 "
                              "Defect Correctly Captured 66.67 for Margin 0.3")
    assert (old.false_alarm, old.false_negative) == (pytest.approx(100 / 6), pytest.approx(100 / 6))
    assert old.log_line() == ("Tot Comp 6 Total Accuracy 66.67 False Negative 16.67 False Alarm 16.67 "
                              "Defect Correctly Captured 66.67 for Margin 0.3")
    only_pass = tao_metrics(confusion(np.array([0.1, 0.9]), np.array([0, 0]), 0.5))
    assert only_pass.log_line() == ("Tot Comp 2 Total Accuracy 50.0 False Negative 0.0 False Alarm 50.0 "
                                    "Defect Correctly Captured 0.0 for Margin 0.5")
    with pytest.raises(InputError, match="unknown TAO definitions"):
        tao_metrics(counts, "7.0")


def test_cutoff_is_strict():
    at = confusion(np.array([0.5, 0.5]), np.array([True, False]), cutoff=0.5)
    assert (at.tp, at.fp, at.tn, at.fn) == (0, 0, 1, 1)
    below = confusion(np.array([0.5, 0.5]), np.array([True, False]), cutoff=np.nextafter(0.5, 0))
    assert (below.tp, below.fp) == (1, 1)


def test_rates_without_a_class_are_none():
    only_pass = confusion(np.array([0.1, 0.9]), np.array([0, 0]), 0.5)
    assert only_pass.defect_capture is None and only_pass.fpr == pytest.approx(0.5)
    only_defects = confusion(np.array([0.1, 0.9]), np.array([1, 1]), 0.5)
    assert only_defects.fpr is None and only_defects.defect_capture == pytest.approx(0.5)
    assert cutoff_for_fpr(sweep(np.array([0.1, 0.9]), np.array([1, 1])), 0.1) is None
    assert cutoff_for_capture(sweep(np.array([0.1, 0.9]), np.array([0, 0])), 0.9) is None
    assert cutoff_for_fpr(sweep(np.array([0.1, 0.9]), np.array([0, 0])), 0.1) is None  # no capture to maximise


def test_sweep_by_hand():
    result = sweep(SCORES, TRUTH)
    # distinct scores 0.1, 0.35, 0.4, 0.8 -> below 0.1, three midpoints, at 0.8
    assert len(result) == 5
    assert result.cutoffs[1:4] == pytest.approx([0.225, 0.375, 0.6], abs=1e-6)
    assert result.fpr.tolist() == [1.0, 0.5, 0.5, 0.0, 0.0]
    assert result.capture.tolist() == [1.0, 1.0, 0.5, 0.5, 0.0]


def test_sweep_is_monotone_and_matches_confusion():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(0, 1, 500), 1).astype(np.float32)  # many ties
    truth = rng.random(500) < 0.3
    scores[truth] += 1.0
    result = sweep(scores, truth)
    assert np.all(np.diff(result.cutoffs) > 0)
    assert np.all(np.diff(result.fpr) <= 0) and np.all(np.diff(result.capture) <= 0)
    assert result.fpr[0] == 1.0 and result.capture[0] == 1.0
    assert result.fpr[-1] == 0.0 and result.capture[-1] == 0.0
    for k in range(0, len(result), 7):
        direct = confusion(scores, truth, result.cutoffs[k])
        assert (direct.tp, direct.fp, direct.tn, direct.fn) == (
            result.tp[k], result.fp[k], result.tn[k], result.fn[k])
    rows = result.subsample(11)
    assert len(rows) == 11 and rows[0].cutoff == result.cutoffs[0] and rows[-1].cutoff == result.cutoffs[-1]


def test_candidate_cutoffs_separate_every_distinct_score():
    cutoffs = candidate_cutoffs(np.array([3.0, 1.0, 1.0, 2.0]))
    assert cutoffs[0] < 1.0 and cutoffs[-1] == 3.0
    assert cutoffs[1:-1].tolist() == [1.5, 2.5]


def test_target_fpr_picks_the_best_capture_with_the_widest_margin():
    result = sweep(SCORES, TRUTH)
    point = cutoff_for_fpr(result, 0.0)
    # FPR 0 needs the 0.4 PASS pair below the cutoff: the lowest such cutoff is 0.6 (capture 0.5)
    assert point.counts.cutoff == pytest.approx(0.6)
    assert point.counts.fpr == 0.0 and point.counts.defect_capture == 0.5
    assert cutoff_for_fpr(result, 0.5).counts.cutoff == pytest.approx(0.225)  # capture 1.0 at FPR 0.5
    # FPR 1.0 allows calling everything a defect, but capture is already 1.0 at FPR 0.5:
    # of the cutoffs with the best capture, the highest (fewest false alarms) wins.
    assert cutoff_for_fpr(result, 1.0).counts.cutoff == pytest.approx(0.225)


def test_target_capture_picks_the_highest_cutoff_that_meets_it():
    result = sweep(SCORES, TRUTH)
    point = cutoff_for_capture(result, 1.0)
    assert point.counts.cutoff == pytest.approx(0.225)
    assert point.counts.defect_capture == 1.0 and point.counts.fpr == 0.5
    assert cutoff_for_capture(result, 0.5).counts.cutoff == pytest.approx(0.6)
    assert cutoff_for_capture(result, 0.0).counts.cutoff == pytest.approx(0.8)
    data = point.to_dict()
    assert data["target"] == "defect_capture" and data["cutoff"] == pytest.approx(0.225)


def test_auc_by_hand():
    # defect/PASS comparisons: 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert auc(SCORES, TRUTH) == pytest.approx(0.75)
    assert auc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)  # a tie counts half
    assert auc(np.array([0.1, 0.2]), np.array([False, True])) == pytest.approx(1.0)
    assert auc(np.array([0.1, 0.2]), np.array([True, True])) is None


def test_per_label():
    table = per_label(["PASS", "MISSING", "PASS", "BRIDGE", "MISSING"], np.array([True, True, False, False, True]))
    assert list(table) == ["PASS", "BRIDGE", "MISSING"]
    assert table["PASS"] == {"pairs": 2, "called_defect": 1, "fpr": 0.5}
    assert table["MISSING"] == {"pairs": 2, "called_defect": 2, "capture": 1.0}
    assert table["BRIDGE"]["capture"] == 0.0


@pytest.mark.parametrize(
    "scores, truth",
    [
        (np.array([0.1, np.nan]), np.array([0, 1])),
        (np.array([0.1, 0.2, 0.3]), np.array([0, 1])),
        (np.array([0.1, 0.2]), np.array([0, 2])),
    ],
)
def test_bad_inputs_are_refused(scores, truth):
    with pytest.raises(InputError):
        confusion(scores, truth, 0.5)


def test_bad_targets_are_refused():
    result = sweep(SCORES, TRUTH)
    with pytest.raises(InputError):
        cutoff_for_fpr(result, 1.5)
    with pytest.raises(InputError):
        cutoff_for_capture(result, -0.1)
