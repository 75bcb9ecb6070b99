"""Where the onnxruntime runner loses time against a plain ``InferenceSession.run`` loop.

Interleaved rounds (each run repeated when other processes disturbed it, see bench_runners.py)
of the same model, batch and input arrays:

* ``raw``:            ``session.run`` in a loop in the calling thread;
* ``runner, 2 in flight``: ``bench.inference_loop`` with trtexec's double buffering;
* ``runner, 1 in flight``: the same with one query at a time (``bench``'s onnxruntime default);
* ``in the caller``: the runner's own session and buffers, run by the calling thread (what the
  runner would cost without its worker thread; uses the runner's private ``_run``).

Then one instrumented run of ``runner, 1 in flight`` gives the hand-over gaps: from ``submit``
to the worker starting ``session.run``, and from its end to ``fetch`` returning.

    .venv/bin/python benchmarks/profile_ort_runner.py --batch 16 --rounds 12
"""

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_runners  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="reference", help="a model name of bench_runners.py (default: reference)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--queries", type=int, help="queries per run (default: about 3200 pairs)")
    args = parser.parse_args()

    from changenet_trt.api import make_runner
    from changenet_trt.tools import bench

    path = bench_runners.model_path(args.model)
    batch = args.batch
    queries = args.queries or max(10, 3200 // batch)
    warmup_ms = 200.0

    def runner_loop(overlap: bool) -> Dict[str, float]:
        with make_runner(path, batch_size=batch) as runner:
            bench.fill_random(runner, batch)
            traces = bench.inference_loop(runner, batch, queries, 0.0, warmup_ms, overlap=overlap)
        _, timed = bench.split_warmup(traces, warmup_ms)
        return {"fps": len(timed) * batch / ((timed[-1].d2h_end - timed[0].h2d_start) / 1000.0)}

    def in_caller() -> Dict[str, float]:
        with make_runner(path, batch_size=batch) as runner:
            bench.fill_random(runner, batch)
            start = time.perf_counter()
            while (time.perf_counter() - start) * 1000.0 < warmup_ms:
                runner._run(batch, 0)
            start = time.perf_counter()
            for _ in range(queries):
                runner._run(batch, 0)
            return {"fps": queries * batch / (time.perf_counter() - start)}

    variants: List[tuple] = [
        ("raw InferenceSession.run", lambda: bench_runners.run_raw(path, batch, queries, warmup_ms)),
        ("runner, 2 in flight", lambda: runner_loop(True)),
        ("runner, 1 in flight", lambda: runner_loop(False)),
        ("runner's session, in the caller", in_caller),
    ]
    fps: Dict[str, List[float]] = {name: [] for name, _ in variants}
    for r in range(args.rounds):
        for name, run in variants[r % len(variants):] + variants[:r % len(variants)]:
            fps[name].append(bench_runners.undisturbed(run)["fps"])
        print("round {} done".format(r + 1), flush=True)
    base = fps[variants[0][0]]
    print("\n{} batch {}, {} queries per run, {} rounds\n".format(args.model, batch, queries, args.rounds))
    print("| variant | median pairs/s | median ratio to raw | ratio range |")
    print("|---|---:|---:|---:|")
    for name, values in fps.items():
        ratios = [v / b for v, b in zip(values, base)]
        print("| {} | {:.1f} | {:.3f} | {:.2f}-{:.2f} |".format(
            name, statistics.median(values), statistics.median(ratios), min(ratios), max(ratios)))
    gaps = hand_over_gaps(path, batch, queries, warmup_ms)
    print("\nrunner, 1 in flight, medians: submit -> session.run starts {:.0f} us; session.run {:.0f} us; "
          "session.run ends -> fetch returns {:.0f} us".format(*gaps))
    return 0


def hand_over_gaps(path: str, batch: int, queries: int, warmup_ms: float) -> tuple:
    """Median (submit -> run start, run, run end -> fetch return) in microseconds."""
    from changenet_trt.api import make_runner
    from changenet_trt.tools import bench

    runner = make_runner(path, batch_size=batch)
    marks: Dict[str, float] = {}
    rows: List[tuple] = []
    submit: Callable = runner.submit
    fetch: Callable = runner.fetch
    run = runner._run

    def timed_submit(n, slot=0):
        marks["submit"] = time.perf_counter()
        submit(n, slot)

    def timed_run(n, slot):
        marks["start"] = time.perf_counter()
        out = run(n, slot)
        marks["end"] = time.perf_counter()
        return out

    def timed_fetch(slot=0, copy=True):
        out = fetch(slot, copy)
        rows.append((marks["start"] - marks["submit"], marks["end"] - marks["start"], time.perf_counter() - marks["end"]))
        return out

    runner.submit, runner.fetch, runner._run = timed_submit, timed_fetch, timed_run
    bench_runners.wait_until_idle()
    with runner:
        bench.fill_random(runner, batch)
        bench.inference_loop(runner, batch, queries, 0.0, warmup_ms, overlap=False)
    rows = rows[len(rows) // 10:]
    return tuple(statistics.median(r[i] for r in rows) * 1e6 for i in range(3))


if __name__ == "__main__":
    sys.exit(main())
