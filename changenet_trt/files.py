"""Writing results safely: whole or not at all, never over an input, checked before the work.

Every file the package writes (engines, sidecars, caches, models, reports) goes through
:func:`atomic_write` or :func:`atomic_open`: the bytes go to a temporary file in the same
folder, are flushed to disk, and only then renamed over the target (``os.replace`` is atomic on
POSIX and Windows), so an interrupted run leaves the old file or the new one, never a torn one.
"""

import contextlib
import os
import tempfile
from typing import IO, Iterator, Sequence, Union

from changenet_trt.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``.

    ``mode`` is "w" (text; ``kwargs`` go to ``open``, e.g. ``newline=""``) or "wb". On an
    exception the temporary file is removed and ``path`` is untouched. Missing parent folders
    are created.
    """
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open writes whole files: mode must be 'w' or 'wb', got {!r}".format(mode))
    target = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file 0600; results are ordinary files, so give them the umask's mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: PathLike, data: Union[bytes, str]) -> str:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; return the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_open(path, "wb") as handle:
        handle.write(payload)
    return os.fspath(path)


def _nearest_existing(path: str) -> str:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_file(path: PathLike, what: str = "output file", inputs: Sequence[PathLike] = ()) -> str:
    """Refuse, before any work, an output file that cannot be written or would replace an input.

    The target may exist (it is replaced whole) but must not be a folder; its folder may be
    missing (it is created) but the nearest existing ancestor must be a writable folder.
    Returns the path as a string; raises InputError with what was expected and found.
    """
    target = os.fspath(path)
    if not target:
        raise InputError("the {} path is empty".format(what), expected="a file path")
    if os.path.isdir(target):
        raise InputError("the {} {} is a folder".format(what, target), expected="a file path")
    _check_writable_parent(target, what)
    for source in inputs:
        if source is not None and os.path.exists(os.fspath(source)) and _same_file(target, os.fspath(source)):
            raise InputError(
                "the {} {} is also an input; writing it would destroy the input".format(what, target),
                expected="an output path different from every input",
            )
    return target


def check_output_dir(path: PathLike, what: str = "output folder", inputs: Sequence[PathLike] = (),
                     writes: Sequence[str] = ()) -> str:
    """Refuse, before any work, an output folder that cannot be made or written, or would replace an input.

    The folder may exist or be missing (it is created later); it must not be a file. ``writes``
    names the files the run writes inside it; none may be one of ``inputs`` (a data set's
    ``scores.csv`` passed back as the input CSV, say).
    """
    target = os.fspath(path)
    if not target:
        raise InputError("the {} path is empty".format(what), expected="a folder path")
    if os.path.exists(target) and not os.path.isdir(target):
        raise InputError("the {} {} is an existing file".format(what, target), expected="a folder (existing or new)")
    if os.path.isdir(target):
        if not os.access(target, os.W_OK | os.X_OK):
            raise InputError("the {} {} is not writable".format(what, target), expected="a folder you can write to")
    else:
        _check_writable_parent(target, what)
    for name in writes:
        check_output_file(os.path.join(target, name), what=what[:-len("folder")] + "file" if what.endswith("folder") else what,
                          inputs=inputs)
    return target


def _check_writable_parent(target: str, what: str) -> None:
    anchor = _nearest_existing(os.path.dirname(os.path.abspath(target)))
    if not os.path.isdir(anchor):
        raise InputError(
            "cannot make the {} {}: {} is a file, not a folder".format(what, target, anchor),
            expected="a path under a folder",
        )
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise InputError(
            "cannot write the {} {}: the folder {} is not writable".format(what, target, anchor),
            expected="a folder you can write to",
        )
