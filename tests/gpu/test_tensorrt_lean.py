"""The runner's TensorRT calls against the REAL lean runtime module (PyPI's tensorrt-lean-cu12-bindings).

The lean and dispatch bindings import without a GPU (their libraries come as wheels), so what
needs no driver is checked on the real thing: our ``ILogger`` subclass, the enum members we
read, and the names and pybind11 signatures of every runtime-side call the runner makes (the
fake in tests/fakes/tensorrt must agree with them too). No Runtime is ever created here without
a working CUDA driver: TensorRT crashes the process when CUDA cannot initialise.
"""

import importlib
import inspect
import logging
import re

import numpy as np
import pytest

from changenet_trt.gpu import cuda as cudalib
from changenet_trt.gpu import trt as trtlib


def _import(name):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.skip("the real {} module is not installed ({}); `pip install -e '.[dev]'` installs it on x86-64 "
                    "Linux".format(name, exc))


@pytest.fixture(scope="module")
def lean():
    return _import("tensorrt_lean_bindings")


@pytest.fixture(scope="module")
def dispatch():
    return _import("tensorrt_dispatch_bindings")


# (class, method) -> the parameters after self as (name, type) and the return type, as the runner uses
# them (normalised: last dotted component, typing.SupportsInt -> int, typing_extensions.Buffer -> buffer)
RUNNER_CALLS = {
    ("Runtime", "__init__"): ([("logger", "ILogger")], "None"),
    ("Runtime", "deserialize_cuda_engine"): ([("serialized_engine", "buffer")], "ICudaEngine"),
    ("ICudaEngine", "get_tensor_name"): ([("index", "int")], "str"),
    ("ICudaEngine", "get_tensor_mode"): ([("name", "str")], "TensorIOMode"),
    ("ICudaEngine", "get_tensor_shape"): ([("name", "str")], "Dims"),
    ("ICudaEngine", "get_tensor_dtype"): ([("name", "str")], "DataType"),
    ("ICudaEngine", "get_tensor_profile_shape"): ([("name", "str"), ("profile_index", "int")], "list[Dims]"),
    ("ICudaEngine", "create_execution_context"): ([], "IExecutionContext"),
    ("IExecutionContext", "set_input_shape"): ([("name", "str"), ("shape", "tuple")], "bool"),
    ("IExecutionContext", "get_tensor_shape"): ([("name", "str")], "Dims"),
    ("IExecutionContext", "set_tensor_address"): ([("name", "str"), ("memory", "int")], "bool"),
    ("IExecutionContext", "execute_async_v3"): ([("stream_handle", "int")], "bool"),
    ("ILogger", "log"): ([("severity", "Severity"), ("msg", "str")], "None"),
}
RUNNER_PROPERTIES = {("Runtime", "engine_host_code_allowed"): True, ("ICudaEngine", "num_io_tensors"): False}


def _type(text):
    text = text.strip()
    inner = re.fullmatch(r"list\[(.*)\]", text)
    if inner:
        return "list[{}]".format(_type(inner.group(1)))
    last = text.split(".")[-1]
    return {"SupportsInt": "int", "Buffer": "buffer"}.get(last, last)


def overloads(cls, method):
    """Every pybind11 overload of ``cls.method`` as ``(parameters after self, return type)``;
    a parameter with a default is left out (the runner never passes one)."""
    found = []
    pattern = re.compile(r"^(?:\d+\. )?{}\(self: [\w.]+\.{}(?P<args>.*)\) -> (?P<ret>\S+)$".format(
        re.escape(method), re.escape(cls.__name__)))
    for line in (getattr(cls, method).__doc__ or "").splitlines():
        match = pattern.match(line.strip())
        if not match:
            continue
        params = []
        for arg in [a for a in match.group("args").split(", ") if a]:
            name, _, rest = arg.partition(": ")
            if "=" not in rest:
                params.append((name.strip(), _type(rest)))
        found.append((params, _type(match.group("ret"))))
    return found


@pytest.mark.parametrize("call", sorted(RUNNER_CALLS), ids=lambda c: "{}.{}".format(*c))
def test_the_runners_calls_exist_with_these_signatures_in_the_real_lean_module(lean, call):
    cls_name, method = call
    cls = getattr(lean, cls_name)
    assert (RUNNER_CALLS[call][0], RUNNER_CALLS[call][1]) in overloads(cls, method), overloads(cls, method)


@pytest.mark.parametrize("call", sorted(RUNNER_CALLS), ids=lambda c: "{}.{}".format(*c))
def test_the_fake_takes_the_same_parameters(call):
    from fakes.tensorrt import _runtime

    cls_name, method = call
    params = list(inspect.signature(getattr(getattr(_runtime, cls_name), method)).parameters)[1:]
    assert params == [name for name, _ in RUNNER_CALLS[call][0]]


def test_the_runners_properties_exist_in_the_real_lean_module(lean):
    for (cls_name, name), settable in RUNNER_PROPERTIES.items():
        prop = getattr(getattr(lean, cls_name), name)
        assert isinstance(prop, property)
        assert (prop.fset is not None) == settable, (cls_name, name)


def test_every_name_the_runner_touches_on_the_fake_exists_in_the_real_lean_module(lean, fake_trt_factory, fake_cuda,
                                                                                   reference_models, tmp_path):
    """Run the runner on the fake (which records every public name read from it), then look
    each name up on the real lean module and its runtime-side classes."""
    from changenet_trt.runtime.tensorrt import TensorRTRunner

    from fakes.tensorrt import make_fake_engine

    trt = fake_trt_factory("10.x")
    path = tmp_path / "model.engine"
    path.write_bytes(make_fake_engine(reference_models["learnable_dynamic"], version=trt.__version__))
    trt._fake.accessed.clear()
    with TensorRTRunner(str(path), cuda_graph=True) as runner:
        for slot, n in ((0, 3), (1, 7), (0, 3)):
            runner.input_buffers(n, slot)
            runner.submit(n, slot)
            runner.fetch(slot)
    touched = set(trt._fake.accessed)
    assert {"Runtime", "deserialize_cuda_engine", "set_tensor_address", "execute_async_v3"} <= touched
    places = [lean] + [getattr(lean, name) for name in ("Runtime", "ICudaEngine", "IExecutionContext", "ILogger")]
    missing = sorted(name for name in touched if not any(hasattr(place, name) for place in places))
    assert missing == []


def test_our_logger_subclass_works_with_the_real_module(lean, caplog):
    logger = trtlib.make_logger(lean)
    assert isinstance(logger, lean.ILogger) and trtlib.make_logger(lean) is logger
    assert trtlib.subclass(lean, trtlib._logger_class) is type(logger)
    severity = lean.ILogger.Severity
    assert set(severity.__members__) == set(trtlib._SEVERITY_LEVELS)
    with caplog.at_level(logging.DEBUG, logger=trtlib.TRT_LOGGER_NAME):
        with logger.capture() as errors:
            logger.log(severity.ERROR, "first failure\n")
            logger.log(severity.WARNING, "a warning")
            logger.log(severity.VERBOSE, "chatter")
    assert errors == ["first failure"]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "first failure"), (logging.WARNING, "a warning"), (logging.DEBUG, "chatter")]


def test_the_enum_members_we_read_exist_in_the_real_module(lean):
    assert {"INPUT", "OUTPUT"} <= set(lean.TensorIOMode.__members__)
    assert set(trtlib._NUMPY_DTYPES) <= set(lean.DataType.__members__)
    assert trtlib.to_numpy_dtype(lean.DataType.HALF) == np.float16
    assert trtlib.from_numpy_dtype(lean, np.float32) == lean.DataType.FLOAT
    assert trtlib.dtype_name(lean.DataType.BF16) == "bf16"
    assert trtlib.version(lean) >= trtlib.Version("10.0")


def test_the_runtime_only_modules_are_recognised_and_chosen_without_tensorrt(lean, dispatch, monkeypatch):
    assert trtlib.runtime_kind(lean) == "lean" and trtlib.runtime_kind(dispatch) == "dispatch"
    assert not hasattr(lean, "Builder") and not hasattr(dispatch, "Builder")
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt_lean", None)
    assert trtlib.import_runtime("x", version_compatible=True) is lean
    monkeypatch.setitem(__import__("sys").modules, "tensorrt_lean_bindings", None)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt_dispatch", None)
    assert trtlib.import_runtime("x", version_compatible=True) is dispatch


def test_no_runtime_is_created_without_a_working_driver(lean):
    problem = cudalib.driver_problem()
    if problem is None:
        pytest.skip("this machine has a working CUDA driver, so a Runtime may be made here")
    with pytest.raises(cudalib.CudaError, match="needs an NVIDIA GPU with a working CUDA driver") as info:
        trtlib.create_runtime(lean, "loading an engine")
    assert problem in str(info.value)
