"""Fixture ``fake_cuda``: the fake pycuda (and fake CUDA driver library) on a fresh fake GPU.

The fake package is loaded from tests/fakes/pycuda as ``sys.modules["pycuda"]`` (fresh module
objects per test, so ``changenet_trt.gpu.cuda`` makes a new primary context), and
``DEVICE.reset()`` starts every test with nothing allocated. Whatever ``pycuda`` modules were
imported before (a real install) are put back afterwards.
"""

import importlib.util
import os
import sys
from types import SimpleNamespace

import pytest

from fakes.device import DEVICE

FAKE_PYCUDA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pycuda")


def _is_pycuda(name: str) -> bool:
    return name == "pycuda" or name.startswith("pycuda.")


def install_fake_pycuda() -> object:
    """Import the fake as ``pycuda`` (replacing any loaded one); return ``pycuda.driver``."""
    for name in [n for n in sys.modules if _is_pycuda(n)]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        "pycuda", os.path.join(FAKE_PYCUDA_DIR, "__init__.py"), submodule_search_locations=[FAKE_PYCUDA_DIR]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["pycuda"] = package
    spec.loader.exec_module(package)
    import pycuda.driver as driver

    return driver


@pytest.fixture
def fake_cuda(monkeypatch):
    """The fake GPU: ``.device`` (DEVICE), ``.driver`` (fake pycuda.driver), ``.libcuda`` (graphs)."""
    import changenet_trt.gpu.cuda as cuda_module

    from fakes.libcuda import FakeDriverLibrary

    saved = {name: module for name, module in sys.modules.items() if _is_pycuda(name)}
    DEVICE.reset()
    driver = install_fake_pycuda()
    libcuda = FakeDriverLibrary()
    monkeypatch.setattr(cuda_module, "_open_driver_library", lambda: libcuda)
    monkeypatch.setattr(cuda_module, "_DRIVER_LIBRARY", None)
    try:
        yield SimpleNamespace(device=DEVICE, driver=driver, libcuda=libcuda)
    finally:
        for name in [n for n in sys.modules if _is_pycuda(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
