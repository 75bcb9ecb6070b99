"""bench: trtexec's summary statistics, stopping rule, report, JSON and exported times.

Expected numbers are worked out by hand from trtexec's rules (sampleReporting.cpp,
sampleInference.cpp); the timing loop runs against a fake clock, so nothing sleeps.
"""

import json
import math
import re

import numpy as np
import pytest

from changenet_trt.cli import main
from changenet_trt.contract import ModelContract
from changenet_trt.errors import InputError
from changenet_trt.runtime.base import Runner, Timing
from changenet_trt.tools import bench, bench_report
from changenet_trt.tools.bench import BenchOptions, BenchResult, Trace

# -- statistics ----------------------------------------------------------------------------------


def test_summarize_matches_hand_computed_values():
    stats = bench.summarize([4.0, 1.0, 3.0, 2.0], percentiles=(50, 90))
    assert (stats.min, stats.max, stats.mean, stats.median) == (1.0, 4.0, 2.5, 2.5)
    assert stats.percentiles == {50.0: 2.0, 90.0: 4.0}  # p50: int(2)=2 -> sorted[1]; p90: int(0.4)=0
    # population std of 1..4 is sqrt(1.25); cv = std / mean * 100
    assert stats.cv_percent == pytest.approx(math.sqrt(1.25) / 2.5 * 100)
    assert bench.summarize([0.0, 0.0]).cv_percent == 0.0
    with pytest.raises(InputError):
        bench.summarize([])


# -- the timing loop on a fake clock -------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class SerialDeviceRunner(Runner):
    """A runner whose "device" runs one query at a time for ``compute_ms`` of fake time;
    ``fetch`` waits (advances the clock) until the query is done."""

    name = "fake"

    def __init__(self, clock, compute_ms, h2d_ms=0.0, d2h_ms=0.0):
        super().__init__(ModelContract("input_1", "input_2", "output", "learnable", None, (3, 4, 2), "float32", (None, 2)))
        self.clock = clock
        self.work_ms = h2d_ms + compute_ms + d2h_ms
        self.parts = (h2d_ms, compute_ms, d2h_ms)
        self.device_free_at = 0.0
        self.ends = {}
        self.submitted = []

    @property
    def batch_range(self):
        return (1, 64)

    def _activate(self):
        self.buffers = [{n: np.zeros((64, 3, 4, 2), np.float32) for n in ("input_1", "input_2")} for _ in range(2)]

    def _deactivate(self):
        pass

    def input_buffers(self, batch, slot=0):
        return {n: b[:batch] for n, b in self.buffers[slot].items()}

    def submit(self, batch, slot=0):
        assert slot not in self.ends, "slot submitted twice"
        start = max(self.clock.now, self.device_free_at)
        self.device_free_at = start + self.work_ms
        self.ends[slot] = self.device_free_at
        self.submitted.append(batch)
        self.max_in_flight = max(getattr(self, "max_in_flight", 0), len(self.ends))

    def fetch(self, slot=0, copy=True):
        self.clock.now = max(self.clock.now, self.ends.pop(slot))
        h2d, compute, d2h = self.parts
        self.last_timing = Timing(enqueue_ms=0.0, h2d_ms=h2d, compute_ms=compute, d2h_ms=d2h)
        return np.zeros((self.submitted[-1], 2), np.float32)


def run_loop(compute_ms, iterations, duration_s, warmup_ms, overlap=True, runner=None, **parts):
    clock = FakeClock()
    runner = runner or SerialDeviceRunner(clock, compute_ms, **parts)
    runner.clock = clock
    with runner:
        traces = bench.inference_loop(runner, 4, iterations, duration_s, warmup_ms, clock=clock, overlap=overlap)
    return bench.split_warmup(traces, warmup_ms)


def test_overlap_keeps_two_queries_in_flight_and_expose_dma_one():
    two = SerialDeviceRunner(FakeClock(), 10.0)
    run_loop(10.0, iterations=5, duration_s=0.0, warmup_ms=0.0, runner=two)
    assert two.max_in_flight == 2
    one = SerialDeviceRunner(FakeClock(), 10.0)
    warmup, timed = run_loop(10.0, iterations=5, duration_s=0.0, warmup_ms=0.0, overlap=False, runner=one)
    assert one.max_in_flight == 1
    # one at a time: every pass submits and fetches one query, so 5 passes -> 5 queries
    assert [t.compute_start for t in timed] == [0.0, 10.0, 20.0, 30.0, 40.0]


def test_loop_is_bound_by_iterations_when_queries_are_slow():
    # 1000 ms queries, no duration: pass 1 only fills the pipeline, passes 2..5 fetch q0..q3,
    # the drain fetches q4; q0 started computing at 0 < 200 ms, so it is warm-up.
    warmup, timed = run_loop(1000.0, iterations=5, duration_s=0.0, warmup_ms=200.0)
    assert [t.compute_start for t in warmup] == [0.0]
    assert [t.compute_start for t in timed] == [1000.0, 2000.0, 3000.0, 4000.0]
    _, timed = run_loop(1000.0, iterations=5, duration_s=0.0, warmup_ms=0.0)
    assert len(timed) == 5


def test_warmup_passes_do_not_count_towards_iterations():
    # 100 ms queries, 200 ms warm-up, 3 iterations: fetching q1 (compute start 100) is a warm-up
    # pass, so the loop runs a 4th pass; q0 and q1 are warm-up, q2 and q3 timed.
    warmup, timed = run_loop(100.0, iterations=3, duration_s=0.0, warmup_ms=200.0)
    assert [t.compute_start for t in warmup] == [0.0, 100.0]
    assert [t.compute_start for t in timed] == [200.0, 300.0]


def test_loop_is_bound_by_duration_when_queries_are_fast():
    # 10 ms queries, 200 ms warm-up + 1 s: runs until a fetched query started computing at
    # 1200 ms (q120), then drains q121. Warm-up: q0..q19; timed: q20..q121 = 102 queries
    # over 1220 - 200 = 1020 ms -> exactly 100 qps.
    warmup, timed = run_loop(10.0, iterations=10, duration_s=1.0, warmup_ms=200.0)
    assert len(warmup) == 20 and len(timed) == 102
    result = BenchResult("m.onnx", "fake", 4, BenchOptions(batch=4, duration_s=1.0), warmup, timed, "fake")
    assert result.walltime_ms == pytest.approx(1020.0)
    assert result.qps == pytest.approx(100.0)
    assert result.fps == pytest.approx(result.qps * 4)


def test_trace_places_transfers_around_compute_and_latency_sums_them():
    warmup, timed = run_loop(10.0, iterations=3, duration_s=0.0, warmup_ms=0.0, h2d_ms=2.0, d2h_ms=3.0)
    first = timed[0]
    assert (first.h2d_start, first.h2d_end, first.compute_start, first.compute_end) == (0.0, 2.0, 2.0, 12.0)
    assert (first.d2h_start, first.d2h_end) == (12.0, 15.0)
    assert first.latency_ms == pytest.approx(15.0)
    record = first.export()
    assert set(record) == {"startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs",
                           "startD2hMs", "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs"}
    assert record["latencyMs"] == record["h2dMs"] + record["computeMs"] + record["d2hMs"]


def test_split_warmup_sorts_streams_by_h2d_start():
    def trace(stream, start):
        return Trace(stream, start, start, start, start, start, start + 5, start + 5, start + 5)

    warm, timed = bench.split_warmup([trace(0, 0), trace(0, 300), trace(1, 100), trace(1, 250)], 200.0)
    assert [(t.stream, t.h2d_start) for t in warm] == [(0, 0), (1, 100)]
    assert [(t.stream, t.h2d_start) for t in timed] == [(1, 250), (0, 300)]


# -- warnings ------------------------------------------------------------------------------------


def make_result(parts, backend="tensorrt", streams=1):
    """A result whose timed queries have the given (enqueue, h2d, compute, d2h) ms."""
    timed, t = [], 0.0
    for enq, h2d, compute, d2h in parts:
        timed.append(Trace(0, t, t + enq, t, t + h2d, t + h2d, t + h2d + compute, t + h2d + compute,
                           t + h2d + compute + d2h))
        t += h2d + compute + d2h
    return BenchResult("m.engine", backend, 8, BenchOptions(batch=8, streams=streams), [], timed, "fake")


def warning_heads(result, length=40):
    return [w[:length] for w in result.performance_warnings()]


def test_no_warning_for_a_steady_compute_bound_run():
    assert make_result([(0.1, 0.5, 10.0, 0.2)] * 5).performance_warnings() == []


def test_enqueue_bound_warning_above_80_percent_of_compute():
    assert not make_result([(8.0, 0.0, 10.0, 0.0)] * 4).performance_warnings()  # 8 is not > 0.8 x 10
    heads = warning_heads(make_result([(8.5, 0.0, 10.0, 0.0)] * 4))
    assert heads == ["* Throughput may be bound by Enqueue Time rather than GPU Compute"[:40]]


def test_transfer_bound_warnings_when_a_copy_takes_as_long_as_compute():
    heads = warning_heads(make_result([(0.0, 10.0, 10.0, 1.0)] * 4))
    assert heads == ["* Throughput may be bound by host-to-device"[:40]]
    heads = warning_heads(make_result([(0.0, 1.0, 10.0, 12.0)] * 4))
    assert heads == ["* Throughput may be bound by device-to-host"[:40]]


def test_unstable_warning_reports_the_coefficient_of_variation():
    # compute 10 and 10.3: mean 10.15, population std 0.15 -> cv 1.478% > 1%
    result = make_result([(0.0, 0.0, 10.0, 0.0), (0.0, 0.0, 10.3, 0.0)])
    (warning,) = result.performance_warnings()
    assert warning.startswith("* GPU compute time is unstable, with coefficient of variance = 1.4778")
    # 10 and 10.2: cv 0.990% stays quiet
    assert make_result([(0.0, 0.0, 10.0, 0.0), (0.0, 0.0, 10.2, 0.0)]).performance_warnings() == []


def test_multiple_streams_warning():
    heads = warning_heads(make_result([(0.0, 0.0, 10.0, 0.0)] * 3, streams=2))
    assert heads == ["* Multiple inference streams are used. Latencies"[:40]]


# -- the report ----------------------------------------------------------------------------------


def test_report_has_trtexec_sections_in_order_and_trace_averages():
    result = make_result([(0.1, 1.0, float(c), 1.0) for c in range(10, 35)])
    result.options.avg_runs = 10
    text = bench_report.format_report(result)
    order = ["Warmup completed", "Timing trace has 25 queries", "=== Trace details ===",
             "=== Performance summary ===", "Throughput: ", "FPS: ", "Latency: ", "Enqueue Time: ",
             "H2D Latency: ", "GPU Compute Time: ", "D2H Latency: ", "Total Host Walltime: ",
             "Total GPU Compute Time: "]
    positions = [text.index(key) for key in order]
    assert positions == sorted(positions)
    averages = [line for line in text.splitlines() if line.startswith("Average on 10 runs")]
    assert len(averages) == 2  # 25 queries -> two full groups of 10, the rest is not averaged
    # first group: compute 10..19 -> mean 14.5; latency adds 2 ms of transfers
    assert averages[0] == "Average on 10 runs - GPU latency: 14.5 ms - Host latency: 16.5 ms (enqueue 0.1 ms)"
    assert "percentile(90%)" in text and "percentile(99%)" in text
    assert "FPS: {} pairs/s (qps x batch 8)".format(bench.stream_number(result.qps * 8)) in text


def test_json_summary_schema():
    result = make_result([(0.1, 1.0, float(c), 1.0) for c in range(10, 20)])
    result.options.percentiles = (50.0,)
    doc = json.loads(json.dumps(result.to_dict()))
    for key in ("batch", "qps", "fps", "latency_ms", "queries", "walltime_s", "compute_ms", "enqueue_ms",
                "h2d_ms", "d2h_ms", "total_compute_s", "warnings", "options", "machine", "backend", "model"):
        assert key in doc, key
    assert doc["fps"] == pytest.approx(doc["qps"] * doc["batch"])
    assert {"min", "max", "mean", "median", "p90", "p95", "p99", "p50"} <= set(doc["latency_ms"])
    # latency = 1 + compute + 1: 12..21 -> median 16.5, p90 int(1.0000002) = 1 -> sorted[8] = 20
    assert doc["latency_ms"]["median"] == pytest.approx(16.5)
    assert doc["latency_ms"]["p90"] == pytest.approx(20.0)
    assert doc["queries"] == 10


# -- real runs on the reference model (onnxruntime) ---------------------------------------------


def short_options(**kw):
    base = dict(batch=4, warmup_ms=5.0, duration_s=0.05, iterations=3)
    base.update(kw)
    return BenchOptions(**base)


def test_run_benchmark_on_onnxruntime(reference_models):
    result = bench.run_benchmark(reference_models["learnable_dynamic"], short_options())
    assert result.backend == "onnxruntime" and result.batch == 4 and result.clock == "host"
    assert result.to_dict()["options"]["expose_dma"] is False  # trtexec's default: two queries in flight
    assert "Queries in flight per stream: 2 (double buffering)" in result.notes
    serial = bench.run_benchmark(reference_models["learnable_dynamic"], short_options(expose_dma=True))
    assert serial.to_dict()["options"]["expose_dma"] is True and len(serial.timed) >= 3
    assert "Queries in flight per stream: 1 (--exposeDMA)" in serial.notes
    assert len(result.timed) >= 3
    for trace in result.timed:
        assert trace.h2d_ms == 0.0 and trace.d2h_ms == 0.0 and trace.compute_ms > 0.0
        assert trace.compute_start >= 5.0
    assert result.fps == pytest.approx(result.qps * 4)
    assert result.machine["cpu_count"] >= 1 and result.machine["onnxruntime"]


def test_tensorrt_only_flags_warn_on_onnxruntime(reference_models):
    options = short_options(cuda_graph=True, spin_wait=True, no_data_transfers=True)
    result = bench.run_benchmark(reference_models["learnable_dynamic"], options)
    assert result.warnings == [
        "--useCudaGraph applies to TensorRT engines only; ignored for onnxruntime",
        "--useSpinWait applies to TensorRT engines only; ignored for onnxruntime",
        "--noDataTransfers applies to TensorRT engines only; ignored for onnxruntime",
    ]


def test_static_batch_model_runs_at_its_batch(reference_models):
    path = reference_models["learnable_static16"]
    result = bench.run_benchmark(path, short_options(batch=None))
    assert result.batch == 16
    with pytest.raises(InputError, match="static batch"):
        bench.run_benchmark(path, short_options(batch=8))


def test_streams_run_in_parallel_and_are_aggregated(reference_models):
    result = bench.run_benchmark(reference_models["euclidean_dynamic"], short_options(streams=2))
    assert {t.stream for t in result.timed} == {0, 1}
    starts = [t.h2d_start for t in result.timed]
    assert starts == sorted(starts)
    assert any(w.startswith("* Multiple inference streams") for w in result.performance_warnings())


def test_cli_bench_prints_report_and_json_agrees(reference_models, tmp_path, capsys):
    out_json, times, png = tmp_path / "r.json", tmp_path / "times.json", tmp_path / "lat.png"
    code = main(["bench", reference_models["learnable_dynamic"], "--batch", "2", "--warmUp", "5", "--duration",
                 "0.05", "--iterations", "4", "--avgRuns", "2", "--percentile", "50,99", "--json", str(out_json),
                 "--exportTimes", str(times), "--histogram", str(png)])
    assert code == 0
    text = capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert doc["batch"] == 2 and doc["options"]["percentiles"] == [50.0, 99.0]
    qps = float(re.search(r"Throughput: (\S+) qps", text).group(1))
    fps = float(re.search(r"FPS: (\S+) pairs/s", text).group(1))
    assert qps == pytest.approx(doc["qps"], rel=1e-5) and fps == pytest.approx(doc["fps"], rel=1e-5)
    median = float(re.search(r"^Latency: .*median = (\S+) ms", text, re.M).group(1))
    assert median == pytest.approx(doc["latency_ms"]["median"], rel=1e-5)
    assert "Timing trace has {} queries".format(doc["queries"]) in text
    records = json.loads(times.read_text())
    assert len(records) == doc["queries"]
    assert [r["latencyMs"] for r in records] == pytest.approx([r["computeMs"] for r in records])
    import cv2

    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 100
    png2 = tmp_path / "again.png"
    assert bench_report.latency_histogram(str(times), str(png2)) == str(png2) and png2.exists()


def test_cli_bench_user_errors_are_one_line(tmp_path, capsys, reference_models):
    assert main(["bench", str(tmp_path / "missing.onnx")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["bench", reference_models["learnable_dynamic"], "--percentile", "120"])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(InputError, match="exportTimes"):
        bench_report.read_exported_times(str(bad))


# -- the TensorRT path through the fakes (fake tensorrt 10.x + fake pycuda) ------------------------


@pytest.fixture
def fake_gpu(fake_trt_factory, fake_cuda):
    fake_cuda.trt = fake_trt_factory("10.x")
    return fake_cuda


def fake_engine(tmp_path, onnx_path, name="model"):
    """A fake engine (profile 1..32) for ``onnx_path``; no sidecar, so the runner only warns."""
    from fakes.tensorrt import make_fake_engine

    path = tmp_path / (name + ".engine")
    path.write_bytes(make_fake_engine(onnx_path, min_batch=1, opt_batch=8, max_batch=32))
    return str(path)


def trt_options(**kw):
    base = dict(batch=4, warmup_ms=2.0, duration_s=0.0, iterations=5)
    base.update(kw)
    return BenchOptions(**base)


def test_tensorrt_benchmark_times_transfers_and_compute_with_events(fake_gpu, tmp_path, reference_models):
    engine = fake_engine(tmp_path, reference_models["learnable_dynamic"])
    result = bench.run_benchmark(engine, trt_options())
    assert result.backend == "tensorrt" and result.clock == "cuda events"
    queries = len(result.warmup) + len(result.timed)
    counts = fake_gpu.device.counts
    # every query: two inputs up, one output down, one execution; two queries in flight
    assert counts["htod"] == 2 * queries and counts["dtoh"] == queries
    assert fake_gpu.trt._fake.counters["executions_run"] == queries
    assert result.to_dict()["options"]["expose_dma"] is False
    assert "Queries in flight per stream: 2 (double buffering)" in result.notes
    for trace in result.timed:
        assert trace.h2d_ms >= 0 and trace.compute_ms > 0 and trace.d2h_ms >= 0
        assert trace.latency_ms == pytest.approx(trace.h2d_ms + trace.compute_ms + trace.d2h_ms)
    assert result.fps == pytest.approx(result.qps * 4)
    assert fake_gpu.device.summary()["device_allocations"] == 0  # the runner was closed


def test_tensorrt_flags_reach_the_runner(fake_gpu, tmp_path, reference_models):
    engine = fake_engine(tmp_path, reference_models["learnable_dynamic"])
    result = bench.run_benchmark(engine, trt_options(no_data_transfers=True, cuda_graph=True))
    queries = len(result.warmup) + len(result.timed)
    counts = fake_gpu.device.counts
    assert counts["htod"] == 0 and counts["dtoh"] == 0
    # one graph captured per slot (after one plain run each), replayed by every later query
    assert counts["graph_instantiate"] == 2 and counts["graph_launch"] == queries - 2
    assert result.warnings == []


def test_tensorrt_spin_wait_makes_non_blocking_events(fake_gpu, tmp_path, reference_models, monkeypatch):
    from changenet_trt.runtime import tensorrt as trt_backend

    flags_seen = []
    original = trt_backend.TensorRTRunner._activate

    def spy(self):
        original(self)
        flags_seen.extend(e.event.flags for s in self._slots for e in s.events.values())

    monkeypatch.setattr(trt_backend.TensorRTRunner, "_activate", spy)
    engine = fake_engine(tmp_path, reference_models["learnable_dynamic"])
    bench.run_benchmark(engine, trt_options(spin_wait=True))
    blocking = fake_gpu.driver.event_flags.BLOCKING_SYNC
    assert flags_seen and not any(f & blocking for f in flags_seen)


def test_tensorrt_streams_each_have_a_runner_in_their_own_thread(fake_gpu, tmp_path, reference_models):
    engine = fake_engine(tmp_path, reference_models["euclidean_dynamic"])
    result = bench.run_benchmark(engine, trt_options(streams=2, expose_dma=True))
    assert {t.stream for t in result.timed} == {0, 1}
    queries = len(result.warmup) + len(result.timed)
    assert fake_gpu.trt._fake.counters["executions_run"] == queries
    assert fake_gpu.device.summary()["device_allocations"] == 0


def test_cli_bench_on_an_engine(fake_gpu, tmp_path, reference_models, capsys):
    engine = fake_engine(tmp_path, reference_models["learnable_dynamic"])
    out = tmp_path / "r.json"
    assert main(["bench", engine, "--batch", "8", "--warmUp", "2", "--duration", "0", "--iterations", "3",
                 "--useCudaGraph", "--noDataTransfers", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["backend"] == "tensorrt" and doc["batch"] == 8 and doc["options"]["cuda_graph"] is True
    assert "Timing: host clock" not in text and "H2D Latency: " in text
    assert "FPS: {} pairs/s".format(bench.stream_number(doc["fps"])) in text


# -- end to end on a synthetic TAO data set --------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from changenet_trt.data.synth import synthesize

    result = synthesize(str(tmp_path_factory.mktemp("synth")), pairs=6, seed=3)
    return result.csv_path, result.images_dir


def test_end_to_end_times_whole_batches_of_the_repeated_data_set(small_dataset, reference_models, monkeypatch):
    from changenet_trt.data import dataset as dataset_module

    ranges = []
    original = dataset_module.PairLoader.fill

    def spy(self, golden_dst, sample_dst, lo, hi):
        ranges.append((lo, hi, len(golden_dst)))
        return original(self, golden_dst, sample_dst, lo, hi)

    monkeypatch.setattr(dataset_module.PairLoader, "fill", spy)
    csv_path, images = small_dataset
    result = bench.run_end_to_end(reference_models["learnable_dynamic"], csv_path, images,
                                  short_options(batch=4, warmup_ms=1.0, duration_s=0.0, iterations=3))
    assert result.end_to_end and result.batch == 4
    assert len(result.timed) >= 3 and len(result.batch_times_ms) == len(result.timed)
    assert result.fps == pytest.approx(result.qps * 4)
    # 6 pairs in batches of 4: the data set wraps around inside a batch (pairs 4, 5, then 0, 1)
    assert (4, 6, 2) in ranges and (0, 2, 2) in ranges
    assert all(hi - lo == n and 0 <= lo < hi <= 6 for lo, hi, n in ranges)
    # the timed phase's wall time covers every timed batch's wall time
    assert result.walltime_ms >= sum(result.batch_times_ms) - 1e-6
    doc = result.to_dict()
    assert doc["end_to_end"] is True and doc["batch_time_ms"]["median"] > 0
    assert "End-to-End Batch Time: " in bench_report.format_report(result)


def test_cli_end_to_end_and_its_argument_errors(small_dataset, reference_models, tmp_path, capsys):
    csv_path, images = small_dataset
    model = reference_models["euclidean_dynamic"]
    out = tmp_path / "e2e.json"
    assert main(["bench", model, "--end-to-end", "--csv", csv_path, "--images", images, "--batch", "2",
                 "--warmUp", "1", "--duration", "0", "--iterations", "3", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["end_to_end"] is True and doc["batch"] == 2 and doc["queries"] >= 3
    assert "decode + preprocess + inference" in capsys.readouterr().out
    assert main(["bench", model, "--end-to-end"]) == 2
    assert "--end-to-end needs a data set" in capsys.readouterr().err
    assert main(["bench", model, "--csv", csv_path]) == 2
    assert "--csv is only used with --end-to-end" in capsys.readouterr().err
    assert main(["bench", model, "--end-to-end", "--csv", csv_path, "--images", images, "--streams", "2"]) == 2
    assert "--end-to-end runs one pipeline" in capsys.readouterr().err
