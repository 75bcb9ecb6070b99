"""The data-side commands: read a model's contract (``inspect``), score pairs or a data set
without labels (``infer``) and a labelled data set (``eval``)."""

import argparse
import csv
import json
import sys
from typing import Any

from changenet_trt.cli.args import (
    ContractNamesArgs,
    DataSetArgs,
    DataSetOptions,
    NormalizationArgs,
    ProgressArgs,
    RuntimeArgs,
    RuntimeOptions,
    rate,
)
from changenet_trt.cli.commands.base import Command, GroupValues, load_classifier
from changenet_trt.cli.spec import check_model_shape
from changenet_trt.contract import ContractNames, read_contract
from changenet_trt.errors import InputError
from changenet_trt.evaluation import evaluate as evaluate_module
from changenet_trt.evaluation import inference
from changenet_trt.files import atomic_open, check_output_file


# -- inspect -----------------------------------------------------------------------------------
class Inspect(Command):
    name = "inspect"
    help = "show the ChangeNet contract of an ONNX model (inputs, output kind, batch)"
    description = ("Read an ONNX model and report how changenet-trt sees it: which input is the "
                   "sample and which the golden image, their shape, the batch (static or dynamic), the output "
                   "and how its values become a score.")

    def __init__(self) -> None:
        super().__init__(names=ContractNamesArgs())

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file")
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        contract = read_contract(args.model, values.names)
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
        super().__init__(
            data_set=DataSetArgs(title="a TAO-layout data set without labels (instead of --golden/--sample)",
                                 csv_help="TAO data set CSV to score (input_path, golden_path, object_name; "
                                 "label not needed; other columns are carried into --out)", strict=True),
            runtime=RuntimeArgs(), normalization=NormalizationArgs(), names=ContractNamesArgs(),
            progress=ProgressArgs(help="--csv: no progress bar and no per-row lines (the summary still lists "
                                  "skipped rows)"))

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file, TensorRT engine (.engine/.plan) or Triton URL "
                            "(grpc://HOST:8001/NAME, http://HOST:8000/NAME)")
        parser.add_argument("--golden", nargs="+", metavar="PATH", help="golden (reference) images")
        parser.add_argument("--sample", nargs="+", metavar="PATH", help="sample (test) images, same count")
        parser.add_argument("--out", metavar="CSV", help="also write golden,sample,score,defect rows to this CSV; "
                            "with --csv (required): the input's columns plus score and decision")

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        runtime, norm, names, data = values.runtime, values.normalization, values.names, values.data_set
        from_spec = getattr(args, "_spec_defaults", {})
        if data.csv and (args.golden or args.sample) and from_spec.get("csv") == data.csv:
            data.csv = data.images = None  # images on the command line win over the spec's infer_dataset
        if data.csv:
            return self.run_csv(args, data, runtime, norm, names, show=values.progress)
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

    def run_csv(self, args: argparse.Namespace, data: DataSetOptions, runtime: RuntimeOptions, norm: Any,
                names: ContractNames, show: bool) -> int:
        """``--csv``: score every row of the data set and write the input's columns plus score and decision."""
        if args.golden or args.sample:
            raise InputError("give either --csv (a TAO-layout data set) or --golden/--sample images, not both")
        if not args.out:
            raise InputError("infer --csv writes its scores to a CSV", expected="--out OUT.csv", found="no --out")

        check_output_file(args.out, what="scores CSV (--out)", inputs=[p for p in (args.model, data.csv, data.images)
                                                                       if p])
        with load_classifier(args.model, runtime, norm, names) as clf:
            check_model_shape(args, data.layout, clf.contract)
            result = inference.infer_csv(args.model, data.csv, images_dir=data.images, out_csv=args.out, layout=data.layout,
                               strict=data.strict, workers=data.workers, progress=show,
                               classifier=clf)
        print(inference.format_summary(result))
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
        super().__init__(
            data_set=DataSetArgs(csv_required=True, strict=True), runtime=RuntimeArgs(),
            normalization=NormalizationArgs(),
            progress=ProgressArgs(help="no progress bar and no per-row lines (the summary still counts skipped rows)"),
            names=ContractNamesArgs())

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX file, TensorRT engine (.engine/.plan) or Triton URL "
                            "(grpc://HOST:8001/NAME, http://HOST:8000/NAME)")
        parser.add_argument("--out", default="eval-output", metavar="DIR", help="output folder (default: eval-output)")
        parser.add_argument("--target-fpr", type=rate, metavar="F",
                            help="also report the cutoff with the most capture at FPR <= F")
        parser.add_argument("--target-capture", type=rate, metavar="T",
                            help="also report the highest cutoff with defect capture >= T")
        parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")

    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        data, runtime, norm, names = values.data_set, values.runtime, values.normalization, values.names
        with load_classifier(args.model, runtime, norm, names) as clf:
            check_model_shape(args, data.layout, clf.contract)
            result = evaluate_module.evaluate(args.model, data.csv, images_dir=data.images, out_dir=args.out, layout=data.layout,
                              strict=data.strict, target_fpr=args.target_fpr, target_capture=args.target_capture,
                              plots=not args.no_plots, workers=data.workers, progress=values.progress, classifier=clf)
        print(evaluate_module.format_summary(result))
        return 0

