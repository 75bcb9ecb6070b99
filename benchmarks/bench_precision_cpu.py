"""float32 / float16 / INT8 models of one ChangeNet export side by side on ONNX Runtime's CPU provider.

Takes the three ONNX files ``prepare`` wrote (``prepare MODEL -o fp16.onnx --precision fp16``,
``--precision int8``) and times each in plain ``InferenceSession.run`` loops on the same random
inputs, alternating per round (the order rotates), as benchmarks/bench_int8_cpu.py does. Reports
pairs/s per model and the per-round ratio of each typed model to float32 (median), so the
ratios hold under the same load even on a shared machine. ONNX Runtime's CPU provider has few
float16 kernels (it casts around the others) and runs Q/DQ Convs in float: these numbers say
what a CPU deployment of the typed files costs, not what TensorRT makes of them.

    .venv/bin/python benchmarks/bench_precision_cpu.py --float32 m.onnx --fp16 m_fp16.onnx --int8 m_int8.onnx
    .venv/bin/python benchmarks/bench_precision_cpu.py ... --batch 4 --rounds 3 --queries 2 --no-wait --json out.json
"""

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_int8_cpu import cpu_description, measure_rounds  # noqa: E402


def markdown(cpu: Dict[str, object], rows: Dict[str, List[Dict[str, float]]], ratios: Dict[str, List[float]],
             batch: int) -> str:
    flags = ", ".join("{} {}".format(f, "yes" if on else "no") for f, on in cpu["int8_flags"].items())
    lines = ["CPU: {} ({} cores; {})".format(cpu["model"], cpu["cores"], flags), "",
             "| model | batch | pairs/s (median) | per round | / float32 (median of rounds) |",
             "|---|---:|---:|---|---:|"]
    for name, runs in rows.items():
        ratio = "1" if name == "float32" else "{:.2f}x".format(statistics.median(ratios[name]))
        lines.append("| {} | {} | {:.2f} | {} | {} |".format(
            name, batch, statistics.median(r["fps"] for r in runs), ", ".join("{:.2f}".format(r["fps"]) for r in runs),
            ratio))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--float32", required=True, metavar="ONNX", help="the float32 (dynamic batch) model")
    parser.add_argument("--fp16", metavar="ONNX", help="its float16 model (prepare --precision fp16)")
    parser.add_argument("--int8", metavar="ONNX", help="its INT8 Q/DQ model (prepare --precision int8)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=2, help="timed batches per model per round (default 2)")
    parser.add_argument("--no-wait", action="store_true",
                        help="measure at once, without waiting for idle CPUs (the share other processes used is "
                             "still reported; the per-round ratios keep the models under the same load)")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    import onnxruntime

    paths = {"float32": args.float32}
    for name, path in (("float16", args.fp16), ("int8", args.int8)):
        if path:
            paths[name] = path
    for name, path in paths.items():
        if not os.path.isfile(path):
            print("error: the {} model {} does not exist".format(name, path), file=sys.stderr)
            return 2
    cpu = cpu_description()
    print("cpu: {} ({} cores), int8 flags {}, onnxruntime {}".format(
        cpu["model"], cpu["cores"], cpu["int8_flags"], onnxruntime.__version__), flush=True)
    rows = measure_rounds(paths, args.batch, args.queries, args.rounds, args.no_wait)
    ratios = {name: [m["fps"] / f["fps"] for m, f in zip(rows[name], rows["float32"])] for name in paths}
    print()
    print(markdown(cpu, rows, ratios, args.batch))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": cpu, "onnxruntime": onnxruntime.__version__, "models": paths, "batch": args.batch,
                       "runs": rows, "ratios": ratios}, handle, indent=2, sort_keys=True)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
