"""``changenet-trt <command>``: a thin command-line layer over the library.

:mod:`changenet_trt.cli.args` declares the argument groups the commands share (data set,
contract names, normalisation, runtime, ...) once; :mod:`changenet_trt.cli.commands` holds one
class per command. User errors (:class:`ChangeNetError`) print one ``error:`` line to stderr and
exit 2 without a traceback.
"""

import argparse
import logging
import os
import sys
from typing import Any, Optional, Sequence

from changenet_trt import __version__
from changenet_trt.cli.commands import all_commands
from changenet_trt.cli.spec import apply_spec, find_spec
from changenet_trt.errors import WRITE_ERRNOS, ChangeNetError, output_error

__all__ = ["build_parser", "main"]


class _UserFormatter(logging.Formatter):
    """``warning: message``, as the commands print their own warnings; ``-v`` adds the logger name."""

    def __init__(self, with_names: bool) -> None:
        super().__init__()
        self.with_names = with_names

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)  # the message, plus any traceback
        prefix = record.levelname.lower()
        return "{} ({}): {}".format(prefix, record.name, text) if self.with_names else "{}: {}".format(prefix, text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="changenet-trt",
        description="TensorRT edge inference for Visual ChangeNet-Classification: compare golden and "
        "sample images of PCB components and score defects. Runs on ONNX Runtime (CPU) everywhere "
        "and on TensorRT on NVIDIA GPUs.",
    )
    parser.add_argument("--version", action="version", version="changenet-trt " + __version__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {}  # name -> Command, for --spec
    for command in all_commands():
        command.add_to(sub)
        parser.commands[command.name] = command
    return parser


def _apply_spec(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Any:
    """With ``--spec`` after a command that takes it: its keys become that command's defaults (a SpecUse)."""
    name = next((token for token in argv if not token.startswith("-")), None)
    command = parser.commands.get(name)
    if command is None or "--spec" not in command.parser._option_string_actions:
        return None
    rest = list(argv)[list(argv).index(name) + 1:]
    path = find_spec(rest)
    return None if path is None else apply_spec(command.parser, name, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        spec = _apply_spec(parser, argv)
    except ChangeNetError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return exc.exit_code
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_UserFormatter(with_names=args.verbose > 0))
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), handlers=[handler])
    if not args.command:
        parser.print_help()
        return 2
    if spec is not None:
        print("\n".join(spec.report(args)), file=sys.stderr)
    try:
        return int(args._command.execute(args) or 0)
    except ChangeNetError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `changenet-trt ... | head`: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise  # anything else is a bug: keep its traceback
        print("error: {}".format(output_error(exc, exc.filename or "an output")), file=sys.stderr)
        return 2
