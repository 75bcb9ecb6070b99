"""Why each ``pytest -m gpu`` tier cannot run on this machine (``None`` when it can).

* CUDA tier (tests/gpu/test_real_cuda.py): the real pycuda and any NVIDIA GPU; TensorRT not needed.
* TensorRT tier (tests/gpu/test_real_tensorrt.py): the same plus the real ``tensorrt`` module.

The reasons are worked out without side effects: the CUDA driver is asked through ctypes
(``changenet_trt.gpu.cuda.driver_problem``) before pycuda initialises it, and the test doubles in
tests/fakes never count as the real thing.
"""

import importlib
import os
import sys
from typing import Any, Callable, Optional

FAKES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes")


def _is_fake(module: Any) -> bool:
    return os.path.abspath(str(getattr(module, "__file__", "") or "")).startswith(FAKES_DIR + os.sep) or hasattr(
        module, "_fake")


def _real_module(name: str) -> Any:
    """Import the installed ``name``, never a test double left in ``sys.modules``."""
    loaded = sys.modules.get(name)
    if loaded is not None and _is_fake(loaded):
        raise ImportError("only the test double of {} is loaded".format(name))
    return importlib.import_module(name)


def cuda_tier_reason(driver_problem: Optional[Callable[[], Optional[str]]] = None,
                     import_module: Callable[[str], Any] = _real_module) -> Optional[str]:
    """Why the CUDA tier cannot run (no pycuda, no driver, no GPU), or None."""
    if driver_problem is None:
        from changenet_trt.gpu.cuda import driver_problem
    try:
        driver = import_module("pycuda.driver")
    except Exception as exc:  # ImportError, or a pycuda built against a missing libcuda
        return "the CUDA tier needs pycuda (scripts/gpu-check.sh installs it): {}: {}".format(type(exc).__name__, exc)
    if _is_fake(driver):
        return "the CUDA tier needs the real pycuda, not the test double"
    problem = driver_problem()
    if problem is not None:
        return "the CUDA tier needs an NVIDIA GPU: {}".format(problem)
    try:
        driver.init()
        if driver.Device.count() < 1:
            return "the CUDA tier needs an NVIDIA GPU: pycuda sees none"
    except Exception as exc:
        return "the CUDA tier needs a usable GPU: pycuda says {}: {}".format(type(exc).__name__, exc)
    return None


def tensorrt_tier_reason(cuda_reason: Optional[str] = None, import_module: Callable[[str], Any] = _real_module,
                         check_cuda: bool = True) -> Optional[str]:
    """Why the TensorRT tier cannot run (what the CUDA tier lacks, or no TensorRT), or None."""
    if check_cuda:
        cuda_reason = cuda_tier_reason() if cuda_reason is None else cuda_reason
        if cuda_reason is not None:
            return "the TensorRT tier needs what the CUDA tier needs; " + cuda_reason
    try:
        trt = import_module("tensorrt")
    except Exception as exc:
        return "the TensorRT tier needs TensorRT (JetPack, or `pip install tensorrt`): {}: {}".format(
            type(exc).__name__, exc)
    if _is_fake(trt):
        return "the TensorRT tier needs the real TensorRT, not the test double"
    return None
