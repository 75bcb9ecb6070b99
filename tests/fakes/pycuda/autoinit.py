"""Fake ``pycuda.autoinit``: creates a new, non-primary context (TensorRT would not see it)."""

import atexit

import pycuda.driver as cuda

cuda.init()
device = cuda.Device(0)
context = device.make_context()


def _finish_up() -> None:
    try:
        cuda.Context.pop()
    except cuda.Error:
        pass


atexit.register(_finish_up)
