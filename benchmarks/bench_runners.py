"""Throughput of our onnxruntime runner against two peers, measured in the same run.

(a) raw ``onnxruntime.InferenceSession.run`` in a plain loop, on the identical input arrays;
(b) ``polygraphy run --onnxrt`` (its reported average inference time; same arrays, fed through
    benchmarks/polygraphy_inputs.py).

"Ours" is ``changenet_trt.tools.bench.run_benchmark``: the trtexec-style loop driving the same
OnnxRuntimeRunner as ``predict`` (worker thread, two buffer slots). Throughput is pairs/s; the
ratio ours/peer is taken per round (the three run back to back, in rotating order) and the
median over rounds is reported. Other work on a shared machine swings single runs by 2x or
more, so each measurement first waits (up to a minute) until the CPUs are idle, and is repeated
(up to 5 times) when other processes used more than 5% of the CPUs while it ran (all CPU time
in /proc/stat minus this process's and its children's). Models are generated on demand into
benchmarks/models/.

    .venv/bin/python benchmarks/bench_runners.py                     # all models, batch 1/16/32
    .venv/bin/python benchmarks/bench_runners.py --models reference --batches 16 --rounds 5
"""

import argparse
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.join(HERE, "models")
GOAL = 0.97

# per model: how to make it and how long to time it (the realistic models take seconds per
# query on two cores, so they get fewer iterations and one round)
MODELS = {
    "reference": dict(rounds=9, duration_s=1.0, iterations=10),
    "realistic-learnable": dict(rounds=2, duration_s=0.0, iterations=4),
    "realistic-euclidean": dict(rounds=2, duration_s=0.0, iterations=4),
}


def cpu_busy_fraction(seconds: float = 0.5) -> float:
    """Share of all CPUs' time spent busy over ``seconds`` (Linux /proc/stat; 0 elsewhere)."""
    def snapshot():
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_idle(limit: float = 0.1, max_wait_s: float = 60.0) -> bool:
    """Wait until the machine is idle (busy share below ``limit``); False if it never was."""
    start = time.time()
    while time.time() - start < max_wait_s:
        if cpu_busy_fraction() < limit:
            return True
    return False


def _busy_seconds() -> float:
    """CPU seconds all processes spent busy since boot (Linux /proc/stat)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def undisturbed(measure_once, tries: int = 5, limit: float = 0.05) -> Dict[str, float]:
    """Run ``measure_once()`` until no other process used more than ``limit`` of the CPUs
    during it; return its result with ``foreign_cpu`` (that share) and ``tries``."""
    cores = os.cpu_count() or 1
    out: Dict[str, float] = {}
    for attempt in range(1, tries + 1):
        wait_until_idle()
        try:
            busy0, own0, wall0 = _busy_seconds(), _own_seconds(), time.perf_counter()
        except (OSError, ValueError, IndexError):  # not Linux: no way to tell
            return dict(measure_once(), foreign_cpu=float("nan"), tries=1)
        out = measure_once()
        wall = time.perf_counter() - wall0
        foreign = (_busy_seconds() - busy0) - (_own_seconds() - own0)
        out["foreign_cpu"] = max(foreign, 0.0) / max(wall * cores, 1e-9)
        out["tries"] = attempt
        if out["foreign_cpu"] <= limit:
            break
    return out


def model_path(name: str) -> str:
    """Path of a benchmark model, written on first use."""
    path = os.path.join(MODELS_DIR, name.replace("-", "_") + ".onnx")
    if os.path.exists(path):
        return path
    print("writing {} ...".format(path), flush=True)
    if name == "reference":
        from changenet_trt.models.reference import write_reference_model

        return write_reference_model(path, kind="learnable")
    from changenet_trt.models.realistic import write_realistic_model

    return write_realistic_model(path, kind=name.split("-", 1)[1])


def query_seconds(path: str, batch: int) -> float:
    """A rough time of one batch, to size the runs (median of 3 after one warm-up)."""
    import onnxruntime as ort

    from changenet_trt.contract import read_contract
    from changenet_trt.tools.bench import random_inputs

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = random_inputs(read_contract(path), batch)
    session.run(None, feed)
    times = []
    for _ in range(3 if batch <= 16 else 1):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_ours(path: str, batch: int, queries: int, warmup_ms: float, times_path: str = "") -> Dict[str, float]:
    from changenet_trt.tools import bench, bench_report

    options = bench.BenchOptions(batch=batch, warmup_ms=warmup_ms, duration_s=0.0, iterations=queries)
    result = bench.run_benchmark(path, options)
    if times_path:
        bench_report.export_times(result, times_path)
        bench_report.latency_histogram(times_path, times_path.replace(".json", ".png"))
    return {"fps": result.fps, "queries": len(result.timed), "median_ms": result.stats("latency").median}


def run_raw(path: str, batch: int, queries: int, warmup_ms: float) -> Dict[str, float]:
    """Plain InferenceSession.run loop on the same arrays: warm up for warmup_ms, then time."""
    import onnxruntime as ort

    from changenet_trt.contract import read_contract
    from changenet_trt.tools.bench import random_inputs

    contract = read_contract(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = random_inputs(contract, batch)
    outputs = [contract.output]
    start = time.perf_counter()
    while True:
        session.run(outputs, feed)
        if (time.perf_counter() - start) * 1000.0 >= warmup_ms:
            break
    start = time.perf_counter()
    for _ in range(queries):
        session.run(outputs, feed)
    wall = time.perf_counter() - start
    return {"fps": queries * batch / wall, "queries": queries, "median_ms": wall / queries * 1000.0}


def polygraphy_command(path: str, warmups: int) -> List[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "polygraphy")
    return [exe, "run", path, "--onnxrt", "--sequential-runners", "--warm-up", str(warmups),
            "--data-loader-script", os.path.join(HERE, "polygraphy_inputs.py") + ":load_data"]


def run_polygraphy(path: str, batch: int, queries: int, warmups: int) -> Dict[str, float]:
    env = dict(os.environ, CHANGENET_BENCH_MODEL=path, CHANGENET_BENCH_BATCH=str(batch),
               CHANGENET_BENCH_COUNT=str(queries), CHANGENET_BENCH_SEED="0")
    proc = subprocess.run(polygraphy_command(path, warmups), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)
    match = re.search(r"Completed (\d+) iteration\(s\) in .*Average inference time: ([0-9.eE+-]+) ms", proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError("polygraphy failed (exit {}):\n{}".format(proc.returncode, proc.stdout[-3000:]))
    avg_ms = float(match.group(2))
    return {"fps": batch / avg_ms * 1000.0, "queries": int(match.group(1)), "median_ms": avg_ms}


def measure(name: str, batch: int, rounds: int, duration_s: float, iterations: int, warmup_ms: float,
            plots: str) -> Dict[str, object]:
    path = model_path(name)
    per_query = query_seconds(path, batch)
    queries = max(iterations, int(math.ceil(duration_s / per_query)))
    warmups = max(1, int(math.ceil(warmup_ms / 1000.0 / per_query)))
    print("{} batch {}: ~{:.1f} ms per query -> {} timed queries per runner, {} round(s)".format(
        name, batch, per_query * 1000, queries, rounds), flush=True)
    runs: Dict[str, List[Dict[str, float]]] = {"ours": [], "raw": [], "polygraphy": []}
    order = ["ours", "raw", "polygraphy"]
    for r in range(rounds):
        for who in order[r % 3:] + order[:r % 3]:
            if who == "ours":
                times = ""
                if plots and r == 0 and batch == 16:
                    times = os.path.join(plots, "latency_{}_b{}.json".format(name, batch))
                out = undisturbed(functools.partial(run_ours, path, batch, queries, warmup_ms, times))
            elif who == "raw":
                out = undisturbed(lambda: run_raw(path, batch, queries, warmup_ms))
            else:
                out = undisturbed(lambda: run_polygraphy(path, batch, queries, warmups))
            runs[who].append(out)
            print("  round {} {:<10} {:9.2f} pairs/s  ({} queries; other processes {:.1%} of the CPUs, try {})".format(
                r + 1, who, out["fps"], out["queries"], out["foreign_cpu"], out["tries"]), flush=True)
    ratio_raw = statistics.median(o["fps"] / p["fps"] for o, p in zip(runs["ours"], runs["raw"]))
    ratio_poly = statistics.median(o["fps"] / p["fps"] for o, p in zip(runs["ours"], runs["polygraphy"]))
    return {
        "model": name, "batch": batch, "rounds": rounds, "queries": queries,
        "fps": {who: statistics.median(o["fps"] for o in outs) for who, outs in runs.items()},
        "ratio_vs_raw": ratio_raw, "ratio_vs_polygraphy": ratio_poly, "runs": runs,
        "ratios_vs_raw": sorted(o["fps"] / p["fps"] for o, p in zip(runs["ours"], runs["raw"])),
        "disturbed_runs": sum(1 for outs in runs.values() for o in outs if o["foreign_cpu"] > 0.05),
    }


def markdown(rows: List[Dict[str, object]]) -> str:
    lines = ["| model | batch | ours pairs/s | raw ORT pairs/s | Polygraphy pairs/s | ours / raw | ours / Polygraphy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        fps = row["fps"]
        lines.append("| {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.3f}{} | {:.3f} |".format(
            row["model"], row["batch"], fps["ours"], fps["raw"], fps["polygraphy"], row["ratio_vs_raw"],
            "" if row["batch"] != 16 else (" (goal >= {})".format(GOAL)), row["ratio_vs_polygraphy"]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma separated: " + ", ".join(MODELS))
    parser.add_argument("--batches", default="1,16,32", help="comma separated batch sizes (default: 1,16,32)")
    parser.add_argument("--rounds", type=int, help="rounds per model and batch (default: per model)")
    parser.add_argument("--duration", type=float, help="seconds of timed queries per runner (default: per model)")
    parser.add_argument("--warmUp", dest="warmup", type=float, default=200.0, help="warm-up ms (default: 200)")
    parser.add_argument("--json", help="also write every measurement to this JSON file")
    parser.add_argument("--plots", help="folder for the batch-16 exported times and latency histograms")
    args = parser.parse_args()
    if not os.path.exists(polygraphy_command("", 0)[0]):
        parser.error("polygraphy is not installed in this environment; install the bench extra: "
                     "{} -m pip install -e '.[bench]'".format(sys.executable))
    from changenet_trt.tools.machine import machine_info

    machine = machine_info("onnxruntime")
    print("machine: {} ({} cores), onnxruntime {}, {}".format(machine["cpu"], machine["cpu_count"],
                                                            machine.get("onnxruntime"), machine["platform"]))
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            parser.error("unknown model {!r}; choose from {}".format(name, ", ".join(MODELS)))
        settings = dict(MODELS[name])
        if args.rounds:
            settings["rounds"] = args.rounds
        if args.duration is not None:
            settings["duration_s"] = args.duration
        for batch in [int(b) for b in args.batches.split(",") if b.strip()]:
            rows.append(measure(name, batch, settings["rounds"], settings["duration_s"], settings["iterations"],
                                args.warmup, args.plots or ""))
    print()
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "command": " ".join(sys.argv), "rows": rows}, handle, indent=1)
        print("wrote {}".format(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
