"""Small helpers shared by the foundation tests (no fixtures: plain functions)."""

import contextlib
import os

import cv2
import numpy as np

# Test modules sit one folder below tests/ (grouped like the package): paths start from here.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)


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


@contextlib.contextmanager
def recorded_run_rows(counts=lambda names: True):
    """While open, every ``onnxruntime.InferenceSession.run`` whose output ``names`` pass
    ``counts`` appends its batch (the first input's rows) to the list yielded; the real class
    is put back on exit."""
    import onnxruntime as ort

    rows = []
    real = ort.InferenceSession

    class Recording(real):
        def run(self, names, feed, *args, **kwargs):
            if counts(names):
                rows.append(int(next(iter(feed.values())).shape[0]))
            return super().run(names, feed, *args, **kwargs)

    ort.InferenceSession = Recording
    try:
        yield rows
    finally:
        ort.InferenceSession = real


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
    from changenet_trt.engine.options import BuildOptions

    kw.setdefault("progress", False)
    kw.setdefault("proof_pairs", 8)
    kw.setdefault("engines_dir", "engines")
    return BuildOptions(model=model, **kw)


def write_set(root, rows):
    """A one-light data set; ``rows``: (name, label, golden value, sample value)."""
    lines = ["input_path,golden_path,label,object_name"]
    for name, label, gv, sv in rows:
        for folder, value in (("golden", gv), ("sample", sv)):
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            cv2.imwrite(os.path.join(root, folder, name + ".png"), np.full((16, 16, 3), value, np.uint8))
        lines.append("sample,golden,{},{}".format(label, name))
    csv_path = os.path.join(root, "data.csv")
    with open(csv_path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return csv_path


# TAO's shipped Visual ChangeNet-Classification spec, value for value: tao_pytorch_backend
# nvidia_tao_pytorch/cv/visual_changenet/experiment_specs/experiment_spec_classify.yaml (6.0.0 to
# 6.25.10, the latest public release; TAO Deploy 7.3.0's config dataclasses read the same keys),
# with gen_trt_engine as tao_tutorials' visual_changenet/specs/experiment_classify.yaml ships it.
# Only the data paths (/data/...) point at a data set made here ({root}).
TAO_CLASSIFY_SPEC = """\
encryption_key: tlt_encode
task: classify
train:
  resume_training_checkpoint_path: null
  pretrained_model_path: /results/pretrained/visual_changenet_classification_vvisual_changenet_nvpcb_trainable_v1.0/changenet_classifier.pth
  classify:
    loss: "contrastive"
    cls_weight: [1.0, 10.0]
  num_epochs: 1
  num_nodes: 1
  validation_interval: 1
  checkpoint_interval: 1
  optim:
    lr: 0.00005
    optim: "adamw"
    policy: "linear"
    momentum: 0.9
    weight_decay: 0.01
  results_dir: "${{results_dir}}/train"
  tensorboard:
    enabled: True
    infrequent_logging_frequency: 1
results_dir: /results
model:
  backbone:
    type: "fan_small_12_p4_hybrid"
    pretrained_backbone_path: null
    freeze_backbone: False
  classify:
    train_margin_euclid: 2.0
    eval_margin: 0.005
    embedding_vectors: 5
    embed_dec: 30
    difference_module: 'euclidean'
    learnable_difference_modules: 4
dataset:
  classify:
    train_dataset:
      csv_path: {root}/dataset.csv
      images_dir: {root}/
    validation_dataset:
      csv_path: {root}/dataset.csv
      images_dir: {root}/
    test_dataset:
      csv_path: {root}/dataset.csv
      images_dir: {root}/
    infer_dataset:
      csv_path: {root}/line.csv
      images_dir: {root}/
    image_ext: .jpg
    batch_size: 16
    workers: 2
    fpratio_sampling: 0.2
    num_input: 4
    input_map:
      LowAngleLight: 0
      SolderLight: 1
      UniformLight: 2
      WhiteLight: 3
    concat_type: linear
    grid_map:
      x: 2
      y: 2
    image_width: 128
    image_height: 128
    augmentation_config:
      rgb_input_mean: [0.485, 0.456, 0.406]
      rgb_input_std: [0.229, 0.224, 0.225]
      random_flip:
        vflip_probability: 0.5
        hflip_probability: 0.5
        enable: True
      random_rotate:
        rotate_probability: 0.5
        angle_list: [90, 180, 270]
        enable: True
      random_color:
        brightness: 0.3
        contrast: 0.3
        saturation: 0.3
        hue: 0.3
        enable: True
      with_scale_random_crop:
        enable: True
      with_random_crop: True
      with_random_blur: True
      augment: False
    num_classes: 2
evaluate:
  checkpoint: "${{results_dir}}/train/changenet_classify.pth"
  trt_engine: "${{results_dir}}/gen_trt_engine/changenet-classify.trt"
  batch_size: ${{dataset.classify.batch_size}}
inference:
  checkpoint: "${{results_dir}}/train/changenet_classify.pth"
  trt_engine: "${{results_dir}}/gen_trt_engine/changenet-classify.trt"
  batch_size: ${{dataset.classify.batch_size}}
export:
  gpu_id: 0
  checkpoint: "${{results_dir}}/train/changenet_classify.pth"
  onnx_file: "${{results_dir}}/export/changenet-classify.onnx"
  input_width: 128
  input_height: 512
  batch_size: ${{dataset.classify.batch_size}}
gen_trt_engine:
  gpu_id: 0
  onnx_file: "${{results_dir}}/export/changenet-classify.onnx"
  trt_engine: "${{results_dir}}/gen_trt_engine/changenet-classify.trt"
  batch_size: ${{dataset.classify.batch_size}}
  tensorrt:
    data_type: FP32
    workspace_size: 1024
    min_batch_size: 1
    opt_batch_size: 10
    max_batch_size: 10
"""


def random_pair_arrays(pairs=40, seed=5):
    """Normalised float32 golden/sample arrays [pairs,3,512,128]: random, so every row differs."""
    rng = np.random.default_rng(seed)
    golden = rng.normal(0, 1, (pairs, 3, 512, 128)).astype(np.float32)
    sample = golden + rng.normal(0, 0.3, golden.shape).astype(np.float32)
    return golden, sample
