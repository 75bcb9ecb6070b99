"""What every command shares: the :class:`Command` base and :func:`load_classifier`.

A command names its help and description, declares its own arguments in ``add_arguments`` and
registers the shared argument groups of :mod:`changenet_trt.cli.args` it takes, by name, when it
is made. :meth:`Command.execute` parses every registered group into one :class:`GroupValues`
before :meth:`Command.run` starts, so a bad value is reported before any work.
"""

import abc
import argparse
from types import SimpleNamespace
from typing import Any, Dict, Set

from changenet_trt import api
from changenet_trt.cli.args import RuntimeOptions
from changenet_trt.cli.spec import takes_spec
from changenet_trt.contract import ContractNames
from changenet_trt.errors import ChangeNetError


class GroupValues(SimpleNamespace):
    """The parsed values of a command's argument groups, one attribute per registered name
    (``values.runtime`` is what ``RuntimeArgs.parse`` returned)."""


class Command(abc.ABC):
    """One ``changenet-trt <name>`` command."""

    name = ""
    help = ""
    description = ""

    def __init__(self, **groups: Any) -> None:
        #: the shared argument groups, by name, in ``--help`` order; each is parsed into the
        #: :class:`GroupValues` attribute of its name
        self.groups: Dict[str, Any] = groups
        self._placed: Set[str] = set()

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's own arguments on ``parser``."""

    def place(self, name: str, section: Any) -> None:
        """Put group ``name``'s options into ``section`` (one of the command's own argument
        groups) instead of a section of their own; call it from ``add_arguments``."""
        group = self.groups[name]
        if hasattr(group, "add_to_group"):
            group.add_to_group(section)
        else:
            group.add_to(section)
        self._placed.add(name)

    def add_to(self, subparsers: Any) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(self.name, help=self.help, description=self.description,
                                       allow_abbrev=False)  # `--out` must never be read as `--output`
        self._placed = set()
        self.add_arguments(parser)
        for name, group in self.groups.items():
            if name not in self._placed:
                group.add_to(parser)
        if takes_spec(self.name, [action.dest for action in parser._actions]):
            parser.add_argument("--spec", metavar="SPEC.yaml",
                                help="TAO experiment spec: its keys that mean something here become the defaults "
                                "of these flags (a flag given wins); the keys used and ignored are listed")
        parser.set_defaults(_command=self)
        self.parser = parser
        return parser

    def parse_groups(self, args: argparse.Namespace) -> GroupValues:
        """Every registered group's value, in registration order (the first bad value raises)."""
        return GroupValues(**{name: group.parse(args) for name, group in self.groups.items()})

    def execute(self, args: argparse.Namespace) -> int:
        """Parse the groups, then run; returns the exit code."""
        return self.run(args, self.parse_groups(args))

    @abc.abstractmethod
    def run(self, args: argparse.Namespace, values: GroupValues) -> int:
        """Run with the parsed arguments and the groups' values; returns the exit code."""


def load_classifier(model: str, runtime: RuntimeOptions, normalization: Any, names: ContractNames) -> Any:
    """``changenet_trt.load`` with the parsed runtime, normalisation and contract-name values."""
    options = dict(cutoff=runtime.cutoff, backend=runtime.backend, normalization=normalization,
                   names=names, **runtime.backend_options)
    try:
        clf = api.load(model, batch_size=runtime.batch_size, **options)
    except ChangeNetError:
        if not runtime.batch_from_spec:
            raise
        # a TAO spec's batch_size is for a dynamic-batch model; a static-batch one runs at its own
        clf = api.load(model, batch_size=None, **options)
    if runtime.cutoff is None and runtime.spec_cutoff is not None and clf.contract.recommended_cutoff is None:
        return clf.with_cutoff(runtime.spec_cutoff)  # the spec's eval_margin, as TAO decides with it
    return clf
