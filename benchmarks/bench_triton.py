"""Pairs/s through a local tritonserver against local ONNX Runtime, measured in the same run.

Variants (the reference model, batch 16, inputs prepared once in the runner's own buffers, so
this measures transport + inference, not decoding):

- local: our OnnxRuntimeRunner on the float32 model (the baseline of the ratios);
- triton grpc/http, float32 inputs, with and without system shared memory;
- triton grpc/http, uint8 inputs (normalisation in the graph: 4x fewer bytes), with and without.

The server is PyPI's tritonserver (nvidia-pytriton, python backend running ONNX Runtime on the
CPU; started from .venv-triton: `make triton-venv`). Each variant runs ``--seconds`` after a
warm-up, two requests in flight; rounds rotate the order and the median per variant is reported
with its ratio to local.

    .venv/bin/python benchmarks/bench_triton.py --seconds 5 --rounds 3 [--json out.json]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np


def pairs_per_s(runner, batch: int, seconds: float) -> float:
    """Fill both slots once, then keep two batches in flight for ``seconds``; return pairs/s."""
    rng = np.random.default_rng(0)
    with runner:
        for slot in range(2):
            for buf in runner.input_buffers(batch, slot).values():
                if buf.dtype == np.uint8:
                    buf[...] = rng.integers(0, 256, size=buf.shape, dtype=np.uint8)
                else:
                    buf[...] = rng.normal(size=buf.shape).astype(buf.dtype)
        runner.run(batch, 0)  # warm-up
        runner.submit(batch, 0)
        done, slot, start = 0, 0, time.perf_counter()
        while True:
            runner.submit(batch, 1 - slot)
            runner.fetch(slot)
            done += batch
            slot = 1 - slot
            if time.perf_counter() - start >= seconds:
                break
        runner.fetch(slot)
        done += batch
        return done / (time.perf_counter() - start)


def main(argv: List[str] = None) -> int:
    from changenet_trt.api import make_runner
    from changenet_trt.engine.triton_repo import write_model_repository
    from changenet_trt.models.reference import write_reference_model
    from changenet_trt.tools.triton_server import LocalTritonServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads, local and in the server")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-triton-")
    model = write_reference_model(os.path.join(work, "reference.onnx"), kind="learnable")
    repo = os.path.join(work, "repo")
    write_model_repository(model, repo, name="f32", max_batch=args.batch, ort_threads=args.threads)
    write_model_repository(model, repo, name="u8", max_batch=args.batch, uint8_input=True, ort_threads=args.threads)
    results: Dict[str, List[float]] = {}
    with LocalTritonServer(repo) as server:
        variants = {"local onnxruntime (float32)": lambda: make_runner(model, batch_size=args.batch, threads=args.threads)}
        for scheme in ("grpc", "http"):
            for name, label in (("f32", "float32"), ("u8", "uint8")):
                for shm in (True, False):
                    url = getattr(server, scheme + "_url")(name)
                    key = "triton {} {} {}".format(scheme, label, "shared memory" if shm else "over the socket")
                    variants[key] = (lambda url=url, shm=shm: make_runner(url, batch_size=args.batch, shared_memory=shm))
        keys = list(variants)
        for round_index in range(args.rounds):
            order = keys[round_index % len(keys):] + keys[:round_index % len(keys)]
            for key in order:
                results.setdefault(key, []).append(pairs_per_s(variants[key](), args.batch, args.seconds))
    base = statistics.median(results[keys[0]])
    print("batch {}, {} s per run, {} rounds, ONNX Runtime threads {}; median pairs/s (ratio to local)".format(
        args.batch, args.seconds, args.rounds, args.threads))
    for key in keys:
        med = statistics.median(results[key])
        print("  {:<45} {:8.1f}  ({:.2f}x)   runs: {}".format(key, med, med / base, ", ".join(
            "{:.1f}".format(v) for v in results[key])))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "pairs_per_s": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
