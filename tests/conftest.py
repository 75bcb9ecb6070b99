"""Shared fixtures. The TensorRT and pycuda test doubles live in tests/fakes (never imported by the package)."""

import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

# Fixtures of the fakes (tests/fakes/*_fixture.py), one import line each.
from fakes.cuda_fixture import fake_cuda  # noqa: E402,F401
from fakes.trt_fixture import fake_trt, fake_trt_factory, no_tensorrt  # noqa: E402,F401


@pytest.fixture(scope="session")
def reference_models(tmp_path_factory):
    """Paths of the reference model variants, written once per test session."""
    from changenet_trt.models.reference import write_reference_model

    root = tmp_path_factory.mktemp("models")
    variants = {
        "learnable_dynamic": dict(kind="learnable"),
        "learnable_static16": dict(kind="learnable", batch=16),
        "euclidean_dynamic": dict(kind="euclidean"),
        "euclidean_static16": dict(kind="euclidean", batch=16),
        "euclidean_rank2": dict(kind="euclidean", euclidean_rank=2),
        "learnable_opset12": dict(kind="learnable", opset=12),
        "learnable_static16_opset12": dict(kind="learnable", batch=16, opset=12),
    }
    return {name: write_reference_model(str(root / (name + ".onnx")), **kw) for name, kw in variants.items()}


@pytest.fixture(scope="session")
def tao_like_models(tmp_path_factory):
    """Paths of the TAO-export-like graphs (changenet_trt.models.tao_like), written once per session:
    ``{kind}_static16``, ``{kind}_static16_opset12`` and ``{kind}_dynamic`` for both kinds."""
    from changenet_trt.models.tao_like import write_tao_like_model

    root = tmp_path_factory.mktemp("tao_like")
    out = {}
    for kind in ("learnable", "euclidean"):
        for suffix, kw in (("static16", dict(batch=16)), ("static16_opset12", dict(batch=16, opset=12)),
                           ("dynamic", dict(batch=None))):
            name = "{}_{}".format(kind, suffix)
            out[name] = write_tao_like_model(str(root / (name + ".onnx")), kind=kind, **kw)
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current folder (builds write engines/ and caches relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
