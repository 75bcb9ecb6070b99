"""The engine-side commands: make a model dynamic and typed (``prepare``), build a TensorRT
engine (``build``) and write a Triton model repository (``triton-repo``)."""

import argparse
import logging
import os
import shlex
import tempfile
from typing import Any, List

import onnx

from changenet_trt.cli.args import (
    ContractNamesArgs,
    DataSetArgs,
    NormalizationArgs,
    ProgressArgs,
    positive_int,
)
from changenet_trt.cli.commands.base import Command, GroupValues
from changenet_trt.contract import ContractNames, read_contract
from changenet_trt.data.dataset import load_dataset
from changenet_trt.defaults import BATCH_SIZE, ENGINE_PROFILE
from changenet_trt.engine.build import build_engine_file, prepare_typed
from changenet_trt.engine.calibration import DEFAULT_CALIB_BATCHES, dataset_batches
from changenet_trt.engine.options import BatchProfile, BuildOptions, read_layer_patterns
from changenet_trt.engine.plan import make_plan
from changenet_trt.engine.precision import DEFAULT_PROOF_PAIRS, INT8_METHODS, match_nodes, name_nodes
from changenet_trt.engine.prepare import DEFAULT_PROOF_BATCHES, add_uint8_input, prepare_model
from changenet_trt.engine.triton_repo import PLATFORMS, write_model_repository
from changenet_trt.engine.typed import TypedPairs, make_typed_model
from changenet_trt.errors import InputError
from changenet_trt.files import check_output_file

log = logging.getLogger("changenet_trt")

#: INT8 calibration's default method: the first the engine lists (entropy)
DEFAULT_CALIB_METHOD = INT8_METHODS[0]


# -- prepare -----------------------------------------------------------------------------------
class Prepare(Command):
    name = "prepare"
    help = ("make a static-batch ONNX (TAO's default 16) dynamic, proven equal with onnxruntime; optionally "
            "float16 or INT8 (Q/DQ) in the graph, or uint8 input")
    description = ("Check the ChangeNet contract; when the batch is static, find what carries it by following "
                   "the inputs' first dimension through the graph (Reshape shapes, Tile repeats, Expand shapes "
                   "behind Equal/Where, ConstantOfShape, Range, Slice, Concats of shapes; never by its value), "
                   "rewrite those and the inputs and output to a dynamic 'batch', then prove it: the same pairs "
                   "through the original at its own batch and through the result at that batch and at 1, 3, 17 "
                   "and 32 must give the same output rows (|new-old| <= 1e-5 + 1e-4*|old|). Refuses, with the "
                   "reason and the node, when that cannot be done (e.g. a graph that mixes rows across the "
                   "batch, or a weight shaped by the batch). With --precision the "
                   "dynamic model is then made float16 (the layers fp16-check flags stay float32; refused when a "
                   "decision flips) or INT8 (explicit Q/DQ calibrated with onnxruntime on --calib-csv pairs) and "
                   "compared with the float32 model; with --uint8-input a normalising front is added last. Each "
                   "step is proven before the file is written.")

    def __init__(self) -> None:
        super().__init__(
            names=ContractNamesArgs(),
            normalization=NormalizationArgs(
                "with --uint8-input, the normalisation put in the graph; with --precision, that of the calibration "
                "and proof pairs"),
            calibration_data=DataSetArgs(
                csv="--calib-csv",
                csv_help="TAO data set CSV: its first --calib-batches batches are analysed (int8 calibration, "
                "fp16's fp16-check ranges) and the typed model is compared with float32 on the pairs after them "
                "(on --proof-pairs synthetic pairs when none are left; default without a CSV: synthetic pairs)"))

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file")
        parser.add_argument("-o", "--out", required=True, metavar="OUT.onnx", help="prepared ONNX file to write")
        parser.add_argument("--proof-batches", default=",".join(str(b) for b in DEFAULT_PROOF_BATCHES), metavar="LIST",
                            help="batches to prove the dynamic batch at, comma separated, besides the original's own "
                            "(default: {})".format(",".join(str(b) for b in DEFAULT_PROOF_BATCHES)))
        precision = parser.add_argument_group("precision in the graph (TensorRT 10+ builds it strongly typed)")
        precision.add_argument("--precision", choices=("fp16", "int8"),
                               help="fp16: float16 weights and activations, float32 inputs/outputs and float32 "
                               "islands where fp16-check finds overflow; int8: explicit symmetric Q/DQ on "
                               "Conv/MatMul/Gemm inputs, per-channel weights (default: keep the model's types)")
        precision.add_argument("--fp32-layers", nargs="+", default=[], metavar="PATTERN",
                               help="fp16: also keep these nodes float32; int8: leave them unquantized (no Q/DQ "
                               "on their inputs), e.g. the worst layers of the INT8 report (names or fnmatch "
                               "patterns, or @FILE with one per line as fp16-check writes it); a pattern matching "
                               "no node is an error")
        precision.add_argument("--force", action="store_true",
                               help="fp16: write the float16 model even when a decision flips against float32")
        precision.add_argument("--proof-pairs", type=positive_int, metavar="N",
                               help="synthetic pairs to compare on when no data-set pair is held back (no "
                               "--calib-csv, or the analysis used every pair) (default: {})".format(DEFAULT_PROOF_PAIRS))
        pairs = parser.add_argument_group("pairs for --precision (a TAO data set)")
        self.place("calibration_data", pairs)
        pairs.add_argument("--calib-batches", type=positive_int, metavar="N",
                           help="analyse (int8: calibrate; fp16: fp16-check) at most N batches of {} pairs of "
                           "--calib-csv; the rest are held back for the comparison (default: {})".format(
                               BATCH_SIZE, DEFAULT_CALIB_BATCHES))
        pairs.add_argument("--calib-method", choices=INT8_METHODS,
                           help="int8: activation ranges by entropy or by the 99.999th percentile of |x| "
                           "(default: {})".format(DEFAULT_CALIB_METHOD))
        uint8 = parser.add_argument_group("uint8 input")
        uint8.add_argument("--uint8-input", action="store_true",
                           help="the written model takes uint8 RGB pixels and normalises them in its graph "
                           "(4x fewer bytes to send; proven equal to host normalisation before writing; with "
                           "--precision it is added to the float16/INT8 model)")
        self.place("normalization", uint8)

    @staticmethod
    def check_combination(args: argparse.Namespace, calib_csv: Any, normalization: Any) -> None:
        """Refuse options that do nothing with the others given (before any work)."""
        chosen = "--precision {}".format(args.precision) if args.precision else "no --precision"
        if normalization is not None and not (args.uint8_input or args.precision):
            raise InputError("--normalization in prepare says what --uint8-input puts in the graph, or how "
                             "--precision's pairs are normalised", expected="--uint8-input or --precision with it, "
                             "or no --normalization")
        if args.fp32_layers and not args.precision:
            raise InputError("--fp32-layers keeps layers out of a typed model", expected="--precision fp16 or int8",
                             found=chosen)
        if args.force and args.precision != "fp16":
            raise InputError("--force applies to a float16 model", expected="--precision fp16", found=chosen)
        if args.calib_batches and not calib_csv:
            raise InputError("--calib-batches says how many batches of --calib-csv are analysed",
                             expected="--calib-csv with it", found="no --calib-csv")
        for flag, given in (("--calib-method", args.calib_method),):
            if given and args.precision != "int8":
                raise InputError("{} applies to INT8 calibration".format(flag), expected="--precision int8",
                                 found=chosen)
        if args.precision is None:
            for flag, given in (("--calib-csv", calib_csv), ("--proof-pairs", args.proof_pairs)):
                if given:
                    raise InputError("{} gives pairs for --precision".format(flag),
                                     expected="--precision fp16 or int8", found=chosen)
        if args.precision == "int8" and not calib_csv:
            raise InputError("--precision int8 calibrates on real pairs",
                             expected="--calib-csv CSV [--calib-images DIR] (a TAO data set)", found="no --calib-csv")

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        names, normalization, data = values.names, values.normalization, values.calibration_data
        try:
            batches = [int(b) for b in args.proof_batches.split(",") if b.strip()]
        except ValueError:
            raise InputError("--proof-batches must be integers", found=repr(args.proof_batches)) from None
        self.check_combination(args, data.csv, normalization)
        if not args.uint8_input and not args.precision:
            report = prepare_model(args.model, args.out, batches=batches, names=names)
            print("\n".join(report.summary_lines()))
            return 0

        check_output_file(args.out, "prepared model", inputs=[p for p in (args.model, data.csv) if p])
        contract = read_contract(args.model, names)
        # the model's own preprocessing unless told otherwise: pairs and uint8 front agree
        normalization = normalization or contract.preprocess
        patterns = read_layer_patterns(args.fp32_layers)
        if patterns:
            match_nodes(name_nodes(onnx.load(args.model)), patterns)  # a typo fails here, not after the proofs
        if args.precision and data.csv:  # a bad CSV, or too few pairs to calibrate, fails before the proofs
            if args.precision == "int8":
                dataset_batches(data.csv, contract.input_shape, BATCH_SIZE, 1, images_dir=data.images,
                                layout=data.layout)
            else:
                load_dataset(data.csv, images_dir=data.images, layout=data.layout)
        with tempfile.TemporaryDirectory(prefix="changenet-prepare-") as work:
            dynamic = os.path.join(work, "dynamic.onnx")
            labels = {dynamic: "{} (dynamic batch)".format(args.model)}
            report = prepare_model(args.model, dynamic, batches=batches, names=names)
            lines = report.summary_lines()
            current = dynamic
            if args.precision:
                typed = args.out
                if args.uint8_input:  # a step on the way: the uint8 front is added to it
                    typed = os.path.join(work, args.precision + ".onnx")
                    labels[typed] = "the {} model".format("float16" if args.precision == "fp16" else "INT8")
                lines += [""] + self.make_typed(args, current, typed, patterns, data, normalization, names)
                if not args.uint8_input:
                    lines.append("  wrote {}".format(typed))
                current = typed
            if args.uint8_input:
                uint8 = add_uint8_input(current, args.out, normalization=normalization or "tao",
                                        names=names)
                lines += [""] + uint8.summary_lines()
            # the intermediate models are steps: name them as such, not by their temporary paths
            for line in lines:
                line = line.replace("wrote " + dynamic, "made the dynamic-batch model")
                for path, label in labels.items():
                    line = line.replace(path, label)
                print(line)
        return 0

    @staticmethod
    def make_typed(args: argparse.Namespace, model: str, out: str, patterns: List[str], data: Any,
                   normalization: Any, names: ContractNames) -> List[str]:
        """Write the float16 (``patterns`` kept float32) or INT8 model of ``model`` to ``out``
        (:func:`changenet_trt.engine.typed.make_typed_model`, as build does); the lines of its report."""
        pairs = TypedPairs(csv=data.csv, images=data.images, layout=data.layout, workers=data.workers,
                           calib_batches=args.calib_batches or DEFAULT_CALIB_BATCHES, batch=BATCH_SIZE,
                           proof_pairs=args.proof_pairs or DEFAULT_PROOF_PAIRS,
                           on_problem=lambda item: log.warning("set aside: %s", item))
        result = make_typed_model(model, out, args.precision, pairs, fp32_layers=patterns, force=args.force,
                                  method=args.calib_method or DEFAULT_CALIB_METHOD, normalization=normalization,
                                  names=names, origin=args.model)
        report = result.report
        lines = result.summary_lines()
        if args.precision == "int8":
            if report.flips:
                lines.append("  written although INT8 changes {} decision(s) on these pairs: check it with "
                             "validate on your data before deploying".format(report.flips))
            elif report.validation.raw.beyond_tolerance:
                lines.append("  (INT8 rounds the raw outputs beyond float tolerances by design; the decisions, "
                             "FPR and capture above are what to compare)")
        return lines


# -- triton-repo -------------------------------------------------------------------------------
class TritonRepo(Command):
    name = "triton-repo"
    help = "write a Triton Inference Server model repository for an ONNX model or engine"
    description = ("Write REPO/NAME/config.pbtxt and REPO/NAME/1/<model> for NVIDIA Triton Inference Server: "
                   "both inputs by name, dynamic batching, instance groups and the ChangeNet contract as "
                   "parameters. A static-batch ONNX is made dynamic first (as prepare does). The config is "
                   "checked strictly against Triton's own ModelConfig schema before anything is written. "
                   "Serve it with NVIDIA's tritonserver container; load it with changenet_trt.load('grpc://HOST:8001/NAME').")

    def __init__(self) -> None:
        super().__init__(names=ContractNamesArgs(),
                         normalization=NormalizationArgs("with --uint8-input, the normalisation put in the graph"))

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file, or a TensorRT engine with its sidecar (tensorrt_plan)")
        parser.add_argument("-o", "--out", required=True, metavar="REPO", help="model repository folder")
        parser.add_argument("--name", default="changenet", help="model name in the repository (default: changenet)")
        parser.add_argument("--platform", default="python", choices=PLATFORMS,
                            help="tensorrt_plan (an engine, GPU), onnxruntime_onnx, or python (ONNX Runtime on "
                            "CPU inside Triton's python backend) (default: python)")
        parser.add_argument("--max-batch", type=positive_int, default=BATCH_SIZE, metavar="N",
                            help="Triton's max_batch_size (default: {})".format(BATCH_SIZE))
        parser.add_argument("--instances", type=positive_int, default=1, metavar="N",
                            help="model instances that run in parallel (default: 1)")
        parser.add_argument("--ort-threads", type=int, default=0, metavar="N",
                            help="python platform: ONNX Runtime threads per instance (default: its own)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing REPO/NAME")
        uint8 = parser.add_argument_group("uint8 input")
        uint8.add_argument("--uint8-input", action="store_true",
                           help="clients send uint8 RGB pixels; the normalisation is put in the model's graph "
                           "(ONNX platforms)")
        self.place("normalization", uint8)

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        names, normalization = values.names, values.normalization
        if args.ort_threads < 0:
            raise InputError("--ort-threads must be 0 (ONNX Runtime's default) or more", found=args.ort_threads)
        report = write_model_repository(
            args.model, args.out, name=args.name, platform=args.platform, max_batch=args.max_batch,
            instances=args.instances, uint8_input=args.uint8_input, normalization=normalization,
            overwrite=args.overwrite, ort_threads=args.ort_threads, names=names)
        print("\n".join(report.summary_lines()))
        return 0


# -- build -------------------------------------------------------------------------------------
class Build(Command):
    name = "build"
    help = "build a TensorRT engine (FP16 by default, dynamic batch 1:16:32) with its JSON metadata"
    description = ("Prepare the ONNX (static batch -> dynamic, proven with onnxruntime) and its typed model "
                   "(precision in the graph: float16 with float32 islands, or INT8 Q/DQ calibrated on real pairs; "
                   "made on the CPU, cached next to the engine), then build a TensorRT engine with one "
                   "optimisation profile shared by both inputs. TensorRT 10 and 11 build it strongly typed; "
                   "TensorRT 8.5/8.6 get the FP16/INT8 flags and FP32 layers derived from the typed model. The "
                   "engine lands under engines/ with a name that encodes model, precision, batch profile, GPU and "
                   "TensorRT version, next to a .json sidecar the runner checks before loading. "
                   "--dry-run, --print-trtexec and --typed-only need no TensorRT.")

    def __init__(self) -> None:
        super().__init__(
            normalization=NormalizationArgs("preprocessing recorded in the metadata and used for the pairs"),
            progress=ProgressArgs(), names=ContractNamesArgs(),
            calibration_data=DataSetArgs(
                csv="--calib-csv",
                csv_help="TAO data set CSV: INT8 calibration pairs, or --fp16's fp16-check/proof pairs", workers=None))

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file exported by TAO (static or dynamic batch), or a typed model "
                            "(float16 / Q/DQ) made by `prepare --precision`")
        parser.add_argument("-o", "--out", metavar="ENGINE",
                            help="engine path (default: engines/<generated name>.engine)")
        precision = parser.add_mutually_exclusive_group()
        precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                               help="float16 model with float32 inputs/outputs and the layers fp16-check flags kept "
                               "float32, proven on pairs (default)")
        precision.add_argument("--fp32", dest="precision", action="store_const", const="fp32",
                               help="FP32 (TF32 allowed)")
        precision.add_argument("--int8", dest="precision", action="store_const", const="int8",
                               help="INT8 Q/DQ model calibrated with onnxruntime on --calib-csv pairs")
        parser.set_defaults(precision=None)
        profile = ":".join(str(b) for b in ENGINE_PROFILE)
        parser.add_argument("--batch", default=profile, metavar="MIN:OPT:MAX",
                            help="batch profile in pairs, 1 <= MIN <= OPT <= MAX (default: {})".format(profile))
        parser.add_argument("--workspace", type=positive_int, metavar="MIB", help="workspace memory pool limit in MiB")
        parser.add_argument("--opt-level", type=int, choices=range(0, 6), metavar="0-5",
                            help="builder optimisation level (TensorRT 8.6+; default 3; higher builds longer)")
        parser.add_argument("--dla-core", type=int, metavar="N", help="run on DLA core N with GPU fallback (Jetson)")
        parser.add_argument("--fp32-layers", nargs="+", default=[], metavar="PATTERN",
                            help="keep nodes whose names match these fnmatch patterns float32 in the typed model (or "
                            "@FILE, one per line, as written by fp16-check)")
        parser.add_argument("--precision-constraints", choices=("obey", "prefer"), default="obey",
                            help="TensorRT 8.x: how the float32 layers are held, obey (fail if impossible) or prefer "
                            "(default: obey)")
        parser.add_argument("--proof-pairs", type=positive_int, default=DEFAULT_PROOF_PAIRS, metavar="N",
                            help="--fp16 without --calib-csv: synthetic pairs for fp16-check and the proof "
                            "(default: {})".format(DEFAULT_PROOF_PAIRS))
        parser.add_argument("--force-fp16", action="store_true",
                            help="keep a float16 model whose decisions flip on the proof pairs")
        parser.add_argument("--timing-cache", metavar="FILE",
                            help="timing cache to load and save (default: engines/timing_<gpu>_<trt>.cache)")
        parser.add_argument("--no-timing-cache", action="store_true", help="do not load or save a timing cache")
        parser.add_argument("--version-compatible", action="store_true",
                            help="engine that later TensorRT releases of the same major version load (TensorRT 8.6+)")
        parser.add_argument("--exclude-lean-runtime", action="store_true",
                            help="with --version-compatible: leave the lean runtime out of the engine (smaller; the "
                            "runtime that loads it must bring its own)")
        group = parser.add_argument_group("INT8 calibration (data in TAO's layout)")
        self.place("calibration_data", group)
        group.add_argument("--calib-batches", type=positive_int, default=DEFAULT_CALIB_BATCHES, metavar="N",
                           help="at most N batches of OPT pairs (default: {})".format(DEFAULT_CALIB_BATCHES))
        group.add_argument("--calib-method", choices=INT8_METHODS, default=DEFAULT_CALIB_METHOD,
                           help="how the Q/DQ model's activation ranges are chosen (default: {})".format(
                               DEFAULT_CALIB_METHOD))
        group.add_argument("--int8-calibrator", action="store_true",
                           help="legacy path, TensorRT 8.5-10.x only (deprecated in 10.1, removed in 11): TensorRT's "
                           "entropy calibrator on the float32 model instead of the Q/DQ model")
        group.add_argument("--calib-cache", metavar="FILE", help="with --int8-calibrator: calibration cache (default: "
                           "calibration/<model>-<sha>.cache; reused when it matches)")
        group.add_argument("--recalibrate", action="store_true",
                           help="with --int8-calibrator: ignore an existing calibration cache")
        out = parser.add_argument_group("without building")
        out.add_argument("--dry-run", action="store_true", help="print the plan and exit (no TensorRT needed)")
        out.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit")
        out.add_argument("--typed-only", action="store_true",
                         help="make (or reuse) the typed model the build parses and exit (CPU only; for trtexec)")
        out.add_argument("--trt-version", metavar="X.Y.Z",
                         help="TensorRT version the plan is for (--dry-run, --print-trtexec, --typed-only; default: "
                         "the installed one, else 10.3.0)")

    @staticmethod
    def options(args: argparse.Namespace, values: GroupValues) -> Any:
        """The :class:`~changenet_trt.engine.options.BuildOptions` of the parsed arguments."""
        calibration = values.calibration_data
        return BuildOptions(
            model=args.model, output=args.out, precision=args.precision, profile=BatchProfile.parse(args.batch),
            workspace_mib=args.workspace, timing_cache=args.timing_cache, use_timing_cache=not args.no_timing_cache,
            opt_level=args.opt_level, dla_core=args.dla_core, fp32_layers=read_layer_patterns(args.fp32_layers),
            precision_constraints=args.precision_constraints, version_compatible=args.version_compatible,
            exclude_lean_runtime=args.exclude_lean_runtime, calib_csv=calibration.csv,
            calib_images=calibration.images, calib_batches=args.calib_batches, calib_cache=args.calib_cache,
            recalibrate=args.recalibrate, calib_layout=calibration.layout if calibration.csv else None,
            normalization=values.normalization, names=values.names,
            progress=values.progress, int8_calibrator=args.int8_calibrator,
            calib_method=args.calib_method, proof_pairs=args.proof_pairs, force_fp16=args.force_fp16,
        )

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        plan = make_plan(self.options(args, values), trt_version=args.trt_version)
        if args.typed_only:
            typed = prepare_typed(plan)
            print("\n".join(typed.summary_lines()))
            return 0
        if args.dry_run or args.print_trtexec:
            if args.dry_run:
                print("\n".join(plan.describe()))
            if args.print_trtexec:
                if args.dry_run:
                    print()
                if not os.path.isfile(plan.typed_onnx):
                    print("# {} is made on the CPU first: run this command with --typed-only instead of "
                          "--print-trtexec{}".format(plan.typed_onnx, " (TensorRT 8.x: then again, for its float32 "
                                                    "layers)" if plan.fp32_layers is None else ""))
                print(" ".join(shlex.quote(part) for part in plan.trtexec_command(args.trt_version)))
            return 0
        result = build_engine_file(plan=plan)
        meta = result.metadata
        if result.typed is not None:
            print("\n".join(result.typed.summary_lines()))
        print("built {} in {:.1f} s ({}, batch {}:{}:{}, TensorRT {}, {})".format(
            result.engine_path, result.seconds, meta.precision, meta.profile["min"], meta.profile["opt"],
            meta.profile["max"], meta.trt_version, meta.gpu_name))
        print("metadata: {}".format(result.sidecar_path))
        if result.plan.rewrite_batch is not None:
            print("prepared ONNX (static batch {} made dynamic): {}".format(result.plan.rewrite_batch,
                                                                            result.plan.prepared_onnx))
        return 0

