"""The benchmark's outputs: trtexec's text report (:func:`format_report`), the ``--json``
summary, ``--exportTimes`` (trtexec's per-query JSON, read back by :func:`read_exported_times`)
and the latency histogram, each written whole (:mod:`changenet_trt.files`).
"""

import json
from typing import Dict, List, Sequence

import numpy as np

from changenet_trt.errors import InputError
from changenet_trt.evaluation.plots import histogram_png
from changenet_trt.files import atomic_write, check_output_file, write_json_report
from changenet_trt.tools.bench import BenchResult, Stats, stream_number, summarize


def _perf_string(stats: Stats, percentiles: Sequence[float]) -> str:
    text = "min = {} ms, max = {} ms, mean = {} ms, median = {} ms".format(
        stream_number(stats.min), stream_number(stats.max), stream_number(stats.mean), stream_number(stats.median))
    for p in percentiles:
        text += ", percentile({}%) = {} ms".format(stream_number(p), stream_number(stats.percentiles[float(p)]))
    return text


def format_report(result: BenchResult) -> str:
    """The trtexec-style text report: prolog, trace averages, performance summary, warnings."""
    opts = result.options
    lines = []
    lines.append("=== Benchmark ===")
    lines.append("Model: {} ({}, batch {} pairs per query, {} stream{}{})".format(
        result.model, result.backend, result.batch, opts.streams, "s" if opts.streams > 1 else "",
        ", end to end: decode + preprocess + inference" if result.end_to_end else ""))
    for note in result.notes:
        lines.append(note)
    lines.append("Warmup completed {} queries over {} ms".format(len(result.warmup), stream_number(opts.warmup_ms)))
    lines.append("Timing trace has {} queries over {} s".format(len(result.timed), stream_number(result.walltime_ms / 1000.0)))
    lines.append("")
    lines.append("=== Trace details ===")
    lines.append("Trace averages of {} runs:".format(opts.avg_runs))
    runs = opts.avg_runs
    for lo in range(0, len(result.timed) - runs + 1, runs):
        chunk = result.timed[lo:lo + runs]
        lines.append("Average on {} runs - GPU latency: {} ms - Host latency: {} ms (enqueue {} ms)".format(
            runs,
            stream_number(sum(t.compute_ms for t in chunk) / runs),
            stream_number(sum(t.latency_ms for t in chunk) / runs),
            stream_number(sum(t.enqueue_ms for t in chunk) / runs),
        ))
    lines.append("")
    lines.append("=== Performance summary ===")
    lines.append("Throughput: {} qps".format(stream_number(result.qps)))
    lines.append("FPS: {} pairs/s (qps x batch {})".format(stream_number(result.fps), result.batch))
    percentiles = list(opts.percentiles)
    for label, metric in (("Latency", "latency"), ("Enqueue Time", "enqueue"), ("H2D Latency", "h2d"),
                          ("GPU Compute Time", "compute"), ("D2H Latency", "d2h")):
        lines.append("{}: {}".format(label, _perf_string(result.stats(metric), percentiles)))
    if result.batch_times_ms:
        lines.append("End-to-End Batch Time: {}".format(
            _perf_string(summarize(result.batch_times_ms, percentiles), percentiles)))
    lines.append("Total Host Walltime: {} s".format(stream_number(result.walltime_ms / 1000.0)))
    lines.append("Total GPU Compute Time: {} s".format(stream_number(result.total_compute_s)))
    warnings = result.warnings + result.performance_warnings()
    if warnings:
        lines.append("")
        lines.extend("[W] " + line for w in warnings for line in w.splitlines())
    lines.append("")
    return "\n".join(lines)


def export_times(result: BenchResult, path: str) -> str:
    """Write the timed queries as trtexec's ``--exportTimes`` JSON (a list of per-query records)."""
    _write_text(path, json.dumps([t.export() for t in result.timed], indent=1) + "\n")
    return path


def write_json(result: BenchResult, path: str) -> str:
    """Write :meth:`BenchResult.to_dict` to ``path``."""
    return write_json_report(path, result.to_dict(), what="bench JSON report")


def read_exported_times(path: str) -> List[Dict[str, float]]:
    """Read an ``--exportTimes`` file (ours or trtexec's)."""
    try:
        with open(path) as handle:
            records = json.load(handle)
    except (OSError, ValueError) as exc:
        raise InputError("cannot read exported times {}: {}".format(path, exc)) from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "latencyMs" in r for r in records):
        raise InputError("not an --exportTimes file: {}".format(path),
                         expected="a JSON list of records with latencyMs", found=type(records).__name__)
    return records


def latency_histogram(times_path: str, png_path: str, bins: int = 50) -> str:
    """Histogram PNG of the latency and GPU compute time in an ``--exportTimes`` file."""
    return _histogram(read_exported_times(times_path), png_path, bins)


def latency_histogram_png(result: BenchResult, png_path: str, bins: int = 50) -> str:
    """Histogram PNG of the timed queries' latency and GPU compute time."""
    return _histogram([t.export() for t in result.timed], png_path, bins)


def _histogram(records: Sequence[Dict[str, float]], png_path: str, bins: int) -> str:
    latency = np.array([r["latencyMs"] for r in records], dtype=np.float64)
    compute = np.array([r.get("computeMs", np.nan) for r in records], dtype=np.float64)
    series = {"Latency": latency}
    if not np.allclose(latency, compute, equal_nan=False):
        # with transfers (TensorRT) the compute share is worth its own bars
        series["GPU Compute Time"] = compute
    return histogram_png(series, png_path, title="Query latency ({} queries)".format(len(records)),
                         xlabel="ms", bins=bins)


def _write_text(path: str, text: str) -> None:
    atomic_write(check_output_file(path, what="--exportTimes file"), text)
