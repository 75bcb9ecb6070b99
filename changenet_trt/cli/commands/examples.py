"""Commands that make something to try the pipeline on: a reference model (``reference-model``),
a synthetic data set (``synth``) and the whole CPU pipeline on both (``demo``)."""

import argparse
import os
import time

from changenet_trt.cli.args import DataSetArgs, ProgressArgs, positive_int, rate
from changenet_trt.cli.commands.base import Command, GroupValues
from changenet_trt.data.synth import synthesize
from changenet_trt.errors import InputError
from changenet_trt.files import check_output_file
from changenet_trt.models.realistic import build_realistic_model, model_gflops, save_model
from changenet_trt.models.reference import write_reference_model
from changenet_trt.models.tao_like import write_tao_like_model
from changenet_trt.tools.demo import run_demo


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

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        batch_text = "static batch {}".format(args.batch) if args.batch else "dynamic batch"
        if args.realistic and args.tao_like:
            raise InputError("--realistic and --tao-like are two different models: choose one")
        if args.tao_like:
            if args.fp16_overflow:
                raise InputError("--fp16-overflow applies to the small reference model, not --tao-like")

            path = write_tao_like_model(args.out, kind=args.kind, batch=args.batch, opset=args.opset, seed=args.seed)
            print("wrote {} (TAO-export-like graph, {} output, {}, opset {}{})".format(
                path, args.kind, batch_text, args.opset, ", constants unfolded as TAO 5.x" if args.opset == 12 else ""))
            return 0
        if args.realistic:
            if args.fp16_overflow:
                raise InputError("--fp16-overflow applies to the small reference model, not --realistic")
            check_output_file(args.out, what="model file")
            model = build_realistic_model(kind=args.kind, batch=args.batch, opset=args.opset, seed=args.seed)
            path = save_model(model, args.out)
            print("wrote {} (FAN-hybrid-small-like, random weights, {} output, {}, opset {}, {:.2f} GFLOPs "
                  "per pair)".format(path, args.kind, batch_text, args.opset, model_gflops(model)))
            return 0

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

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
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
        super().__init__(data_set=DataSetArgs(title="data layout (TAO's defaults)", csv=None, tiles=False,
                                              workers="render threads"),
                         progress=ProgressArgs())

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("out", help="output folder (gets dataset.csv, images/, synth.json)")
        parser.add_argument("--pairs", type=positive_int, default=400, help="number of pairs (default: 400)")
        parser.add_argument("--defect-rate", type=rate, default=0.3, metavar="R",
                            help="share of defect pairs (default: 0.3)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        parser.add_argument("--size", type=positive_int, default=128,
                            help="light image size in pixels (default: 128)")

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        data, show = values.data_set, values.progress
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

