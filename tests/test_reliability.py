"""Issue 12: a classifier shared by threads, NaN/Inf outputs, impossible batch sizes, outputs
checked before the work and written as one set."""

import json
import os
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import changenet_trt
from changenet_trt import files
from changenet_trt.cli import main
from changenet_trt.errors import InputError
from changenet_trt.evaluation import evaluate as evaluate_module
from changenet_trt.evaluation.evaluate import evaluate
from changenet_trt.tools.demo import make_pairs

from fakes.engine_files import write_engine
from helpers import normalized, run_in_threads, write_set

THREADS = 8
CALLS = 4


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    """40 normalised pairs, and 12 of them as PNG files."""
    import cv2

    golden, sample, _ = make_pairs(40, seed=12)
    root = tmp_path_factory.mktemp("pairs")
    paths = []
    for i in range(12):
        gp, sp = str(root / "g{}.png".format(i)), str(root / "s{}.png".format(i))
        cv2.imwrite(gp, cv2.cvtColor(golden[i], cv2.COLOR_RGB2BGR))
        cv2.imwrite(sp, cv2.cvtColor(sample[i], cv2.COLOR_RGB2BGR))
        paths.append((gp, sp))
    return normalized(golden), normalized(sample), paths


def hammer(clf, data):
    """8 threads x CALLS calls on one classifier (arrays and image paths, differing slices);
    every result is compared with the same call made alone."""
    g, s, paths = data
    jobs = []
    for t in range(THREADS):
        for c in range(CALLS):
            lo = (3 * t + 5 * c) % 20
            if (t + c) % 2:
                jobs.append((t, ("arrays", lo, lo + 7 + t)))
            else:
                jobs.append((t, ("paths", lo % 6, lo % 6 + 1 + t % 6)))

    def call(job):
        kind, lo, hi = job
        if kind == "arrays":
            return clf.predict(g[lo:hi], s[lo:hi]).scores
        return clf.predict([p[0] for p in paths[lo:hi]], [p[1] for p in paths[lo:hi]]).scores

    alone = {job: call(job) for _, job in jobs}
    got = {}
    barrier = threading.Barrier(THREADS)

    def work(index):
        barrier.wait()
        for t, job in jobs:
            if t == index:
                got[(index, job)] = call(job)

    errors = run_in_threads(work, THREADS)
    assert errors == []
    assert len(got) == THREADS * CALLS
    for (_, job), scores in got.items():
        np.testing.assert_allclose(scores, alone[job], rtol=0, atol=1e-6, err_msg=str(job))


@pytest.mark.parametrize("variant", ["learnable_dynamic", "euclidean_static16"])
def test_onnxruntime_classifier_shared_by_threads(reference_models, shared_data, variant):
    with changenet_trt.load(reference_models[variant], batch_size=None if "static" in variant else 4) as clf:
        hammer(clf, shared_data)


def test_tensorrt_classifier_shared_by_threads(fake_trt_factory, fake_cuda, tmp_path, reference_models, shared_data):
    fake_cuda.trt = fake_trt_factory("10.x")
    fake_cuda.mode = "10.x"
    engine = write_engine(tmp_path, fake_cuda, reference_models["learnable_dynamic"])
    with changenet_trt.load(engine, batch_size=4) as clf:
        hammer(clf, shared_data)
    assert fake_cuda.device.summary() == {"device_allocations": 0, "pinned_buffers": 0, "streams": 0}


class DeepRunner:
    """An ONNX Runtime runner with four buffer slots (as a Triton runner over four servers has)
    that records how many batches are in flight at once."""

    @staticmethod
    def make(model, max_batch):
        from changenet_trt.runtime.onnxruntime import OnnxRuntimeRunner

        class Deep(OnnxRuntimeRunner):
            num_slots = 4

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.in_flight, self.most_in_flight, self.lock = 0, 0, threading.Lock()

            def submit(self, batch, slot=0):
                super().submit(batch, slot)
                with self.lock:
                    self.in_flight += 1
                    self.most_in_flight = max(self.most_in_flight, self.in_flight)

            def fetch(self, slot=0, copy=True):
                out = super().fetch(slot, copy)
                with self.lock:
                    self.in_flight -= 1
                return out

        return Deep(model, max_batch=max_batch)


def test_a_call_keeps_every_slot_of_the_runner_busy_and_shares_them_under_threads(reference_models, shared_data):
    from changenet_trt.api import Classifier

    model = reference_models["learnable_dynamic"]
    golden, sample, _ = shared_data
    with changenet_trt.load(model, batch_size=2) as two_slots:
        want = two_slots.predict(golden, sample).raw

    def fill(golden_dst, sample_dst, lo, hi):  # the buffered path (arrays of the model's dtype skip it)
        np.copyto(golden_dst, golden[lo:hi])
        np.copyto(sample_dst, sample[lo:hi])

    runner = DeepRunner.make(model, max_batch=2)
    clf = Classifier(runner)
    try:
        np.testing.assert_allclose(clf.run_pipeline(len(golden), fill), want, rtol=0, atol=1e-6)
        assert runner.most_in_flight == 4  # one call, nobody waiting: all four slots in flight
        results = {}

        def work(index):
            results[index] = clf.run_pipeline(len(golden), fill)

        assert run_in_threads(work, 6) == []
        for scores in results.values():
            np.testing.assert_allclose(scores, want, rtol=0, atol=1e-6)
        assert runner.in_flight == 0
    finally:
        clf.close()


# -- NaN/Inf outputs ---------------------------------------------------------------------------
def nan_model(path):
    """Euclidean model: sqrt(mean(sample) - mean(golden)): NaN where the sample is darker."""
    shape = ["batch", 3, 512, 128]
    sample = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, shape)
    golden = helper.make_tensor_value_info("input_2", TensorProto.FLOAT, shape)
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch"])
    nodes = [
        helper.make_node("Sub", ["input_1", "input_2"], ["diff"]),
        helper.make_node("ReduceMean", ["diff"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sqrt", ["mean"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "nan_model", [sample, golden], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return str(path)


def test_nan_scores_are_invalid_never_pass(tmp_path):
    model = nan_model(tmp_path / "nan.onnx")
    g = np.zeros((5, 3, 512, 128), np.float32)
    s = g.copy()
    s[[0, 3]] = -1.0  # darker sample: sqrt of a negative mean
    s[1] = 0.25
    with changenet_trt.load(model, cutoff=0.1) as clf:
        res = clf.predict(g, s)
    assert res.invalid_pairs == [0, 3]
    assert res.decisions == ["invalid", "defect", "pass", "invalid", "pass"]
    assert res.defects.tolist() == [True, True, False, True, False]
    assert clf.decide(np.array([np.nan, np.inf, 0.0])).tolist() == [True, True, False]


def test_infer_and_eval_report_nan_pairs(tmp_path, capsys):
    model = nan_model(tmp_path / "nan.onnx")
    csv_path = write_set(str(tmp_path / "set"), [("a", "PASS", 100, 100), ("b", "MISSING", 100, 20),
                                                 ("c", "MISSING", 100, 200), ("d", "PASS", 50, 60)])
    layout = changenet_trt.data.dataset.LightLayout(lights=(), ext=".png")
    result = evaluate(model, csv_path, out_dir=str(tmp_path / "out"), layout=layout, progress=False, cutoff=0.1)
    assert result.summary["pairs"] == 3 and result.summary["skipped"] == 1
    assert "NaN or Inf" in result.summary["skipped_rows"][0]["reason"]
    assert result.summary["skipped_rows"][0]["line"] == 3
    with pytest.raises(changenet_trt.errors.DatasetError, match="line 3.*NaN or Inf.*--strict"):
        evaluate(model, csv_path, out_dir=None, layout=layout, progress=False, strict=True)

    images = os.path.join(str(tmp_path / "set"))
    capsys.readouterr()
    code = main(["infer", model, "--golden", images + "/golden/a.png", images + "/golden/b.png",
                 "--sample", images + "/sample/a.png", images + "/sample/b.png", "--cutoff", "0.1"])
    out = capsys.readouterr()
    assert code == 1
    assert "INVALID  score=nan" in out.out
    assert "1 pair(s) could not be scored" in out.err and "b.png" in out.err


# -- batch sizes -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "16"])
def test_impossible_batch_sizes_are_refused(reference_models, bad):
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        changenet_trt.load(reference_models["learnable_dynamic"], batch_size=bad)


def test_batch_size_beyond_memory_is_refused_before_allocating(reference_models, capsys, monkeypatch):
    from changenet_trt.runtime import base

    monkeypatch.setattr(base, "available_memory", lambda: 8 << 30)
    # 2 inputs x 2 slots x 10**6 x [3,512,128] float32
    with pytest.raises(InputError, match=r"batch size 1000000 needs 2929\.7 GiB .* 8\.0 GiB available"):
        changenet_trt.load(reference_models["learnable_dynamic"], batch_size=10 ** 6)
    code = main(["infer", reference_models["learnable_dynamic"], "--golden", "g.png", "--sample", "s.png",
                 "--batch-size", "1000000"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "GiB" in err


# -- output locations ----------------------------------------------------------------------------
@pytest.fixture
def small_set(tmp_path):
    return write_set(str(tmp_path / "set"), [("a", "PASS", 100, 101), ("b", "MISSING", 100, 180),
                                             ("c", "PASS", 90, 92), ("d", "MISSING", 40, 200)])


def scoring_spy(monkeypatch):
    calls = []
    original = changenet_trt.api.Classifier.run_pipeline

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(changenet_trt.api.Classifier, "run_pipeline", spy)
    return calls


def bad_outputs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = {"file": str(a_file), "under_file": str(a_file / "sub")}
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        cases["locked"] = str(locked / "out")
    return cases


def test_eval_output_problems_stop_before_any_scoring(tmp_path, small_set, reference_models, monkeypatch, capsys):
    calls = scoring_spy(monkeypatch)
    model = reference_models["learnable_dynamic"]
    common = ["eval", model, "--csv", small_set, "--lights", "none", "--ext", ".png", "--quiet"]
    cases = dict(bad_outputs(tmp_path), input_folder=os.path.dirname(small_set))
    for name, out in cases.items():
        capsys.readouterr()
        assert main(common + ["--out", out]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
    assert calls == []
    assert open(small_set).read().startswith("input_path")


def test_infer_output_problems_stop_before_any_scoring(tmp_path, reference_models, monkeypatch, capsys):
    import cv2

    calls = scoring_spy(monkeypatch)
    image = str(tmp_path / "g.png")
    cv2.imwrite(image, np.zeros((8, 8, 3), np.uint8))
    cases = dict(bad_outputs(tmp_path), folder=str(tmp_path), input=image)
    del cases["file"]  # an existing file is replaced whole: fine for a CSV
    for name, out in cases.items():
        capsys.readouterr()
        code = main(["infer", reference_models["learnable_dynamic"], "--golden", image, "--sample", image,
                     "--out", out])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, err)
    assert calls == []


def test_eval_refuses_a_folder_with_other_files(tmp_path, small_set, reference_models):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds files this run did not write.*notes.txt"):
        evaluate(reference_models["learnable_dynamic"], small_set, out_dir=str(out),
                 layout=changenet_trt.data.dataset.LightLayout(lights=(), ext=".png"), progress=False)
    assert (out / "notes.txt").read_text() == "mine"


# -- one set, all old or all new ---------------------------------------------------------------
def test_eval_set_is_all_old_or_all_new(tmp_path, small_set, reference_models, monkeypatch):
    model = reference_models["learnable_dynamic"]
    layout = changenet_trt.data.dataset.LightLayout(lights=(), ext=".png")
    out = tmp_path / "out"
    first = evaluate(model, small_set, out_dir=str(out), layout=layout, progress=False, cutoff=0.5)
    old = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert {"scores.csv", "sweep.csv", "summary.json", "scores.png"} <= set(old)

    # interrupted after scores.csv and sweep.csv of the new set are written
    original = evaluate_module._plots

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "_plots", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, small_set, out_dir=str(out), layout=layout, progress=False, cutoff=0.9)
    assert {name: (out / name).read_bytes() for name in old} == old
    assert sorted(os.listdir(tmp_path)) == ["out", "set"]  # no staging folder left

    monkeypatch.setattr(evaluate_module, "_plots", original)
    second = evaluate(model, small_set, out_dir=str(out), layout=layout, progress=False, cutoff=0.9, plots=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cutoff"] == 0.9 != first.summary["cutoff"]
    assert "scores.png" not in os.listdir(out)  # no stale plot of the earlier set
    assert sorted(os.listdir(out)) == sorted([os.path.basename(p) for p in second.files.values()]
                                             + [files.SET_MANIFEST])
    assert all(os.path.dirname(p) == str(out) for p in summary["files"].values())
    assert sorted(os.listdir(tmp_path)) == ["out", "set"]


def test_swap_without_renameat2_also_leaves_a_whole_set(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    out = tmp_path / "set"
    for version in ("old", "new"):
        with files.atomic_dir(out) as staging:
            for name in ("a.csv", "b.json"):
                with open(os.path.join(staging, name), "w") as handle:
                    handle.write(version)
    assert sorted(os.listdir(tmp_path)) == ["set"]
    assert [(out / n).read_text() for n in ("a.csv", "b.json")] == ["new", "new"]
    assert files.foreign_entries(str(out)) == []


# -- every writer checks its output before the work --------------------------------------------
def test_every_command_checks_its_output_first(tmp_path, reference_models, monkeypatch, capsys):
    from changenet_trt.engine import fp16_check, prepare
    from changenet_trt.evaluation import validate

    worked = []
    for module, name in ((fp16_check, "check_model"), (validate, "validate"), (prepare, "make_dynamic")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: worked.append(_n))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    under_file = str(a_file / "out")
    model = reference_models["learnable_static16"]
    commands = {
        "reference-model": ["reference-model", under_file],
        "reference-model --realistic": ["reference-model", str(tmp_path), "--realistic"],
        "synth": ["synth", str(a_file), "--pairs", "2"],
        "demo": ["demo", "--out", str(a_file), "--pairs", "2"],
        "prepare": ["prepare", model, "-o", under_file],
        "prepare onto its input": ["prepare", model, "-o", model],
        "fp16-check --out": ["fp16-check", model, "--pairs", "1", "--out", str(tmp_path)],
        "fp16-check --json": ["fp16-check", model, "--pairs", "1", "--out", str(tmp_path / "l.txt"),
                              "--json", under_file],
        "validate --json": ["validate", model, "--onnx", model, "--pairs", "1", "--json", under_file],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, err)
    assert worked == [] and a_file.read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


@pytest.mark.parametrize("content", [None, b""])
def test_model_path_that_is_a_folder_or_empty_says_so(tmp_path, content):
    path = tmp_path / "m.onnx"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(changenet_trt.errors.ModelContractError, match="folder" if content is None else "empty.*0 bytes"):
        changenet_trt.load(str(path))


def test_image_path_that_is_a_folder_says_so(reference_models, tmp_path):
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        with pytest.raises(InputError, match="image path is a folder"):
            clf.predict([str(tmp_path)], [str(tmp_path)])


def test_uint8_nchw_array_names_the_argument(reference_models):
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        with pytest.raises(InputError, match=r"sample is a uint8 array \[2, 3, 512, 128\]"):
            clf.predict(np.zeros((2, 512, 128, 3), np.uint8), np.zeros((2, 3, 512, 128), np.uint8))
