"""What an engine build will do, resolved without TensorRT.

:func:`make_plan` turns :class:`BuildOptions` into one :class:`BuildPlan` that says everything
the build uses: the prepared ONNX, the typed model (precision lives in the ONNX graph: float16
tensors, explicit Q/DQ; :mod:`changenet_trt.engine.precision` makes it on the CPU and it is
cached next to the engine), whether the network is strongly typed, the TensorRT builder flags
(computed once, here), the memory pools, the builder optimisation level, DLA, the layers kept in
FP32, the timing and calibration caches and the output paths. The precision path follows the
TensorRT version:

* TensorRT 10.x and 11.x: the network is strongly typed and runs in the typed model's types; no
  precision flag, layer precision or calibrator (TensorRT 11 has none of them);
* TensorRT 8.5/8.6: no strong typing, so the old hints are derived from the typed graph
  (:func:`~changenet_trt.engine.precision.graph_precision`): FP16 when it holds float16 tensors,
  INT8 when it holds Q/DQ, OBEY_PRECISION_CONSTRAINTS + FP32 layer precision for the nodes it
  keeps float32;
* the legacy INT8 calibrator (``int8_calibrator``: TensorRT 8.5 to 10.x only) builds the float32
  model with the FP16 and INT8 flags and an entropy calibrator.

``build --dry-run`` prints the plan, ``build --print-trtexec`` renders it as a trtexec command,
:func:`changenet_trt.engine.build.build_engine_file` applies it to TensorRT's builder config and
the engine's sidecar records what was applied. None of this needs TensorRT or a GPU.
"""

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from packaging.version import Version

from changenet_trt.contract import ModelContract, load_onnx, read_contract
from changenet_trt.engine.batch_analysis import analyse
from changenet_trt.engine.calibration import default_cache_path
from changenet_trt.engine.fp16_check import layer_name
from changenet_trt.engine.options import BatchProfile, BuildOptions, check_dla, match_layers
from changenet_trt.engine.precision import graph_precision
from changenet_trt.engine.prepare import DEFAULT_PROOF_BATCHES
from changenet_trt.engine.typed import typed_inputs, typed_model_matches, typed_path
from changenet_trt.errors import BuildError, InputError
from changenet_trt.files import file_sha256
from changenet_trt.gpu.cuda import GpuInfo, current_gpu
from changenet_trt.gpu.trt import (
    CALIBRATOR_DEPRECATED_SINCE,
    PrecisionPath,
    check_supported,
    installed_version,
)
from changenet_trt.sidecar import gpu_slug, sidecar_path

log = logging.getLogger("changenet_trt.engine.plan")

SINCE_8_6 = Version("8.6")
"""First TensorRT with the builder optimisation level and version-compatible engines."""
#: TensorRT releases without DLA, as [first, end): NVIDIA's "Working with DLA" (TensorRT 11.4.1
#: docs, inference-library/work-with-dla.html): "TensorRT 10.7 was the last 10.x release that
#: supported DLA", "DLA was unavailable in TensorRT 11.0 through 11.3", "TensorRT 11.4.0 supported
#: DLA only on Windows on ARM"; 11.4.1 restores it on Jetson AGX Orin with JetPack >= 7.2.2.
NO_DLA = (Version("10.8"), Version("11.4.1"))
#: what ``build`` plans when no TensorRT is installed or named
DEFAULT_TRTEXEC_VERSION = "10.3.0"

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


# -- the plan --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildPlan:
    """What a build will do; printable, renderable as trtexec, and what ``build_engine_file`` applies.

    A frozen value made in two stages: :func:`make_plan` resolves the options; when the typed
    model's facts are known (it exists, or no typed model is made), :meth:`with_typed_model`
    gives the complete plan, else :func:`~changenet_trt.engine.build.prepare_typed` makes the
    model and returns the complete plan with it. ``typed_ready`` says which stage a plan is at.

    ``precision``: fp16 / int8 / fp32 (resolved: a typed input model keeps its own).
    ``typed_onnx``: the model TensorRT parses (float16 / Q/DQ / float32 ONNX); ``typed_inputs``:
    what it is made from (the cache key recorded in its metadata), ``typed_ready``: it exists
    with those inputs (a build reuses it). ``strongly_typed``: TensorRT 10+ network, precision
    from the ONNX types. ``flags``: ``trt.BuilderFlag`` member names, in the order the build
    sets them (TensorRT's defaults, such as TF32, are left alone). ``memory_pools``:
    ``trt.MemoryPoolType`` member name -> limit in bytes. ``opt_level``: the builder
    optimisation level, ``None`` for TensorRT's default. ``input_shapes``: input name ->
    ``[min, opt, max]`` NCHW shapes of the one optimisation profile. ``fp32_layers``: TensorRT
    8.x: the layers pinned to FP32 (the typed graph's float32 nodes; the legacy calibrator path:
    ``options.fp32_layers``'s matches); ``None`` while the typed model that decides them is not
    made yet. ``user_fp32_layers``: the ONNX nodes ``options.fp32_layers`` matches.
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
    fp32_layers: Optional[List[str]]
    preprocess: str
    precision: str = "fp16"
    typed_onnx: str = ""
    typed_inputs: Optional[Dict[str, Any]] = None
    typed_ready: bool = False
    typed_source: str = "made"
    strongly_typed: bool = True
    legacy_calibrator: bool = False
    held: Dict[str, Any] = field(default_factory=dict)
    user_fp32_layers: List[str] = field(default_factory=list)
    flags: List[str] = field(default_factory=list)
    memory_pools: Dict[str, int] = field(default_factory=dict)
    opt_level: Optional[int] = None
    profiling_verbosity: str = "DETAILED"
    notes: List[str] = field(default_factory=list)

    @property
    def sidecar_path(self) -> str:
        return sidecar_path(self.engine_path)

    @property
    def profile(self) -> BatchProfile:
        return self.options.profile

    @property
    def dla_core(self) -> Optional[int]:
        return self.options.dla_core

    @property
    def precision_constraints(self) -> Optional[str]:
        """``obey``/``prefer`` when layers are pinned to FP32 (TensorRT 8.x), else None."""
        return self.options.precision_constraints if self.fp32_layers else None

    @property
    def makes_typed_model(self) -> bool:
        """The build converts the model (fp16 / int8 typed path) rather than parsing it as is."""
        return self.typed_source == "made"

    def pairs_description(self) -> str:
        """Where the typed model's pairs come from (fp16-check and proof, or INT8 calibration)."""
        opts = self.options
        if self.precision == "int8":
            if opts.calib_csv:
                return "calibration: {} batch(es) of {} pairs from {} ({})".format(
                    opts.calib_batches, self.profile.opt, opts.calib_csv, opts.calib_method)
            return "calibration: none given (--calib-csv needed unless the typed model is cached)"
        if opts.calib_csv:
            return "fp16-check on the first {} batch(es) of {} pairs of {}, proof on the pairs after them".format(
                opts.calib_batches, self.profile.opt, opts.calib_csv)
        return "fp16-check and proof on {} synthetic pairs (no --calib-csv)".format(opts.proof_pairs)

    def with_typed_model(self, held: Dict[str, Any]) -> "BuildPlan":
        """The complete plan, from what the typed model holds
        (:func:`~changenet_trt.engine.precision.graph_precision`): TensorRT 8.x derives its flags
        and FP32 layers from it."""
        fp32_layers = self.fp32_layers
        if not self.strongly_typed and not self.legacy_calibrator:
            fp32_layers = list(held.get("fp32_nodes") or [])
        flags = builder_flags(self.options, self.strongly_typed, held, self.legacy_calibrator, fp32_layers)
        return dataclasses.replace(self, held=dict(held), fp32_layers=fp32_layers, typed_ready=True, flags=flags)

    def _batch_rewrite(self) -> str:
        """What prepare will rewrite to make the static batch dynamic (the analysis, not the proof)."""
        c = self.contract
        try:
            found = analyse(load_onnx(self.options.model), self.rewrite_batch, [c.sample_input, c.golden_input],
                            [c.output])
        except BuildError as exc:
            return "REFUSED, the build will stop here: {}".format(exc)
        counts: Dict[str, int] = {}
        for use in found.uses:
            counts[use.op_type] = counts.get(use.op_type, 0) + 1
        return "will rewrite the inputs, the output and {} use(s) of batch constants ({})".format(
            len(found.uses), ", ".join("{} {}".format(n, op) for op, n in sorted(counts.items())) or "none")

    def describe(self) -> List[str]:
        opts = self.options
        c = self.contract
        lines = ["build plan for {}".format(opts.model)]
        if self.rewrite_batch is not None:
            proof = sorted(set(DEFAULT_PROOF_BATCHES) | {self.rewrite_batch})
            rewrite = self._batch_rewrite()
            lines.append("  prepare:        static batch {} -> dynamic: {}".format(self.rewrite_batch, rewrite))
            if not rewrite.startswith("REFUSED"):
                lines.append("                  the build proves it with onnxruntime at batches {} before it writes {} "
                             "(not run by --dry-run)".format(", ".join(str(b) for b in proof), self.prepared_onnx))
        else:
            lines.append("  prepare:        batch already dynamic; builds from {}".format(self.prepared_onnx))
        lines.append("  onnx sha256:    {}".format(self.onnx_sha256))
        lines.append("  inputs:         sample '{}', golden '{}' [B,{},{},{}] {}; output '{}' ({})".format(
            c.sample_input, c.golden_input, *c.input_shape, c.input_dtype, c.output, c.output_kind))
        lines.append("  profile:        batch min {} / opt {} / max {} (one profile, both inputs)".format(
            self.profile.min, self.profile.opt, self.profile.max))
        for name, shapes in self.input_shapes.items():
            lines.append("    {}: {}".format(name, " / ".join("x".join(str(d) for d in s) for s in shapes)))
        lines.append("  precision:      {}".format(self._precision_line()))
        lines.append("  typed model:    {}".format(self._typed_line()))
        if self.makes_typed_model and not self.typed_ready:
            lines.append("  pairs:          {}".format(self.pairs_description()))
        lines.append("  network:        {}".format(
            "strongly typed; precision from the typed model" if self.strongly_typed else
            "weakly typed (TensorRT 8.x): precision hints derived from the typed model"
            if not self.legacy_calibrator else "weakly typed; legacy INT8 calibrator"))
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
            lines.append("  fp32 nodes:     {} pattern(s) -> {} node(s){}".format(
                len(opts.fp32_layers), len(self.user_fp32_layers),
                ": " + ", ".join(self.user_fp32_layers[:8]) + (" ..." if len(self.user_fp32_layers) > 8 else "")
                if self.user_fp32_layers else ""))
        if not self.strongly_typed:
            if self.fp32_layers is None:
                lines.append("  fp32 layers:    the typed model's float32 nodes ({} precision constraints), "
                             "known once it is made".format(opts.precision_constraints))
            elif self.fp32_layers:
                lines.append("  fp32 layers:    {} layer(s) ({} precision constraints): {}{}".format(
                    len(self.fp32_layers), self.precision_constraints, ", ".join(self.fp32_layers[:8]),
                    " ..." if len(self.fp32_layers) > 8 else ""))
        if self.legacy_calibrator:
            source = opts.calib_csv or "(none: the cache must exist)"
            lines.append("  calibration:    legacy entropy calibrator (TensorRT 8.5-10.x), {} batch(es) of {} pairs "
                         "from {}; cache {}{}".format(opts.calib_batches, self.profile.opt, source,
                                                     self.calib_cache_path,
                                                     " (rebuilt)" if opts.recalibrate else " (reused when it matches)"))
        lines.append("  preprocessing:  {}".format(self.preprocess))
        lines.append("  timing cache:   {}".format(self.timing_cache_path or "disabled"))
        lines.append("  TensorRT:       {}".format(self.trt_version or "not installed here (planned as {})".format(
            DEFAULT_TRTEXEC_VERSION)))
        lines.append("  GPU:            {}".format(
            "{} (sm_{})".format(self.gpu.name, "".join(str(v) for v in self.gpu.compute_capability))
            if self.gpu.known else "unknown here"))
        lines.append("  engine:         {}".format(self.engine_path))
        lines.append("  metadata:       {}".format(self.sidecar_path))
        lines.extend("  note:           {}".format(note) for note in self.notes)
        return lines

    def _precision_line(self) -> str:
        if self.legacy_calibrator:
            return "INT8 with FP16 fallback, entropy calibration in TensorRT (legacy calibrator)"
        return {"fp16": "FP16: float16 ONNX with float32 inputs/outputs and float32 islands",
                "fp32": "FP32 (TF32 allowed)",
                "int8": "INT8: explicit Q/DQ (symmetric, per-channel weights), the rest float32"}[self.precision]

    def _typed_line(self) -> str:
        if self.legacy_calibrator:
            return "none: the float32 model {} is calibrated by TensorRT".format(self.typed_onnx)
        if self.typed_source == "input":
            return "{} (the input already holds its precision)".format(self.typed_onnx)
        if self.typed_source == "float32":
            return "{} (float32)".format(self.typed_onnx)
        what = "float16" if self.precision == "fp16" else "INT8 Q/DQ"
        return "{} ({}, {})".format(self.typed_onnx, what, "cached, reused" if self.typed_ready else
                                    "made on the CPU by the build and cached")

    def trtexec_command(self, trt_version: Optional[str] = None) -> List[str]:
        """The equivalent ``trtexec`` command line for TensorRT ``trt_version`` (default: the plan's).

        Precision follows the version's path: 11.x gets none (strongly typed, every network),
        10.x ``--stronglyTyped``, both on the typed model; 8.x the typed model with ``--fp16`` /
        ``--int8`` and ``--precisionConstraints``/``--layerPrecisions`` for its float32 nodes
        (:data:`TRTEXEC_FLAGS`). Other differences: ``--buildOnly`` (8.5) became
        ``--skipInference`` (8.6+); ``--builderOptimizationLevel`` and ``--versionCompatible``
        exist from 8.6; ``--memPoolSize`` takes MiB (10.x accepts the ``M`` suffix, written out
        for clarity); ``--workspace`` is never used (deprecated in 8.4, removed in 10). The legacy
        calibrator path uses the calibration cache (``--calib``): trtexec cannot calibrate from
        images. InputError for a version whose precision path differs from the plan's.
        """
        version = Version(trt_version or self.trt_version or DEFAULT_TRTEXEC_VERSION)
        _check_version_features(self.options, str(version))
        if _strongly_typed(str(version), self.legacy_calibrator) != self.strongly_typed:
            raise InputError("the plan was made for TensorRT {}, whose precision path differs from {}'s".format(
                self.trt_version or "(unknown)", version), expected="make_plan(..., trt_version={!r})".format(
                    str(version)))

        def shapes(index: int) -> str:
            return ",".join("{}:{}".format(name, "x".join(str(d) for d in s[index]))
                            for name, s in self.input_shapes.items())

        cmd = ["trtexec", "--onnx={}".format(self.typed_onnx), "--saveEngine={}".format(self.engine_path),
               "--minShapes={}".format(shapes(0)), "--optShapes={}".format(shapes(1)),
               "--maxShapes={}".format(shapes(2))]
        if self.strongly_typed and PrecisionPath.of(version).has_calibrator:
            # trtexec 11 still accepts --stronglyTyped, as a deprecated no-op (every network is
            # strongly typed there), so it is left out of 11.x commands
            cmd.append("--stronglyTyped")
        for flag in self.flags:
            cmd += TRTEXEC_FLAGS[flag]
        if self.legacy_calibrator:
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
    return [layer_name(node) for node in load_onnx(model_path).graph.node]


def _check_version_features(options: BuildOptions, trt_version: Optional[str]) -> None:
    """Refuse options the TensorRT version cannot do (nothing is refused when it is unknown)."""
    if trt_version is None:
        return
    if options.dla_core is not None and NO_DLA[0] <= Version(trt_version) < NO_DLA[1]:
        raise InputError(
            "--dla-core: TensorRT {} has no DLA (10.7 was the last 10.x with it; 11.4.1 brings it back on "
            "Jetson AGX Orin with JetPack >= 7.2.2)".format(trt_version),
            expected="TensorRT <= 10.7 (JetPack 5/6) or >= 11.4.1 on AGX Orin, or a GPU build without --dla-core",
            found="TensorRT {}".format(trt_version))
    if options.int8_calibrator and not PrecisionPath.of(trt_version).has_calibrator:
        raise InputError(
            "--int8-calibrator: TensorRT {} has no INT8 calibrator (TensorRT 11 removed them)".format(trt_version),
            expected="--int8 without --int8-calibrator (Q/DQ calibrated on the CPU; runs on every TensorRT), or "
                     "TensorRT 8.5-10.x", found="TensorRT {}".format(trt_version))
    if not options.version_compatible:
        return
    if Version(trt_version) < SINCE_8_6:
        raise InputError(
            "version-compatible engines need TensorRT 8.6 or newer (BuilderFlag.VERSION_COMPATIBLE{})".format(
                ", EXCLUDE_LEAN_RUNTIME" if options.exclude_lean_runtime else ""),
            expected="TensorRT >= 8.6 (JetPack 6, or pip tensorrt 10.x), or a build without --version-compatible",
            found="TensorRT {}".format(trt_version),
        )


def _strongly_typed(trt_version: Optional[str], legacy_calibrator: bool) -> bool:
    """The version's :class:`~changenet_trt.gpu.trt.PrecisionPath` says (an unknown TensorRT is
    planned as 10.x: strongly typed), except the legacy calibrator path, which is weakly typed."""
    if legacy_calibrator:
        return False
    return trt_version is None or PrecisionPath.of(trt_version).strongly_typed


def builder_flags(options: BuildOptions, strongly_typed: bool = True, held: Optional[Dict[str, Any]] = None,
                  legacy_calibrator: bool = False, fp32_layers: Optional[Sequence[str]] = None) -> List[str]:
    """The ``trt.BuilderFlag`` names a build of ``options`` sets, in the order it sets them.

    Strongly typed (TensorRT 10+): no precision flag. TensorRT 8.x: FP16 when the typed graph
    ``held`` (:func:`~changenet_trt.engine.precision.graph_precision`) holds float16 tensors, INT8
    when it holds Q/DQ, the constraint flag when layers are pinned to FP32 (``fp32_layers``).
    The legacy calibrator: FP16 and INT8."""
    held = held or {}
    flags = []
    if legacy_calibrator:
        flags += ["FP16", "INT8"]
    elif not strongly_typed:
        if held.get("float16"):
            flags.append("FP16")
        if held.get("qdq"):
            flags.append("INT8")
    if options.dla_core is not None:
        flags.append("GPU_FALLBACK")
    if not strongly_typed and fp32_layers:
        flags.append("OBEY_PRECISION_CONSTRAINTS" if options.precision_constraints == "obey"
                     else "PREFER_PRECISION_CONSTRAINTS")
    if options.version_compatible:
        flags.append("VERSION_COMPATIBLE")
    if options.exclude_lean_runtime:
        flags.append("EXCLUDE_LEAN_RUNTIME")
    return flags


def _held_by_input(model: str) -> Tuple[Optional[str], Dict[str, Any]]:
    """The precision a model already holds (``fp16``/``int8``/None for float32) and its graph_precision."""
    held = graph_precision(model)
    if held["qdq"]:
        return "int8", held
    if held["float16"]:
        return "fp16", held
    return None, held


def make_plan(options: BuildOptions, trt_version: Optional[str] = None, gpu: Optional[GpuInfo] = None) -> BuildPlan:
    """Resolve a build without running it (no TensorRT needed).

    ``trt_version``/``gpu`` default to what is installed and present (unknown when not; an
    unknown TensorRT is planned as 10.x: strongly typed). Raises InputError for options this
    TensorRT cannot build (version-compatible before 8.6, the legacy calibrator on 11), for
    ``fp32_layers`` patterns that match no node and for a precision that contradicts the one a
    typed input model holds; DependencyError for a TensorRT outside 8.5..11.x.
    """
    model = os.fspath(options.model)
    contract = read_contract(model, options.names)
    onnx_sha256 = file_sha256(model)
    if trt_version is None:
        installed = installed_version()
        trt_version = str(installed) if installed is not None else None
    if trt_version is not None:
        check_supported(trt_version, "building an engine")
    _check_version_features(options, trt_version)
    if gpu is None:
        gpu = current_gpu()
    notes = []
    held_by_input, held = _held_by_input(model)
    precision = options.precision or held_by_input or "fp16"
    if options.dla_core is not None:
        check_dla(options.dla_core, options.profile, precision)
    if held_by_input is not None and precision != held_by_input:
        raise InputError("{} already holds {} precision; it builds as it is".format(model, held_by_input),
                         expected="--{} or no precision option".format(held_by_input), found="--{}".format(precision))
    legacy = bool(options.int8_calibrator)
    if legacy and held_by_input is not None:
        raise InputError("the legacy INT8 calibrator calibrates a float32 model", found="{} holds {}".format(
            model, held_by_input))
    strongly = _strongly_typed(trt_version, legacy)
    stem = os.path.splitext(os.path.basename(model))[0]
    engines = options.engines_dir
    rewrite = contract.static_batch
    prepared = os.path.join(engines, "{}.dynamic-batch.onnx".format(stem)) if rewrite is not None else model
    gpu_tag = gpu_slug(gpu.name, gpu.compute_capability) if gpu.known else "gpu-unknown"
    trt_tag = "trt{}".format(trt_version) if trt_version else "trt-unknown"
    engine = options.output or os.path.join(
        engines, "{}_{}_{}_{}_{}.engine".format(stem, precision, options.profile.label, gpu_tag, trt_tag))
    timing = None
    if options.use_timing_cache:
        timing = options.timing_cache or os.path.join(engines, "timing_{}_{}.cache".format(gpu_tag, trt_tag))
    calib = None
    if legacy:
        calib = options.calib_cache or default_cache_path(model, onnx_sha256)
        if trt_version is not None and Version(trt_version) >= CALIBRATOR_DEPRECATED_SINCE:
            notes.append("TensorRT 10.1 deprecated the INT8 calibrators and 11 removed them; --int8 without "
                         "--int8-calibrator builds Q/DQ calibrated on the CPU")
    shapes = {}
    for name in (contract.sample_input, contract.golden_input):
        shapes[name] = [list(contract.batch_shape(b)) for b in (options.profile.min, options.profile.opt,
                                                                 options.profile.max)]
    user_fp32 = match_layers(_onnx_layer_names(model), options.fp32_layers) if options.fp32_layers else []
    preprocess = options.normalization or contract.preprocess or "tao"
    pools = {"WORKSPACE": int(options.workspace_mib) << 20} if options.workspace_mib else {}
    opt_level = options.opt_level
    if opt_level is not None and trt_version is not None and Version(trt_version) < SINCE_8_6:
        notes.append("TensorRT {} has no builder optimisation level (8.6+); --opt-level {} ignored".format(
            trt_version, opt_level))
        log.warning("%s", notes[-1])
        opt_level = None
    inputs: Optional[Dict[str, Any]] = None
    if legacy or precision == "fp32" or held_by_input is not None:
        typed, ready = prepared, True
        source = "float32" if held_by_input is None else "input"
        if held_by_input is not None and options.fp32_layers:
            raise InputError("--fp32-layers makes a typed model; {} already is one".format(model),
                             expected="the typed model's own float32 nodes", found="--fp32-layers")
    else:
        inputs = typed_inputs(options, precision, onnx_sha256, preprocess)
        typed = typed_path(engines, stem, precision, inputs)
        ready = typed_model_matches(typed, inputs)
        source = "made"
        held = {}
    if legacy:
        fp32: Optional[List[str]] = list(user_fp32)
        held = {}
    elif strongly:
        fp32 = []
    else:
        fp32 = None  # the typed model's float32 nodes, read once it exists
    if legacy or precision == "fp32":
        known: Optional[Dict[str, Any]] = {"float16": False, "qdq": False, "fp32_nodes": []}
    elif held_by_input is not None:
        known = held
    elif ready:
        known = graph_precision(typed)
    else:
        known = None  # the typed model is made by the build (prepare_typed)
    # until then, the flags this precision will need (8.x: FP16 / INT8; its layers once made)
    flags = builder_flags(options, strongly, {"float16": precision == "fp16", "qdq": precision == "int8"},
                          legacy, options.fp32_layers)
    plan = BuildPlan(options, contract, onnx_sha256, prepared, rewrite, engine, timing, calib, trt_version, gpu,
                     shapes, fp32, preprocess, precision=precision, typed_onnx=typed, typed_inputs=inputs,
                     typed_ready=False, typed_source=source, strongly_typed=strongly, legacy_calibrator=legacy,
                     user_fp32_layers=user_fp32, flags=flags, memory_pools=pools, opt_level=opt_level, notes=notes)
    return plan if known is None else plan.with_typed_model(known)
