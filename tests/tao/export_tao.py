"""Export TAO 7.3.0's Visual ChangeNet-Classification (FAN-hybrid-small, PCB spec) with TAO's own code.

Run by the tier's own venv (`make tao-models` makes it: torch on the CPU, `nvidia-tao-pytorch`
7.3.0 from the package registry with --no-deps, the few packages its FAN path imports, and the
import-only stand-ins in `standins/`). The model is TAO's `build_model` on TAO's shipped classify
spec (`experiment_spec_classify.yaml`: fan_small_12_p4_hybrid, 4 lights of 128x128 stacked along H
= 512x128), with seeded random weights; it is exported as `scripts/export.py` does: TAO's
`ONNXExporter` (TorchScript exporter, dynamo=False), opset 17, constant folding on, inputs
`input_1` (sample) / `input_2` (golden), output `output`, dummy `torch.ones`, batch 16 (the spec's
`export.batch_size` = `${dataset.classify.batch_size}`) or -1 (a dynamic `batch` axis), then
`onnx.checker.check_model`. One more export reproduces TAO 5.x (opset 12, no constant folding).

Each export runs in its own child process (memory back after each; its peak RSS recorded) and
writes `<name>.onnx` plus an entry in `manifest.json` (parameters, bytes, nodes, sha256, export
seconds, peak RSS, ONNX Runtime vs torch max |diff| on a few pairs). An entry whose file exists
with the recorded sha256, script version and seed is not exported again.

    .venv-tao/bin/python tests/tao/export_tao.py --out .tao-models
"""

import argparse
import hashlib
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
# Bump when an export changes (arguments, spec, check): every file is then exported again.
SCRIPT_VERSION = 1
SEED = 17
TAO_VERSION = "7.3.0"
MANIFEST = "manifest.json"
INPUT_NAMES = ["input_1", "input_2"]  # sample, golden: TAO's export.py for task 'classify'
OUTPUT_NAMES = ["output"]

# name -> (difference module, export batch (-1 = dynamic), opset, constant folding, torch/ORT check pairs)
VARIANTS = {
    "learnable_b16": ("learnable", 16, 17, True, 16),
    "learnable_dynamic": ("learnable", -1, 17, True, 2),
    "euclidean_b16": ("euclidean", 16, 17, True, 16),
    "euclidean_dynamic": ("euclidean", -1, 17, True, 2),
    # TAO 5.x: opset 12, no constant folding (ONNXExporter.export_model's own defaults).
    "learnable_opset12_b16": ("learnable", 16, 12, False, 16),
}


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def tao_config(difference_module):
    """TAO's ExperimentConfig (its dataclass schema) merged with its shipped classify spec."""
    import nvidia_tao_pytorch
    from nvidia_tao_pytorch.config.visual_changenet.default_config import ExperimentConfig
    from omegaconf import OmegaConf

    spec = os.path.join(os.path.dirname(nvidia_tao_pytorch.__file__), "cv", "visual_changenet",
                        "experiment_specs", "experiment_spec_classify.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.load(spec))
    cfg.model.classify.difference_module = difference_module
    cfg.export.on_cpu = True
    return cfg


def export_one(name, out_dir):
    """Build, export and check one variant in this process; returns its manifest entry."""
    sys.path.insert(0, str(HERE))
    import standins

    standins.install()
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from nvidia_tao_pytorch.cv.visual_changenet.classification.models.changenet import build_model
    from nvidia_tao_pytorch.cv.visual_changenet.utils.onnx_export import ONNXExporter

    difference_module, batch_size, opset, folding, check_pairs = VARIANTS[name]
    cfg = tao_config(difference_module)
    assert cfg.model.backbone.type == "fan_small_12_p4_hybrid" and cfg.dataset.classify.batch_size == 16
    # TAO's export.py: input_shape = [C, export.input_height, export.input_width] = [3, 512, 128].
    input_shape = [cfg.export.input_channel, cfg.export.input_height, cfg.export.input_width]
    torch.manual_seed(SEED)
    # What ChangeNetPlModel.load_from_checkpoint(..., export=True) builds, before loading weights.
    model = build_model(experiment_config=cfg, export=True)
    model.eval()
    # TAO's export.py: batch -1 exports with a batch-1 dummy and dynamic axes.
    dummy_batch = 1 if batch_size == -1 else batch_size
    dummy = (torch.ones(dummy_batch, *input_shape), torch.ones(dummy_batch, *input_shape))
    path = os.path.join(out_dir, name + ".onnx")
    partial = path + ".partial"
    started = time.perf_counter()
    torch.backends.cudnn.allow_tf32 = False  # as export.py's main()
    torch.backends.cuda.matmul.allow_tf32 = False
    exporter = ONNXExporter()
    if opset >= 16:
        exporter.export_model(model, batch_size, partial, dummy, input_names=INPUT_NAMES, opset_version=opset,
                              output_names=OUTPUT_NAMES, do_constant_folding=folding, verbose=False, task="classify")
    else:
        # export_model raises the opset to 16 for a model on the CPU (its deformable-attention
        # plugin needs it); TAO 5.x exported on the GPU, so its call is made here as export_model
        # makes it, with the opset kept.
        dynamic_axes = None if batch_size != -1 else {n: {0: "batch"} for n in INPUT_NAMES + OUTPUT_NAMES}
        with torch.no_grad():
            torch.onnx.export(model, dummy, partial, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                              export_params=True, training=torch.onnx.TrainingMode.EVAL, opset_version=opset,
                              do_constant_folding=folding, verbose=False, dynamic_axes=dynamic_axes, dynamo=False)
    exporter.check_onnx(partial)
    export_s = time.perf_counter() - started

    graph = onnx.load(partial, load_external_data=False).graph
    rng = np.random.default_rng(SEED)
    # Normalised-image-like inputs (ImageNet mean/std applied to uniform pixels).
    sample = ((rng.random((check_pairs, *input_shape)) - 0.45) / 0.226).astype(np.float32)
    golden = ((rng.random((check_pairs, *input_shape)) - 0.45) / 0.226).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(sample), torch.from_numpy(golden)).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(partial, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_1": sample, "input_2": golden})[0]
    if got.shape != expected.shape:
        raise SystemExit("{}: ONNX Runtime output {} but torch {}".format(name, got.shape, expected.shape))
    os.replace(partial, path)
    return {
        "file": name + ".onnx",
        "architecture": difference_module,
        "batch": batch_size,
        "opset": opset,
        "constant_folding": folding,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "bytes": os.path.getsize(path),
        "nodes": len(graph.node),
        "sha256": file_sha256(path),
        "export_s": round(export_s, 1),
        "check_pairs": check_pairs,
        "ort_max_abs_diff": float(np.max(np.abs(got - expected))),
        "output_shape": list(got.shape),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "script_version": SCRIPT_VERSION,
        "seed": SEED,
        "torch": torch.__version__,
        "tao": TAO_VERSION,
    }


def read_manifest(out_dir):
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_manifest(out_dir, manifest):
    path = os.path.join(out_dir, MANIFEST)
    with open(path + ".partial", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(path + ".partial", path)


def is_current(out_dir, entry):
    """True when `entry` was written by this script version and seed and its file is intact."""
    if not entry or entry.get("script_version") != SCRIPT_VERSION or entry.get("seed") != SEED:
        return False
    path = os.path.join(out_dir, entry["file"])
    return (os.path.exists(path) and os.path.getsize(path) == entry["bytes"]
            and file_sha256(path) == entry["sha256"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".tao-models", help="folder of the exports and manifest.json")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="export only these")
    parser.add_argument("--one", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.one:
        print(json.dumps(export_one(args.one, args.out)))
        return 0
    manifest = read_manifest(args.out)
    for name in args.only or list(VARIANTS):
        if is_current(args.out, manifest.get(name)):
            print("{}: up to date ({})".format(name, manifest[name]["file"]), flush=True)
            continue
        print("{}: exporting with TAO {} ...".format(name, TAO_VERSION), flush=True)
        started = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--out", args.out, "--one", name],
                               stdout=subprocess.PIPE, text=True)
        if child.returncode != 0:
            print("error: exporting {} failed (exit {})".format(name, child.returncode), file=sys.stderr)
            return 1
        entry = json.loads(child.stdout.strip().splitlines()[-1])
        entry["total_s"] = round(time.perf_counter() - started, 1)
        manifest[name] = entry
        write_manifest(args.out, manifest)
        print("{name}: {parameters:,} parameters, {mb:.0f} MB, {nodes} nodes, exported in {export_s} s, "
              "ORT vs torch max |diff| {ort_max_abs_diff:.1e} on {check_pairs} pairs, peak RSS {peak_rss_mb} MB"
              .format(name=name, mb=entry["bytes"] / 1e6, **entry), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
