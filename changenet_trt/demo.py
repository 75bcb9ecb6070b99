"""``changenet-trt demo``: the whole CPU pipeline on a reference model and a few made-up pairs."""

import os
import time
from typing import List, Optional, Tuple

import numpy as np

from .reference import write_reference_model


def _board(rng: np.random.Generator) -> np.ndarray:
    """A 512x128 RGB strip: four component pads on green solder mask (one per light band)."""
    import cv2

    image = np.empty((512, 128, 3), dtype=np.uint8)
    image[:] = (30, 90, 40)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    for top in range(40, 512, 128):
        cv2.rectangle(image, (34, top), (94, top + 48), (200, 200, 190), -1)
        cv2.rectangle(image, (48, top + 10), (80, top + 38), (20, 20, 20), -1)
    return image


def make_pairs(count: int, seed: int = 0) -> Tuple[List[np.ndarray], List[np.ndarray], np.ndarray]:
    """``count`` golden/sample uint8 RGB pairs; every second sample has a missing component.

    Returns ``(golden, sample, is_defect)``; PASS samples differ from their golden by lighting,
    noise and a sub-pixel shift only.
    """
    import cv2

    rng = np.random.default_rng(seed)
    golden, sample, defect = [], [], []
    for i in range(count):
        g = _board(rng)
        s = g.astype(np.float32) * rng.uniform(0.92, 1.08) + rng.normal(0, 4, g.shape)
        shift = np.float32([[1, 0, rng.uniform(-1, 1)], [0, 1, rng.uniform(-1, 1)]])
        s = cv2.warpAffine(s, shift, (128, 512), borderMode=cv2.BORDER_REFLECT)
        is_defect = i % 2 == 1
        if is_defect:
            top = 40 + 128 * int(rng.integers(0, 4))
            cv2.rectangle(s, (34, top), (94, top + 48), (30, 90, 40), -1)
        golden.append(g)
        sample.append(np.clip(s, 0, 255).astype(np.uint8))
        defect.append(is_defect)
    return golden, sample, np.array(defect)


def run_demo(out_dir: str = "demo-output", model: Optional[str] = None, pairs: int = 8) -> int:
    """Write a reference model (unless ``model`` is given), score ``pairs`` pairs, print them."""
    import cv2

    from .api import load

    os.makedirs(out_dir, exist_ok=True)
    if model is None:
        model = write_reference_model(os.path.join(out_dir, "reference_learnable.onnx"), kind="learnable")
        print("wrote reference model {}".format(model))
    golden, sample, truth = make_pairs(pairs)
    paths = []
    for i, (g, s) in enumerate(zip(golden, sample)):
        gp = os.path.join(out_dir, "pair{:02d}_golden.png".format(i))
        sp = os.path.join(out_dir, "pair{:02d}_sample.png".format(i))
        cv2.imwrite(gp, cv2.cvtColor(g, cv2.COLOR_RGB2BGR))
        cv2.imwrite(sp, cv2.cvtColor(s, cv2.COLOR_RGB2BGR))
        paths.append((gp, sp))
    print("wrote {} golden/sample image pairs to {}/".format(pairs, out_dir))
    start = time.perf_counter()
    with load(model) as clf:
        print("loaded {}".format(clf))
        result = clf.predict([p[0] for p in paths], [p[1] for p in paths])
    seconds = time.perf_counter() - start
    print("\n{:<6} {:>10}  {:<8} {}".format("pair", "score", "decision", "truth"))
    for i, (s, d, t) in enumerate(zip(result.scores, result.defects, truth)):
        print("{:<6} {:>10.4f}  {:<8} {}".format(i, s, "DEFECT" if d else "pass", "defect" if t else "pass"))
    correct = int((result.defects == truth).sum())
    print("\n{}/{} decisions correct at cutoff {}; {:.1f} pairs/s (predict incl. decode), {:.2f} s with load".format(
        correct, pairs, result.cutoff, result.pairs_per_s, seconds))
    return 0
