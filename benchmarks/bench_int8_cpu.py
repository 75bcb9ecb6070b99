"""INT8 (Q/DQ) against float32 on the CPU: pairs/s of the realistic model, in the same run.

The INT8 model is made by ``changenet_trt.engine.precision.to_int8`` (symmetric int8, per-channel
weights, the 3-channel stem left float) from the realistic model, calibrated on synthetic TAO
pairs written by ``changenet_trt.data.synth`` and read back through the project's data pipeline.
Both models then run in plain ``InferenceSession.run`` loops on the same arrays, alternating
per round (the order rotates), each measurement repeated while other processes used more than
5% of the CPUs (benchmarks/bench_runners.py's ``undisturbed``). The ratio INT8 / float32 is taken
per round; the median is reported with the CPU's model name and whether it has int8
dot-product instructions (avx512_vnni, avx_vnni: /proc/cpuinfo), which decide whether ONNX
Runtime's int8 kernels beat its float32 ones. The INT8 model's accuracy is reported against
float32 on held-back synthetic pairs (``validate``: score error, flips, FPR and capture).

    .venv/bin/python benchmarks/bench_int8_cpu.py                       # a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_int8_cpu.py --rounds 3 --queries 4 --json int8.json
"""

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_runners import model_path, undisturbed  # noqa: E402

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_description() -> Dict[str, object]:
    """CPU model name and which int8 dot-product flags it has (Linux /proc/cpuinfo)."""
    name, flags = "unknown", set()  # type: str, set
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown":
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": name, "cores": os.cpu_count(), "int8_flags": {f: f in flags for f in VNNI_FLAGS},
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags}


def time_session(path: str, batch: int, queries: int) -> Dict[str, float]:
    """pairs/s of ``queries`` runs of one batch after one warm-up run."""
    import onnxruntime as ort

    from changenet_trt.contract import read_contract
    from changenet_trt.tools.bench import random_inputs

    contract = read_contract(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = random_inputs(contract, batch)
    session.run([contract.output], feed)
    start = time.perf_counter()
    for _ in range(queries):
        session.run([contract.output], feed)
    wall = time.perf_counter() - start
    return {"fps": queries * batch / wall, "queries": queries, "ms_per_query": wall / queries * 1000.0}


def measure_loaded(measure) -> Dict[str, float]:
    """``measure()`` once, with the share of the CPUs other processes used meanwhile."""
    from bench_runners import _busy_seconds, _own_seconds

    busy0, own0, wall0 = _busy_seconds(), _own_seconds(), time.perf_counter()
    out = measure()
    wall = time.perf_counter() - wall0
    foreign = (_busy_seconds() - busy0) - (_own_seconds() - own0)
    out["foreign_cpu"] = max(foreign, 0.0) / max(wall * (os.cpu_count() or 1), 1e-9)
    out["tries"] = 1
    return out


def make_int8(source: str, out: str, method: str, calib_pairs: int, held_pairs: int, workdir: str):
    from changenet_trt.data.pairs import dataset_source
    from changenet_trt.data.synth import synthesize
    from changenet_trt.engine.calibration import dataset_batches
    from changenet_trt.engine.int8 import to_int8

    calib = synthesize(os.path.join(workdir, "calib"), pairs=calib_pairs, seed=101)
    held = synthesize(os.path.join(workdir, "held"), pairs=held_pairs, seed=102)
    _, batches = dataset_batches(calib.csv_path, (3, 512, 128), 4, images_dir=calib.images_dir)
    return to_int8(source, out, batches, method=method,
                   make_source=lambda c, norm: dataset_source(held.csv_path, held.images_dir, c.input_shape, norm))


def markdown(cpu: Dict[str, object], rows: Dict[str, List[Dict[str, float]]], ratios: List[float], batch: int) -> str:
    flags = ", ".join("{} {}".format(f, "yes" if on else "no") for f, on in cpu["int8_flags"].items())
    lines = ["CPU: {} ({} cores; {})".format(cpu["model"], cpu["cores"], flags), "",
             "| model | batch | pairs/s (median) | per round |", "|---|---:|---:|---|"]
    for name, runs in rows.items():
        lines.append("| {} | {} | {:.2f} | {} |".format(name, batch, statistics.median(r["fps"] for r in runs),
                                                      ", ".join("{:.2f}".format(r["fps"]) for r in runs)))
    lines += ["", "INT8 / float32: **{:.2f}x** (median of {} rounds; {})".format(
        statistics.median(ratios), len(ratios), ", ".join("{:.2f}".format(r) for r in ratios))]
    return "\n".join(lines)


def measure_rounds(paths: Dict[str, str], batch: int, queries: int, rounds: int,
                   no_wait: bool) -> Dict[str, List[Dict[str, float]]]:
    """``name -> one time_session result per round`` for every model of ``paths``.

    Each round measures every model once; the order rotates by one per round, so no model is
    always the one that runs first (or right after another's load).
    """
    rows = {name: [] for name in paths}  # type: Dict[str, List[Dict[str, float]]]
    names = list(paths)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            measure = functools.partial(time_session, paths[name], batch, queries)
            out = measure_loaded(measure) if no_wait else undisturbed(measure)
            rows[name].append(out)
            print("  round {} {:<8} {:7.2f} pairs/s ({:.0f} ms per batch; other processes {:.1%} of the CPUs)".format(
                r + 1, name, out["fps"], out["ms_per_query"], out["foreign_cpu"]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="realistic-learnable", choices=["realistic-learnable", "realistic-euclidean"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=3, help="timed batches per model per round (default 3)")
    parser.add_argument("--method", default="percentile", choices=["entropy", "percentile"])
    parser.add_argument("--calib-pairs", type=int, default=16)
    parser.add_argument("--held-pairs", type=int, default=32)
    parser.add_argument("--no-wait", action="store_true",
                        help="measure at once, without waiting for idle CPUs (the share other processes used is "
                             "still reported; the per-round ratio keeps both models under the same load)")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    import onnxruntime

    cpu = cpu_description()
    print("cpu: {} ({} cores), int8 flags {}, onnxruntime {}".format(
        cpu["model"], cpu["cores"], cpu["int8_flags"], onnxruntime.__version__), flush=True)
    source = model_path(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as workdir:
        int8_path = os.path.join(os.path.dirname(source), os.path.basename(source).replace(".onnx", "_int8.onnx"))
        start = time.perf_counter()
        report = make_int8(source, int8_path, args.method, args.calib_pairs, args.held_pairs, workdir)
        print("INT8 model made in {:.0f} s".format(time.perf_counter() - start), flush=True)
        for line in report.summary_lines():
            print(line)
    accuracy = report.validation
    rows = measure_rounds({"float32": source, "int8": int8_path}, args.batch, args.queries, args.rounds, args.no_wait)
    ratios = [i["fps"] / f["fps"] for i, f in zip(rows["int8"], rows["float32"])]
    print()
    print(markdown(cpu, rows, ratios, args.batch))
    metrics = accuracy.metrics
    print("accuracy on {}: flips {}, max |score diff| {:.4g}, FPR float32 {} / int8 {}, capture float32 {} / int8 {}".format(
        accuracy.source, accuracy.flips.count, accuracy.score.abs_max, metrics["onnx"]["fpr"], metrics["engine"]["fpr"],
        metrics["onnx"]["defect_capture"], metrics["engine"]["defect_capture"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": cpu, "onnxruntime": onnxruntime.__version__, "model": args.model, "batch": args.batch,
                       "method": args.method, "runs": rows, "ratios": ratios,
                       "accuracy": {"pairs": accuracy.pairs, "flips": accuracy.flips.count,
                                    "score_abs_max": accuracy.score.abs_max, "metrics": metrics}},
                      handle, indent=2, sort_keys=True)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
