"""pytest fixtures that install the fake ``tensorrt`` module for one test.

``fake_trt`` plays TensorRT 10.x by default; parametrize it indirectly to choose the mode::

    @pytest.mark.parametrize("fake_trt", ["8.5", "10.x"], indirect=True)
    def test_something(fake_trt):
        fake_trt._fake.builds ...

``fake_trt_factory(mode, version=None)`` installs (and returns) a module of any mode when a
test needs to switch. ``sys.modules`` is
restored afterwards (a real TensorRT, if one is installed, comes back). The fake device is
reset when the fixture starts (``fake_cuda`` does the same; requesting both is fine).
"""

import sys

import pytest

from fakes.device import DEVICE
from fakes.tensorrt import make_module

_MISSING = object()


@pytest.fixture
def fake_trt_factory():
    saved = sys.modules.get("tensorrt", _MISSING)
    DEVICE.reset()

    def install(mode: str = "10.x", version=None):
        module = make_module(mode, version)
        sys.modules["tensorrt"] = module
        return module

    yield install
    if saved is _MISSING:
        sys.modules.pop("tensorrt", None)
    else:
        sys.modules["tensorrt"] = saved


@pytest.fixture
def fake_trt(request, fake_trt_factory):
    """The fake ``tensorrt`` module installed as ``sys.modules["tensorrt"]`` (mode: param or "10.x")."""
    return fake_trt_factory(getattr(request, "param", "10.x"))


@pytest.fixture
def no_tensorrt():
    """Make ``import tensorrt`` fail for one test, as on a machine without TensorRT."""
    saved = sys.modules.get("tensorrt", _MISSING)
    sys.modules["tensorrt"] = None  # type: ignore[assignment]  (import then raises ImportError)
    yield
    if saved is _MISSING:
        sys.modules.pop("tensorrt", None)
    else:
        sys.modules["tensorrt"] = saved
