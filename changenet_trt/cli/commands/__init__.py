"""The commands of ``changenet-trt``, one class each, grouped by phase.

* :mod:`~changenet_trt.cli.commands.base`: :class:`Command` (each registers the argument groups it
  takes and receives their parsed values) and ``load_classifier``
* :mod:`~changenet_trt.cli.commands.data`: ``inspect``, ``infer``, ``eval``
* :mod:`~changenet_trt.cli.commands.examples`: ``reference-model``, ``demo``, ``synth``
* :mod:`~changenet_trt.cli.commands.engine`: ``prepare``, ``build``, ``triton-repo``
* :mod:`~changenet_trt.cli.commands.tools`: ``bench``, ``validate``, ``fp16-check``, ``doctor``
"""

from typing import List

from changenet_trt.cli.commands.base import Command
from changenet_trt.cli.commands.data import Eval, Infer, Inspect
from changenet_trt.cli.commands.engine import Build, Prepare, TritonRepo
from changenet_trt.cli.commands.examples import Demo, ReferenceModel, Synth
from changenet_trt.cli.commands.tools import Bench, Doctor, Fp16Check, Validate

__all__ = ["Command", "all_commands"]


def all_commands() -> List[Command]:
    """A fresh instance of every command, in ``--help`` order."""
    return [Inspect(), Infer(), ReferenceModel(), Demo(), Synth(), Eval(), Prepare(), Build(), Bench(), Validate(),
            Fp16Check(), TritonRepo(), Doctor()]
