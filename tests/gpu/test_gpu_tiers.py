"""The two ``pytest -m gpu`` tiers skip with the right reason where they cannot run."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from gpu_tiers import FAKES_DIR, cuda_tier_reason, tensorrt_tier_reason
from helpers import REPO_ROOT


def _missing(name):
    raise ImportError("No module named '{}'".format(name))


def _driver(count=1, init_error=None):
    def init():
        if init_error is not None:
            raise init_error

    return SimpleNamespace(__file__="/site-packages/pycuda/driver.py", init=init,
                           Device=SimpleNamespace(count=lambda: count))


@pytest.mark.parametrize("import_module, problem, fragment", [
    (_missing, lambda: None, "needs pycuda (scripts/gpu-check.sh installs it): ImportError: No module named"),
    (lambda name: _driver(), lambda: "no CUDA driver (libcuda.so.1: cannot open)",
     "needs an NVIDIA GPU: no CUDA driver (libcuda.so.1: cannot open)"),
    (lambda name: _driver(count=0), lambda: None, "pycuda sees none"),
    (lambda name: _driver(init_error=RuntimeError("cuInit failed: no device")), lambda: None,
     "pycuda says RuntimeError: cuInit failed: no device"),
])
def test_cuda_tier_reasons(import_module, problem, fragment):
    reason = cuda_tier_reason(driver_problem=problem, import_module=import_module)
    assert reason.startswith("the CUDA tier needs") and fragment in reason


def test_the_pycuda_double_is_not_the_real_thing(fake_cuda):
    assert fake_cuda.driver.__file__.startswith(FAKES_DIR)
    assert cuda_tier_reason(lambda: None, lambda name: fake_cuda.driver) == \
        "the CUDA tier needs the real pycuda, not the test double"


def test_the_cuda_tier_runs_when_everything_is_there():
    assert cuda_tier_reason(lambda: None, lambda name: _driver()) is None


def test_tensorrt_tier_reasons(fake_trt):
    assert tensorrt_tier_reason("the CUDA tier needs pycuda: x") == \
        "the TensorRT tier needs what the CUDA tier needs; the CUDA tier needs pycuda: x"
    assert "needs TensorRT (JetPack, or `pip install tensorrt`): ImportError" in tensorrt_tier_reason(
        import_module=_missing, check_cuda=False)
    assert tensorrt_tier_reason(import_module=lambda name: fake_trt, check_cuda=False) == \
        "the TensorRT tier needs the real TensorRT, not the test double"
    assert tensorrt_tier_reason(import_module=lambda name: SimpleNamespace(__file__="/x/tensorrt/__init__.py"),
                                check_cuda=False) is None


def test_pytest_m_gpu_skips_both_tiers_with_their_reasons_here():
    reason = cuda_tier_reason()
    if reason is None:
        pytest.skip("this machine can run the CUDA tier")
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider",
                           "tests/gpu/test_real_cuda.py", "tests/gpu/test_real_tensorrt.py"], capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT)
    out = done.stdout
    assert done.returncode in (0, 5), out + done.stderr  # 5: nothing left to run once both modules skip
    assert "2 skipped" in out
    assert "test_real_cuda.py:" in out and "test_real_tensorrt.py:" in out
    assert reason in out
    assert "the TensorRT tier needs what the CUDA tier needs; " + reason in out
