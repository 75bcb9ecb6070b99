"""changenet-trt: TensorRT edge inference for NVIDIA Visual ChangeNet-Classification.

The package imports on a CPU-only machine: TensorRT and pycuda are imported lazily, only by
the code paths that need them.
"""

from changenet_trt.api import Classifier, Prediction, load
from changenet_trt.contract import ModelContract, read_contract, score
from changenet_trt.errors import ChangeNetError

__version__ = "0.1.0"

__all__ = ["load", "Classifier", "Prediction", "ModelContract", "read_contract", "score", "ChangeNetError", "__version__"]
