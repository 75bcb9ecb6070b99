"""The TensorRT tier of ``pytest -m gpu``: the runner checks of tests/runtime/test_tensorrt_runner.py against a
real GPU, TensorRT and pycuda, and the realistic (FAN-size) model through validate and bench.

Skipped with the reason without them (every development and CI machine; see gpu_tiers.py); on
a Jetson or a GPU host run ``scripts/gpu-check.sh`` or ``pytest -m gpu``. Engines are built once
per module with ``changenet_trt.engine.build``; memory is checked with the driver's free-memory
counter.
"""

import json

import numpy as np
import pytest

from gpu_tiers import tensorrt_tier_reason

pytestmark = pytest.mark.gpu


_REASON = tensorrt_tier_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

import changenet_trt  # noqa: E402
from changenet_trt.engine.build import build_engine_file  # noqa: E402
from changenet_trt.engine.options import BatchProfile, BuildOptions  # noqa: E402
from changenet_trt.errors import EngineError, InputError  # noqa: E402
from changenet_trt.gpu import cuda  # noqa: E402
from changenet_trt.runtime.tensorrt import TensorRTRunner  # noqa: E402
from changenet_trt.tools.demo import make_pairs  # noqa: E402

from helpers import ort_output, random_pair_arrays, run_in_threads  # noqa: E402

MIB = 1 << 20


@pytest.fixture(scope="module")
def engines(reference_models, tmp_path_factory):
    """``{(variant, precision): engine path}`` built on this GPU."""
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for variant in ("learnable_dynamic", "euclidean_dynamic"):
        for precision in ("fp32", "fp16"):
            options = BuildOptions(
                model=reference_models[variant],
                output=str(root / "{}_{}.engine".format(variant, precision)),
                precision=precision,
                profile=BatchProfile(1, 16, 32),
                engines_dir=str(root),
                progress=False,
            )
            out[(variant, precision)] = build_engine_file(options).engine_path
    return out


@pytest.fixture(scope="module")
def data():
    return random_pair_arrays()


def free_memory():
    ctx = cuda.primary_context()
    with ctx.activate():
        return ctx.driver.mem_get_info()[0]


def run_batch(runner, golden, sample, slot=0):
    n = len(golden)
    bufs = runner.input_buffers(n, slot=slot)
    np.copyto(bufs[runner.contract.golden_input], golden, casting="same_kind")
    np.copyto(bufs[runner.contract.sample_input], sample, casting="same_kind")
    runner.submit(n, slot=slot)
    return runner.fetch(slot)


# FP32 engines may use TF32 on Ampere and later; FP16 engines round activations.
TOLERANCE = {"fp32": 2e-3, "fp16": 3e-2}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_batches_and_mixed_sizes_equal_onnxruntime(engines, reference_models, data, precision, cuda_graph):
    onnx = reference_models["learnable_dynamic"]
    golden, sample = data
    with TensorRTRunner(engines[("learnable_dynamic", precision)], cuda_graph=cuda_graph) as runner:
        for index, n in enumerate([1, 7, 16, 32, 3, 32, 16, 7, 7]):
            raw = run_batch(runner, golden[:n], sample[:n], slot=index % 2)
            want = ort_output(onnx, sample[:n], golden[:n])
            np.testing.assert_allclose(raw, want, rtol=TOLERANCE[precision], atol=TOLERANCE[precision])
            timing = runner.last_timing
            assert all(np.isfinite(v) and v >= 0 for v in (timing.h2d_ms, timing.compute_ms, timing.d2h_ms))


def test_zero_copy_on_integrated_gpus(engines, reference_models, data):
    ctx = cuda.primary_context()
    if not ctx.integrated:
        pytest.skip("zero-copy is for integrated GPUs; {} is discrete".format(ctx.name))
    onnx = reference_models["euclidean_dynamic"]
    with TensorRTRunner(engines[("euclidean_dynamic", "fp32")], zero_copy=True) as runner:
        raw = run_batch(runner, data[0][:9], data[1][:9])
    np.testing.assert_allclose(raw, ort_output(onnx, data[1][:9], data[0][:9]), rtol=2e-3, atol=2e-3)


def test_pinned_buffers_stay_and_memory_stays_flat(engines, data):
    golden, sample = data
    before_load = free_memory()
    with TensorRTRunner(engines[("euclidean_dynamic", "fp16")]) as runner:
        addresses = {s: {k: v.ctypes.data for k, v in runner.input_buffers(32, slot=s).items()} for s in (0, 1)}
        for slot in (0, 1):
            run_batch(runner, golden[:16], sample[:16], slot=slot)
        warm = free_memory()
        for index in range(2000):
            n = (1, 16, 7, 32)[index % 4]
            slot = index % 2
            bufs = runner.input_buffers(n, slot=slot)
            assert {k: v.ctypes.data for k, v in bufs.items()} == addresses[slot]
            runner.submit(n, slot=slot)
            runner.fetch(slot, copy=False)
        assert warm - free_memory() < 4 * MIB
    assert before_load - free_memory() < 4 * MIB  # everything given back


def test_outside_the_profile_and_bad_engines_are_refused(engines, data, tmp_path):
    path = engines[("learnable_dynamic", "fp32")]
    with pytest.raises(InputError, match="optimisation profile"):
        TensorRTRunner(path, max_batch=64)
    with TensorRTRunner(path) as runner:
        with pytest.raises(InputError, match="outside"):
            runner.input_buffers(33)
    junk = tmp_path / "junk.engine"
    junk.write_bytes(b"not an engine" * 100)
    with pytest.raises(EngineError, match="cannot load"):
        TensorRTRunner(str(junk))
    plan = open(path, "rb").read()
    cut = tmp_path / "cut.engine"
    cut.write_bytes(plan[: len(plan) // 2])
    with pytest.raises(EngineError):
        TensorRTRunner(str(cut))
    other = tmp_path / "other.engine"
    other.write_bytes(plan)
    meta = json.load(open(path + ".json"))
    meta["trt_version"] = "7.2.3"
    json.dump(meta, open(str(other) + ".json", "w"))
    with pytest.raises(EngineError, match="TensorRT 7.2.3"):
        TensorRTRunner(str(other))


def test_threads_and_the_api(engines, reference_models):
    golden, sample, _ = make_pairs(21, seed=4)
    onnx = reference_models["learnable_dynamic"]
    with changenet_trt.load(onnx) as clf:
        want = clf.predict(golden, sample).scores
    results = {}

    def work(index):
        with changenet_trt.load(engines[("learnable_dynamic", "fp16")], batch_size=8) as clf:
            results[index] = clf.predict(golden, sample).scores

    errors = run_in_threads(work, 3)
    assert errors == []
    for scores in results.values():
        np.testing.assert_allclose(scores, want, rtol=1e-2, atol=1e-2)


def test_realistic_model_fp16_through_validate_and_bench(tmp_path):
    """The FAN-size realistic model built at FP16: validate against ONNX Runtime, then the
    trtexec-style benchmark (its numbers are printed for the check's report)."""
    from changenet_trt.data.pairs import synthetic_source
    from changenet_trt.evaluation.validate import validate
    from changenet_trt.models.realistic import write_realistic_model
    from changenet_trt.tools.bench import BenchOptions, run_benchmark

    onnx = write_realistic_model(str(tmp_path / "realistic.onnx"))
    options = BuildOptions(model=onnx, output=str(tmp_path / "realistic_fp16.engine"), precision="fp16",
                           profile=BatchProfile(1, 16, 16), engines_dir=str(tmp_path), progress=False)
    engine = build_engine_file(options).engine_path
    report = validate(engine, onnx, lambda contract, norm: synthetic_source(64, contract.input_shape, norm, seed=3),
                      backend="tensorrt")
    assert report.passed, report.failures
    result = run_benchmark(engine, BenchOptions(batch=16, duration_s=2.0, warmup_ms=200.0, iterations=10),
                           backend="tensorrt")
    assert result.fps > 0
    latency = result.stats("latency")
    print("\nrealistic FP16: max |diff| {:.3g} raw, {} flips; {:.1f} pairs/s, latency median {:.3g} ms".format(
        report.raw.abs_max, report.flips.count, result.fps, latency.median))
