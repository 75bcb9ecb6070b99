"""The TensorRT runner against the strict fakes: fake tensorrt (8.5 and 10.x) + fake pycuda.

The fake engine runs its embedded ONNX model with ONNX Runtime on the bytes in fake device
memory when the stream is synchronised, so every number here is checked against ONNX Runtime
run directly on the same inputs.
"""

import hashlib
import logging
import threading
import warnings

import numpy as np
import pytest

import changenet_trt
from changenet_trt.contract import ContractNames, read_contract, score
from changenet_trt.errors import DependencyError, EngineError, InputError, ModelContractError
from changenet_trt.runtime.tensorrt import TensorRTRunner
from changenet_trt.sidecar import read_sidecar, write_sidecar
from changenet_trt.tools.demo import make_pairs

from fakes.engine_files import write_engine
from helpers import normalized, ort_output, random_pair_arrays, run_in_threads

MODES = ["8.5", "10.x"]


@pytest.fixture(params=MODES)
def gpu(request, fake_trt_factory, fake_cuda):
    """Fake TensorRT of one mode + fake pycuda on one fresh fake GPU."""
    fake_cuda.trt = fake_trt_factory(request.param)
    fake_cuda.mode = request.param
    return fake_cuda


@pytest.fixture
def gpu10(fake_trt_factory, fake_cuda):
    fake_cuda.trt = fake_trt_factory("10.x")
    fake_cuda.mode = "10.x"
    return fake_cuda


@pytest.fixture(scope="module")
def data():
    return random_pair_arrays()


def expected(onnx_path, golden, sample, static=None):
    return ort_output(onnx_path, sample, golden, static_batch=static)


def run_batch(runner, golden, sample, slot=0, copy=True):
    n = len(golden)
    bufs = runner.input_buffers(n, slot=slot)
    np.copyto(bufs[runner.contract.golden_input], golden, casting="same_kind")
    np.copyto(bufs[runner.contract.sample_input], sample, casting="same_kind")
    runner.submit(n, slot=slot)
    return runner.fetch(slot=slot, copy=copy)


def assert_clean(gpu):
    assert gpu.device.summary() == {"device_allocations": 0, "pinned_buffers": 0, "streams": 0}
    assert gpu.device.live_events == 0
    assert gpu.libcuda.live == 0
    assert gpu.driver.cleanup_failures == []


# -- numbers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 16, 32])
def test_batches_equal_onnxruntime(gpu, tmp_path, reference_models, data, n):
    onnx = reference_models["learnable_dynamic"]
    golden, sample = data[0][:n], data[1][:n]
    with TensorRTRunner(write_engine(tmp_path, gpu, onnx)) as runner:
        assert runner.batch_range == (1, 32) and runner.preferred_batch == 16
        raw = run_batch(runner, golden, sample)
    np.testing.assert_allclose(raw, expected(onnx, golden, sample), rtol=0, atol=1e-5)
    assert_clean(gpu)


def test_mixed_sizes_pipelined_over_both_slots(gpu, tmp_path, reference_models, data):
    onnx = reference_models["euclidean_dynamic"]
    golden, sample = data
    sizes = [3, 32, 1, 16, 7, 7, 20, 2, 32, 5]
    starts = np.cumsum([0] + sizes[:-1]) % 8
    with TensorRTRunner(write_engine(tmp_path, gpu, onnx)) as runner:
        outputs = []
        pending = []
        for index, (lo, n) in enumerate(zip(starts, sizes)):
            slot = index % 2
            bufs = runner.input_buffers(n, slot=slot)
            bufs["input_2"][...] = golden[lo:lo + n]
            bufs["input_1"][...] = sample[lo:lo + n]
            runner.submit(n, slot=slot)
            pending.append(slot)
            if len(pending) == 2:  # keep two batches in flight, as the pipeline does
                outputs.append(runner.fetch(pending.pop(0)))
        outputs.append(runner.fetch(pending.pop(0)))
    for (lo, n), raw in zip(zip(starts, sizes), outputs):
        assert raw.shape == (n,)
        np.testing.assert_allclose(raw, expected(onnx, golden[lo:lo + n], sample[lo:lo + n]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["euclidean_rank2", "learnable_static16"])
def test_output_kinds_and_static_engines(gpu, tmp_path, reference_models, data, variant):
    onnx = reference_models[variant]
    static = 16 if "static" in variant else None
    golden, sample = data[0][:16], data[1][:16]
    with TensorRTRunner(write_engine(tmp_path, gpu, onnx)) as runner:
        assert runner.contract.output_kind == read_contract(onnx).output_kind
        full = run_batch(runner, golden, sample)
        partial = run_batch(runner, golden[:5], sample[:5], slot=1)
    np.testing.assert_allclose(full, expected(onnx, golden, sample, static), rtol=0, atol=1e-5)
    np.testing.assert_allclose(partial, expected(onnx, golden[:5], sample[:5], static), rtol=0, atol=1e-5)
    if static:
        assert partial.shape[0] == 5


def test_fp16_io_engine(gpu, tmp_path, reference_models, data):
    onnx = reference_models["learnable_dynamic"]
    golden, sample = data[0][:9], data[1][:9]
    with TensorRTRunner(write_engine(tmp_path, gpu, onnx, fp16_io=True, fp16=True)) as runner:
        assert runner.contract.input_dtype == "float16"
        bufs = runner.input_buffers(9)
        assert all(b.dtype == np.float16 for b in bufs.values())
        raw = run_batch(runner, golden, sample)
    assert raw.dtype == np.float16
    ref = expected(onnx, golden.astype(np.float16).astype(np.float32), sample.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(raw.astype(np.float32), ref, rtol=2e-3, atol=2e-2)
    np.testing.assert_allclose(score(raw, "learnable"), score(ref, "learnable"), atol=2e-3)


def test_results_are_copies_unless_views_are_asked_for(gpu10, tmp_path, reference_models, data):
    golden, sample = data[0][:4], data[1][:4]
    with TensorRTRunner(write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])) as runner:
        copy = run_batch(runner, golden, sample)
        view = run_batch(runner, golden, sample, copy=False)
        assert not np.shares_memory(copy, view)
        assert np.shares_memory(view, runner._slots[0].host["output"].array)
        np.testing.assert_array_equal(copy, view)
        kept = copy.copy()
        run_batch(runner, golden[::-1].copy(), sample, copy=False)
        np.testing.assert_array_equal(copy, kept)  # the copy does not change with the buffer


# -- buffers and allocation -------------------------------------------------------------------------
def test_no_allocation_after_warm_up_and_shapes_only_on_change(gpu, tmp_path, reference_models, data):
    golden, sample = data
    with TensorRTRunner(write_engine(tmp_path, gpu, reference_models["learnable_dynamic"])) as runner:
        for slot in (0, 1):
            run_batch(runner, golden[:16], sample[:16], slot=slot)
        counts = dict(gpu.device.counts)
        trt_counts = gpu.trt._fake.counters
        shapes_before = trt_counts["set_input_shape"]
        for slot in (0, 1, 0, 1):
            run_batch(runner, golden[:16], sample[:16], slot=slot)
        assert trt_counts["set_input_shape"] == shapes_before  # same batch: no new shapes
        for n in (7, 7, 32, 1, 16):
            run_batch(runner, golden[:n], sample[:n], slot=n % 2)
        assert trt_counts["set_input_shape"] == shapes_before + 2 * 4  # two inputs x four changes
        after = gpu.device.counts
        for key in ("device_alloc", "pinned_alloc", "stream_create", "event_create", "device_free", "pinned_free"):
            assert after[key] == counts[key], key
        assert after["htod"] - counts["htod"] == 2 * 9 and after["dtoh"] - counts["dtoh"] == 9
        assert gpu.trt._fake.counters["contexts"] == 1


def test_pinned_buffers_are_never_rebound(gpu, tmp_path, reference_models, data):
    golden, sample = data
    with TensorRTRunner(write_engine(tmp_path, gpu, reference_models["learnable_dynamic"])) as runner:
        first = {slot: runner.input_buffers(32, slot=slot) for slot in (0, 1)}
        addresses = {slot: {k: v.ctypes.data for k, v in bufs.items()} for slot, bufs in first.items()}
        bases = {slot: {k: v.base for k, v in bufs.items()} for slot, bufs in first.items()}
        context = runner._context
        for n in (5, 32, 1, 17):
            for slot in (0, 1):
                bufs = runner.input_buffers(n, slot=slot)
                for name, view in bufs.items():
                    assert view.shape == (n, 3, 512, 128)
                    assert view.ctypes.data == addresses[slot][name]
                    assert view.base is bases[slot][name]
                run_batch(runner, golden[:n], sample[:n], slot=slot)
                bound = {name: context.get_tensor_address(name) for name in ("input_1", "input_2", "output")}
                assert bound == runner._slots[slot].addresses
        # the pinned memory is what the fake driver knows as page-locked
        assert all(isinstance(b.base.base, gpu.driver.HostAllocation) for b in first[0].values())


def test_partial_batches_copy_only_their_rows(gpu10, tmp_path, reference_models, data):
    golden, sample = data
    with TensorRTRunner(write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])) as runner:
        run_batch(runner, golden[:32], sample[:32])
        device_input = runner._slots[0].device["input_2"]
        row_bytes = 3 * 512 * 128 * 4
        before = gpu10.device.view(device_input.address, 32 * row_bytes).copy()
        run_batch(runner, sample[:3], golden[:3])  # swapped, so rows 0..2 change
        after = gpu10.device.view(device_input.address, 32 * row_bytes)
        assert not np.array_equal(after[: 3 * row_bytes], before[: 3 * row_bytes])
        np.testing.assert_array_equal(after[3 * row_bytes:], before[3 * row_bytes:])


def test_max_batch_sizes_the_buffers(gpu10, tmp_path, reference_models, data):
    engine = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])
    assert TensorRTRunner(engine, max_batch=32).preferred_batch == 32  # as asked, not the profile's opt
    with TensorRTRunner(engine, max_batch=8) as runner:
        assert runner.batch_range == (1, 8) and runner.preferred_batch == 8
        assert runner._slots[0].host["input_1"].array.shape == (8, 3, 512, 128)
        assert runner._slots[0].host["output"].array.shape == (8, 2)  # sized by the context
        with pytest.raises(InputError, match="optimisation profile 1..32"):
            runner.input_buffers(9)


def test_batches_outside_the_profile_are_refused(gpu, tmp_path, reference_models):
    engine = write_engine(tmp_path, gpu, reference_models["learnable_dynamic"], min_batch=4, opt_batch=8, max_batch=24)
    for bad in (0, 64):
        with pytest.raises(InputError, match="outside the engine's optimisation profile") as info:
            TensorRTRunner(engine, max_batch=bad)
        assert "4 <= max_batch <= 24" in str(info.value)
    with TensorRTRunner(engine) as runner:
        assert runner.profile == (4, 8, 24) and runner.batch_range == (4, 24) and runner.preferred_batch == 8
        for bad in (3, 25):
            with pytest.raises(InputError, match="optimisation profile 4..24") as info:
                runner.input_buffers(bad)
            assert "4 <= batch <= 24" in str(info.value)
            with pytest.raises(InputError, match="outside"):
                runner.submit(bad)
    static = write_engine(tmp_path, gpu, reference_models["learnable_static16"], name="static")
    with pytest.raises(InputError, match="static batch"):
        TensorRTRunner(static, max_batch=8)


def test_slot_protocol_errors(gpu10, tmp_path, reference_models, data):
    runner = TensorRTRunner(write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"]))
    with pytest.raises(changenet_trt.ChangeNetError, match="not active"):
        runner.input_buffers(1)
    with runner:
        with pytest.raises(InputError, match="nothing was submitted"):
            runner.fetch(0)
        runner.submit(2, slot=1)
        with pytest.raises(InputError, match="twice"):
            runner.submit(2, slot=1)
        with pytest.raises(InputError, match="no such buffer slot"):
            runner.submit(2, slot=2)
        runner.fetch(1)
    assert_clean(gpu10)


def test_one_context_runs_batches_in_submission_order(gpu10, tmp_path, reference_models, data, monkeypatch):
    """Slot 1 may copy while slot 0 computes, but its inference waits for slot 0's: the one
    execution context has one set of scratch memory. Fetching slot 1 first must not reorder."""
    from fakes.tensorrt import _plan

    order = []
    real_run = _plan.run

    def recording_run(onnx_bytes, feeds, fp16_compute):
        order.append(len(next(iter(feeds.values()))))
        return real_run(onnx_bytes, feeds, fp16_compute)

    monkeypatch.setattr(_plan, "run", recording_run)
    onnx = reference_models["learnable_dynamic"]
    golden, sample = data
    with TensorRTRunner(write_engine(tmp_path, gpu10, onnx)) as runner:
        for n, slot in ((3, 0), (5, 1)):
            bufs = runner.input_buffers(n, slot=slot)
            bufs["input_2"][...] = golden[:n]
            bufs["input_1"][...] = sample[:n]
            runner.submit(n, slot=slot)
        later = runner.fetch(1)
        earlier = runner.fetch(0)
    assert order == [3, 5]
    np.testing.assert_allclose(earlier, expected(onnx, golden[:3], sample[:3]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(later, expected(onnx, golden[:5], sample[:5]), rtol=0, atol=1e-5)


def test_submit_never_waits_and_fetch_waits_once(gpu10, tmp_path, reference_models, data, monkeypatch):
    driver = gpu10.driver
    waits = []
    for cls, name in ((driver.Stream, "synchronize"), (driver.Event, "synchronize"), (driver.Context, "synchronize")):
        original = getattr(cls, name)

        def spy(*args, _original=original, _label=cls.__name__, **kwargs):
            waits.append(_label)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, name, spy if cls is not driver.Context else staticmethod(spy))
    with TensorRTRunner(write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"]), cuda_graph=True) as runner:
        for n in (16, 16, 7):
            bufs = runner.input_buffers(n)
            bufs["input_1"][...] = data[1][:n]
            bufs["input_2"][...] = data[0][:n]
            del waits[:]
            runner.submit(n)
            assert waits == []
            runner.fetch()
            assert waits == ["Event"]


# -- options ---------------------------------------------------------------------------------------
def test_timing_comes_from_events(gpu10, tmp_path, reference_models, data):
    with TensorRTRunner(write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])) as runner:
        run_batch(runner, data[0][:4], data[1][:4])
        timing = runner.last_timing
    values = [timing.enqueue_ms, timing.h2d_ms, timing.compute_ms, timing.d2h_ms]
    assert all(np.isfinite(v) and v >= 0 for v in values)
    assert timing.latency_ms == pytest.approx(timing.h2d_ms + timing.compute_ms + timing.d2h_ms)


@pytest.mark.parametrize("spin_wait", [False, True])
def test_spin_wait_chooses_the_event_flags(gpu10, tmp_path, reference_models, spin_wait):
    flags = gpu10.driver.event_flags
    with TensorRTRunner(write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"]), spin_wait=spin_wait) as runner:
        blocking = [bool(e.event.flags & flags.BLOCKING_SYNC) for s in runner._slots for e in s.events.values()]
    assert blocking and all(b is (not spin_wait) for b in blocking)


def test_cuda_graphs_are_captured_per_slot_and_batch_then_replayed(gpu, tmp_path, reference_models, data):
    onnx = reference_models["learnable_dynamic"]
    golden, sample = data
    with TensorRTRunner(write_engine(tmp_path, gpu, onnx), cuda_graph=True) as runner:
        sizes = [16, 16, 16, 16, 7, 7, 7, 16]
        for index, n in enumerate(sizes):
            raw = run_batch(runner, golden[:n], sample[:n], slot=index % 2)
            np.testing.assert_allclose(raw, expected(onnx, golden[:n], sample[:n]), rtol=0, atol=1e-5)
        # (slot, batch) pairs: (0,16) (1,16) (0,7) (1,7) -> four graphs, the other runs replay
        assert gpu.device.counts["graph_instantiate"] == 4
        assert gpu.device.counts["graph_launch"] == len(sizes) - 4
        assert gpu.trt._fake.counters["executions_run"] == len(sizes)
        assert runner.cuda_graph
    assert_clean(gpu)


def test_failed_capture_falls_back_with_a_warning(gpu10, tmp_path, reference_models, data):
    onnx = reference_models["learnable_dynamic"]
    golden, sample = data
    gpu10.device.fail_capture = True
    with TensorRTRunner(write_engine(tmp_path, gpu10, onnx), cuda_graph=True) as runner:
        with pytest.warns(RuntimeWarning, match="CUDA graph capture failed.*running without CUDA graphs"):
            first = run_batch(runner, golden[:8], sample[:8])
        assert not runner.cuda_graph
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = run_batch(runner, golden[:8], sample[:8], slot=1)
    np.testing.assert_allclose(first, expected(onnx, golden[:8], sample[:8]), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(first, again)
    assert gpu10.device.counts["graph_launch"] == 0
    assert_clean(gpu10)


def test_zero_copy_maps_pinned_memory_and_copies_nothing(gpu, tmp_path, reference_models, data):
    onnx = reference_models["learnable_dynamic"]
    golden, sample = data
    with TensorRTRunner(write_engine(tmp_path, gpu, onnx), zero_copy=True) as runner:
        for n, slot in ((16, 0), (5, 1), (32, 0)):
            raw = run_batch(runner, golden[:n], sample[:n], slot=slot)
            np.testing.assert_allclose(raw, expected(onnx, golden[:n], sample[:n]), rtol=0, atol=1e-5)
        assert gpu.device.counts["htod"] == 0 and gpu.device.counts["dtoh"] == 0
        assert gpu.device.counts["device_alloc"] == 0
        assert runner.last_timing.h2d_ms >= 0
    assert_clean(gpu)


def test_zero_copy_is_refused_when_the_gpu_cannot_map(gpu10, tmp_path, reference_models, monkeypatch):
    engine = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])
    from changenet_trt.gpu import cuda

    monkeypatch.setattr(cuda.primary_context(), "can_map_host_memory", False)
    with pytest.raises(InputError, match="zero_copy needs a GPU that can map host memory"):
        TensorRTRunner(engine, zero_copy=True)


def test_no_data_transfers(gpu10, tmp_path, reference_models, data):
    with TensorRTRunner(write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"]),
                        data_transfers=False) as runner:
        run_batch(runner, data[0][:16], data[1][:16])
        run_batch(runner, data[0][:16], data[1][:16], slot=1)
        assert gpu10.device.counts["htod"] == 0 and gpu10.device.counts["dtoh"] == 0
        assert gpu10.trt._fake.counters["executions_run"] == 2


# -- threads, teardown, soak ------------------------------------------------------------------------
def test_made_in_one_thread_used_in_another_closed_in_a_third(gpu10, tmp_path, reference_models, data):
    onnx = reference_models["learnable_dynamic"]
    golden, sample = data[0][:6], data[1][:6]
    runner = TensorRTRunner(write_engine(tmp_path, gpu10, onnx))
    results, errors = [], []

    def use():
        try:
            runner.activate()
            results.append(run_batch(runner, golden, sample))
        except Exception as exc:  # reported below
            errors.append(exc)

    def close():
        try:
            runner.deactivate()
        except Exception as exc:
            errors.append(exc)

    for target in (use, close):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert errors == []
    np.testing.assert_allclose(results[0], expected(onnx, golden, sample), rtol=0, atol=1e-5)
    assert gpu10.device.current_context() is None
    assert_clean(gpu10)


def test_several_runners_in_several_threads(gpu, tmp_path, reference_models, data):
    onnx = reference_models["learnable_dynamic"]
    golden, sample = data
    engine = write_engine(tmp_path, gpu, onnx)
    outputs = {}

    def work(index):
        with changenet_trt.load(engine, batch_size=8, cuda_graph=index == 1) as clf:
            lo = index * 5
            outputs[index] = clf.predict(golden[lo:lo + 19], sample[lo:lo + 19]).raw

    errors = run_in_threads(work, 3)
    assert errors == []
    for index, raw in outputs.items():
        lo = index * 5
        np.testing.assert_allclose(raw, expected(onnx, golden[lo:lo + 19], sample[lo:lo + 19]), rtol=0, atol=1e-5)
    assert_clean(gpu)


def test_close_waits_for_work_in_flight_and_frees_everything(gpu, tmp_path, reference_models, data):
    runner = TensorRTRunner(write_engine(tmp_path, gpu, reference_models["learnable_dynamic"]), cuda_graph=True)
    runner.activate()
    assert gpu.device.summary()["device_allocations"] > 0
    for slot in (0, 1):
        bufs = runner.input_buffers(4, slot=slot)
        for view in bufs.values():
            view[...] = data[0][:4]
        runner.submit(4, slot=slot)  # left in flight
    runner.deactivate()
    assert gpu.trt._fake.counters["executions_run"] == 2
    assert_clean(gpu)
    with runner:  # reactivation loads the engine again
        raw = run_batch(runner, data[0][:2], data[1][:2])
    assert raw.shape == (2, 2)
    assert_clean(gpu)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A ChangeNet-shaped model on 3x8x8 images: output [B] = mean((sample - golden)^2).

    Same interface as the reference models, but ONNX Runtime runs it in microseconds, so a
    10,000-batch soak stays fast while every batch still runs for real.
    """
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", 3, 8, 8]
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["input_1", "input_2"], ["diff"]),
            helper.make_node("Mul", ["diff", "diff"], ["sq"]),
            helper.make_node("ReduceMean", ["sq"], ["output"], axes=[1, 2, 3], keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("input_1", "input_2")],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_soak_ten_thousand_batches_with_flat_allocations(gpu10, tmp_path, tiny_model, cuda_graph):
    rng = np.random.default_rng(9)
    golden, sample = rng.normal(0, 1, (2, 1, 3, 8, 8)).astype(np.float32)
    with TensorRTRunner(write_engine(tmp_path, gpu10, tiny_model), cuda_graph=cuda_graph) as runner:
        first = run_batch(runner, golden, sample)
        run_batch(runner, golden, sample, slot=1)
        counts = dict(gpu10.device.counts)
        live = gpu10.device.summary()
        inputs = [runner.input_buffers(1, slot=s) for s in (0, 1)]
        for slot in (0, 1):
            inputs[slot]["input_2"][...] = golden
            inputs[slot]["input_1"][...] = sample
        runner.submit(1, slot=0)
        for index in range(1, 10_000):
            runner.submit(1, slot=index % 2)
            out = runner.fetch((index - 1) % 2, copy=False)
        out = runner.fetch(1, copy=False)
        assert gpu10.device.summary() == live
        assert gpu10.trt._fake.counters["executions_run"] == 10_002
        after = gpu10.device.counts
        for key in ("device_alloc", "pinned_alloc", "stream_create", "event_create", "graph_instantiate"):
            assert after[key] == counts[key], key
        assert after["graph_launch"] - counts["graph_launch"] == (10_000 if cuda_graph else 0)
        assert after["htod"] - counts["htod"] == 20_000 and after["dtoh"] - counts["dtoh"] == 10_000
        np.testing.assert_array_equal(out, first)
        np.testing.assert_allclose(first, expected(tiny_model, golden, sample), rtol=0, atol=1e-6)
    assert_clean(gpu10)


# -- refusing engines ------------------------------------------------------------------------------
def test_missing_empty_and_onnx_files_are_refused(gpu10, tmp_path, reference_models):
    with pytest.raises(EngineError, match="engine file not found"):
        TensorRTRunner(str(tmp_path / "nope.engine"))
    empty = tmp_path / "empty.engine"
    empty.write_bytes(b"")
    with pytest.raises(EngineError, match="empty"):
        TensorRTRunner(str(empty))
    with pytest.raises(EngineError, match="is an ONNX model, not a TensorRT engine"):
        TensorRTRunner(reference_models["learnable_dynamic"])


def test_a_file_that_is_not_an_engine_is_refused_with_tensorrts_reason(gpu, tmp_path):
    junk = tmp_path / "junk.engine"
    junk.write_bytes(b"this is not a TensorRT plan" * 10)
    with pytest.raises(EngineError) as info:
        TensorRTRunner(str(junk))
    text = str(info.value)
    assert "cannot load" in text and "magic" in text
    assert_clean(gpu)


def test_truncated_engine_is_refused(gpu, tmp_path, reference_models):
    engine = write_engine(tmp_path, gpu, reference_models["learnable_dynamic"])
    data = open(engine, "rb").read()
    with open(engine, "wb") as handle:
        handle.write(data[: len(data) // 2])
    runner = TensorRTRunner(engine)  # made from the sidecar: the bytes are read when it activates
    with pytest.raises(EngineError, match="not the one its metadata describes"):
        runner.activate()
    assert not runner.is_active
    with pytest.raises(EngineError, match="not the one its metadata describes"):
        changenet_trt.load(engine)
    # without the sidecar TensorRT's own check still refuses it
    bare = tmp_path / "bare.engine"
    bare.write_bytes(data[:-100])
    with pytest.raises(EngineError, match="truncated"):
        TensorRTRunner(str(bare))


def test_engine_of_another_tensorrt_is_refused(gpu, tmp_path, reference_models):
    other = "8.6.1.6" if gpu.mode == "10.x" else "10.3.0"
    engine = write_engine(tmp_path, gpu, reference_models["learnable_dynamic"], version=other)
    with pytest.raises(EngineError) as info:
        TensorRTRunner(engine)
    assert "TensorRT {}".format(other) in str(info.value) and gpu.trt.__version__ in str(info.value)
    bare = write_engine(tmp_path, gpu, reference_models["learnable_dynamic"], name="bare", sidecar=False,
                        version=other)
    with pytest.raises(EngineError, match="not compatible with this version of TensorRT"):
        TensorRTRunner(bare)


def test_engine_for_another_gpu_is_refused(gpu10, tmp_path, reference_models):
    engine = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"], compute_capability=(7, 5))
    with pytest.raises(EngineError, match="compute capability 7.5") as info:
        TensorRTRunner(engine)
    assert "8.7" in str(info.value)
    bare = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"], name="bare", sidecar=False,
                        compute_capability=(7, 5))
    with pytest.raises(EngineError, match="incompatible device"):
        TensorRTRunner(bare)


def test_engine_without_sidecar_loads_with_a_warning(gpu10, tmp_path, reference_models, data, caplog):
    onnx = reference_models["learnable_dynamic"]
    engine = write_engine(tmp_path, gpu10, onnx, sidecar=False)
    with caplog.at_level(logging.WARNING, logger="changenet_trt"):
        runner = TensorRTRunner(engine)
    assert "no metadata" in caplog.text
    with runner:
        np.testing.assert_allclose(run_batch(runner, data[0][:3], data[1][:3]),
                                   expected(onnx, data[0][:3], data[1][:3]), rtol=0, atol=1e-5)
    assert runner.contract.cutoff == 0.5  # no sidecar: the default cutoff


def test_contract_comes_from_the_engine_and_its_sidecar(gpu10, tmp_path, reference_models):
    onnx = reference_models["learnable_dynamic"]
    engine = write_engine(tmp_path, gpu10, onnx)
    runner = TensorRTRunner(engine)
    want = read_contract(onnx)
    got = runner.contract
    assert (got.sample_input, got.golden_input, got.output) == ("input_1", "input_2", "output")
    assert got.static_batch is None and got.input_shape == (3, 512, 128) and got.output_shape == (None, 2)
    assert got.output_kind == want.output_kind and got.cutoff == want.cutoff
    assert got.preprocess == read_sidecar(engine).preprocess
    # overrides go through the same checks as for ONNX models
    with pytest.raises(ModelContractError, match="no golden input tensor named 'golden'"):
        TensorRTRunner(engine, ContractNames(golden_input="golden"))
    swapped = TensorRTRunner(engine, ContractNames(sample_input="input_2", golden_input="input_1"))
    assert swapped.contract.sample_input == "input_2"


def test_engine_host_code_is_never_allowed(gpu10, tmp_path, reference_models, monkeypatch):
    """TensorRT 8.6+ runtimes can be allowed to run host code embedded in version-compatible
    engines; the runner always forbids it before deserializing (even were the default True)."""
    trt = gpu10.trt
    engine = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])
    seen = []

    class PermissiveRuntime(trt.Runtime):
        @property
        def engine_host_code_allowed(self):
            return getattr(self, "_host_code", True)

        @engine_host_code_allowed.setter
        def engine_host_code_allowed(self, value):
            self._host_code = bool(value)

        def deserialize_cuda_engine(self, data):
            seen.append(self.engine_host_code_allowed)
            return super().deserialize_cuda_engine(data)

    monkeypatch.setattr(trt, "Runtime", PermissiveRuntime)
    TensorRTRunner(engine).activate().deactivate()
    assert seen == [False]


def test_creating_deserializes_nothing_activating_does(gpu, tmp_path, reference_models, data):
    onnx = reference_models["learnable_dynamic"]
    engine = write_engine(tmp_path, gpu, onnx)
    counters = gpu.trt._fake.counters
    runner = TensorRTRunner(engine, max_batch=8)
    assert counters["deserialize"] == 0 and gpu.device.summary()["device_allocations"] == 0
    assert runner.contract.golden_input == "input_2" and runner.batch_range == (1, 8)
    with runner:
        assert counters["deserialize"] == 1
        np.testing.assert_allclose(run_batch(runner, data[0][:3], data[1][:3]),
                                   expected(onnx, data[0][:3], data[1][:3]), rtol=0, atol=1e-5)
    with runner:  # deactivating frees the engine; activating again loads it again
        assert counters["deserialize"] == 2
    assert_clean(gpu)
    # an engine without tensors in its sidecar (an older one) is read at creation
    TensorRTRunner(write_engine(tmp_path, gpu, onnx, name="old", describe=False))
    assert counters["deserialize"] == 3


def test_an_engine_that_is_not_what_its_sidecar_says_is_refused_on_activation(gpu10, tmp_path, reference_models):
    engine = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])
    meta = read_sidecar(engine)
    for tensor in meta.tensors:  # says float16 I/O; the engine has float32
        tensor["dtype"] = "float16"
    write_sidecar(engine, meta)
    runner = TensorRTRunner(engine)
    with pytest.raises(EngineError, match="does not have the tensors its metadata describes"):
        runner.activate()
    assert_clean(gpu10)


def test_a_junk_engine_with_a_sidecar_is_refused_with_tensorrts_reason_on_load(gpu10, tmp_path, reference_models):
    engine = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])
    junk = b"this is not a TensorRT plan" * 10
    with open(engine, "wb") as handle:
        handle.write(junk)
    meta = read_sidecar(engine)
    meta.engine_sha256 = hashlib.sha256(junk).hexdigest()
    write_sidecar(engine, meta)
    with pytest.raises(EngineError) as info:
        changenet_trt.load(engine)
    assert "cannot load" in str(info.value) and "magic" in str(info.value)


# -- one TensorRT logger per process ---------------------------------------------------------------
def _refused_batch_error(runner):
    """What the runner says when TensorRT refuses a shape (the profile check bypassed)."""
    runner._context_batch = None
    with pytest.raises(InputError) as info:
        runner._set_batch(runner._high + 5)
    return str(info.value)


def test_every_runner_uses_the_one_registered_logger(gpu10, tmp_path, reference_models, caplog):
    from changenet_trt.gpu import trt as trtlib

    from fakes.tensorrt._runtime import registered_logger

    engine = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            with TensorRTRunner(engine) as runner:
                assert "does not satisfy any optimization profiles" in _refused_batch_error(runner)
                assert "[37," in _refused_batch_error(runner)
    assert registered_logger(gpu10.trt._fake) is trtlib.make_logger(gpu10.trt)
    assert "differs from one already registered" not in caplog.text
    assert not any("differs" in text for _, text in gpu10.trt._fake.log)


def test_the_first_logger_outlives_the_first_runner(gpu10, tmp_path, reference_models):
    """TensorRT logs every later runner's errors through the first logger it registered: that
    logger must still exist when the runner that made it is gone."""
    import gc
    import weakref

    from fakes.tensorrt._runtime import registered_logger

    engine = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])
    first = TensorRTRunner(engine).activate()
    logger = weakref.ref(registered_logger(gpu10.trt._fake))
    first.deactivate()
    del first
    gc.collect()
    assert logger() is not None
    with TensorRTRunner(engine) as second:
        assert "does not satisfy any optimization profiles" in _refused_batch_error(second)


def test_a_logger_per_runner_would_log_through_a_freed_one(gpu10):
    """The fake plays TensorRT: a second logger is ignored with a warning, and the first one is
    what TensorRT uses, even once it was freed."""
    import gc

    from fakes.tensorrt import FakeTensorRTError

    trt = gpu10.trt

    class Quiet(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.seen = []

        def log(self, severity, msg):
            self.seen.append(msg)

    first, second = Quiet(), Quiet()
    runtime = trt.Runtime(first)
    trt.Runtime(second)
    assert any("differs from one already registered" in m for m in first.seen) and second.seen == []
    del runtime, first
    gc.collect()
    with pytest.raises(FakeTensorRTError, match="freed"):
        trt.Runtime(second).deserialize_cuda_engine(b"junk")


def test_two_runners_in_parallel_each_report_their_own_errors(gpu10, tmp_path, reference_models):
    engine = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"])
    small = write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"], name="small", max_batch=8,
                         opt_batch=4)
    messages = {0: [], 1: []}
    errors = []
    barrier = threading.Barrier(2)

    def work(index, path):
        try:
            with TensorRTRunner(path) as runner:
                barrier.wait()
                for _ in range(30):
                    messages[index].append(_refused_batch_error(runner))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(0, engine)), threading.Thread(target=work, args=(1, small))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # each call's message names its own refused shape (37 = 32 + 5; 13 = 8 + 5) and nothing else
    assert all("[37," in m and "[13," not in m for m in messages[0])
    assert all("[13," in m and "[37," not in m for m in messages[1])


# -- version-compatible engines on the lean and dispatch runtimes ---------------------------------
@pytest.fixture
def runtime_only(fake_trt_factory, fake_cuda, monkeypatch):
    """Install a runtime-only fake (``runtime_only("tensorrt_lean")``) with no full ``tensorrt``."""
    from fakes.tensorrt import make_module

    fake_cuda.mode = "10.x"
    fake_cuda.trt = fake_trt_factory("10.x")  # only to write engines and sidecars
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    for name in ("tensorrt_lean", "tensorrt_lean_bindings", "tensorrt_dispatch", "tensorrt_dispatch_bindings"):
        monkeypatch.setitem(__import__("sys").modules, name, None)

    def install(name):
        module = make_module("10.x", name=name)
        monkeypatch.setitem(__import__("sys").modules, name, module)
        fake_cuda.runtime = module
        return fake_cuda

    return install


@pytest.mark.parametrize("module", ["tensorrt_lean", "tensorrt_lean_bindings", "tensorrt_dispatch_bindings"])
def test_version_compatible_engines_run_on_the_runtime_only_modules(runtime_only, tmp_path, reference_models, data,
                                                                    module):
    gpu = runtime_only(module)
    assert not hasattr(gpu.runtime, "Builder")
    onnx = reference_models["learnable_dynamic"]
    engine = write_engine(tmp_path, gpu, onnx, version_compatible=True)
    with TensorRTRunner(engine) as runner:
        assert runner.version_compatible and runner._trt is gpu.runtime
        np.testing.assert_allclose(run_batch(runner, data[0][:5], data[1][:5]),
                                   expected(onnx, data[0][:5], data[1][:5]), rtol=0, atol=1e-5)
    assert_clean(gpu)


def test_an_engine_that_is_not_version_compatible_needs_the_full_tensorrt(runtime_only, tmp_path, reference_models):
    gpu = runtime_only("tensorrt_lean")
    engine = write_engine(tmp_path, gpu, reference_models["learnable_dynamic"])
    with pytest.raises(DependencyError, match="'tensorrt'") as info:
        TensorRTRunner(engine)
    assert "lean" not in str(info.value)


def test_without_any_tensorrt_a_version_compatible_engine_names_the_lean_extra(runtime_only, tmp_path,
                                                                                reference_models):
    gpu = runtime_only("tensorrt_lean")
    engine = write_engine(tmp_path, gpu, reference_models["learnable_dynamic"], version_compatible=True,
                          exclude_lean_runtime=True)
    __import__("sys").modules["tensorrt_lean"] = None
    with pytest.raises(DependencyError) as info:
        TensorRTRunner(engine)
    text = str(info.value)
    assert "changenet-trt[lean]" in text and "tensorrt_lean_bindings" in text
    assert "tensorrt_dispatch" not in text  # the dispatch runtime cannot run an engine without the lean runtime


def test_the_dispatch_runtime_needs_the_embedded_lean_runtime(runtime_only, tmp_path, reference_models):
    gpu = runtime_only("tensorrt_dispatch")
    engine = write_engine(tmp_path, gpu, reference_models["learnable_dynamic"], version_compatible=True)
    # host code (the embedded lean runtime) is allowed only for the bytes the sidecar describes
    meta = read_sidecar(engine)
    meta.engine_sha256 = ""
    write_sidecar(engine, meta)
    with pytest.raises(EngineError, match="host code"):
        TensorRTRunner(engine).activate()


def test_a_version_compatible_engine_runs_on_a_later_tensorrt_not_an_earlier_one(fake_trt_factory, fake_cuda, tmp_path,
                                                                                 reference_models):
    fake_cuda.trt = fake_trt_factory("10.x")
    onnx = reference_models["learnable_dynamic"]
    engine = write_engine(tmp_path, fake_cuda, onnx, version="8.6.2.3", version_compatible=True)
    with TensorRTRunner(engine):
        pass
    fake_cuda.trt = fake_trt_factory("8.6")
    newer = write_engine(tmp_path, fake_cuda, onnx, name="newer", version="10.3.0", version_compatible=True)
    with pytest.raises(EngineError, match="too old"):
        TensorRTRunner(newer)


def test_no_runtime_is_made_without_a_working_cuda_driver(gpu10, tmp_path, reference_models):
    from changenet_trt.gpu.cuda import CudaError

    from fakes.libcuda import CUDA_ERROR_NO_DEVICE

    runner = TensorRTRunner(write_engine(tmp_path, gpu10, reference_models["learnable_dynamic"]))
    gpu10.libcuda.init_result = CUDA_ERROR_NO_DEVICE
    with pytest.raises(CudaError, match="CUDA_ERROR_NO_DEVICE"):
        runner.activate()
    assert gpu10.trt._fake.counters["deserialize"] == 0


# -- the API ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["learnable_dynamic", "euclidean_static16"])
def test_load_engine_predicts_as_onnxruntime(gpu, tmp_path, reference_models, variant):
    onnx = reference_models[variant]
    engine = write_engine(tmp_path, gpu, onnx, fp16=True)
    golden, sample, _ = make_pairs(21, seed=4)
    with changenet_trt.load(onnx) as cpu, changenet_trt.load(engine) as trt:
        assert "tensorrt" in repr(trt)
        assert trt.cutoff == cpu.cutoff and trt.batch_size == cpu.batch_size
        want = cpu.predict(golden, sample)
        got = trt.predict(golden, sample)
        arrays = trt.predict(normalized(golden), normalized(sample))
    np.testing.assert_allclose(got.scores, want.scores, rtol=2e-3, atol=2e-3)  # FP16 engine
    np.testing.assert_allclose(arrays.scores, got.scores, rtol=0, atol=1e-5)
    close = np.abs(want.scores - want.cutoff) < 1e-2
    np.testing.assert_array_equal(got.defects[~close], want.defects[~close])
    assert_clean(gpu)


@pytest.mark.parametrize(
    "golden, sample, fragment",
    [
        (np.zeros((3, 3, 512, 128), np.float32), np.zeros((2, 3, 512, 128), np.float32), "same number"),
        (np.zeros((2, 3, 256, 256), np.float32), np.zeros((2, 3, 256, 256), np.float32), "wrong shape"),
        (np.zeros((2, 3, 512, 128), np.int32), np.zeros((2, 3, 512, 128), np.int32), "wrong dtype"),
        ([], [], "no images"),
    ],
)
def test_load_engine_gives_the_same_errors(gpu10, tmp_path, reference_models, golden, sample, fragment):
    onnx = reference_models["learnable_dynamic"]
    engine = write_engine(tmp_path, gpu10, onnx)
    messages = []
    for path in (onnx, engine):
        with changenet_trt.load(path) as clf:
            with pytest.raises(InputError, match=fragment) as info:
                clf.predict(golden, sample)
            messages.append(str(info.value))
    assert messages[0] == messages[1]
    with pytest.raises(InputError, match="unknown option for the tensorrt backend"):
        changenet_trt.load(engine, providers=["cpu"])


def test_without_tensorrt_one_clear_message(no_tensorrt, tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(DependencyError) as info:
        changenet_trt.load(str(engine))
    text = str(info.value)
    assert "'tensorrt'" in text and "JetPack" in text and "pip install" in text
    assert "\n" not in text


def test_without_pycuda_one_clear_message(fake_trt, monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "pycuda", None)
    monkeypatch.setitem(__import__("sys").modules, "pycuda.driver", None)
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(DependencyError) as info:
        changenet_trt.load(str(engine))
    text = str(info.value)
    assert "'pycuda'" in text and "CUDA is on PATH" in text


def test_the_full_runtime_allows_host_code_only_for_a_checked_version_compatible_engine(
        fake_trt_factory, fake_cuda, tmp_path, reference_models, data):
    # a version-compatible plan that embeds its lean runtime carries host code: every runtime,
    # the full one too, runs it only with engine_host_code_allowed, which the runner sets only
    # for bytes its sidecar describes as built so
    fake_cuda.trt = fake_trt_factory("10.x")
    onnx = reference_models["learnable_dynamic"]
    engine = write_engine(tmp_path, fake_cuda, onnx, version_compatible=True)
    with TensorRTRunner(engine) as runner:
        np.testing.assert_allclose(run_batch(runner, data[0][:3], data[1][:3]),
                                   expected(onnx, data[0][:3], data[1][:3]), rtol=0, atol=1e-5)
    excluded = write_engine(tmp_path, fake_cuda, onnx, name="lean-excluded", version_compatible=True,
                            exclude_lean_runtime=True)
    with TensorRTRunner(excluded):  # no embedded lean runtime: no host code to allow
        pass
    meta = read_sidecar(engine)
    meta.engine_sha256 = ""
    write_sidecar(engine, meta)
    with pytest.raises(EngineError, match="full runtime.*host code"):
        TensorRTRunner(engine).activate()


def test_an_engine_without_its_lean_runtime_loads_through_the_building_releases_lean_runtime(
        fake_trt_factory, fake_cuda, tmp_path, reference_models, data):
    # TensorRT runs a VERSION_COMPATIBLE + EXCLUDE_LEAN_RUNTIME plan only on a runtime made by
    # IRuntime.load_runtime(<lean library of the building release>); the double refuses it otherwise
    from changenet_trt.gpu.trt import make_logger

    trt = fake_cuda.trt = fake_trt_factory("10.x")
    onnx = reference_models["learnable_dynamic"]
    engine = write_engine(tmp_path, fake_cuda, onnx, version_compatible=True, exclude_lean_runtime=True)
    plan = open(engine, "rb").read()
    assert trt.Runtime(make_logger(trt)).deserialize_cuda_engine(plan) is None  # as TensorRT refuses it
    with TensorRTRunner(engine) as runner:
        np.testing.assert_allclose(run_batch(runner, data[0][:3], data[1][:3]),
                                   expected(onnx, data[0][:3], data[1][:3]), rtol=0, atol=1e-5)
    assert trt._fake.counters["load_runtime"] == 1

    trt._fake.settings["lean_libraries"] = {}  # no lean runtime library on this machine
    with pytest.raises(EngineError, match=r"libnvinfer_lean\.so\.10") as info:
        TensorRTRunner(engine).activate()
    assert "\n" not in str(info.value) and "TensorRT 10.3.0" in str(info.value)
    trt._fake.settings["lean_libraries"] = {"/opt/lean/libnvinfer_lean.so.10": "10.4.0"}  # another release's
    with pytest.raises(EngineError, match="10.4.0"):
        TensorRTRunner(engine, lean_library="/opt/lean/libnvinfer_lean.so.10").activate()
    trt._fake.settings["lean_libraries"] = {"/opt/lean/libnvinfer_lean.so.10": "10.3.0"}
    with changenet_trt.load(engine, lean_library="/opt/lean/libnvinfer_lean.so.10") as clf:
        assert clf.predict(data[0][:2], data[1][:2]).scores.shape == (2,)
