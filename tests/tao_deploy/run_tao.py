"""Runs TAO Deploy's own Visual ChangeNet-Classification code; started by tests/tao_deploy/test_tao_deploy.py
with the oracle venv's Python (never imported by the test suite itself).

``PYTHONPATH`` puts ``tests/tao_deploy/stand_ins`` (tensorrt, pycuda and nvidia_tao_core
stand-ins) and one nvidia-tao-deploy release first. Modes:

* ``evaluate SPEC OUT`` / ``inference SPEC OUT``: TAO's ``scripts/evaluate.py`` /
  ``scripts/inference.py`` ``main``, through its own Hydra runner, on SPEC with
  ``results_dir=OUT``; the classification inferencer's outputs are also saved, unrounded, to
  ``OUT/scores.npy`` (a tap that records what ``infer`` returns and changes nothing).
* ``tensors SPEC SPLIT OUT.npz``: TAO's ``OpticalInspectionDataLoader`` on SPEC's test data set
  (SPLIT ``evaluate``: with labels) as ``evaluate`` builds it; the sample (``input_1``) and golden
  (``input_2``) batches, and labels, are saved; an exception is saved as ``error`` instead.
"""

import os
import sys

import numpy as np


def run_script(mode, spec, out):
    from nvidia_tao_deploy.cv.visual_changenet.classification import inferencer

    recorded = []
    original = inferencer.ChangeNetInferencer.infer

    def tap(self, input_images):
        result = original(self, input_images)
        recorded.append(np.array(result, dtype=np.float64).reshape(len(result), -1))
        return result

    inferencer.ChangeNetInferencer.infer = tap
    if mode == "evaluate":
        from nvidia_tao_deploy.cv.visual_changenet.scripts.evaluate import main
    else:
        from nvidia_tao_deploy.cv.visual_changenet.scripts.inference import main
    folder, name = os.path.split(os.path.abspath(spec))
    sys.argv = [mode, "--config-path", folder, "--config-name", os.path.splitext(name)[0],
                "results_dir={}".format(out)]
    try:
        main()
    finally:
        os.makedirs(out, exist_ok=True)
        np.save(os.path.join(out, "scores.npy"), np.concatenate(recorded) if recorded else np.zeros((0, 1)))


def run_loader(spec, split, out):
    from nvidia_tao_deploy.cv.optical_inspection.dataloader import OpticalInspectionDataLoader
    from omegaconf import OmegaConf

    config = OmegaConf.load(spec)
    data = config.dataset.classify
    try:
        loader = OpticalInspectionDataLoader(csv_file=data.test_dataset.csv_path,
                                             input_data_path=data.test_dataset.images_dir, train=False,
                                             data_config=data, dtype=np.float32, split=split,
                                             batch_size=data.batch_size)
        samples, goldens, labels = [], [], []
        for batch in loader:
            samples.append(batch[0])
            goldens.append(batch[1])
            if split == "evaluate":
                labels.append(batch[2])
        np.savez(out, input_1=np.concatenate(samples), input_2=np.concatenate(goldens),
                 labels=np.concatenate(labels) if labels else np.zeros(0))
    except Exception as exc:  # what TAO's loader does with this data is the result
        np.savez(out, error=np.array("{}: {}".format(type(exc).__name__, exc)))


if __name__ == "__main__":
    if sys.argv[1] in ("evaluate", "inference"):
        run_script(sys.argv[1], sys.argv[2], sys.argv[3])
    else:
        run_loader(sys.argv[2], sys.argv[3], sys.argv[4])
