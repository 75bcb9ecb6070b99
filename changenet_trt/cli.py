"""``changenet-trt <command>``: a thin command-line layer over the library.

Each command is a pair: ``_add_<name>(subparsers)`` declares its arguments and
``_cmd_<name>(args) -> int`` runs it. User errors (:class:`ChangeNetError`) print one line
to stderr and exit non-zero without a traceback.
"""

import argparse
import csv
import json
import logging
import os
import sys
from typing import Callable, List, Optional, Sequence

from . import __version__
from .errors import ChangeNetError, InputError

log = logging.getLogger("changenet_trt")


# -- shared argument groups --------------------------------------------------------------------
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Tensor-name and output-kind overrides shared by every command that reads a model."""
    group = parser.add_argument_group("model contract overrides")
    group.add_argument("--sample-input", metavar="NAME", help="sample (test) image input (default: input_1)")
    group.add_argument("--golden-input", metavar="NAME", help="golden (reference) image input (default: input_2)")
    group.add_argument("--output", dest="output_name", metavar="NAME", help="output tensor (default: the only output)")
    group.add_argument(
        "--output-kind",
        choices=("euclidean", "learnable"),
        help="how to read the output (default: from its shape: [B]/[B,1] euclidean, [B,2] learnable)",
    )


def contract_overrides(args: argparse.Namespace) -> dict:
    return {
        "sample_input": args.sample_input,
        "golden_input": args.golden_input,
        "output": args.output_name,
        "output_kind": args.output_kind,
    }


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Backend, batch, cutoff and normalisation options shared by commands that run a model."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"),
                       help="auto: .onnx -> onnxruntime, .engine/.plan -> tensorrt (default: auto)")
    group.add_argument("--batch-size", type=positive_int, metavar="N",
                       help="pairs per batch for dynamic-batch models (default: 16)")
    group.add_argument("--cutoff", type=float, metavar="C",
                       help="a pair is a defect when score > C (default: the model's recommended cutoff, else 0.5)")
    group.add_argument("--normalization", choices=("tao", "deepstream"),
                       help="input normalisation preset (default: tao, ImageNet mean/std)")
    group.add_argument("--providers", metavar="LIST",
                       help="onnxruntime execution providers, comma separated: cpu, cuda, tensorrt (default: cpu)")
    group.add_argument("--threads", type=positive_int, metavar="N", help="onnxruntime intra-op threads")


def runtime_options(args: argparse.Namespace) -> dict:
    options = {}
    if getattr(args, "providers", None):
        options["providers"] = [p.strip() for p in args.providers.split(",") if p.strip()]
    if getattr(args, "threads", None):
        options["threads"] = args.threads
    return options


def load_classifier(args: argparse.Namespace, model: Optional[str] = None):
    """``changenet_trt.load`` with the shared model and runtime arguments."""
    from .api import load

    return load(
        model or args.model,
        cutoff=args.cutoff,
        backend=args.backend,
        batch_size=args.batch_size,
        normalization=args.normalization,
        **dict(contract_overrides(args), **runtime_options(args))
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer, found {!r}".format(text)) from None
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, found {}".format(value))
    return value


# -- inspect -----------------------------------------------------------------------------------
def _add_inspect(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect",
        help="show the ChangeNet contract of an ONNX model (inputs, output kind, batch)",
        description="Read an ONNX model and report how changenet-trt sees it: which input is the "
        "sample and which the golden image, their shape, the batch (static or dynamic), the output "
        "and how its values become a score.",
    )
    parser.add_argument("model", help="ONNX file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_model_arguments(parser)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .contract import read_contract

    contract = read_contract(args.model, **contract_overrides(args))
    info = contract.to_dict()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    c, h, w = contract.input_shape
    batch = "dynamic" if contract.static_batch is None else "static {}".format(contract.static_batch)
    score_text = "the value (embedding distance)" if contract.output_kind == "euclidean" else "softmax(logits)[:, 1]"
    print("model:         {}".format(args.model))
    print("opset:         {}".format(contract.opset))
    print("sample input:  {}  [B,{},{},{}] {}".format(contract.sample_input, c, h, w, contract.input_dtype))
    print("golden input:  {}  [B,{},{},{}] {}".format(contract.golden_input, c, h, w, contract.input_dtype))
    print("batch:         {}".format(batch))
    print("output:        {}  [{}]".format(contract.output, ",".join("B" if d is None else str(d) for d in contract.output_shape)))
    print("output kind:   {}  (score = {})".format(contract.output_kind, score_text))
    print("cutoff:        {}{}".format(contract.cutoff, "" if contract.recommended_cutoff is not None else " (default; the model recommends none)"))
    if contract.preprocess:
        print("preprocessing: {}".format(contract.preprocess))
    return 0


# -- infer -------------------------------------------------------------------------------------
def _add_infer(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "infer",
        help="score golden/sample image pairs",
        description="Score golden/sample pairs: the i-th --golden image is compared with the i-th "
        "--sample image. Images are preprocessed as the model expects (RGB, resized to its H x W, "
        "normalised).",
    )
    parser.add_argument("model", help="ONNX file (or TensorRT engine)")
    parser.add_argument("--golden", nargs="+", required=True, metavar="PATH", help="golden (reference) images")
    parser.add_argument("--sample", nargs="+", required=True, metavar="PATH", help="sample (test) images, same count")
    parser.add_argument("--out", metavar="CSV", help="also write golden,sample,score,defect rows to this CSV")
    add_runtime_arguments(parser)
    add_model_arguments(parser)


def _cmd_infer(args: argparse.Namespace) -> int:
    if len(args.golden) != len(args.sample):
        raise InputError(
            "--golden and --sample must name the same number of images",
            found="{} golden, {} sample".format(len(args.golden), len(args.sample)),
        )
    with load_classifier(args) as clf:
        result = clf.predict(args.golden, args.sample)
    rows = [
        (golden, sample, float(s), bool(d))
        for golden, sample, s, d in zip(args.golden, args.sample, result.scores, result.defects)
    ]
    for golden, sample, s, d in rows:
        print("{:<8} score={:.6f}  golden={}  sample={}".format("DEFECT" if d else "pass", s, golden, sample))
    print("{} pairs, {} defects at cutoff {} ({:.1f} pairs/s)".format(
        len(rows), int(result.defects.sum()), result.cutoff, result.pairs_per_s))
    if args.out:
        with open(args.out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["golden", "sample", "score", "defect"])
            for golden, sample, s, d in rows:
                writer.writerow([golden, sample, "{:.8g}".format(s), int(d)])
        print("wrote {}".format(args.out))
    return 0


# -- reference-model ---------------------------------------------------------------------------
def _add_reference_model(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reference-model",
        help="write a small reference ChangeNet ONNX model (TAO tensor names, 512x128 inputs)",
        description="Write a deterministic reference ChangeNet-Classification ONNX model with TAO's "
        "interface (input_1 sample, input_2 golden, [B,3,512,128], output). Its scores really "
        "separate changed from unchanged pairs; use it to try the pipeline without a trained model.",
    )
    parser.add_argument("out", help="ONNX file to write")
    parser.add_argument("--kind", choices=("learnable", "euclidean"), default="learnable",
                        help="learnable: [B,2] logits; euclidean: [B] distance (default: learnable)")
    parser.add_argument("--batch", type=positive_int, metavar="N",
                        help="static batch N, as TAO's default export (16); default: dynamic")
    parser.add_argument("--opset", type=int, choices=(12, 17), default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--realistic", action="store_true",
                        help="write the compute-realistic FAN-hybrid-small-like model instead (random weights, "
                        "about 60 GFLOPs per pair learnable / 37 euclidean, a 260-310 MB file): for benchmarks")
    parser.add_argument("--seed", type=int, default=0, help="weights seed of --realistic (default: 0)")


def _cmd_reference_model(args: argparse.Namespace) -> int:
    batch_text = "static {}".format(args.batch) if args.batch else "dynamic"
    if args.realistic:
        from .realistic import build_realistic_model, model_gflops, save_model

        model = build_realistic_model(kind=args.kind, batch=args.batch, opset=args.opset, seed=args.seed)
        path = save_model(model, args.out)
        print("wrote {} (FAN-hybrid-small-like, random weights, {} output, {} batch, opset {}, {:.2f} GFLOPs "
              "per pair)".format(path, args.kind, batch_text, args.opset, model_gflops(model)))
        return 0
    from .reference import write_reference_model

    path = write_reference_model(args.out, kind=args.kind, batch=args.batch, opset=args.opset)
    print("wrote {} ({} output, {} batch, opset {})".format(path, args.kind, batch_text, args.opset))
    return 0


# -- demo ------------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the CPU pipeline end to end on a reference model and made-up pairs",
        description="Write a reference model, make golden/sample pairs, score them with the "
        "Python API on ONNX Runtime and print scores, decisions and pairs/s.",
    )
    parser.add_argument("--out", default="demo-output", help="working folder (default: demo-output)")
    parser.add_argument("--model", help="score with this ONNX model instead of the reference model")
    parser.add_argument("--pairs", type=positive_int, default=8, help="number of pairs (default: 8)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, model=args.model, pairs=args.pairs)


# (data & eval commands: synth, eval)

# (engine build commands: prepare, build)

# -- bench -------------------------------------------------------------------------------------
def percentile_list(text: str) -> tuple:
    """``"90,95,99"`` -> ``(90.0, 95.0, 99.0)``, each in [0, 100]."""
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated percentiles such as 90,95,99, found {!r}".format(text)) from None
    if not values or any(not 0.0 <= p <= 100.0 for p in values):
        raise argparse.ArgumentTypeError("percentiles must lie in [0, 100], found {!r}".format(text))
    return values


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number >= 0, found {!r}".format(text)) from None
    if not value >= 0.0:
        raise argparse.ArgumentTypeError("expected a number >= 0, found {}".format(value))
    return value


def _add_bench(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="trtexec-style throughput/latency benchmark (engine on TensorRT, .onnx on onnxruntime)",
        description="Benchmark a model the way trtexec does: warm up, then run queries (one query = one "
        "batch of golden/sample pairs) until both --iterations and --duration are met; print Throughput, "
        "Latency, Enqueue Time, H2D Latency, GPU Compute Time, D2H Latency, Total Host Walltime, Total GPU "
        "Compute Time, trtexec's warnings, and FPS = qps x batch (pairs/s). Uses the same runner as predict.",
    )
    parser.add_argument("model", help="TensorRT engine (.engine/.plan) or ONNX file")
    group = parser.add_argument_group("trtexec flags")
    group.add_argument("--batch", type=positive_int, metavar="N",
                       help="pairs per query (default: the model's static batch, else 16)")
    group.add_argument("--warmUp", dest="warmup", type=non_negative_float, default=200.0, metavar="MS",
                       help="warm-up time in ms before timing starts (default: 200)")
    group.add_argument("--duration", type=non_negative_float, default=3.0, metavar="S",
                       help="minimum timed run in seconds (default: 3)")
    group.add_argument("--iterations", type=positive_int, default=10, metavar="N",
                       help="minimum number of timed queries (default: 10)")
    group.add_argument("--avgRuns", dest="avg_runs", type=positive_int, default=10, metavar="N",
                       help="report trace averages over N consecutive queries (default: 10)")
    group.add_argument("--percentile", type=percentile_list, default=(90.0, 95.0, 99.0), metavar="P1,P2",
                       help="latency percentiles to report (default: 90,95,99)")
    group.add_argument("--useCudaGraph", dest="cuda_graph", action="store_true",
                       help="TensorRT: capture the enqueue in a CUDA graph and launch that")
    group.add_argument("--noDataTransfers", dest="no_data_transfers", action="store_true",
                       help="TensorRT: skip the H2D/D2H copies (GPU compute only)")
    group.add_argument("--useSpinWait", dest="spin_wait", action="store_true",
                       help="TensorRT: spin on events instead of blocking (more stable timings)")
    group.add_argument("--streams", type=positive_int, default=1, metavar="N",
                       help="N independent runners in N threads; the report aggregates them (default: 1)")
    group.add_argument("--exportTimes", dest="export_times", metavar="FILE",
                       help="write every timed query's times as JSON (trtexec's format)")
    group.add_argument("--json", dest="json_out", metavar="FILE",
                       help="write the summary (batch, qps, fps, latency_ms {min,max,mean,median,p90,p95,p99}, ...) as JSON")
    group.add_argument("--histogram", metavar="PNG", help="write a latency histogram of the timed queries")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"),
                         help="auto: .onnx -> onnxruntime, .engine/.plan -> tensorrt (default: auto)")
    runtime.add_argument("--providers", metavar="LIST",
                         help="onnxruntime execution providers, comma separated: cpu, cuda, tensorrt (default: cpu)")
    runtime.add_argument("--threads", type=positive_int, metavar="N", help="onnxruntime intra-op threads")
    add_model_arguments(parser)


def _bench_options(args: argparse.Namespace):
    from .bench import BenchOptions

    return BenchOptions(
        batch=args.batch, warmup_ms=args.warmup, duration_s=args.duration, iterations=args.iterations,
        avg_runs=args.avg_runs, percentiles=tuple(args.percentile), cuda_graph=args.cuda_graph,
        no_data_transfers=args.no_data_transfers, spin_wait=args.spin_wait, streams=args.streams,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    result = bench.run_benchmark(
        args.model, _bench_options(args), backend=args.backend,
        contract_overrides=contract_overrides(args), backend_options=runtime_options(args),
    )
    print(bench.format_report(result), end="")
    if args.json_out:
        print("wrote {}".format(bench.write_json(result, args.json_out)))
    if args.export_times:
        print("wrote {}".format(bench.export_times(result, args.export_times)))
    if args.histogram:
        print("wrote {}".format(bench.latency_histogram_png(result, args.histogram)))
    return 0


# (accuracy & device commands: validate, fp16-check, doctor)

# -- the command table -------------------------------------------------------------------------
COMMANDS: List[tuple] = [
    ("inspect", _add_inspect, _cmd_inspect),
    ("infer", _add_infer, _cmd_infer),
    ("reference-model", _add_reference_model, _cmd_reference_model),
    ("demo", _add_demo, _cmd_demo),
    # [data & eval commands]
    # [engine build commands]
    ("bench", _add_bench, _cmd_bench),
    # [accuracy & device commands]
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="changenet-trt",
        description="TensorRT edge inference for Visual ChangeNet-Classification: compare golden and "
        "sample images of PCB components and score defects. Runs on ONNX Runtime (CPU) everywhere "
        "and on TensorRT on NVIDIA GPUs.",
    )
    parser.add_argument("--version", action="version", version="changenet-trt " + __version__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict = {}
    for name, add, run in COMMANDS:
        add(sub)
        handlers[name] = run
    parser.set_defaults(_handlers=handlers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = args._handlers[args.command]
    try:
        return int(handler(args) or 0)
    except ChangeNetError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `changenet-trt ... | head`: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
