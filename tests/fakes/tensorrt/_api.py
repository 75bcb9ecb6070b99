"""Version gating, strict attribute access and enums of the fake TensorRT module.

Every fake class derives from :class:`Strict`: like a pybind11 object it refuses to grow new
attributes, so ``config.max_workspace_size = x`` fails on a 10.x fake exactly as on the real
module. A member that the played version does not bind is replaced by :class:`Absent`, which
makes ``hasattr`` False and every access an AttributeError.
"""

import enum
import hashlib
import threading
import types
from typing import Any, Dict, List, Optional, Tuple

from packaging.version import Version

#: mode name -> the ``__version__`` string the fake reports
MODES = {"8.5": "8.5.2.2", "8.6": "8.6.2.3", "10.x": "10.3.0", "11.x": "11.4.0"}


class FakeTensorRTError(RuntimeError):
    """A misuse the real TensorRT would answer with an exception (pybind11 RuntimeError/TypeError)."""


class Absent:
    """A member the played TensorRT version does not have: ``hasattr`` is False."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        raise AttributeError("{!r} has no attribute {!r} ({})".format(getattr(owner, "__name__", owner), self.name, self.why))

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError("{!r} object has no attribute {!r} ({})".format(type(obj).__name__, self.name, self.why))


class Strict:
    """Base of every fake TensorRT object: no attributes beyond the bound ones.

    ``_versions`` maps member name -> ``(first_version, first_version_without)``; either may
    be ``None``. ``_api`` is set on the per-module subclass.
    """

    _versions: Dict[str, Tuple[Optional[str], Optional[str]]] = {}
    _api: "Api"

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)  # a failed probe (hasattr) is not a use
        if name[:1] != "_":
            record_access(type(self), name)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        self._strict_set(name, value)
        if name[:1] != "_":
            record_access(type(self), name)

    def _strict_set(self, name: str, value: Any) -> None:
        attr = None
        for klass in type(self).__mro__:
            if name in klass.__dict__:
                attr = klass.__dict__[name]
                break
        if isinstance(attr, (property, Absent)):
            if isinstance(attr, property) and attr.fset is None:
                raise AttributeError("can't set attribute {!r} of {!r} (read-only)".format(name, type(self).__name__))
            attr.__set__(self, value)
            return
        # Private state of the fake, and Python subclasses (which have a __dict__, as with pybind11).
        if name.startswith("_") or "_api" not in type(self).__dict__:
            object.__setattr__(self, name, value)
            return
        raise AttributeError("{!r} object has no attribute {!r}".format(type(self).__name__, name))


def record_access(cls: type, name: str) -> None:
    """Note that ``name`` of a fake class was used (tests compare these with the real names)."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            api = cls.__dict__.get("_api") or getattr(cls, "_api", None)
            if api is not None and (klass.__module__ == "tensorrt" or klass.__module__.startswith(__package__ or "fakes.tensorrt")):
                api.accessed.add(name)
            return


class RecordingModule(types.ModuleType):
    """The fake module object: notes every public attribute read from it."""

    def __getattribute__(self, name: str) -> Any:
        value = types.ModuleType.__getattribute__(self, name)
        if name[:1] != "_":
            types.ModuleType.__getattribute__(self, "_fake").accessed.add(name)
        return value


class Api:
    """One fake ``tensorrt`` module's state: the version it plays, its classes, its records."""

    def __init__(self, version: str) -> None:
        self.version_string = version
        self.version = Version(version)
        self.classes: Dict[str, type] = {}
        self.module: Any = None
        self.lock = threading.RLock()
        # -- what tests read --------------------------------------------------------------------
        #: one dict per build_serialized_network call (see Builder.build_serialized_network)
        self.builds: List[Dict[str, Any]] = []
        #: every message any fake object logged: (severity name, text)
        self.log: List[Tuple[str, str]] = []
        self.counters: Dict[str, int] = {
            "deserialize": 0,
            "deserialize_failed": 0,
            "contexts": 0,
            "set_input_shape": 0,
            "set_input_shape_failed": 0,
            "set_tensor_address": 0,
            "executions_enqueued": 0,
            "executions_run": 0,
            "execute_failed": 0,
        }
        #: knobs tests may change
        self.settings: Dict[str, Any] = {"dla_cores": None, "fail_build": None}
        #: public names of the fake module and its objects that were read or set
        self.accessed: set = set()

    def at_least(self, version: Optional[str]) -> bool:
        return version is None or self.version >= Version(version)

    def below(self, version: Optional[str]) -> bool:
        return version is None or self.version < Version(version)

    def has(self, since: Optional[str] = None, until: Optional[str] = None) -> bool:
        return self.at_least(since) and self.below(until)

    def cls(self, name: str) -> type:
        return self.classes[name]

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def emit(self, logger: Any, severity: str, message: str) -> None:
        """Log through a user's ILogger as TensorRT does (and keep a copy for tests)."""
        self.log.append((severity, message))
        if logger is not None:
            logger.log(getattr(self.module.ILogger.Severity, severity), message)

    def specialise(self, base: type) -> type:
        """The per-version subclass of a fake class: absent members hidden, ``_api`` bound."""
        attrs: Dict[str, Any] = {"_api": self, "__module__": "tensorrt"}
        for klass in reversed(base.__mro__):
            for name, (since, until) in getattr(klass, "_versions", {}).items():
                if not self.has(since, until):
                    if since and not self.at_least(since):
                        why = "added in TensorRT {}".format(since)
                    else:
                        why = "removed in TensorRT {}".format(until)
                    attrs[name] = Absent(name, why)
        # keep the hierarchy inside one module: a specialised Logger is a specialised ILogger
        parents = tuple(self.classes[p.__name__] for p in base.__bases__
                        if p.__name__ in self.classes and issubclass(self.classes[p.__name__], p))
        cls = type(base.__name__, (base,) + parents, attrs)
        self.classes[base.__name__] = cls
        return cls


def make_enum(api: Api, name: str, members: List[Tuple[str, Optional[str], Optional[str]]]) -> type:
    """An IntEnum holding only the members that exist in ``api``'s version.

    ``members``: ``(name, since, until)``; values are the position in the full list, so a
    member keeps its value across versions.
    """
    present = [(m, i) for i, (m, since, until) in enumerate(members) if api.has(since, until)]
    result = enum.IntEnum(name, present)  # type: ignore[misc]
    result.__module__ = "tensorrt"
    return result


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
