"""Order statistics of ascending sequences, by trtexec's rules: one definition for the
benchmark's latencies (:mod:`changenet_trt.tools.bench`) and the raw-output errors of
:mod:`changenet_trt.evaluation.validate`.

trtexec (NVIDIA/TensorRT, samples/common/sampleReporting.cpp, ``findPercentile`` and
``findMedian``): the percentile is nearest-rank, ``sorted[max(N - 1 - int((1 - p/100) * N), 0)]``
computed in float32 (float64 rounds differently: p99 of 100 values is the 100th in float32, the
99th in float64); the median averages the two middle values for an even N; both are ``inf`` for
an empty sequence (no value is not a zero: an error with no finite element is not "no error").
"""

import math
from typing import Sequence

import numpy as np

from changenet_trt.errors import InputError


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """trtexec's nearest-rank percentile ``p`` (in [0, 100]) of an ascending sequence or array
    (``inf`` when empty)."""
    if not 0.0 <= p <= 100.0:
        raise InputError("percentile outside [0, 100]", found=p)
    count = len(sorted_values)
    if count == 0:
        return math.inf
    one, hundred = np.float32(1.0), np.float32(100.0)
    exclude = int((one - np.float32(p) / hundred) * np.float32(count))
    return float(sorted_values[max(count - 1 - exclude, 0)])


def median(sorted_values: Sequence[float]) -> float:
    """Middle value of an ascending sequence or array; the mean of the two middle ones for an
    even N (``inf`` when empty)."""
    count = len(sorted_values)
    if count == 0:
        return math.inf
    mid = count // 2
    if count % 2:
        return float(sorted_values[mid])
    return (float(sorted_values[mid - 1]) + float(sorted_values[mid])) / 2.0
