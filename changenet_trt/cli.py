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

from changenet_trt import __version__
from changenet_trt.errors import ChangeNetError, InputError

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
    from changenet_trt.api import load

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
    from changenet_trt.contract import read_contract

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
    from changenet_trt.files import atomic_open, check_output_file

    if args.out:
        check_output_file(args.out, what="--out CSV", inputs=[args.model] + args.golden + args.sample)
    with load_classifier(args) as clf:
        result = clf.predict(args.golden, args.sample)
    rows = list(zip(args.golden, args.sample, result.scores.tolist(), result.decisions))
    for golden, sample, s, decision in rows:
        print("{:<8} score={:.6f}  golden={}  sample={}".format(
            "pass" if decision == "pass" else decision.upper(), s, golden, sample))
    print("{} pairs, {} defects at cutoff {} ({:.1f} pairs/s)".format(
        len(rows), int(result.defects.sum()) - len(result.invalid_pairs), result.cutoff, result.pairs_per_s))
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
    parser.add_argument("--fp16-overflow", action="store_true",
                        help="plant an intermediate tensor that overflows float16 (same float32 output): "
                        "a test case for fp16-check and build --fp32-layers")


def _cmd_reference_model(args: argparse.Namespace) -> int:
    batch_text = "static {}".format(args.batch) if args.batch else "dynamic"
    if args.realistic:
        if args.fp16_overflow:
            raise InputError("--fp16-overflow applies to the small reference model, not --realistic")
        from changenet_trt.files import check_output_file
        from changenet_trt.models.realistic import build_realistic_model, model_gflops, save_model

        check_output_file(args.out, what="model file")
        model = build_realistic_model(kind=args.kind, batch=args.batch, opset=args.opset, seed=args.seed)
        path = save_model(model, args.out)
        print("wrote {} (FAN-hybrid-small-like, random weights, {} output, {} batch, opset {}, {:.2f} GFLOPs "
              "per pair)".format(path, args.kind, batch_text, args.opset, model_gflops(model)))
        return 0
    from changenet_trt.models.reference import write_reference_model

    path = write_reference_model(args.out, kind=args.kind, batch=args.batch, opset=args.opset,
                                 fp16_overflow=args.fp16_overflow)
    print("wrote {} ({} output, {} batch, opset {}{})".format(
        path, args.kind, batch_text, args.opset, ", planted float16 overflow" if args.fp16_overflow else ""))
    return 0


# -- demo ------------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the whole CPU pipeline: reference model, synthetic PCB data, eval, plots",
        description="Write a reference model (or use --model), synthesise a PCB data set in TAO's "
        "layout, evaluate the model on it with ONNX Runtime and print the false-positive rate, the "
        "defect capture, pairs/s and where the plots are.",
    )
    parser.add_argument("--out", default="demo-output", help="working folder (default: demo-output)")
    parser.add_argument("--model", help="evaluate this ONNX model instead of the reference model")
    parser.add_argument("--kind", choices=("learnable", "euclidean"), default="learnable",
                        help="which reference model to write (default: learnable)")
    parser.add_argument("--pairs", type=positive_int, default=400, help="synthetic pairs (default: 400)")
    parser.add_argument("--defect-rate", type=rate, default=0.3, metavar="R",
                        help="share of defect pairs (default: 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from changenet_trt.tools.demo import run_demo

    return run_demo(args.out, model=args.model, pairs=args.pairs, defect_rate=args.defect_rate, seed=args.seed,
                    kind=args.kind)


# -- synth / eval ------------------------------------------------------------------------------
def rate(text: str) -> float:
    """A rate in [0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number between 0 and 1, found {!r}".format(text)) from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("expected a number between 0 and 1, found {}".format(value))
    return value


def _add_synth(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "synth",
        help="write a synthetic PCB data set (golden/sample pairs under 4 lights) in TAO's layout",
        description="Synthesise golden/sample images of PCB components (resistors, capacitors, diodes, "
        "ICs) under TAO's four lights, with PASS nuisance and labelled defects (MISSING, SHIFTED, "
        "ROTATED, TOMBSTONE, POLARITY, BRIDGE, FOREIGN), plus the CSV. Deterministic by seed.",
    )
    parser.add_argument("out", help="output folder (gets dataset.csv, images/, synth.json)")
    parser.add_argument("--pairs", type=positive_int, default=400, help="number of pairs (default: 400)")
    parser.add_argument("--defect-rate", type=rate, default=0.3, metavar="R", help="share of defect pairs (default: 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--ext", default=".jpg", help="image file extension: .jpg (TAO's default), .png or .bmp")
    parser.add_argument("--lights", default=",".join(_tao_lights()), metavar="LIST",
                        help="comma-separated light names, or 'none' for one image per object "
                        "(default: TAO's LowAngleLight,SolderLight,UniformLight,WhiteLight)")
    parser.add_argument("--size", type=positive_int, default=128, help="light image size in pixels (default: 128)")
    parser.add_argument("--workers", type=positive_int, metavar="N", help="render threads (default: one per core)")


def _tao_lights() -> tuple:
    from changenet_trt.data.dataset import TAO_LIGHTS

    return TAO_LIGHTS


def _cmd_synth(args: argparse.Namespace) -> int:
    import time

    from changenet_trt.data.dataset import parse_lights
    from changenet_trt.data.synth import synthesize
    from changenet_trt.files import check_output_dir
    from changenet_trt.progress import Progress

    check_output_dir(args.out, what="synth output folder")  # before the progress bar opens
    start = time.perf_counter()
    with Progress(args.pairs, label="synth", unit="pairs") as bar:
        result = synthesize(args.out, pairs=args.pairs, defect_rate=args.defect_rate, seed=args.seed,
                            lights=parse_lights(args.lights), ext=args.ext, size=args.size, workers=args.workers,
                            on_pair=bar.update)
    counts = result.counts
    print("wrote {} pairs to {} in {:.1f} s: {}".format(
        args.pairs, args.out, time.perf_counter() - start, ", ".join("{} {}".format(k, v) for k, v in counts.items())))
    print("  csv:    {}".format(result.csv_path))
    print("  images: {}".format(os.path.join(args.out, "images")))
    print("evaluate a model on it with: changenet-trt eval MODEL --csv {}".format(result.csv_path))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="score a TAO-layout data set: FPR, defect capture, cutoff sweep, plots",
        description="Score every golden/sample pair of a TAO ChangeNet-Classification CSV (columns "
        "input_path, golden_path, label, object_name; label PASS = good, anything else = a defect of "
        "that type) and write scores.csv, summary.json, sweep.csv and PNG plots. Light files are "
        "<images>/<input_path|golden_path>/<object_name>_<Light><ext>. A row with a missing or "
        "unreadable file is reported with its CSV line and path and skipped (or, with --strict, stops "
        "the run).",
    )
    parser.add_argument("model", help="ONNX file (or TensorRT engine)")
    parser.add_argument("--csv", required=True, help="TAO data set CSV")
    parser.add_argument("--images", metavar="DIR", help="images root the CSV's paths are relative to (default: the CSV's folder)")
    parser.add_argument("--out", default="eval-output", metavar="DIR", help="output folder (default: eval-output)")
    parser.add_argument("--strict", action="store_true", help="stop at the first missing or unreadable file")
    parser.add_argument("--target-fpr", type=rate, metavar="F", help="also report the cutoff with the most capture at FPR <= F")
    parser.add_argument("--target-capture", type=rate, metavar="T",
                        help="also report the highest cutoff with defect capture >= T")
    group = parser.add_argument_group("data layout (TAO's defaults)")
    group.add_argument("--lights", default=",".join(_tao_lights()), metavar="LIST",
                       help="light names in input order, or 'none' for one image per object "
                       "(default: LowAngleLight,SolderLight,UniformLight,WhiteLight)")
    group.add_argument("--ext", default=".jpg", help="image file extension (default: .jpg)")
    group.add_argument("--concat", choices=("linear", "grid"), default="linear",
                       help="lights stacked along H (linear) or in a grid (default: linear)")
    group.add_argument("--grid", metavar="RxC", help="grid rows x columns for --concat grid (default: 2x(n/2))")
    group.add_argument("--workers", type=positive_int, metavar="N", help="decode threads (default: one per core)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime_arguments(parser)
    add_model_arguments(parser)


def _cmd_eval(args: argparse.Namespace) -> int:
    from changenet_trt.data.dataset import LightLayout, parse_grid, parse_lights
    from changenet_trt.evaluation.evaluate import evaluate, format_summary

    layout = LightLayout(lights=parse_lights(args.lights), ext=args.ext, concat=args.concat,
                         grid=parse_grid(args.grid) if args.grid else None)
    with load_classifier(args) as clf:
        result = evaluate(args.model, args.csv, images_dir=args.images, out_dir=args.out, layout=layout,
                          strict=args.strict, target_fpr=args.target_fpr, target_capture=args.target_capture,
                          plots=not args.no_plots, workers=args.workers, progress=not args.quiet, classifier=clf)
    print(format_summary(result))
    return 0


# -- prepare -----------------------------------------------------------------------------------
def _add_prepare(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prepare",
        help="make a static-batch ONNX (TAO's default 16) dynamic, proven equal with onnxruntime",
        description="Check the ChangeNet contract; when the batch is static, rewrite the inputs, the output "
        "and the Reshape constants that carry it to a dynamic 'batch', then prove it: the same pairs "
        "through the original at its own batch and through the result at batches 1, 7 and 32 must "
        "give the same output rows (|new-old| <= 1e-5 + 1e-4*|old|). Refuses, with the reason, when "
        "that cannot be proven (e.g. a graph that mixes rows across the batch).",
    )
    parser.add_argument("model", help="ONNX file")
    parser.add_argument("-o", "--out", required=True, metavar="OUT.onnx", help="prepared ONNX file to write")
    parser.add_argument("--proof-batches", default="1,7,32", metavar="LIST",
                        help="batches to prove at, comma separated (default: 1,7,32)")
    add_model_arguments(parser)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from changenet_trt.engine.prepare import prepare_model

    try:
        batches = [int(b) for b in args.proof_batches.split(",") if b.strip()]
    except ValueError:
        raise InputError("--proof-batches must be integers", found=repr(args.proof_batches)) from None
    report = prepare_model(args.model, args.out, batches=batches, sample_input=args.sample_input,
                           golden_input=args.golden_input, output_name=args.output_name,
                           output_kind=args.output_kind)
    print("\n".join(report.summary_lines()))
    return 0


# -- build -------------------------------------------------------------------------------------
def _add_build(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "build",
        help="build a TensorRT engine (FP16 by default, dynamic batch 1:16:32) with its JSON metadata",
        description="Prepare the ONNX (static batch -> dynamic, proven with onnxruntime), then build a "
        "TensorRT engine with one optimisation profile shared by both inputs. The engine lands under "
        "engines/ with a name that encodes model, precision, batch profile, GPU and TensorRT version, "
        "next to a .json sidecar the runner checks before loading. Works with TensorRT 8.5 to 10.x. "
        "--dry-run and --print-trtexec need no TensorRT.",
    )
    parser.add_argument("model", help="ONNX file exported by TAO (static or dynamic batch)")
    parser.add_argument("-o", "--out", metavar="ENGINE", help="engine path (default: engines/<generated name>.engine)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="FP16 with FP32 fallback (default)")
    precision.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="FP32 (TF32 allowed)")
    precision.add_argument("--int8", dest="precision", action="store_const", const="int8",
                           help="INT8 with FP16 fallback, entropy calibration on real pairs")
    parser.set_defaults(precision="fp16")
    parser.add_argument("--batch", default="1:16:32", metavar="MIN:OPT:MAX",
                        help="batch profile in pairs, 1 <= MIN <= OPT <= MAX (default: 1:16:32)")
    parser.add_argument("--workspace", type=positive_int, metavar="MIB", help="workspace memory pool limit in MiB")
    parser.add_argument("--opt-level", type=int, choices=range(0, 6), metavar="0-5",
                        help="builder optimisation level (TensorRT 8.6+; default 3; higher builds longer)")
    parser.add_argument("--dla-core", type=int, metavar="N", help="run on DLA core N with GPU fallback (Jetson)")
    parser.add_argument("--fp32-layers", nargs="+", default=[], metavar="PATTERN",
                        help="keep layers whose names match these fnmatch patterns in FP32 (or @FILE, one per "
                        "line, as written by fp16-check), with precision constraints")
    parser.add_argument("--precision-constraints", choices=("obey", "prefer"), default="obey",
                        help="for --fp32-layers: obey (fail if impossible) or prefer (default: obey)")
    parser.add_argument("--timing-cache", metavar="FILE",
                        help="timing cache to load and save (default: engines/timing_<gpu>_<trt>.cache)")
    parser.add_argument("--no-timing-cache", action="store_true", help="do not load or save a timing cache")
    parser.add_argument("--normalization", choices=("tao", "deepstream"),
                        help="preprocessing preset recorded in the metadata and used for calibration "
                        "(default: the model's, else tao)")
    parser.add_argument("--version-compatible", action="store_true",
                        help="engine that later TensorRT releases of the same major version load (TensorRT 8.6+)")
    parser.add_argument("--exclude-lean-runtime", action="store_true",
                        help="with --version-compatible: leave the lean runtime out of the engine (smaller; the "
                        "runtime that loads it must bring its own)")
    group = parser.add_argument_group("INT8 calibration")
    group.add_argument("--calib-csv", metavar="CSV", help="TAO data set CSV whose pairs calibrate INT8")
    group.add_argument("--calib-images", metavar="DIR", help="images root of --calib-csv (default: its folder)")
    group.add_argument("--calib-batches", type=positive_int, default=32, metavar="N",
                       help="at most N batches of OPT pairs (default: 32)")
    group.add_argument("--calib-cache", metavar="FILE",
                       help="calibration cache (default: calibration/<model>-<sha>.cache; reused when it matches)")
    group.add_argument("--recalibrate", action="store_true", help="ignore an existing calibration cache")
    group.add_argument("--lights", default="LowAngleLight,SolderLight,UniformLight,WhiteLight", metavar="LIST",
                       help="calibration data: light names in input order, or 'none'")
    group.add_argument("--ext", default=".jpg", help="calibration data: image extension (default: .jpg)")
    group.add_argument("--concat", choices=("linear", "grid"), default="linear",
                       help="calibration data: lights stacked along H or in a grid (default: linear)")
    group.add_argument("--grid", metavar="RxC", help="calibration data: grid for --concat grid")
    out = parser.add_argument_group("without building")
    out.add_argument("--dry-run", action="store_true", help="print the plan and exit (no TensorRT needed)")
    out.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit")
    out.add_argument("--trt-version", metavar="X.Y.Z",
                     help="TensorRT version for --print-trtexec/--dry-run (default: the installed one)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    add_model_arguments(parser)


def _build_options(args: argparse.Namespace):
    from changenet_trt.engine.build import BatchProfile, BuildOptions, read_layer_patterns

    layout = None
    if args.calib_csv:
        from changenet_trt.data.dataset import LightLayout, parse_grid, parse_lights

        layout = LightLayout(lights=parse_lights(args.lights), ext=args.ext, concat=args.concat,
                             grid=parse_grid(args.grid) if args.grid else None)
    return BuildOptions(
        model=args.model, output=args.out, precision=args.precision, profile=BatchProfile.parse(args.batch),
        workspace_mib=args.workspace, timing_cache=args.timing_cache, use_timing_cache=not args.no_timing_cache,
        opt_level=args.opt_level, dla_core=args.dla_core, fp32_layers=read_layer_patterns(args.fp32_layers),
        precision_constraints=args.precision_constraints, version_compatible=args.version_compatible,
        exclude_lean_runtime=args.exclude_lean_runtime, calib_csv=args.calib_csv, calib_images=args.calib_images,
        calib_batches=args.calib_batches, calib_cache=args.calib_cache, recalibrate=args.recalibrate,
        calib_layout=layout, normalization=args.normalization, sample_input=args.sample_input,
        golden_input=args.golden_input, output_name=args.output_name, output_kind=args.output_kind,
        progress=not args.quiet,
    )


def _cmd_build(args: argparse.Namespace) -> int:
    import shlex

    from changenet_trt.engine.build import build_engine_file, make_plan

    options = _build_options(args)
    plan = make_plan(options, trt_version=args.trt_version)
    if args.dry_run or args.print_trtexec:
        if args.dry_run:
            print("\n".join(plan.describe()))
        if args.print_trtexec:
            if args.dry_run:
                print()
            if plan.rewrite_batch is not None and not os.path.isfile(plan.prepared_onnx):
                print("# the model has a static batch {}; make the dynamic ONNX first:".format(plan.rewrite_batch))
                print("changenet-trt prepare {} -o {}".format(shlex.quote(args.model), shlex.quote(plan.prepared_onnx)))
            print(" ".join(shlex.quote(part) for part in plan.trtexec_command(args.trt_version)))
        return 0
    result = build_engine_file(plan=plan)
    meta = result.metadata
    print("built {} in {:.1f} s ({}, batch {}:{}:{}, TensorRT {}, {})".format(
        result.engine_path, result.seconds, meta.precision, meta.profile["min"], meta.profile["opt"],
        meta.profile["max"], meta.trt_version, meta.gpu_name))
    print("metadata: {}".format(result.sidecar_path))
    if result.plan.rewrite_batch is not None:
        print("prepared ONNX (static batch {} made dynamic): {}".format(result.plan.rewrite_batch,
                                                                        result.plan.prepared_onnx))
    return 0

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
    group.add_argument("--streams", "--infStreams", dest="streams", type=positive_int, default=1, metavar="N",
                       help="N independent runners in N threads; the report aggregates them (default: 1)")
    group.add_argument("--exposeDMA", dest="expose_dma", action="store_true",
                       help="one query in flight instead of two (serialises the transfers with compute)")
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
    e2e = parser.add_argument_group("end to end (decode + preprocess + inference on a TAO data set)")
    e2e.add_argument("--end-to-end", action="store_true",
                     help="time whole batches of a data set through the eval pipeline instead of random inputs")
    e2e.add_argument("--csv", help="TAO data set CSV (needed by --end-to-end)")
    e2e.add_argument("--images", metavar="DIR", help="images root of the CSV's paths (default: the CSV's folder)")
    e2e.add_argument("--lights", default=",".join(_tao_lights()), metavar="LIST",
                     help="light names in input order, or 'none' (default: TAO's four lights)")
    e2e.add_argument("--ext", default=".jpg", help="image file extension (default: .jpg)")
    e2e.add_argument("--concat", choices=("linear", "grid"), default="linear", help="light layout (default: linear)")
    e2e.add_argument("--grid", metavar="RxC", help="grid rows x columns for --concat grid")
    e2e.add_argument("--workers", type=positive_int, metavar="N", help="decode threads (default: one per core)")
    e2e.add_argument("--normalization", choices=("tao", "deepstream"), help="input normalisation preset (default: tao)")
    add_model_arguments(parser)


def _bench_options(args: argparse.Namespace):
    from changenet_trt.tools.bench import BenchOptions

    return BenchOptions(
        batch=args.batch, warmup_ms=args.warmup, duration_s=args.duration, iterations=args.iterations,
        avg_runs=args.avg_runs, percentiles=tuple(args.percentile), cuda_graph=args.cuda_graph,
        no_data_transfers=args.no_data_transfers, spin_wait=args.spin_wait, streams=args.streams,
        expose_dma=args.expose_dma,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from changenet_trt.tools import bench

    if args.end_to_end:
        from changenet_trt.data.dataset import LightLayout, parse_grid, parse_lights

        if not args.csv:
            raise InputError("--end-to-end needs a data set", expected="--csv CSV [--images DIR]")
        layout = LightLayout(lights=parse_lights(args.lights), ext=args.ext, concat=args.concat,
                             grid=parse_grid(args.grid) if args.grid else None)
        result = bench.run_end_to_end(
            args.model, args.csv, args.images, _bench_options(args), layout=layout,
            normalization=args.normalization, workers=args.workers, backend=args.backend,
            contract_overrides=contract_overrides(args), backend_options=runtime_options(args),
        )
    else:
        if args.csv:
            raise InputError("--csv is only used with --end-to-end", expected="--end-to-end --csv CSV")
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


# -- accuracy & device: validate, fp16-check, doctor -------------------------------------------
def _add_pair_arguments(parser: argparse.ArgumentParser, default_pairs: int) -> None:
    """Where the real pairs come from: a TAO data set, or synthetic PCB pairs."""
    group = parser.add_argument_group("pairs (a TAO data set, or --pairs N synthetic pairs)")
    group.add_argument("--csv", metavar="CSV", help="TAO data set CSV (input_path, golden_path, label, object_name)")
    group.add_argument("--images", metavar="DIR", help="image root of the data set (default: the CSV's folder)")
    group.add_argument("--pairs", type=positive_int, metavar="N",
                       help="use N synthetic PCB pairs rendered in memory (default without --csv: {})".format(default_pairs))
    group.add_argument("--seed", type=int, default=0, help="seed of the synthetic pairs (default: 0)")
    group.add_argument("--lights", metavar="LIST",
                       help="light names in input order, comma separated, or 'none' for one image per input "
                       "(default: LowAngleLight,SolderLight,UniformLight,WhiteLight)")
    group.add_argument("--ext", default=".jpg", help="image file extension of the data set (default: .jpg)")
    group.add_argument("--concat", choices=("linear", "grid"), default="linear",
                       help="how lights form one input: linear (along H, TAO's default) or grid")
    group.add_argument("--grid", metavar="RxC", help="grid shape for --concat grid (default: 2 x lights/2)")
    group.add_argument("--strict", action="store_true", help="stop at the first unusable data set row")


def _pair_source_factory(args: argparse.Namespace, default_pairs: int):
    """``make_source(contract, normalization)`` for the pair arguments."""
    from changenet_trt.data.dataset import LightLayout, parse_grid, parse_lights
    from changenet_trt.evaluation.validate import dataset_source, synthetic_source

    if args.csv and args.pairs:
        raise InputError("give either --csv (a data set) or --pairs (synthetic pairs), not both")
    if args.images and not args.csv:
        raise InputError("--images needs --csv", expected="--csv CSV --images DIR")
    kwargs = {"ext": args.ext, "concat": args.concat}
    if args.lights:
        kwargs["lights"] = parse_lights(args.lights)
    if args.grid:
        kwargs["grid"] = parse_grid(args.grid)
    layout = LightLayout(**kwargs)

    def make(contract, normalization):
        if args.csv:
            return dataset_source(args.csv, args.images, contract.input_shape, normalization, layout=layout,
                                  strict=args.strict, on_problem=lambda item: log.warning("set aside: %s", item))
        return synthetic_source(args.pairs or default_pairs, contract.input_shape, normalization, seed=args.seed,
                                layout=layout)

    return make


def _normalization_arg(text: Optional[str]):
    if text is None:
        return None
    from changenet_trt.data.preprocess import parse_normalization

    return parse_normalization(text)


def _add_validate(sub: argparse._SubParsersAction) -> None:
    from changenet_trt.evaluation.validate import DEFAULT_ATOL, DEFAULT_MAX_FLIPS, DEFAULT_PAIRS, DEFAULT_RTOL

    parser = sub.add_parser(
        "validate",
        help="check an engine against its ONNX model on real pairs: errors, decision flips, FPR/capture",
        description="Run the engine (TensorRT) and the ONNX model (onnxruntime, float32) on the same "
        "preprocessed pairs; report per-output error statistics, the decisions that flip at the cutoff and, "
        "for labelled pairs, FPR and defect capture of both. Exits 1 when an output value differs by more "
        "than atol + rtol * |onnx| or more than --max-flips decisions flip.",
    )
    parser.add_argument("engine", help="TensorRT engine (.engine/.plan), or any model --backend runs")
    parser.add_argument("--onnx", required=True, metavar="MODEL", help="the ONNX model the engine was built from")
    _add_pair_arguments(parser, DEFAULT_PAIRS)
    group = parser.add_argument_group("tolerances")
    group.add_argument("--atol", type=non_negative_float, default=DEFAULT_ATOL,
                       help="absolute tolerance on raw output values (default: {:g})".format(DEFAULT_ATOL))
    group.add_argument("--rtol", type=non_negative_float, default=DEFAULT_RTOL,
                       help="relative tolerance, times |onnx value| (default: {:g})".format(DEFAULT_RTOL))
    group.add_argument("--max-flips", type=int, default=DEFAULT_MAX_FLIPS, metavar="K",
                       help="decision flips allowed at the cutoff (default: {})".format(DEFAULT_MAX_FLIPS))
    group.add_argument("--cutoff", type=float, metavar="C",
                       help="a pair is a defect when score > C (default: the ONNX model's recommended cutoff, else 0.5)")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"),
                         help="backend of the engine side (default: auto, by file suffix)")
    runtime.add_argument("--batch-size", type=positive_int, metavar="N", help="pairs per batch (default: 16)")
    runtime.add_argument("--normalization", metavar="PRESET",
                         help="tao, deepstream or custom 'mr,mg,mb/sr,sg,sb' (default: the model's, else tao)")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--show-flips", type=int, default=10, metavar="K", help="flipped pairs to list (default: 10)")
    add_model_arguments(parser)


def _cmd_validate(args: argparse.Namespace) -> int:
    from changenet_trt.evaluation import validate
    from changenet_trt.files import check_output_file

    if args.json_out:
        check_output_file(args.json_out, what="validate JSON report", inputs=[args.engine, args.onnx, args.csv])
    report = validate.validate(
        args.engine, args.onnx, _pair_source_factory(args, validate.DEFAULT_PAIRS), cutoff=args.cutoff,
        atol=args.atol, rtol=args.rtol, max_flips=args.max_flips, backend=args.backend, batch_size=args.batch_size,
        normalization=_normalization_arg(args.normalization), contract_overrides=contract_overrides(args),
    )
    print("\n".join(validate.format_report(report, show_flips=args.show_flips)))
    if args.json_out:
        print("wrote {}".format(validate.write_json(report, args.json_out)))
    return 0 if report.passed else 1


def _add_fp16_check(sub: argparse._SubParsersAction) -> None:
    from changenet_trt.engine.fp16_check import DEFAULT_MAX_REL_ERROR

    parser = sub.add_parser(
        "fp16-check",
        help="find tensors that overflow or lose precision in float16 (CPU); write a --fp32-layers list",
        description="Run the ONNX model with onnxruntime (float32, CPU) with every intermediate tensor exposed, "
        "on real pairs. Report tensors beyond the float16 range (|x| > 65504) and those losing most to float16 "
        "rounding or underflow, with their producing nodes and op types, and write the layers to keep in float32 "
        "as a file for `build --fp32-layers @FILE`. Exits 1 when some layer needs float32, 0 otherwise.",
    )
    parser.add_argument("model", help="ONNX file")
    _add_pair_arguments(parser, 16)
    parser.add_argument("--out", metavar="FILE",
                        help="float32 layer list to write (default: <model>.fp32-layers.txt next to the model)")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write every tensor's statistics as JSON")
    parser.add_argument("--max-rel-error", type=float, default=DEFAULT_MAX_REL_ERROR, metavar="X",
                        help="also keep a tensor's layers in float32 when its float16 relative L2 error exceeds X "
                        "(default: {:g}; plain rounding gives about 3e-4)".format(DEFAULT_MAX_REL_ERROR))
    parser.add_argument("--top", type=positive_int, default=10, metavar="K",
                        help="tensors to list by precision lost (default: 10)")
    parser.add_argument("--normalization", metavar="PRESET",
                        help="tao, deepstream or custom 'mr,mg,mb/sr,sg,sb' (default: the model's, else tao)")
    parser.add_argument("--threads", type=positive_int, metavar="N", help="onnxruntime intra-op threads")
    add_model_arguments(parser)


def _cmd_fp16_check(args: argparse.Namespace) -> int:
    from changenet_trt.contract import read_contract
    from changenet_trt.data.preprocess import get_normalization
    from changenet_trt.engine import fp16_check
    from changenet_trt.files import check_output_file

    for path, what in ((args.out or fp16_check.default_list_path(args.model), "float32 layer list"),
                       (args.json_out, "fp16-check JSON report")):
        if path:
            check_output_file(path, what=what, inputs=[args.model])
    contract = read_contract(args.model, **contract_overrides(args))
    norm = get_normalization(_normalization_arg(args.normalization) or contract.preprocess or "tao")
    source = _pair_source_factory(args, 16)(contract, norm)
    try:
        batch = contract.static_batch or 1  # every activation is held at once: keep it to one pair
        report = fp16_check.check_model(
            args.model, fp16_check.source_batches(source, batch, contract.input_shape), contract=contract,
            max_rel_error=args.max_rel_error, threads=args.threads,
        )
    finally:
        source.close()
    print("pairs: {}".format(source.description))
    print("\n".join(fp16_check.format_report(report, top=args.top)))
    out = args.out or fp16_check.default_list_path(args.model)
    fp16_check.write_layer_list(report, out)
    print("wrote {} ({} layer{}){}".format(
        out, len(report.layers), "" if len(report.layers) == 1 else "s",
        ": build with --fp32-layers @{}".format(out) if report.layers else ""))
    if args.json_out:
        print("wrote {}".format(fp16_check.write_json(report, args.json_out)))
    return 1 if report.layers else 0


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "doctor",
        help="report the environment and prove the stack on this machine (CPU checks; GPU checks on a device)",
        description="Print Python, numpy, OpenCV, onnxruntime, TensorRT, pycuda, CUDA driver, GPU and compute "
        "capability, DLA cores, and on a Jetson the board, JetPack and power mode. Then run checks, each PASS, "
        "FAIL or SKIP: onnxruntime vs numpy on the reference model, preprocessing, pipeline decisions; on a GPU "
        "also build the reference engine, compare it with onnxruntime and run a short benchmark. Exits 0 when "
        "every check that applies passes.",
    )
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU checks even when a GPU is present")
    parser.add_argument("--workdir", metavar="DIR", help="keep the files the checks write here (default: a temporary folder)")
    parser.add_argument("--bench-seconds", type=non_negative_float, default=1.0, metavar="S",
                        help="duration of the short benchmark (default: 1)")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the report as JSON")


def _cmd_doctor(args: argparse.Namespace) -> int:
    from changenet_trt.tools import doctor

    report = doctor.run_doctor(workdir=args.workdir, device=not args.cpu_only, bench_seconds=args.bench_seconds)
    print("\n".join(doctor.format_report(report)))
    if args.json_out:
        print("wrote {}".format(doctor.write_json(report, args.json_out)))
    return 0 if report.ok else 1

# -- the command table -------------------------------------------------------------------------
COMMANDS: List[tuple] = [
    ("inspect", _add_inspect, _cmd_inspect),
    ("infer", _add_infer, _cmd_infer),
    ("reference-model", _add_reference_model, _cmd_reference_model),
    ("demo", _add_demo, _cmd_demo),
    ("synth", _add_synth, _cmd_synth),
    ("eval", _add_eval, _cmd_eval),
    ("prepare", _add_prepare, _cmd_prepare),
    ("build", _add_build, _cmd_build),
    ("bench", _add_bench, _cmd_bench),
    ("validate", _add_validate, _cmd_validate),
    ("fp16-check", _add_fp16_check, _cmd_fp16_check),
    ("doctor", _add_doctor, _cmd_doctor),
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
