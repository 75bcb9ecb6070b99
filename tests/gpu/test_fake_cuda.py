"""changenet_trt.gpu.cuda against the strict fake pycuda (tests/fakes/pycuda) on the fake GPU."""

import sys
import threading

import numpy as np
import pytest

from changenet_trt.errors import DependencyError, InputError
from changenet_trt.gpu import cuda


@pytest.fixture
def ctx(fake_cuda):
    return cuda.primary_context()


def test_primary_context_is_retained_not_created_and_never_left_current(fake_cuda, ctx):
    assert ctx._context.primary  # retain_primary_context, not make_context (autoinit)
    assert ctx is cuda.primary_context()
    assert fake_cuda.device.current_context() is None
    buf = ctx.device_buffer(64)
    assert fake_cuda.device.current_context() is None  # pushed for the call, popped after
    buf.free()
    assert "pycuda.autoinit" not in sys.modules
    assert "pycuda.autoprimaryctx" not in sys.modules


def test_device_facts(fake_cuda, ctx):
    assert ctx.name == fake_cuda.device.name
    assert ctx.compute_capability == tuple(fake_cuda.device.compute_capability)
    assert ctx.integrated is True
    assert ctx.can_map_host_memory is True
    assert ctx.total_memory > 0
    assert "integrated" in repr(ctx)


def test_activate_is_reentrant_and_pushes_once(fake_cuda, ctx):
    device = fake_cuda.device
    with ctx.activate():
        with ctx.activate():
            assert device.current_context() is ctx._context
            assert len(device._stack()) == 1
        assert device.current_context() is ctx._context
    assert device.current_context() is None


def test_a_new_pycuda_module_gets_a_new_context(fake_cuda, ctx):
    from fakes.cuda_fixture import install_fake_pycuda

    install_fake_pycuda()
    assert cuda.primary_context() is not ctx


def test_missing_pycuda_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(DependencyError) as info:
        cuda.primary_context()
    text = str(info.value)
    assert "pycuda" in text and "pip install" in text and "PATH" in text


def test_round_trip_through_pinned_and_device_buffers(fake_cuda, ctx):
    pinned_in = ctx.pinned((4, 3), np.float32)
    pinned_out = ctx.pinned((4, 3), np.float32)
    device = ctx.device_buffer(pinned_in.nbytes)
    stream = ctx.stream()
    done = ctx.event()
    pinned_in.array[...] = np.arange(12, dtype=np.float32).reshape(4, 3)
    pinned_out.array[...] = -1
    device.upload(pinned_in.array, stream)
    device.download(pinned_out.array, stream)
    done.record(stream)
    assert not done.query()
    assert (pinned_out.array == -1).all()  # queued work has not run before a wait
    done.synchronize()
    assert done.query()
    np.testing.assert_array_equal(pinned_out.array, pinned_in.array)
    assert fake_cuda.device.counts["htod"] == 1 and fake_cuda.device.counts["dtoh"] == 1
    for thing in (pinned_in, pinned_out, device):
        thing.free()
    stream.close()
    done.close()
    assert fake_cuda.device.summary() == {"device_allocations": 0, "pinned_buffers": 0, "streams": 0}
    assert fake_cuda.device.live_events == 0
    assert fake_cuda.driver.cleanup_failures == []


def test_partial_copies_move_only_the_first_rows(fake_cuda, ctx):
    host = ctx.pinned((8, 2), np.float16)
    back = ctx.pinned((8, 2), np.float16)
    device = ctx.device_buffer(host.nbytes)
    stream = ctx.stream()
    host.array[...] = 1
    device.upload(host.array, stream)
    host.array[:3] = 7
    device.upload(host.array[:3], stream)
    back.array[...] = 0
    device.download(back.array[:5], stream)
    stream.synchronize()
    assert (back.array[:3] == 7).all() and (back.array[3:5] == 1).all() and (back.array[5:] == 0).all()


def test_copies_are_checked(fake_cuda, ctx):
    host = ctx.pinned((4, 4), np.float32)
    device = ctx.device_buffer(host.nbytes // 2)
    stream = ctx.stream()
    with pytest.raises(InputError, match="more bytes"):
        device.upload(host.array, stream)
    with pytest.raises(InputError, match="C-contiguous"):
        device.upload(host.array[:, :2], stream)
    # a pageable array (a rebound buffer) is refused by the strict fake
    with pytest.raises(fake_cuda.driver.LogicError, match="page-locked"):
        device.upload(np.zeros(4, np.float32), stream)
    device.free()
    device.free()  # idempotent
    with pytest.raises(cuda.CudaError, match="freed"):
        device.upload(host.array[:1], stream)


def test_mapped_pinned_memory_is_the_device_memory(fake_cuda, ctx):
    buf = ctx.pinned((2, 4), np.float32, mapped=True)
    assert buf.device_address is not None
    buf.array[...] = 3.5
    seen = fake_cuda.device.view(buf.device_address, buf.nbytes).view(np.float32)
    assert (seen == 3.5).all()
    seen[:] = 1.25  # the GPU writes, the host sees it
    assert (buf.array == 1.25).all()
    buf.free()
    assert buf.array is None and buf.device_address is None
    assert fake_cuda.device.summary()["pinned_buffers"] == 0
    assert fake_cuda.device.live_allocations == 0


def test_plain_pinned_memory_has_no_device_address(fake_cuda, ctx):
    buf = ctx.pinned((2,), np.float32)
    assert buf.device_address is None
    with pytest.raises(fake_cuda.driver.LogicError, match="DEVICEMAP"):
        with ctx.activate():
            buf.array.base.get_device_pointer()


def test_events_time_and_flags(fake_cuda, ctx):
    stream = ctx.stream()
    start, end = ctx.event(), ctx.event(blocking=False)
    untimed = ctx.event(timing=False)
    flags = fake_cuda.driver.event_flags
    assert start.event.flags & flags.BLOCKING_SYNC
    assert not end.event.flags & flags.BLOCKING_SYNC
    assert untimed.event.flags & flags.DISABLE_TIMING
    start.record(stream)
    untimed.record(stream)
    end.record(stream)
    with pytest.raises(fake_cuda.driver.LogicError, match="not ready"):
        end.ms_since(start)
    end.synchronize()
    elapsed = end.ms_since(start)
    assert np.isfinite(elapsed) and elapsed >= 0.0
    with pytest.raises(fake_cuda.driver.LogicError, match="invalid handle"):
        untimed.ms_since(start)


def test_stream_wait_orders_work_across_streams(fake_cuda, ctx):
    first, second = ctx.stream(), ctx.stream()
    marker = ctx.event(timing=False)
    order = []
    fake_cuda.device.stream(first.handle).enqueue(lambda: order.append("first"))
    marker.record(first)
    second.wait(marker)
    fake_cuda.device.stream(second.handle).enqueue(lambda: order.append("second"))
    second.synchronize()
    assert order == ["first", "second"]


def test_buffers_made_in_one_thread_are_used_and_freed_in_another(fake_cuda, ctx):
    host = ctx.pinned((16,), np.float32)
    back = ctx.pinned((16,), np.float32)
    device = ctx.device_buffer(host.nbytes)
    errors = []

    def work():
        try:
            stream = ctx.stream()
            host.array[:] = np.arange(16)
            device.upload(host.array, stream)
            device.download(back.array, stream)
            stream.synchronize()
            stream.close()
            device.free()
        except Exception as exc:  # reported in the main thread
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == []
    np.testing.assert_array_equal(back.array, np.arange(16, dtype=np.float32))
    host.free()
    back.free()
    assert fake_cuda.device.summary() == {"device_allocations": 0, "pinned_buffers": 0, "streams": 0}
    assert fake_cuda.driver.cleanup_failures == []


def test_the_fake_refuses_cuda_calls_without_a_current_context(fake_cuda, ctx):
    """What changenet_trt.gpu.cuda protects against: a thread without the context fails."""
    driver = fake_cuda.driver
    errors = []

    def work():
        try:
            driver.mem_alloc(16)
        except driver.LogicError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors and "invalid device context" in errors[0]

    with ctx.activate():
        allocation = driver.mem_alloc(16)

    def free_elsewhere():
        try:
            allocation.free()
        except driver.LogicError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=free_elsewhere)
    thread.start()
    thread.join()
    assert "cannot activate out-of-thread context" in errors[-1]
    with ctx.activate():
        allocation.free()


def test_many_threads_share_the_context(fake_cuda, ctx):
    results = {}

    def work(index):
        local = cuda.primary_context()
        host = local.pinned((32,), np.float32)
        back = local.pinned((32,), np.float32)
        device = local.device_buffer(host.nbytes)
        stream = local.stream()
        for step in range(20):
            host.array[:] = index * 100 + step
            device.upload(host.array, stream)
            device.download(back.array, stream)
            stream.synchronize()
            assert (back.array == index * 100 + step).all()
        results[index] = float(back.array[0])
        stream.close()
        for thing in (host, back, device):
            thing.free()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: i * 100 + 19.0 for i in range(4)}
    assert fake_cuda.device.summary() == {"device_allocations": 0, "pinned_buffers": 0, "streams": 0}


def test_graph_capture_records_and_replays(fake_cuda, ctx):
    stream = ctx.stream()
    runs = []
    fake_stream = fake_cuda.device.stream(stream.handle)
    graph = ctx.capture_graph(stream, lambda: fake_stream.enqueue(lambda: runs.append(1)))
    assert runs == [] and fake_stream.pending == 0  # captured, not run
    for _ in range(3):
        graph.launch(stream)
    stream.synchronize()
    assert runs == [1, 1, 1]
    assert fake_cuda.device.counts["graph_instantiate"] == 1
    assert fake_cuda.device.counts["graph_launch"] == 3
    graph.free()
    graph.free()
    assert fake_cuda.libcuda.live == 0
    with pytest.raises(cuda.CudaError, match="freed"):
        graph.launch(stream)


def test_failed_capture_reports_why_and_leaves_the_stream_usable(fake_cuda, ctx):
    stream = ctx.stream()
    fake_stream = fake_cuda.device.stream(stream.handle)
    fake_cuda.device.fail_capture = True
    with pytest.raises(cuda.GraphCaptureError, match="CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"):
        ctx.capture_graph(stream, lambda: fake_stream.enqueue(lambda: None))
    assert fake_stream.capturing is None
    fake_cuda.device.fail_capture = False

    def broken():
        raise RuntimeError("execute_async_v3 refused")

    with pytest.raises(cuda.GraphCaptureError, match="execute_async_v3 refused"):
        ctx.capture_graph(stream, broken)
    assert fake_stream.capturing is None
    stream.synchronize()
    assert fake_cuda.libcuda.live == 0


def test_allocating_while_capturing_is_refused_by_the_fake(fake_cuda, ctx):
    stream = ctx.stream()
    with pytest.raises(cuda.GraphCaptureError, match="not permitted when stream is capturing"):
        ctx.capture_graph(stream, lambda: ctx.device_buffer(16))
    assert fake_cuda.device.live_allocations == 0


def test_a_thread_local_capture_leaves_other_threads_free_to_allocate(fake_cuda, ctx):
    # The runner captures in thread-local mode, so another thread's runner may allocate its
    # pinned buffers meanwhile; a global-mode capture would forbid it (CUDA's rule, kept by the fake).
    import ctypes

    stream = ctx.stream()
    capturing, allocated = threading.Event(), threading.Event()
    results = []

    def allocate_elsewhere():
        capturing.wait(10)
        try:
            ctx.pinned((4,), np.float32).free()
            results.append("allocated")
        except Exception as exc:  # the refusal, reported to the main thread
            results.append(exc)
        allocated.set()

    def enqueue():
        capturing.set()
        allocated.wait(10)

    other = threading.Thread(target=allocate_elsewhere)
    other.start()
    ctx.capture_graph(stream, enqueue).free()
    other.join()
    assert results == ["allocated"]

    lib = fake_cuda.libcuda
    with ctx.activate():
        assert lib.cuStreamBeginCapture_v2(ctypes.c_void_p(stream.handle), 0) == 0  # GLOBAL
    worker = threading.Thread(target=allocate_elsewhere)
    allocated.clear()
    results.clear()
    worker.start()
    worker.join()
    assert "not permitted when stream is capturing" in str(results[0])
    graph = ctypes.c_void_p()
    assert lib.cuStreamEndCapture(ctypes.c_void_p(stream.handle), ctypes.pointer(graph)) == 0


def test_no_graphs_with_an_old_driver(fake_cuda, ctx, monkeypatch):
    class OldDriver:
        pass

    monkeypatch.setattr(cuda, "_open_driver_library", lambda: OldDriver())
    monkeypatch.setattr(cuda, "_DRIVER_LIBRARY", None)
    with pytest.raises(cuda.GraphCaptureError, match="too old"):
        ctx.capture_graph(ctx.stream(), lambda: None)
