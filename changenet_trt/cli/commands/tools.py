"""The tool commands: measure (``bench``), check an engine against its model (``validate``),
find float16 trouble (``fp16-check``) and check this machine (``doctor``)."""

import argparse
from typing import Any

from changenet_trt.cli.args import (
    ContractNamesArgs,
    DataSetArgs,
    JsonReportArgs,
    NormalizationArgs,
    PairSourceArgs,
    RuntimeArgs,
    non_negative_float,
    percentile_list,
    positive_int,
)
from changenet_trt.cli.commands.base import Command, GroupValues
from changenet_trt.contract import read_contract
from changenet_trt.data.preprocess import get_normalization
from changenet_trt.engine import fp16_check
from changenet_trt.engine.fp16_check import DEFAULT_MAX_REL_ERROR
from changenet_trt.errors import InputError
from changenet_trt.evaluation import validate
from changenet_trt.evaluation.validate import DEFAULT_ATOL, DEFAULT_MAX_FLIPS, DEFAULT_PAIRS, DEFAULT_RTOL
from changenet_trt.files import check_output_file
from changenet_trt.tools import bench, bench_report, doctor
from changenet_trt.tools.bench import BenchOptions


# -- bench -------------------------------------------------------------------------------------
class Bench(Command):
    name = "bench"
    help = "trtexec-style throughput/latency benchmark (engine on TensorRT, .onnx on onnxruntime)"
    description = ("Benchmark a model the way trtexec does: warm up, then run queries (one query = one "
                   "batch of golden/sample pairs) until both --iterations and --duration are met; print Throughput, "
                   "Latency, Enqueue Time, H2D Latency, GPU Compute Time, D2H Latency, Total Host Walltime, Total "
                   "GPU Compute Time, trtexec's warnings, and FPS = qps x batch (pairs/s). Uses the same runner as "
                   "predict.")

    def __init__(self) -> None:
        super().__init__(
            runtime=RuntimeArgs(batch_size=False, cutoff=False),  # the batch is trtexec's --batch
            names=ContractNamesArgs(),
            json_report=JsonReportArgs(
                "the summary (batch, qps, fps, latency_ms {min,max,mean,median,p90,p95,p99}, ...)"),
            data_set=DataSetArgs(csv_help="TAO data set CSV (needed by --end-to-end)"),
            normalization=NormalizationArgs("with --end-to-end, input normalisation"))

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="TensorRT engine (.engine/.plan), ONNX file or Triton URL")
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
        group.add_argument("--streams", "--infStreams", dest="streams", type=positive_int, default=1, metavar="N",
                           help="N independent runners in N threads; the report aggregates them (default: 1)")
        group.add_argument("--exposeDMA", dest="expose_dma", action="store_true",
                           help="one query in flight instead of two (serialises the transfers with compute)")
        group.add_argument("--exportTimes", dest="export_times", metavar="FILE",
                           help="write every timed query's times as JSON (trtexec's format)")
        self.place("json_report", group)
        group.add_argument("--histogram", metavar="PNG", help="write a latency histogram of the timed queries")
        e2e = parser.add_argument_group("end to end (decode + preprocess + inference on a TAO data set)")
        e2e.add_argument("--end-to-end", action="store_true",
                         help="time whole batches of a data set through the eval pipeline instead of random inputs")
        self.place("data_set", e2e)
        self.place("normalization", e2e)

    @staticmethod
    def bench_options(args: argparse.Namespace) -> Any:
        return BenchOptions(
            batch=args.batch, warmup_ms=args.warmup, duration_s=args.duration, iterations=args.iterations,
            avg_runs=args.avg_runs, percentiles=tuple(args.percentile), cuda_graph=args.cuda_graph,
            no_data_transfers=args.no_data_transfers, spin_wait=args.spin_wait, streams=args.streams,
            expose_dma=args.expose_dma,
        )

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        runtime, names, data, norm = values.runtime, values.names, values.data_set, values.normalization
        inputs = [args.model, data.csv]
        values.json_report.check("bench JSON report", inputs=inputs)
        if args.export_times:
            check_output_file(args.export_times, what="--exportTimes file", inputs=inputs)
        if args.end_to_end:
            if not data.csv:
                raise InputError("--end-to-end needs a data set", expected="--csv CSV [--images DIR]")
            result = bench.run_end_to_end(
                args.model, data.csv, data.images, self.bench_options(args), layout=data.layout,
                normalization=norm, workers=data.workers, backend=runtime.backend,
                names=names, backend_options=runtime.backend_options,
            )
        else:
            if data.csv:
                raise InputError("--csv is only used with --end-to-end", expected="--end-to-end --csv CSV")
            result = bench.run_benchmark(
                args.model, self.bench_options(args), backend=runtime.backend,
                names=names, backend_options=runtime.backend_options,
            )
        print(bench_report.format_report(result), end="")
        values.json_report.write(result, bench_report.write_json)
        if args.export_times:
            print("wrote {}".format(bench_report.export_times(result, args.export_times)))
        if args.histogram:
            print("wrote {}".format(bench_report.latency_histogram_png(result, args.histogram)))
        return 0


# -- validate ----------------------------------------------------------------------------------
class Validate(Command):
    name = "validate"
    help = "check an engine against its ONNX model on real pairs: errors, decision flips, FPR/capture"
    description = ("Run the engine (TensorRT) and the ONNX model (onnxruntime, float32) on the same "
                   "preprocessed pairs; report per-output error statistics, the decisions that flip at the cutoff "
                   "and, for labelled pairs, FPR and defect capture of both. Exits 1 when an output value differs "
                   "by more than atol + rtol * |onnx| or more than --max-flips decisions flip.")

    def __init__(self) -> None:
        super().__init__(
            pairs=PairSourceArgs(DEFAULT_PAIRS),
            runtime=RuntimeArgs(),  # the engine side; the ONNX side is always onnxruntime on CPU
            normalization=NormalizationArgs(), json_report=JsonReportArgs(), names=ContractNamesArgs())

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("engine", help="TensorRT engine (.engine/.plan), or any model --backend runs")
        parser.add_argument("--onnx", required=True, metavar="MODEL", help="the ONNX model the engine was built from")
        parser.add_argument("--show-flips", type=int, default=10, metavar="K",
                            help="flipped pairs to list (default: 10)")
        group = parser.add_argument_group("tolerances")
        group.add_argument("--atol", type=non_negative_float, default=DEFAULT_ATOL,
                           help="absolute tolerance on raw output values (default: {:g})".format(DEFAULT_ATOL))
        group.add_argument("--rtol", type=non_negative_float, default=DEFAULT_RTOL,
                           help="relative tolerance, times |onnx value| (default: {:g})".format(DEFAULT_RTOL))
        group.add_argument("--max-flips", type=int, default=DEFAULT_MAX_FLIPS, metavar="K",
                           help="decision flips allowed at the cutoff (default: {})".format(DEFAULT_MAX_FLIPS))

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        make_source, runtime, norm, names = values.pairs, values.runtime, values.normalization, values.names
        values.json_report.check("validate JSON report", inputs=[args.engine, args.onnx, args.csv])
        report = validate.validate(
            args.engine, args.onnx, make_source, cutoff=runtime.cutoff, atol=args.atol, rtol=args.rtol,
            max_flips=args.max_flips, backend=runtime.backend, batch_size=runtime.batch_size, normalization=norm,
            names=names, engine_options=runtime.backend_options,
        )
        print("\n".join(validate.format_report(report, show_flips=args.show_flips)))
        values.json_report.write(report, validate.write_json)
        return 0 if report.passed else 1


# -- fp16-check --------------------------------------------------------------------------------
class Fp16Check(Command):
    name = "fp16-check"
    help = "find tensors that overflow or lose precision in float16 (CPU); write a --fp32-layers list"
    description = ("Run the ONNX model with onnxruntime (float32, CPU) with every intermediate tensor exposed, "
                   "on real pairs. Report tensors beyond the float16 range (|x| > 65504) and those losing most to "
                   "float16 rounding or underflow, with their producing nodes and op types, and write the layers to "
                   "keep in float32 as a file for `build --fp32-layers @FILE`. Exits 1 when some layer needs "
                   "float32, 0 otherwise.")
    default_pairs = 16

    def __init__(self) -> None:
        super().__init__(
            pairs=PairSourceArgs(self.default_pairs),
            # onnxruntime on CPU with every activation exposed: only the thread count is a choice
            runtime=RuntimeArgs(backend=False, batch_size=False, cutoff=False, providers=False),
            normalization=NormalizationArgs(), json_report=JsonReportArgs("every tensor's statistics"),
            names=ContractNamesArgs())

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file")
        parser.add_argument("--out", metavar="FILE",
                            help="float32 layer list to write (default: <model>.fp32-layers.txt next to the model)")
        parser.add_argument("--max-rel-error", type=float, default=DEFAULT_MAX_REL_ERROR, metavar="X",
                            help="also keep a tensor's layers in float32 when its float16 relative L2 error exceeds "
                            "X (default: {:g}; plain rounding gives about 3e-4)".format(DEFAULT_MAX_REL_ERROR))
        parser.add_argument("--top", type=positive_int, default=10, metavar="K",
                            help="tensors to list by precision lost (default: 10)")

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        make_source, runtime, norm, names = values.pairs, values.runtime, values.normalization, values.names
        out = args.out or fp16_check.default_list_path(args.model)
        check_output_file(out, what="float32 layer list", inputs=[args.model])
        values.json_report.check("fp16-check JSON report", inputs=[args.model])
        contract = read_contract(args.model, names)
        source = make_source(contract, get_normalization(norm or contract.preprocess))
        try:
            # every activation of a run is held at once: check_model runs ANALYSIS_PAIRS pairs at a time
            # (a static batch is made dynamic for it)
            batch = contract.static_batch or fp16_check.ANALYSIS_PAIRS
            report = fp16_check.check_model(
                args.model, fp16_check.source_batches(source, batch, contract.input_shape), contract=contract,
                max_rel_error=args.max_rel_error, threads=runtime.backend_options.get("threads"), total=source.count,
            )
        finally:
            source.close()
        print("pairs: {}".format(source.description))
        print("\n".join(fp16_check.format_report(report, top=args.top)))
        fp16_check.write_layer_list(report, out)
        print("wrote {} ({} layer{}){}".format(
            out, len(report.layers), "" if len(report.layers) == 1 else "s",
            ": build with --fp32-layers @{}".format(out) if report.layers else ""))
        values.json_report.write(report, fp16_check.write_json)
        return 1 if report.layers else 0


# -- doctor ------------------------------------------------------------------------------------
class Doctor(Command):
    name = "doctor"
    help = "report the environment and prove the stack on this machine (CPU checks; GPU checks on a device)"
    description = ("Print Python, numpy, OpenCV, onnxruntime, TensorRT, pycuda, CUDA driver, GPU and compute "
                   "capability, DLA cores, and on a Jetson the board, JetPack and power mode. Then run checks, each "
                   "PASS, FAIL or SKIP: onnxruntime vs numpy on the reference model, preprocessing, pipeline "
                   "decisions; on a GPU also build the reference engine, compare it with onnxruntime and run a short "
                   "benchmark. Exits 0 when every check that applies passes.")

    def __init__(self) -> None:
        super().__init__(json_report=JsonReportArgs())

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--cpu-only", action="store_true", help="skip the GPU checks even when a GPU is present")
        parser.add_argument("--workdir", metavar="DIR",
                            help="keep the files the checks write here (default: a temporary folder)")
        parser.add_argument("--bench-seconds", type=non_negative_float, default=1.0, metavar="S",
                            help="duration of the short benchmark (default: 1)")

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        values.json_report.check("doctor JSON report", inputs=[])
        report = doctor.run_doctor(workdir=args.workdir, device=not args.cpu_only, bench_seconds=args.bench_seconds)
        print("\n".join(doctor.format_report(report)))
        values.json_report.write(report, doctor.write_json)
        return 0 if report.ok else 1

