"""The CUDA tier of ``pytest -m gpu``: the real pycuda on any NVIDIA GPU, no TensorRT needed.

It proves the CUDA layer (pinned and device buffers, partial copies, events, graphs, mapped
memory, threads) and the TensorRT runner over real device memory and streams, with the TensorRT
test double as the engine: its ``execute_async_v3`` synchronises the stream, copies the inputs out
of device memory, runs ONNX Runtime and copies the outputs back (so a capture of it fails, which
exercises the CUDA-graph fallback). A no-op engine measures the pipeline against the
host-to-device floor; the figures are printed (and written as JSON to ``$GPU_CHECK_REPORT`` when
set), never asserted.

Skipped with the reason where the real pycuda or a GPU is missing (see gpu_tiers.py).
"""

import ctypes
import json
import os
import sys
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from gpu_tiers import cuda_tier_reason

pytestmark = pytest.mark.gpu

_REASON = cuda_tier_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

import changenet_trt  # noqa: E402
from changenet_trt.gpu import cuda  # noqa: E402
from changenet_trt.runtime.tensorrt import TensorRTRunner  # noqa: E402
from changenet_trt.tools.demo import make_pairs  # noqa: E402

from fakes.engine_files import write_engine  # noqa: E402
from fakes.tensorrt import _runtime as fake_runtime  # noqa: E402
from fakes.tensorrt import make_module  # noqa: E402
from helpers import ort_output, run_in_threads  # noqa: E402

MIB = 1 << 20
PAIR_SHAPE = (3, 512, 128)


@pytest.fixture(scope="module")
def ctx():
    return cuda.primary_context(0)


def fill(array, seed):
    array[...] = np.random.default_rng(seed).standard_normal(array.shape, dtype=np.float32)


def free_memory(ctx):
    with ctx.activate():
        return ctx.driver.mem_get_info()[0]


# -- the CUDA layer ------------------------------------------------------------------------------
def test_pinned_and_device_round_trips_whole_and_partial(ctx):
    host_in, host_out = ctx.pinned((16,) + PAIR_SHAPE, np.float32), ctx.pinned((16,) + PAIR_SHAPE, np.float32)
    device, stream = ctx.device_buffer(host_in.nbytes), ctx.stream()
    start, end = ctx.event(), ctx.event()
    try:
        fill(host_in.array, 1)
        host_out.array[...] = 0
        start.record(stream)
        device.upload(host_in.array, stream)
        device.download(host_out.array, stream)
        end.record(stream)
        end.synchronize()
        assert end.query() and end.ms_since(start) > 0
        np.testing.assert_array_equal(host_out.array, host_in.array)
        host_in.array[:7] += 1
        host_out.array[...] = 0
        device.upload(host_in.array[:7], stream)
        device.download(host_out.array[:7], stream)
        stream.synchronize()
        np.testing.assert_array_equal(host_out.array[:7], host_in.array[:7])
        assert not host_out.array[7:].any()
    finally:
        for item in (start, end, stream):
            item.close()
        for buffer in (device, host_in, host_out):
            buffer.free()


def test_a_graph_of_copies_replays_with_the_buffers_current_contents(ctx):
    host_in, host_out = ctx.pinned((4,) + PAIR_SHAPE, np.float32), ctx.pinned((4,) + PAIR_SHAPE, np.float32)
    device, stream = ctx.device_buffer(host_in.nbytes), ctx.stream()
    try:
        graph = ctx.capture_graph(stream, lambda: (device.upload(host_in.array, stream),
                                                   device.download(host_out.array, stream)))
        for seed in (2, 3):
            fill(host_in.array, seed)
            graph.launch(stream)
            stream.synchronize()
            np.testing.assert_array_equal(host_out.array, host_in.array)
        graph.free()
    finally:
        stream.close()
        for buffer in (device, host_in, host_out):
            buffer.free()


def test_mapped_host_memory_is_read_by_the_device(ctx):
    if not ctx.can_map_host_memory:
        pytest.skip("{} cannot map host memory".format(ctx.name))
    mapped, back = ctx.pinned((2,) + PAIR_SHAPE, np.float32, mapped=True), ctx.pinned((2,) + PAIR_SHAPE, np.float32)
    device, stream = ctx.device_buffer(mapped.nbytes), ctx.stream()
    try:
        fill(mapped.array, 4)
        with ctx.activate():
            ctx.driver.memcpy_dtod(device.address, mapped.device_address, mapped.nbytes)  # read by the device
            ctx.driver.Context.synchronize()
        device.download(back.array, stream)
        stream.synchronize()
        np.testing.assert_array_equal(back.array, mapped.array)
    finally:
        stream.close()
        for buffer in (device, mapped, back):
            buffer.free()


def test_four_threads_use_the_primary_context(ctx):
    def work(seed):
        test_pinned_and_device_round_trips_whole_and_partial(ctx)

    errors = run_in_threads(work, 4)
    assert errors == []


# -- the runner over real device memory, the TensorRT double as the engine ----------------------
class RealMemory:
    """Stands in for the fake device inside the TensorRT double: the engine's work reads and
    writes real device memory (synchronously, after the stream's earlier work)."""

    def __init__(self, ctx, noop=False):
        self.ctx = ctx
        self.name = ctx.name
        self.compute_capability = tuple(ctx.compute_capability)
        self.integrated = ctx.integrated
        self.noop = noop
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.lib.cuStreamSynchronize.argtypes = [ctypes.c_void_p]
        self.lib.cuStreamSynchronize.restype = ctypes.c_int

    def stream(self, handle):
        return SimpleNamespace(enqueue=lambda op: self._run(handle, op))

    def _run(self, handle, op):
        code = self.lib.cuStreamSynchronize(ctypes.c_void_p(handle))  # fails while the stream is capturing
        if code != 0:
            raise RuntimeError("cuStreamSynchronize failed with CUDA error {}".format(code))
        if not self.noop:
            op()

    def view(self, address, nbytes):
        host = np.empty(int(nbytes), np.uint8)
        self.ctx.driver.memcpy_dtoh(host, address)
        view = host.view(DeviceBytes)
        view.address, view.driver = address, self.ctx.driver
        return view


class DeviceBytes(np.ndarray):
    """A host copy of device bytes; assigning into it writes them back to the device."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.driver.memcpy_htod(self.address, np.ascontiguousarray(self).view(np.ndarray))


@pytest.fixture
def real_gpu(ctx, monkeypatch, reference_models, tmp_path):
    """The TensorRT double installed on real memory; ``.engine(variant)`` writes an engine + sidecar."""
    memory = RealMemory(ctx)
    monkeypatch.setattr(fake_runtime, "DEVICE", memory)
    trt = make_module("10.x")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    gpu = SimpleNamespace(trt=trt, device=memory, ctx=ctx)
    gpu.engine = lambda variant="learnable_dynamic", **kw: write_engine(
        tmp_path, gpu, reference_models[variant], name=variant, compute_capability=memory.compute_capability, **kw)
    return gpu


def run_batch(runner, golden, sample, slot=0):
    bufs = runner.input_buffers(len(golden), slot)
    np.copyto(bufs[runner.contract.golden_input], golden)
    np.copyto(bufs[runner.contract.sample_input], sample)
    runner.submit(len(golden), slot)
    return runner.fetch(slot)


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(5)
    golden = rng.normal(0, 1, (32,) + PAIR_SHAPE).astype(np.float32)
    return golden, golden + rng.normal(0, 0.3, golden.shape).astype(np.float32)


def test_batches_on_two_slots_equal_onnxruntime(real_gpu, reference_models, pairs):
    onnx = reference_models["learnable_dynamic"]
    golden, sample = pairs
    with TensorRTRunner(real_gpu.engine()) as runner:
        for index, n in enumerate([1, 7, 16, 32, 3, 32, 16, 7]):
            raw = run_batch(runner, golden[:n], sample[:n], slot=index % 2)
            np.testing.assert_allclose(raw, ort_output(onnx, sample[:n], golden[:n]), rtol=0, atol=1e-5)


def test_zero_copy_on_real_mapped_memory(real_gpu, reference_models, pairs):
    if not real_gpu.ctx.can_map_host_memory:
        pytest.skip("{} cannot map host memory".format(real_gpu.ctx.name))
    onnx = reference_models["euclidean_dynamic"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with TensorRTRunner(real_gpu.engine("euclidean_dynamic"), zero_copy=True) as runner:
            raw = run_batch(runner, pairs[0][:9], pairs[1][:9])
    np.testing.assert_allclose(raw, ort_output(onnx, pairs[1][:9], pairs[0][:9]), rtol=0, atol=1e-5)


def test_fixed_pinned_addresses_and_flat_device_memory_over_600_batches(real_gpu, pairs):
    golden, sample = pairs
    ctx = real_gpu.ctx
    before = free_memory(ctx)
    with TensorRTRunner(real_gpu.engine()) as runner:
        addresses = {s: {k: v.ctypes.data for k, v in runner.input_buffers(32, s).items()} for s in (0, 1)}
        for slot in (0, 1):
            run_batch(runner, golden[:4], sample[:4], slot)
        warm = free_memory(ctx)
        for index in range(600):
            n, slot = (1, 4, 2, 3)[index % 4], index % 2
            bufs = runner.input_buffers(n, slot)
            assert {k: v.ctypes.data for k, v in bufs.items()} == addresses[slot]
            runner.submit(n, slot)
            runner.fetch(slot, copy=False)
        drift = warm - free_memory(ctx)
    print("\n600 batches: device-memory drift {} bytes".format(drift))
    assert drift < 4 * MIB
    assert before - free_memory(ctx) < 4 * MIB


def test_the_api_from_three_threads(real_gpu, reference_models):
    golden, sample, _ = make_pairs(21, seed=4)
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        want = clf.predict(golden, sample).scores
    engine = real_gpu.engine()
    results = {}

    def work(index):
        with changenet_trt.load(engine, batch_size=8) as clf:
            results[index] = clf.predict(golden, sample).scores

    errors = run_in_threads(work, 3)
    assert errors == [] and len(results) == 3
    for scores in results.values():
        np.testing.assert_allclose(scores, want, rtol=0, atol=1e-5)


def test_cuda_graph_capture_falls_back_with_a_warning(real_gpu, reference_models, pairs):
    onnx = reference_models["learnable_dynamic"]
    with TensorRTRunner(real_gpu.engine(), cuda_graph=True) as runner:
        with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
            run_batch(runner, pairs[0][:5], pairs[1][:5])
        assert runner.cuda_graph is False
        raw = run_batch(runner, pairs[0][:5], pairs[1][:5])
    np.testing.assert_allclose(raw, ort_output(onnx, pairs[1][:5], pairs[0][:5]), rtol=0, atol=1e-5)


def _h2d_floor_ms(ctx, nbytes, repeats=50):
    """Median event-timed host-to-device copy of ``nbytes`` from pinned memory, and the pageable
    rate (GB/s) for comparison."""
    pinned = ctx.pinned((nbytes // 4,), np.float32)
    device, stream = ctx.device_buffer(nbytes), ctx.stream()
    start, end = ctx.event(), ctx.event()
    times = []
    try:
        for _ in range(repeats):
            start.record(stream)
            device.upload(pinned.array, stream)
            end.record(stream)
            end.synchronize()
            times.append(end.ms_since(start))
        pageable = np.zeros(nbytes // 4, np.float32)
        with ctx.activate():
            began = time.perf_counter()
            for _ in range(5):
                ctx.driver.memcpy_htod(device.address, pageable)
            pageable_s = (time.perf_counter() - began) / 5
    finally:
        for item in (start, end, stream):
            item.close()
        device.free()
        pinned.free()
    return float(np.median(times)), nbytes / pageable_s / 1e9


def test_no_op_engine_pipeline_against_the_host_to_device_floor(real_gpu, pairs):
    """Reported, not asserted: the runner's batch of 16 pairs against the bare copy of its bytes."""
    real_gpu.device.noop = True
    golden, sample = pairs
    nbytes = 2 * 16 * int(np.prod(PAIR_SHAPE)) * 4
    floor_ms, pageable_gbs = _h2d_floor_ms(real_gpu.ctx, nbytes)
    figures = {}
    for transfers in (True, False):
        with TensorRTRunner(real_gpu.engine(), data_transfers=transfers) as runner:
            for slot in (0, 1):
                run_batch(runner, golden[:16], sample[:16], slot)
            h2d, per_batch = [], []
            began = time.perf_counter()
            for index in range(200):
                runner.submit(16, index % 2)
                runner.fetch(index % 2, copy=False)
                h2d.append(runner.last_timing.h2d_ms)
            per_batch.append((time.perf_counter() - began) * 1000 / 200)
            assert all(np.isfinite(v) for v in h2d)
            figures["transfers" if transfers else "no_transfers"] = {
                "h2d_ms_median": float(np.median(h2d)), "host_ms_per_batch": per_batch[0]}
    report = {
        "gpu": real_gpu.ctx.name,
        "batch_pairs": 16,
        "h2d_floor_ms": floor_ms,
        "pinned_h2d_gb_s": nbytes / (floor_ms * 1e6),
        "pageable_h2d_gb_s": pageable_gbs,
        "runner": figures,
    }
    print("\nno-op engine pipeline: " + json.dumps(report, indent=1))
    if os.environ.get("GPU_CHECK_REPORT"):
        with open(os.environ["GPU_CHECK_REPORT"], "w") as handle:
            json.dump(report, handle, indent=2)
