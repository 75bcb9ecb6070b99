"""``make triton-demo``: serve the reference model from a local tritonserver and evaluate through it.

Writes the reference model and a synthetic data set, exports a Triton repository (python
platform: the one PyPI's tritonserver can serve), starts the server on 127.0.0.1, runs ``eval``
through gRPC and HTTP and shows that every score equals the local ONNX Runtime run.
"""

import argparse
import os
import sys
from typing import List, Optional

import numpy as np

from changenet_trt.data.synth import synthesize
from changenet_trt.engine.triton_repo import write_model_repository
from changenet_trt.errors import ChangeNetError
from changenet_trt.evaluation.evaluate import evaluate
from changenet_trt.models.reference import write_reference_model
from changenet_trt.tools.triton_server import LocalTritonServer


def run_triton_demo(out: str = "triton-demo-output", pairs: int = 200, seed: int = 7) -> int:
    """Run the demo; return 0 when every score through Triton equals the local run, else 1."""
    model = write_reference_model(os.path.join(out, "reference_learnable.onnx"), kind="learnable")
    print("[1/4] model: {}".format(model))
    data = synthesize(os.path.join(out, "data"), pairs=pairs, defect_rate=0.3, seed=seed)
    print("[2/4] data: {} synthetic pairs -> {}".format(pairs, data.csv_path))
    report = write_model_repository(model, os.path.join(out, "repo"), name="changenet", platform="python",
                                    overwrite=True)
    print("[3/4] " + "\n      ".join(report.summary_lines()))
    local = evaluate(model, data.csv_path, out_dir=None, progress=False)
    print("[4/4] eval: local ONNX Runtime {:.1f} pairs/s, FPR {:.2%}, capture {:.2%}".format(
        local.summary["pairs_per_s"], local.summary["fpr"], local.summary["defect_capture"]))
    same = True
    with LocalTritonServer(os.path.join(out, "repo")) as server:
        for url in (server.grpc_url("changenet"), server.http_url("changenet")):
            for shm in (True, False):
                remote = evaluate(url, data.csv_path, out_dir=None, progress=False, shared_memory=shm)
                equal = bool(np.array_equal(remote.scores, local.scores))
                same &= equal
                print("      {:<40} shared memory {:<3}: {:.1f} pairs/s, FPR {:.2%}, capture {:.2%}, scores {}".format(
                    url, "on" if shm else "off", remote.summary["pairs_per_s"], remote.summary["fpr"],
                    remote.summary["defect_capture"], "equal to the local run" if equal else "DIFFER"))
    print("triton demo: {}".format("every score through Triton equals the local run" if same else "scores differ"))
    return 0 if same else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m changenet_trt.tools.triton_demo", description=__doc__)
    parser.add_argument("--out", default="triton-demo-output")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        return run_triton_demo(args.out, args.pairs, args.seed)
    except ChangeNetError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
