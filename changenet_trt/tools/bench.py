"""trtexec-style throughput and latency benchmark of a ChangeNet model (engine or ONNX).

The loop, the stopping rule, the statistics and the report follow TensorRT's trtexec
(samples/common/sampleInference.cpp and sampleReporting.cpp):

* one *query* is one inference of the whole batch, so ``FPS = qps x batch`` (pairs/s);
* two queries are in flight per stream (the runner's two buffer slots): query k+1 is
  submitted before query k is fetched, as trtexec's double-buffered iterations do;
* queries whose compute started in the first ``warmup_ms`` are warm-up; the loop runs until
  both ``iterations`` post-warm-up loop passes and ``warmup + duration`` have elapsed;
* Latency = H2D + compute + D2H of one query; percentile p of N sorted values is
  ``sorted[max(N - 1 - int((1 - p/100) * N), 0)]``; the median averages the two middle
  values for even N; Throughput = queries / (end of the last query - start of the first
  post-warm-up query).

The benchmark drives the same runner code as ``predict`` (``input_buffers``/``submit``/
``fetch`` and ``last_timing``). On a GPU the durations come from CUDA events; with ONNX
Runtime they are host clock times and H2D/D2H are 0. A query's intervals are placed on the
host clock so that its D2H ends when ``fetch`` returned.
"""

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from changenet_trt.api import backend_for, load, make_runner
from changenet_trt.contract import ContractNames, ModelContract
from changenet_trt.data.dataset import PairLoader, load_dataset
from changenet_trt.defaults import BATCH_SIZE
from changenet_trt.errors import ChangeNetError, InputError
from changenet_trt.evaluation.stats import median, percentile
from changenet_trt.runtime.base import Runner, now_ms
from changenet_trt.tools.machine import cpu_model, machine_info

DEFAULT_PERCENTILES = (90.0, 95.0, 99.0)
#: percentiles the JSON report always carries, whatever --percentile asks for
JSON_PERCENTILES = (90.0, 95.0, 99.0)
#: trtexec warns "enqueue-bound" when median enqueue > this x median GPU compute
ENQUEUE_BOUND_RATIO = 0.8
#: trtexec warns "unstable" when the GPU compute time's coefficient of variation (in %)
#: exceeds this; 1.0 in TensorRT 8.5-10.13 (the versions this project targets), 2.5 from 10.15
UNSTABLE_CV_PERCENT = 1.0
#: flags that only mean something for TensorRT engines
TENSORRT_ONLY_FLAGS = (("cuda_graph", "--useCudaGraph"), ("spin_wait", "--useSpinWait"),
                       ("no_data_transfers", "--noDataTransfers"))

Clock = Callable[[], float]


# -- statistics --------------------------------------------------------------------------------
@dataclass
class Stats:
    """Summary of one metric over the timed queries, in ms (``cv_percent``: std/mean x 100)."""

    min: float
    max: float
    mean: float
    median: float
    percentiles: Dict[float, float]
    cv_percent: float

    def to_dict(self, extra_percentiles: Sequence[float] = ()) -> Dict[str, float]:
        out = {"min": self.min, "max": self.max, "mean": self.mean, "median": self.median}
        for p, value in sorted(self.percentiles.items()):
            out[percentile_key(p)] = value
        out["cv_percent"] = self.cv_percent
        return out


def stream_number(value: float) -> str:
    """A number as C++ iostreams print it by default (6 significant digits), as trtexec does."""
    return "{:g}".format(value)


def percentile_key(p: float) -> str:
    """JSON key of a percentile: 90 -> ``p90``, 99.9 -> ``p99.9``."""
    return "p{:g}".format(p)


def summarize(values: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Stats:
    """min, max, mean, median, percentiles and coefficient of variation (population std), as trtexec."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise InputError("no timed queries to summarise")
    mean = sum(ordered) / len(ordered)
    if mean == 0.0:
        cv = float("inf") if any(ordered) else 0.0
    else:
        variance = sum((v - mean) ** 2 for v in ordered) / len(ordered)
        cv = variance ** 0.5 / mean * 100.0
    return Stats(
        min=ordered[0],
        max=ordered[-1],
        mean=mean,
        median=median(ordered),
        percentiles={float(p): percentile(ordered, p) for p in percentiles},
        cv_percent=cv,
    )


# -- the timing loop ---------------------------------------------------------------------------
@dataclass
class Trace:
    """One query: start/end times in ms since the benchmark's start, and its stream."""

    stream: int
    enq_start: float
    enq_end: float
    h2d_start: float
    h2d_end: float
    compute_start: float
    compute_end: float
    d2h_start: float
    d2h_end: float

    @property
    def enqueue_ms(self) -> float:
        return self.enq_end - self.enq_start

    @property
    def h2d_ms(self) -> float:
        return self.h2d_end - self.h2d_start

    @property
    def compute_ms(self) -> float:
        return self.compute_end - self.compute_start

    @property
    def d2h_ms(self) -> float:
        return self.d2h_end - self.d2h_start

    @property
    def latency_ms(self) -> float:
        return self.h2d_ms + self.compute_ms + self.d2h_ms

    def export(self) -> Dict[str, float]:
        """The record trtexec's ``--exportTimes`` writes for one query."""
        return {
            "startEnqMs": self.enq_start, "endEnqMs": self.enq_end,
            "startH2dMs": self.h2d_start, "endH2dMs": self.h2d_end,
            "startComputeMs": self.compute_start, "endComputeMs": self.compute_end,
            "startD2hMs": self.d2h_start, "endD2hMs": self.d2h_end,
            "h2dMs": self.h2d_ms, "computeMs": self.compute_ms,
            "d2hMs": self.d2h_ms, "latencyMs": self.latency_ms,
        }


def _finish(runner: Runner, slot: int, stream: int, enq: Tuple[float, float], clock: Clock, start: float) -> Trace:
    """Fetch ``slot`` and turn the runner's timing into a trace placed on the host clock."""
    runner.fetch(slot, copy=False)
    done = clock() - start
    timing = runner.last_timing
    d2h_start = done - timing.d2h_ms
    compute_start = d2h_start - timing.compute_ms
    h2d_start = compute_start - timing.h2d_ms
    return Trace(stream, enq[0], enq[1], h2d_start, compute_start, compute_start, d2h_start, d2h_start, done)


def inference_loop(
    runner: Runner,
    batch: int,
    iterations: int,
    duration_s: float,
    warmup_ms: float,
    stream: int = 0,
    clock: Clock = now_ms,
    start: Optional[float] = None,
    overlap: bool = True,
) -> List[Trace]:
    """Run queries of ``batch`` pairs on an active runner, trtexec's way; return every trace.

    With ``overlap`` two queries are in flight (slots 0 and 1, trtexec's default double
    buffering, which hides the transfers of one query behind the compute of the other);
    without it (trtexec's ``--exposeDMA``) one at a time. The loop stops once it has made at least
    ``iterations`` passes after the warm-up AND the latest fetched query started computing at
    least ``warmup_ms + 1000 * duration_s`` after ``start`` (default: now). Warm-up queries
    are returned too (``compute_start < warmup_ms``); :func:`split_warmup` drops them.
    """
    if start is None:
        start = clock()
    depth = min(2 if overlap else 1, runner.num_slots)
    max_duration_ms = duration_s * 1000.0 + warmup_ms
    traces: List[Trace] = []
    in_flight: List[Tuple[int, Tuple[float, float]]] = []
    slot = 0
    duration_ms = 0.0
    skip = 0
    passes = 0
    while passes < iterations + skip or duration_ms < max_duration_ms:
        passes += 1
        enq_start = clock() - start
        runner.submit(batch, slot)
        in_flight.append((slot, (enq_start, clock() - start)))
        slot = (slot + 1) % depth
        if len(in_flight) == depth:
            done_slot, enq = in_flight.pop(0)
            trace = _finish(runner, done_slot, stream, enq, clock, start)
            traces.append(trace)
            duration_ms = max(duration_ms, trace.compute_start)
        if 0.0 < duration_ms < warmup_ms:
            # a pass that completed a warm-up query does not count towards --iterations
            skip += 1
    for done_slot, enq in in_flight:
        traces.append(_finish(runner, done_slot, stream, enq, clock, start))
    return traces


def split_warmup(traces: Sequence[Trace], warmup_ms: float) -> Tuple[List[Trace], List[Trace]]:
    """Sort all streams' traces by H2D start; split at the first query that started computing
    after the warm-up (as trtexec). Returns ``(warmup, timed)``."""
    ordered = sorted(traces, key=lambda t: t.h2d_start)
    for index, trace in enumerate(ordered):
        if trace.compute_start >= warmup_ms:
            return ordered[:index], ordered[index:]
    return ordered, []


# -- options and results -----------------------------------------------------------------------
@dataclass
class BenchOptions:
    """trtexec's inference flags. ``batch`` is pairs per query (``None``: the model's static
    batch, else 16); ``warmup_ms`` and ``duration_s`` as trtexec's ``--warmUp``/``--duration``."""

    batch: Optional[int] = None
    warmup_ms: float = 200.0
    duration_s: float = 3.0
    iterations: int = 10
    avg_runs: int = 10
    percentiles: Tuple[float, ...] = DEFAULT_PERCENTILES
    cuda_graph: bool = False
    no_data_transfers: bool = False
    spin_wait: bool = False
    streams: int = 1
    #: one query in flight instead of two (trtexec's --exposeDMA)
    expose_dma: bool = False
    seed: int = 0

    def overlap(self, backend: str) -> bool:
        """Whether two queries are in flight (``backend`` kept for per-backend defaults)."""
        return not self.expose_dma

    def check(self) -> None:
        if self.batch is not None and self.batch < 1:
            raise InputError("--batch must be positive", found=self.batch)
        if self.warmup_ms < 0:
            raise InputError("--warmUp must be >= 0 ms", found=self.warmup_ms)
        if self.duration_s < 0:
            raise InputError("--duration must be >= 0 s", found=self.duration_s)
        if self.iterations < 1:
            raise InputError("--iterations must be >= 1", found=self.iterations)
        if self.avg_runs < 1:
            raise InputError("--avgRuns must be >= 1", found=self.avg_runs)
        if self.streams < 1:
            raise InputError("--streams must be >= 1", found=self.streams)
        bad = [p for p in self.percentiles if not 0.0 <= p <= 100.0]
        if bad or not self.percentiles:
            raise InputError("--percentile values must lie in [0, 100]", found=list(self.percentiles))


@dataclass
class BenchResult:
    """Everything the report, ``--json`` and ``--exportTimes`` need."""

    model: str
    backend: str
    batch: int
    options: BenchOptions
    warmup: List[Trace]
    timed: List[Trace]
    clock: str
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    machine: Dict[str, Any] = field(default_factory=dict)
    end_to_end: bool = False
    #: end to end: when the timed phase started (ms; its first batch's decoding included)
    wall_start_ms: Optional[float] = None
    #: end to end: wall time of each timed batch (ms), the pipeline's period
    batch_times_ms: List[float] = field(default_factory=list)

    @property
    def walltime_ms(self) -> float:
        """From the first timed query's H2D start (end to end: from the start of the timed
        phase) to the last query's D2H end (trtexec)."""
        if not self.timed:
            return 0.0
        first = self.timed[0].h2d_start if self.wall_start_ms is None else self.wall_start_ms
        return self.timed[-1].d2h_end - first

    @property
    def qps(self) -> float:
        wall = self.walltime_ms
        return len(self.timed) / wall * 1000.0 if wall > 0 else float("inf")

    @property
    def fps(self) -> float:
        """Pairs per second: qps x batch."""
        return self.qps * self.batch

    def stats(self, metric: str) -> Stats:
        """``metric``: latency, enqueue, h2d, compute or d2h."""
        values = [getattr(t, metric + "_ms") for t in self.timed]
        wanted = tuple(sorted(set(self.options.percentiles) | set(JSON_PERCENTILES)))
        return summarize(values, wanted)

    @property
    def total_compute_s(self) -> float:
        return self.stats("compute").mean * len(self.timed) / 1000.0

    def performance_warnings(self) -> List[str]:
        """trtexec's warnings: enqueue-bound, transfer-bound, unstable, multiple streams."""
        enqueue, h2d = self.stats("enqueue"), self.stats("h2d")
        compute, d2h = self.stats("compute"), self.stats("d2h")
        out = []
        if enqueue.median > ENQUEUE_BOUND_RATIO * compute.median:
            hint = ("  If not already in use, --useCudaGraph (utilize CUDA graphs where possible) may increase "
                    "the throughput." if self.backend == "tensorrt" else
                    "  (onnxruntime runs on a worker thread: a long enqueue means the host could not hand the "
                    "batch over while the previous one ran.)")
            out.append("* Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be "
                       "under-utilized.\n" + hint)
        if h2d.median >= compute.median:
            out.append("* Throughput may be bound by host-to-device transfers for the inputs rather than GPU "
                       "Compute and the GPU may be under-utilized.\n  Add --noDataTransfers flag to disable data "
                       "transfers.")
        if d2h.median >= compute.median:
            out.append("* Throughput may be bound by device-to-host transfers for the outputs rather than GPU "
                       "Compute and the GPU may be under-utilized.\n  Add --noDataTransfers flag to disable data "
                       "transfers.")
        if compute.cv_percent > UNSTABLE_CV_PERCENT:
            hint = ("  If not already in use, locking GPU clock frequency or adding --useSpinWait may improve "
                    "the stability." if self.backend == "tensorrt" else
                    "  On a CPU, other processes and frequency scaling cause this; a longer --duration helps.")
            out.append("* GPU compute time is unstable, with coefficient of variance = {}%.\n{}".format(
                stream_number(compute.cv_percent), hint))
        if self.options.streams > 1:
            out.append("* Multiple inference streams are used. Latencies may not be accurate since inferences "
                       "may run in parallel. Please use \"Throughput\" as the performance metric instead.")
        return out

    def to_dict(self) -> Dict[str, Any]:
        """The ``--json`` document."""
        opts = self.options
        metrics = {name: self.stats(name).to_dict() for name in ("latency", "enqueue", "h2d", "compute", "d2h")}
        return {
            "model": self.model,
            "backend": self.backend,
            "batch": self.batch,
            "streams": opts.streams,
            "end_to_end": self.end_to_end,
            "clock": self.clock,
            "options": {
                "warmup_ms": opts.warmup_ms, "duration_s": opts.duration_s, "iterations": opts.iterations,
                "avg_runs": opts.avg_runs, "percentiles": list(opts.percentiles),
                "cuda_graph": opts.cuda_graph, "no_data_transfers": opts.no_data_transfers,
                "spin_wait": opts.spin_wait, "expose_dma": not opts.overlap(self.backend),
            },
            "warmup_queries": len(self.warmup),
            "queries": len(self.timed),
            "walltime_s": self.walltime_ms / 1000.0,
            "qps": self.qps,
            "fps": self.fps,
            "latency_ms": metrics["latency"],
            "enqueue_ms": metrics["enqueue"],
            "h2d_ms": metrics["h2d"],
            "compute_ms": metrics["compute"],
            "d2h_ms": metrics["d2h"],
            "total_compute_s": self.total_compute_s,
            "batch_time_ms": (summarize(self.batch_times_ms, JSON_PERCENTILES).to_dict()
                              if self.batch_times_ms else None),
            "warnings": [w.splitlines()[0] for w in self.warnings + self.performance_warnings()],
            "machine": self.machine,
        }


# -- running a model ---------------------------------------------------------------------------
def runner_options(backend: str, options: BenchOptions, extra: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], List[str]]:
    """Backend options for ``make_runner`` from the flags; plus one warning per flag that does
    not apply (the TensorRT-only flags on onnxruntime are ignored, with a warning)."""
    out = dict(extra or {})
    warnings = []
    if backend == "tensorrt":
        out.update(cuda_graph=options.cuda_graph, spin_wait=options.spin_wait,
                   data_transfers=not options.no_data_transfers)
    else:
        for attr, flag in TENSORRT_ONLY_FLAGS:
            if getattr(options, attr):
                warnings.append("{} applies to TensorRT engines only; ignored for {}".format(flag, backend))
    return out, warnings


def random_inputs(contract: ModelContract, batch: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Seeded standard-normal inputs ``{name: float32 [batch, C, H, W]}`` (like normalised
    images), in the contract's input order; the benchmark scripts feed the same arrays to peers."""
    rng = np.random.default_rng(seed)
    shape = (batch,) + tuple(contract.input_shape)
    return {name: rng.standard_normal(shape, dtype=np.float32) for name in contract.input_names()}


def fill_random(runner: Runner, batch: int, seed: int = 0) -> None:
    """Fill every slot's input buffers with :func:`random_inputs` (trtexec also feeds random data)."""
    values = random_inputs(runner.contract, batch, seed)
    for slot in range(runner.num_slots):
        for name, buf in runner.input_buffers(batch, slot=slot).items():
            np.copyto(buf, values[name], casting="same_kind")


def resolve_batch(runner: Runner, batch: Optional[int]) -> int:
    """The batch to run: the requested one, else the model's static batch, else 16."""
    static = runner.contract.static_batch
    if batch is None:
        return static if static is not None else min(BATCH_SIZE, runner.batch_range[1])
    if static is not None and batch != static:
        raise InputError("this model has a static batch; benchmark it at that batch",
                         expected="--batch {}".format(static), found=batch)
    runner.check_batch(batch)
    return batch


def run_benchmark(
    model: str,
    options: Optional[BenchOptions] = None,
    backend: str = "auto",
    names: Optional[ContractNames] = None,
    backend_options: Optional[Dict[str, Any]] = None,
    clock: Clock = now_ms,
) -> BenchResult:
    """Benchmark ``model`` (``.onnx`` on onnxruntime, ``.engine``/``.plan`` on TensorRT) with
    random inputs; ``options.streams`` independent runners run in as many threads."""
    options = options or BenchOptions()
    options.check()
    which = backend_for(os.fspath(model), backend)
    kwargs, warnings = runner_options(which, options, backend_options)
    names = ContractNames.of(names)

    def make() -> Runner:
        return make_runner(model, backend=which, batch_size=options.batch, names=names, **kwargs)

    # Check the batch (and the model) once, before any thread starts.
    probe = make()
    if which == "triton":  # a served model's batch range is known once the server is asked
        probe.activate()
    try:
        batch = resolve_batch(probe, options.batch)
    except BaseException:
        probe.deactivate()
        raise
    runners = [probe] + [make() for _ in range(options.streams - 1)]
    traces: List[Trace] = []
    if options.streams == 1:
        with probe:
            fill_random(probe, batch, options.seed)
            traces = inference_loop(probe, batch, options.iterations, options.duration_s, options.warmup_ms,
                                    clock=clock, overlap=options.overlap(which))
    else:
        traces = _run_streams(runners, batch, options, clock, options.overlap(which))
    warmup, timed = split_warmup(traces, options.warmup_ms)
    if not timed:
        raise ChangeNetError("no query finished after the warm-up; raise --iterations or --duration")
    notes = ["Queries in flight per stream: {}".format(
        "2 (double buffering)" if options.overlap(which) else "1 (--exposeDMA)")]
    if which != "tensorrt":
        notes.append("Timing: host clock ({} on {}; H2D/D2H are 0, \"GPU Compute Time\" is the session run "
                     "time)".format(which, cpu_model()))
    return BenchResult(
        model=os.fspath(model), backend=which, batch=batch, options=options, warmup=warmup, timed=timed,
        clock="cuda events" if which == "tensorrt" else "host", warnings=warnings, notes=notes,
        machine=machine_info(which),
    )


def _run_streams(runners: List[Runner], batch: int, options: BenchOptions, clock: Clock,
                 overlap: bool) -> List[Trace]:
    """One thread per runner; each activates its runner in its own thread (a CUDA context is
    per thread), all start timing together, traces are merged."""
    barrier = threading.Barrier(len(runners) + 1)
    results: List[List[Trace]] = [[] for _ in runners]
    errors: List[BaseException] = []
    start_box: List[float] = []

    def work(index: int, runner: Runner) -> None:
        try:
            with runner:
                fill_random(runner, batch, options.seed)
                barrier.wait()
                barrier.wait()  # the main thread sets the common start time in between
                results[index] = inference_loop(runner, batch, options.iterations, options.duration_s,
                                                options.warmup_ms, stream=index, clock=clock, start=start_box[0],
                                                overlap=overlap)
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i, r), name="changenet-bench-{}".format(i), daemon=True)
               for i, r in enumerate(runners)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
        start_box.append(clock())
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [t for per_stream in results for t in per_stream]


# -- end to end: decode + preprocess + inference -----------------------------------------------
def run_end_to_end(
    model: str,
    csv_path: str,
    images_dir: Optional[str] = None,
    options: Optional[BenchOptions] = None,
    layout: Any = None,
    normalization: Any = None,
    workers: Optional[int] = None,
    backend: str = "auto",
    names: Optional[ContractNames] = None,
    backend_options: Optional[Dict[str, Any]] = None,
    clock: Clock = now_ms,
) -> BenchResult:
    """Benchmark the whole pipeline on a TAO data set: decode + preprocess (``PairLoader``) +
    inference, through ``Classifier.run_pipeline`` as ``eval`` runs it.

    The data set repeats as often as needed (decoding then reads from the OS file cache).
    Whole batches are timed, so ``FPS = qps x batch`` still holds. Warm-up: single batches for
    ``warmup_ms``; then the pipeline runs in chunks until ``iterations`` batches and
    ``duration_s`` seconds are both reached (chunk sizes estimated from the batch time seen so
    far). Latency/Enqueue/H2D/GPU Compute/D2H are the runner's times of each batch; the
    End-to-End Batch Time is the wall time per batch, decoding included.
    """
    options = options or BenchOptions()
    options.check()
    if options.streams != 1:
        raise InputError("--end-to-end runs one pipeline", expected="--streams 1", found=options.streams)
    which = backend_for(os.fspath(model), backend)
    kwargs, warnings = runner_options(which, options, backend_options)
    names = ContractNames.of(names)
    if options.expose_dma:
        warnings.append("--exposeDMA does not apply to --end-to-end (run_pipeline keeps two batches in flight)")
    dataset = load_dataset(csv_path, images_dir, layout, check_files=True)
    if layout is None:
        layout = dataset.layout
    clf = load(model, backend=which, batch_size=options.batch, normalization=normalization,
               names=names, **kwargs)
    try:
        runner = clf.runner
        batch = resolve_batch(runner, options.batch)
        loader = PairLoader(dataset.pairs, layout, clf.contract.input_shape, clf.normalization, workers=workers)
        total = len(dataset.pairs)

        def fill(golden_dst: np.ndarray, sample_dst: np.ndarray, lo: int, hi: int) -> None:
            # pairs [lo, hi) of the data set repeated end to end
            pos = lo
            while pos < hi:
                first = pos % total
                take = min(hi - pos, total - first)
                loader.fill(golden_dst[pos - lo:pos - lo + take], sample_dst[pos - lo:pos - lo + take],
                            first, first + take)
                pos += take

        start = clock()
        traces: List[Trace] = []
        warm: List[Trace] = []
        batch_times: List[float] = []

        def run_chunk(batches: int, keep: bool) -> float:
            """Run ``batches`` whole batches; return the chunk's wall time in ms."""
            chunk_start = clock() - start
            last = [chunk_start]

            def on_batch(_: int) -> None:
                done = clock() - start
                timing = runner.last_timing
                d2h_start = done - timing.d2h_ms
                compute_start = d2h_start - timing.compute_ms
                h2d_start = compute_start - timing.h2d_ms
                trace = Trace(0, h2d_start - timing.enqueue_ms, h2d_start, h2d_start, compute_start,
                              compute_start, d2h_start, d2h_start, done)
                (traces if keep else warm).append(trace)
                if keep:
                    batch_times.append(done - last[0])
                last[0] = done

            clf.run_pipeline(batches * batch, fill, on_batch=on_batch)
            return clock() - start - chunk_start

        try:
            per_batch = run_chunk(1, keep=False)
            while clock() - start < options.warmup_ms:
                per_batch = run_chunk(1, keep=False)
            timed_start = clock() - start
            while True:
                elapsed = clock() - start - timed_start
                remaining_ms = options.duration_s * 1000.0 - elapsed
                wanted = max(options.iterations - len(traces), int(np.ceil(remaining_ms / max(per_batch, 1e-3))))
                if wanted <= 0:
                    break
                chunk_ms = run_chunk(wanted, keep=True)
                per_batch = chunk_ms / wanted
        finally:
            loader.close()
        if loader.failed:
            first = next(iter(loader.failed.values()))
            warnings.append("{} pairs could not be decoded and ran as zeros (first: {})".format(len(loader.failed), first))
    finally:
        clf.close()
    notes = ["Data set: {} pairs from {} ({} rows set aside); decode + preprocess overlap inference "
             "(Classifier.run_pipeline)".format(total, csv_path, len(dataset.problems))]
    if which != "tensorrt":
        notes.append("Timing: host clock ({} on {}; H2D/D2H are 0, \"GPU Compute Time\" is the session run "
                     "time)".format(which, cpu_model()))
    return BenchResult(
        model=os.fspath(model), backend=which, batch=batch, options=options, warmup=warm, timed=traces,
        clock="cuda events" if which == "tensorrt" else "host", warnings=warnings, notes=notes,
        machine=machine_info(which), end_to_end=True, wall_start_ms=timed_start, batch_times_ms=batch_times,
    )
