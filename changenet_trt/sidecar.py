"""The JSON sidecar written next to every engine, and the check that an engine fits this machine.

A TensorRT engine only runs with the TensorRT version and the GPU (compute capability) it
was built for, and only means something with the model and preprocessing it was built from.
The sidecar ``<engine>.json`` records all of that at build time; :func:`check_compatible`
explains, in one line per problem, why an engine cannot be used here.
"""

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from packaging.version import InvalidVersion, Version

from changenet_trt.contract import ContractNames
from changenet_trt.errors import EngineError
from changenet_trt.files import PathLike, atomic_write

SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".json"


@dataclass
class EngineMetadata:
    """What an engine was built from and for (the sidecar's content).

    ``profile`` is the batch profile ``{"min", "opt", "max"}`` (pairs); ``profile_shapes``
    maps each input to its ``[min, opt, max]`` NCHW shapes; ``tensors`` lists every I/O
    tensor as ``{"name", "mode", "shape" (-1 = dynamic), "dtype"}``; ``compute_capability``
    is ``[major, minor]`` (empty when unknown); ``build_time_s`` is seconds; ``built_at``
    ISO 8601 UTC.
    """

    trt_version: str
    precision: str
    profile: Dict[str, int]
    sample_input: str
    golden_input: str
    output: str
    output_kind: str
    onnx_sha256: str
    gpu_name: str = "unknown"
    compute_capability: List[int] = field(default_factory=list)
    profile_shapes: Dict[str, List[List[int]]] = field(default_factory=dict)
    tensors: List[Dict[str, Any]] = field(default_factory=list)
    onnx_path: str = ""
    preprocess: str = "tao"
    normalization: Dict[str, List[float]] = field(default_factory=dict)
    flags: Dict[str, Any] = field(default_factory=dict)
    build_time_s: float = 0.0
    built_at: str = ""
    engine_sha256: str = ""
    builder: str = ""
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def names(self) -> ContractNames:
        """The names and output kind the engine was built with, as overrides that read them again."""
        return ContractNames(self.sample_input, self.golden_input, self.output, self.output_kind)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "EngineMetadata":
        known = {f for f in cls.__dataclass_fields__}  # type: ignore[attr-defined]
        required = ("trt_version", "precision", "profile", "sample_input", "golden_input", "output",
                    "output_kind", "onnx_sha256")
        missing = [k for k in required if k not in data]
        if missing:
            raise EngineError("engine metadata lacks required fields", expected=", ".join(required),
                              found="missing {}".format(", ".join(missing)))
        problems = [problem for key, value in sorted(data.items()) if key in _FIELD_CHECKS
                    for problem in [_FIELD_CHECKS[key](value)] if problem]
        if problems:
            raise EngineError("engine metadata is not what `changenet-trt build` writes (edited or damaged?)",
                              expected="the fields of schema {}".format(SCHEMA_VERSION), found="; ".join(problems))
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(key: str) -> Any:
    def check(value: Any) -> Optional[str]:
        return None if isinstance(value, str) else "{} is {!r}, not text".format(key, value)
    return check


def _check_profile(value: Any) -> Optional[str]:
    if value == {}:
        return None
    if not isinstance(value, dict) or not all(_is_int(value.get(k)) for k in ("min", "opt", "max")):
        return "profile is {!r}, not {{min, opt, max}} batch sizes".format(value)
    if not 1 <= value["min"] <= value["opt"] <= value["max"]:
        return "profile {}:{}:{} is not 1 <= min <= opt <= max".format(value["min"], value["opt"], value["max"])
    return None


def _check_shape(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(d) for d in value)


def _check_tensors(value: Any) -> Optional[str]:
    if not isinstance(value, list):
        return "tensors is {!r}, not a list".format(value)
    for index, tensor in enumerate(value):
        if not (isinstance(tensor, dict) and isinstance(tensor.get("name"), str) and tensor["name"]
                and isinstance(tensor.get("mode", ""), str) and _check_shape(tensor.get("shape"))
                and isinstance(tensor.get("dtype"), str)):
            return "tensors[{}] is {!r}, not {{name, mode, shape (integers), dtype}}".format(index, tensor)
    return None


def _check_profile_shapes(value: Any) -> Optional[str]:
    if not isinstance(value, dict) or not all(
            isinstance(name, str) and isinstance(shapes, list) and len(shapes) == 3
            and all(_check_shape(shape) for shape in shapes) for name, shapes in value.items()):
        return "profile_shapes is {!r}, not input -> [min, opt, max] shapes".format(value)
    return None


#: per sidecar field: None when the value has the type and form ``changenet-trt build`` writes, else why not
_FIELD_CHECKS = dict(
    {key: _text(key) for key in ("trt_version", "precision", "sample_input", "golden_input", "output", "output_kind",
                                 "onnx_sha256", "gpu_name", "onnx_path", "preprocess", "built_at", "engine_sha256",
                                 "builder")},
    profile=_check_profile,
    tensors=_check_tensors,
    profile_shapes=_check_profile_shapes,
    compute_capability=lambda v: None if isinstance(v, list) and len(v) in (0, 2) and all(_is_int(x) for x in v)
    else "compute_capability is {!r}, not [major, minor]".format(v),
    normalization=lambda v: None if isinstance(v, dict) and all(
        isinstance(x, list) and all(_is_number(n) for n in x) for x in v.values())
    else "normalization is {!r}, not lists of numbers".format(v),
    flags=lambda v: None if isinstance(v, dict) else "flags is {!r}, not an object".format(v),
    build_time_s=lambda v: None if _is_number(v) else "build_time_s is {!r}, not a number".format(v),
    schema=lambda v: None if _is_int(v) else "schema is {!r}, not an integer".format(v),
)


def sidecar_path(engine_path: PathLike) -> str:
    """``engines/x.engine`` -> ``engines/x.engine.json``."""
    return os.fspath(engine_path) + SIDECAR_SUFFIX


def write_sidecar(engine_path: PathLike, meta: EngineMetadata) -> str:
    """Write ``meta`` next to the engine (atomically); return the sidecar path."""
    path = sidecar_path(engine_path)
    atomic_write(path, json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(engine_path: PathLike) -> EngineMetadata:
    """Read the sidecar of an engine; EngineError when it is missing or not valid metadata."""
    path = sidecar_path(engine_path)
    if not os.path.isfile(path):
        raise EngineError(
            "no metadata next to the engine {}".format(os.fspath(engine_path)),
            expected=path + " (written by `changenet-trt build`)",
            found="no such file",
        )
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise EngineError("cannot read engine metadata {}".format(path), found=str(exc)) from None
    if not isinstance(data, dict):
        raise EngineError("engine metadata {} is not a JSON object".format(path), found=type(data).__name__)
    schema = data.get("schema", 0)
    if _is_int(schema) and schema > SCHEMA_VERSION:
        raise EngineError(
            "engine metadata {} was written by a newer changenet-trt".format(path),
            expected="schema <= {}".format(SCHEMA_VERSION),
            found="schema {}".format(data.get("schema")),
        )
    try:
        return EngineMetadata.from_dict(data)
    except EngineError as exc:
        raise EngineError("{} ({})".format(exc.message, path), expected=exc.expected, found=exc.found) from None


@dataclass
class Compatibility:
    """Result of :func:`check_compatible`: ``problems`` make the engine unusable, ``warnings`` do not."""

    problems: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self, engine_path: PathLike = "the engine") -> None:
        """Raise EngineError listing every problem (does nothing when there is none)."""
        if self.problems:
            raise EngineError(
                "{} cannot be used here: {} (rebuild it on this machine with `changenet-trt build`)".format(
                    os.fspath(engine_path), "; ".join(self.problems))
            )


def _release(text: str) -> Optional[Version]:
    try:
        return Version(str(text))
    except InvalidVersion:
        return None


def same_tensorrt_release(built: str, here: str) -> bool:
    """Engines only load in the TensorRT release that built them: compare every version
    component both strings have (``8.5.2`` matches ``8.5.2.2``; ``10.3.0`` does not match ``10.0.1``)."""
    a, b = _release(built), _release(here)
    if a is None or b is None:
        return str(built) == str(here)
    n = min(len(a.release), len(b.release))
    return a.release[:n] == b.release[:n]


def gpu_slug(name: str, compute_capability: Sequence[int]) -> str:
    """A file-name friendly GPU tag: ``("Orin", (8, 7))`` -> ``orin-sm87``."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "gpu"
    for noise in ("nvidia-", "tesla-", "geforce-"):
        if slug.startswith(noise):
            slug = slug[len(noise):]
    if compute_capability:
        slug += "-sm{}{}".format(compute_capability[0], compute_capability[1])
    return slug[:40]


def check_compatible(
    meta: EngineMetadata,
    trt_version: Optional[str] = None,
    gpu_name: Optional[str] = None,
    compute_capability: Optional[Sequence[int]] = None,
    onnx_sha256: Optional[str] = None,
    engine_sha256: Optional[str] = None,
    preprocess: Optional[str] = None,
) -> Compatibility:
    """Why an engine (described by ``meta``) cannot be used with what is here.

    Every argument is what this machine/run has; ``None`` skips that check. Problems: another
    TensorRT release, another compute capability, another ONNX model (sha256), engine bytes
    that are not the ones the sidecar describes, another preprocessing preset. A different
    GPU name with the same compute capability is only a warning (it loads; tactics were
    timed on the other GPU).
    """
    result = Compatibility()
    if trt_version is not None and not same_tensorrt_release(meta.trt_version, trt_version):
        result.problems.append(
            "it was built with TensorRT {} and this is TensorRT {} (engines only load in the release that "
            "built them)".format(meta.trt_version, trt_version)
        )
    if compute_capability is not None and meta.compute_capability:
        built_cc = tuple(int(v) for v in meta.compute_capability)
        here_cc = tuple(int(v) for v in compute_capability)
        if built_cc != here_cc:
            result.problems.append(
                "it was built for {} (compute capability {}.{}) and this GPU{} is compute capability {}.{}".format(
                    meta.gpu_name, built_cc[0], built_cc[1], " ({})".format(gpu_name) if gpu_name else "",
                    here_cc[0], here_cc[1])
            )
        elif gpu_name is not None and meta.gpu_name not in ("", "unknown") and gpu_name != meta.gpu_name:
            result.warnings.append(
                "it was built on {} and runs on {} (same compute capability {}.{}: it loads, but its tactics were "
                "timed on the other GPU; rebuild for best speed)".format(meta.gpu_name, gpu_name, here_cc[0], here_cc[1])
            )
    elif compute_capability is not None:
        result.warnings.append("the metadata does not say which GPU the engine was built for")
    if onnx_sha256 is not None and meta.onnx_sha256 and onnx_sha256 != meta.onnx_sha256:
        result.problems.append(
            "it was built from another ONNX model (sha256 {}..., the given model is {}...)".format(
                meta.onnx_sha256[:12], onnx_sha256[:12])
        )
    if engine_sha256 is not None and meta.engine_sha256 and engine_sha256 != meta.engine_sha256:
        result.problems.append(
            "the engine file is not the one its metadata describes (sha256 {}..., metadata says {}...): "
            "it was replaced or corrupted after the build".format(engine_sha256[:12], meta.engine_sha256[:12])
        )
    if preprocess is not None and meta.preprocess and preprocess != meta.preprocess:
        result.problems.append(
            "it expects '{}' preprocessing and '{}' was asked for".format(meta.preprocess, preprocess)
        )
    return result
