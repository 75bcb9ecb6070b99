"""Small helpers shared by the foundation tests (no fixtures: plain functions)."""

import numpy as np


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


def run_in_threads(work, count):
    """Call ``work(i)`` for i in 0..count-1, each on its own thread, and wait for all of them;
    return the exceptions they raised (to be asserted on the test's thread)."""
    import threading

    errors = []

    def guarded(index):
        try:
            work(index)
        except Exception as exc:  # reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def build_options(model, **kw):
    """BuildOptions for the fake builds: no progress bars, a short fp16 proof, engines/ under cwd."""
    from changenet_trt.engine.plan import BuildOptions

    kw.setdefault("progress", False)
    kw.setdefault("proof_pairs", 8)
    kw.setdefault("engines_dir", "engines")
    return BuildOptions(model=model, **kw)
