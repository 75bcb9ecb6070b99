"""Stand-in for ``tensorrt`` in the TAO Deploy oracle tier (not NVIDIA's TensorRT): the "engine" is an ONNX
model, run with ONNX Runtime on the bytes at the addresses TAO binds.

Only the TensorRT 10 name-based API TAO Deploy's Visual ChangeNet inferencer uses:
``Runtime.deserialize_cuda_engine``, the engine's I/O tensor queries and optimisation profile
(one profile, batch 1..``MAX_BATCH`` for a dynamic batch), the execution context's
``set_input_shape``/``get_tensor_shape``/``set_tensor_address``/``execute_async_v3``, plus the
names TAO's modules touch when they are imported.
"""

import enum
import io
import os

import numpy as np
import onnx
import onnxruntime as ort

__version__ = "10.3.0"
#: the optimisation profile's max batch of a dynamic-batch "engine"
MAX_BATCH = int(os.environ.get("TAO_STAND_IN_MAX_BATCH", "16"))


class Logger:
    WARNING, INFO, VERBOSE, ERROR = 2, 3, 4, 1

    class Severity:
        VERBOSE, INFO, WARNING, ERROR = 4, 3, 2, 1

    def __init__(self, min_severity=2):
        self.min_severity = min_severity


def init_libnvinfer_plugins(logger, namespace=""):
    return True


class TensorIOMode(enum.Enum):
    NONE, INPUT, OUTPUT = 0, 1, 2


class DataType(enum.Enum):
    FLOAT, HALF, INT8, INT32, BOOL, UINT8, INT64, BF16, FP8, INT4 = range(10)


float32, float16, int32, int64, int8, uint8 = (DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.INT64,
                                               DataType.INT8, DataType.UINT8)
bfloat16, bool, fp8, int4 = DataType.BF16, DataType.BOOL, DataType.FP8, DataType.INT4  # noqa: A001 (TensorRT's names)
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32,
          DataType.INT64: np.int64, DataType.INT8: np.int8, DataType.UINT8: np.uint8, DataType.BOOL: np.bool_}
_FROM_ONNX = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF, "tensor(int32)": DataType.INT32,
              "tensor(int64)": DataType.INT64}


def nptype(dtype):
    return _NUMPY[dtype]


def volume(shape):
    return int(np.prod([int(d) for d in shape])) if len(shape) else 1


class Dims(tuple):
    pass


class IInt8EntropyCalibrator2:
    """Base class TAO's calibrator module subclasses when it is imported (never calibrates here)."""

    def __init__(self, *args, **kwargs):
        pass


class IInt8Calibrator(IInt8EntropyCalibrator2):
    pass


class IInt8MinMaxCalibrator(IInt8EntropyCalibrator2):
    pass


class IInt8LegacyCalibrator(IInt8EntropyCalibrator2):
    pass


class CalibrationAlgoType(enum.Enum):
    ENTROPY_CALIBRATION_2, MINMAX_CALIBRATION, LEGACY_CALIBRATION = range(3)


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data):
        return ICudaEngine(bytes(data))


class ICudaEngine:
    """An ONNX model with TensorRT's view of its I/O tensors (ONNX order: inputs, then outputs)."""

    def __init__(self, data):
        model = onnx.load(io.BytesIO(data))
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.tensors = []  # (name, mode, shape with -1 for a dynamic dimension, DataType)
        for items, mode in ((self.session.get_inputs(), TensorIOMode.INPUT),
                            (self.session.get_outputs(), TensorIOMode.OUTPUT)):
            for item in items:
                shape = tuple(d if isinstance(d, int) else -1 for d in item.shape)
                self.tensors.append((item.name, mode, shape, _FROM_ONNX[item.type]))
        self.by_name = {t[0]: t for t in self.tensors}
        self.opset = model.opset_import[0].version
        self.has_implicit_batch_dimension = False
        self.num_optimization_profiles = 1

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, index):
        return self.tensors[index][0]

    def get_tensor_mode(self, name):
        return self.by_name[name][1]

    def get_tensor_shape(self, name):
        return Dims(self.by_name[name][2])

    def get_tensor_dtype(self, name):
        return self.by_name[name][3]

    def get_tensor_profile_shape(self, name, profile_index):
        shape = self.by_name[name][2]
        return [Dims(1 if d < 0 else d for d in shape), Dims(MAX_BATCH if d < 0 else d for d in shape),
                Dims(MAX_BATCH if d < 0 else d for d in shape)]

    def create_execution_context(self):
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine):
        self.engine = engine
        self.shapes = {}
        self.addresses = {}

    def set_input_shape(self, name, shape):
        want = self.engine.by_name[name][2]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(want) or any(w >= 0 and w != d for w, d in zip(want, shape)):
            raise ValueError("input {} is {} and cannot take the shape {}".format(name, want, shape))
        self.shapes[name] = shape
        return True

    def _batch(self):
        inputs = [n for n, mode, _, _ in self.engine.tensors if mode == TensorIOMode.INPUT]
        return self.shapes.get(inputs[0], self.engine.by_name[inputs[0]][2])[0]

    def get_tensor_shape(self, name):
        _, mode, shape, _ = self.engine.by_name[name]
        if mode == TensorIOMode.INPUT:
            return Dims(self.shapes.get(name, shape))
        batch = self._batch()
        return Dims(batch if d < 0 else d for d in shape)

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle=0):
        from pycuda.driver import ALLOCATIONS

        feed = {}
        for name, mode, _, dtype in self.engine.tensors:
            if mode != TensorIOMode.INPUT:
                continue
            shape = self.get_tensor_shape(name)
            if any(d < 0 for d in shape):
                raise RuntimeError("the shape of input {} is not set".format(name))
            count = volume(shape)
            memory = ALLOCATIONS[self.addresses[name]]
            feed[name] = memory.view(nptype(dtype))[:count].reshape(shape).copy()
        outputs = self.engine.session.run(None, feed)
        for (name, _mode, _shape, dtype), value in zip(
                [t for t in self.engine.tensors if t[1] == TensorIOMode.OUTPUT], outputs):
            data = np.ascontiguousarray(value, dtype=nptype(dtype)).reshape(-1).view(np.uint8)
            memory = ALLOCATIONS[self.addresses[name]]
            memory[:data.size] = data
        return True
