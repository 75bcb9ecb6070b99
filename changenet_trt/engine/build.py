"""ONNX -> TensorRT engine, one code path for TensorRT 8.5 through 10.x.

:func:`make_plan` resolves everything a build will do (prepared ONNX, optimisation profile,
precision and flags, output paths) without TensorRT, so ``build --dry-run`` and
``build --print-trtexec`` work anywhere. :func:`build_engine_file` then:

1. prepares the ONNX (static batch -> dynamic, proven with ONNX Runtime: :mod:`.prepare`);
2. parses it with TensorRT's ONNX parser into an explicit-batch network;
3. configures one optimisation profile shared by both image inputs (default 1:16:32), FP16
   (default) / FP32 / INT8+FP16 with calibration, the workspace pool, the timing cache,
   the builder optimisation level (8.6+), DLA with GPU fallback, layers kept in FP32 with
   precision constraints;
4. builds with a progress line (TensorRT 10's IProgressMonitor when present), writes the
   engine under ``engines/`` and its JSON sidecar (:mod:`.sidecar`).
"""

import datetime
import fnmatch
import logging
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple, Union

from changenet_trt import __version__
from changenet_trt.contract import ModelContract, read_contract
from changenet_trt.errors import BuildError, ChangeNetError, InputError
from changenet_trt.sidecar import EngineMetadata, file_sha256, gpu_slug, sidecar_path, write_sidecar

log = logging.getLogger("changenet_trt.engine.build")

PRECISIONS = ("fp16", "fp32", "int8")
ENGINES_DIR = "engines"
DEFAULT_BATCH = (1, 16, 32)
CONSTRAINT_MODES = ("obey", "prefer")
PathLike = Union[str, "os.PathLike[str]"]


# -- options ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch range, in pairs: ``min <= opt <= max``."""

    min: int = DEFAULT_BATCH[0]
    opt: int = DEFAULT_BATCH[1]
    max: int = DEFAULT_BATCH[2]

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(
                "invalid batch profile",
                expected="1 <= MIN <= OPT <= MAX",
                found="{}:{}:{}".format(self.min, self.opt, self.max),
            )

    @classmethod
    def parse(cls, text: str) -> "BatchProfile":
        """``"1:16:32"`` (or one number N for a fixed batch N:N:N)."""
        parts = str(text).split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise InputError("cannot read the batch profile", expected="MIN:OPT:MAX such as 1:16:32",
                             found=repr(text)) from None
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise InputError("cannot read the batch profile", expected="MIN:OPT:MAX such as 1:16:32",
                             found=repr(text))
        return cls(*values)

    @property
    def label(self) -> str:
        return "b{}-{}-{}".format(self.min, self.opt, self.max)

    def as_dict(self) -> Dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def read_layer_patterns(values: Sequence[str]) -> List[str]:
    """Layer-name patterns from ``--fp32-layers``: each value is a pattern (fnmatch: ``*``,
    ``?``) or ``@FILE`` with one pattern per line (``#`` starts a comment; the format
    ``changenet-trt fp16-check`` writes)."""
    patterns: List[str] = []
    for value in values:
        if value.startswith("@"):
            path = value[1:]
            try:
                with open(path) as handle:
                    lines = handle.read().splitlines()
            except OSError as exc:
                raise InputError("cannot read the layer list {}".format(path), found=str(exc)) from None
            for line in lines:
                line = line.split("#", 1)[0].strip()
                if line:
                    patterns.append(line)
        elif value.strip():
            patterns.append(value.strip())
    return patterns


def layer_matches(name: str, pattern: str) -> bool:
    """Exact name, or an fnmatch pattern (names with ``[`` still match themselves literally)."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


@dataclass
class BuildOptions:
    """Everything ``changenet-trt build`` accepts (see the CLI help for each)."""

    model: str
    output: Optional[str] = None
    precision: str = "fp16"
    profile: BatchProfile = field(default_factory=BatchProfile)
    workspace_mib: Optional[int] = None
    timing_cache: Optional[str] = None
    use_timing_cache: bool = True
    opt_level: Optional[int] = None
    dla_core: Optional[int] = None
    fp32_layers: Sequence[str] = ()
    precision_constraints: str = "obey"
    calib_csv: Optional[str] = None
    calib_images: Optional[str] = None
    calib_batches: int = 32
    calib_cache: Optional[str] = None
    recalibrate: bool = False
    calib_layout: Any = None
    normalization: Optional[str] = None
    sample_input: Optional[str] = None
    golden_input: Optional[str] = None
    output_name: Optional[str] = None
    output_kind: Optional[str] = None
    engines_dir: str = ENGINES_DIR
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError("unknown precision", expected=" or ".join(PRECISIONS), found=repr(self.precision))
        if self.precision_constraints not in CONSTRAINT_MODES:
            raise InputError("unknown precision-constraint mode", expected=" or ".join(CONSTRAINT_MODES),
                             found=repr(self.precision_constraints))
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise InputError("builder optimisation level out of range", expected="0..5", found=self.opt_level)
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise InputError("workspace must be at least 1 MiB", found=self.workspace_mib)
        if self.dla_core is not None and self.dla_core < 0:
            raise InputError("DLA core must be 0 or more", found=self.dla_core)
        if self.calib_batches < 1:
            raise InputError("--calib-batches must be at least 1", found=self.calib_batches)
        if self.precision != "int8" and (self.calib_csv or self.calib_cache):
            raise InputError("calibration options need --int8", found="precision {}".format(self.precision))

    def contract_overrides(self) -> Dict[str, Optional[str]]:
        return {"sample_input": self.sample_input, "golden_input": self.golden_input,
                "output": self.output_name, "output_kind": self.output_kind}


# -- the plan --------------------------------------------------------------------------------------
@dataclass
class GpuInfo:
    name: str = "unknown"
    compute_capability: Tuple[int, ...] = ()

    @property
    def known(self) -> bool:
        return bool(self.compute_capability)


def detect_gpu() -> GpuInfo:
    """Name and compute capability of GPU 0 through :mod:`.cuda`; unknown without pycuda/GPU."""
    try:
        from changenet_trt.gpu.cuda import primary_context

        ctx = primary_context()
        return GpuInfo(ctx.name, tuple(ctx.compute_capability))
    except ChangeNetError as exc:
        log.debug("no GPU information: %s", exc)
        return GpuInfo()


@dataclass
class BuildPlan:
    """What a build will do; printable and buildable (``build_engine_file`` follows it)."""

    options: BuildOptions
    contract: ModelContract
    onnx_sha256: str
    prepared_onnx: str
    rewrite_batch: Optional[int]
    engine_path: str
    timing_cache_path: Optional[str]
    calib_cache_path: Optional[str]
    trt_version: Optional[str]
    gpu: GpuInfo
    input_shapes: Dict[str, List[List[int]]]
    fp32_layers: List[str]
    preprocess: str

    @property
    def sidecar_path(self) -> str:
        return sidecar_path(self.engine_path)

    def flags(self) -> List[str]:
        """TensorRT builder flags the build sets (names of ``trt.BuilderFlag`` members)."""
        opts = self.options
        flags = []
        if opts.precision in ("fp16", "int8"):
            flags.append("FP16")
        if opts.precision == "int8":
            flags.append("INT8")
        if opts.dla_core is not None:
            flags.append("GPU_FALLBACK")
        if opts.fp32_layers:
            flags.append("OBEY_PRECISION_CONSTRAINTS" if opts.precision_constraints == "obey"
                         else "PREFER_PRECISION_CONSTRAINTS")
        return flags

    def describe(self) -> List[str]:
        opts = self.options
        c = self.contract
        lines = ["build plan for {}".format(opts.model)]
        if self.rewrite_batch is not None:
            lines.append("  prepare:        static batch {} -> dynamic, proven with onnxruntime at batches 1, 7, 32; "
                         "writes {}".format(self.rewrite_batch, self.prepared_onnx))
        else:
            lines.append("  prepare:        batch already dynamic; builds from {}".format(self.prepared_onnx))
        lines.append("  onnx sha256:    {}".format(self.onnx_sha256))
        lines.append("  inputs:         sample '{}', golden '{}' [B,{},{},{}] {}; output '{}' ({})".format(
            c.sample_input, c.golden_input, *c.input_shape, c.input_dtype, c.output, c.output_kind))
        lines.append("  profile:        batch min {} / opt {} / max {} (one profile, both inputs)".format(
            opts.profile.min, opts.profile.opt, opts.profile.max))
        for name, shapes in self.input_shapes.items():
            lines.append("    {}: {}".format(name, " / ".join("x".join(str(d) for d in s) for s in shapes)))
        precision = {"fp16": "FP16 (FP32 where faster or required)", "fp32": "FP32 (TF32 allowed)",
                     "int8": "INT8 with FP16 fallback, entropy calibration"}[opts.precision]
        lines.append("  precision:      {}".format(precision))
        lines.append("  builder flags:  {}".format(", ".join(self.flags()) or "(none)"))
        lines.append("  workspace:      {}".format(
            "{} MiB".format(opts.workspace_mib) if opts.workspace_mib else "TensorRT default (device memory)"))
        lines.append("  opt. level:     {}".format(
            "TensorRT default (3)" if opts.opt_level is None else "{} (TensorRT 8.6+)".format(opts.opt_level)))
        lines.append("  DLA:            {}".format(
            "core {} with GPU fallback".format(opts.dla_core) if opts.dla_core is not None else "no (GPU only)"))
        if opts.fp32_layers:
            lines.append("  fp32 layers:    {} pattern(s) -> {} layer(s) ({} precision constraints){}".format(
                len(opts.fp32_layers), len(self.fp32_layers), opts.precision_constraints,
                ": " + ", ".join(self.fp32_layers[:8]) + (" ..." if len(self.fp32_layers) > 8 else "")
                if self.fp32_layers else ""))
        if opts.precision == "int8":
            source = opts.calib_csv or "(none: the cache must exist)"
            lines.append("  calibration:    {} batch(es) of {} pairs from {}; cache {}{}".format(
                opts.calib_batches, opts.profile.opt, source, self.calib_cache_path,
                " (rebuilt)" if opts.recalibrate else " (reused when it matches)"))
        lines.append("  preprocessing:  {}".format(self.preprocess))
        lines.append("  timing cache:   {}".format(self.timing_cache_path or "disabled"))
        lines.append("  TensorRT:       {}".format(self.trt_version or "not installed here"))
        lines.append("  GPU:            {}".format(
            "{} (sm_{})".format(self.gpu.name, "".join(str(v) for v in self.gpu.compute_capability))
            if self.gpu.known else "unknown here"))
        lines.append("  engine:         {}".format(self.engine_path))
        lines.append("  metadata:       {}".format(self.sidecar_path))
        return lines

    def trtexec_command(self, trt_version: Optional[str] = None) -> List[str]:
        """The equivalent ``trtexec`` command line for TensorRT ``trt_version`` (default: the plan's).

        Differences handled: ``--buildOnly`` (8.5) became ``--skipInference`` (8.6+);
        ``--builderOptimizationLevel`` exists from 8.6; ``--memPoolSize`` takes MiB (10.x
        accepts the ``M`` suffix, written out for clarity); ``--workspace`` is never used
        (deprecated in 8.4, removed in 10). trtexec cannot calibrate from images, so INT8
        uses the calibration cache (``--calib``).
        """
        from packaging.version import Version

        version = Version(trt_version or self.trt_version or "10.3.0")
        opts = self.options

        def shapes(index: int) -> str:
            return ",".join("{}:{}".format(name, "x".join(str(d) for d in s[index]))
                            for name, s in self.input_shapes.items())

        cmd = ["trtexec", "--onnx={}".format(self.prepared_onnx), "--saveEngine={}".format(self.engine_path),
               "--minShapes={}".format(shapes(0)), "--optShapes={}".format(shapes(1)),
               "--maxShapes={}".format(shapes(2))]
        if opts.precision in ("fp16", "int8"):
            cmd.append("--fp16")
        if opts.precision == "int8":
            cmd += ["--int8", "--calib={}".format(self.calib_cache_path)]
        if opts.workspace_mib:
            unit = "M" if version >= Version("10.0") else ""
            cmd.append("--memPoolSize=workspace:{}{}".format(opts.workspace_mib, unit))
        if opts.opt_level is not None and version >= Version("8.6"):
            cmd.append("--builderOptimizationLevel={}".format(opts.opt_level))
        if opts.dla_core is not None:
            cmd += ["--useDLACore={}".format(opts.dla_core), "--allowGPUFallback"]
        if self.fp32_layers:
            cmd.append("--precisionConstraints={}".format(opts.precision_constraints))
            cmd.append("--layerPrecisions={}".format(",".join("{}:fp32".format(n) for n in self.fp32_layers)))
            cmd.append("--layerOutputTypes={}".format(",".join("{}:fp32".format(n) for n in self.fp32_layers)))
        if self.timing_cache_path:
            cmd.append("--timingCacheFile={}".format(self.timing_cache_path))
        cmd.append("--profilingVerbosity=detailed")
        cmd.append("--skipInference" if version >= Version("8.6") else "--buildOnly")
        return cmd


def _onnx_layer_names(model_path: str) -> List[str]:
    """TensorRT layer names the ONNX parser gives the model's nodes (node name or node_of_<output>)."""
    from changenet_trt.contract import load_onnx
    from changenet_trt.engine.fp16_check import layer_name

    return [layer_name(node) for node in load_onnx(model_path).graph.node]


def match_layers(names: Sequence[str], patterns: Sequence[str]) -> List[str]:
    """Names matching any pattern, in order; InputError naming the patterns that match nothing."""
    unmatched = [p for p in patterns if not any(layer_matches(n, p) for n in names)]
    if unmatched:
        raise InputError(
            "--fp32-layers pattern(s) match no layer: {}".format(", ".join(repr(p) for p in unmatched)),
            expected="layer names such as {}".format(", ".join(list(names)[:5])),
        )
    return [n for n in names if any(layer_matches(n, p) for p in patterns)]


def make_plan(options: BuildOptions, trt_version: Optional[str] = None, gpu: Optional[GpuInfo] = None) -> BuildPlan:
    """Resolve a build without running it (no TensorRT needed).

    ``trt_version``/``gpu`` default to what is installed and present (unknown when not).
    """
    from changenet_trt.engine.calibration import default_cache_path
    from changenet_trt.gpu.trt import installed_version

    model = os.fspath(options.model)
    contract = read_contract(model, **options.contract_overrides())
    onnx_sha256 = file_sha256(model)
    if trt_version is None:
        installed = installed_version()
        trt_version = str(installed) if installed is not None else None
    if gpu is None:
        gpu = detect_gpu()
    stem = os.path.splitext(os.path.basename(model))[0]
    engines = options.engines_dir
    rewrite = contract.static_batch
    prepared = os.path.join(engines, "{}.dynamic-batch.onnx".format(stem)) if rewrite is not None else model
    gpu_tag = gpu_slug(gpu.name, gpu.compute_capability) if gpu.known else "gpu-unknown"
    trt_tag = "trt{}".format(trt_version) if trt_version else "trt-unknown"
    engine = options.output or os.path.join(
        engines, "{}_{}_{}_{}_{}.engine".format(stem, options.precision, options.profile.label, gpu_tag, trt_tag))
    timing = None
    if options.use_timing_cache:
        timing = options.timing_cache or os.path.join(engines, "timing_{}_{}.cache".format(gpu_tag, trt_tag))
    calib = None
    if options.precision == "int8":
        calib = options.calib_cache or default_cache_path(model, onnx_sha256)
    shapes = {}
    for name in (contract.sample_input, contract.golden_input):
        shapes[name] = [list(contract.batch_shape(b)) for b in (options.profile.min, options.profile.opt,
                                                                 options.profile.max)]
    fp32 = match_layers(_onnx_layer_names(model), options.fp32_layers) if options.fp32_layers else []
    preprocess = options.normalization or contract.preprocess or "tao"
    return BuildPlan(options, contract, onnx_sha256, prepared, rewrite, engine, timing, calib, trt_version, gpu,
                     shapes, fp32, preprocess)


# -- progress --------------------------------------------------------------------------------------
class BuildStatus:
    """A ticking "building engine" line on stderr while TensorRT works (minutes on a Jetson).

    On a terminal it redraws every half second with the elapsed time and, with TensorRT 10's
    progress monitor, the current phase and step; elsewhere it prints a line every 30 s.
    """

    def __init__(self, stream: Optional[IO[str]] = None, enabled: bool = True, interval: float = 0.5,
                 quiet_interval: float = 30.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty()) if callable(isatty) else False
        self.interval = interval if self.live else quiet_interval
        self.phases: Dict[str, Tuple[int, int]] = {}
        self._order: List[str] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.start_time = time.perf_counter()
        self.ticks = 0

    def phase_start(self, name: str, steps: int) -> None:
        with self._lock:
            self.phases[name] = (0, int(steps))
            self._order.append(name)

    def step(self, name: str, done: int) -> None:
        with self._lock:
            steps = self.phases.get(name, (0, 0))[1]
            self.phases[name] = (int(done), steps)

    def phase_finish(self, name: str) -> None:
        with self._lock:
            self.phases.pop(name, None)
            if name in self._order:
                self._order.remove(name)

    def text(self) -> str:
        elapsed = time.perf_counter() - self.start_time
        line = "building engine: {}:{:02d} elapsed".format(int(elapsed) // 60, int(elapsed) % 60)
        with self._lock:
            if self._order:
                name = self._order[-1]
                done, steps = self.phases[name]
                line += "  [{}: {}/{}]".format(name, done, steps)
        return line

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.ticks += 1
            if self.live:
                self.stream.write("\r" + self.text().ljust(78)[:110])
            else:
                self.stream.write(self.text() + "\n")
            self.stream.flush()

    def __enter__(self) -> "BuildStatus":
        self.start_time = time.perf_counter()
        if self.enabled:
            if not self.live:
                self.stream.write("building engine (this takes minutes on a Jetson) ...\n")
                self.stream.flush()
            self._thread = threading.Thread(target=self._run, name="changenet-build-status", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self.live:
                self.stream.write("\r" + " " * 80 + "\r")
                self.stream.flush()


_MONITOR_CLASSES: Dict[int, type] = {}


def _progress_monitor(trt: Any, status: BuildStatus) -> Any:
    """A ``trt.IProgressMonitor`` (TensorRT 10+) that feeds ``status``."""
    cls = _MONITOR_CLASSES.get(id(trt))
    if cls is None or cls.__bases__[0] is not trt.IProgressMonitor:
        class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
            def __init__(self, status: BuildStatus) -> None:
                trt.IProgressMonitor.__init__(self)
                self.status = status

            def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
                self.status.phase_start(phase_name, num_steps)

            def step_complete(self, phase_name: str, step: int) -> bool:
                self.status.step(phase_name, step + 1)
                return True

            def phase_finish(self, phase_name: str) -> None:
                self.status.phase_finish(phase_name)

        cls = _MONITOR_CLASSES[id(trt)] = Monitor
    return cls(status)


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


def _atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _parse_network(trt: Any, logger: Any, builder: Any, onnx_path: str) -> Any:
    from changenet_trt.gpu.trt import network_flags

    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise BuildError("TensorRT's ONNX parser rejected {}".format(onnx_path),
                         found="; ".join(errors) or "no error recorded (run with -v)")
    # keep the parser alive as long as the network: it owns the weights
    return network, parser


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


def _load_timing_cache(trt: Any, config: Any, path: str) -> Tuple[Any, bool]:
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


def build_engine_file(options: BuildOptions, plan: Optional[BuildPlan] = None, status_stream: Optional[IO[str]] = None,
                 calibration_batches: Any = None) -> BuildResult:
    """Build the engine ``plan`` describes (the plan is made from ``options`` when not given).

    ``calibration_batches``: an iterator of (golden, sample) arrays to calibrate from instead
    of ``options.calib_csv`` (the API path; arrays already preprocessed). Raises
    DependencyError without TensorRT, BuildError when TensorRT refuses, InputError for bad
    options.
    """
    from changenet_trt.engine.calibration import (
        check_cache,
        dataset_batches,
        make_calibrator,
        preprocess_description,
    )
    from changenet_trt.engine.prepare import prepare_model
    from changenet_trt.gpu.trt import import_tensorrt, io_tensors, make_logger, profile_shapes, version

    trt = import_tensorrt("building a TensorRT engine")
    trt_version = str(version(trt))
    if plan is None:
        plan = make_plan(options, trt_version=trt_version)
    opts = plan.options
    started = time.perf_counter()
    if not plan.gpu.known:
        log.warning("no GPU information (pycuda missing?): the engine metadata will not record the GPU, "
                    "so runners cannot check it")

    # 1. prepare (CPU): the proof runs before anything touches the GPU
    report = None
    if plan.rewrite_batch is not None:
        report = prepare_model(opts.model, plan.prepared_onnx, **{
            "sample_input": opts.sample_input, "golden_input": opts.golden_input,
            "output_name": opts.output_name, "output_kind": opts.output_kind})
        for line in report.summary_lines():
            log.info("%s", line)
    contract = read_contract(plan.prepared_onnx, **opts.contract_overrides())

    # 2. network
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network, parser = _parse_network(trt, logger, builder, plan.prepared_onnx)
    config = builder.create_builder_config()

    # 3. configuration
    if opts.precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            log.warning("this GPU has no fast FP16; the engine will be slow in FP16 (consider --fp32)")
        config.set_flag(trt.BuilderFlag.FP16)
    if opts.precision == "int8":
        if not builder.platform_has_fast_int8:
            log.warning("this GPU has no fast INT8 support")
        config.set_flag(trt.BuilderFlag.INT8)
    if opts.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mib) << 20)
    profile = builder.create_optimization_profile()
    for name, (low, mid, high) in plan.input_shapes.items():
        profile.set_shape(name, tuple(low), tuple(mid), tuple(high))
    if config.add_optimization_profile(profile) < 0:
        raise BuildError("TensorRT refused the optimisation profile", found=plan.input_shapes)
    if opts.opt_level is not None:
        if hasattr(config, "builder_optimization_level"):
            config.builder_optimization_level = int(opts.opt_level)
        else:
            log.warning("TensorRT %s has no builder optimisation level (8.6+); --opt-level ignored", trt_version)
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if opts.dla_core is not None:
        cores = builder.num_DLA_cores
        if opts.dla_core >= cores:
            raise BuildError("no DLA core {} on this device".format(opts.dla_core),
                             expected="a core in 0..{}".format(cores - 1) if cores else "a Jetson with DLA (Xavier, Orin)",
                             found="{} DLA core(s)".format(cores))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(opts.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    fp32_layers: List[str] = []
    if opts.fp32_layers:
        fp32_layers = _keep_layers_fp32(trt, network, opts.fp32_layers)
        flag = ("OBEY_PRECISION_CONSTRAINTS" if opts.precision_constraints == "obey"
                else "PREFER_PRECISION_CONSTRAINTS")
        config.set_flag(getattr(trt.BuilderFlag, flag))
        log.info("keeping %d layer(s) in FP32 (%s): %s", len(fp32_layers), flag, ", ".join(fp32_layers))
    timing_cache_hit = False
    if plan.timing_cache_path:
        _, timing_cache_hit = _load_timing_cache(trt, config, plan.timing_cache_path)

    calibrator = None
    calibration: Dict[str, Any] = {}
    preprocess = preprocess_description(plan.preprocess, opts.calib_layout if opts.calib_csv else None)
    if opts.precision == "int8":
        cache_path = plan.calib_cache_path or ""
        cache = check_cache(cache_path, plan.onnx_sha256, preprocess, contract.input_shape) if not opts.recalibrate \
            else None
        use_cache = bool(cache and cache.usable)
        batch = opts.profile.opt
        batch_shape = contract.batch_shape(batch)
        if use_cache:
            batches: Any = iter(())
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
                  "trt_version": trt_version, "batch_size": batch}
        calibrator = make_calibrator(trt, batches, contract.golden_input, contract.sample_input, batch_shape,
                                     cache_path, header, use_cache=use_cache, dtype=contract.input_dtype)
        calib_profile = builder.create_optimization_profile()
        for name in (contract.sample_input, contract.golden_input):
            calib_profile.set_shape(name, batch_shape, batch_shape, batch_shape)
        with warnings.catch_warnings():
            # TensorRT 10.1 deprecated implicit quantization; it still works through 10.x.
            warnings.simplefilter("ignore", DeprecationWarning)
            config.int8_calibrator = calibrator
            if not config.set_calibration_profile(calib_profile):
                raise BuildError("TensorRT refused the calibration profile", found=list(batch_shape))
        calibration = {"cache": cache_path, "reused": use_cache}

    # 4. build
    status = BuildStatus(stream=status_stream, enabled=opts.progress)
    if hasattr(config, "progress_monitor"):
        config.progress_monitor = _progress_monitor(trt, status)
    try:
        with status:
            serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    if calibrator is not None and calibrator.error is not None:
        error = calibrator.error
        if isinstance(error, ChangeNetError):
            raise error
        raise BuildError("reading calibration data failed", found="{}: {}".format(type(error).__name__, error))
    if serialized is None:
        raise BuildError("TensorRT could not build the engine",
                         found="; ".join(logger.last_errors()) or "no error message (run with -v)")
    if calibrator is not None:
        calibration.update({"batches": calibrator.batches_fed, "written": calibrator.cache_written})
    data = bytes(memoryview(serialized))
    seconds = time.perf_counter() - started

    # 5. outputs
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise BuildError("the engine TensorRT just built does not deserialize",
                         found="; ".join(logger.last_errors()) or "no error message")
    tensors = io_tensors(engine)
    shapes = {t["name"]: [list(s) for s in profile_shapes(engine, t["name"], 0)]
              for t in tensors if t["mode"] == "input"}
    _atomic_write(plan.engine_path, data)
    if plan.timing_cache_path:
        cache_obj = config.get_timing_cache()
        if cache_obj is not None:
            _atomic_write(plan.timing_cache_path, bytes(memoryview(cache_obj.serialize())))
    from changenet_trt.data.preprocess import get_normalization

    norm = get_normalization(plan.preprocess)
    meta = EngineMetadata(
        trt_version=trt_version,
        precision=opts.precision,
        profile=opts.profile.as_dict(),
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
            "builder_flags": plan.flags(),
            "workspace_mib": opts.workspace_mib,
            "builder_optimization_level": opts.opt_level if hasattr(config, "builder_optimization_level") else None,
            "dla_core": opts.dla_core,
            "fp32_layers": fp32_layers,
            "precision_constraints": opts.precision_constraints if fp32_layers else None,
            "timing_cache": plan.timing_cache_path,
            "calibration": calibration or None,
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
    side = write_sidecar(plan.engine_path, meta)
    return BuildResult(plan.engine_path, side, meta, plan, report, seconds, timing_cache_hit, calibration)
