"""validate: engine vs ONNX error statistics, decision flips at the cutoff, FPR/capture, exit codes."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from changenet_trt.cli import main
from changenet_trt.data.pairs import dataset_source, synthetic_source
from changenet_trt.errors import InputError
from changenet_trt.evaluation import validate
from changenet_trt.models.reference import write_reference_model


# -- decision flips on constructed scores ------------------------------------------------------
def test_flips_at_the_cutoff_are_strictly_greater():
    ref = np.array([0.10, 0.50, 0.50, 0.90, 0.51, 0.49])
    test = np.array([0.10, 0.50001, 0.49, 0.90, 0.50, 0.49])
    flips = validate.decision_flips(ref, test, cutoff=0.5)
    # 0.5 is a pass (not > 0.5); 0.50001 a defect; 0.51 -> 0.50 drops a defect
    assert flips.indices == [1, 4]
    assert flips.raised == [1]
    assert flips.dropped == [4]
    assert flips.count == 2
    assert flips.max_score_error == pytest.approx(0.01)
    # reference scores within 0.01 of the cutoff: 0.50, 0.50, 0.51, 0.49
    assert flips.near == 4


def test_no_flips_when_scores_agree_on_the_side_of_the_cutoff():
    ref = np.array([0.01, 0.02, 0.2, 0.9])
    test = ref + np.array([0.009, -0.01, -0.1, 0.05])
    flips = validate.decision_flips(ref, test, cutoff=0.03)
    assert flips.count == 0 and flips.raised == [] and flips.dropped == []


def test_nan_score_is_a_pass_decision():
    flips = validate.decision_flips(np.array([0.9, 0.1]), np.array([np.nan, np.nan]), cutoff=0.5)
    assert flips.indices == [0] and flips.dropped == [0] and flips.raised == []


def test_flip_vectors_must_match():
    with pytest.raises(InputError):
        validate.decision_flips(np.zeros(3), np.zeros(4), 0.5)


# -- error statistics -----------------------------------------------------------------------------
def test_error_stats_against_hand_computed_values():
    ref = np.array([[1.0, -2.0], [0.5, 4.0]])
    test = np.array([[1.1, -2.0], [0.5, 3.0]])
    stats = validate.error_stats(ref, test, atol=0.05, rtol=0.1)
    assert stats.abs_max == pytest.approx(1.0)
    assert stats.abs_mean == pytest.approx(1.1 / 4)
    assert stats.abs_median == pytest.approx(0.05)  # sorted 0, 0, 0.1, 1.0 -> (0 + 0.1) / 2
    assert stats.rel_max == pytest.approx(0.25)
    assert stats.worst_index == [1, 1]
    assert (stats.ref_at_worst, stats.test_at_worst) == (4.0, 3.0)
    # 0.1 <= 0.05 + 0.1*1 holds; 1.0 <= 0.05 + 0.4 does not
    assert stats.beyond_tolerance == 1
    assert stats.nonfinite == 0


def test_error_stats_counts_one_sided_nonfinite_values():
    stats = validate.error_stats(np.array([1.0, 2.0, np.inf]), np.array([1.0, np.nan, np.inf]))
    assert stats.nonfinite == 1
    assert stats.beyond_tolerance == 1
    assert stats.abs_max == float("inf")


def test_error_stats_shapes_must_match():
    with pytest.raises(InputError):
        validate.error_stats(np.zeros((2, 2)), np.zeros((2, 1)))


# -- two ONNX Runtime classifiers: a model against a drifted copy ---------------------------------
def _drifted(path, source, delta):
    """A copy of the learnable reference model whose defect logit is raised by ``delta``
    (so every score moves up: pairs just below the cutoff flip)."""
    model = onnx.load(source)
    for init in model.graph.initializer:
        if init.name == "head.fc.bias":
            bias = numpy_helper.to_array(init).copy()
            bias[1] += delta
            init.CopyFrom(numpy_helper.from_array(bias, init.name))
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    ref = write_reference_model(str(root / "ref.onnx"), kind="learnable")
    return {
        "ref": ref,
        "same": write_reference_model(str(root / "same.onnx"), kind="learnable", fp16_overflow=True),
        "drift": _drifted(str(root / "drift.onnx"), ref, 4.0),
        "euclidean": write_reference_model(str(root / "euc.onnx"), kind="euclidean"),
    }


def _synthetic(count, seed=0):
    return lambda contract, norm: synthetic_source(count, contract.input_shape, norm, seed=seed)


def test_identical_models_pass_with_zero_error(models):
    report = validate.validate(models["same"], models["ref"], _synthetic(12), backend="onnxruntime",
                               atol=0.0, rtol=0.0)
    assert report.pairs == 12
    assert report.raw.abs_max == 0.0 and report.flips.count == 0
    assert report.passed
    assert set(report.metrics) == {"onnx", "engine"}
    assert report.metrics["onnx"] == report.metrics["engine"]
    counts = report.metrics["onnx"]
    assert counts["tp"] + counts["fn"] == int(report.labels.sum())


def test_validate_all_runs_the_reference_once_for_several_models(models, monkeypatch):
    from changenet_trt import api

    calls = []
    real_load = api.load

    def counting_load(model, *args, **kwargs):
        classifier = real_load(model, *args, **kwargs)
        predict = classifier.predict
        classifier.predict = lambda g, s: calls.append(str(model)) or predict(g, s)
        return classifier

    active, most = [0], [0]
    enter, leave = api.Classifier.__enter__, api.Classifier.__exit__

    def entering(self):
        active[0] += 1
        most[0] = max(most[0], active[0])
        return enter(self)

    def leaving(self, *exc):
        active[0] -= 1
        return leave(self, *exc)

    monkeypatch.setattr(validate, "load", counting_load)
    monkeypatch.setattr(api.Classifier, "__enter__", entering)
    monkeypatch.setattr(api.Classifier, "__exit__", leaving)
    same, drift = validate.validate_all([models["same"], models["drift"]], models["ref"], _synthetic(12),
                                        backend="onnxruntime", chunk=4)
    assert calls.count(models["ref"]) == 3 and calls.count(models["same"]) == 3 and calls.count(models["drift"]) == 3
    assert most[0] == 1 and active[0] == 0  # one model's session at a time: memory holds one, not three
    assert same.passed and same.raw.abs_max == 0.0
    alone = validate.validate(models["drift"], models["ref"], _synthetic(12), backend="onnxruntime")
    assert drift.flips.indices == alone.flips.indices and np.array_equal(drift.test_scores, alone.test_scores)
    assert np.array_equal(same.ref_scores, drift.ref_scores)


def test_drifted_model_flips_decisions_and_fails(models):
    report = validate.validate(models["drift"], models["ref"], _synthetic(24), backend="onnxruntime")
    ref_s, test_s, cutoff = report.ref_scores, report.test_scores, report.flips.cutoff
    expected = np.flatnonzero((ref_s > cutoff) != (test_s > cutoff)).tolist()
    assert report.flips.indices == expected
    assert report.flips.count > 0 and report.flips.dropped == []  # the drift only raises scores
    assert not report.passed
    assert any("flips" in why for why in report.failures)
    assert any("beyond atol" in why for why in report.failures)
    # the metrics are those of each side's own decisions
    labels = report.labels
    for side, scores in (("onnx", ref_s), ("engine", test_s)):
        called = scores > cutoff
        assert report.metrics[side]["fp"] == int((called & ~labels).sum())
        assert report.metrics[side]["tp"] == int((called & labels).sum())
    # loose tolerances and enough allowed flips make the same comparison pass
    loose = validate.validate(models["drift"], models["ref"], _synthetic(24), backend="onnxruntime",
                              atol=10.0, rtol=0.0, max_flips=report.flips.count)
    assert loose.passed


def test_output_kinds_must_match(models):
    with pytest.raises(InputError):
        validate.validate(models["euclidean"], models["ref"], _synthetic(2), backend="onnxruntime")


def test_dataset_source_reads_a_tao_csv(tmp_path, models):
    from changenet_trt.data.synth import synthesize

    data = synthesize(str(tmp_path / "data"), pairs=6, defect_rate=0.5, seed=4)
    report = validate.validate(
        models["same"], models["ref"],
        lambda contract, norm: dataset_source(data.csv_path, data.images_dir, contract.input_shape, norm),
        backend="onnxruntime",
    )
    assert report.pairs == 6
    assert int(report.labels.sum()) == 3
    assert report.ids[0].startswith("line 2 ")


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_validate_pass_and_json(models, tmp_path, capsys):
    out = tmp_path / "v.json"
    code = main(["validate", models["same"], "--onnx", models["ref"], "--backend", "onnxruntime",
                 "--pairs", "8", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "flips: 0" in text and "PASS" in text and "FPR" in text
    data = json.loads(out.read_text())
    assert data["passed"] is True and data["pairs"] == 8 and data["flips"] == 0
    assert set(data["metrics"]) == {"onnx", "engine"}


def test_cli_validate_exit_code_follows_max_flips(models, capsys):
    base = ["validate", models["drift"], "--onnx", models["ref"], "--backend", "onnxruntime", "--pairs", "16",
            "--atol", "100"]
    assert main(base) == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and "decision flips" in text
    flips = int(text.split("flips: ")[1].split()[0])
    assert flips > 0
    assert main(base + ["--max-flips", str(flips)]) == 0


def test_cli_validate_refuses_both_sources(models, capsys):
    code = main(["validate", models["same"], "--onnx", models["ref"], "--backend", "onnxruntime",
                 "--pairs", "4", "--csv", "x.csv"])
    assert code == 2
    assert "either --csv" in capsys.readouterr().err


# -- the engine side through the TensorRT and pycuda test doubles ---------------------------------
def _build_fake_engine(onnx_path, out_dir, name):
    from changenet_trt.engine.build import build_engine_file
    from changenet_trt.engine.options import BatchProfile, BuildOptions

    options = BuildOptions(model=onnx_path, output=str(out_dir / (name + ".engine")), precision="fp16",
                           profile=BatchProfile(1, 8, 16), engines_dir=str(out_dir), progress=False)
    return build_engine_file(options).engine_path


@pytest.mark.parametrize("fake_trt", ["8.5", "10.x"], indirect=True)
def test_engine_vs_onnx_through_the_fakes(fake_trt, fake_cuda, models, tmp_path):
    engine = _build_fake_engine(models["ref"], tmp_path, "ref_fp16")
    report = validate.validate(engine, models["ref"], _synthetic(20))
    assert report.test_backend == "tensorrt" and report.reference_backend == "onnxruntime"
    assert report.pairs == 20
    # the fake FP16 engine runs the float16 typed model the build made: small, non-zero differences
    assert 0 < report.raw.abs_max <= 0.01 * max(1.0, abs(report.raw.ref_at_worst))
    assert report.flips.count == 0 and report.passed
    assert report.metrics["onnx"]["defect_capture"] == report.metrics["engine"]["defect_capture"]
    from changenet_trt.sidecar import read_sidecar

    assert read_sidecar(engine).flags["typed_onnx_made"]["precision"] == "fp16"


@pytest.mark.parametrize("fake_trt", ["10.x"], indirect=True)
def test_engine_of_a_drifted_model_fails_on_flips_through_the_cli(fake_trt, fake_cuda, models, tmp_path, capsys):
    engine = _build_fake_engine(models["drift"], tmp_path, "drift_fp16")
    out = tmp_path / "v.json"
    base = ["validate", engine, "--onnx", models["ref"], "--pairs", "16", "--atol", "100", "--json", str(out)]
    assert main(base) == 1
    text = capsys.readouterr().out
    assert "engine:  {} (tensorrt)".format(engine) in text
    data = json.loads(out.read_text())
    assert data["flips"] > 0 and data["flips"] == len(data["flipped_pairs"])
    assert data["flips_dropped"] == []
    for row in data["flipped_pairs"]:
        assert (row["onnx_score"] > data["cutoff"]) != (row["engine_score"] > data["cutoff"])
    assert main(base + ["--max-flips", str(data["flips"])]) == 0


@pytest.mark.parametrize("fake_trt", ["10.x"], indirect=True)
def test_fp16_io_engine_is_compared_in_float32(fake_trt, fake_cuda, models, tmp_path):
    from fakes.tensorrt import make_fake_engine

    path = tmp_path / "io16.engine"
    path.write_bytes(make_fake_engine(models["ref"], fp16_io=True))
    report = validate.validate(str(path), models["ref"], _synthetic(6))
    assert report.raw.abs_max > 0 and report.passed
