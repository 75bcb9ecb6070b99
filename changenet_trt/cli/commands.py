"""The commands of ``changenet-trt``, one class each.

A command names its help and description, declares its own arguments in ``add_arguments``,
lists the shared argument groups of :mod:`changenet_trt.cli.args` it takes, and runs in
``run(args) -> exit code``. ``run`` parses the groups first, so bad values are reported
before any work starts.
"""

import abc
import argparse
import csv
import json
import logging
import os
import shlex
import sys
import time
from typing import Any, List, Sequence

from changenet_trt.cli.args import (
    ContractNamesArgs,
    DataSetArgs,
    JsonReportArgs,
    NormalizationArgs,
    PairSourceArgs,
    ProgressArgs,
    RuntimeArgs,
    RuntimeOptions,
    non_negative_float,
    percentile_list,
    positive_int,
    rate,
)
from changenet_trt.defaults import BATCH_SIZE, ENGINE_PROFILE
from changenet_trt.engine.prepare import DEFAULT_PROOF_BATCHES
from changenet_trt.errors import InputError

log = logging.getLogger("changenet_trt")

class Command(abc.ABC):
    """One ``changenet-trt <name>`` command."""

    name = ""
    help = ""
    description = ""

    def __init__(self, *groups: Any) -> None:
        #: the shared argument groups that get their own section in ``--help``, in order (a group
        #: whose options join one of the command's sections is added in ``add_arguments``)
        self.groups: Sequence[Any] = groups

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's own arguments on ``parser``."""

    def add_to(self, subparsers: Any) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(self.name, help=self.help, description=self.description,
                                       allow_abbrev=False)  # `--out` must never be read as `--output`
        self.add_arguments(parser)
        for group in self.groups:
            group.add_to(parser)
        from changenet_trt.cli.spec import takes_spec

        if takes_spec(self.name, [action.dest for action in parser._actions]):
            parser.add_argument("--spec", metavar="SPEC.yaml",
                                help="TAO experiment spec: its keys that mean something here become the defaults "
                                "of these flags (a flag given wins); the keys used and ignored are listed")
        parser.set_defaults(_command=self)
        self.parser = parser
        return parser

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Run with the parsed arguments; returns the exit code."""


def load_classifier(model: str, runtime: RuntimeOptions, normalization: Any, names: dict) -> Any:
    """``changenet_trt.load`` with the parsed runtime, normalisation and contract-name values."""
    from changenet_trt.api import load
    from changenet_trt.errors import ChangeNetError

    options = dict(cutoff=runtime.cutoff, backend=runtime.backend, normalization=normalization,
                   **dict(names, **runtime.backend_options))
    try:
        clf = load(model, batch_size=runtime.batch_size, **options)
    except ChangeNetError:
        if not runtime.batch_from_spec:
            raise
        # a TAO spec's batch_size is for a dynamic-batch model; a static-batch one runs at its own
        clf = load(model, batch_size=None, **options)
    if runtime.cutoff is None and runtime.spec_cutoff is not None and clf.contract.recommended_cutoff is None:
        return clf.with_cutoff(runtime.spec_cutoff)  # the spec's eval_margin, as TAO decides with it
    return clf


# -- inspect -----------------------------------------------------------------------------------
class Inspect(Command):
    name = "inspect"
    help = "show the ChangeNet contract of an ONNX model (inputs, output kind, batch)"
    description = ("Read an ONNX model and report how changenet-trt sees it: which input is the "
                   "sample and which the golden image, their shape, the batch (static or dynamic), the output "
                   "and how its values become a score.")

    def __init__(self) -> None:
        self.names = ContractNamesArgs()
        super().__init__(self.names)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file")
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.contract import read_contract

        contract = read_contract(args.model, **self.names.parse(args))
        if args.json:
            print(json.dumps(contract.to_dict(), indent=2, sort_keys=True))
            return 0
        c, h, w = contract.input_shape
        batch = "dynamic" if contract.static_batch is None else "static {}".format(contract.static_batch)
        score_text = ("the value (embedding distance)" if contract.output_kind == "euclidean"
                      else "softmax(logits)[:, 1]")
        output_shape = ",".join("B" if d is None else str(d) for d in contract.output_shape)
        print("model:         {}".format(args.model))
        print("opset:         {}".format(contract.opset))
        print("sample input:  {}  [B,{},{},{}] {}".format(contract.sample_input, c, h, w, contract.input_dtype))
        print("golden input:  {}  [B,{},{},{}] {}".format(contract.golden_input, c, h, w, contract.input_dtype))
        print("batch:         {}".format(batch))
        print("output:        {}  [{}]".format(contract.output, output_shape))
        print("output kind:   {}  (score = {})".format(contract.output_kind, score_text))
        print("cutoff:        {}{}".format(
            contract.cutoff, "" if contract.recommended_cutoff is not None else " (default; the model recommends none)"))
        if contract.preprocess:
            print("preprocessing: {}".format(contract.preprocess))
        return 0


# -- infer -------------------------------------------------------------------------------------
class Infer(Command):
    name = "infer"
    help = "score golden/sample image pairs, or every row of a TAO-layout CSV without labels"
    description = ("Score golden/sample pairs: the i-th --golden image is compared with the i-th "
                   "--sample image. Images are preprocessed as the model expects (RGB, resized to its H x W, "
                   "normalised). With --csv instead, score every row of a TAO-layout CSV (input_path, "
                   "golden_path, object_name; no label needed; one image per light), as TAO's inference does, "
                   "and write --out: every input column in order plus score and decision. A row with a missing "
                   "or unreadable light is reported with its CSV line and path and written with decision "
                   "'skipped' (or, with --strict, stops the run).")

    def __init__(self) -> None:
        self.runtime = RuntimeArgs()
        self.normalization = NormalizationArgs()
        self.names = ContractNamesArgs()
        self.data_set = DataSetArgs(title="a TAO-layout data set without labels (instead of --golden/--sample)",
                                    csv_help="TAO data set CSV to score (input_path, golden_path, object_name; "
                                    "label not needed; other columns are carried into --out)", strict=True)
        self.progress = ProgressArgs(help="--csv: no progress bar and no per-row lines (the summary still lists "
                                     "skipped rows)")
        super().__init__(self.data_set, self.runtime, self.normalization, self.names, self.progress)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file, TensorRT engine (.engine/.plan) or Triton URL "
                            "(grpc://HOST:8001/NAME, http://HOST:8000/NAME)")
        parser.add_argument("--golden", nargs="+", metavar="PATH", help="golden (reference) images")
        parser.add_argument("--sample", nargs="+", metavar="PATH", help="sample (test) images, same count")
        parser.add_argument("--out", metavar="CSV", help="also write golden,sample,score,defect rows to this CSV; "
                            "with --csv (required): the input's columns plus score and decision")

    def run(self, args: argparse.Namespace) -> int:
        runtime, norm, names = self.runtime.parse(args), self.normalization.parse(args), self.names.parse(args)
        data = self.data_set.parse(args)
        from_spec = getattr(args, "_spec_defaults", {})
        if data.csv and (args.golden or args.sample) and from_spec.get("csv") == data.csv:
            data.csv = data.images = None  # images on the command line win over the spec's infer_dataset
        if data.csv:
            return self.run_csv(args, data, runtime, norm, names)
        if not args.golden or not args.sample:
            raise InputError("infer scores --golden and --sample images, or the rows of a TAO-layout --csv",
                             expected="--golden PATH... --sample PATH..., or --csv CSV --out OUT.csv",
                             found="--golden {} image(s), --sample {} image(s)".format(
                                 len(args.golden or []), len(args.sample or [])))
        if len(args.golden) != len(args.sample):
            raise InputError(
                "--golden and --sample must name the same number of images",
                found="{} golden, {} sample".format(len(args.golden), len(args.sample)),
            )
        from changenet_trt.files import atomic_open, check_output_file

        if args.out:
            check_output_file(args.out, what="--out CSV", inputs=[args.model] + args.golden + args.sample)
        with load_classifier(args.model, runtime, norm, names) as clf:
            result = clf.predict(args.golden, args.sample)
        rows = list(zip(args.golden, args.sample, result.scores.tolist(), result.decisions))
        for golden, sample, s, decision in rows:
            print("{:<8} score={:.6f}  golden={}  sample={}".format(
                "pass" if decision == "pass" else decision.upper(), s, golden, sample))
        defects = int(result.defects.sum()) - len(result.invalid_pairs)
        print("{} pair{}, {} defect{} at cutoff {} ({:.1f} pairs/s)".format(
            len(rows), "" if len(rows) == 1 else "s", defects, "" if defects == 1 else "s", result.cutoff,
            result.pairs_per_s))
        if args.out:
            with atomic_open(args.out, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["golden", "sample", "score", "defect", "decision"])
                for golden, sample, s, decision in rows:
                    writer.writerow([golden, sample, "{:.8g}".format(s), int(decision != "pass"), decision])
            print("wrote {}".format(args.out))
        if result.invalid_pairs:
            print("error: {} pair(s) could not be scored (the model's output is NaN or Inf): {}".format(
                len(result.invalid_pairs), "; ".join("golden={} sample={}".format(rows[i][0], rows[i][1])
                                                     for i in result.invalid_pairs)), file=sys.stderr)
            return 1
        return 0

    def run_csv(self, args: argparse.Namespace, data: Any, runtime: RuntimeOptions, norm: Any, names: dict) -> int:
        """``--csv``: score every row of the data set and write the input's columns plus score and decision."""
        from changenet_trt.evaluation.inference import format_summary, infer_csv

        if args.golden or args.sample:
            raise InputError("give either --csv (a TAO-layout data set) or --golden/--sample images, not both")
        if not args.out:
            raise InputError("infer --csv writes its scores to a CSV", expected="--out OUT.csv", found="no --out")
        from changenet_trt.files import check_output_file

        check_output_file(args.out, what="scores CSV (--out)", inputs=[p for p in (args.model, data.csv, data.images)
                                                                       if p])
        from changenet_trt.cli.spec import check_model_shape

        with load_classifier(args.model, runtime, norm, names) as clf:
            check_model_shape(args, data.layout, clf.contract)
            result = infer_csv(args.model, data.csv, images_dir=data.images, out_csv=args.out, layout=data.layout,
                               strict=data.strict, workers=data.workers, progress=self.progress.parse(args),
                               classifier=clf)
        print(format_summary(result))
        return 0


# -- reference-model ---------------------------------------------------------------------------
class ReferenceModel(Command):
    name = "reference-model"
    help = "write a small reference ChangeNet ONNX model (TAO tensor names, 512x128 inputs)"
    description = ("Write a deterministic reference ChangeNet-Classification ONNX model with TAO's "
                   "interface (input_1 sample, input_2 golden, [B,3,512,128], output). Its scores really "
                   "separate changed from unchanged pairs; use it to try the pipeline without a trained model.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("out", help="ONNX file to write")
        parser.add_argument("--kind", choices=("learnable", "euclidean"), default="learnable",
                            help="learnable: [B,2] logits; euclidean: [B] distance (default: learnable)")
        parser.add_argument("--batch", type=positive_int, metavar="N",
                            help="static batch N, as TAO's default export (16); default: dynamic")
        parser.add_argument("--opset", type=int, choices=(12, 17), default=17, help="ONNX opset (default: 17)")
        parser.add_argument("--realistic", action="store_true",
                            help="write the compute-realistic FAN-hybrid-small-like model instead (random weights, "
                            "about 60 GFLOPs per pair learnable / 37 euclidean, a 260-310 MB file): for benchmarks")
        parser.add_argument("--tao-like", action="store_true",
                            help="write the small graph with TAO 7.3.0's export patterns instead (batch baked into "
                            "Reshape/Tile/Expand, var_mean's shape-derived Cast, Sin/Cos position encoding, W/8 = 16 "
                            "reshapes): a test case for prepare and the precision tools")
        parser.add_argument("--seed", type=int, default=0, help="weights seed of --realistic and --tao-like (default: 0)")
        parser.add_argument("--fp16-overflow", action="store_true",
                            help="plant an intermediate tensor that overflows float16 (same float32 output): "
                            "a test case for fp16-check and build --fp32-layers")

    def run(self, args: argparse.Namespace) -> int:
        batch_text = "static batch {}".format(args.batch) if args.batch else "dynamic batch"
        if args.realistic and args.tao_like:
            raise InputError("--realistic and --tao-like are two different models: choose one")
        if args.tao_like:
            if args.fp16_overflow:
                raise InputError("--fp16-overflow applies to the small reference model, not --tao-like")
            from changenet_trt.models.tao_like import write_tao_like_model

            path = write_tao_like_model(args.out, kind=args.kind, batch=args.batch, opset=args.opset, seed=args.seed)
            print("wrote {} (TAO-export-like graph, {} output, {}, opset {}{})".format(
                path, args.kind, batch_text, args.opset, ", constants unfolded as TAO 5.x" if args.opset == 12 else ""))
            return 0
        if args.realistic:
            if args.fp16_overflow:
                raise InputError("--fp16-overflow applies to the small reference model, not --realistic")
            from changenet_trt.files import check_output_file
            from changenet_trt.models.realistic import build_realistic_model, model_gflops, save_model

            check_output_file(args.out, what="model file")
            model = build_realistic_model(kind=args.kind, batch=args.batch, opset=args.opset, seed=args.seed)
            path = save_model(model, args.out)
            print("wrote {} (FAN-hybrid-small-like, random weights, {} output, {}, opset {}, {:.2f} GFLOPs "
                  "per pair)".format(path, args.kind, batch_text, args.opset, model_gflops(model)))
            return 0
        from changenet_trt.models.reference import write_reference_model

        path = write_reference_model(args.out, kind=args.kind, batch=args.batch, opset=args.opset,
                                     fp16_overflow=args.fp16_overflow)
        print("wrote {} ({} output, {}, opset {}{})".format(
            path, args.kind, batch_text, args.opset, ", planted float16 overflow" if args.fp16_overflow else ""))
        return 0


# -- demo ------------------------------------------------------------------------------------
class Demo(Command):
    name = "demo"
    help = "run the whole CPU pipeline: reference model, synthetic PCB data, eval, plots"
    description = ("Write a reference model (or use --model), synthesise a PCB data set in TAO's "
                   "layout, evaluate the model on it with ONNX Runtime and print the false-positive rate, the "
                   "defect capture, pairs/s and where the plots are.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", default="demo-output", help="working folder (default: demo-output)")
        parser.add_argument("--model", help="evaluate this ONNX model instead of the reference model")
        parser.add_argument("--kind", choices=("learnable", "euclidean"), default="learnable",
                            help="which reference model to write (default: learnable)")
        parser.add_argument("--pairs", type=positive_int, default=400, help="synthetic pairs (default: 400)")
        parser.add_argument("--defect-rate", type=rate, default=0.3, metavar="R",
                            help="share of defect pairs (default: 0.3)")
        parser.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.tools.demo import run_demo

        return run_demo(args.out, model=args.model, pairs=args.pairs, defect_rate=args.defect_rate, seed=args.seed,
                        kind=args.kind)


# -- synth -------------------------------------------------------------------------------------
class Synth(Command):
    name = "synth"
    help = "write a synthetic PCB data set (golden/sample pairs under 4 lights) in TAO's layout"
    description = ("Synthesise golden/sample images of PCB components (resistors, capacitors, diodes, "
                   "ICs) under TAO's four lights, with PASS nuisance and labelled defects (MISSING, SHIFTED, "
                   "ROTATED, TOMBSTONE, POLARITY, BRIDGE, FOREIGN), plus the CSV. Deterministic by seed.")

    def __init__(self) -> None:
        self.data_set = DataSetArgs(title="data layout (TAO's defaults)", csv=None, tiles=False,
                                    workers="render threads")
        self.progress = ProgressArgs()
        super().__init__(self.data_set, self.progress)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("out", help="output folder (gets dataset.csv, images/, synth.json)")
        parser.add_argument("--pairs", type=positive_int, default=400, help="number of pairs (default: 400)")
        parser.add_argument("--defect-rate", type=rate, default=0.3, metavar="R",
                            help="share of defect pairs (default: 0.3)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        parser.add_argument("--size", type=positive_int, default=128,
                            help="light image size in pixels (default: 128)")

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.data.synth import synthesize

        data, show = self.data_set.parse(args), self.progress.parse(args)
        start = time.perf_counter()
        # synthesize checks the folder before its bar opens; the bar shows only on a terminal
        result = synthesize(args.out, pairs=args.pairs, defect_rate=args.defect_rate, seed=args.seed,
                            lights=data.layout.lights, ext=data.layout.ext, size=args.size,
                            workers=data.workers, progress=show)
        counts = ", ".join("{} {}".format(k, v) for k, v in result.counts.items())
        print("wrote {} pairs to {} in {:.1f} s: {}".format(args.pairs, args.out, time.perf_counter() - start, counts))
        print("  csv:    {}".format(result.csv_path))
        print("  images: {}".format(os.path.join(args.out, "images")))
        print("evaluate a model on it with: changenet-trt eval MODEL --csv {}".format(result.csv_path))
        return 0


# -- eval --------------------------------------------------------------------------------------
class Eval(Command):
    name = "eval"
    help = "score a TAO-layout data set: FPR, defect capture, cutoff sweep, plots"
    description = ("Score every golden/sample pair of a TAO ChangeNet-Classification CSV (columns "
                   "input_path, golden_path, label, object_name; label PASS = good, anything else = a defect of "
                   "that type) and write scores.csv, summary.json, sweep.csv and PNG plots. Light files are "
                   "<images>/<input_path|golden_path>/<object_name>_<Light><ext>. A row with a missing or "
                   "unreadable file is reported with its CSV line and path and skipped (or, with --strict, stops "
                   "the run).")

    def __init__(self) -> None:
        self.data_set = DataSetArgs(csv_required=True, strict=True)
        self.runtime = RuntimeArgs()
        self.normalization = NormalizationArgs()
        self.progress = ProgressArgs(
            help="no progress bar and no per-row lines (the summary still counts skipped rows)")
        self.names = ContractNamesArgs()
        super().__init__(self.data_set, self.runtime, self.normalization, self.progress, self.names)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file, TensorRT engine (.engine/.plan) or Triton URL "
                            "(grpc://HOST:8001/NAME, http://HOST:8000/NAME)")
        parser.add_argument("--out", default="eval-output", metavar="DIR", help="output folder (default: eval-output)")
        parser.add_argument("--target-fpr", type=rate, metavar="F",
                            help="also report the cutoff with the most capture at FPR <= F")
        parser.add_argument("--target-capture", type=rate, metavar="T",
                            help="also report the highest cutoff with defect capture >= T")
        parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.evaluation.evaluate import evaluate, format_summary

        data, runtime = self.data_set.parse(args), self.runtime.parse(args)
        norm, names, show = self.normalization.parse(args), self.names.parse(args), self.progress.parse(args)
        from changenet_trt.cli.spec import check_model_shape

        with load_classifier(args.model, runtime, norm, names) as clf:
            check_model_shape(args, data.layout, clf.contract)
            result = evaluate(args.model, data.csv, images_dir=data.images, out_dir=args.out, layout=data.layout,
                              strict=data.strict, target_fpr=args.target_fpr, target_capture=args.target_capture,
                              plots=not args.no_plots, workers=data.workers, progress=show, classifier=clf)
        print(format_summary(result))
        return 0


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
        self.names = ContractNamesArgs()
        self.normalization = NormalizationArgs(
            "with --uint8-input, the normalisation put in the graph; with --precision, that of the calibration "
            "and proof pairs")
        self.calibration_data = DataSetArgs(
            csv="--calib-csv",
            csv_help="TAO data set CSV: its first --calib-batches batches are analysed (int8 calibration, fp16's "
            "fp16-check ranges) and the typed model is compared with float32 on the pairs after them (on "
            "--proof-pairs synthetic pairs when none are left; default without a CSV: synthetic pairs)")
        super().__init__(self.names)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from changenet_trt.engine.calibration import DEFAULT_CALIB_BATCHES
        from changenet_trt.engine.precision import DEFAULT_PROOF_PAIRS, INT8_METHODS

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
                               help="fp16: also keep these nodes float32 (names or fnmatch patterns, or @FILE with "
                               "one per line as fp16-check writes it); a pattern matching no node is an error")
        precision.add_argument("--force", action="store_true",
                               help="fp16: write the float16 model even when a decision flips against float32")
        precision.add_argument("--proof-pairs", type=positive_int, metavar="N",
                               help="synthetic pairs to compare on when no data-set pair is held back (no "
                               "--calib-csv, or the analysis used every pair) (default: {})".format(DEFAULT_PROOF_PAIRS))
        pairs = parser.add_argument_group("pairs for --precision (a TAO data set)")
        self.calibration_data.add_to_group(pairs)
        pairs.add_argument("--calib-batches", type=positive_int, metavar="N",
                           help="analyse (int8: calibrate; fp16: fp16-check) at most N batches of {} pairs of "
                           "--calib-csv; the rest are held back for the comparison (default: {})".format(
                               BATCH_SIZE, DEFAULT_CALIB_BATCHES))
        pairs.add_argument("--calib-method", choices=INT8_METHODS,
                           help="int8: activation ranges by entropy or by the 99.999th percentile of |x| "
                           "(default: entropy)")
        uint8 = parser.add_argument_group("uint8 input")
        uint8.add_argument("--uint8-input", action="store_true",
                           help="the written model takes uint8 RGB pixels and normalises them in its graph "
                           "(4x fewer bytes to send; proven equal to host normalisation before writing; with "
                           "--precision it is added to the float16/INT8 model)")
        self.normalization.add_to_group(uint8)

    @staticmethod
    def check_combination(args: argparse.Namespace, calib_csv: Any, normalization: Any) -> None:
        """Refuse options that do nothing with the others given (before any work)."""
        chosen = "--precision {}".format(args.precision) if args.precision else "no --precision"
        if normalization is not None and not (args.uint8_input or args.precision):
            raise InputError("--normalization in prepare says what --uint8-input puts in the graph, or how "
                             "--precision's pairs are normalised", expected="--uint8-input or --precision with it, "
                             "or no --normalization")
        for flag, given in (("--fp32-layers", args.fp32_layers), ("--force", args.force)):
            if given and args.precision != "fp16":
                raise InputError("{} applies to a float16 model".format(flag), expected="--precision fp16",
                                 found=chosen)
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

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.engine.prepare import prepare_model

        names = self.names.parse(args)
        try:
            batches = [int(b) for b in args.proof_batches.split(",") if b.strip()]
        except ValueError:
            raise InputError("--proof-batches must be integers", found=repr(args.proof_batches)) from None
        normalization = self.normalization.parse(args)
        data = self.calibration_data.parse(args)
        self.check_combination(args, data.csv, normalization)
        if not args.uint8_input and not args.precision:
            report = prepare_model(args.model, args.out, batches=batches, contract_overrides=names)
            print("\n".join(report.summary_lines()))
            return 0
        import tempfile

        from changenet_trt.contract import read_contract
        from changenet_trt.engine.options import read_layer_patterns
        from changenet_trt.files import check_output_file

        check_output_file(args.out, "prepared model", inputs=[p for p in (args.model, data.csv) if p])
        contract = read_contract(args.model, **names)
        # the model's own preprocessing unless told otherwise: pairs and uint8 front agree
        normalization = normalization or contract.preprocess
        patterns = read_layer_patterns(args.fp32_layers)
        if patterns:
            import onnx

            from changenet_trt.engine.precision import match_nodes, name_nodes

            match_nodes(name_nodes(onnx.load(args.model)), patterns)  # a typo fails here, not after the proofs
        if args.precision and data.csv:  # a bad CSV, or too few pairs to calibrate, fails before the proofs
            from changenet_trt.data.dataset import load_dataset
            from changenet_trt.engine.calibration import dataset_batches

            if args.precision == "int8":
                dataset_batches(data.csv, contract.input_shape, BATCH_SIZE, 1, images_dir=data.images,
                                layout=data.layout)
            else:
                load_dataset(data.csv, images_dir=data.images, layout=data.layout)
        with tempfile.TemporaryDirectory(prefix="changenet-prepare-") as work:
            dynamic = os.path.join(work, "dynamic.onnx")
            labels = {dynamic: "{} (dynamic batch)".format(args.model)}
            report = prepare_model(args.model, dynamic, batches=batches, contract_overrides=names)
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
                from changenet_trt.engine.prepare import add_uint8_input

                uint8 = add_uint8_input(current, args.out, normalization=normalization or "tao",
                                        contract_overrides=names)
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
                   normalization: Any, names: dict) -> List[str]:
        """Write the float16 (``patterns`` kept float32) or INT8 model of ``model`` to ``out``
        (:func:`changenet_trt.engine.typed.make_typed_model`, as build does); the lines of its report."""
        from changenet_trt.engine import precision
        from changenet_trt.engine.calibration import DEFAULT_CALIB_BATCHES
        from changenet_trt.engine.typed import TypedPairs, make_typed_model

        pairs = TypedPairs(csv=data.csv, images=data.images, layout=data.layout, workers=data.workers,
                           calib_batches=args.calib_batches or DEFAULT_CALIB_BATCHES, batch=BATCH_SIZE,
                           proof_pairs=args.proof_pairs or precision.DEFAULT_PROOF_PAIRS,
                           on_problem=lambda item: log.warning("set aside: %s", item))
        result = make_typed_model(model, out, args.precision, pairs, fp32_layers=patterns, force=args.force,
                                  method=args.calib_method or "entropy", normalization=normalization,
                                  contract_overrides=names, origin=args.model)
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
        self.names = ContractNamesArgs()
        self.normalization = NormalizationArgs("with --uint8-input, the normalisation put in the graph")
        super().__init__(self.names)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from changenet_trt.engine.triton_repo import PLATFORMS

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
        self.normalization.add_to_group(uint8)

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.engine.triton_repo import write_model_repository

        names = self.names.parse(args)
        normalization = self.normalization.parse(args)
        if args.ort_threads < 0:
            raise InputError("--ort-threads must be 0 (ONNX Runtime's default) or more", found=args.ort_threads)
        report = write_model_repository(
            args.model, args.out, name=args.name, platform=args.platform, max_batch=args.max_batch,
            instances=args.instances, uint8_input=args.uint8_input, normalization=normalization,
            overwrite=args.overwrite, ort_threads=args.ort_threads, **names)
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
        self.normalization = NormalizationArgs("preprocessing recorded in the metadata and used for the pairs")
        self.calibration_data = DataSetArgs(
            csv="--calib-csv", csv_help="TAO data set CSV: INT8 calibration pairs, or --fp16's fp16-check/proof pairs",
            workers=None)
        self.progress = ProgressArgs()
        self.names = ContractNamesArgs()
        super().__init__(self.normalization, self.progress, self.names)

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
        parser.add_argument("--proof-pairs", type=positive_int, default=64, metavar="N",
                            help="--fp16 without --calib-csv: synthetic pairs for fp16-check and the proof (default: 64)")
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
        self.calibration_data.add_to_group(group)
        group.add_argument("--calib-batches", type=positive_int, default=32, metavar="N",
                           help="at most N batches of OPT pairs (default: 32)")
        group.add_argument("--calib-method", choices=("entropy", "percentile"), default="entropy",
                           help="how the Q/DQ model's activation ranges are chosen (default: entropy)")
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

    def options(self, args: argparse.Namespace) -> Any:
        """The :class:`~changenet_trt.engine.options.BuildOptions` of the parsed arguments."""
        from changenet_trt.engine.options import BatchProfile, BuildOptions, read_layer_patterns

        calibration = self.calibration_data.parse(args)
        return BuildOptions(
            model=args.model, output=args.out, precision=args.precision, profile=BatchProfile.parse(args.batch),
            workspace_mib=args.workspace, timing_cache=args.timing_cache, use_timing_cache=not args.no_timing_cache,
            opt_level=args.opt_level, dla_core=args.dla_core, fp32_layers=read_layer_patterns(args.fp32_layers),
            precision_constraints=args.precision_constraints, version_compatible=args.version_compatible,
            exclude_lean_runtime=args.exclude_lean_runtime, calib_csv=calibration.csv,
            calib_images=calibration.images, calib_batches=args.calib_batches, calib_cache=args.calib_cache,
            recalibrate=args.recalibrate, calib_layout=calibration.layout if calibration.csv else None,
            normalization=self.normalization.parse(args), contract_overrides=self.names.parse(args),
            progress=self.progress.parse(args), int8_calibrator=args.int8_calibrator,
            calib_method=args.calib_method, proof_pairs=args.proof_pairs, force_fp16=args.force_fp16,
        )

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.engine.build import build_engine_file, prepare_typed
        from changenet_trt.engine.plan import make_plan

        plan = make_plan(self.options(args), trt_version=args.trt_version)
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
        self.json_report = JsonReportArgs(
            "the summary (batch, qps, fps, latency_ms {min,max,mean,median,p90,p95,p99}, ...)")
        self.runtime = RuntimeArgs(batch_size=False, cutoff=False)  # the batch is trtexec's --batch
        self.data_set = DataSetArgs(csv_help="TAO data set CSV (needed by --end-to-end)")
        self.normalization = NormalizationArgs("with --end-to-end, input normalisation")
        self.names = ContractNamesArgs()
        super().__init__(self.runtime, self.names)

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
        self.json_report.add_to(group)
        group.add_argument("--histogram", metavar="PNG", help="write a latency histogram of the timed queries")
        e2e = parser.add_argument_group("end to end (decode + preprocess + inference on a TAO data set)")
        e2e.add_argument("--end-to-end", action="store_true",
                         help="time whole batches of a data set through the eval pipeline instead of random inputs")
        self.data_set.add_to_group(e2e)
        self.normalization.add_to_group(e2e)

    @staticmethod
    def bench_options(args: argparse.Namespace) -> Any:
        from changenet_trt.tools.bench import BenchOptions

        return BenchOptions(
            batch=args.batch, warmup_ms=args.warmup, duration_s=args.duration, iterations=args.iterations,
            avg_runs=args.avg_runs, percentiles=tuple(args.percentile), cuda_graph=args.cuda_graph,
            no_data_transfers=args.no_data_transfers, spin_wait=args.spin_wait, streams=args.streams,
            expose_dma=args.expose_dma,
        )

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.tools import bench, bench_report

        runtime, names, data = self.runtime.parse(args), self.names.parse(args), self.data_set.parse(args)
        norm = self.normalization.parse(args)
        inputs = [args.model, data.csv]
        self.json_report.check(args, "bench JSON report", inputs=inputs)
        if args.export_times:
            from changenet_trt.files import check_output_file

            check_output_file(args.export_times, what="--exportTimes file", inputs=inputs)
        if args.end_to_end:
            if not data.csv:
                raise InputError("--end-to-end needs a data set", expected="--csv CSV [--images DIR]")
            result = bench.run_end_to_end(
                args.model, data.csv, data.images, self.bench_options(args), layout=data.layout,
                normalization=norm, workers=data.workers, backend=runtime.backend,
                contract_overrides=names, backend_options=runtime.backend_options,
            )
        else:
            if data.csv:
                raise InputError("--csv is only used with --end-to-end", expected="--end-to-end --csv CSV")
            result = bench.run_benchmark(
                args.model, self.bench_options(args), backend=runtime.backend,
                contract_overrides=names, backend_options=runtime.backend_options,
            )
        print(bench_report.format_report(result), end="")
        self.json_report.write(args, result, bench_report.write_json)
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
        from changenet_trt.evaluation.validate import DEFAULT_PAIRS

        self.pairs = PairSourceArgs(DEFAULT_PAIRS)
        self.runtime = RuntimeArgs()  # the engine side; the ONNX side is always onnxruntime on CPU
        self.normalization = NormalizationArgs()
        self.json_report = JsonReportArgs()
        self.names = ContractNamesArgs()
        super().__init__(self.pairs, self.runtime, self.normalization, self.json_report, self.names)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from changenet_trt.evaluation.validate import DEFAULT_ATOL, DEFAULT_MAX_FLIPS, DEFAULT_RTOL

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

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.evaluation import validate

        make_source, runtime = self.pairs.parse(args), self.runtime.parse(args)
        norm, names = self.normalization.parse(args), self.names.parse(args)
        self.json_report.check(args, "validate JSON report", inputs=[args.engine, args.onnx, args.csv])
        report = validate.validate(
            args.engine, args.onnx, make_source, cutoff=runtime.cutoff, atol=args.atol, rtol=args.rtol,
            max_flips=args.max_flips, backend=runtime.backend, batch_size=runtime.batch_size, normalization=norm,
            contract_overrides=names, engine_options=runtime.backend_options,
        )
        print("\n".join(validate.format_report(report, show_flips=args.show_flips)))
        self.json_report.write(args, report, validate.write_json)
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
        self.pairs = PairSourceArgs(self.default_pairs)
        # onnxruntime on CPU with every activation exposed: only the thread count is a choice
        self.runtime = RuntimeArgs(backend=False, batch_size=False, cutoff=False, providers=False)
        self.normalization = NormalizationArgs()
        self.json_report = JsonReportArgs("every tensor's statistics")
        self.names = ContractNamesArgs()
        super().__init__(self.pairs, self.runtime, self.normalization, self.json_report, self.names)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from changenet_trt.engine.fp16_check import DEFAULT_MAX_REL_ERROR

        parser.add_argument("model", help="ONNX file")
        parser.add_argument("--out", metavar="FILE",
                            help="float32 layer list to write (default: <model>.fp32-layers.txt next to the model)")
        parser.add_argument("--max-rel-error", type=float, default=DEFAULT_MAX_REL_ERROR, metavar="X",
                            help="also keep a tensor's layers in float32 when its float16 relative L2 error exceeds "
                            "X (default: {:g}; plain rounding gives about 3e-4)".format(DEFAULT_MAX_REL_ERROR))
        parser.add_argument("--top", type=positive_int, default=10, metavar="K",
                            help="tensors to list by precision lost (default: 10)")

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.contract import read_contract
        from changenet_trt.data.preprocess import get_normalization
        from changenet_trt.engine import fp16_check
        from changenet_trt.files import check_output_file

        make_source, runtime = self.pairs.parse(args), self.runtime.parse(args)
        norm, names = self.normalization.parse(args), self.names.parse(args)
        out = args.out or fp16_check.default_list_path(args.model)
        check_output_file(out, what="float32 layer list", inputs=[args.model])
        self.json_report.check(args, "fp16-check JSON report", inputs=[args.model])
        contract = read_contract(args.model, **names)
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
        self.json_report.write(args, report, fp16_check.write_json)
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
        self.json_report = JsonReportArgs()
        super().__init__(self.json_report)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--cpu-only", action="store_true", help="skip the GPU checks even when a GPU is present")
        parser.add_argument("--workdir", metavar="DIR",
                            help="keep the files the checks write here (default: a temporary folder)")
        parser.add_argument("--bench-seconds", type=non_negative_float, default=1.0, metavar="S",
                            help="duration of the short benchmark (default: 1)")

    def run(self, args: argparse.Namespace) -> int:
        from changenet_trt.tools import doctor

        self.json_report.check(args, "doctor JSON report", inputs=[])
        report = doctor.run_doctor(workdir=args.workdir, device=not args.cpu_only, bench_seconds=args.bench_seconds)
        print("\n".join(doctor.format_report(report)))
        self.json_report.write(args, report, doctor.write_json)
        return 0 if report.ok else 1


def all_commands() -> List[Command]:
    """A fresh instance of every command, in ``--help`` order."""
    return [Inspect(), Infer(), ReferenceModel(), Demo(), Synth(), Eval(), Prepare(), Build(), Bench(), Validate(),
            Fp16Check(), TritonRepo(), Doctor()]
