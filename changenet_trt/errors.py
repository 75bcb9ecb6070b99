"""One exception hierarchy for everything a user can get wrong.

Every error a user can cause derives from :class:`ChangeNetError`. The CLI prints
``error: <message>`` on one line and exits non-zero for these; anything else is a bug and
keeps its traceback.
"""

import errno
import importlib
import os
from typing import Any, Optional


class ChangeNetError(Exception):
    """Base class of user-facing errors.

    ``expected`` and ``found`` (when given) are appended to the message so that every error
    says what was wanted and what was actually there.
    """

    exit_code = 2

    def __init__(self, message: str, expected: Optional[Any] = None, found: Optional[Any] = None):
        self.message = message
        self.expected = expected
        self.found = found
        text = message
        if expected is not None:
            text += "; expected {}".format(expected)
        if found is not None:
            text += "; found {}".format(found)
        super().__init__(text)


class ModelContractError(ChangeNetError):
    """The ONNX model (or engine) does not look like a ChangeNet-Classification model."""


class InputError(ChangeNetError):
    """Arrays, images or arguments handed to the API or CLI are unusable."""


class DatasetError(ChangeNetError):
    """A data set (CSV, image folder) is malformed or a file in it cannot be read."""


class EngineError(ChangeNetError):
    """A TensorRT engine file is missing, corrupt, or built for another TensorRT or GPU."""


class BuildError(ChangeNetError):
    """Preparing an ONNX file or building an engine failed."""


class OutputError(ChangeNetError):
    """An output cannot be written: the disk is full, a quota is reached, the file system is
    read-only or a name is too long (nothing partial is left behind)."""


#: errno values that say "this output cannot be written here", not "this program is broken"
WRITE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "ENAMETOOLONG", "EFBIG")
                         if hasattr(errno, name))


def output_error(exc: OSError, target: str) -> "OutputError":
    """The one-line error for an OSError (one of :data:`WRITE_ERRNOS`) met while writing ``target``."""
    reason = exc.strerror or os.strerror(exc.errno or 0)
    return OutputError("cannot write {}: {}".format(target, reason),
                       expected="free space (or a shorter name) where the output goes")


class DependencyError(ChangeNetError):
    """An optional dependency (TensorRT, pycuda, ...) is missing; the message says how to install it."""

    exit_code = 3


TENSORRT_INSTALL_HINT = (
    "on a Jetson, TensorRT ships with JetPack (sudo apt install nvidia-jetpack; keep the venv created "
    "with --system-site-packages) and pycuda builds with `pip install pycuda` once CUDA is on PATH "
    "(export PATH=/usr/local/cuda/bin:$PATH); on x86 with an NVIDIA GPU run "
    "`pip install 'changenet-trt[tensorrt]'` (installs the tensorrt and pycuda wheels)"
)


#: how to install each optional module (top-level package name -> hint); others: ``pip install <module>``
INSTALL_HINTS = {
    "tensorrt": TENSORRT_INSTALL_HINT,
    "pycuda": TENSORRT_INSTALL_HINT,
    "tritonclient": "pip install 'changenet-trt[triton]' (Python >= 3.9)",
    "tensorrt_lean": "pip install 'changenet-trt[lean]' (x86-64 Linux; on a Jetson it comes with JetPack)",
    "tensorrt_dispatch": "pip install 'changenet-trt[lean]' (x86-64 Linux; on a Jetson it comes with JetPack)",
    "polygraphy": "pip install 'changenet-trt[bench]'",
}


def missing_dependency(module: str, feature: str) -> DependencyError:
    """The error raised when ``feature`` needs ``module`` and it cannot be imported; the hint is
    the one for that module (:data:`INSTALL_HINTS`)."""
    top = module.split(".")[0]
    hint = INSTALL_HINTS.get(top, "pip install {}".format(top.replace("_", "-")))
    return DependencyError("{} needs the Python module '{}', which is not installed ({})".format(feature, module, hint))


def optional_import(module: str, feature: str) -> Any:
    """The optional module ``module`` (TensorRT and its lean and dispatch runtimes, pycuda,
    tritonclient: what a CPU-only install lacks), imported when ``feature`` needs it, or the
    :class:`DependencyError` of :func:`missing_dependency` (the feature, the package to install
    and how). The package reaches those modules only through here (tests/test_imports.py
    checks it), so every module imports where they are absent.

    Nothing is cached here: ``sys.modules`` is read on each call, so the module installed there at
    the time (a test double included) is the one returned. A module that is installed but fails
    to import for another reason keeps its own exception: that is a broken install, not a
    missing one."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_dependency(module.split(".")[0], feature) from None
