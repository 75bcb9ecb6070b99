"""Stand-in for the package init of `nvidia_tao_pytorch.cv`, as it runs in TAO 7.3.0's containers.

TAO's `cv/__init__.py` swaps in its copy of torch 1.14's ONNX exporter and a private SDPA kernel
when `minor >= 14`, a check written for torch 1.14. TAO's containers run torch 2.x with a minor
version below 14, where that block is skipped; on torch 2.14 (what the registry pairs with a
working torchvision here) it fires and fails (`torch.onnx._globals` and
`torch._C._nn._scaled_dot_product_attention` are gone). This init does what TAO's does on its
containers' torch: the package path (so every submodule is TAO's own file), the version, and the
`torch._C.Node.__getitem__` helper; export then runs torch's own TorchScript exporter, as there.
"""

import os

import nvidia_tao_pytorch
import torch

__path__ = [os.path.join(os.path.dirname(nvidia_tao_pytorch.__file__), "cv")]

from nvidia_tao_pytorch.cv.version import __version__  # noqa: E402,F401


def _node_get(node, key):
    """Attribute `key` of a TorchScript node, whatever its kind (as TAO's `cv/__init__.py`)."""
    return getattr(node, node.kindOf(key))(key)


torch._C.Node.__getitem__ = _node_get
