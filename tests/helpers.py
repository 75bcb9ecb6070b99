"""Small helpers shared by the foundation tests (no fixtures: plain functions)."""

import numpy as np


def strip_pairs(count, seed=0, defect_every=2):
    """``count`` uint8 RGB golden/sample [512,128,3] pairs; every ``defect_every``-th sample
    loses a component pad. Returns ``(golden, sample, is_defect)``."""
    import cv2

    rng = np.random.default_rng(seed)
    golden, sample, defect = [], [], []
    for i in range(count):
        g = np.empty((512, 128, 3), np.uint8)
        g[:] = (30, 90, 40)
        g = np.clip(g + rng.normal(0, 6, g.shape), 0, 255).astype(np.uint8)
        for top in range(40, 512, 128):
            cv2.rectangle(g, (34, top), (94, top + 48), (200, 200, 190), -1)
        s = g.astype(np.float32) * rng.uniform(0.93, 1.07) + rng.normal(0, 3, g.shape)
        bad = i % defect_every == defect_every - 1
        if bad:
            top = 40 + 128 * int(rng.integers(0, 4))
            cv2.rectangle(s, (34, top), (94, top + 48), (30, 90, 40), -1)
        golden.append(g)
        sample.append(np.clip(s, 0, 255).astype(np.uint8))
        defect.append(bad)
    return golden, sample, np.array(defect)


def normalized(images, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """Plain reference preprocessing: uint8 RGB [H,W,3] list -> float32 [N,3,H,W] (float64 math)."""
    batch = np.stack(images).astype(np.float64) / 255.0
    batch = (batch - np.array(mean)) / np.array(std)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32)


def ort_output(model_path, sample, golden, static_batch=None):
    """Run the model directly with onnxruntime (row by row chunks of its static batch)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    if static_batch is None:
        return session.run(None, {"input_1": sample, "input_2": golden})[0]
    outs = []
    for lo in range(0, len(sample), static_batch):
        s = sample[lo : lo + static_batch]
        g = golden[lo : lo + static_batch]
        n = len(s)
        if n < static_batch:
            pad = ((0, static_batch - n), (0, 0), (0, 0), (0, 0))
            s, g = np.pad(s, pad), np.pad(g, pad)
        outs.append(session.run(None, {"input_1": s, "input_2": g})[0][:n])
    return np.concatenate(outs)
