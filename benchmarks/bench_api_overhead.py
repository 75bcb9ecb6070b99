"""``Classifier.predict`` on float32 arrays vs raw ``InferenceSession.run`` on the same arrays.

Both run in the same process on the same model, the same inputs and the same ONNX Runtime
options (the raw session is built with the classifier's thread settings), interleaved round by
round so drift hits both. A round times ``--calls`` calls of each; the figure is the median over
rounds of the ratio raw time / predict time (1.0: predict costs nothing on top of the session;
goal >= 0.97 at batch 16). ``--check-inputs`` also times ``predict(..., check_inputs=True)`` (a
full NaN/Inf scan of both inputs). Usage::

    .venv/bin/python benchmarks/bench_api_overhead.py --batch 16 --rounds 15 --calls 20
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from changenet_trt import load  # noqa: E402
from changenet_trt.models.reference import write_reference_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model (default: the reference learnable model, written to a temp folder)")
    parser.add_argument("--batch", type=int, default=16, help="pairs per call (default: 16)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default: 15)")
    parser.add_argument("--calls", type=int, default=20, help="calls of each variant per round (default: 20)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads for both (default: ORT's)")
    parser.add_argument("--check-inputs", action="store_true", help="also time predict(check_inputs=True)")
    parser.add_argument("--json", dest="json_out", help="write the per-round ratios as JSON")
    args = parser.parse_args()

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_reference_model(os.path.join(tmp, "reference.onnx"), kind="learnable")
        rng = np.random.default_rng(0)
        golden = rng.normal(0, 1, (args.batch, 3, 512, 128)).astype(np.float32)
        sample = (golden + rng.normal(0, 0.3, golden.shape)).astype(np.float32)
        options = {"threads": args.threads} if args.threads else {}
        with load(model, batch_size=args.batch, **options) as clf:
            sess_options = ort.SessionOptions()
            sess_options.log_severity_level = 3
            if args.threads:
                sess_options.intra_op_num_threads = args.threads
                sess_options.inter_op_num_threads = 1
            session = ort.InferenceSession(model, sess_options=sess_options, providers=["CPUExecutionProvider"])
            feed = {clf.contract.golden_input: golden, clf.contract.sample_input: sample}
            output = clf.contract.output

            def raw() -> None:
                session.run([output], feed)

            def predict() -> None:
                clf.predict(golden, sample)

            def predict_checked() -> None:
                clf.predict(golden, sample, check_inputs=True)

            np.testing.assert_allclose(clf.predict(golden, sample).raw, session.run([output], feed)[0], atol=1e-5)
            variants = {"raw": raw, "predict": predict}
            if args.check_inputs:
                variants["predict_check_inputs"] = predict_checked
            for fn in variants.values():  # warm-up
                for _ in range(3):
                    fn()
            times = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        fn()
                    times[name].append((time.perf_counter() - start) / args.calls)
    ratios = {name: [r / t for r, t in zip(times["raw"], times[name])] for name in variants if name != "raw"}
    print("model {}, batch {}, {} rounds x {} calls, {} cores, onnxruntime {}, {}".format(
        os.path.basename(model) if args.model else "reference learnable", args.batch, args.rounds, args.calls,
        os.cpu_count(), ort.__version__, platform.platform()))
    print("raw session.run: median {:.2f} ms per call".format(1000 * statistics.median(times["raw"])))
    for name, values in ratios.items():
        print("{}: median {:.2f} ms per call, ratio raw/{} median {:.3f} (range {:.3f}-{:.3f})".format(
            name, 1000 * statistics.median(times[name]), name, statistics.median(values), min(values), max(values)))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump({"batch": args.batch, "times_s": times, "ratios": ratios}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
