"""ONNX -> TensorRT engine, one code path for TensorRT 8.5 through 11.x.

:func:`changenet_trt.engine.plan.make_plan` resolves everything a build does without TensorRT
(``build --dry-run``, ``build --print-trtexec``); :func:`build_engine_file` executes that plan
in short steps:

1. **prepare** the ONNX (static batch -> dynamic, proven with ONNX Runtime: :mod:`.prepare`) and
   the typed model (:func:`prepare_typed`: precision in the graph, made on the CPU by
   :mod:`.precision` and cached next to the engine), then parse it with TensorRT's ONNX parser
   (TensorRT 10+: a strongly typed network);
2. **configure** the builder config with exactly the plan's settings (:func:`configure`: its
   builder flags in one loop, memory pools, the one optimisation profile, optimisation level,
   DLA, TensorRT 8.x's layers kept in FP32, the timing cache);
3. **calibrate** (the legacy ``int8_calibrator`` path only, TensorRT 8.5-10.x): attach an
   entropy calibrator fed by real pairs, or its cache;
4. **serialize** the network, with tqdm progress bars on a terminal (TensorRT 10's
   IProgressMonitor adds one bar per build phase);
5. **write** the engine, the timing cache and the JSON sidecar (:mod:`changenet_trt.sidecar`),
   which records what :func:`configure` applied and the typed model (sha256, how it was made).
"""

import contextlib
import datetime
import logging
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from changenet_trt import __version__
from changenet_trt.contract import ModelContract, read_contract
from changenet_trt.data.preprocess import get_normalization
from changenet_trt.engine.calibration import (
    check_cache,
    dataset_batches,
    make_calibrator,
    preprocess_description,
)
from changenet_trt.engine.options import BuildOptions, match_layers
from changenet_trt.engine.plan import BuildPlan, make_plan
from changenet_trt.engine.precision import graph_precision, read_made
from changenet_trt.engine.prepare import prepare_model
from changenet_trt.engine.typed import TypedPairs, make_typed_model
from changenet_trt.errors import BuildError, ChangeNetError, InputError
from changenet_trt.files import atomic_write, check_output_file, file_sha256
from changenet_trt.gpu.cuda import GpuInfo
from changenet_trt.gpu.trt import (
    call,
    create_builder,
    create_runtime,
    import_tensorrt,
    io_tensors,
    load_lean_runtime,
    make_logger,
    network_flags,
    profile_shapes,
    subclass,
    version,
)
from changenet_trt.sidecar import EngineMetadata, sidecar_path, write_sidecar

log = logging.getLogger("changenet_trt.engine.build")


# -- progress --------------------------------------------------------------------------------------
class BuildProgress:
    """tqdm bars while TensorRT builds (minutes on a Jetson).

    One "building engine" line whose elapsed time ticks every ``refresh_s`` seconds and, where
    TensorRT 10's progress monitor reports them, one bar per running build phase. With
    ``enabled`` the bars show only when ``stream`` (default stderr) is a terminal (tqdm's
    ``disable=None``); ``enabled=False`` shows nothing. While they show, log records go
    through tqdm so they do not tear the bars.
    """

    def __init__(self, stream: Optional[IO[str]] = None, enabled: bool = True, refresh_s: float = 0.5,
                 desc: str = "building engine") -> None:
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.disable: Optional[bool] = None if enabled else True
        self.refresh_s = refresh_s
        self.bar: Optional[tqdm] = None
        self.phases: Dict[str, tqdm] = {}
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        self._exit = contextlib.ExitStack()

    def bar_for(self, desc: str, total: Optional[int], unit: str) -> tqdm:
        """Another bar shown (or hidden) like this one's, e.g. the calibration batches."""
        return tqdm(total=total, desc=desc, unit=unit, file=self.stream, disable=self.disable, leave=False,
                    dynamic_ncols=True)

    def phase_start(self, name: str, steps: int) -> None:
        old = self.phases.pop(name, None)
        if old is not None:
            old.close()
        self.phases[name] = self.bar_for(name, int(steps), "step")

    def step(self, name: str, done: int) -> None:
        bar = self.phases.get(name)
        if bar is not None:
            bar.update(int(done) - bar.n)

    def phase_finish(self, name: str) -> None:
        bar = self.phases.pop(name, None)
        if bar is not None:
            bar.close()

    def _tick(self) -> None:
        while not self._stop.wait(self.refresh_s):
            if self.bar is not None:
                self.bar.refresh()

    def __enter__(self) -> "BuildProgress":
        self.bar = tqdm(desc=self.desc, total=None, file=self.stream, disable=self.disable, leave=False,
                        bar_format="{desc}: {elapsed} elapsed")
        if not self.bar.disable:
            self._exit.enter_context(logging_redirect_tqdm())
            self._ticker = threading.Thread(target=self._tick, name="changenet-build-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        for name in list(self.phases):
            self.phase_finish(name)
        if self.bar is not None:
            self.bar.close()
        self._exit.close()


def _monitor_class(trt: Any) -> type:
    class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        """TensorRT 10's build progress callback, feeding a :class:`BuildProgress`."""

        def __init__(self, progress: BuildProgress) -> None:
            trt.IProgressMonitor.__init__(self)
            self.progress = progress

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            self.progress.phase_start(phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            self.progress.step(phase_name, step + 1)
            return True

        def phase_finish(self, phase_name: str) -> None:
            self.progress.phase_finish(phase_name)

    return Monitor


def _progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    """A ``trt.IProgressMonitor`` (TensorRT 10+) that feeds ``progress``."""
    return subclass(trt, _monitor_class)(progress)


# -- step 1: prepare and parse ---------------------------------------------------------------------------
@dataclass
class TypedModel:
    """The model TensorRT parses, as :func:`prepare_typed` left it.

    ``path``/``sha256``: the typed ONNX; ``made``: how it was made (:func:`~changenet_trt.engine.precision.read_made`,
    None for a float32 model); ``reused``: a cached model with the same inputs was used;
    ``report``: the :class:`~changenet_trt.engine.precision.PrecisionReport` when it was made now;
    ``pairs``: what its pairs were (fp16-check/proof or calibration); ``prepare_report``: the
    static -> dynamic batch preparation's report, if any; ``plan``: the complete build plan, with
    what the typed model holds (:meth:`~changenet_trt.engine.plan.BuildPlan.with_typed_model`).
    """

    path: str
    sha256: str
    made: Optional[Dict[str, Any]]
    reused: bool = False
    report: Any = None
    pairs: Optional[str] = None
    prepare_report: Any = None
    plan: Optional[BuildPlan] = None

    def summary_lines(self) -> List[str]:
        if self.made is None:
            return ["model: {} (float32)".format(self.path)]
        head = "typed model: {} ({}, {})".format(self.path, self.made.get("precision"),
                                                 "reused: made from the same inputs" if self.reused else "made now")
        lines = [head]
        if self.pairs:
            lines.append("  pairs: {}".format(self.pairs))
        if self.report is not None:
            lines += ["  " + line for line in self.report.summary_lines()[1:]]
        return lines


def _make_typed(plan: BuildPlan, calibration_batches: Optional[Iterator[Any]], progress: BuildProgress) -> Any:
    """Write ``plan.typed_onnx`` from the prepared float32 model, as ``prepare`` does
    (:func:`~changenet_trt.engine.typed.make_typed_model`); returns its TypedResult."""
    opts = plan.options
    names = opts.names
    inputs = dict(plan.typed_inputs or {})
    origin = opts.model if plan.rewrite_batch is not None else None  # the static-batch original
    if plan.precision == "int8" and calibration_batches is not None:
        inputs["calibration"] = "batches given by the caller"  # never matches a later plan: remade each time
    elif plan.precision == "int8" and not opts.calib_csv:
        raise InputError("an INT8 build calibrates its Q/DQ model on real pairs",
                         expected="--calib-csv CSV (TAO layout), or a typed model cached from the same inputs "
                                  "({})".format(plan.typed_onnx), found="neither")
    pairs = TypedPairs(csv=opts.calib_csv, images=opts.calib_images, layout=opts.calib_layout,
                       calib_batches=opts.calib_batches, batch=plan.profile.opt, proof_pairs=opts.proof_pairs)
    return make_typed_model(
        plan.prepared_onnx, plan.typed_onnx, plan.precision, pairs, fp32_layers=list(opts.fp32_layers),
        force=opts.force_fp16, method=opts.calib_method,
        calibration_batches=calibration_batches if plan.precision == "int8" else None,
        normalization=plan.preprocess, names=names, origin=origin,
        extra_made={"build_inputs": inputs}, progress=progress.disable is not True, progress_file=progress.stream)


def prepare_typed(plan: BuildPlan, calibration_batches: Optional[Iterator[Any]] = None,
                  status_stream: Optional[IO[str]] = None) -> TypedModel:
    """Make (or reuse) everything the build parses, on the CPU: the dynamic-batch ONNX, then
    the typed model (float16 / INT8 Q/DQ) cached as ``plan.typed_onnx``; its ``plan`` is ``plan``
    completed with what the typed model holds (:meth:`BuildPlan.with_typed_model`). No TensorRT needed.

    ``calibration_batches``: (golden, sample) preprocessed arrays to calibrate the INT8 model
    from instead of ``--calib-csv`` (the API path; the model is then always remade).
    """
    opts = plan.options
    prepare_report = None
    if plan.rewrite_batch is not None:
        prepare_report = prepare_model(opts.model, plan.prepared_onnx, names=opts.names)
        for line in prepare_report.summary_lines():
            log.info("%s", line)
    report = None
    reused = False
    pairs = None
    if plan.makes_typed_model:
        fresh_batches = calibration_batches is not None and plan.precision == "int8"
        if plan.typed_ready and not fresh_batches:
            reused = True
            log.info("reusing the typed model %s (made from the same inputs)", plan.typed_onnx)
        else:
            pairs = "calibration batches given by the caller" if fresh_batches else plan.pairs_description()
            what = "making the float16 model" if plan.precision == "fp16" else "making the INT8 Q/DQ model"
            with BuildProgress(stream=status_stream, enabled=opts.progress, desc=what) as progress:
                result = _make_typed(plan, calibration_batches, progress)
            report = result.report
            for line in result.summary_lines():
                log.info("%s", line)
        plan = plan.with_typed_model(graph_precision(plan.typed_onnx))
    elif plan.typed_source == "input":
        plan = plan.with_typed_model(graph_precision(plan.typed_onnx))
    made = read_made(plan.typed_onnx) if plan.typed_source != "float32" else None
    return TypedModel(plan.typed_onnx, file_sha256(plan.typed_onnx), made, reused, report, pairs, prepare_report, plan)


def _parse_network(trt: Any, logger: Any, builder: Any, plan: BuildPlan) -> Any:
    """The network of the typed model: strongly typed from TensorRT 10 (its precision is the
    ONNX types), weakly typed on 8.x and for the legacy calibrator."""
    flags = network_flags(trt)
    if plan.strongly_typed:
        creation = trt.NetworkDefinitionCreationFlag
        if not hasattr(creation, "STRONGLY_TYPED"):
            raise BuildError("TensorRT {} cannot make a strongly typed network".format(trt.__version__),
                             expected="TensorRT 10 or newer (see `build --dry-run`)")
        flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with logger.capture() as logged:
        parsed = parser.parse_from_file(plan.typed_onnx)
    if not parsed:
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise BuildError("TensorRT's ONNX parser rejected {}".format(plan.typed_onnx),
                         found="; ".join(errors or logged[-3:]) or "no error recorded (run with -v)")
    # keep the parser alive as long as the network: it owns the weights
    return network, parser


# -- step 2: configure -----------------------------------------------------------------------------------
@dataclass
class Configured:
    """What :func:`configure` set on the builder config (the sidecar records it).

    ``flags``: ``trt.BuilderFlag`` names set, in order; ``memory_pools``: pool name -> bytes;
    ``fp32_layers``: names of the network layers pinned to FP32.
    """

    flags: List[str]
    memory_pools: Dict[str, int]
    opt_level: Optional[int]
    fp32_layers: List[str]
    timing_cache_hit: bool = False


def fast_precisions(gpu: GpuInfo) -> Dict[str, Optional[bool]]:
    """Does this GPU run FP16 / INT8 fast? ``None`` when the GPU is unknown.

    Decided from the compute capability (TensorRT 11 dropped ``builder.platform_has_fast_*``):
    fast FP16 from sm_53 except sm_61 (Pascal GeForce), fast INT8 from sm_61.
    """
    if not gpu.known:
        return {"fp16": None, "int8": None}
    cc = tuple(gpu.compute_capability)
    return {"fp16": cc >= (5, 3) and cc != (6, 1), "int8": cc >= (6, 1)}


def _warn_slow_precisions(plan: BuildPlan) -> None:
    fast = fast_precisions(plan.gpu)
    if plan.precision == "fp16" and fast["fp16"] is False:
        log.warning("this GPU has no fast FP16; the engine will be slow in FP16 (consider --fp32)")
    if plan.precision == "int8" and fast["int8"] is False:
        log.warning("this GPU has no fast INT8 support")


def _keep_layers_fp32(trt: Any, network: Any, patterns: Sequence[str]) -> List[str]:
    """Pin matching layers (and their float outputs) to FP32; return the layer names."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    names = match_layers([layer.name for layer in layers], patterns)
    floats = (trt.DataType.FLOAT, trt.DataType.HALF)
    for layer in layers:
        if layer.name not in names:
            continue
        layer.precision = trt.DataType.FLOAT
        for index in range(layer.num_outputs):
            if layer.get_output(index).dtype in floats:
                layer.set_output_type(index, trt.DataType.FLOAT)
    return names


def _load_timing_cache(config: Any, path: str) -> Tuple[Any, bool]:
    data = b""
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            data = handle.read()
    cache = config.create_timing_cache(data)
    loaded = bool(data) and cache is not None
    if cache is None:
        log.warning("timing cache %s is unreadable; starting a new one", path)
        cache = config.create_timing_cache(b"")
        loaded = False
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s was made by another TensorRT or GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")
        loaded = False
        if not config.set_timing_cache(cache, False):
            raise BuildError("TensorRT refused an empty timing cache")
    return cache, loaded


def configure(trt: Any, builder: Any, network: Any, config: Any, plan: BuildPlan) -> Configured:
    """Apply exactly the plan's settings to ``config`` (a ``trt.IBuilderConfig``).

    BuildError when this TensorRT or device cannot do what the plan says (a flag it lacks, a
    DLA core it does not have, a refused profile).
    """
    _warn_slow_precisions(plan)
    flags: List[str] = []
    for name in plan.flags:
        if not hasattr(trt.BuilderFlag, name):
            raise BuildError("TensorRT {} has no builder flag {}".format(trt.__version__, name),
                             expected="a TensorRT that binds BuilderFlag.{} (see `build --dry-run`)".format(name),
                             found="TensorRT {}".format(trt.__version__))
        config.set_flag(getattr(trt.BuilderFlag, name))
        flags.append(name)
    for pool, size in plan.memory_pools.items():
        config.set_memory_pool_limit(getattr(trt.MemoryPoolType, pool), int(size))
    profile = builder.create_optimization_profile()
    for name, (low, mid, high) in plan.input_shapes.items():
        profile.set_shape(name, tuple(low), tuple(mid), tuple(high))
    if config.add_optimization_profile(profile) < 0:
        raise BuildError("TensorRT refused the optimisation profile", found=plan.input_shapes)
    if plan.opt_level is not None:
        if not hasattr(config, "builder_optimization_level"):
            raise BuildError("the plan sets a builder optimisation level this TensorRT lacks",
                             expected="TensorRT 8.6+", found="TensorRT {}".format(trt.__version__))
        config.builder_optimization_level = int(plan.opt_level)
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, plan.profiling_verbosity)
    if plan.dla_core is not None:
        cores = builder.num_DLA_cores
        if plan.dla_core >= cores:
            raise BuildError("no DLA core {} on this device".format(plan.dla_core),
                             expected="a core in 0..{}".format(cores - 1) if cores else "a Jetson with DLA (Xavier, Orin)",
                             found="{} DLA core(s)".format(cores))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan.dla_core)
    fp32_layers: List[str] = []
    if plan.fp32_layers and not plan.strongly_typed:
        # TensorRT 8.x (or the legacy calibrator): the typed graph's float32 nodes become layer precision
        fp32_layers = _keep_layers_fp32(trt, network, plan.fp32_layers)
        log.info("keeping %d layer(s) in FP32 (%s precision constraints): %s", len(fp32_layers),
                 plan.precision_constraints, ", ".join(fp32_layers))
    hit = False
    if plan.timing_cache_path:
        _, hit = _load_timing_cache(config, plan.timing_cache_path)
    return Configured(flags, dict(plan.memory_pools), plan.opt_level, fp32_layers, hit)


# -- step 3: calibrate -----------------------------------------------------------------------------------
@dataclass
class _Calibration:
    calibrator: Any = None
    bar: Any = None
    record: Dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.calibrator is not None:
            self.calibrator.close()
        if self.bar is not None:
            self.bar.close()


def _calibrate(trt: Any, builder: Any, config: Any, plan: BuildPlan, contract: ModelContract,
               calibration_batches: Optional[Iterator[Any]], progress: BuildProgress) -> _Calibration:
    """The legacy path (TensorRT 8.5-10.x): attach an entropy calibrator fed by real pairs, or by a matching cache."""
    if not plan.legacy_calibrator:
        return _Calibration()
    opts = plan.options
    preprocess = preprocess_description(plan.preprocess, opts.calib_layout if opts.calib_csv else None)
    cache_path = plan.calib_cache_path or ""
    cache = None if opts.recalibrate else check_cache(cache_path, plan.onnx_sha256, preprocess, contract.input_shape)
    use_cache = bool(cache and cache.usable)
    batch = plan.profile.opt
    batch_shape = contract.batch_shape(batch)
    count: Optional[int] = None
    if use_cache:
        batches: Any = iter(())
        count = 0
        log.info("reusing calibration cache %s", cache_path)
    elif calibration_batches is not None:
        batches = calibration_batches
    elif opts.calib_csv:
        count, batches = dataset_batches(opts.calib_csv, contract.input_shape, batch, opts.calib_batches,
                                         images_dir=opts.calib_images, layout=opts.calib_layout,
                                         normalization=plan.preprocess)
        log.info("calibrating on %d batch(es) of %d pairs from %s", count, batch, opts.calib_csv)
    else:
        raise InputError("INT8 needs calibration data or a matching calibration cache",
                         expected="--calib-csv CSV (TAO layout) or an existing {}".format(cache_path),
                         found="neither")
    header = {"onnx_sha256": plan.onnx_sha256, "preprocess": preprocess,
              "input_shape": list(contract.input_shape), "algorithm": "entropy2",
              "trt_version": plan.trt_version, "batch_size": batch}
    bar = progress.bar_for("calibrating", count, "batch") if not use_cache else None
    calibrator = make_calibrator(trt, batches, contract.golden_input, contract.sample_input, batch_shape,
                                 cache_path, header, use_cache=use_cache, dtype=contract.input_dtype,
                                 on_batch=None if bar is None else (lambda fed: bar.update(1)))
    result = _Calibration(calibrator, bar, {"cache": cache_path, "reused": use_cache})
    calib_profile = builder.create_optimization_profile()
    for name in (contract.sample_input, contract.golden_input):
        calib_profile.set_shape(name, batch_shape, batch_shape, batch_shape)
    try:
        with warnings.catch_warnings():
            # TensorRT 10.1 deprecated implicit quantization; it still works through 10.x.
            warnings.simplefilter("ignore", DeprecationWarning)
            config.int8_calibrator = calibrator
            if not config.set_calibration_profile(calib_profile):
                raise BuildError("TensorRT refused the calibration profile", found=list(batch_shape))
    except BaseException:
        result.close()
        raise
    return result


# -- step 4: serialize -----------------------------------------------------------------------------------
def _serialize(trt: Any, builder: Any, network: Any, config: Any, logger: Any, calibration: _Calibration,
               progress: BuildProgress) -> bytes:
    """Build the serialized engine; BuildError with TensorRT's last errors when it cannot."""
    if hasattr(config, "progress_monitor"):
        config.progress_monitor = _progress_monitor(trt, progress)
    log.info("building the engine (this takes minutes on a Jetson)")
    try:
        with logger.capture() as errors:
            serialized = builder.build_serialized_network(network, config)
    finally:
        calibration.close()
    calibrator = calibration.calibrator
    if calibrator is not None and calibrator.error is not None:
        error = calibrator.error
        if isinstance(error, ChangeNetError):
            raise error
        raise BuildError("reading calibration data failed", found="{}: {}".format(type(error).__name__, error))
    if serialized is None:
        raise BuildError("TensorRT could not build the engine",
                         found="; ".join(errors[-3:]) or "no error message (run with -v)")
    if calibrator is not None:
        calibration.record.update({"batches": calibrator.batches_fed, "written": calibrator.cache_written})
    return bytes(memoryview(serialized))


# -- step 5: write ----------------------------------------------------------------------------------------
def _engine_io(trt: Any, logger: Any, data: bytes, plan: BuildPlan) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Deserialize what was just built (so a bad engine never gets written); its I/O tensors and profile."""
    # a version-compatible plan may embed the lean runtime (host code); these bytes are our own
    runtime = create_runtime(trt, "checking the built engine", allow_host_code="VERSION_COMPATIBLE" in plan.flags)
    if "EXCLUDE_LEAN_RUNTIME" in plan.flags:  # no lean runtime inside: TensorRT needs this release's loaded
        runtime = load_lean_runtime(runtime, logger, str(version(trt)))
    engine = call(logger, "deserializing the engine it just built", runtime.deserialize_cuda_engine, data,
                  error=BuildError)
    tensors = io_tensors(engine)
    shapes = {t["name"]: [list(s) for s in profile_shapes(engine, t["name"], 0)]
              for t in tensors if t["mode"] == "input"}
    return tensors, shapes


def _metadata(plan: BuildPlan, contract: ModelContract, configured: Configured, calibration: Dict[str, Any],
              tensors: List[Dict[str, Any]], shapes: Dict[str, Any], seconds: float,
              typed: TypedModel) -> EngineMetadata:
    opts = plan.options
    norm = get_normalization(plan.preprocess)
    return EngineMetadata(
        trt_version=str(plan.trt_version),
        precision=plan.precision,
        profile=plan.profile.as_dict(),
        sample_input=contract.sample_input,
        golden_input=contract.golden_input,
        output=contract.output,
        output_kind=contract.output_kind,
        onnx_sha256=plan.onnx_sha256,
        gpu_name=plan.gpu.name,
        compute_capability=list(plan.gpu.compute_capability),
        profile_shapes=shapes,
        tensors=tensors,
        onnx_path=os.path.abspath(opts.model),
        preprocess=plan.preprocess,
        normalization={"mean": list(norm.mean), "std": list(norm.std)},
        flags={
            "builder_flags": list(configured.flags),
            "memory_pools_mib": {k.lower(): v >> 20 for k, v in configured.memory_pools.items()},
            "workspace_mib": opts.workspace_mib,
            "builder_optimization_level": configured.opt_level,
            "dla_core": plan.dla_core,
            "fp32_layers": configured.fp32_layers,
            "precision_constraints": plan.precision_constraints if configured.fp32_layers else None,
            "version_compatible": "VERSION_COMPATIBLE" in configured.flags,
            "exclude_lean_runtime": "EXCLUDE_LEAN_RUNTIME" in configured.flags,
            "timing_cache": plan.timing_cache_path,
            "calibration": calibration or None,
            "strongly_typed": plan.strongly_typed,
            "precision_from": ("legacy INT8 calibrator" if plan.legacy_calibrator else
                               "the typed model's ONNX types" if plan.strongly_typed else
                               "builder flags derived from the typed model"),
            "typed_onnx": os.path.abspath(typed.path),
            "typed_onnx_sha256": typed.sha256,
            "typed_onnx_made": typed.made,
            "typed_onnx_reused": typed.reused,
            "prepared_onnx": os.path.abspath(plan.prepared_onnx),
            "prepared_onnx_sha256": file_sha256(plan.prepared_onnx),
            "rewritten_static_batch": plan.rewrite_batch,
            "recommended_cutoff": contract.recommended_cutoff,
        },
        build_time_s=round(seconds, 3),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        engine_sha256=file_sha256(plan.engine_path),
        builder="changenet-trt {}".format(__version__),
    )


# -- the build -------------------------------------------------------------------------------------
@dataclass
class BuildResult:
    engine_path: str
    sidecar_path: str
    metadata: EngineMetadata
    plan: BuildPlan
    prepare_report: Any = None
    seconds: float = 0.0
    timing_cache_hit: bool = False
    calibration: Dict[str, Any] = field(default_factory=dict)
    configured: Optional[Configured] = None
    typed: Optional[TypedModel] = None


def check_outputs(plan: BuildPlan) -> None:
    """Refuse, before minutes of building, an engine, sidecar, typed model or timing cache path
    that cannot be written or would replace the source model."""
    source = [plan.options.model]
    check_output_file(plan.engine_path, "engine", inputs=source)
    check_output_file(sidecar_path(plan.engine_path), "engine sidecar", inputs=source)
    if plan.typed_onnx and plan.typed_onnx != os.fspath(plan.options.model):
        check_output_file(plan.typed_onnx, "typed model", inputs=source)
    if plan.timing_cache_path:
        check_output_file(plan.timing_cache_path, "timing cache", inputs=source)


def build_engine_file(options: Optional[BuildOptions] = None, plan: Optional[BuildPlan] = None,
                      status_stream: Optional[IO[str]] = None, calibration_batches: Any = None) -> BuildResult:
    """Build the engine ``plan`` describes (made from ``options`` for the installed TensorRT when not given).

    ``calibration_batches``: an iterator of (golden, sample) arrays to calibrate from instead
    of ``options.calib_csv`` (the API path; arrays already preprocessed): the INT8 Q/DQ model's
    calibration, or the legacy calibrator's. ``status_stream``: where the progress bars go
    (default stderr; shown only on a terminal). Raises DependencyError without TensorRT (or
    with an untested one), BuildError when TensorRT refuses or the plan was made for another
    TensorRT, InputError for bad options.
    """
    trt = import_tensorrt("building a TensorRT engine")
    trt_version = str(version(trt))
    if plan is None:
        if options is None:
            raise InputError("build_engine_file needs BuildOptions or a BuildPlan")
        plan = make_plan(options, trt_version=trt_version)
    elif plan.trt_version != trt_version:
        raise BuildError("the build plan was made for TensorRT {}; this is TensorRT {}".format(
            plan.trt_version or "(unknown)", trt_version), expected="a plan from make_plan() with this TensorRT")
    check_outputs(plan)
    started = time.perf_counter()
    if not plan.gpu.known:
        log.warning("no GPU information (pycuda missing?): the engine metadata will not record the GPU, "
                    "so runners cannot check it")

    typed = prepare_typed(plan, None if plan.legacy_calibrator else calibration_batches, status_stream)
    plan = typed.plan
    contract = read_contract(plan.typed_onnx, plan.options.names)
    logger = make_logger(trt)
    builder = create_builder(trt)
    network, parser = _parse_network(trt, logger, builder, plan)
    config = builder.create_builder_config()
    configured = configure(trt, builder, network, config, plan)
    with BuildProgress(stream=status_stream, enabled=plan.options.progress) as progress:
        calibration = _calibrate(trt, builder, config, plan, contract,
                                 calibration_batches if plan.legacy_calibrator else None, progress)
        data = _serialize(trt, builder, network, config, logger, calibration, progress)
    seconds = time.perf_counter() - started

    tensors, shapes = _engine_io(trt, logger, data, plan)
    atomic_write(plan.engine_path, data)
    if plan.timing_cache_path:
        cache = config.get_timing_cache()
        if cache is not None:
            atomic_write(plan.timing_cache_path, bytes(memoryview(cache.serialize())))
    meta = _metadata(plan, contract, configured, calibration.record, tensors, shapes, seconds, typed)
    side = write_sidecar(plan.engine_path, meta)
    return BuildResult(plan.engine_path, side, meta, plan, typed.prepare_report, seconds, configured.timing_cache_hit,
                       calibration.record, configured, typed)
