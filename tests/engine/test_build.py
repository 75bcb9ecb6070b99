"""The engine builder against the strict TensorRT fake, in the 8.5 and 10.x API modes."""

import io
import json
import os
import warnings

import numpy as np
import onnxruntime as ort
import pytest

from changenet_trt.cli import main
from changenet_trt.engine.build import build_engine_file
from changenet_trt.engine.options import BatchProfile, read_layer_patterns
from changenet_trt.engine.plan import make_plan
from changenet_trt.engine.prepare import proof_pairs
from changenet_trt.errors import BuildError, ChangeNetError, DatasetError, DependencyError, InputError
from changenet_trt.gpu.trt import io_tensors, make_logger, profile_shapes
from changenet_trt.sidecar import check_compatible, read_sidecar

from fakes.device import DEVICE
from helpers import build_options

BOTH = pytest.mark.parametrize("fake_trt", ["8.5", "10.x"], indirect=True)
SHAPE = [3, 512, 128]


def _last_build(trt):
    return trt._fake.builds[-1]


@BOTH
def test_fp16_build_records_profile_flags_and_writes_engine_and_sidecar(fake_trt, fake_cuda, reference_models, workdir):
    result = build_engine_file(build_options(reference_models["learnable_dynamic"], workspace_mib=512))
    rec = _last_build(fake_trt)
    assert rec["result"] == "ok"
    shapes = [[1] + SHAPE, [16] + SHAPE, [32] + SHAPE]
    assert rec["profiles"] == [{"input_1": shapes, "input_2": shapes}]
    # 10.x: strongly typed, precision from the float16 model; 8.5: the FP16 flag derived from it
    strongly = not fake_trt.__version__.startswith("8.")
    assert rec["strongly_typed"] == strongly
    assert ("FP16" in rec["flags"]) != strongly and "INT8" not in rec["flags"]
    assert rec["pool_limits"] == {"WORKSPACE": 512 << 20}
    assert rec["profiling_verbosity"] == "DETAILED"
    # 8.x: the ONNX parser needs the explicit-batch flag; 10.x: deprecated, so not passed
    assert rec["explicit_batch_flag"] == (fake_trt.__version__.startswith("8."))
    assert result.typed.made["precision"] == "fp16" and result.typed.path.endswith(".onnx")

    name = os.path.basename(result.engine_path)
    assert name == "learnable_dynamic_fp16_b1-16-32_fake-gpu-orin-sm87_trt{}.engine".format(fake_trt.__version__)
    meta = read_sidecar(result.engine_path)
    assert meta.trt_version == fake_trt.__version__ and meta.precision == "fp16"
    assert meta.gpu_name == "Fake GPU (Orin)" and meta.compute_capability == [8, 7]
    assert meta.profile == {"min": 1, "opt": 16, "max": 32}
    assert meta.profile_shapes["input_2"] == shapes
    assert {t["name"]: t["mode"] for t in meta.tensors} == {"input_1": "input", "input_2": "input", "output": "output"}
    assert meta.output_kind == "learnable" and meta.preprocess == "tao"
    assert meta.engine_sha256 and meta.onnx_sha256 and meta.build_time_s >= 0
    assert check_compatible(meta, trt_version=fake_trt.__version__, compute_capability=(8, 7)).ok


@BOTH
def test_engine_deserializes_and_runs_like_onnxruntime(fake_trt, fake_cuda, reference_models, workdir):
    model = reference_models["euclidean_dynamic"]
    result = build_engine_file(build_options(model, precision="fp32"))
    with open(result.engine_path, "rb") as handle:
        data = handle.read()
    logger = make_logger(fake_trt)
    engine = fake_trt.Runtime(logger).deserialize_cuda_engine(data)
    assert [t["name"] for t in io_tensors(engine)] == ["input_1", "input_2", "output"]
    assert profile_shapes(engine, "input_1") == ((1, 3, 512, 128), (16, 3, 512, 128), (32, 3, 512, 128))

    from changenet_trt.contract import read_contract

    golden, sample = proof_pairs(read_contract(model), 5)
    DEVICE.push_context("test")
    try:
        ctx = engine.create_execution_context()
        addresses = {}
        for name, array in (("input_1", sample), ("input_2", golden)):
            addresses[name] = DEVICE.malloc(array.nbytes)
            DEVICE.view(addresses[name], array.nbytes)[:] = array.reshape(-1).view(np.uint8)
            assert ctx.set_input_shape(name, array.shape)
            assert ctx.set_tensor_address(name, addresses[name])
        assert tuple(ctx.get_tensor_shape("output")) == (5,)
        out = DEVICE.malloc(5 * 4)
        assert ctx.set_tensor_address("output", out)
        stream = DEVICE.create_stream()
        assert ctx.execute_async_v3(stream.handle)
        stream.synchronize()
        got = DEVICE.view(out, 20).view(np.float32).copy()
    finally:
        DEVICE.pop_context()
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(
        None, {"input_1": sample, "input_2": golden})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@BOTH
def test_static_batch_model_is_prepared_before_the_build(fake_trt, fake_cuda, reference_models, workdir):
    result = build_engine_file(build_options(reference_models["learnable_static16"]))
    assert result.plan.rewrite_batch == 16
    assert os.path.isfile(result.plan.prepared_onnx)
    assert result.prepare_report is not None and all(c.ok for c in result.prepare_report.checks)
    assert _last_build(fake_trt)["inputs"]["input_1"] == [-1] + SHAPE
    assert result.metadata.flags["rewritten_static_batch"] == 16


@BOTH
def test_timing_cache_is_saved_and_reused(fake_trt, fake_cuda, reference_models, workdir):
    model = reference_models["learnable_dynamic"]
    first = build_engine_file(build_options(model, output="engines/a.engine"))
    assert not first.timing_cache_hit
    cache = first.plan.timing_cache_path
    assert os.path.isfile(cache) and os.path.dirname(cache) == "engines"
    misses = _last_build(fake_trt)["timing_cache"]["misses"]
    assert misses > 0 and _last_build(fake_trt)["timing_cache"]["hits"] == 0

    second = build_engine_file(build_options(model, output="engines/b.engine"))
    assert second.timing_cache_hit
    assert _last_build(fake_trt)["timing_cache"] == {"hits": misses, "misses": 0, "ignore_mismatch": False}

    build_engine_file(build_options(model, output="engines/c.engine", use_timing_cache=False))
    assert _last_build(fake_trt)["timing_cache"] is None


def test_timing_cache_of_another_tensorrt_is_replaced(fake_trt_factory, fake_cuda, reference_models, workdir):
    model = reference_models["learnable_dynamic"]
    fake_trt_factory("8.5")
    build_engine_file(build_options(model, output="engines/old.engine", timing_cache="engines/shared.cache"))
    trt10 = fake_trt_factory("10.x")
    result = build_engine_file(build_options(model, output="engines/new.engine", timing_cache="engines/shared.cache"))
    assert not result.timing_cache_hit
    assert _last_build(trt10)["timing_cache"]["hits"] == 0


@BOTH
def test_fp32_layers_stay_float32_in_the_typed_model(fake_trt, fake_cuda, reference_models, workdir):
    from changenet_trt.engine.precision import graph_precision

    layers_file = workdir / "layers.txt"
    layers_file.write_text("# from fp16-check\nnode_of_head.rms   # sqrt of a small number\n")
    patterns = read_layer_patterns(["node_of_head.m*", "@" + str(layers_file)])
    result = build_engine_file(build_options(reference_models["learnable_dynamic"], fp32_layers=patterns))
    rec = _last_build(fake_trt)
    expected = {"node_of_head.mean_sq", "node_of_head.rms", "node_of_head.max_abs"}
    held = graph_precision(result.typed.path)
    assert expected <= set(held["fp32_nodes"]) and held["float16"]
    if fake_trt.__version__.startswith("8."):  # 8.x: the typed graph's float32 nodes become layer precision
        assert set(rec["precision_constraints"]) == set(held["fp32_nodes"])
        assert set(rec["precision_constraints"].values()) == {"FLOAT"}
        assert "OBEY_PRECISION_CONSTRAINTS" in rec["flags"] and rec["constraints_mode"] == "obey"
        assert sorted(result.metadata.flags["fp32_layers"]) == sorted(held["fp32_nodes"])
        build_engine_file(build_options(reference_models["learnable_dynamic"], fp32_layers=["node_of_head.rms"],
                                   precision_constraints="prefer", output="engines/p.engine"))
        assert "PREFER_PRECISION_CONSTRAINTS" in _last_build(fake_trt)["flags"]
    else:  # strongly typed: the types say it, no layer precision
        assert rec["precision_constraints"] == {} and rec["strongly_typed"]
        assert result.metadata.flags["fp32_layers"] == []

    with pytest.raises(InputError, match="match no layer: 'LayerNorm\\*'"):
        build_engine_file(build_options(reference_models["learnable_dynamic"], fp32_layers=["LayerNorm*"]))


@BOTH
def test_builder_optimization_level_only_where_supported(fake_trt, fake_cuda, reference_models, workdir, caplog):
    build_engine_file(build_options(reference_models["learnable_dynamic"], opt_level=5))
    rec = _last_build(fake_trt)
    if fake_trt.__version__.startswith("8.5"):
        assert rec["builder_optimization_level"] is None
        assert "no builder optimisation level" in caplog.text
    else:
        assert rec["builder_optimization_level"] == 5


@BOTH
def test_dla_core_with_gpu_fallback(fake_trt, fake_cuda, reference_models, workdir):
    static = BatchProfile(16, 16, 16)  # DLA runs static shapes only
    build_engine_file(build_options(reference_models["learnable_dynamic"], dla_core=1, profile=static))
    rec = _last_build(fake_trt)
    assert rec["default_device_type"] == "DLA" and rec["dla_core"] == 1 and "GPU_FALLBACK" in rec["flags"]
    # the layers DLA cannot run fall back to the GPU; the rest stay on DLA
    assert rec["dla_gpu_fallback_layers"] and rec["dla_layers"]
    with pytest.raises(BuildError, match="no DLA core 2"):
        build_engine_file(build_options(reference_models["learnable_dynamic"], dla_core=2, profile=static))


@BOTH
def test_dla_core_needs_a_static_profile_and_low_precision(fake_trt, fake_cuda, reference_models, workdir, capsys):
    """A dynamic profile would build an engine with every layer on the GPU that claims DLA: refused first."""
    model = reference_models["learnable_dynamic"]
    builds = len(fake_trt._fake.builds)
    for extra, words in ((["--dla-core", "0"], "static batch"), (["--dla-core", "0", "--batch", "1:16:32"], "1:16:32"),
                         (["--dla-core", "0", "--batch", "16", "--fp32"], "FP16 and INT8 only")):
        capsys.readouterr()
        code = main(["build", model, "--quiet", "--proof-pairs", "8"] + extra)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err, (extra, err)
    assert len(fake_trt._fake.builds) == builds and not os.path.exists("engines")
    capsys.readouterr()
    assert main(["build", model, "--dla-core", "0", "--batch", "16", "--print-trtexec", "--trt-version", "10.3.0"]) == 0
    cmd = capsys.readouterr().out.splitlines()[-1].split()
    assert "--useDLACore=0" in cmd and "--allowGPUFallback" in cmd
    assert "--minShapes=input_1:16x3x512x128,input_2:16x3x512x128" in cmd
    assert "--maxShapes=input_1:16x3x512x128,input_2:16x3x512x128" in cmd


@pytest.mark.parametrize("version", ["10.8.0", "10.16.1", "11.0.0", "11.3.0", "11.4.0"])
def test_dla_core_is_refused_where_that_tensorrt_has_no_dla(no_tensorrt, reference_models, workdir, capsys,
                                                            version):
    capsys.readouterr()
    code = main(["build", reference_models["learnable_dynamic"], "--dla-core", "0", "--batch", "16",
                 "--print-trtexec", "--trt-version", version])
    err = capsys.readouterr().err
    assert code == 2 and "has no DLA" in err and err.count("\n") == 1, err
    for version in ("8.5.2", "10.3.0", "10.7.0", "11.4.1"):
        assert main(["build", reference_models["learnable_dynamic"], "--dla-core", "0", "--batch", "16",
                     "--print-trtexec", "--trt-version", version]) == 0, version


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, so tqdm draws on it."""

    def isatty(self) -> bool:
        return True


def test_build_progress_bars_on_a_terminal_only(fake_trt_factory, fake_cuda, reference_models, workdir):
    for mode in ("10.x", "8.5"):
        trt = fake_trt_factory(mode)
        shown = {}
        for name, stream, progress in (("terminal", _Terminal(), True), ("log file", io.StringIO(), True),
                                       ("quiet", _Terminal(), False)):
            build_engine_file(build_options(reference_models["learnable_dynamic"], progress=progress,
                                       output="engines/{}-{}.engine".format(mode, name.replace(" ", ""))),
                              status_stream=stream)
            shown[name] = stream.getvalue()
        monitor = _last_build(trt)["progress"]
        assert "building engine" in shown["terminal"]
        assert shown["log file"] == "" and shown["quiet"] == ""
        if mode == "10.x":  # TensorRT 10's progress monitor drives one bar per phase
            assert monitor[0][0] == "start" and monitor[-1][0] == "finish"
            steps = monitor[0][2]
            assert "Building engine" in shown["terminal"] and "0/{}".format(steps) in shown["terminal"]
        else:
            assert monitor == [] and "Building engine" not in shown["terminal"]


def _calibration_arrays(model, count):
    from changenet_trt.contract import read_contract

    return proof_pairs(read_contract(model), count, seed=3)


@BOTH
def test_int8_calibration_drives_the_calibrator_and_reuses_its_cache(fake_trt, fake_cuda, reference_models, workdir):
    from changenet_trt.engine.calibration import array_batches

    model = reference_models["learnable_dynamic"]
    golden, sample = _calibration_arrays(model, 12)
    opts = build_options(model, precision="int8", profile=BatchProfile(1, 4, 8), int8_calibrator=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # TensorRT 10.1+ deprecations stay inside build
        result = build_engine_file(opts, calibration_batches=array_batches(golden, sample, 4))
    rec = _last_build(fake_trt)
    assert "INT8" in rec["flags"] and "FP16" in rec["flags"]
    calls = [c[0] for c in rec["calibrator_calls"]]
    assert calls == ["get_batch_size", "read_calibration_cache", "get_batch", "get_batch", "get_batch", "get_batch",
                     "write_calibration_cache"]
    assert rec["calibrator_calls"][2] == ("get_batch", ["input_1", "input_2"])
    assert rec["calibration_batches"] == 3 and rec["calibration_batch_size"] == 4
    assert rec["calibration_profile"] == {n: [[4] + SHAPE] * 3 for n in ("input_1", "input_2")}
    cache = result.calibration["cache"]
    assert cache.startswith("calibration" + os.sep) and os.path.isfile(cache)
    header = json.load(open(cache + ".json"))
    assert header["onnx_sha256"] == result.metadata.onnx_sha256 and header["batches"] == 3
    assert header["preprocess"]["preset"] == "tao" and header["input_shape"] == SHAPE
    # the calibrator's device buffers are gone after the build
    assert DEVICE.live_allocations == 0

    build_engine_file(opts)  # no data needed: the matching cache is reused
    assert [c[0] for c in _last_build(fake_trt)["calibrator_calls"]] == ["get_batch_size", "read_calibration_cache"]
    assert _last_build(fake_trt)["calibration_cache"] == "used"


def test_calibration_cache_for_other_preprocessing_or_model_is_refused(fake_trt, fake_cuda, reference_models, workdir):
    from changenet_trt.engine.calibration import array_batches

    model = reference_models["learnable_dynamic"]
    golden, sample = _calibration_arrays(model, 4)
    build_engine_file(build_options(model, precision="int8", profile=BatchProfile(1, 4, 8), calib_cache="calibration/x.cache",
                              int8_calibrator=True),
                 calibration_batches=array_batches(golden, sample, 4))
    with pytest.raises(BuildError, match="made with other preprocessing"):
        build_engine_file(build_options(model, precision="int8", profile=BatchProfile(1, 4, 8),
                              calib_cache="calibration/x.cache", normalization="deepstream", int8_calibrator=True))
    with pytest.raises(BuildError, match="made for another ONNX model"):
        build_engine_file(build_options(reference_models["euclidean_dynamic"], precision="int8",
                              profile=BatchProfile(1, 4, 8), calib_cache="calibration/x.cache",
                              int8_calibrator=True))
    # --recalibrate ignores the mismatch and rebuilds the cache
    build_engine_file(build_options(reference_models["euclidean_dynamic"], precision="int8", profile=BatchProfile(1, 4, 8),
                          calib_cache="calibration/x.cache", recalibrate=True, int8_calibrator=True),
                 calibration_batches=array_batches(golden, sample, 4))
    assert _last_build(fake_trt)["calibration_cache"] == "written"


def test_int8_from_a_tao_csv_uses_the_data_set_pipeline(fake_trt, fake_cuda, reference_models, workdir, capsys):
    from changenet_trt.data.synth import synthesize

    synthesize(str(workdir / "data"), pairs=6, seed=1, size=32, ext=".png")
    assert main(["build", reference_models["euclidean_dynamic"], "--int8", "--int8-calibrator", "--batch", "1:2:4",
                 "--quiet",
                 "--calib-csv", str(workdir / "data" / "dataset.csv"), "--calib-batches", "2", "--ext", ".png",
                 "-o", "engines/int8.engine"]) == 0
    rec = _last_build(fake_trt)
    assert rec["calibration_batches"] == 2
    meta = read_sidecar("engines/int8.engine")
    assert meta.precision == "int8" and meta.flags["calibration"]["batches"] == 2
    header = json.load(open(meta.flags["calibration"]["cache"] + ".json"))
    assert "4 lights stacked along H" in header["preprocess"]["layout"]
    # the next INT8 build of the same model needs no data: the cache is reused
    assert main(["build", reference_models["euclidean_dynamic"], "--int8", "--int8-calibrator", "--batch", "1:2:4",
                 "--quiet",
                 "-o", "engines/again.engine"]) == 0
    assert _last_build(fake_trt)["calibration_cache"] == "used"
    # ... but not with data laid out differently
    assert main(["build", reference_models["euclidean_dynamic"], "--int8", "--int8-calibrator", "--batch", "1:2:4",
                 "--quiet",
                 "--calib-csv", str(workdir / "data" / "dataset.csv"), "--lights", "none",
                 "-o", "engines/other.engine"]) == 2
    assert "was made with other preprocessing" in capsys.readouterr().err


def test_calibration_data_errors_surface(fake_trt, fake_cuda, reference_models, workdir):
    def broken():
        raise DatasetError("image file not found: x.jpg")
        yield  # pragma: no cover

    for legacy in (True, False):
        with pytest.raises(DatasetError, match="x.jpg"):
            build_engine_file(build_options(reference_models["learnable_dynamic"], precision="int8", int8_calibrator=legacy),
                              calibration_batches=broken())
    with pytest.raises(InputError, match="INT8 needs calibration data"):
        build_engine_file(build_options(reference_models["learnable_dynamic"], precision="int8", calib_cache="none.cache",
                                   int8_calibrator=True))
    with pytest.raises(InputError, match="calibrates its Q/DQ model on real pairs.*--calib-csv"):
        build_engine_file(build_options(reference_models["learnable_dynamic"], precision="int8"))


def test_tensorrt_build_failure_is_one_clear_error(fake_trt, fake_cuda, reference_models, workdir):
    fake_trt._fake.settings["fail_build"] = "2: [builder.cpp] Error Code 2: Out of memory (workspace too small)"
    with pytest.raises(BuildError, match="Out of memory"):
        build_engine_file(build_options(reference_models["learnable_dynamic"]))
    assert not os.path.exists("engines/learnable_dynamic_fp16_b1-16-32_fake-gpu-orin-sm87_trt10.3.0.engine")


def test_batch_profile_validation():
    assert BatchProfile.parse("2:8:16") == BatchProfile(2, 8, 16)
    assert BatchProfile.parse("8") == BatchProfile(8, 8, 8)
    for bad in ("0:1:2", "4:2:8", "1:16:8", "a:b:c", "1:2"):
        with pytest.raises(InputError):
            BatchProfile.parse(bad)


# -- the fake is strict: what TensorRT 10 removed is absent, 8.6+ is absent in 8.5 -------------------
REMOVED_IN_10 = {
    "Builder": ["build_engine_file", "max_batch_size", "build_cuda_engine"],
    "IBuilderConfig": ["max_workspace_size", "min_timing_iterations"],
    "ICudaEngine": ["num_bindings", "get_binding_shape", "get_binding_index", "binding_is_input",
                    "get_binding_dtype", "get_profile_shape", "max_batch_size", "has_implicit_batch_dimension"],
    "IExecutionContext": ["execute_async_v2", "execute_async", "execute", "set_binding_shape", "get_binding_shape"],
}


@BOTH
def test_fake_lacks_the_apis_removed_in_10(fake_trt):
    for cls, names in REMOVED_IN_10.items():
        for name in names:
            assert not hasattr(getattr(fake_trt, cls), name), (cls, name)
    config = fake_trt.Builder(make_logger(fake_trt)).create_builder_config()
    with pytest.raises(AttributeError):
        config.max_workspace_size = 1 << 30


def test_fake_85_lacks_86_features_and_10x_has_them(fake_trt_factory):
    old = fake_trt_factory("8.5")
    config = old.Builder(make_logger(old)).create_builder_config()
    assert not hasattr(config, "builder_optimization_level") and not hasattr(config, "progress_monitor")
    assert not hasattr(old, "IProgressMonitor") and not hasattr(old.BuilderFlag, "VERSION_COMPATIBLE")
    with pytest.raises(AttributeError):
        config.builder_optimization_level = 3
    new = fake_trt_factory("10.x")
    config = new.Builder(make_logger(new)).create_builder_config()
    assert hasattr(config, "builder_optimization_level") and hasattr(new, "IProgressMonitor")
    assert not hasattr(new.BuilderFlag, "STRICT_TYPES")
    with pytest.warns(DeprecationWarning, match="10.1"):
        config.int8_calibrator = None


def test_engine_from_another_tensorrt_or_gpu_is_refused_by_the_fake_runtime(fake_trt_factory, reference_models):
    from fakes.tensorrt import make_fake_engine

    trt = fake_trt_factory("10.x")
    runtime = trt.Runtime(make_logger(trt))
    path = reference_models["learnable_dynamic"]
    assert runtime.deserialize_cuda_engine(make_fake_engine(path)) is not None
    assert runtime.deserialize_cuda_engine(make_fake_engine(path, version="8.5.2.2")) is None
    assert "expecting library version 10.3.0 got 8.5.2.2" in trt._fake.log[-1][1]
    assert runtime.deserialize_cuda_engine(make_fake_engine(path, compute_capability=(7, 5))) is None
    assert runtime.deserialize_cuda_engine(make_fake_engine(path)[:-10]) is None
    assert runtime.deserialize_cuda_engine(b"not an engine at all") is None
    assert trt._fake.counters["deserialize_failed"] == 4


# -- CLI: no TensorRT, dry run, trtexec ----------------------------------------------------------------
def test_dry_run_says_the_batch_rewrite_is_refused_without_claiming_a_proof(no_tensorrt, tao_like_models, workdir,
                                                                           capsys):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    assert main(["build", tao_like_models["learnable_static16"], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(23 Reshape, 2 Tile, 2 Where)" in out and "proven" not in out
    model = onnx.load(tao_like_models["euclidean_static16"])
    last = next(n for n in model.graph.node if "output" in n.output)
    last.output[0] = "distance"
    model.graph.initializer.append(numpy_helper.from_array(np.ones(16, np.float32), "row_scale"))
    model.graph.node.append(helper.make_node("Mul", ["distance", "row_scale"], ["output"], name="/row_scale/Mul"))
    onnx.save(model, "row_scale.onnx")
    assert main(["build", "row_scale.onnx", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "static batch 16 -> dynamic: REFUSED, the build will stop here" in out and "'/row_scale/Mul'" in out
    assert "proves it" not in out and "proven" not in out


def test_build_without_tensorrt_is_one_clear_message(no_tensorrt, reference_models, workdir, capsys):
    assert main(["build", reference_models["learnable_dynamic"]]) == DependencyError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "needs the Python module 'tensorrt'" in err and "JetPack" in err and "pip install" in err
    assert not os.path.exists("engines")


def test_dry_run_prints_the_plan_without_tensorrt(no_tensorrt, reference_models, workdir, capsys):
    assert main(["build", reference_models["learnable_static16"], "--dry-run", "--batch", "2:8:16",
                 "--workspace", "1024", "--fp32-layers", "node_of_head.rms"]) == 0
    out = capsys.readouterr().out
    for text in ("static batch 16 -> dynamic", "engines/learnable_static16.dynamic-batch.onnx",
                 "batch min 2 / opt 8 / max 16", "input_1: 2x3x512x128 / 8x3x512x128 / 16x3x512x128",
                 "strongly typed; precision from the typed model", "builder flags:  (none)", "1024 MiB",
                 "node_of_head.rms", "fp16-check and proof on 64 synthetic pairs", "planned as 10.3.0",
                 "engines/learnable_static16_fp16_b2-8-16_gpu-unknown_trt-unknown.engine.json"):
        assert text in out, text
    assert not os.path.exists("engines")  # a dry run writes nothing
    # it says what prepare will do and that it did not prove it
    assert "will rewrite the inputs, the output and 2 use(s) of batch constants (2 Reshape)" in out
    assert "proves it with onnxruntime at batches 1, 3, 16, 17, 32 before it writes" in out
    assert "(not run by --dry-run)" in out and "proven" not in out
    assert main(["build", reference_models["learnable_static16"], "--dry-run", "--trt-version", "8.5.2",
                 "--fp32-layers", "node_of_head.rms"]) == 0
    out = capsys.readouterr().out
    assert "builder flags:  FP16, OBEY_PRECISION_CONSTRAINTS" in out and "weakly typed (TensorRT 8.x)" in out
    assert "the typed model's float32 nodes (obey precision constraints), known once it is made" in out


def test_print_trtexec_follows_the_tensorrt_version(no_tensorrt, reference_models, workdir, capsys):
    model = reference_models["learnable_dynamic"]
    args = ["build", model, "--print-trtexec", "--workspace", "2048", "--opt-level", "4",
            "--fp32-layers", "node_of_head.rms"]
    assert main(args + ["--trt-version", "8.5.2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# engines/learnable_dynamic.fp16-") and "--typed-only" in lines[0]
    old = lines[-1].split()
    assert main(args + ["--trt-version", "10.3.0"]) == 0
    new = capsys.readouterr().out.splitlines()[-1].split()
    assert old[0] == new[0] == "trtexec"
    assert "--memPoolSize=workspace:2048" in old and "--memPoolSize=workspace:2048M" in new
    assert "--buildOnly" in old and "--skipInference" in new
    assert "--builderOptimizationLevel=4" in new and not any(a.startswith("--builderOpt") for a in old)
    for cmd in (old, new):
        assert "--minShapes=input_1:1x3x512x128,input_2:1x3x512x128" in cmd
        assert "--maxShapes=input_1:32x3x512x128,input_2:32x3x512x128" in cmd
        assert not any(a.startswith("--useDLACore") for a in cmd)
        assert not any(a.startswith("--workspace") or a == "--explicitBatch" for a in cmd)
        assert any(a.startswith("--onnx=engines/learnable_dynamic.fp16-") and a.endswith(".onnx") for a in cmd)
    assert "--fp16" in old and "--precisionConstraints=obey" in old and "--stronglyTyped" not in old
    assert "--stronglyTyped" in new and "--fp16" not in new and "--precisionConstraints=obey" not in new
    assert any(a.endswith("_trt8.5.2.engine") for a in old)


def test_plan_refuses_bad_options(reference_models):
    with pytest.raises(ChangeNetError):
        make_plan(build_options(reference_models["learnable_dynamic"], precision="fp8"))
    with pytest.raises(InputError, match="need --int8"):
        build_options(reference_models["learnable_dynamic"], calib_cache="x.cache")
    with pytest.raises(InputError, match="precision fp32"):
        build_options(reference_models["learnable_dynamic"], precision="fp32", calib_csv="x.csv")
    assert main(["build", reference_models["learnable_dynamic"], "--batch", "4:2:8", "--dry-run"]) == 2


# -- sidecar --------------------------------------------------------------------------------------------
def _meta(**kw):
    from changenet_trt.sidecar import EngineMetadata

    base = dict(trt_version="10.3.0", precision="fp16", profile={"min": 1, "opt": 16, "max": 32},
                sample_input="input_1", golden_input="input_2", output="output", output_kind="learnable",
                onnx_sha256="a" * 64, gpu_name="Orin", compute_capability=[8, 7], engine_sha256="b" * 64)
    base.update(kw)
    return EngineMetadata(**base)


def test_sidecar_round_trip_and_refusals(tmp_path):
    from changenet_trt.errors import EngineError
    from changenet_trt.sidecar import sidecar_path, write_sidecar

    engine = str(tmp_path / "m.engine")
    meta = _meta(tensors=[{"name": "input_1", "mode": "input", "shape": [-1, 3, 512, 128], "dtype": "float32"}],
                 flags={"fp32_layers": ["x"]})
    assert write_sidecar(engine, meta) == engine + ".json" == sidecar_path(engine)
    assert read_sidecar(engine) == meta

    with pytest.raises(EngineError, match="no metadata next to the engine"):
        read_sidecar(str(tmp_path / "other.engine"))
    (tmp_path / "bad.engine.json").write_text("{not json")
    with pytest.raises(EngineError, match="cannot read engine metadata"):
        read_sidecar(str(tmp_path / "bad.engine"))
    (tmp_path / "old.engine.json").write_text(json.dumps({"trt_version": "10.3.0"}))
    with pytest.raises(EngineError, match="lacks required fields"):
        read_sidecar(str(tmp_path / "old.engine"))


def test_check_compatible_explains_each_problem():
    meta = _meta()
    assert check_compatible(meta, trt_version="10.3.0.26", compute_capability=(8, 7), gpu_name="Orin").ok
    verdict = check_compatible(meta, trt_version="8.5.2.2", compute_capability=(7, 2), gpu_name="Xavier",
                               onnx_sha256="c" * 64, engine_sha256="d" * 64, preprocess="deepstream")
    text = " | ".join(verdict.problems)
    assert len(verdict.problems) == 5
    for part in ("built with TensorRT 10.3.0 and this is TensorRT 8.5.2.2", "compute capability 8.7",
                 "is compute capability 7.2", "another ONNX model", "replaced or corrupted",
                 "expects 'tao' preprocessing and 'deepstream' was asked for"):
        assert part in text, part
    same_cc = check_compatible(meta, compute_capability=(8, 7), gpu_name="Orin Nano")
    assert same_cc.ok and "tactics were timed on the other GPU" in same_cc.warnings[0]
    with pytest.raises(ChangeNetError, match="cannot be used here"):
        verdict.raise_for_problems("m.engine")


def test_built_engine_loads_through_the_tensorrt_runner(fake_trt, fake_cuda, reference_models, workdir):
    pytest.importorskip("changenet_trt.runtime.tensorrt")
    from changenet_trt.api import load

    model = reference_models["learnable_static16"]
    result = build_engine_file(build_options(model, precision="fp32"))
    rng = np.random.default_rng(0)
    golden = rng.integers(0, 255, size=(5, 512, 128, 3), dtype=np.uint8)
    sample = golden.copy()
    sample[2:, 100:200] = 255
    with load(result.engine_path) as engine_clf, load(model) as onnx_clf:
        got = engine_clf.predict(list(golden), list(sample)).scores
        want = onnx_clf.predict(list(golden), list(sample)).scores
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert fake_trt._fake.counters["executions_run"] >= 1


# -- changenet_trt.gpu.trt helpers -----------------------------------------------------------------------
@BOTH
def test_trt_helpers(fake_trt, caplog):
    import logging

    from changenet_trt.gpu import trt as trtlib

    assert trtlib.version(fake_trt) == trtlib.installed_version()
    assert trtlib.network_flags(fake_trt) == (1 if trtlib.version(fake_trt).major < 10 else 0)
    assert trtlib.at_least(fake_trt, "8.5") and trtlib.has_feature(fake_trt, "Runtime")
    assert trtlib.to_numpy_dtype(fake_trt.DataType.HALF) == np.float16
    assert trtlib.from_numpy_dtype(fake_trt, np.float32) == fake_trt.DataType.FLOAT
    assert trtlib.describe_shape((-1, 3, 512, 128)) == "[?,3,512,128]"
    with pytest.raises(ChangeNetError, match="no numpy equivalent"):
        trtlib.to_numpy_dtype(fake_trt.DataType.FP8 if hasattr(fake_trt.DataType, "FP8") else "BF16")

    logger = trtlib.make_logger(fake_trt)
    assert isinstance(logger, fake_trt.ILogger) and trtlib.make_logger(fake_trt).__class__ is type(logger)
    severity = fake_trt.ILogger.Severity
    with caplog.at_level(logging.DEBUG, logger=trtlib.TRT_LOGGER_NAME):
        logger.log(severity.VERBOSE, "tactic chosen")
        logger.log(severity.INFO, "building")
        logger.log(severity.ERROR, "out of memory")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == trtlib.TRT_LOGGER_NAME]
    assert levels == [(logging.DEBUG, "tactic chosen"), (logging.INFO, "building"), (logging.ERROR, "out of memory")]
    with pytest.raises(BuildError, match="TensorRT failed: set thing; found out of memory"):
        trtlib.check(False, "set thing", BuildError, logger)
    trtlib.check(True, "fine")


def test_missing_tensorrt_is_a_dependency_error(no_tensorrt):
    from changenet_trt.gpu import trt as trtlib

    assert trtlib.installed_version() is None
    with pytest.raises(DependencyError, match="building an engine needs the Python module 'tensorrt'"):
        trtlib.import_tensorrt("building an engine")


@BOTH
def test_unwritable_outputs_are_refused_before_any_work(fake_trt, fake_cuda, reference_models, workdir):
    model = reference_models["learnable_dynamic"]
    (workdir / "a_file").write_text("not a folder")
    builds = len(fake_trt._fake.builds)
    with pytest.raises(InputError, match="cannot make the engine.*is a file, not a folder"):
        build_engine_file(build_options(model, output="a_file/model.engine"))
    with pytest.raises(InputError, match="the engine .* is also an input"):
        build_engine_file(build_options(model, output=model))
    (workdir / "engines" / "cache.engine").mkdir(parents=True)
    with pytest.raises(InputError, match="is a folder"):
        build_engine_file(build_options(model, output="engines/cache.engine"))
    assert len(fake_trt._fake.builds) == builds  # nothing was parsed or built
    assert sorted(p.name for p in (workdir / "engines").iterdir()) == ["cache.engine"]  # no typed model made
