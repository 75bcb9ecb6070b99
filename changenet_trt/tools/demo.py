"""``changenet-trt demo``: the whole pipeline on CPU, from nothing to FPR, capture and plots.

1. write the reference model (or use the model the user names),
2. synthesise a PCB data set in TAO's layout (:mod:`changenet_trt.data.synth`),
3. evaluate the model on it (:mod:`changenet_trt.evaluation.evaluate`): scores.csv, summary.json, plots.
"""

import os
import sys
import time
from typing import Any, List, Optional, Tuple

import numpy as np

from changenet_trt.data.synth import COMPONENTS, VALID_DEFECTS, Plan, render_pair, synthesize
from changenet_trt.evaluation.evaluate import evaluate, format_summary
from changenet_trt.files import check_output_dir
from changenet_trt.models.reference import write_reference_model

#: defects make_pairs draws from: the unmistakable ones, so its pairs are a sanity check
CLEAR_DEFECTS = ("MISSING", "SHIFTED", "TOMBSTONE")


def make_pairs(count: int, seed: int = 0) -> Tuple[List[np.ndarray], List[np.ndarray], np.ndarray]:
    """``count`` golden/sample pairs as uint8 RGB ``[512, 128, 3]`` arrays (4 lights stacked along H).

    Every second sample (odd index) has a clear defect (missing, shifted or tombstoned part);
    PASS samples differ from their golden by capture nuisance only. Returns ``(golden, sample,
    is_defect)`` with ``is_defect`` bool ``[count]``. Deterministic by ``seed``.
    """
    golden, sample, truth = [], [], []
    chips = [c for c in COMPONENTS if all(d in VALID_DEFECTS[c] for d in CLEAR_DEFECTS)]
    for i in range(count):
        component = COMPONENTS[i % len(COMPONENTS)]
        label = "PASS"
        if i % 2 == 1:
            # two-terminal parts: their clear defects change the image a lot but not wildly
            # (embedding RMS distance about 0.1-0.2 with the reference model)
            component = chips[(i // 2) % len(chips)]
            label = CLEAR_DEFECTS[(i // 2 + i // 6) % len(CLEAR_DEFECTS)]
        g, s = render_pair(Plan(i, 0, "P{:03d}".format(i), component, label), seed)
        golden.append(np.ascontiguousarray(np.vstack(g)))
        sample.append(np.ascontiguousarray(np.vstack(s)))
        truth.append(label != "PASS")
    return golden, sample, np.array(truth, dtype=bool)


def run_demo(
    out_dir: str = "demo-output",
    model: Optional[str] = None,
    pairs: int = 400,
    defect_rate: float = 0.3,
    seed: int = 0,
    kind: str = "learnable",
    progress: bool = True,
    **load_options: Any
) -> int:
    """Run the pipeline; print FPR, defect capture, pairs/s and where the plots are. Returns 0."""
    check_output_dir(out_dir, what="demo output folder", inputs=[model] if model else [])
    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    if model is None:
        model = write_reference_model(os.path.join(out_dir, "reference_{}.onnx".format(kind)), kind=kind)
        print("[1/3] model: wrote the reference {} model {}".format(kind, model))
    else:
        print("[1/3] model: {}".format(model))
    sys.stdout.flush()

    data_dir = os.path.join(out_dir, "data")
    t0 = time.perf_counter()
    data = synthesize(data_dir, pairs=pairs, defect_rate=defect_rate, seed=seed, progress=progress)
    counts = data.counts
    defects = sum(v for k, v in counts.items() if k != "PASS")
    print("[2/3] data: {} synthetic pairs ({} PASS, {} defect: {}) in {:.1f} s -> {}".format(
        pairs, counts.get("PASS", 0), defects,
        ", ".join("{} {}".format(k, v) for k, v in counts.items() if k != "PASS") or "none",
        time.perf_counter() - t0, data.csv_path))
    sys.stdout.flush()

    eval_dir = os.path.join(out_dir, "eval")
    result = evaluate(model, data.csv_path, out_dir=eval_dir, progress=progress, target_fpr=0.01,
                      target_capture=0.99, **load_options)
    print("[3/3] eval: {}".format(eval_dir))
    print()
    print(format_summary(result))
    s = result.summary
    print()
    print("demo result: FPR {} and defect capture {} at cutoff {:g}; {} pairs/s end to end; {:.1f} s in all".format(
        "n/a" if s["fpr"] is None else "{:.2f}%".format(100 * s["fpr"]),
        "n/a" if s["defect_capture"] is None else "{:.2f}%".format(100 * s["defect_capture"]),
        s["cutoff"], s["pairs_per_s"], time.perf_counter() - started))
    for key, label in (("roc_png", "ROC curve"), ("roc_low_fpr_png", "ROC at low FPR"), ("scores_png", "score histograms"),
                       ("scores_by_type_png", "scores by defect type"), ("sweep_png", "cutoff sweep")):
        if key in result.files:
            print("  {:<22} {}".format(label, result.files[key]))
    print("  {:<22} {}".format("scores / summary", "{}, {}".format(result.files["scores_csv"], result.files["summary_json"])))
    return 0
