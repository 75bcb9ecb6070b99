"""The typed-model build on TensorRT 8.5, 10.x and 11.x (through the fake): precision comes from
the ONNX graph; the typed model is cached and reused; an INT8 Q/DQ engine runs like ONNX Runtime."""

import os

import numpy as np
import onnxruntime as ort
import pytest

from changenet_trt.cli import main
from changenet_trt.engine.build import build_engine_file
from changenet_trt.engine.options import BatchProfile
from changenet_trt.engine.plan import make_plan
from changenet_trt.engine.precision import read_made
from changenet_trt.errors import DependencyError, InputError
from changenet_trt.files import file_sha256
from changenet_trt.sidecar import read_sidecar

from fakes.device import DEVICE
from helpers import build_options


def _int8_batches(model, count=8, batch=4):
    from changenet_trt.contract import read_contract
    from changenet_trt.engine.calibration import array_batches
    from changenet_trt.engine.prepare import proof_pairs

    golden, sample = proof_pairs(read_contract(model), count, seed=5)
    return array_batches(golden, sample, batch)


def test_11x_sets_no_precision_flag_and_no_calibrator(fake_trt_factory, fake_cuda, reference_models, workdir):
    trt = fake_trt_factory("11.x")
    model = reference_models["learnable_dynamic"]
    for options, batches in ((build_options(model), None),
                             (build_options(model, precision="int8", profile=BatchProfile(1, 4, 8)), _int8_batches(model))):
        result = build_engine_file(options, calibration_batches=batches)
        record = trt._fake.builds[-1]
        assert record["result"] == "ok" and record["strongly_typed"]
        assert set(record["flags"]) == {"TF32"} and record["calibrator_calls"] == []
        assert record["precision_constraints"] == {} and record["output_types"] == {}
        held = record["typed_precision"]
        assert held == ({"float16": True, "qdq": False} if options.precision is None else {"float16": False, "qdq": True})
        meta = read_sidecar(result.engine_path)
        assert meta.flags["builder_flags"] == [] and meta.flags["strongly_typed"]
        assert meta.flags["precision_from"] == "the typed model's ONNX types"
    with pytest.raises(InputError, match="TensorRT 11.4.0 has no INT8 calibrator"):
        build_engine_file(build_options(model, precision="int8", int8_calibrator=True), calibration_batches=_int8_batches(model))


def test_10x_builds_strongly_typed(fake_trt, fake_cuda, reference_models, workdir):
    result = build_engine_file(build_options(reference_models["learnable_dynamic"]))
    record = fake_trt._fake.builds[-1]
    strongly = 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert record["network_flags"] & strongly and record["strongly_typed"]
    assert not {"FP16", "INT8"} & set(record["flags"]) and record["typed_precision"]["float16"]
    assert result.plan.strongly_typed and result.plan.flags == []


@pytest.mark.parametrize("fake_trt", ["8.5"], indirect=True)
def test_85_derives_its_flags_from_the_graph(fake_trt, fake_cuda, reference_models, workdir):
    from changenet_trt.engine.precision import graph_precision

    model = reference_models["learnable_dynamic"]
    fp16 = build_engine_file(build_options(model, fp32_layers=["node_of_head.rms"]))
    record = fake_trt._fake.builds[-1]
    held = graph_precision(fp16.typed.path)
    assert not record["strongly_typed"] and record["network_flags"] == 1  # EXPLICIT_BATCH only
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(record["flags"]) and "INT8" not in record["flags"]
    assert sorted(record["precision_constraints"]) == sorted(held["fp32_nodes"])
    assert "node_of_head.rms" in record["precision_constraints"]
    int8 = build_engine_file(build_options(model, precision="int8", profile=BatchProfile(1, 4, 8)),
                             calibration_batches=_int8_batches(model))
    record = fake_trt._fake.builds[-1]
    assert "INT8" in record["flags"] and "FP16" not in record["flags"] and record["calibrator_calls"] == []
    assert int8.metadata.flags["precision_from"] == "builder flags derived from the typed model"


@pytest.mark.parametrize("mode", ["8.5", "10.x", "11.x"])
def test_int8_qdq_engine_runs_like_onnxruntime_on_the_qdq_model(mode, fake_trt_factory, fake_cuda, reference_models,
                                                                 workdir):
    fake_trt_factory(mode)
    model = reference_models["learnable_dynamic"]
    result = build_engine_file(build_options(model, precision="int8", profile=BatchProfile(1, 4, 8)),
                               calibration_batches=_int8_batches(model))
    assert read_made(result.typed.path)["format"] == "QDQ"
    rng = np.random.default_rng(1)
    golden = rng.normal(size=(4, 3, 512, 128)).astype(np.float32)
    sample = golden + 0.3 * rng.normal(size=golden.shape).astype(np.float32)
    sample[2:] += 1.0
    want = ort.InferenceSession(result.typed.path, providers=["CPUExecutionProvider"]).run(
        None, {"input_1": sample, "input_2": golden})[0]
    got = _run_engine(result.engine_path, golden, sample)
    # 8.x's INT8 flag rounds the fake's outputs through float16; strongly typed engines run the graph's types
    tolerance = 2e-3 if mode == "8.5" else 1e-5
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def _run_engine(path, golden, sample):
    """Raw ``output`` of the engine at ``path`` for one batch (through the fake device)."""
    import tensorrt as trt

    from changenet_trt.gpu.trt import make_logger

    engine = trt.Runtime(make_logger(trt)).deserialize_cuda_engine(open(path, "rb").read())
    DEVICE.push_context("test")
    try:
        ctx = engine.create_execution_context()
        for name, array in (("input_1", sample), ("input_2", golden)):
            address = DEVICE.malloc(array.nbytes)
            DEVICE.view(address, array.nbytes)[:] = array.reshape(-1).view(np.uint8)
            assert ctx.set_input_shape(name, array.shape) and ctx.set_tensor_address(name, address)
        shape = tuple(ctx.get_tensor_shape("output"))
        nbytes = int(np.prod(shape)) * 4
        out = DEVICE.malloc(nbytes)
        assert ctx.set_tensor_address("output", out)
        stream = DEVICE.create_stream()
        assert ctx.execute_async_v3(stream.handle)
        stream.synchronize()
        return DEVICE.view(out, nbytes).view(np.float32).reshape(shape).copy()
    finally:
        DEVICE.pop_context()


def test_typed_model_is_cached_reused_and_invalidated(fake_trt, fake_cuda, reference_models, workdir):
    model = reference_models["learnable_dynamic"]
    first = build_engine_file(build_options(model, output="engines/a.engine"))
    path = first.typed.path
    assert not first.typed.reused and os.path.dirname(path) == "engines"
    assert os.path.basename(path).startswith("learnable_dynamic.fp16-") and path.endswith(".onnx")
    made = read_made(path)
    inputs = made["build_inputs"]
    assert inputs["source_sha256"] == file_sha256(model) and inputs["precision"] == "fp16"
    assert inputs["package"] and inputs["fp32_layers"] == [] and inputs["calibration"] is None
    stamp = os.stat(path).st_mtime_ns
    again = build_engine_file(build_options(model, output="engines/b.engine"))
    assert again.typed.reused and again.typed.path == path and os.stat(path).st_mtime_ns == stamp
    assert make_plan(build_options(model)).typed_ready
    # another float32 list, another proof set or another precision: another typed model
    other = build_engine_file(build_options(model, output="engines/c.engine", fp32_layers=["node_of_head.rms"]))
    assert not other.typed.reused and other.typed.path != path
    assert make_plan(build_options(model, proof_pairs=9)).typed_onnx not in (path, other.typed.path)
    # a typed model whose recorded inputs differ (e.g. another package version) is remade
    plan = make_plan(build_options(model))
    plan_inputs = dict(plan.typed_inputs)
    plan_inputs["package"] = "0.0.0"
    from changenet_trt.engine.typed import typed_model_matches

    assert typed_model_matches(path, plan.typed_inputs) and not typed_model_matches(path, plan_inputs)


def test_a_typed_input_model_builds_as_it_is(fake_trt, fake_cuda, reference_models, workdir):
    model = reference_models["learnable_dynamic"]
    first = build_engine_file(build_options(model, output="engines/a.engine"))
    typed = str(workdir / "typed.onnx")
    with open(first.typed.path, "rb") as src, open(typed, "wb") as dst:
        dst.write(src.read())
    plan = make_plan(build_options(typed))
    assert plan.precision == "fp16" and plan.typed_source == "input" and plan.typed_onnx == typed
    with pytest.raises(InputError, match="already holds fp16 precision"):
        make_plan(build_options(typed, precision="int8"))


def test_dry_run_and_trtexec_per_version(no_tensorrt, reference_models, workdir, capsys):
    model = reference_models["learnable_dynamic"]
    expected = {
        "11.4.0": ("strongly typed; precision from the typed model", "builder flags:  (none)"),
        "10.3.0": ("strongly typed; precision from the typed model", "builder flags:  (none)"),
        "8.5.2": ("weakly typed (TensorRT 8.x)", "builder flags:  FP16"),
    }
    for version, texts in expected.items():
        assert main(["build", model, "--dry-run", "--trt-version", version]) == 0
        out = capsys.readouterr().out
        for text in texts:
            assert text in out, (version, text)
        assert main(["build", model, "--print-trtexec", "--trt-version", version]) == 0
        cmd = capsys.readouterr().out.splitlines()[-1].split()
        onnx_arg = next(a for a in cmd if a.startswith("--onnx="))
        assert onnx_arg.startswith("--onnx=engines/learnable_dynamic.fp16-"), version
        precision_args = {a for a in cmd if a in ("--fp16", "--int8", "--stronglyTyped", "--best")
                          or a.startswith("--calib")}
        assert precision_args == {"11.4.0": set(), "10.3.0": {"--stronglyTyped"}, "8.5.2": {"--fp16"}}[version]
    assert not os.path.exists("engines")
    # the legacy calibrator: refused on 11 with the reason, trtexec --int8 --calib on 10.x
    assert main(["build", model, "--int8", "--int8-calibrator", "--dry-run", "--trt-version", "11.4.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TensorRT 11.4.0 has no INT8 calibrator" in err
    assert main(["build", model, "--int8", "--int8-calibrator", "--print-trtexec", "--trt-version", "10.3.0"]) == 0
    cmd = capsys.readouterr().out.split()
    assert "--int8" in cmd and "--fp16" in cmd and any(a.startswith("--calib=") for a in cmd)
    assert "--stronglyTyped" not in cmd


def test_untested_tensorrt_major_is_refused(fake_trt_factory, reference_models, workdir, capsys):
    from changenet_trt.gpu.trt import check_supported, import_tensorrt, installed_version

    assert str(check_supported("11.4.0")) == "11.4.0" and str(check_supported("8.5.2.2")) == "8.5.2.2"
    for bad in ("12.0.0", "8.4.3"):
        with pytest.raises(DependencyError, match="TensorRT 8.5 to 11.x.*found: {}".format(bad)):
            check_supported(bad)
    fake_trt_factory("11.x", version="12.0.1")
    with pytest.raises(DependencyError, match="TensorRT 12.0.1"):
        import_tensorrt("building a TensorRT engine")
    assert str(installed_version()) == "12.0.1"  # still reported (doctor), only refused for use
    assert main(["build", reference_models["learnable_dynamic"], "--dry-run"]) == DependencyError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorrt>=8.5,<12" in err


def test_typed_only_makes_the_model_without_tensorrt(no_tensorrt, reference_models, workdir, capsys):
    model = reference_models["learnable_dynamic"]
    assert main(["build", model, "--typed-only", "--proof-pairs", "8", "--trt-version", "8.5.2"]) == 0
    out = capsys.readouterr().out
    assert "typed model: engines/learnable_dynamic.fp16-" in out and "made now" in out
    assert "8 synthetic pairs" in out
    assert main(["build", model, "--print-trtexec", "--proof-pairs", "8", "--trt-version", "8.5.2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "--fp16" in lines[0]  # made: no "make it first" comment
