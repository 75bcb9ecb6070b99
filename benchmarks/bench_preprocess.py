"""Preprocessing and eval throughput, measured against peers in the same run on the same files.

Two comparisons:

1. Preprocessing pairs/s: ours (``PairLoader.fill``: OpenCV decode on a thread pool, each light
   normalised plane by plane straight into the runner's float32 input buffer) vs a baseline
   written the way TAO Deploy's ChangeNet-Classification loader works (per light: PIL open,
   ``np.asarray(float32)``, float32 ``cv2.resize``, transpose, ``x/255 - mean) / std``; the
   lights concatenated into a float64 ``np.zeros``; the batch stacked with ``np.asarray``; then
   copied into the same input buffer). Without PIL the baseline opens files with
   ``cv2.imread`` + ``cvtColor`` instead, and says so.
2. ``eval``'s end-to-end pairs/s (decode of batch k+1 overlapping inference of batch k) vs
   min(preprocess-only, inference-only), where inference-only is the same pipeline with a
   fill that does nothing.

Each figure is the median of ``--repeats`` runs, interleaved so drift hits every variant.
``--one-core-each`` adds a second configuration (1 decode thread, 1 ONNX Runtime thread): on a
CPU-only machine inference competes with decoding for the same cores, so only with a core per
stage can the overlap reach min(preprocess, inference); with shared cores the figure to compare
with is the serial bound 1/(1/preprocess + 1/inference). Usage::

    .venv/bin/python benchmarks/bench_preprocess.py --pairs 1024 --repeats 5 --one-core-each --markdown
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import cv2  # noqa: E402

from changenet_trt import load  # noqa: E402
from changenet_trt.data.dataset import LightLayout, PairLoader, load_dataset  # noqa: E402
from changenet_trt.data.preprocess import PRESETS, default_workers  # noqa: E402
from changenet_trt.data.synth import synthesize  # noqa: E402
from changenet_trt.evaluation.evaluate import evaluate  # noqa: E402
from changenet_trt.models.reference import write_reference_model  # noqa: E402

try:  # TAO Deploy opens images with PIL; use it when installed
    from PIL import Image as PILImage
except ImportError:  # pragma: no cover - depends on the environment
    PILImage = None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- the baseline: TAO Deploy's loader, step by step -------------------------------------------
def _open_rgb(path):
    if PILImage is not None:
        return PILImage.open(path).convert("RGB")
    image = cv2.imread(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _preprocess_input_torch(x, mean, std):
    """TAO Deploy's preprocess_input(mode="torch", channels_first) on a float32 CHW array."""
    x /= 255.0
    for c in range(3):
        x[c, :, :] -= mean[c]
    for c in range(3):
        x[c, :, :] /= std[c]
    return x


def _baseline_one(files, size, mean, std):
    lights = []
    for path in files:
        image = _open_rgb(path)
        resized = cv2.resize(np.asarray(image, np.float32), size, interpolation=cv2.INTER_LINEAR)
        resized = np.transpose(resized, (2, 0, 1))
        lights.append(_preprocess_input_torch(resized, mean, std))
    height, width = size
    out = np.zeros((3, len(lights) * height, width))  # float64, as TAO's np.zeros
    for i, light in enumerate(lights):
        out[:, i * height:(i + 1) * height, :] = light
    return out


def baseline_fill(pairs, size=(128, 128), norm=PRESETS["tao"]):
    mean, std = norm.mean, norm.std

    def fill(golden_dst, sample_dst, lo, hi):
        samples, goldens = [], []
        for pair in pairs[lo:hi]:
            samples.append(_baseline_one(pair.sample_files, size, mean, std))
            goldens.append(_baseline_one(pair.golden_files, size, mean, std))
        np.copyto(sample_dst, np.asarray(samples, dtype=samples[0].dtype), casting="same_kind")
        np.copyto(golden_dst, np.asarray(goldens, dtype=goldens[0].dtype), casting="same_kind")

    return fill


# -- timing ------------------------------------------------------------------------------------
def core_scaling(seconds=0.3):
    """How much faster two threads of pure OpenCV work run than one (2.0: two free cores).

    Other load on the machine shows here: the preprocessing and overlap figures cannot beat it.
    """
    import threading

    image = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        def work(count):
            for _ in range(count):
                cv2.GaussianBlur(image, (0, 0), 3)

        start = time.perf_counter()
        work(1)
        count = max(2, int(seconds / max(time.perf_counter() - start, 1e-4)))
        start = time.perf_counter()
        work(count)
        one = time.perf_counter() - start
        threads = [threading.Thread(target=work, args=(count,)) for _ in range(2)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        two = time.perf_counter() - start
    finally:
        cv2.setNumThreads(previous)
    return 2.0 * one / two


def time_fill(fill, count, batch, golden, sample):
    """Pairs/s of calling ``fill`` batch by batch into the given buffers (no inference)."""
    start = time.perf_counter()
    for lo in range(0, count, batch):
        hi = min(lo + batch, count)
        fill(golden[:hi - lo], sample[:hi - lo], lo, hi)
    return count / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=512, help="synthetic pairs (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure; the median is reported (default 5)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per batch (default 16)")
    parser.add_argument("--model", help="ONNX model for the eval comparison (default: the reference learnable model)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ONNX Runtime's)")
    parser.add_argument("--workers", type=int, help="decode threads (default: one per core)")
    parser.add_argument("--data", help="reuse (or create) the synthetic data set in this folder")
    parser.add_argument("--ext", default=".jpg", help="image extension of the synthetic set (default .jpg)")
    parser.add_argument("--one-core-each", action="store_true",
                        help="also measure with 1 decode thread and 1 ONNX Runtime thread (each stage on its own core)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown section for RESULTS.md")
    args = parser.parse_args(argv)

    work = args.data or tempfile.mkdtemp(prefix="bench_preprocess_")
    csv_path = os.path.join(work, "dataset.csv")
    if not os.path.exists(csv_path):
        synthesize(work, pairs=args.pairs, defect_rate=0.3, seed=0, ext=args.ext)
    layout = LightLayout(ext=args.ext)
    data = load_dataset(csv_path, layout=layout)
    pairs = data.pairs[: args.pairs]
    model = args.model or write_reference_model(os.path.join(work, "reference_learnable.onnx"), kind="learnable")

    scaling_before = core_scaling()
    configs = [("shared cores", args.threads, args.workers or default_workers())]
    if args.one_core_each:
        configs.append(("one core each", 1, 1))
    results = [measure(name, threads, workers, args, pairs, layout, csv_path, model) for name, threads, workers in configs]
    scaling = (scaling_before, core_scaling())

    opener = "PIL.Image.open" if PILImage is not None else "cv2.imread + cvtColor (PIL is not installed)"
    cores = os.cpu_count()
    machine = "{}, {} cores (no GPU); Python {}, OpenCV {}, numpy {}, ONNX Runtime {}".format(
        cpu_name(), cores, platform.python_version(), cv2.__version__, np.__version__, _ort_version())
    print("machine: " + machine)
    print("data: {} synthetic pairs, 4 lights of 128x128 {} (8 files per pair); batch {}; model {}".format(
        len(pairs), args.ext, args.batch_size, os.path.basename(model)))
    print("baseline opens images with {}".format(opener))
    print("2-thread scaling of pure OpenCV work, before/after: {:.2f}x / {:.2f}x (2.00x = two idle cores)".format(*scaling))
    for r in results:
        print()
        print("[{}: {} decode threads, ONNX Runtime threads {}] median of {} runs".format(
            r["name"], r["workers"], r["threads"] or "default", args.repeats))
        for key, label in ROWS:
            print("  {:<40} {:>8.1f} pairs/s".format(label, r[key]))
        print("  preprocessing speed-up vs baseline: {:.2f}x (goal >= 3x)".format(r["speedup"]))
        print("  end to end / min(preprocess, inference): {:.1%} (goal >= 90%)".format(r["overlap"]))
        print("  end to end / serial bound 1/(1/preprocess + 1/inference): {:.1%}".format(r["serial"]))
    if args.markdown:
        command = "python benchmarks/bench_preprocess.py " + " ".join(argv if argv is not None else sys.argv[1:])
        print()
        print("Command: `{}`  ".format(command.strip()))
        print("Machine: {}. Two threads of pure OpenCV work ran {:.2f}x / {:.2f}x (before / after) the rate "
              "of one (2.00x = two idle cores).  ".format(machine, *scaling))
        print("Data: {} synthetic pairs (`changenet-trt synth`), 4 lights of 128x128 `{}` per image (8 files per "
              "pair); batch {}; model `{}`; the baseline opens images with {}. Median of {} interleaved runs."
              .format(len(pairs), args.ext, args.batch_size, os.path.basename(model), opener, args.repeats))
        print()
        print("| pairs/s | " + " | ".join("{} ({} decode threads, ORT threads {})".format(
            r["name"], r["workers"], r["threads"] or "default") for r in results) + " |")
        print("|---|" + "---:|" * len(results))
        for key, label in ROWS:
            print("| {} | ".format(label) + " | ".join("{:.1f}".format(r[key]) for r in results) + " |")
        print("| **preprocessing speed-up vs baseline** (goal >= 3x) | " + " | ".join(
            "**{:.2f}x**".format(r["speedup"]) for r in results) + " |")
        print("| **end to end / min(preprocess, inference)** (goal >= 90%) | " + " | ".join(
            "**{:.1%}**".format(r["overlap"]) for r in results) + " |")
        print("| end to end / serial bound 1/(1/preprocess + 1/inference) | " + " | ".join(
            "{:.1%}".format(r["serial"]) for r in results) + " |")
    return 0


ROWS = (
    ("baseline", "preprocess, TAO Deploy-style baseline"),
    ("ours", "preprocess, ours"),
    ("inference", "inference only (no-op fill)"),
    ("end_to_end", "eval end to end"),
)


def _ort_version():
    import onnxruntime

    return onnxruntime.__version__


def measure(name, threads, workers, args, pairs, layout, csv_path, model):
    """Median pairs/s of the four variants, interleaved over ``args.repeats`` rounds."""
    count = len(pairs)
    shape = (args.batch_size, 3, 512, 128)
    golden = np.zeros(shape, dtype=np.float32)
    sample = np.zeros(shape, dtype=np.float32)
    ours = PairLoader(pairs, layout, (3, 512, 128), "tao", workers=workers)
    base = baseline_fill(pairs)
    options = {"threads": threads} if threads else {}

    # warm the page cache and every code path once, untimed
    time_fill(base, min(count, 64), args.batch_size, golden, sample)
    time_fill(ours.fill, count, args.batch_size, golden, sample)

    def noop(golden_dst, sample_dst, lo, hi):
        pass

    figures = {"baseline": [], "ours": [], "inference": [], "end_to_end": []}
    with load(model, batch_size=args.batch_size, **options) as clf:
        clf.run_pipeline(count, noop)  # warm-up
        for _ in range(args.repeats):
            figures["baseline"].append(time_fill(base, count, args.batch_size, golden, sample))
            figures["ours"].append(time_fill(ours.fill, count, args.batch_size, golden, sample))
            start = time.perf_counter()
            clf.run_pipeline(count, noop)
            figures["inference"].append(count / (time.perf_counter() - start))
            result = evaluate(model, csv_path, out_dir=None, layout=layout, workers=workers, progress=False,
                              classifier=clf)
            figures["end_to_end"].append(result.summary["pairs_per_s"])
    ours.close()
    med = {k: statistics.median(v) for k, v in figures.items()}
    med.update(name=name, threads=threads, workers=workers, speedup=med["ours"] / med["baseline"],
               overlap=med["end_to_end"] / min(med["ours"], med["inference"]),
               # when both stages share the same CPU cores they cannot overlap: one after the other
               serial=med["end_to_end"] / (1.0 / (1.0 / med["ours"] + 1.0 / med["inference"])))
    return med


if __name__ == "__main__":
    sys.exit(main())
