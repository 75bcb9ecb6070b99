import numpy as np
import pytest

import changenet_trt
from changenet_trt.contract import score
from changenet_trt.errors import InputError, ModelContractError
from changenet_trt.tools.demo import make_pairs

from helpers import normalized, ort_output


@pytest.fixture(scope="module")
def pairs():
    golden, sample, truth = make_pairs(37, seed=3)
    return golden, sample, truth, normalized(golden), normalized(sample)


@pytest.mark.parametrize("n", [1, 7, 16, 37])
@pytest.mark.parametrize("variant", ["learnable_dynamic", "euclidean_dynamic", "learnable_static16", "euclidean_rank2"])
def test_array_predictions_equal_direct_onnxruntime(reference_models, pairs, variant, n):
    path = reference_models[variant]
    _, _, _, g, s = pairs
    static = 16 if "static" in variant else None
    kind = "euclidean" if "euclidean" in variant else "learnable"
    expected_raw = ort_output(path, s[:n], g[:n], static_batch=static)
    with changenet_trt.load(path) as clf:
        res = clf.predict(g[:n], s[:n])
    assert res.scores.shape == (n,) and res.scores.dtype == np.float32
    assert res.defects.dtype == bool
    np.testing.assert_allclose(res.raw, expected_raw, rtol=0, atol=1e-5)
    np.testing.assert_allclose(res.scores, score(expected_raw, kind), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(res.defects, res.scores > res.cutoff)


def test_batch_size_changes_chunks_not_results(reference_models, pairs):
    _, _, _, g, s = pairs
    path = reference_models["learnable_dynamic"]
    with changenet_trt.load(path, batch_size=5) as small, changenet_trt.load(path, batch_size=32) as big:
        assert small.batch_size == 5 and big.batch_size == 32
        np.testing.assert_allclose(small.predict(g, s).scores, big.predict(g, s).scores, atol=1e-6)


def test_static_batch_model_refuses_other_batch_size(reference_models):
    with pytest.raises(InputError, match="static batch"):
        changenet_trt.load(reference_models["learnable_static16"], batch_size=8)
    with changenet_trt.load(reference_models["learnable_static16"]) as clf:
        assert clf.batch_size == 16


def test_image_inputs_match_normalised_arrays(reference_models, pairs, tmp_path):
    import cv2

    golden, sample, truth, g, s = pairs
    path = reference_models["learnable_dynamic"]
    files = []
    for i in range(5):
        gp, sp = str(tmp_path / "g{}.png".format(i)), str(tmp_path / "s{}.png".format(i))
        cv2.imwrite(gp, cv2.cvtColor(golden[i], cv2.COLOR_RGB2BGR))
        cv2.imwrite(sp, cv2.cvtColor(sample[i], cv2.COLOR_RGB2BGR))
        files.append((gp, sp))
    with changenet_trt.load(path) as clf:
        from_arrays = clf.predict(g[:5], s[:5]).scores
        from_paths = clf.predict([f[0] for f in files], [f[1] for f in files]).scores
        from_uint8 = clf.predict(golden[:5], sample[:5]).scores
        from_stack = clf.predict(np.stack(golden[:5]), np.stack(sample[:5])).scores
    np.testing.assert_allclose(from_paths, from_arrays, atol=1e-5)
    np.testing.assert_allclose(from_uint8, from_arrays, atol=1e-5)
    np.testing.assert_allclose(from_stack, from_arrays, atol=1e-5)


def test_reference_model_separates_changed_pairs(reference_models, pairs):
    _, _, truth, g, s = pairs
    for variant in ("learnable_dynamic", "euclidean_dynamic"):
        with changenet_trt.load(reference_models[variant]) as clf:
            res = clf.predict(g, s)
        assert res.scores[truth].min() > res.scores[~truth].max(), variant
        np.testing.assert_array_equal(res.defects, truth)


def test_cutoff_default_and_override(reference_models, pairs):
    _, _, _, g, s = pairs
    path = reference_models["euclidean_dynamic"]
    with changenet_trt.load(path) as clf:
        assert clf.cutoff == clf.contract.recommended_cutoff
        scores = clf.predict(g[:4], s[:4]).scores
    with changenet_trt.load(path, cutoff=-1.0) as clf:
        assert clf.predict(g[:4], s[:4]).defects.all()
    with changenet_trt.load(path, cutoff=float(scores.max())) as clf:
        assert not clf.predict(g[:4], s[:4]).defects.any()  # strictly greater


def test_float16_and_float64_arrays_are_accepted(reference_models, pairs):
    _, _, _, g, s = pairs
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        ref = clf.predict(g[:3], s[:3]).scores
        np.testing.assert_allclose(clf.predict(g[:3].astype(np.float64), s[:3].astype(np.float64)).scores, ref, atol=1e-6)
        np.testing.assert_allclose(clf.predict(g[:3].astype(np.float16), s[:3].astype(np.float16)).scores, ref, atol=2e-2)


@pytest.mark.parametrize(
    "golden, sample, fragment",
    [
        (np.zeros((3, 3, 512, 128), np.float32), np.zeros((2, 3, 512, 128), np.float32), "same number"),
        (np.zeros((2, 3, 256, 256), np.float32), np.zeros((2, 3, 256, 256), np.float32), "wrong shape"),
        (np.zeros((2, 3, 512, 128), np.int32), np.zeros((2, 3, 512, 128), np.int32), "wrong dtype"),
        (np.zeros((0, 3, 512, 128), np.float32), np.zeros((0, 3, 512, 128), np.float32), "empty"),
        ([], [], "no images"),
        (12, 13, "array or a sequence"),
        ([np.zeros((4, 4), np.float32)], [np.zeros((4, 4), np.float32)], "not an image array"),
        ([1.5], [2.5], "unsupported type"),
    ],
)
def test_bad_inputs_raise_clear_errors(reference_models, golden, sample, fragment):
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        with pytest.raises(InputError) as err:
            clf.predict(golden, sample)
    assert fragment in str(err.value)


def test_nan_and_inf_are_refused_with_the_pair_index(reference_models):
    g = np.zeros((4, 3, 512, 128), np.float32)
    s = g.copy()
    s[2, 1, 10, 10] = np.nan
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        with pytest.raises(InputError, match="NaN or Inf.*pair 2"):
            clf.predict(g, s)
        g[0, 0, 0, 0] = np.inf
        with pytest.raises(InputError, match="golden array holds NaN or Inf.*pair 0"):
            clf.predict(g, g, check_inputs=True)
        with pytest.raises(InputError, match="golden array holds NaN or Inf.*pair 0"):
            clf.predict(g, g)  # found through the output, then named by scanning that pair


def test_float64_beyond_float32_is_refused_like_nan(reference_models):
    g = np.zeros((3, 3, 512, 128), np.float64)
    s = g.copy()
    s[1, 0, 5, 5] = 1e39
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        with pytest.raises(InputError, match="sample array holds NaN, Inf or values beyond the model's float32 "
                                             "range.*pair 1"):
            clf.predict(g, s)
        g[2, 2, 2, 2] = np.nan
        with pytest.raises(InputError, match="golden array .*pair 2"):
            clf.predict(g, g)
        assert clf.predict(g[:2], g[:2]).scores.shape == (2,)


def test_missing_image_file_names_the_path(reference_models, tmp_path):
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        with pytest.raises(InputError, match="nope.png"):
            clf.predict([str(tmp_path / "nope.png")], [str(tmp_path / "nope.png")])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        with pytest.raises(InputError, match="cannot decode image .*corrupt.png"):
            clf.predict([str(corrupt)], [str(corrupt)])


def test_load_refuses_unknown_suffix_and_backend(tmp_path, reference_models):
    with pytest.raises(InputError, match="cannot tell the model format"):
        changenet_trt.load(str(tmp_path / "model.bin"))
    with pytest.raises(InputError, match="unknown backend"):
        changenet_trt.load(reference_models["learnable_dynamic"], backend="tflite")
    with pytest.raises(InputError, match="unknown option"):
        changenet_trt.load(reference_models["learnable_dynamic"], gpu_id=3)
    with pytest.raises(ModelContractError):
        changenet_trt.load(str(tmp_path / "absent.onnx"))


def test_make_runner_takes_the_options_the_runner_class_declares(reference_models, monkeypatch):
    import inspect

    from changenet_trt.api import RUNNERS, make_runner

    for backend in ("onnxruntime", "tensorrt", "triton"):
        cls = RUNNERS[backend]
        params = inspect.signature(cls.__init__).parameters
        assert list(params)[2:4] == ["names", "max_batch"], backend  # Runner(path, names, max_batch, **options)
        keyword_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert cls.OPTIONS == keyword_only, backend
    path = reference_models["learnable_dynamic"]
    cls = RUNNERS["onnxruntime"]
    monkeypatch.setattr(cls, "OPTIONS", frozenset({"providers"}))
    with pytest.raises(InputError, match="unknown option for the onnxruntime backend") as err:
        make_runner(path, threads=1)
    assert "expected ['providers']" in str(err.value) and "found ['threads']" in str(err.value)


def test_unavailable_provider_is_refused(reference_models):
    import onnxruntime as ort

    missing = [p for p in ("tensorrt", "cuda") if {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}[p] not in ort.get_available_providers()]
    if not missing:
        pytest.skip("every GPU execution provider is installed here")
    with pytest.raises(InputError, match="not available") as err:
        changenet_trt.load(reference_models["learnable_dynamic"], providers=[missing[0]])
    assert "CPUExecutionProvider" in str(err.value)


def test_runner_infer_dict_interface(reference_models, pairs):
    from changenet_trt.api import make_runner

    _, _, _, g, s = pairs
    path = reference_models["learnable_dynamic"]
    with make_runner(path, threads=1) as runner:
        out = runner.infer({"input_1": s[:3], "input_2": g[:3]})
        assert set(out) == {"output"}
        np.testing.assert_allclose(out["output"], ort_output(path, s[:3], g[:3]), atol=1e-5)
        with pytest.raises(InputError, match="feed does not match"):
            runner.infer({"input_1": s[:3]})
        with pytest.raises(InputError, match="outside"):
            runner.input_buffers(17)
        with pytest.raises(InputError, match="nothing was submitted"):
            runner.fetch(1)
    with pytest.raises(Exception, match="not active"):
        runner.input_buffers(1)


def test_runner_buffers_are_reused_not_reallocated(reference_models):
    from changenet_trt.api import make_runner

    with make_runner(reference_models["learnable_dynamic"]) as runner:
        first = runner.input_buffers(4, slot=0)["input_1"]
        second = runner.input_buffers(9, slot=0)["input_1"]
        other = runner.input_buffers(4, slot=1)["input_1"]
        assert np.shares_memory(first, second) and not np.shares_memory(first, other)
        assert first.flags.c_contiguous and second.flags.c_contiguous


def test_prediction_reports_throughput(reference_models, pairs):
    _, _, _, g, s = pairs
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        res = clf.predict(g, s)
    assert len(res) == 37 and res.seconds > 0 and res.pairs_per_s > 0
    assert "onnxruntime" in repr(clf) or "Classifier" in repr(clf)


def test_a_bad_image_mid_run_leaves_the_classifier_usable(reference_models, pairs, tmp_path):
    import cv2

    golden, sample, _, g, s = pairs
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    good = []
    for i in range(3):
        path = str(tmp_path / "img{}.png".format(i))
        cv2.imwrite(path, cv2.cvtColor(golden[i], cv2.COLOR_RGB2BGR))
        good.append(path)
    # 20 pairs at batch 8: the corrupt image sits in the third batch, after two were queued
    files = [good[i % 3] for i in range(20)]
    broken = list(files)
    broken[18] = str(corrupt)
    with changenet_trt.load(reference_models["learnable_dynamic"], batch_size=8) as clf:
        with pytest.raises(InputError, match="corrupt.png"):
            clf.predict(files, broken)
        again = clf.predict(g[:20], s[:20]).scores  # uses both slots again
    with changenet_trt.load(reference_models["learnable_dynamic"], batch_size=8) as fresh:
        ref = fresh.predict(g[:20], s[:20]).scores
    np.testing.assert_allclose(again, ref, atol=1e-6)
