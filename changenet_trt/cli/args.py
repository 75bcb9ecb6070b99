"""The argument groups the commands share, each declared once.

A group puts its options on a command's parser with ``add_to(parser)`` and turns the parsed
namespace into the value the library takes with ``parse(args)``. Values are checked in
``parse``, which the command that registered the group calls for it before any work starts
(:meth:`changenet_trt.cli.commands.base.Command.execute`), so that a bad value is reported as
one ``error:`` line (a :class:`~changenet_trt.errors.ChangeNetError`, exit 2) like every other
user error. Constructor arguments say which of a group's options a command offers.

* :class:`ContractNamesArgs`: ``--sample-input --golden-input --output --output-kind`` ->
  one :class:`~changenet_trt.contract.ContractNames`
* :class:`NormalizationArgs`: ``--normalization`` (preset or custom mean/std) -> its text
* :class:`RuntimeArgs`: ``--backend --batch-size --cutoff --providers --threads`` -> :class:`RuntimeOptions`
* :class:`DataSetArgs`: ``--csv --images --lights --ext --concat --grid --workers --strict`` ->
  :class:`DataSetOptions` (with a :class:`~changenet_trt.data.dataset.LightLayout`)
* :class:`PairSourceArgs`: a data set or ``--pairs N`` synthetic pairs -> a ``make_source``
* :class:`ProgressArgs` (``--quiet``) and :class:`JsonReportArgs` (``--json FILE`` -> :class:`JsonReport`)
"""

import argparse
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from changenet_trt.api import BACKENDS
from changenet_trt.contract import CONTRACT_NAME_KEYS, ContractNames, ModelContract
from changenet_trt.data.dataset import TAO_LIGHTS, LightLayout, parse_grid, parse_lights
from changenet_trt.data.pairs import PairSource, SourceFactory, dataset_source, synthetic_source
from changenet_trt.data.preprocess import Normalization, parse_normalization
from changenet_trt.defaults import BATCH_SIZE
from changenet_trt.errors import InputError
from changenet_trt.files import check_output_file

log = logging.getLogger("changenet_trt")



# -- argparse types ------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer, found {!r}".format(text)) from None
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, found {}".format(value))
    return value


def rate(text: str) -> float:
    """A rate in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number between 0 and 1, found {!r}".format(text)) from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("expected a number between 0 and 1, found {}".format(value))
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number >= 0, found {!r}".format(text)) from None
    if not value >= 0.0:
        raise argparse.ArgumentTypeError("expected a number >= 0, found {}".format(value))
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number > 0, found {!r}".format(text)) from None
    if not value > 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError("expected a finite number > 0, found {}".format(value))
    return value


def percentile_list(text: str) -> Tuple[float, ...]:
    """``"90,95,99"`` -> ``(90.0, 95.0, 99.0)``, each in [0, 100]."""
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected comma-separated percentiles such as 90,95,99, found {!r}".format(text)) from None
    if not values or any(not 0.0 <= p <= 100.0 for p in values):
        raise argparse.ArgumentTypeError("percentiles must lie in [0, 100], found {!r}".format(text))
    return values


# -- the groups ----------------------------------------------------------------------------------
class ContractNamesArgs:
    """Tensor-name and output-kind overrides, for every command that reads a model."""

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("model contract overrides")
        group.add_argument("--sample-input", metavar="NAME", help="sample (test) image input (default: input_1)")
        group.add_argument("--golden-input", metavar="NAME",
                           help="golden (reference) image input (default: input_2)")
        group.add_argument("--output", metavar="NAME", help="output tensor (default: the only output)")
        group.add_argument(
            "--output-kind", choices=("euclidean", "learnable"),
            help="how to read the output (default: from its shape: [B]/[B,1] euclidean, [B,2] learnable)",
        )

    def parse(self, args: argparse.Namespace) -> ContractNames:
        """The overrides given, as the one value every reader and runner takes."""
        return ContractNames.of({key: getattr(args, key) for key in CONTRACT_NAME_KEYS})


class NormalizationArgs:
    """``--normalization``, for every command that preprocesses images."""

    def __init__(self, purpose: str = "input normalisation") -> None:
        self.purpose = purpose

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        self.add_to_group(parser.add_argument_group("preprocessing"))

    def add_to_group(self, group: Any) -> None:
        group.add_argument(
            "--normalization", metavar="PRESET|M/S",
            help="{}: tao (ImageNet mean/std), deepstream (0.5/0.5) or custom means/stds of x/255 "
            "'mr,mg,mb/sr,sg,sb' (default: the model's, else tao)".format(self.purpose),
        )

    def parse(self, args: argparse.Namespace) -> Optional[str]:
        """``None`` (the model's, else tao) or the checked text, which every library entry
        point takes (``get_normalization`` reads presets and custom values alike)."""
        if args.normalization is None:
            return None
        parse_normalization(args.normalization)  # raises InputError: one line, exit 2
        return args.normalization.strip()


@dataclass
class RuntimeOptions:
    """How to run a model: ``backend``, pairs per batch, cutoff, and the backend's own options
    (``providers``, ``threads``) as ``load``/``make_runner`` keywords."""

    backend: str = "auto"
    batch_size: Optional[int] = None
    cutoff: Optional[float] = None
    backend_options: Dict[str, Any] = field(default_factory=dict)
    #: the cutoff when neither ``cutoff`` nor the model gives one (a TAO spec's eval_margin)
    spec_cutoff: Optional[float] = None
    #: ``batch_size`` came from a TAO spec (used for dynamic-batch models only)
    batch_from_spec: bool = False


class RuntimeArgs:
    """``--backend --batch-size --cutoff --providers --threads``; the flags say which a command offers."""

    def __init__(self, backend: bool = True, batch_size: bool = True, cutoff: bool = True,
                 providers: bool = True, threads: bool = True) -> None:
        self.backend, self.batch_size, self.cutoff = backend, batch_size, cutoff
        self.providers, self.threads = providers, threads

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("runtime")
        if self.backend:
            group.add_argument("--backend", default="auto", choices=BACKENDS,
                               help="auto: .onnx -> onnxruntime, .engine/.plan -> tensorrt, grpc:// or http:// "
                               "URL -> triton (default: auto)")
            group.add_argument("--triton-timeout", type=positive_float, metavar="S",
                               help="Triton URLs: seconds a request may take before it is an error")
            group.add_argument("--no-shared-memory", action="store_true",
                               help="Triton URLs: send tensors over the network even to a server on this host")
        if self.batch_size:
            group.add_argument("--batch-size", type=positive_int, metavar="N",
                               help="pairs per batch for dynamic-batch models (default: {})".format(BATCH_SIZE))
        if self.cutoff:
            group.add_argument("--cutoff", type=float, metavar="C",
                               help="a pair is a defect when score > C "
                               "(default: the model's recommended cutoff, else 0.5)")
        if self.providers:
            group.add_argument("--providers", metavar="LIST",
                               help="onnxruntime execution providers, comma separated: cpu, cuda, tensorrt "
                               "(default: cpu)")
        if self.threads:
            group.add_argument("--threads", type=positive_int, metavar="N", help="onnxruntime intra-op threads")

    def parse(self, args: argparse.Namespace) -> RuntimeOptions:
        options: Dict[str, Any] = {}
        providers = getattr(args, "providers", None)
        if providers is not None:
            listed = [p.strip() for p in providers.split(",") if p.strip()]
            if not listed:
                raise InputError("--providers names no provider", expected="cpu, cuda or tensorrt, comma separated",
                                 found=repr(providers))
            options["providers"] = listed
        if getattr(args, "threads", None):
            options["threads"] = args.threads
        if getattr(args, "triton_timeout", None):
            options["timeout_s"] = args.triton_timeout
        if getattr(args, "no_shared_memory", False):
            options["shared_memory"] = False
        return RuntimeOptions(backend=getattr(args, "backend", "auto"), batch_size=getattr(args, "batch_size", None),
                              cutoff=getattr(args, "cutoff", None), backend_options=options,
                              spec_cutoff=getattr(args, "_spec_cutoff", None),
                              batch_from_spec=getattr(args, "_spec_defaults", {}).get("batch_size", False)
                              == getattr(args, "batch_size", None))


@dataclass
class DataSetOptions:
    """A TAO data set as the library takes it: ``csv`` (None when not given), its image root
    ``images``, the light ``layout``, decode/render ``workers`` and ``strict`` (stop at the
    first unusable row)."""

    csv: Optional[str]
    images: Optional[str]
    layout: LightLayout
    workers: Optional[int] = None
    strict: bool = False


class DataSetArgs:
    """A TAO-layout data set: where it is (``--csv``, ``--images``) and how one model input is
    made of light images (``--lights --ext --concat --grid``), plus ``--workers`` and ``--strict``.

    ``csv``: the CSV flag (``--calib-csv`` for build; None: no data-set location, as synth
    writes one); ``tiles``: offer ``--concat``/``--grid``; ``workers``: what the threads do
    (None: no ``--workers``).
    """

    def __init__(self, title: str = "data set (TAO's layout)", csv: Optional[str] = "--csv",
                 csv_required: bool = False, csv_help: str = "TAO data set CSV (input_path, golden_path, label, "
                 "object_name)", tiles: bool = True, workers: Optional[str] = "decode threads",
                 strict: bool = False) -> None:
        self.title, self.csv, self.csv_required, self.csv_help = title, csv, csv_required, csv_help
        self.tiles, self.workers, self.strict = tiles, workers, strict
        self.images = None if csv is None else csv.replace("csv", "images")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        self.add_to_group(parser.add_argument_group(self.title))

    def add_to_group(self, group: Any) -> None:
        if self.csv is not None:
            group.add_argument(self.csv, dest=self._dest(self.csv), metavar="CSV", required=self.csv_required,
                               help=self.csv_help)
            group.add_argument(self.images, dest=self._dest(self.images), metavar="DIR",
                               help="images root the CSV's paths are relative to (default: the CSV's folder)")
        group.add_argument("--lights", metavar="LIST",
                           help="light names in input order, comma separated, or 'none' for one image per "
                           "object (default: TAO's LowAngleLight,SolderLight,UniformLight,WhiteLight)")
        group.add_argument("--ext", default=".jpg", help="image file extension: .jpg (TAO's default), .png or .bmp")
        if self.tiles:
            group.add_argument("--concat", choices=("linear", "grid"), default="linear",
                               help="how lights form one input: stacked along H (linear, TAO's default) or a grid")
            group.add_argument("--grid", metavar="RxC", help="grid rows x columns for --concat grid (default: 2x(n/2))")
        if self.workers is not None:
            group.add_argument("--workers", type=positive_int, metavar="N",
                               help="{} (default: one per core)".format(self.workers))
        if self.strict:
            group.add_argument("--strict", action="store_true", help="stop at the first missing or unreadable file")

    @staticmethod
    def _dest(flag: str) -> str:
        return flag.lstrip("-").replace("-", "_")

    def parse(self, args: argparse.Namespace) -> DataSetOptions:
        csv = images = None
        if self.csv is not None:
            csv, images = getattr(args, self._dest(self.csv)), getattr(args, self._dest(self.images))
            if images and not csv:
                raise InputError("{} needs {}".format(self.images, self.csv),
                                 expected="{} CSV {} DIR".format(self.csv, self.images))
        lights = TAO_LIGHTS if args.lights is None else parse_lights(args.lights)
        grid = parse_grid(args.grid) if self.tiles and args.grid else None
        layout = LightLayout(lights=lights, ext=args.ext, concat=args.concat if self.tiles else "linear", grid=grid)
        return DataSetOptions(csv=csv, images=images, layout=layout,
                              workers=args.workers if self.workers is not None else None,
                              strict=bool(self.strict and args.strict))


class PairSourceArgs:
    """Real pairs from a TAO data set (:class:`DataSetArgs`), or ``--pairs N`` synthetic PCB pairs."""

    def __init__(self, default_pairs: int) -> None:
        self.default_pairs = default_pairs
        self.data_set = DataSetArgs(csv_help="TAO data set CSV (input_path, golden_path, label, object_name)",
                                    workers=None, strict=True)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("pairs (a TAO data set, or --pairs N synthetic pairs)")
        self.data_set.add_to_group(group)
        group.add_argument("--pairs", type=positive_int, metavar="N",
                           help="use N synthetic PCB pairs rendered in memory "
                           "(default without --csv: {})".format(self.default_pairs))
        group.add_argument("--seed", type=int, default=0, help="seed of the synthetic pairs (default: 0)")

    def parse(self, args: argparse.Namespace) -> SourceFactory:
        data = self.data_set.parse(args)
        if data.csv and args.pairs and getattr(args, "_spec_defaults", {}).get("csv") == data.csv:
            data.csv = data.images = None  # --pairs on the command line wins over a spec's test data set
        if data.csv and args.pairs:
            raise InputError("give either --csv (a data set) or --pairs (synthetic pairs), not both")
        pairs = args.pairs or self.default_pairs
        seed = args.seed

        def make(contract: ModelContract, normalization: Normalization) -> PairSource:
            if data.csv:
                return dataset_source(data.csv, data.images, contract.input_shape, normalization, layout=data.layout,
                                      strict=data.strict,
                                      on_problem=lambda item: log.warning("set aside: %s", item))
            return synthetic_source(pairs, contract.input_shape, normalization, seed=seed, layout=data.layout)

        return make


class ProgressArgs:
    """``--quiet``: no progress bar (the bar shows only on a terminal anyway); ``help`` says what
    else the command leaves out."""

    def __init__(self, help: str = "no progress bar") -> None:
        self.help = help

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quiet", action="store_true", help=self.help)

    def parse(self, args: argparse.Namespace) -> bool:
        """Whether to show progress."""
        return not args.quiet


@dataclass(frozen=True)
class JsonReport:
    """Where ``--json FILE`` asks the command's report to go (``path`` None: nowhere)."""

    path: Optional[str] = None

    def check(self, what: str, inputs: Sequence[Optional[str]]) -> None:
        """With ``--json FILE``: check FILE can be written (and is none of ``inputs``) before the work."""
        if self.path:
            check_output_file(self.path, what=what, inputs=[p for p in inputs if p])

    def write(self, report: Any, write_json: Callable[[Any, str], str]) -> None:
        """With ``--json FILE``: ``write_json(report, FILE)`` and say where it went."""
        if self.path:
            print("wrote {}".format(write_json(report, self.path)))


class JsonReportArgs:
    """``--json FILE``: also write the command's report as JSON."""

    def __init__(self, what: str = "the report") -> None:
        self.what = what

    def add_to(self, parser: Any) -> None:
        parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write {} as JSON".format(self.what))

    def parse(self, args: argparse.Namespace) -> JsonReport:
        return JsonReport(args.json_out)
