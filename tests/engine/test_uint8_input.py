"""uint8 input: normalisation moved into the graph gives the float path's scores on real pairs."""

import numpy as np
import onnx
import pytest

from changenet_trt.api import load
from changenet_trt.contract import read_contract
from changenet_trt.data.preprocess import PRESETS, write_normalized
from changenet_trt.data.synth import synthesize
from changenet_trt.engine.prepare import META_UINT8_NORMALIZATION, add_uint8_input
from changenet_trt.errors import BuildError, InputError
from changenet_trt.evaluation.evaluate import evaluate
from changenet_trt.tools.demo import make_pairs


@pytest.mark.parametrize("preset", ["tao", "deepstream"])
@pytest.mark.parametrize("variant", ["learnable_dynamic", "euclidean_static16"])
def test_uint8_model_predicts_the_float_models_scores(tmp_path, reference_models, variant, preset):
    source = reference_models[variant]
    report = add_uint8_input(source, str(tmp_path / "u8.onnx"), normalization=preset)
    contract = read_contract(report.output)
    assert contract.input_dtype == "uint8"
    assert contract.static_batch == read_contract(source).static_batch
    assert contract.preprocess == preset
    assert META_UINT8_NORMALIZATION in contract.extra
    golden, sample, truth = make_pairs(12, seed=3)
    with load(source, normalization=preset) as float_clf, load(report.output) as uint8_clf:
        expected = float_clf.predict(golden, sample)
        got = uint8_clf.predict(golden, sample)
        buffers = uint8_clf.runner.input_buffers(2)
        assert buffers[contract.golden_input].dtype == np.uint8
    # the graph's Cast/Mul/Add are the host's own float32 operations: equal scores
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6, atol=1e-7)
    assert (got.defects == expected.defects).all()
    assert got.defects.any() and not got.defects.all()


def test_uint8_model_evaluates_a_dataset_like_the_float_model(tmp_path, reference_models):
    data = synthesize(str(tmp_path / "data"), pairs=24, defect_rate=0.5, seed=5)
    u8 = add_uint8_input(reference_models["learnable_dynamic"], str(tmp_path / "u8.onnx")).output
    float_run = evaluate(reference_models["learnable_dynamic"], data.csv_path, out_dir=None, progress=False)
    uint8_run = evaluate(u8, data.csv_path, out_dir=None, progress=False)
    np.testing.assert_allclose(uint8_run.scores, float_run.scores, rtol=1e-6, atol=1e-7)
    assert uint8_run.summary["fpr"] == float_run.summary["fpr"]
    assert uint8_run.summary["defect_capture"] == float_run.summary["defect_capture"]


def test_uint8_destination_gets_rgb_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
    dst = np.zeros((3, 8, 6), dtype=np.uint8)
    write_normalized(dst, rgb, PRESETS["tao"], bgr=False)
    assert (dst == rgb.transpose(2, 0, 1)).all()
    write_normalized(dst, rgb[:, :, ::-1].copy(), PRESETS["tao"], bgr=True)
    assert (dst == rgb.transpose(2, 0, 1)).all()
    resized = np.zeros((3, 4, 3), dtype=np.uint8)
    write_normalized(resized, rgb, bgr=False)  # resized in float32, rounded back to pixels
    assert resized.max() <= rgb.max() and resized.min() >= rgb.min()
    with pytest.raises(InputError, match="float32, float16 or uint8"):
        write_normalized(np.zeros((3, 8, 6), dtype=np.int16), rgb)


def test_uint8_refuses_a_uint8_model_and_keeps_the_output_untouched(tmp_path, reference_models):
    first = add_uint8_input(reference_models["learnable_dynamic"], str(tmp_path / "u8.onnx")).output
    with pytest.raises(BuildError, match="already takes uint8"):
        add_uint8_input(first, str(tmp_path / "again.onnx"))
    assert not (tmp_path / "again.onnx").exists()
    assert onnx.load(first).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
