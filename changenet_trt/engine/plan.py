"""What an engine build will do, resolved without TensorRT.

:func:`make_plan` turns :class:`BuildOptions` into one :class:`BuildPlan` that says everything
the build uses: the prepared ONNX, the optimisation profile, the precision and the TensorRT
builder flags (computed once, here), the memory pools, the builder optimisation level, DLA,
the layers kept in FP32, the timing and calibration caches and the output paths.
``build --dry-run`` prints it, ``build --print-trtexec`` renders it as a trtexec command,
:func:`changenet_trt.engine.build.build_engine_file` applies it to TensorRT's builder config and
the engine's sidecar records what was applied. None of this needs TensorRT or a GPU.
"""

import fnmatch
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from packaging.version import Version

from changenet_trt.contract import ModelContract, read_contract
from changenet_trt.defaults import ENGINE_PROFILE, ENGINES_DIR
from changenet_trt.errors import ChangeNetError, InputError
from changenet_trt.sidecar import file_sha256, gpu_slug, sidecar_path

log = logging.getLogger("changenet_trt.engine.plan")

PRECISIONS = ("fp16", "fp32", "int8")
CONSTRAINT_MODES = ("obey", "prefer")
SINCE_8_6 = Version("8.6")
"""First TensorRT with the builder optimisation level and version-compatible engines."""

TRTEXEC_FLAGS = {
    "FP16": ["--fp16"],
    "INT8": ["--int8"],
    "GPU_FALLBACK": ["--allowGPUFallback"],
    "OBEY_PRECISION_CONSTRAINTS": ["--precisionConstraints=obey"],
    "PREFER_PRECISION_CONSTRAINTS": ["--precisionConstraints=prefer"],
    "VERSION_COMPATIBLE": ["--versionCompatible"],
    "EXCLUDE_LEAN_RUNTIME": ["--excludeLeanRuntime"],
}
"""trtexec's spelling of each ``trt.BuilderFlag`` a plan can set."""


# -- options ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch range, in pairs: ``min <= opt <= max``."""

    min: int = ENGINE_PROFILE[0]
    opt: int = ENGINE_PROFILE[1]
    max: int = ENGINE_PROFILE[2]

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


def match_layers(names: Sequence[str], patterns: Sequence[str]) -> List[str]:
    """Names matching any pattern, in order; InputError naming the patterns that match nothing."""
    unmatched = [p for p in patterns if not any(layer_matches(n, p) for n in names)]
    if unmatched:
        raise InputError(
            "--fp32-layers pattern(s) match no layer: {}".format(", ".join(repr(p) for p in unmatched)),
            expected="layer names such as {}".format(", ".join(list(names)[:5])),
        )
    return [n for n in names if any(layer_matches(n, p) for p in patterns)]


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
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    calib_csv: Optional[str] = None
    calib_images: Optional[str] = None
    calib_batches: int = 32
    calib_cache: Optional[str] = None
    recalibrate: bool = False
    calib_layout: Any = None
    normalization: Optional[str] = None
    #: read_contract's keywords: sample_input, golden_input, output (the tensor), output_kind
    contract_overrides: Dict[str, Optional[str]] = field(default_factory=dict)
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
        if self.exclude_lean_runtime and not self.version_compatible:
            raise InputError("--exclude-lean-runtime only applies to version-compatible engines",
                             expected="--version-compatible with it", found="--exclude-lean-runtime alone")


# -- the plan --------------------------------------------------------------------------------------
@dataclass
class GpuInfo:
    name: str = "unknown"
    compute_capability: Tuple[int, ...] = ()

    @property
    def known(self) -> bool:
        return bool(self.compute_capability)


def detect_gpu() -> GpuInfo:
    """Name and compute capability of GPU 0 through :mod:`changenet_trt.gpu.cuda`; unknown without pycuda/GPU."""
    try:
        from changenet_trt.gpu.cuda import primary_context

        ctx = primary_context()
        return GpuInfo(ctx.name, tuple(ctx.compute_capability))
    except ChangeNetError as exc:
        log.debug("no GPU information: %s", exc)
        return GpuInfo()


@dataclass
class BuildPlan:
    """What a build will do; printable, renderable as trtexec, and what ``build_engine_file`` applies.

    ``flags``: ``trt.BuilderFlag`` member names, in the order the build sets them (TensorRT's
    defaults, such as TF32, are left alone). ``memory_pools``: ``trt.MemoryPoolType`` member
    name -> limit in bytes. ``opt_level``: the builder optimisation level, ``None`` for
    TensorRT's default. ``input_shapes``: input name -> ``[min, opt, max]`` NCHW shapes of the
    one optimisation profile. ``fp32_layers``: the ONNX layers ``options.fp32_layers`` matches
    (the build matches the same patterns on TensorRT's parsed network).
    """

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
    flags: List[str] = field(default_factory=list)
    memory_pools: Dict[str, int] = field(default_factory=dict)
    opt_level: Optional[int] = None
    profiling_verbosity: str = "DETAILED"
    notes: List[str] = field(default_factory=list)

    @property
    def sidecar_path(self) -> str:
        return sidecar_path(self.engine_path)

    @property
    def precision(self) -> str:
        return self.options.precision

    @property
    def profile(self) -> BatchProfile:
        return self.options.profile

    @property
    def dla_core(self) -> Optional[int]:
        return self.options.dla_core

    @property
    def fp32_patterns(self) -> List[str]:
        return list(self.options.fp32_layers)

    @property
    def precision_constraints(self) -> Optional[str]:
        """``obey``/``prefer`` when layers are pinned to FP32, else None."""
        return self.options.precision_constraints if self.options.fp32_layers else None

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
            self.profile.min, self.profile.opt, self.profile.max))
        for name, shapes in self.input_shapes.items():
            lines.append("    {}: {}".format(name, " / ".join("x".join(str(d) for d in s) for s in shapes)))
        precision = {"fp16": "FP16 (FP32 where faster or required)", "fp32": "FP32 (TF32 allowed)",
                     "int8": "INT8 with FP16 fallback, entropy calibration"}[self.precision]
        lines.append("  precision:      {}".format(precision))
        lines.append("  builder flags:  {}".format(", ".join(self.flags) or "(none)"))
        pools = ", ".join("{} {} MiB".format(name.lower(), size >> 20) for name, size in self.memory_pools.items())
        lines.append("  memory pools:   {}".format(pools or "TensorRT default (device memory)"))
        lines.append("  opt. level:     {}".format(
            "TensorRT default (3)" if self.opt_level is None else "{} (TensorRT 8.6+)".format(self.opt_level)))
        lines.append("  DLA:            {}".format(
            "core {} with GPU fallback".format(self.dla_core) if self.dla_core is not None else "no (GPU only)"))
        if opts.version_compatible:
            lines.append("  compatibility:  version-compatible (runs on later TensorRT of the same major), lean "
                         "runtime {}".format("excluded" if opts.exclude_lean_runtime else "embedded"))
        if opts.fp32_layers:
            lines.append("  fp32 layers:    {} pattern(s) -> {} layer(s) ({} precision constraints){}".format(
                len(opts.fp32_layers), len(self.fp32_layers), self.precision_constraints,
                ": " + ", ".join(self.fp32_layers[:8]) + (" ..." if len(self.fp32_layers) > 8 else "")
                if self.fp32_layers else ""))
        if self.precision == "int8":
            source = opts.calib_csv or "(none: the cache must exist)"
            lines.append("  calibration:    {} batch(es) of {} pairs from {}; cache {}{}".format(
                opts.calib_batches, self.profile.opt, source, self.calib_cache_path,
                " (rebuilt)" if opts.recalibrate else " (reused when it matches)"))
        lines.append("  preprocessing:  {}".format(self.preprocess))
        lines.append("  timing cache:   {}".format(self.timing_cache_path or "disabled"))
        lines.append("  TensorRT:       {}".format(self.trt_version or "not installed here"))
        lines.append("  GPU:            {}".format(
            "{} (sm_{})".format(self.gpu.name, "".join(str(v) for v in self.gpu.compute_capability))
            if self.gpu.known else "unknown here"))
        lines.append("  engine:         {}".format(self.engine_path))
        lines.append("  metadata:       {}".format(self.sidecar_path))
        lines.extend("  note:           {}".format(note) for note in self.notes)
        return lines

    def trtexec_command(self, trt_version: Optional[str] = None) -> List[str]:
        """The equivalent ``trtexec`` command line for TensorRT ``trt_version`` (default: the plan's).

        Builder flags come from :attr:`flags` (:data:`TRTEXEC_FLAGS`). Differences handled:
        ``--buildOnly`` (8.5) became ``--skipInference`` (8.6+); ``--builderOptimizationLevel``
        and ``--versionCompatible`` exist from 8.6; ``--memPoolSize`` takes MiB (10.x accepts
        the ``M`` suffix, written out for clarity); ``--workspace`` is never used (deprecated in
        8.4, removed in 10). trtexec cannot calibrate from images, so INT8 uses the calibration
        cache (``--calib``).
        """
        version = Version(trt_version or self.trt_version or "10.3.0")
        _check_version_features(self.options, str(version))

        def shapes(index: int) -> str:
            return ",".join("{}:{}".format(name, "x".join(str(d) for d in s[index]))
                            for name, s in self.input_shapes.items())

        cmd = ["trtexec", "--onnx={}".format(self.prepared_onnx), "--saveEngine={}".format(self.engine_path),
               "--minShapes={}".format(shapes(0)), "--optShapes={}".format(shapes(1)),
               "--maxShapes={}".format(shapes(2))]
        for flag in self.flags:
            cmd += TRTEXEC_FLAGS[flag]
        if "INT8" in self.flags:
            cmd.append("--calib={}".format(self.calib_cache_path))
        unit = "M" if version >= Version("10.0") else ""
        for pool, size in self.memory_pools.items():
            cmd.append("--memPoolSize={}:{}{}".format(pool.lower(), size >> 20, unit))
        if self.opt_level is not None and version >= SINCE_8_6:
            cmd.append("--builderOptimizationLevel={}".format(self.opt_level))
        if self.dla_core is not None:
            cmd.append("--useDLACore={}".format(self.dla_core))
        if self.fp32_layers:
            cmd.append("--layerPrecisions={}".format(",".join("{}:fp32".format(n) for n in self.fp32_layers)))
            cmd.append("--layerOutputTypes={}".format(",".join("{}:fp32".format(n) for n in self.fp32_layers)))
        if self.timing_cache_path:
            cmd.append("--timingCacheFile={}".format(self.timing_cache_path))
        cmd.append("--profilingVerbosity={}".format(self.profiling_verbosity.lower()))
        cmd.append("--skipInference" if version >= SINCE_8_6 else "--buildOnly")
        return cmd


def _onnx_layer_names(model_path: str) -> List[str]:
    """TensorRT layer names the ONNX parser gives the model's nodes (node name or node_of_<output>)."""
    from changenet_trt.contract import load_onnx
    from changenet_trt.engine.fp16_check import layer_name

    return [layer_name(node) for node in load_onnx(model_path).graph.node]


def _check_version_features(options: BuildOptions, trt_version: Optional[str]) -> None:
    """Refuse options the TensorRT version cannot do (nothing is refused when it is unknown)."""
    if trt_version is None or not options.version_compatible:
        return
    if Version(trt_version) < SINCE_8_6:
        raise InputError(
            "version-compatible engines need TensorRT 8.6 or newer (BuilderFlag.VERSION_COMPATIBLE{})".format(
                ", EXCLUDE_LEAN_RUNTIME" if options.exclude_lean_runtime else ""),
            expected="TensorRT >= 8.6 (JetPack 6, or pip tensorrt 10.x), or a build without --version-compatible",
            found="TensorRT {}".format(trt_version),
        )


def builder_flags(options: BuildOptions) -> List[str]:
    """The ``trt.BuilderFlag`` names a build of ``options`` sets, in the order it sets them."""
    flags = []
    if options.precision in ("fp16", "int8"):
        flags.append("FP16")
    if options.precision == "int8":
        flags.append("INT8")
    if options.dla_core is not None:
        flags.append("GPU_FALLBACK")
    if options.fp32_layers:
        flags.append("OBEY_PRECISION_CONSTRAINTS" if options.precision_constraints == "obey"
                     else "PREFER_PRECISION_CONSTRAINTS")
    if options.version_compatible:
        flags.append("VERSION_COMPATIBLE")
    if options.exclude_lean_runtime:
        flags.append("EXCLUDE_LEAN_RUNTIME")
    return flags


def make_plan(options: BuildOptions, trt_version: Optional[str] = None, gpu: Optional[GpuInfo] = None) -> BuildPlan:
    """Resolve a build without running it (no TensorRT needed).

    ``trt_version``/``gpu`` default to what is installed and present (unknown when not).
    Raises InputError for options this TensorRT cannot build (version-compatible before 8.6)
    and for ``fp32_layers`` patterns that match no layer.
    """
    from changenet_trt.engine.calibration import default_cache_path
    from changenet_trt.gpu.trt import installed_version

    model = os.fspath(options.model)
    contract = read_contract(model, **options.contract_overrides)
    onnx_sha256 = file_sha256(model)
    if trt_version is None:
        installed = installed_version()
        trt_version = str(installed) if installed is not None else None
    _check_version_features(options, trt_version)
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
    pools = {"WORKSPACE": int(options.workspace_mib) << 20} if options.workspace_mib else {}
    notes = []
    opt_level = options.opt_level
    if opt_level is not None and trt_version is not None and Version(trt_version) < SINCE_8_6:
        notes.append("TensorRT {} has no builder optimisation level (8.6+); --opt-level {} ignored".format(
            trt_version, opt_level))
        log.warning("%s", notes[-1])
        opt_level = None
    return BuildPlan(options, contract, onnx_sha256, prepared, rewrite, engine, timing, calib, trt_version, gpu,
                     shapes, fp32, preprocess, flags=builder_flags(options), memory_pools=pools, opt_level=opt_level,
                     notes=notes)
