"""What ``changenet-trt build`` accepts, checked on its own: :class:`BuildOptions`, the batch
:class:`BatchProfile` and the ``--fp32-layers`` patterns. :mod:`.plan` resolves them into what a
build does.
"""

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from changenet_trt.contract import ContractNames
from changenet_trt.defaults import ENGINE_PROFILE, ENGINES_DIR
from changenet_trt.engine.precision import INT8_METHODS
from changenet_trt.errors import InputError

PRECISIONS = ("fp16", "fp32", "int8")
CONSTRAINT_MODES = ("obey", "prefer")


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
    #: fp16 / int8 / fp32; None: the precision a typed model already holds, else fp16
    precision: Optional[str] = None
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
    names: ContractNames = field(default_factory=ContractNames)
    engines_dir: str = ENGINES_DIR
    progress: bool = True
    #: the legacy INT8 path (TensorRT 8.5-10.x): entropy calibrator on the float32 model
    int8_calibrator: bool = False
    #: INT8 typed model: how quantize_static picks activation ranges (entropy or percentile)
    calib_method: str = "entropy"
    #: float16 model: synthetic pairs fp16-check and the proof run on without --calib-csv
    proof_pairs: int = 64
    #: write the float16 model even when it flips decisions on the proof pairs
    force_fp16: bool = False

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise InputError("unknown precision", expected=" or ".join(PRECISIONS), found=repr(self.precision))
        if self.precision_constraints not in CONSTRAINT_MODES:
            raise InputError("unknown precision-constraint mode", expected=" or ".join(CONSTRAINT_MODES),
                             found=repr(self.precision_constraints))
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise InputError("builder optimisation level out of range", expected="0..5", found=self.opt_level)
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise InputError("workspace must be at least 1 MiB", found=self.workspace_mib)
        if self.dla_core is not None:
            check_dla(self.dla_core, self.profile, self.precision)
        if self.calib_batches < 1:
            raise InputError("--calib-batches must be at least 1", found=self.calib_batches)
        if self.precision == "fp32" and self.calib_csv:
            raise InputError("--calib-csv gives pairs to --fp16 (fp16-check, proof) or --int8 (calibration)",
                             found="precision fp32")
        if self.precision != "int8" and (self.calib_cache or self.int8_calibrator or self.recalibrate):
            raise InputError("the calibrator options need --int8", found="precision {}".format(self.precision or "fp16"))
        if self.calib_cache and not self.int8_calibrator:
            raise InputError("--calib-cache is the legacy calibrator's cache",
                             expected="--int8-calibrator with it (the typed INT8 model is cached next to the engine)",
                             found="--calib-cache alone")
        if self.precision == "fp32" and self.fp32_layers:
            raise InputError("--fp32-layers keeps layers of an --fp16 or --int8 build in float32",
                             found="precision fp32 (every layer is float32)")
        if self.calib_method not in INT8_METHODS:
            raise InputError("unknown calibration method", expected=" or ".join(INT8_METHODS),
                             found=repr(self.calib_method))
        if self.proof_pairs < 1:
            raise InputError("the proof needs at least one pair", found=self.proof_pairs)
        if self.exclude_lean_runtime and not self.version_compatible:
            raise InputError("--exclude-lean-runtime only applies to version-compatible engines",
                             expected="--version-compatible with it", found="--exclude-lean-runtime alone")


def check_dla(core: int, profile: BatchProfile, precision: Optional[str]) -> None:
    """What a DLA build needs, refused before any work (TensorRT's "Working with DLA": DLA runs
    static shapes only, so the profile's min, opt and max must be equal, and FP16 or INT8 only).
    A dynamic profile would leave every layer on the GPU: an engine that claims DLA and has none."""
    if core < 0:
        raise InputError("DLA core must be 0 or more", found=core)
    if not profile.min == profile.opt == profile.max:
        raise InputError(
            "--dla-core needs a static batch: DLA runs static shapes only (profile min = opt = max), and with "
            "a dynamic profile no layer would run on it",
            expected="--batch N (N:N:N), e.g. --batch {}".format(profile.opt),
            found="profile {}:{}:{}".format(profile.min, profile.opt, profile.max))
    if precision == "fp32":
        raise InputError("DLA runs FP16 and INT8 only", expected="--fp16 or --int8 with --dla-core",
                         found="precision fp32")
