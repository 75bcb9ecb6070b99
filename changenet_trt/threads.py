"""Thread pools that survive ``fork()``: a child process re-creates them on first use.

A ``fork()`` copies only the calling thread. A ``concurrent.futures.ThreadPoolExecutor`` made
before it still lists its worker threads in the child, so it never starts new ones and every
task submitted there waits forever (a Classifier forked by a ``multiprocessing`` "fork" worker
after the parent predicted, say). :class:`ForkSafePool` drops its executor in the child
(``os.register_at_fork``) and makes a fresh one on the next ``submit``.
"""

import os
import threading
import weakref
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Callable

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
