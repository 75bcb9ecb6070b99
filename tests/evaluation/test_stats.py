"""One definition of percentile and median (evaluation/stats.py), by trtexec's rules, for the
benchmark's latencies and validate's raw-output errors.

Expected numbers are worked out by hand from trtexec's findPercentile / findMedian
(NVIDIA/TensorRT samples/common/sampleReporting.cpp).
"""

import math

import numpy as np
import pytest

from changenet_trt.errors import InputError
from changenet_trt.evaluation import validate
from changenet_trt.evaluation.stats import median, percentile


def test_percentile_is_trtexec_nearest_rank_in_float32():
    ten = list(range(1, 11))
    # exclude = int((1 - p/100) * N) in float32: p90 of 10 -> int(1.0000002) = 1 -> sorted[8]
    assert percentile(ten, 90) == 9
    assert percentile(ten, 95) == 10  # int(0.5) = 0 -> sorted[9]
    assert percentile(ten, 50) == 5  # int(5) = 5 -> sorted[4]
    assert percentile(ten, 0) == 1  # int(10) = 10 -> max(-1, 0) = 0
    assert percentile(ten, 100) == 10
    hundred = list(range(1, 101))
    # float32: (1 - 0.99f) * 100 = 0.99999905 -> 0 excluded -> the maximum (float64 would say 99)
    assert percentile(hundred, 99) == 100
    assert percentile(hundred, 90) == 90  # (1 - 0.9f) * 100 = 10.000002 -> sorted[89]
    seven = [10, 20, 30, 40, 50, 60, 70]
    assert percentile(seven, 90) == 70  # int(0.7) = 0
    assert percentile(seven, 50) == 40  # int(3.5) = 3 -> sorted[3]
    assert percentile([], 90) == math.inf
    with pytest.raises(InputError):
        percentile(ten, 101)


def test_median_averages_the_two_middle_values_for_even_counts():
    assert median([1, 2, 3, 4]) == 2.5
    assert median([1, 2, 3, 4, 100]) == 3
    assert median([7]) == 7
    assert median([]) == math.inf


def test_numpy_arrays_are_read_as_sequences():
    assert percentile(np.arange(1.0, 101.0), 99) == 100.0
    assert median(np.array([1.0, 2.0, 3.0, 4.0])) == 2.5
    assert median(np.array([])) == math.inf


def test_validate_error_percentile_is_trtexec_nearest_rank_in_float32():
    # |diff| = 1..100: float32's rule takes the maximum as p99 (float64 would take the 99th)
    ref = np.zeros(100)
    stats = validate.error_stats(ref, np.arange(1.0, 101.0))
    assert stats.abs_p99 == 100.0


def test_validate_error_median_is_inf_when_no_element_is_finite():
    # every position differs by a non-finite amount: no finite error to take a median of, and
    # "0.0" would read as "no error"
    stats = validate.error_stats(np.array([1.0, 2.0]), np.array([np.inf, np.nan]))
    assert stats.nonfinite == 2
    assert stats.abs_median == math.inf
    assert stats.abs_mean == math.inf
