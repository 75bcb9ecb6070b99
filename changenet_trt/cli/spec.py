"""``--spec SPEC.yaml``: a TAO Visual ChangeNet experiment spec as the defaults of a command's flags.

TAO users keep every setting in one experiment spec (Hydra/OmegaConf YAML, values interpolated
as ``${dataset.classify.batch_size}``). :func:`apply_spec` reads it with OmegaConf, as TAO does,
turns each key that has a meaning for the command into the default of the flag that means the
same (so a flag given on the command line wins), and returns a :class:`SpecUse` that reports
which keys were used, which a flag overrode and which were ignored, and why.

The keys and what TAO does with them were read in nvidia-tao-deploy 7.3.0
(config/visual_changenet/default_config.py, cv/optical_inspection/dataloader.py,
cv/visual_changenet/scripts/{evaluate,inference,gen_trt_engine}.py,
cv/common/initialize_experiments.py, engine/builder.py) and in TAO's shipped classification spec
(tao_pytorch_backend cv/visual_changenet/experiment_specs/experiment_spec_classify.yaml, and
tao_tutorials' visual_changenet/specs/experiment_classify.yaml for ``gen_trt_engine``).
"""

import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from changenet_trt.data.preprocess import PRESETS
from changenet_trt.errors import InputError

#: a converter: (value, the whole spec's getter) -> the flag's value
Convert = Callable[[Any, Callable[[str], Any]], Any]


@dataclass(frozen=True)
class SpecKey:
    """One spec key (or a group read together, ``keys``) and the flag whose default it sets.

    ``dest``: the argparse destination (a command without it does not use the key; a name
    starting with ``_`` is a value the command checks itself, not a flag); ``commands``: only
    these commands (None: every command that has ``dest``).
    """

    keys: Tuple[str, ...]
    dest: str
    flag: str
    convert: Convert
    commands: Optional[Tuple[str, ...]] = None
    #: why the key is not used when ``convert`` gives None
    unused: str = ""


def _text(value: Any, get: Callable[[str], Any]) -> str:
    return str(value)


def _int(value: Any, get: Callable[[str], Any]) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError("cannot read a whole number", found=repr(value)) from None
    if number < 1 or number != float(value):
        raise InputError("expected a positive whole number", found=repr(value))
    return number


def _lights(value: Any, get: Callable[[str], Any]) -> str:
    """``input_map`` {light: position} (+ ``num_input``) -> ``--lights A,B,...`` in position order.

    TAO's loader reads the lights in the map's order and places ``num_input`` of them, so the
    positions must be 0..n-1 and ``num_input`` must be n (else TAO drops lights or fails).
    A null map is TAO's single-image mode (``<object_name><ext>``), ``--lights none``.
    """
    num_input = get("dataset.classify.num_input")
    if value is None:
        if num_input not in (None, 1):
            raise InputError("dataset.classify.input_map is null (one image per input) but num_input is {}".format(
                num_input), expected="num_input 1, or an input_map naming the lights")
        return "none"
    if not isinstance(value, dict) or not value:
        raise InputError("dataset.classify.input_map must map light names to positions",
                         expected="e.g. {LowAngleLight: 0, SolderLight: 1, UniformLight: 2, WhiteLight: 3}",
                         found=repr(value))
    order = sorted(value.items(), key=lambda item: item[1])
    positions = [position for _, position in order]
    if positions != list(range(len(order))):
        raise InputError("dataset.classify.input_map positions must be 0..{}".format(len(order) - 1),
                         found=", ".join("{}: {}".format(k, v) for k, v in order))
    if num_input is not None and int(num_input) != len(order):
        raise InputError("dataset.classify.num_input is {} but input_map names {} lights".format(
            num_input, len(order)), expected="num_input equal to the number of lights in input_map")
    return ",".join(str(name) for name, _ in order)


def _concat(value: Any, get: Callable[[str], Any]) -> str:
    if value is None:
        return "linear"  # TAO's loader: anything but grid stacks the lights along H
    if value not in ("linear", "grid"):
        raise InputError("dataset.classify.concat_type must be linear or grid", found=repr(value))
    lights = get("dataset.classify.input_map")
    count = len(lights) if isinstance(lights, dict) else 1
    if value == "grid" and count % 2:
        # cv/optical_inspection/dataloader.py: grid only `if concat_type == "grid" and num_inputs % 2 == 0`
        raise InputError("dataset.classify.concat_type is grid with {} lights; TAO's loader then silently "
                         "stacks them linearly".format(count), expected="concat_type linear, or an even number "
                         "of lights")
    return str(value)


def _grid(value: Any, get: Callable[[str], Any]) -> Optional[str]:
    """``grid_map`` {x: rows, y: columns} -> ``--grid RxC`` (TAO fills x * image_height by y * image_width)."""
    if get("dataset.classify.concat_type") != "grid":
        return None  # not used: the lights are stacked linearly
    if not isinstance(value, dict) or set(value) != {"x", "y"}:
        raise InputError("dataset.classify.grid_map must be {x: ROWS, y: COLUMNS}", found=repr(value))
    return "{}x{}".format(_int(value["x"], get), _int(value["y"], get))


def _normalization(value: Any, get: Callable[[str], Any]) -> Optional[str]:
    """rgb_input_mean + rgb_input_std -> ``--normalization m,m,m/s,s,s`` (TAO Deploy's ``(x/255 - mean)/std``)."""
    std = get("dataset.classify.augmentation_config.rgb_input_std")
    if value is None or std is None:
        return None
    try:
        mean, std = [float(v) for v in value], [float(v) for v in std]
    except (TypeError, ValueError):
        raise InputError("rgb_input_mean/rgb_input_std must be lists of 3 numbers", found="{} / {}".format(
            value, std)) from None
    if len(mean) != 3 or len(std) != 3:
        raise InputError("rgb_input_mean/rgb_input_std must hold 3 numbers each (R, G, B)",
                         found="{} / {}".format(mean, std))

    for name, preset in PRESETS.items():
        if tuple(preset.mean) == tuple(mean) and tuple(preset.std) == tuple(std):
            return name  # the same values, by the name the rest of the tool shows
    return "{}/{}".format(",".join(repr(m) for m in mean), ",".join(repr(s) for s in std))


def _output_kind(value: Any, get: Callable[[str], Any]) -> str:
    if value not in ("euclidean", "learnable"):
        raise InputError("model.classify.difference_module must be euclidean or learnable", found=repr(value))
    return str(value)


def _margin(value: Any, get: Callable[[str], Any]) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError("model.classify.eval_margin must be a number", found=repr(value)) from None


def _precision(value: Any, get: Callable[[str], Any]) -> str:
    # initialize_experiments.py: data_type.lower(); TAO takes fp32, fp16 and int8
    text = str(value).lower()
    if text not in ("fp32", "fp16", "int8"):
        raise InputError("gen_trt_engine.tensorrt.data_type must be FP32, FP16 or INT8", found=repr(value))
    return text


def _batch_profile(value: Any, get: Callable[[str], Any]) -> str:
    """min/opt/max_batch_size -> ``--batch MIN:OPT:MAX`` (TAO's TrtConfig defaults 1 where one is absent)."""
    prefix = "gen_trt_engine.tensorrt."
    values = [get(prefix + name) for name in ("min_batch_size", "opt_batch_size", "max_batch_size")]
    return ":".join(str(_int(1 if v is None else v, get)) for v in values)


def _tile(value: Any, get: Callable[[str], Any]) -> Tuple[int, int]:
    return _int(value, get), _int(get("dataset.classify.image_width"), get)


def _input(value: Any, get: Callable[[str], Any]) -> Tuple[int, int]:
    return _int(value, get), _int(get("export.input_width"), get)


TABLE = (
    SpecKey(("dataset.classify.test_dataset.csv_path",), "csv", "--csv", _text, ("eval", "validate", "fp16-check",
                                                                                 "bench")),
    SpecKey(("dataset.classify.test_dataset.images_dir",), "images", "--images", _text,
            ("eval", "validate", "fp16-check", "bench")),
    SpecKey(("dataset.classify.infer_dataset.csv_path",), "csv", "--csv", _text, ("infer",)),
    SpecKey(("dataset.classify.infer_dataset.images_dir",), "images", "--images", _text, ("infer",)),
    SpecKey(("dataset.classify.image_ext",), "ext", "--ext", _text),
    SpecKey(("dataset.classify.input_map", "dataset.classify.num_input"), "lights", "--lights", _lights),
    SpecKey(("dataset.classify.concat_type",), "concat", "--concat", _concat),
    SpecKey(("dataset.classify.grid_map",), "grid", "--grid", _grid, unused="used with concat_type grid only"),
    SpecKey(("dataset.classify.augmentation_config.rgb_input_mean",
             "dataset.classify.augmentation_config.rgb_input_std"), "normalization", "--normalization", _normalization,
            unused="rgb_input_mean and rgb_input_std are used together"),
    SpecKey(("evaluate.batch_size",), "batch_size", "--batch-size", _int, ("eval",)),
    SpecKey(("inference.batch_size",), "batch_size", "--batch-size", _int, ("infer",)),
    SpecKey(("dataset.classify.batch_size",), "batch_size", "--batch-size", _int),
    SpecKey(("model.classify.difference_module",), "output_kind", "--output-kind", _output_kind),
    SpecKey(("model.classify.eval_margin",), "_spec_cutoff", "the default cutoff (when the model carries none)",
            _margin),
    SpecKey(("dataset.classify.image_height", "dataset.classify.image_width"), "_spec_tile",
            "a check of the model's light tile (H x W)", _tile, ("eval", "infer")),
    SpecKey(("export.input_height", "export.input_width"), "_spec_input",
            "a check of the model's input (H x W)", _input, ("eval", "infer")),
    SpecKey(("evaluate.trt_engine",), "model", "MODEL", _text, ("eval",)),
    SpecKey(("inference.trt_engine",), "model", "MODEL", _text, ("infer",)),
    SpecKey(("gen_trt_engine.onnx_file",), "model", "MODEL", _text, ("build",)),
    SpecKey(("export.onnx_file",), "model", "MODEL", _text, ("prepare", "inspect", "triton-repo")),
    SpecKey(("gen_trt_engine.trt_engine",), "out", "--out", _text, ("build",)),
    SpecKey(("gen_trt_engine.tensorrt.data_type",), "precision", "--fp32/--fp16/--int8", _precision, ("build",)),
    # documented "in MB" by TAO's TrtConfig; our --workspace is MiB (TAO Deploy 7.3.0's EngineBuilder
    # multiplies it by 2**30 instead: see docs/evaluation.md's --spec table)
    SpecKey(("gen_trt_engine.tensorrt.workspace_size",), "workspace", "--workspace", _int, ("build",)),
    SpecKey(("gen_trt_engine.tensorrt.min_batch_size", "gen_trt_engine.tensorrt.opt_batch_size",
             "gen_trt_engine.tensorrt.max_batch_size"), "batch", "--batch", _batch_profile, ("build",)),
    SpecKey(("gen_trt_engine.timing_cache",), "timing_cache", "--timing-cache", _text, ("build",)),
)

#: why a key is ignored, by key prefix (first match wins); keys are also checked: task, num_golden
IGNORED = (
    ("encryption_key", "the key of TAO's encrypted .tlt/.etlt/.pth files; ONNX models and engines need none"),
    ("results_dir", "outputs go where --out says"),
    ("train.", "training"),
    ("model.backbone.", "the architecture: it is in the ONNX model"),
    ("model.classify.", "the architecture or training: it is in the ONNX model"),
    ("model.", "the architecture: it is in the ONNX model"),
    ("dataset.classify.train_dataset.", "training data"),
    ("dataset.classify.validation_dataset.", "training data"),
    ("dataset.classify.augmentation_config.", "training augmentation"),
    ("dataset.classify.workers", "TAO Deploy's loader does not use it either; decode threads: --workers"),
    ("dataset.classify.fpratio_sampling", "training"),
    ("dataset.classify.num_classes", "training"),
    ("dataset.classify.quant_calibration_dataset.", "TAO's PyTorch quantization; INT8 here calibrates on "
     "--calib-csv pairs"),
    ("dataset.segment.", "the segmentation task"),
    ("gen_trt_engine.tensorrt.calibration.", "TensorRT's legacy calibrator on cal_image_dir; INT8 here is "
     "calibrated on --calib-csv pairs"),
    ("gen_trt_engine.tensorrt.layers_precision", "use --fp32-layers"),
    ("gen_trt_engine.batch_size", "the batch profile is --batch"),
    (".gpu_id", "the GPU is the one CUDA_VISIBLE_DEVICES shows"),
    (".num_gpus", "the GPU is the one CUDA_VISIBLE_DEVICES shows"),
    (".checkpoint", "a PyTorch checkpoint; TAO's export makes the ONNX model from it"),
    (".results_dir", "outputs go where --out says"),
    ("export.", "TAO's export: its result, the ONNX model, is MODEL"),
    ("quantize.", "TAO's PyTorch quantization; INT8 here: prepare/build --int8"),
)
#: leaves that are dicts (one value, not a subtree)
DICT_LEAVES = ("dataset.classify.input_map", "dataset.classify.grid_map")


def takes_spec(command: str, dests: Sequence[str]) -> bool:
    """Whether a spec key has a meaning for ``command`` (whose parser has ``dests``)."""
    return any((entry.commands is None or command in entry.commands)
               and (entry.dest in dests or (entry.dest == "_spec_cutoff" and "cutoff" in dests))
               for entry in TABLE)


def load_spec(path: str) -> Any:
    """The spec as an OmegaConf DictConfig (interpolations resolved when read)."""
    if os.path.isdir(path) or not os.path.isfile(path):
        raise InputError("spec file not found: {}".format(path), expected="TAO's experiment spec YAML")
    try:
        config = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError, OmegaConf's errors: one line, whatever the parser
        raise InputError("cannot read the spec {}".format(path), expected="a YAML mapping (TAO's experiment spec)",
                         found=str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if not OmegaConf.is_dict(config):
        raise InputError("the spec {} is not a YAML mapping".format(path), found=type(config).__name__)
    return config


def _leaves(config: Any) -> List[str]:
    """Every leaf key of the spec, dotted, in the spec's order (a dict leaf: one key)."""
    out = []  # type: List[str]

    def walk(node: Any, prefix: str) -> None:
        for key in node.keys():
            dotted = "{}{}".format(prefix, key)
            child = node._get_node(key)
            if OmegaConf.is_dict(child) and dotted not in DICT_LEAVES:
                walk(child, dotted + ".")
            else:
                out.append(dotted)

    walk(config, "")
    return out


@dataclass
class SpecUse:
    """What a spec gave one command: ``defaults`` by dest, and the report's lines."""

    path: str
    command: str
    defaults: Dict[str, Any] = field(default_factory=dict)
    used: List[Tuple[str, SpecKey, Any]] = field(default_factory=list)
    ignored: List[Tuple[str, str]] = field(default_factory=list)
    leaves: List[str] = field(default_factory=list)

    def report(self, args: argparse.Namespace) -> List[str]:
        """Lines saying which keys were used (and which a flag overrode) and which were ignored."""
        lines = ["spec {}: {} key(s) used, {} ignored".format(self.path, len(self.used), len(self.ignored))]
        for keys, entry, value in self.used:
            given = getattr(args, entry.dest, value) if not entry.dest.startswith("_") else value
            shown = _show(value)
            if entry.dest in ("csv", "images") and getattr(args, "pairs", None):  # synthetic pairs instead
                lines.append("  {} = {}: overridden by the command line (--pairs {})".format(keys, shown, args.pairs))
            elif given != value and not entry.dest.startswith("_"):
                lines.append("  {} = {}: overridden by the command line ({} {})".format(
                    keys, shown, entry.flag, _show(given)))
            elif entry.dest.startswith("_"):
                lines.append("  {} = {}: {}".format(keys, shown, entry.flag))
            else:
                lines.append("  {} -> {} {}".format(keys, entry.flag, shown))
        by_reason = {}  # type: Dict[str, List[str]]
        for key, reason in self.ignored:
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            lines.append("  ignored ({}): {}".format(reason, _compact(keys, self.leaves)))
        return lines


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def _compact(keys: Sequence[str], leaves: Sequence[str]) -> str:
    """``keys``, a section of the spec whose every leaf is among them shown as ``section.* (N keys)``."""
    chosen = set(keys)
    parts = []  # type: List[str]
    for key in keys:
        names = key.split(".")
        shown = key
        for depth in range(1, len(names)):
            section = ".".join(names[:depth]) + "."
            members = [leaf for leaf in leaves if leaf.startswith(section)]
            if len(members) > 1 and all(m in chosen for m in members):
                shown = "{}* ({} keys)".format(section, len(members))
                break
        if shown not in parts:
            parts.append(shown)
    return ", ".join(parts)


def _ignored_reason(key: str, command: str, used_elsewhere: Dict[str, List[str]]) -> str:
    if key in used_elsewhere:
        return "used by {}, not by {}".format(", ".join(sorted(used_elsewhere[key])), command)
    for prefix, reason in IGNORED:
        if ("." + key).endswith(prefix) if prefix.startswith(".") else key.startswith(prefix):
            return reason
    return "no meaning for changenet-trt {}".format(command)


def apply_spec(parser: argparse.ArgumentParser, command: str, path: str) -> SpecUse:
    """Read the spec at ``path`` and make its keys the defaults of ``parser``'s flags (``command``'s).

    A flag given on the command line still wins (it overrides the default). Keys that give a
    value the command checks itself are set as ``_spec_*`` attributes of the parsed namespace
    (``_spec_cutoff``, ``_spec_tile``, ``_spec_input``). Raises InputError for an unreadable spec,
    a task other than ``classify``, several golden images (``num_golden`` > 1) or a value that
    cannot mean what TAO means by it.
    """
    config = load_spec(path)

    def get(key: str) -> Any:
        try:
            value = OmegaConf.select(config, key, throw_on_missing=False)
        except OmegaConfBaseException as exc:  # an interpolation that does not resolve
            raise InputError("cannot resolve {} in the spec {}".format(key, path), found=str(exc).splitlines()[0]
                             ) from None
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        return None if value == "???" else value

    task = get("task")
    if task is not None and task != "classify":
        raise InputError("the spec's task is {!r}: changenet-trt runs Visual ChangeNet-Classification".format(task),
                         expected="task: classify")
    golden = get("dataset.classify.num_golden")
    if golden is not None and int(golden) != 1:
        raise InputError("the spec compares each sample with {} golden images (dataset.classify.num_golden)".format(
            golden), expected="num_golden 1: one golden per sample, TAO's ChangeNet-Classification export")

    dests = {action.dest: action for action in parser._actions}
    use = SpecUse(path, command)
    taken = {}  # type: Dict[str, str]
    reasons = {}  # type: Dict[str, str]  # why a key the table knows was not used
    leaves = _leaves(config)
    use.leaves = leaves
    claimed = set()  # type: set
    used_elsewhere = {}  # type: Dict[str, List[str]]
    for entry in TABLE:
        applies = (entry.dest in dests or entry.dest.startswith("_")) and (
            entry.commands is None or command in entry.commands)
        if entry.dest == "_spec_cutoff":
            applies = applies and "cutoff" in dests
        if not applies:
            where = list(entry.commands or ["commands with " + ("--cutoff" if entry.dest.startswith("_")
                                                                 else entry.flag)])
            for key in entry.keys:
                used_elsewhere.setdefault(key, []).extend(w for w in where if w not in used_elsewhere.get(key, []))
            continue
        if entry.dest in taken:  # a more specific key set it (evaluate.batch_size over dataset.classify.batch_size)
            for key in entry.keys:
                reasons.setdefault(key, "{} is set by {}".format(entry.flag, taken[entry.dest]))
            continue
        first = get(entry.keys[0])
        if first is None and entry.keys[0] not in DICT_LEAVES:
            continue
        value = entry.convert(first, get)
        if value is None:
            for key in entry.keys:
                reasons.setdefault(key, entry.unused)
            continue
        taken[entry.dest] = entry.keys[0]
        claimed.update(entry.keys)
        use.defaults[entry.dest] = value
        use.used.append((" + ".join(k for k in entry.keys if k in leaves) or entry.keys[0], entry, value))
    for key in leaves:
        if key in claimed or key in ("task", "dataset.classify.num_golden"):
            continue
        value = get(key) if key not in DICT_LEAVES else True
        use.ignored.append((key, "not set (???)" if value is None and _is_missing(config, key) else
                            reasons.get(key) or _ignored_reason(key, command, used_elsewhere)))
    _install_defaults(parser, dests, use.defaults)
    return use


def _is_missing(config: Any, key: str) -> bool:
    return OmegaConf.is_missing(config, key) if "." not in key else OmegaConf.is_missing(
        OmegaConf.select(config, key.rsplit(".", 1)[0]), key.rsplit(".", 1)[1])


def _install_defaults(parser: argparse.ArgumentParser, dests: Dict[str, argparse.Action], defaults: Dict[str, Any]
                      ) -> None:
    """Set the defaults; an argument the spec now provides is no longer required (MODEL included)."""
    for dest, value in defaults.items():
        action = dests.get(dest)
        if action is None:
            continue
        action.required = False
        if not action.option_strings and action.nargs is None:
            action.nargs = "?"  # a positional the spec gives (MODEL) may be left out
        action.default = value
    parser.set_defaults(**defaults, _spec_defaults=dict(defaults))


def find_spec(argv: Sequence[str]) -> Optional[str]:
    """The value of ``--spec`` in ``argv`` (``--spec X`` or ``--spec=X``), None without one."""
    for k, token in enumerate(argv):
        if token == "--spec" and k + 1 < len(argv):
            return argv[k + 1]
        if token.startswith("--spec="):
            return token[len("--spec="):]
    return None


def check_model_shape(args: argparse.Namespace, layout: Any, contract: Any) -> None:
    """The spec's ``image_height x image_width`` (each light's tile) and ``export.input_height x
    input_width`` (the whole input) against the model's input and the layout: TAO resizes every
    light to that tile, so a model whose input gives other tiles was not trained on this spec."""
    _, height, width = contract.input_shape
    tile = getattr(args, "_spec_tile", None)
    if tile is not None:
        top, left, tile_h, tile_w = layout.boxes(height, width)[0]
        if (tile_h, tile_w) != tuple(tile):
            raise InputError("the spec's dataset.classify.image_height x image_width is {}x{} but the model's "
                             "{}x{} input with {} gives {}x{} tiles".format(tile[0], tile[1], height, width,
                                                                           layout.describe(), tile_h, tile_w),
                             expected="the spec the model was trained with, or --lights/--concat that fit it")
    shape = getattr(args, "_spec_input", None)
    if shape is not None and tuple(shape) != (height, width):
        raise InputError("the spec's export.input_height x input_width is {}x{} but the model's input is {}x{}".format(
            shape[0], shape[1], height, width), expected="the spec the model was exported with")
