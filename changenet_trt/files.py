"""Writing results safely: whole or not at all, never over an input, checked before the work.

Every file the package writes (engines, sidecars, caches, models, reports) goes through
:func:`atomic_write` or :func:`atomic_open`: the bytes go to a temporary file in the same
folder, are flushed to disk, and only then renamed over the target (``os.replace`` is atomic on
POSIX and Windows), so an interrupted run leaves the old file or the new one, never a torn one.
"""

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
from typing import IO, Any, Dict, Iterator, List, Sequence, Union

from changenet_trt.errors import WRITE_ERRNOS, InputError, output_error

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
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:  # a full disk: one line, not a traceback
            raise output_error(exc, target) from None
        raise


def atomic_write(path: PathLike, data: Union[bytes, str]) -> str:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; return the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_open(path, "wb") as handle:
        handle.write(payload)
    return os.fspath(path)


def write_json_report(path: PathLike, data: Any, what: str = "JSON report", inputs: Sequence[PathLike] = ()) -> str:
    """The one writer of every command's ``--json`` report: ``data`` (JSON types) as indented, key-sorted
    JSON, checked (:func:`check_output_file`) and written whole (:func:`atomic_write`); returns the path.
    Commands check the path with :func:`check_output_file` before their work too."""
    target = check_output_file(path, what=what, inputs=inputs)
    atomic_write(target, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return target


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
                     writes: Sequence[str] = (), replaces: bool = False) -> str:
    """Refuse, before any work, an output folder that cannot be made or written, or would replace an input.

    The folder may exist or be missing (it is created later); it must not be a file. ``writes``
    names the files the run writes inside it; none may be one of ``inputs`` (a data set's
    ``scores.csv`` passed back as the input CSV, say).

    ``replaces`` says the run replaces the folder as a whole (see :func:`atomic_dir`): then an
    existing folder must be empty or hold exactly the set that :func:`atomic_dir` last wrote
    there (every file listed in its :data:`SET_MANIFEST` with the same size and SHA-256; names
    alone prove nothing: a user's ``holiday.png`` looks like a plot), no input may lie inside
    it, and its parent must be writable (the swap happens there). A symbolic link is judged,
    and later written, as the folder it points to.
    """
    target = os.fspath(path)
    if not target:
        raise InputError("the {} path is empty".format(what), expected="a folder path")
    if replaces:
        target = os.path.realpath(target)  # a link to a result folder: the swap happens at its target
    if os.path.exists(target) and not os.path.isdir(target):
        raise InputError("the {} {} is an existing file".format(what, target), expected="a folder (existing or new)")
    if os.path.isdir(target):
        if not os.access(target, os.W_OK | os.X_OK):
            raise InputError("the {} {} is not writable".format(what, target), expected="a folder you can write to")
    else:
        _check_writable_parent(target, what)
    file_what = what[:-len("folder")] + "file" if what.endswith("folder") else what
    for name in writes:
        check_output_file(os.path.join(target, name), what=file_what, inputs=inputs)
    if replaces:
        _check_replaceable(target, what, inputs)
    return os.fspath(path)


def _inside(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or lies under it (symbolic links resolved)."""
    real_path, real_folder = os.path.realpath(path), os.path.realpath(folder)
    return real_path == real_folder or real_path.startswith(real_folder.rstrip(os.sep) + os.sep)


def _check_replaceable(target: str, what: str, inputs: Sequence[PathLike]) -> None:
    for source in inputs:
        if source is not None and _inside(os.fspath(source), target):
            raise InputError(
                "the {} {} holds the input {}; the run replaces the folder as a whole".format(
                    what, target, os.fspath(source)),
                expected="an output folder outside every input",
            )
    if os.path.isdir(target):
        foreign = foreign_entries(target)
        if foreign:
            raise InputError(
                "the {} {} holds files this run did not write (not the result set last written there, "
                "as recorded in {}); it replaces the folder as a whole".format(what, target, SET_MANIFEST),
                expected="a new or empty folder, or one holding only the previous result set",
                found=", ".join(foreign[:5]) + (" and {} more".format(len(foreign) - 5) if len(foreign) > 5 else ""),
            )
    parent = os.path.dirname(os.path.abspath(target))
    _check_writable_parent(os.path.join(parent, "probe"), what)


#: the record, inside a folder written by :func:`atomic_dir`, of the files of that set
SET_MANIFEST = ".changenet-trt-set.json"


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(os.fspath(path), "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_set(folder: str) -> Dict[str, Dict[str, Any]]:
    """``name -> {"size": bytes, "sha256": hex}`` for every plain file of ``folder`` but the manifest."""
    entries = {}  # type: Dict[str, Dict[str, Any]]
    for entry in os.scandir(folder):
        if entry.name != SET_MANIFEST and entry.is_file(follow_symlinks=False):
            entries[entry.name] = {"size": entry.stat(follow_symlinks=False).st_size, "sha256": file_sha256(entry.path)}
    return entries


def foreign_entries(folder: str) -> List[str]:
    """Entries of ``folder`` that are not, byte for byte, the set its :data:`SET_MANIFEST` records (sorted)."""
    try:
        with open(os.path.join(folder, SET_MANIFEST), encoding="utf-8") as handle:
            recorded = json.load(handle).get("files", {})
        if not isinstance(recorded, dict):
            recorded = {}
    except (OSError, ValueError, AttributeError):
        recorded = {}
    foreign = []
    for entry in os.scandir(folder):
        if entry.name == SET_MANIFEST:
            continue
        known = recorded.get(entry.name)
        same = (isinstance(known, dict) and entry.is_file(follow_symlinks=False)
                and known.get("size") == entry.stat(follow_symlinks=False).st_size
                and known.get("sha256") == file_sha256(entry.path))
        if not same:
            foreign.append(entry.name)
    return sorted(foreign)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[str]:
    """Write a set of files as one: yield a fresh staging folder next to ``path``; on a clean exit
    it becomes ``path`` (the previous folder, stale files included, is removed). The set is
    recorded (names, sizes, SHA-256) in its :data:`SET_MANIFEST`, so that a later run can tell
    it from anything else before replacing it. A symbolic link ``path`` keeps pointing where it
    did: its target folder is the one replaced.

    The staging folder is ``.<name>.<random>.partial`` in ``path``'s parent. The swap is one
    atomic ``renameat2(RENAME_EXCHANGE)`` on Linux, so ``path`` always holds the whole old set
    or the whole new one. Elsewhere it is two renames: an interruption between them leaves no
    ``path`` but the whole old set in ``.<name>.<random>.old`` next to it. On an exception the
    staging folder is removed and ``path`` is untouched. Check ``path`` first with
    :func:`check_output_dir` (``replaces=True``): the old folder is deleted whole.
    """
    target = os.path.realpath(os.fspath(path))
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="." + name + ".", suffix=".partial", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; results are ordinary folders
        yield staging
        manifest = {"written_by": "changenet-trt", "files": _describe_set(staging)}
        with open(os.path.join(staging, SET_MANIFEST), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1, sort_keys=True)
        for entry in os.scandir(staging):  # on disk before the swap makes them the results
            if entry.is_file(follow_symlinks=False):
                with open(entry.path, "rb") as handle:
                    os.fsync(handle.fileno())
        if not os.path.isdir(target):
            os.rename(staging, target)
            return
        if _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the old set
            return
        old = staging[: -len(".partial")] + ".old"
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:  # a full disk: one line, not a traceback
            raise output_error(exc, target) from None
        raise


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
