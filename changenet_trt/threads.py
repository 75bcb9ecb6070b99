"""Thread pools that survive ``fork()``: a child process re-creates them on first use.

A ``fork()`` copies only the calling thread. A ``concurrent.futures.ThreadPoolExecutor`` made
before it still lists its worker threads in the child, so it never starts new ones and every
task submitted there waits forever (a Classifier forked by a ``multiprocessing`` "fork" worker
after the parent predicted, say). :class:`ForkSafePool` drops its executor in the child
(``os.register_at_fork``) and makes a fresh one on the next ``submit``.

:func:`release_freed_memory` returns to the OS what worker threads freed but glibc kept: ONNX
Runtime allocates from several threads, and glibc serves those from separate malloc arenas that
it rarely shrinks. After ``fp16-check`` on TAO's FAN export (about 1.2 GB of activations per
pair) the process kept 4.1 GB resident with everything freed, and the next step's allocations
came on top of it (a float16 ``prepare`` peaked at 8.9 GB); ``malloc_trim(0)`` (glibc 2.8+)
returned it (0.1 GB left).
"""

import ctypes
import ctypes.util
import gc
import os
import threading
import weakref
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

_POOLS = weakref.WeakSet()  # type: weakref.WeakSet


class ForkSafePool(Executor):
    """A ``ThreadPoolExecutor`` of ``max_workers`` threads, made on first use and again after a fork.

    An ``Executor``: ``submit``, ``map`` and ``shutdown`` as ``ThreadPoolExecutor`` has them.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        self.max_workers = int(max_workers)
        self.thread_name_prefix = thread_name_prefix
        self._executor = None  # type: Optional[ThreadPoolExecutor]
        self._lock = threading.Lock()
        _POOLS.add(self)

    def _get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.max_workers,
                                                    thread_name_prefix=self.thread_name_prefix)
            return self._executor

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "Future[Any]":  # type: ignore[override]
        return self._get().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, **kwargs: Any) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait)

    def _forget_after_fork(self) -> None:
        # the parent's threads do not exist here: abandon their executor (joining it would hang)
        self._lock = threading.Lock()
        self._executor = None


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget_after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- what worker threads leave behind: freed malloc arena pages ------------------------------------
_LIBC: Optional[Any] = None
_LOOKED_UP = False


def _libc() -> Optional[Any]:
    global _LIBC, _LOOKED_UP
    if not _LOOKED_UP:
        _LOOKED_UP = True
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        _LIBC = libc if libc is not None and hasattr(libc, "malloc_trim") else None
    return _LIBC


def release_freed_memory() -> bool:
    """Collect garbage, then return freed heap pages to the OS (glibc's ``malloc_trim``).

    Call it after a step whose buffers are gone (an ONNX Runtime session and its outputs). A no-op
    returning False where the C library has no ``malloc_trim`` (macOS, musl); True otherwise.
    """
    gc.collect()
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
